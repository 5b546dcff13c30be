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
    /// Address of `/healthz`, `/readyz`, `/metrics` and the admin API.
    pub admin_listen: Option<Spanned<String>>,
    /// Bearer token the admin API and `/metrics` require; needed when
    /// `admin_listen` is not a loopback address.
    pub admin_token: Option<Spanned<RawSecret>>,
    /// Names clients may use in `Host` to reach the admin listener, beyond
    /// its IP addresses and `localhost` (`"hookgate.internal"`, or with a
    /// port to allow only that one).
    pub admin_hosts: Option<Vec<Spanned<String>>>,
    /// Directory of the local queue (`log/`, `state/`); `$STATE_DIRECTORY`
    /// wins when set.
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
    /// How long routed events stay in the log for inspection (`"7d"`).
    pub retention: Option<Spanned<String>>,
    /// How long a dead letter is kept for inspection and replay after it
    /// died (`"30d"`); then it is deleted and counted.
    pub dead_letter_retention: Option<Spanned<String>>,
    /// Serve the ingress over TLS (PEM files; re-read on reload).
    pub tls: Option<Spanned<RawTls>>,
}

/// `[queue]`: where events and delivery state are kept.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawQueue {
    /// `"local"` (the default: `server.data_dir`) or `"postgres"`.
    pub backend: Option<Spanned<String>>,
    /// postgres: a libpq connection string or URI, as a secret (it holds
    /// the password).
    pub url: Option<Spanned<RawSecret>>,
    /// postgres: connections this instance keeps open at most.
    pub pool_size: Option<Spanned<i64>>,
}

/// `tls = { cert = "…", key = "…" }`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawTls {
    pub cert: String,
    pub key: String,
}

/// A secret reference: exactly one of the three keys.
#[derive(Debug)]
pub struct RawSecret {
    pub env: Option<String>,
    pub file: Option<String>,
    pub credential: Option<String>,
}

/// Said when a secret is written in the file itself: the value is never
/// repeated (the error goes to the terminal and the journal).
const SECRET_INLINE: &str = "a secret is never written in the file: write { env = \"NAME\" }, { file = \"PATH\" } or { credential = \"NAME\" }";

impl<'de> Deserialize<'de> for RawSecret {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(deny_unknown_fields)]
        struct Keys {
            env: Option<String>,
            file: Option<String>,
            credential: Option<String>,
        }
        struct Shape;
        impl<'de> serde::de::Visitor<'de> for Shape {
            type Value = RawSecret;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("{ env = \"NAME\" }, { file = \"PATH\" } or { credential = \"NAME\" }")
            }
            fn visit_map<A: serde::de::MapAccess<'de>>(
                self,
                map: A,
            ) -> Result<RawSecret, A::Error> {
                let k = Keys::deserialize(serde::de::value::MapAccessDeserializer::new(map))?;
                Ok(RawSecret {
                    env: k.env,
                    file: k.file,
                    credential: k.credential,
                })
            }
            fn visit_str<E: serde::de::Error>(self, _: &str) -> Result<RawSecret, E> {
                Err(E::custom(SECRET_INLINE))
            }
            fn visit_i64<E: serde::de::Error>(self, _: i64) -> Result<RawSecret, E> {
                Err(E::custom(SECRET_INLINE))
            }
            fn visit_u64<E: serde::de::Error>(self, _: u64) -> Result<RawSecret, E> {
                Err(E::custom(SECRET_INLINE))
            }
            fn visit_f64<E: serde::de::Error>(self, _: f64) -> Result<RawSecret, E> {
                Err(E::custom(SECRET_INLINE))
            }
            fn visit_bool<E: serde::de::Error>(self, _: bool) -> Result<RawSecret, E> {
                Err(E::custom(SECRET_INLINE))
            }
        }
        d.deserialize_any(Shape)
    }
}

/// A source's `secret`: one reference, or a list while rotating
/// (`[{ env = "NEW" }, { env = "OLD" }]`), any of which verifies.
#[derive(Debug)]
pub enum RawSecrets {
    One(RawSecret),
    List(Vec<Spanned<RawSecret>>),
}

