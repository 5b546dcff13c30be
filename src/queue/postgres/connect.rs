//! The database URL, TLS and the connection pool.
//!
//! The URL is a libpq connection string (`host=a,b dbname=hookgate …`) or
//! URI (`postgresql://user@a:5432,b:5432/hookgate?sslmode=verify-full`).
//! tokio-postgres parses most of it; what it does not know is taken out
//! here first: `sslrootcert`, and `sslmode` `verify-ca`/`verify-full`,
//! which become a rustls verifier. Nothing here echoes the password.

use std::path::PathBuf;
use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::WebPkiServerVerifier;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{CertificateError, DigitallySignedStruct, SignatureScheme};

/// Parameters tokio-postgres takes as they are.
const PASSED: &[&str] = &[
    "user",
    "password",
    "dbname",
    "options",
    "application_name",
    "sslnegotiation",
    "host",
    "hostaddr",
    "port",
    "connect_timeout",
    "keepalives",
    "keepalives_idle",
    "keepalives_interval",
    "keepalives_retries",
    "target_session_attrs",
    "channel_binding",
    "load_balance_hosts",
];
/// Parameters hookgate handles itself.
const OWN: &[&str] = &["sslmode", "sslrootcert", "tcp_user_timeout"];
/// libpq parameters hookgate does not support (said so, rather than "unknown").
const UNSUPPORTED: &[&str] = &[
    "sslcert",
    "sslkey",
    "sslpassword",
    "sslcrl",
    "sslcrldir",
    "sslsni",
    "sslcompression",
    "requirepeer",
    "ssl_min_protocol_version",
    "ssl_max_protocol_version",
    "gssencmode",
    "krbsrvname",
    "gsslib",
    "gssdelegation",
    "passfile",
    "service",
    "require_auth",
    "replication",
    "fallback_application_name",
    "client_encoding",
];
/// How long making a connection may take when the URL sets no
/// `connect_timeout` (per host).
const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// How long sent data may go unacknowledged before the connection counts
/// as broken, when the URL sets no `tcp_user_timeout`: a primary that
/// hangs, or a network that drops everything, is found out in seconds
/// (marked down, `/readyz` 503) instead of when TCP gives up, minutes later.
const DEFAULT_TCP_USER_TIMEOUT: Duration = Duration::from_secs(10);

/// How the server's certificate is checked (libpq's `sslmode`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SslMode {
    Disable,
    Prefer,
    Require,
    VerifyCa,
    VerifyFull,
}

impl SslMode {
    fn parse(v: &str) -> Option<SslMode> {
        Some(match v {
            "disable" => SslMode::Disable,
            "allow" | "prefer" => SslMode::Prefer,
            "require" => SslMode::Require,
            "verify-ca" => SslMode::VerifyCa,
            "verify-full" => SslMode::VerifyFull,
            _ => return None,
        })
    }

    fn name(self) -> &'static str {
        match self {
            SslMode::Disable => "disable",
            SslMode::Prefer => "prefer",
            SslMode::Require => "require",
            SslMode::VerifyCa => "verify-ca",
            SslMode::VerifyFull => "verify-full",
        }
    }
}

/// Where the trusted roots come from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Roots {
    /// The Mozilla roots built in (`sslrootcert=system`, or none given).
    BuiltIn,
    /// A PEM file.
    File(PathBuf),
}

/// A parsed URL, ready to connect with.
#[derive(Clone)]
pub struct Target {
    pub pg: tokio_postgres::Config,
    pub ssl: SslMode,
    pub roots: Roots,
}

impl std::fmt::Debug for Target {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&describe(self))
    }
}

/// Validates `url` without connecting and says what it names, in words
/// an operator reads (`hookgate check`); the password is never shown.
pub fn describe_url(url: &str) -> Result<String, String> {
    parse(url).map(|t| describe(&t))
}

