//! `routes.toml`, in two stages: `raw` mirrors the file, and [`load`] checks
//! every value into the ready-to-use [`Config`] (parsed addresses, CIDRs,
//! durations, built verifiers). All problems are collected with their line
//! and column, so `hookgate check` reports every mistake at once.

mod admin_only;
mod raw;
mod routes;
pub mod secrets;
pub mod sinks;
mod sources;

use std::collections::BTreeMap;
use std::fmt;
use std::net::SocketAddr;
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use ipnet::IpNet;
use serde::de::DeserializeOwned;
use toml::Spanned;

use crate::secret::Secret;
use crate::verify::Provider;
pub use admin_only::admin_of;
use raw::{RawQueue, RawRoute, RawSecret, RawServer, RawSink, RawSource};
use secrets::{Resolver, SecretRef, SecretShape};
pub use sinks::{SinkConfig, SinkKind};

/// The validated configuration. Runtime code sees only this.
#[derive(Debug)]
pub struct Config {
    pub server: Server,
    pub queue: QueueConfig,
    pub sources: BTreeMap<String, Source>,
    pub sinks: BTreeMap<String, SinkConfig>,
    pub routes: crate::route::Routes,
}

/// Longest duration any key takes (larger ones overflow time arithmetic).
const LONGEST_DURATION: Duration = Duration::from_secs(3650 * 86_400);

/// `[queue]`: which storage backend.
#[derive(Debug, Clone, Default)]
pub enum QueueConfig {
    /// The event log and the state file under `server.data_dir`.
    #[default]
    Local,
    /// A PostgreSQL database shared by any number of instances.
    Postgres {
        /// The connection string (`Err`: its secret is missing).
        url: Result<Secret, String>,
        pool_size: usize,
    },
}

/// Connections an instance keeps to PostgreSQL unless `pool_size` says.
pub const DEFAULT_POOL_SIZE: usize = 16;

/// How long dead letters are kept unless `server.dead_letter_retention`
/// says: long enough to notice and replay them after a holiday.
pub const DEFAULT_DEAD_LETTER_RETENTION: Duration = Duration::from_secs(30 * 86_400);

#[derive(Debug, Clone)]
pub struct Server {
    pub listen: SocketAddr,
    pub admin_listen: SocketAddr,
    /// Required by the admin API and `/metrics` (`Err`: its secret is
    /// missing, and the API refuses everyone).
    pub admin_token: Option<Result<Secret, String>>,
    /// Names the admin listener answers to besides IP literals and
    /// `localhost`: lower-case, each with or without a port.
    pub admin_hosts: Vec<String>,
    pub data_dir: PathBuf,
    pub max_body_bytes: usize,
    pub trusted_proxies: Vec<IpNet>,
    pub header_timeout: Duration,
    pub request_timeout: Duration,
    pub max_connections: usize,
    pub group_commit: bool,
    /// How long routed events stay in the log.
    pub retention: Duration,
    /// How long a dead letter stays after it died (its `dead_ms`).
    pub dead_letter_retention: Duration,
    /// TLS for the ingress listener, certificates already loaded.
    pub tls: Option<Arc<rustls::ServerConfig>>,
}

/// One inbound endpoint, `POST /hooks/{name}`.
#[derive(Debug)]
pub struct Source {
    pub name: String,
    pub provider: ProviderKind,
    pub proof: Proof,
    /// `None` lets any address in.
    pub allow_ips: Option<Vec<IpNet>>,
    pub dedupe_window: Duration,
    pub rate_limit: Option<Rate>,
}

/// Whether a source can prove anything. A source whose secret is missing is
/// closed (503), never open.
#[derive(Debug, Clone)]
pub enum Proof {
    Ready(Arc<dyn Provider>),
    Closed(String),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProviderKind {
    Github,
    Gitlab,
    Jira,
    Figma,
    Zendesk,
    Intercom,
    Standard,
    Hmac,
}

impl ProviderKind {
    pub const ALL: [(&'static str, ProviderKind); 8] = [
        ("github", ProviderKind::Github),
        ("gitlab", ProviderKind::Gitlab),
        ("jira", ProviderKind::Jira),
        ("figma", ProviderKind::Figma),
        ("zendesk", ProviderKind::Zendesk),
        ("intercom", ProviderKind::Intercom),
        ("standard", ProviderKind::Standard),
        ("hmac", ProviderKind::Hmac),
    ];

    pub fn name(self) -> &'static str {
        Self::ALL
            .iter()
            .find(|(_, k)| *k == self)
            .expect("listed")
            .0
    }