impl<'de> Deserialize<'de> for RawSecrets {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct Shape;
        impl<'de> serde::de::Visitor<'de> for Shape {
            type Value = RawSecrets;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("{ env = \"NAME\" } (or { file } / { credential }), or a list of them while rotating")
            }
            fn visit_map<A: serde::de::MapAccess<'de>>(
                self,
                map: A,
            ) -> Result<RawSecrets, A::Error> {
                RawSecret::deserialize(serde::de::value::MapAccessDeserializer::new(map))
                    .map(RawSecrets::One)
            }
            fn visit_seq<A: serde::de::SeqAccess<'de>>(
                self,
                mut seq: A,
            ) -> Result<RawSecrets, A::Error> {
                let mut list = Vec::new();
                while let Some(s) = seq.next_element::<Spanned<RawSecret>>()? {
                    list.push(s);
                }
                Ok(RawSecrets::List(list))
            }
            fn visit_str<E: serde::de::Error>(self, _: &str) -> Result<RawSecrets, E> {
                Err(E::custom(SECRET_INLINE))
            }
            fn visit_i64<E: serde::de::Error>(self, _: i64) -> Result<RawSecrets, E> {
                Err(E::custom(SECRET_INLINE))
            }
            fn visit_u64<E: serde::de::Error>(self, _: u64) -> Result<RawSecrets, E> {
                Err(E::custom(SECRET_INLINE))
            }
            fn visit_f64<E: serde::de::Error>(self, _: f64) -> Result<RawSecrets, E> {
                Err(E::custom(SECRET_INLINE))
            }
            fn visit_bool<E: serde::de::Error>(self, _: bool) -> Result<RawSecrets, E> {
                Err(E::custom(SECRET_INLINE))
            }
        }
        d.deserialize_any(Shape)
    }
}

/// `[sources.NAME]`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawSource {
    pub provider: Spanned<String>,
    /// One secret reference, or a list while rotating.
    pub secret: Option<Spanned<RawSecrets>>,
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

/// A sink's URL: plain text or a secret reference.
#[derive(Debug, Deserialize)]
#[serde(untagged)]
pub enum RawUrl {
    Plain(String),
    Secret(RawSecret),
}

/// `[sinks.NAME]`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawSink {
    /// `log`, `http`, `slack`, `teams`, `discord` or `prodmatic`.
    pub kind: Spanned<String>,
    /// http, slack, teams, discord: where to send (for the chat platforms
    /// the URL is the credential: use a secret reference).
    pub url: Option<Spanned<RawUrl>>,
    /// prodmatic: the API base, e.g. `https://api.prodmatic.com/v1`.
    pub base_url: Option<Spanned<String>>,
    /// prodmatic: the bearer token.
    pub token: Option<Spanned<RawSecret>>,
    /// prodmatic: default organization and product (routes may override).
    pub organization: Option<Spanned<String>>,
    pub product: Option<Spanned<String>>,
    /// http: the method (default POST).
    pub method: Option<Spanned<String>>,
    /// http: sign each request as Standard Webhooks does (`whsec_…` key).
    pub signing_secret: Option<Spanned<RawSecret>>,
    /// http: extra request headers.
    pub headers: Option<Spanned<std::collections::BTreeMap<String, String>>>,
    /// log: a file to append JSON lines to; absent means stdout.
    pub path: Option<Spanned<String>>,
    /// Deliveries in flight at once to this sink.
    pub concurrency: Option<Spanned<i64>>,
    /// Deliveries per time unit (`"1/s"`).
    pub rate_limit: Option<Spanned<String>>,
    /// Delays between attempts, e.g. `["5s", "30s", "2m"]`; then dead.
    pub retry: Option<Spanned<Vec<String>>>,
    /// Time one attempt may take.
    pub timeout: Option<Spanned<String>>,
}

/// `source = "github"` or `source = ["github", "gitlab"]`.
#[derive(Debug, Deserialize)]
#[serde(untagged)]
pub enum OneOrMany {
    One(String),
    Many(Vec<String>),
}

/// `[[routes]]`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawRoute {
    pub name: Spanned<String>,
    pub source: Option<Spanned<OneOrMany>>,
    pub event: Option<Spanned<String>>,
    pub when: Option<Spanned<String>>,
    pub each: Option<Spanned<String>>,
    pub to: Spanned<Vec<Spanned<String>>>,
    pub message: Option<Spanned<String>>,
    pub template: Option<Spanned<String>>,
    pub action: Option<Spanned<String>>,
    pub fields: Option<Spanned<std::collections::BTreeMap<String, String>>>,
    pub order_key: Option<Spanned<String>>,
}