fn describe(t: &Target) -> String {
    use tokio_postgres::config::Host;
    let hosts: Vec<String> =
        t.pg.get_hosts()
            .iter()
            .enumerate()
            .map(|(i, h)| {
                let port =
                    t.pg.get_ports()
                        .get(i)
                        .or(t.pg.get_ports().first())
                        .copied()
                        .unwrap_or(5432);
                match h {
                    Host::Tcp(name) => format!("{name}:{port}"),
                    Host::Unix(path) => format!("{}:{port}", path.display()),
                }
            })
            .collect();
    let hosts = match hosts.is_empty() {
        true => "localhost:5432".to_owned(),
        false => hosts.join(","),
    };
    let user = t.pg.get_user().unwrap_or("(current user)");
    let db = t.pg.get_dbname().unwrap_or(user);
    let attrs = match t.pg.get_target_session_attrs() {
        tokio_postgres::config::TargetSessionAttrs::ReadWrite => {
            ", target_session_attrs=read-write"
        }
        tokio_postgres::config::TargetSessionAttrs::ReadOnly => ", target_session_attrs=read-only",
        _ => "",
    };
    let roots = match (&t.roots, t.ssl) {
        (Roots::File(p), SslMode::VerifyCa | SslMode::VerifyFull) => {
            format!(", sslrootcert={}", p.display())
        }
        _ => String::new(),
    };
    format!(
        "database `{db}` as `{user}` on {hosts} (sslmode={}{roots}{attrs})",
        t.ssl.name()
    )
}

/// Parses a libpq connection string or URI.
pub fn parse(url: &str) -> Result<Target, String> {
    let url = url.trim();
    let pairs = if url.starts_with("postgres://") || url.starts_with("postgresql://") {
        uri_pairs(url)?
    } else {
        keyword_pairs(url)?
    };
    let mut ssl = SslMode::Prefer;
    let mut roots = None;
    let mut tcp_user_timeout = None;
    let mut passed = String::new();
    for (key, value) in pairs {
        match key.as_str() {
            // Milliseconds in libpq; tokio-postgres would read seconds.
            "tcp_user_timeout" => {
                let ms: u64 = value.trim().parse().map_err(|_| {
                    format!("queue.url: `tcp_user_timeout` is `{value}`: it is a number of milliseconds")
                })?;
                tcp_user_timeout = Some(Duration::from_millis(ms));
            }
            "sslmode" => {
                ssl = SslMode::parse(&value).ok_or_else(|| {
                    format!("queue.url: `sslmode` is `{value}`: it is one of disable, prefer, require, verify-ca, verify-full")
                })?
            }
            "sslrootcert" => {
                roots = Some(match value.as_str() {
                    "system" => Roots::BuiltIn,
                    path => Roots::File(PathBuf::from(path)),
                })
            }
            k if PASSED.contains(&k) => {
                passed.push_str(k);
                passed.push('=');
                quote_into(&mut passed, &value);
                passed.push(' ');
            }
            k if UNSUPPORTED.contains(&k) => {
                return Err(format!("queue.url: parameter `{k}` is not supported by hookgate"))
            }
            k => {
                let known = PASSED.iter().chain(OWN).chain(UNSUPPORTED);
                let near = known
                    .map(|c| (strsim::jaro_winkler(k, c), *c))
                    .filter(|(score, _)| *score > 0.8)
                    .max_by(|a, b| a.0.total_cmp(&b.0));
                return Err(match near {
                    Some((_, c)) => {
                        format!("queue.url: unknown parameter `{k}` (did you mean `{c}`?)")
                    }
                    None => format!("queue.url: unknown parameter `{k}`"),
                });
            }
        }
    }
    let mut pg = tokio_postgres::Config::from_str(&passed)
        .map_err(|e| format!("queue.url: {}", super::with_causes(&e)))?;
    pg.ssl_mode(match ssl {
        SslMode::Disable => tokio_postgres::config::SslMode::Disable,
        SslMode::Prefer => tokio_postgres::config::SslMode::Prefer,
        _ => tokio_postgres::config::SslMode::Require,
    });
    if pg.get_connect_timeout().is_none() {
        pg.connect_timeout(DEFAULT_CONNECT_TIMEOUT);
    }
    // 0 is libpq's "the system default".
    match tcp_user_timeout {
        None => {
            pg.tcp_user_timeout(DEFAULT_TCP_USER_TIMEOUT);
        }
        Some(t) if !t.is_zero() => {
            pg.tcp_user_timeout(t);
        }
        Some(_) => {}
    }
    if pg.get_application_name().is_none() {
        pg.application_name("hookgate");
    }
    if let Some(Roots::File(path)) = &roots {
        if matches!(ssl, SslMode::Disable) {
            return Err("queue.url: `sslrootcert` is set but `sslmode` is `disable`".into());
        }
        if !path.is_file() {
            return Err(format!(
                "queue.url: `sslrootcert` names {}, which is not a readable file",
                path.display()
            ));
        }
    }
    Ok(Target {
        pg,
        ssl,
        roots: roots.unwrap_or(Roots::BuiltIn),
    })
}

