//! The config file as written: serde structs close to the TOML, nothing
//! checked beyond shape. `validate` turns these into ready-to-use types.
//!
//! Every field the operator can get wrong is `Spanned`, so an error points at
//! the line and column of the value, not just the section.

use serde::Deserialize;
use toml::Spanned;

/// `[server]`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawServer {
    /// Webhook ingress address, e.g. `127.0.0.1:8080`.
    pub listen: Option<Spanned<String>>,
    /// Loopback address of `/healthz`, `/readyz` and the admin API.
    pub admin_listen: Option<Spanned<String>>,
    /// Directory of the sled database; `$STATE_DIRECTORY` wins when set.
    pub data_dir: Option<Spanned<String>>,
    /// Largest accepted body, in bytes.
    pub max_body_bytes: Option<Spanned<i64>>,
    /// Peers whose `X-Forwarded-For` is believed, as CIDRs.
    pub trusted_proxies: Option<Vec<Spanned<String>>>,
    /// Time a client has to send its request headers (`"10s"`).
    pub header_timeout: Option<Spanned<String>>,
    /// Time a client has to send a whole request, body included (`"30s"`).
    pub request_timeout: Option<Spanned<String>>,
    /// Open ingress connections at most; more wait to be accepted.
    pub max_connections: Option<Spanned<i64>>,
    /// Share one fsync among concurrent requests (default true). Turning it
    /// off costs throughput and exists to measure the difference.
    pub group_commit: Option<bool>,
}

/// A secret reference: exactly one of the three keys.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawSecret {
    pub env: Option<String>,
    pub file: Option<String>,
    pub credential: Option<String>,
}

/// `[sources.NAME]`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawSource {
    pub provider: Spanned<String>,
    pub secret: Option<Spanned<RawSecret>>,
    pub signing_secret: Option<Spanned<RawSecret>>,
    pub allow_ips: Option<Vec<Spanned<String>>>,
    pub max_skew: Option<Spanned<String>>,
    pub dedupe_window: Option<Spanned<String>>,
    pub rate_limit: Option<Spanned<String>>,
    pub legacy_sha1: Option<Spanned<bool>>,
    pub event_from: Option<Spanned<String>>,
    pub id_from: Option<Spanned<String>>,
    pub header: Option<Spanned<String>>,
    pub algorithm: Option<Spanned<String>>,
    pub encoding: Option<Spanned<String>>,
    pub prefix: Option<Spanned<String>>,
    pub timestamp_header: Option<Spanned<String>>,
}