    fn parse(s: &str) -> Option<ProviderKind> {
        Self::ALL.iter().find(|(n, _)| *n == s).map(|(_, k)| *k)
    }

    fn has_timestamp(self) -> bool {
        matches!(
            self,
            ProviderKind::Zendesk
                | ProviderKind::Standard
                | ProviderKind::Gitlab
                | ProviderKind::Hmac
        )
    }
}

/// A per-source request rate: `burst` requests, refilled at `per_second`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Rate {
    pub burst: u32,
    pub per_second: f64,
}

/// One mistake in the file, with where it is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    pub line: usize,
    pub column: usize,
    /// Dotted key, e.g. `sources.github.allow_ips`.
    pub key: String,
    pub message: String,
}

/// Every problem found in one file.
#[derive(Debug, Clone)]
pub struct ConfigErrors {
    pub file: PathBuf,
    pub problems: Vec<Problem>,
}

impl fmt::Display for ConfigErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, p) in self.problems.iter().enumerate() {
            if i > 0 {
                writeln!(f)?;
            }
            write!(f, "{}", p.display(&self.file))?;
        }
        Ok(())
    }
}

impl std::error::Error for ConfigErrors {}

impl Problem {
    pub fn display(&self, file: &Path) -> String {
        let key = if self.key.is_empty() {
            String::new()
        } else {
            format!("{}: ", self.key)
        };
        // Line 0: about the whole file (it could not be read).
        if self.line == 0 {
            return format!("{}: {key}{}", file.display(), self.message);
        }
        format!(
            "{}:{}:{}: {key}{}",
            file.display(),
            self.line,
            self.column,
            self.message
        )
    }
}

/// A loaded config, plus the secrets it could not read. `check` treats those
/// as errors; `serve` starts with the affected sources closed.
#[derive(Debug)]
pub struct Loaded {
    pub config: Config,
    pub secret_problems: Vec<Problem>,
    /// Not errors, but worth changing (a webhook URL in plain text, a
    /// retired Teams connector).
    pub warnings: Vec<Problem>,
}

/// Reads and validates `path`.
pub fn load(path: &Path, resolver: &Resolver) -> Result<Loaded, ConfigErrors> {
    let text = std::fs::read_to_string(path).map_err(|e| ConfigErrors {
        // Said in full: a relative name does not tell which directory the
        // daemon looked in (systemd's is `/`).
        file: std::path::absolute(path).unwrap_or_else(|_| path.to_owned()),
        problems: vec![Problem {
            line: 0,
            column: 0,
            key: String::new(),
            message: format!("cannot read the config file: {e} (pass its path with --config)"),
        }],
    })?;
    let base_dir = path
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    parse_in(&text, base_dir, resolver).map_err(|problems| ConfigErrors {
        file: path.to_owned(),
        problems,
    })
}

/// Validates config text; template files are read relative to the current
/// directory.
pub fn parse(text: &str, resolver: &Resolver) -> Result<Loaded, Vec<Problem>> {
    parse_in(text, Path::new("."), resolver)
}