/// Appends `v` quoted for tokio-postgres's keyword parser.
fn quote_into(out: &mut String, v: &str) {
    out.push('\'');
    for c in v.chars() {
        if c == '\'' || c == '\\' {
            out.push('\\');
        }
        out.push(c);
    }
    out.push('\'');
}

/// `key=value` pairs of a libpq keyword string (values may be quoted).
fn keyword_pairs(s: &str) -> Result<Vec<(String, String)>, String> {
    let mut out = Vec::new();
    let mut it = s.chars().peekable();
    loop {
        while it.peek().is_some_and(|c| c.is_whitespace()) {
            it.next();
        }
        if it.peek().is_none() {
            return Ok(out);
        }
        let mut key = String::new();
        while let Some(&c) = it.peek() {
            if c == '=' || c.is_whitespace() {
                break;
            }
            key.push(c);
            it.next();
        }
        while it.peek().is_some_and(|c| c.is_whitespace()) {
            it.next();
        }
        if it.next() != Some('=') {
            return Err(format!(
                "queue.url: `{key}` has no value (a connection string is `key=value` pairs, or a postgresql:// URI)"
            ));
        }
        while it.peek().is_some_and(|c| c.is_whitespace()) {
            it.next();
        }
        let mut value = String::new();
        if it.peek() == Some(&'\'') {
            it.next();
            loop {
                match it.next() {
                    Some('\\') => match it.next() {
                        Some(c) => value.push(c),
                        None => {
                            return Err(format!("queue.url: the value of `{key}` is cut short"))
                        }
                    },
                    Some('\'') => break,
                    Some(c) => value.push(c),
                    None => {
                        return Err(format!(
                            "queue.url: the quote opening `{key}`'s value is never closed"
                        ))
                    }
                }
            }
        } else {
            while let Some(&c) = it.peek() {
                if c.is_whitespace() {
                    break;
                }
                if c == '\\' {
                    it.next();
                    if let Some(c) = it.next() {
                        value.push(c);
                    }
                    continue;
                }
                value.push(c);
                it.next();
            }
        }
        out.push((key, value));
    }
}

/// The pairs a `postgresql://` URI stands for.
fn uri_pairs(s: &str) -> Result<Vec<(String, String)>, String> {
    let rest = s
        .strip_prefix("postgresql://")
        .or_else(|| s.strip_prefix("postgres://"))
        .unwrap_or(s);
    let (rest, query) = match rest.split_once('?') {
        Some((r, q)) => (r, Some(q)),
        None => (rest, None),
    };
    let (authority, db) = match rest.split_once('/') {
        Some((a, d)) => (a, Some(d)),
        None => (rest, None),
    };
    let mut out = Vec::new();
    let hosts = match authority.rsplit_once('@') {
        Some((userinfo, hosts)) => {
            let (user, password) = match userinfo.split_once(':') {
                Some((u, p)) => (u, Some(p)),
                None => (userinfo, None),
            };
            if !user.is_empty() {
                out.push(("user".into(), decode(user, "the user")?));
            }
            if let Some(p) = password {
                out.push(("password".into(), decode(p, "the password")?));
            }
            hosts
        }
        None => authority,
    };
    if !hosts.is_empty() {
        let (mut names, mut ports) = (Vec::new(), Vec::new());
        for h in hosts.split(',') {
            let (name, port) = if let Some(v6) = h.strip_prefix('[') {
                let (addr, after) = v6
                    .split_once(']')
                    .ok_or_else(|| format!("queue.url: host `{h}` opens `[` without closing it"))?;
                (addr, after.strip_prefix(':').unwrap_or(""))
            } else {
                match h.rsplit_once(':') {
                    Some((n, p)) => (n, p),
                    None => (h, ""),
                }
            };
            if !port.is_empty() && port.parse::<u16>().is_err() {
                return Err(format!(
                    "queue.url: port `{port}` of host `{name}` is not a port number"
                ));
            }
            names.push(decode(name, "a host")?);
            ports.push(port.to_owned());
        }
        out.push(("host".into(), names.join(",")));
        if ports.iter().any(|p| !p.is_empty()) {
            out.push(("port".into(), ports.join(",")));
        }
    }
    if let Some(db) = db.filter(|d| !d.is_empty()) {
        out.push(("dbname".into(), decode(db, "the database name")?));
    }
    for kv in query.unwrap_or("").split('&').filter(|kv| !kv.is_empty()) {
        let (k, v) = kv
            .split_once('=')
            .ok_or_else(|| format!("queue.url: parameter `{kv}` has no value"))?;
        let k = decode(k, "a parameter name")?;
        let v = decode(v, "a parameter")?;
        out.push((k, v));
    }
    Ok(out)
}

