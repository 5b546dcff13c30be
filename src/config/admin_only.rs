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

/// `server.admin_listen` (default 127.0.0.1:9090) and `server.admin_token`
/// of the file at `path`; every other key is left unread.
pub fn admin_of(path: &Path, resolver: &Resolver) -> Result<(SocketAddr, Option<Secret>), String> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    // Only the [server] table is read: a table elsewhere that TOML cannot
    // parse at all still stops here, with the line.
    let file: File = toml::from_str(&text).map_err(|e| {
        format!(
            "{}: the admin listener's address and token cannot be read: {}",
            path.display(),
            e.message()
        )
    })?;
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
    Ok((listen, token))
}