/// Validates config text; template files are read relative to `base_dir`.
pub fn parse_in(text: &str, base_dir: &Path, resolver: &Resolver) -> Result<Loaded, Vec<Problem>> {
    let mut cx = Cx {
        text,
        problems: Vec::new(),
        secret_problems: Vec::new(),
        warnings: Vec::new(),
        resolver,
    };
    let doc = match toml::de::DeTable::parse(text) {
        Ok(doc) => doc,
        Err(e) => {
            cx.toml_error(&e, "");
            return Err(cx.problems);
        }
    };
    let mut server = None;
    let mut queue = None;
    let mut sources = BTreeMap::new();
    let mut sinks = BTreeMap::new();
    let mut raw_routes = Vec::new();
    // Every source and sink the file declares, valid or not: a route that
    // names one with a mistake of its own is not wrong too.
    let mut declared_sources = std::collections::BTreeSet::new();
    let mut declared_sinks = std::collections::BTreeSet::new();
    for (key, value) in doc.get_ref().iter() {
        match key.get_ref().as_ref() {
            "server" => {
                if let Some(raw) = cx.deserialize::<RawServer>(value.clone(), "server") {
                    server = Some(cx.server(raw));
                }
            }
            "queue" => {
                if let Some(raw) = cx.deserialize::<RawQueue>(value.clone(), "queue") {
                    queue = Some(cx.queue(raw));
                }
            }
            "sources" => {
                let Some(table) = value.get_ref().as_table() else {
                    cx.err(value.span(), "sources", "must be a table of [sources.NAME]");
                    continue;
                };
                for (name, value) in table.iter() {
                    let name = name.get_ref().to_string();
                    declared_sources.insert(name.clone());
                    let at = format!("sources.{name}");
                    if let Err(msg) = check_name(&name) {
                        cx.err(value.span(), &at, msg);
                    }
                    if let Some(raw) = cx.deserialize::<RawSource>(value.clone(), &at) {
                        if let Some(source) = cx.source(&name, raw) {
                            sources.insert(name, source);
                        }
                    }
                }
            }
            "sinks" => {
                let Some(table) = value.get_ref().as_table() else {
                    cx.err(value.span(), "sinks", "must be a table of [sinks.NAME]");
                    continue;
                };
                for (name, value) in table.iter() {
                    let name = name.get_ref().to_string();
                    declared_sinks.insert(name.clone());
                    let at = format!("sinks.{name}");
                    if let Err(msg) = check_name(&name) {
                        cx.err(value.span(), &at, msg);
                    }
                    if let Some(raw) = cx.deserialize::<RawSink>(value.clone(), &at) {
                        if let Some(sink) = cx.sink(&name, raw) {
                            sinks.insert(name, sink);
                        }
                    }
                }
            }
            "routes" => {
                let Some(list) = value.get_ref().as_array() else {
                    cx.err(
                        value.span(),
                        "routes",
                        "must be an array of [[routes]] tables",
                    );
                    continue;
                };
                for (i, value) in list.iter().enumerate() {
                    let span = value.span();
                    if let Some(raw) =
                        cx.deserialize::<RawRoute>(value.clone(), &format!("routes[{i}]"))
                    {
                        raw_routes.push((span, raw));
                    }
                }
            }
            other => {
                let message = match crate::suggest::closest(other, SECTIONS) {
                    Some(meant) => format!("unknown section `{other}`: did you mean `{meant}`?"),
                    None => format!("unknown section `{other}`: the sections are `server`, `queue`, `sources`, `sinks` and `routes`"),
                };
                cx.err(key.span(), other, message)
            }
        }
    }
    let declared = Declared {
        sources: &declared_sources,
        sinks: &declared_sinks,
    };
    let routes = cx.routes(raw_routes, &declared, &sinks, base_dir);
    let server = server.unwrap_or_else(|| cx.server(RawServer::default()));
    if sources.is_empty() && cx.problems.is_empty() {
        cx.err(0..0, "sources", "no sources: add a [sources.NAME] table");
    }
    cx.problems.sort_by_key(|p| (p.line, p.column));
    cx.secret_problems.sort_by_key(|p| (p.line, p.column));
    if let (true, Some(routes)) = (cx.problems.is_empty(), routes) {
        Ok(Loaded {
            config: Config {
                server,
                queue: queue.unwrap_or_default(),
                sources,
                sinks,
                routes,
            },
            secret_problems: cx.secret_problems,
            warnings: cx.warnings,
        })
    } else {
        Err(cx.problems)
    }
}

const SECTIONS: [&str; 5] = ["server", "queue", "sources", "sinks", "routes"];

/// The names of every `[sources.NAME]` and `[sinks.NAME]` in the file.
struct Declared<'a> {
    sources: &'a std::collections::BTreeSet<String>,
    sinks: &'a std::collections::BTreeSet<String>,
}