/// Percent-decodes `s` (`what` names it in the error, never its value).
fn decode(s: &str, what: &str) -> Result<String, String> {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = bytes
                .get(i + 1..i + 3)
                .and_then(|h| std::str::from_utf8(h).ok())
                .and_then(|h| u8::from_str_radix(h, 16).ok())
                .ok_or_else(|| format!("queue.url: {what} holds a bad %-escape"))?;
            out.push(hex);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).map_err(|_| format!("queue.url: {what} is not UTF-8 once %-decoded"))
}

/// The rustls client configuration `target` asks for.
pub fn tls(target: &Target) -> Result<rustls::ClientConfig, String> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = rustls::ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(|e| format!("TLS: {e}"))?;
    let verifier: Arc<dyn ServerCertVerifier> = match target.ssl {
        // No verification, as libpq does without a root certificate:
        // encrypted, but open to a man in the middle.
        SslMode::Disable | SslMode::Prefer | SslMode::Require => Arc::new(Lenient {
            chain: None,
            algs: provider.signature_verification_algorithms,
        }),
        SslMode::VerifyCa | SslMode::VerifyFull => {
            let algs = provider.signature_verification_algorithms;
            let roots = Arc::new(root_store(&target.roots)?);
            let full = WebPkiServerVerifier::builder_with_provider(roots, provider)
                .build()
                .map_err(|e| format!("TLS: {e}"))?;
            match target.ssl {
                SslMode::VerifyCa => Arc::new(Lenient {
                    chain: Some(full),
                    algs,
                }),
                _ => full,
            }
        }
    };
    Ok(builder
        .dangerous()
        .with_custom_certificate_verifier(verifier)
        .with_no_client_auth())
}

fn root_store(roots: &Roots) -> Result<rustls::RootCertStore, String> {
    let mut store = rustls::RootCertStore::empty();
    match roots {
        Roots::BuiltIn => store.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned()),
        Roots::File(path) => {
            let certs = CertificateDer::pem_file_iter(path)
                .and_then(|it| it.collect::<Result<Vec<_>, _>>())
                .map_err(|e| format!("queue.url: `sslrootcert` {}: {e}", path.display()))?;
            let (added, _) = store.add_parsable_certificates(certs);
            if added == 0 {
                return Err(format!(
                    "queue.url: `sslrootcert` {} holds no usable certificate",
                    path.display()
                ));
            }
        }
    }
    Ok(store)
}

/// `verify-ca` (`chain`: the chain must lead to a trusted root; the name
/// is not checked), or `disable`/`prefer`/`require` (`chain` is `None`:
/// any certificate). Either way the handshake's signatures are checked,
/// so the session is encrypted to whoever holds the certificate's key.
#[derive(Debug)]
struct Lenient {
    chain: Option<Arc<WebPkiServerVerifier>>,
    algs: rustls::crypto::WebPkiSupportedAlgorithms,
}

impl ServerCertVerifier for Lenient {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let Some(chain) = &self.chain else {
            return Ok(ServerCertVerified::assertion());
        };
        // rustls checks the chain first, so a name mismatch means the
        // chain was good.
        match chain.verify_server_cert(end_entity, intermediates, server_name, ocsp, now) {
            Err(rustls::Error::InvalidCertificate(
                CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. },
            )) => Ok(ServerCertVerified::assertion()),
            other => other,
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.algs)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.algs)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.algs.supported_schemes()
    }
}

