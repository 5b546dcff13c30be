//! The admin listener's address and token alone, read from a config file
//! that may have mistakes elsewhere: the CLI reaches a daemon that refused
//! to reload a broken `routes.toml` with no more than these.

use std::net::SocketAddr;
use std::path::Path;

use serde::Deserialize;

use super::raw::RawSecret;
use super::secrets::{Resolver, SecretRef, SecretShape};
use crate::secret::Secret;

#[derive(Deserialize, Default)]
struct File {
    #[serde(default)]
    server: Server,
}

#[derive(Deserialize, Default)]
struct Server {
    admin_listen: Option<String>,
    admin_token: Option<RawSecret>,
}

/// What the CLI needs of a config file to reach its daemon.
pub struct AdminOf {
    pub listen: SocketAddr,
    pub token: Option<Secret>,
    /// The file is not TOML as a whole (where, and why): the `[server]`
    /// table was read alone.
    pub broken: Option<String>,
}

/// `server.admin_listen` (default 127.0.0.1:9090) and `server.admin_token`
/// of the file at `path`; every other key is left unread. When the file
/// is not TOML as a whole (a mistake the daemon refused to reload), its
/// `[server]` table is read alone.
pub fn admin_of(path: &Path, resolver: &Resolver) -> Result<AdminOf, String> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    let (file, broken): (File, _) = match toml::from_str(&text) {
        Ok(file) => (file, None),
        Err(e) => {
            let place = super::place_of(&text, &e);
            let said = format!("{}{place}: {}", path.display(), e.message().trim_end());
            // No [server] table: the defaults, as for a file that parses.
            match server_table(&text).map_or(Ok(File::default()), |t| toml::from_str(&t)) {
                Ok(file) => (file, Some(said)),
                Err(_) => {
                    return Err(format!(
                        "{said}\n(the admin listener's address and token cannot be read from it: fix the file; `hookgate check` lists every mistake)"
                    ))
                }
            }
        }
    };
    let listen = match file.server.admin_listen.as_deref() {
        None => SocketAddr::from(([127, 0, 0, 1], 9090)),
        Some(a) => a.parse().map_err(|_| {
            format!(
                "{}: server.admin_listen: `{a}` is not an address: write it like \"127.0.0.1:9090\"",
                path.display()
            )
        })?,
    };
    let token = match file.server.admin_token {
        None => None,
        Some(raw) => {
            let r = match (raw.env, raw.file, raw.credential) {
                (Some(env), None, None) => SecretRef::Env(env),
                (None, Some(f), None) => SecretRef::File(f.into()),
                (None, None, Some(c)) => SecretRef::Credential(c),
                _ => {
                    return Err(format!(
                        "{}: server.admin_token is exactly one of {{ env = \"NAME\" }}, {{ file = \"PATH\" }} or {{ credential = \"NAME\" }}",
                        path.display()
                    ))
                }
            };
            Some(
                resolver.resolve(&r, SecretShape::External).map_err(|e| {
                    format!("server.admin_token: secret {r} is unavailable here: {e}")
                })?,
            )
        }
    };
    Ok(AdminOf {
        listen,
        token,
        broken,
    })
}

/// The `[server]` table of a file as text of its own: its header line and
/// the lines up to the next table's. `None` when the file has none.
fn server_table(text: &str) -> Option<String> {
    let mut lines = text.lines();
    lines.find(|l| {
        let l = l.split('#').next().unwrap_or("");
        l.chars()
            .filter(|c| !c.is_whitespace())
            .eq("[server]".chars())
    })?;
    let mut table = String::from("[server]\n");
    for line in lines.take_while(|l| !l.trim_start().starts_with('[')) {
        table.push_str(line);
        table.push('\n');
    }
    Some(table)
}

#[cfg(test)]
mod tests {
    use super::server_table;

    /// The `[server]` table of a file that is not TOML as a whole: found
    /// with spaces or a comment on its header, up to the next table.
    #[test]
    fn the_server_table_is_found_alone() {
        let text = "x = [[[\n[ server ]  # the daemon\nadmin_listen = \"127.0.0.1:1\"\n\n[sources.a]\nbroken =\n";
        assert_eq!(
            server_table(text).as_deref(),
            Some("[server]\nadmin_listen = \"127.0.0.1:1\"\n\n")
        );
        assert_eq!(server_table("[servers]\nx = 1\n[[routes]]\n"), None);
    }
}