/// Source names become URL path segments.
fn check_name(name: &str) -> Result<(), String> {
    let ok = !name.is_empty()
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
    if ok {
        Ok(())
    } else {
        Err(format!(
            "`{name}` cannot be a URL path segment: use letters, digits, `-` and `_`"
        ))
    }
}

struct Cx<'a> {
    text: &'a str,
    problems: Vec<Problem>,
    secret_problems: Vec<Problem>,
    warnings: Vec<Problem>,
    resolver: &'a Resolver,
}

impl Cx<'_> {
    fn problem(&self, span: Range<usize>, key: &str, message: impl Into<String>) -> Problem {
        let (line, column) = line_col(self.text, span.start);
        Problem {
            line,
            column,
            key: key.to_owned(),
            message: message.into(),
        }
    }

    fn err(&mut self, span: Range<usize>, key: &str, message: impl Into<String>) {
        let p = self.problem(span, key, message);
        self.problems.push(p);
    }

    fn warn(&mut self, span: Range<usize>, key: &str, message: impl Into<String>) {
        let p = self.problem(span, key, message);
        self.warnings.push(p);
    }

    fn toml_error(&mut self, e: &toml::de::Error, key: &str) {
        let span = e.span().unwrap_or(0..0);
        let message = type_hint(&e.message().trim().replace('\n', " "));
        self.err(span, key, message);
    }

    /// Deserialises one section. A key that is unknown or of the wrong type
    /// is reported, dropped, and the rest read again, so one mistake does
    /// not hide the next, and the section still exists for what refers to
    /// it. `None` only when a required key is missing (or was dropped).
    fn deserialize<T: DeserializeOwned>(
        &mut self,
        value: Spanned<toml::de::DeValue<'_>>,
        key: &str,
    ) -> Option<T> {
        let mut value = value;
        value.get_mut().make_owned();
        // Keys dropped, and what a misspelt one was probably meant to be:
        // neither is then "missing" too.
        let mut dropped: Vec<String> = Vec::new();
        // Each round drops a key or renames one to a known key (once).
        let rounds = match value.get_ref() {
            toml::de::DeValue::Table(t) => 2 * t.len() + 1,
            _ => 1,
        };
        for _ in 0..rounds {
            let e = match T::deserialize(toml::de::ValueDeserializer::from(value.clone())) {
                Ok(v) => return Some(v),
                Err(e) => e,
            };
            let message = e.message().trim().replace('\n', " ");
            if dropped
                .iter()
                .any(|k| message == format!("missing field `{k}`"))
            {
                return None;
            }
            let span = e.span().unwrap_or(0..0);
            let toml::de::DeValue::Table(table) = value.get_mut() else {
                self.toml_error(&e, key);
                return None;
            };
            // The entry the error is in: its key, or anywhere in its value.
            let inside =
                |r: std::ops::Range<usize>| r.contains(&span.start) || r.start == span.start;
            let found = table
                .iter()
                .find(|(k, v)| inside(k.span()) || inside(v.span()))
                .map(|(k, v)| (k.clone(), v.clone()));
            let Some((culprit, culprit_value)) = found else {
                self.toml_error(&e, key);
                return None;
            };
            let name = culprit.get_ref().to_string();
            let (message, meant) = unknown_field_hint(&type_hint(&message));
            self.err(span.clone(), &format!("{key}.{name}"), message);
            table.remove(&culprit);
            dropped.push(name);
            match meant {
                // A misspelt key of this table: check its value as the
                // key it was meant to be.
                Some(meant)
                    if inside(culprit.span())
                        && !table.iter().any(|(k, _)| k.get_ref().as_ref() == meant) =>
                {
                    let key = Spanned::new(culprit.span(), std::borrow::Cow::Owned(meant));
                    table.insert(key, culprit_value);
                }
                Some(meant) => dropped.push(meant),
                None => {}
            }
        }
        None
    }

    fn duration(&mut self, v: &Option<Spanned<String>>, key: &str, default: Duration) -> Duration {
        let Some(v) = v else { return default };
        match humantime::parse_duration(v.get_ref()) {
            Ok(d) if d.is_zero() => {
                self.err(v.span(), key, "must be longer than zero");
                default
            }
            Ok(d) if d > LONGEST_DURATION => {
                self.err(
                    v.span(),
                    key,
                    format!("`{}` is too long: at most 3650 days", v.get_ref()),
                );
                default
            }
            Ok(d) => d,
            Err(_) => {
                self.err(
                    v.span(),
                    key,
                    format!(
                        "`{}` is not a duration: write it like \"30s\", \"5m\" or \"7d\"",
                        v.get_ref()
                    ),
                );
                default
            }
        }
    }

    /// `server.admin_hosts`: each a name as clients write it in `Host`.
    fn hosts(&mut self, list: &[Spanned<String>]) -> Vec<String> {
        let mut out = Vec::new();
        for item in list {
            let s = item.get_ref().trim().to_ascii_lowercase();
            match s.parse::<http::uri::Authority>() {
                Ok(a)
                    if !s.contains('@')
                        && !a.host().is_empty()
                        && (a.host().starts_with('[')
                            || a.host()
                                .bytes()
                                .all(|b| b.is_ascii_alphanumeric() || b == b'.' || b == b'-')) =>
                {
                    out.push(s)
                }
                _ => self.err(
                    item.span(),
                    "server.admin_hosts",
                    format!("`{}` is not a host name: write it as clients send it in Host, like \"hookgate.internal\" or \"hookgate.internal:9090\" (no scheme, no path)", item.get_ref()),
                ),
            }
        }
        out
    }

    fn cidrs(&mut self, list: &[Spanned<String>], key: &str) -> Vec<IpNet> {
        let mut out = Vec::new();
        for item in list {
            let s = item.get_ref().trim();
            // A bare address means that one host.
            let parsed = s
                .parse::<IpNet>()
                .or_else(|_| s.parse::<std::net::IpAddr>().map(IpNet::from));
            match parsed {
                // 10.1.2.3/8 would silently widen to all of 10.0.0.0/8.
                Ok(net) if net.trunc() != net => self.err(
                    item.span(),
                    key,
                    format!(
                        "`{s}` has bits set past its /{}: write the network, `{}`, or the host, `{}/{}`",
                        net.prefix_len(),
                        net.trunc(),
                        net.addr(),
                        net.max_prefix_len()
                    ),
                ),
                Ok(net) => {
                    if net.prefix_len() == 0 {
                        self.warn(
                            item.span(),
                            key,
                            format!("`{s}` is every address: for trusted_proxies that believes anyone's X-Forwarded-For"),
                        );
                    }
                    out.push(net)
                }
                Err(_) => self.err(
                    item.span(),
                    key,
                    format!("`{s}` is not an IP network: write it like \"192.30.252.0/22\" or \"2001:db8::/32\""),
                ),
            }
        }
        out
    }

    fn addr(&mut self, v: &Option<Spanned<String>>, key: &str, default: &str) -> SocketAddr {
        let fallback = default.parse().expect("default address");
        let Some(v) = v else { return fallback };
        match v.get_ref().parse() {
            Ok(a) => a,
            Err(_) => {
                self.err(
                    v.span(),
                    key,
                    format!("`{}` is not an address: write it like \"127.0.0.1:8080\" or \"[::1]:8080\"", v.get_ref()),
                );
                fallback
            }
        }
    }

    /// A count from 1 to `max`.
    fn positive(
        &mut self,
        v: &Option<Spanned<i64>>,
        key: &str,
        default: usize,
        max: usize,
    ) -> usize {
        match v {
            None => default,
            Some(n) if (1..=max as i64).contains(n.get_ref()) => *n.get_ref() as usize,
            Some(n) => {
                self.err(n.span(), key, format!("must be a number from 1 to {max}"));
                default
            }
        }
    }

    fn server(&mut self, raw: RawServer) -> Server {
        let listen = self.addr(&raw.listen, "server.listen", "127.0.0.1:8080");
        let admin_listen = self.addr(&raw.admin_listen, "server.admin_listen", "127.0.0.1:9090");
        let admin_token = match raw.admin_token.as_ref() {
            None => None,
            Some(t) => self.resolve(t, "server.admin_token", SecretShape::External),
        };
        if !admin_listen.ip().is_loopback() && raw.admin_token.is_none() {
            let span = raw.admin_listen.as_ref().map(|v| v.span()).unwrap_or(0..0);
            self.err(
                span,
                "server.admin_listen",
                "an admin listener off loopback needs `admin_token = { env = \"…\" }` (or bind it to 127.0.0.1 / [::1])",
            );
        }
        let data_dir = match std::env::var_os("STATE_DIRECTORY") {
            // systemd may pass several, colon-separated; the first is ours.
            Some(dirs) => PathBuf::from(
                dirs.to_string_lossy()
                    .split(':')
                    .next()
                    .unwrap_or_default()
                    .to_owned(),
            ),
            None => PathBuf::from(
                raw.data_dir
                    .as_ref()
                    .map(|d| d.get_ref().as_str())
                    .unwrap_or("./data"),
            ),
        };
        let max_body_bytes = self.positive(
            &raw.max_body_bytes,
            "server.max_body_bytes",
            1 << 20,
            usize::MAX >> 1,
        );
        const MAX_BODY_CEILING: usize = 64 << 20;
        if max_body_bytes > MAX_BODY_CEILING {
            let span = raw
                .max_body_bytes
                .as_ref()
                .map(|v| v.span())
                .unwrap_or(0..0);
            self.err(
                span,
                "server.max_body_bytes",
                format!("at most {MAX_BODY_CEILING} (GitHub's largest payload is 25 MB)"),
            );
        }
        let trusted_proxies = self.cidrs(
            raw.trusted_proxies.as_deref().unwrap_or_default(),
            "server.trusted_proxies",
        );
        let admin_hosts = self.hosts(raw.admin_hosts.as_deref().unwrap_or_default());
        Server {
            listen,
            admin_listen,
            admin_token,
            admin_hosts,
            data_dir,
            max_body_bytes,
            trusted_proxies,
            header_timeout: self.duration(
                &raw.header_timeout,
                "server.header_timeout",
                Duration::from_secs(10),
            ),
            request_timeout: self.duration(
                &raw.request_timeout,
                "server.request_timeout",
                Duration::from_secs(30),
            ),
            max_connections: self.positive(
                &raw.max_connections,
                "server.max_connections",
                4096,
                1_000_000,
            ),
            group_commit: raw.group_commit.unwrap_or(true),
            tls: raw.tls.as_ref().and_then(|t| {
                match tls_config(&t.get_ref().cert, &t.get_ref().key) {
                    Ok(c) => Some(c),
                    Err(msg) => {
                        self.err(t.span(), "server.tls", msg);
                        None
                    }
                }
            }),
            retention: self.duration(
                &raw.retention,
                "server.retention",
                Duration::from_secs(7 * 24 * 3600),
            ),
            dead_letter_retention: self.duration(
                &raw.dead_letter_retention,
                "server.dead_letter_retention",
                DEFAULT_DEAD_LETTER_RETENTION,
            ),
        }
    }

    fn queue(&mut self, raw: RawQueue) -> QueueConfig {
        let backend = raw.backend.as_ref();
        match backend.map(|b| b.get_ref().as_str()) {
            None | Some("local") => {
                for (set, key) in [
                    (raw.url.as_ref().map(|u| u.span()), "queue.url"),
                    (raw.pool_size.as_ref().map(|p| p.span()), "queue.pool_size"),
                ] {
                    if let Some(span) = set {
                        self.err(
                            span,
                            key,
                            "only the postgres backend takes it: set `backend = \"postgres\"` or remove it",
                        );
                    }
                }
                QueueConfig::Local
            }
            Some("postgres") => {
                let pool_size =
                    self.positive(&raw.pool_size, "queue.pool_size", DEFAULT_POOL_SIZE, 1024);
                let url = match raw.url.as_ref() {
                    None => {
                        let span = backend.map(|b| b.span()).unwrap_or(0..0);
                        self.err(
                            span,
                            "queue.url",
                            "the postgres backend needs `url = { env = \"HOOKGATE_DATABASE_URL\" }` (a libpq connection string)",
                        );
                        return QueueConfig::Local;
                    }
                    Some(u) => self.resolve(u, "queue.url", SecretShape::External),
                };
                let Some(url) = url else {
                    return QueueConfig::Local;
                };
                if let Ok(text) = &url {
                    let span = raw.url.as_ref().map_or(0..0, |u| u.span());
                    let checked = std::str::from_utf8(text.expose())
                        .map_err(|_| "the connection string is not UTF-8 text".to_owned())
                        .and_then(|t| crate::queue::postgres::describe_url(t.trim()));
                    if let Err(e) = checked {
                        // `describe_url` names the key itself.
                        let e = e.strip_prefix("queue.url: ").unwrap_or(&e).to_owned();
                        self.err(span, "queue.url", e);
                    }
                }
                QueueConfig::Postgres { url, pool_size }
            }
            Some(other) => {
                let message = match crate::suggest::closest(other, ["local", "postgres"]) {
                    Some(meant) => format!("unknown backend `{other}`: did you mean `{meant}`?"),
                    None => format!("unknown backend `{other}`: it is `local` or `postgres`"),
                };
                let span = backend.map(|b| b.span()).unwrap_or(0..0);
                self.err(span, "queue.backend", message);
                QueueConfig::Local
            }
        }
    }

    fn secret_ref(&mut self, span: Range<usize>, r: &RawSecret, key: &str) -> Option<SecretRef> {
        let refs: Vec<SecretRef> = [
            r.env.clone().map(SecretRef::Env),
            r.file.clone().map(|f| SecretRef::File(f.into())),
            r.credential.clone().map(SecretRef::Credential),
        ]
        .into_iter()
        .flatten()
        .collect();
        match <[SecretRef; 1]>::try_from(refs) {
            Ok([one]) => Some(one),
            Err(_) => {
                self.err(
                    span,
                    key,
                    "a secret is exactly one of { env = \"NAME\" }, { file = \"PATH\" } or { credential = \"NAME\" }",
                );
                None
            }
        }
    }

    /// Reads a secret; a missing one is a secret problem, not a config error.
    fn resolve(
        &mut self,
        raw: &Spanned<RawSecret>,
        key: &str,
        shape: SecretShape,
    ) -> Option<Result<Secret, String>> {
        self.resolve_at(raw.span(), raw.get_ref(), key, shape)
    }

    fn resolve_at(
        &mut self,
        span: Range<usize>,
        raw: &RawSecret,
        key: &str,
        shape: SecretShape,
    ) -> Option<Result<Secret, String>> {
        let r = self.secret_ref(span.clone(), raw, key)?;
        Some(match self.resolver.resolve(&r, shape) {
            Ok(s) => Ok(s),
            Err(e) => {
                let p = self.problem(span, key, e.to_string());
                self.secret_problems.push(p);
                Err(format!("secret {r} is unavailable: {e}"))
            }
        })
    }
}