/// The pool: connections are checked only for being closed when handed
/// out; those that failed in a way that says the server is gone or
/// read-only are dropped by [`super::health`], so new ones follow
/// `target_session_attrs` to the primary.
pub fn pool(target: &Target, size: usize) -> Result<deadpool_postgres::Pool, String> {
    let tls = tokio_postgres_rustls::MakeRustlsConnect::new(tls(target)?);
    let manager = deadpool_postgres::Manager::from_config(
        target.pg.clone(),
        tls,
        deadpool_postgres::ManagerConfig {
            recycling_method: deadpool_postgres::RecyclingMethod::Fast,
        },
    );
    let hosts = target.pg.get_hosts().len().max(1) as u32;
    let connect = target
        .pg
        .get_connect_timeout()
        .copied()
        .unwrap_or(DEFAULT_CONNECT_TIMEOUT);
    deadpool_postgres::Pool::builder(manager)
        .max_size(size.max(2))
        .runtime(deadpool_postgres::Runtime::Tokio1)
        .create_timeout(Some(connect * hosts + Duration::from_secs(1)))
        .wait_timeout(Some(Duration::from_secs(30)))
        .build()
        .map_err(|e| format!("queue: cannot make the connection pool: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keyword_strings_and_uris_read_the_same() {
        let a = parse("host=a,b port=5432,5433 dbname=hg user=u password='p w\\'x' target_session_attrs=read-write sslmode=verify-full").unwrap();
        let b = parse("postgresql://u:p%20w'x@a:5432,b:5433/hg?target_session_attrs=read-write&sslmode=verify-full").unwrap();
        for t in [&a, &b] {
            assert_eq!(t.ssl, SslMode::VerifyFull);
            assert_eq!(t.pg.get_ports(), &[5432, 5433]);
            assert_eq!(t.pg.get_hosts().len(), 2);
            assert_eq!(t.pg.get_password(), Some(&b"p w'x"[..]));
            assert_eq!(t.pg.get_dbname(), Some("hg"));
            assert_eq!(
                t.pg.get_ssl_mode(),
                tokio_postgres::config::SslMode::Require
            );
        }
        let d = describe(&a);
        assert_eq!(
            d,
            "database `hg` as `u` on a:5432,b:5433 (sslmode=verify-full, target_session_attrs=read-write)"
        );
        assert!(!d.contains("p w"));
    }

    #[test]
    fn mistakes_are_named_in_the_operators_words_without_the_password() {
        let e = describe_url("host=a sslmod=require password=hunter2").unwrap_err();
        assert_eq!(
            e,
            "queue.url: unknown parameter `sslmod` (did you mean `sslmode`?)"
        );
        let e = describe_url("postgresql://u:hunter2@a/db?sslmode=verify").unwrap_err();
        assert!(e.contains("`sslmode` is `verify`"), "{e}");
        assert!(!e.contains("hunter2"));
        let e = describe_url("postgresql://u:hunter2@a:xyz/db").unwrap_err();
        assert!(e.contains("port `xyz`") && !e.contains("hunter2"), "{e}");
        let e = describe_url("host=a sslcert=/x").unwrap_err();
        assert!(e.contains("not supported"), "{e}");
        let e = describe_url("host=a password='hunter2").unwrap_err();
        assert!(e.contains("never closed") && !e.contains("hunter2"), "{e}");
        let e =
            describe_url("host=a sslmode=verify-ca sslrootcert=/nonexistent/ca.pem").unwrap_err();
        assert!(e.contains("not a readable file"), "{e}");
        let e = describe_url("host=a connect_timeout=soon password=hunter2").unwrap_err();
        assert!(
            e.contains("connect_timeout") && !e.contains("hunter2"),
            "{e}"
        );
    }

    #[test]
    fn sslmodes_make_tls_configs() {
        for mode in ["disable", "prefer", "require", "verify-ca", "verify-full"] {
            let t = parse(&format!("host=a sslmode={mode}")).unwrap();
            tls(&t).unwrap();
        }
        let t = parse("postgresql://[::1]:6432/db?sslrootcert=system&sslmode=verify-ca").unwrap();
        assert_eq!(t.roots, Roots::BuiltIn);
        assert_eq!(t.pg.get_ports(), &[6432]);
        assert_eq!(t.pg.get_connect_timeout(), Some(&DEFAULT_CONNECT_TIMEOUT));
        assert_eq!(t.pg.get_tcp_user_timeout(), Some(&DEFAULT_TCP_USER_TIMEOUT));
        // Milliseconds, as libpq reads it.
        let t = parse("host=a tcp_user_timeout=3000").unwrap();
        assert_eq!(t.pg.get_tcp_user_timeout(), Some(&Duration::from_secs(3)));
        let t = parse("host=a tcp_user_timeout=0").unwrap();
        assert_eq!(t.pg.get_tcp_user_timeout(), None);
    }
}