/// A rustls server config from PEM files (ring, TLS 1.2 and 1.3).
pub fn tls_config(cert: &str, key: &str) -> Result<Arc<rustls::ServerConfig>, String> {
    use rustls_pki_types::pem::PemObject;
    use rustls_pki_types::{CertificateDer, PrivateKeyDer};
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(cert)
        .and_then(|it| it.collect::<Result<_, _>>())
        .map_err(|e| format!("cannot read certificates from {cert}: {e}"))?;
    if certs.is_empty() {
        return Err(format!("{cert} holds no PEM certificate"));
    }
    let key = PrivateKeyDer::from_pem_file(key)
        .map_err(|e| format!("cannot read a private key from {key}: {e}"))?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .and_then(|b| b.with_no_client_auth().with_single_cert(certs, key))
        .map(Arc::new)
        .map_err(|e| format!("the certificate and key do not make a TLS config: {e}"))
}

/// serde's "unknown field `x`, expected one of `a`, `b`" said as the
/// operator's mistake, with the closest key; and that key.
fn unknown_field_hint(message: &str) -> (String, Option<String>) {
    let Some(rest) = message.strip_prefix("unknown field `") else {
        return (message.to_owned(), None);
    };
    let Some((wrong, expected)) = rest.split_once('`') else {
        return (message.to_owned(), None);
    };
    let keys: Vec<&str> = expected.split('`').skip(1).step_by(2).collect();
    let meant = crate::suggest::closest(wrong, keys.iter().copied());
    let message = match meant {
        Some(k) => format!("unknown key `{wrong}`: did you mean `{k}`?"),
        None if keys.is_empty() => format!("unknown key `{wrong}`: this table takes no keys"),
        None => format!(
            "unknown key `{wrong}`: the keys here are {}",
            keys.join(", ")
        ),
    };
    (message, meant.map(str::to_owned))
}

/// serde's "invalid type: string \"64k\", expected i64" said in the
/// operator's words: what the value is, and what to write instead. Any
/// other message is returned as it is.
pub(crate) fn type_hint(message: &str) -> String {
    let Some((found, expected)) = message
        .strip_prefix("invalid type: ")
        .and_then(|m| m.rsplit_once(", expected "))
    else {
        return message.to_owned();
    };
    // serde's `Unexpected`: `string "x"`, `integer `1``, `boolean `true``…
    let quoted = |prefix: &str| {
        found
            .strip_prefix(prefix)
            .map(|v| v.trim_matches('`').to_owned())
    };
    let what = if let Some(v) = quoted("string ") {
        format!("{v} is text")
    } else if let Some(v) = quoted("integer ") {
        format!("{v} is a number")
    } else if let Some(v) = quoted("floating point ") {
        format!("{v} is a number with a fraction")
    } else if let Some(v) = quoted("boolean ") {
        format!("{v} is a boolean")
    } else if found == "sequence" {
        "this is a list".to_owned()
    } else if found == "map" {
        "this is a table".to_owned()
    } else {
        return message.to_owned();
    };
    let write = match expected {
        "i8" | "i16" | "i32" | "i64" | "u8" | "u16" | "u32" | "u64" | "usize" => {
            "a whole number without quotes, like 65536".to_owned()
        }
        "f32" | "f64" => "a number without quotes, like 1.5".to_owned(),
        "a boolean" => "true or false, without quotes".to_owned(),
        "a string" | "a borrowed string" => "text in quotes".to_owned(),
        "a sequence" if found == "map" => {
            "a list in brackets, like [\"a\", \"b\"] (a list of tables is `[[name]]`, once per table)".to_owned()
        }
        "a sequence" => "a list in brackets, like [\"a\", \"b\"]".to_owned(),
        e if (e == "a map" || e.starts_with("struct ")) && found == "sequence" => {
            "one table (`[[name]]` makes a list of tables; a table is `[name]`, or { key = \"value\" })".to_owned()
        }
        e if e == "a map" || e.starts_with("struct ") => {
            "a table, like { key = \"value\" }".to_owned()
        }
        other => other.to_owned(),
    };
    format!("{what}: write {write}")
}

/// Parses `N/s`, `N/m` or `N/h`.
fn parse_rate(s: &str) -> Option<Rate> {
    let (n, unit) = s.trim().split_once('/')?;
    let n: u32 = n.trim().parse().ok().filter(|n| *n > 0)?;
    let secs = match unit.trim() {
        "s" | "sec" | "second" => 1.0,
        "m" | "min" | "minute" => 60.0,
        "h" | "hour" => 3600.0,
        _ => return None,
    };
    Some(Rate {
        burst: n,
        per_second: f64::from(n) / secs,
    })
}

/// Where a TOML error is in `text`, as `:LINE:COL` after a file's name
/// (nothing when the error has no place).
pub(crate) fn place_of(text: &str, e: &toml::de::Error) -> String {
    e.span().map_or(String::new(), |s| {
        let (line, col) = line_col(text, s.start);
        format!(":{line}:{col}")
    })
}

/// 1-based line and column (in characters) of a byte offset.
pub(crate) fn line_col(text: &str, offset: usize) -> (usize, usize) {
    let offset = offset.min(text.len());
    let before = &text[..offset];
    let line = before.matches('\n').count() + 1;
    let line_start = before.rfind('\n').map_or(0, |i| i + 1);
    (line, before[line_start..].chars().count() + 1)
}

#[cfg(test)]
mod tests;
