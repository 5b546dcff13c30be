//! `[sinks.NAME]`: where deliveries go, validated into [`SinkConfig`].

use std::time::Duration;

use toml::Spanned;

use super::raw::{RawSink, RawUrl};
use super::{parse_rate, Cx, Rate};
use crate::secret::Secret;

/// The default retry schedule after the first attempt: about two days.
pub const DEFAULT_SCHEDULE: [u64; 10] = [
    5,
    30,
    120,
    600,
    1800,
    3600,
    3 * 3600,
    6 * 3600,
    12 * 3600,
    24 * 3600,
];

/// A validated sink.
#[derive(Debug, Clone)]
pub struct SinkConfig {
    pub name: String,
    pub kind: SinkKind,
    pub concurrency: usize,
    pub rate_limit: Option<Rate>,
    /// Delays before attempts 2, 3, …; after the last, dead.
    pub schedule: Vec<Duration>,
    pub timeout: Duration,
}

#[derive(Debug, Clone)]
pub enum SinkKind {
    /// JSON lines to a file, or to stdout.
    Log {
        path: Option<std::path::PathBuf>,
    },
    Http {
        /// `Err` when its secret is missing: deliveries wait and retry.
        url: Result<Secret, String>,
        method: http::Method,
        headers: Vec<(http::HeaderName, http::HeaderValue)>,
        /// The decoded Standard Webhooks key, when requests are signed.
        signing: Option<Result<Secret, String>>,
    },
    Slack {
        url: Result<Secret, String>,
    },
    Teams {
        url: Result<Secret, String>,
    },
    Discord {
        url: Result<Secret, String>,
    },
    Prodmatic {
        base_url: String,
        token: Result<Secret, String>,
        organization: String,
        product: String,
    },
}

impl SinkKind {
    /// Why the sink cannot send: its URL or token secret is not set. Such
    /// a sink is disabled (the daemon says so at start): its deliveries are
    /// made and held until the secret is set and the config reloaded.
    pub fn unconfigured(&self) -> Option<&str> {
        fn missing(r: &Result<Secret, String>) -> Option<&str> {
            r.as_ref().err().map(String::as_str)
        }
        match self {
            SinkKind::Log { .. } => None,
            SinkKind::Http { url, signing, .. } => {
                missing(url).or_else(|| signing.as_ref().and_then(missing))
            }
            SinkKind::Slack { url } | SinkKind::Teams { url } | SinkKind::Discord { url } => {
                missing(url)
            }
            SinkKind::Prodmatic { token, .. } => missing(token),
        }
    }

    pub fn name(&self) -> &'static str {
        match self {
            SinkKind::Log { .. } => "log",
            SinkKind::Http { .. } => "http",
            SinkKind::Slack { .. } => "slack",
            SinkKind::Teams { .. } => "teams",
            SinkKind::Discord { .. } => "discord",
            SinkKind::Prodmatic { .. } => "prodmatic",
        }
    }
}

/// Per-kind defaults: (concurrency, rate limit) the platform asks for.
fn defaults(kind: &str) -> (usize, Option<Rate>) {
    let per_second = |n: u32| {
        Some(Rate {
            burst: n,
            per_second: f64::from(n),
        })
    };
    match kind {
        // Slack: one message per second per webhook, serialised.
        "slack" => (1, per_second(1)),
        // Teams: "more than four requests in one second" is throttled.
        "teams" => (1, per_second(4)),
        // Discord: its X-RateLimit-* headers pace the sink.
        "discord" => (1, None),
        _ => (4, None),
    }
}

/// Every sink kind.
const KINDS: [&str; 6] = ["log", "http", "slack", "teams", "discord", "prodmatic"];

impl Cx<'_> {
    pub(super) fn sink(&mut self, name: &str, raw: RawSink) -> Option<SinkConfig> {
        let at = |k: &str| format!("sinks.{name}.{k}");
        let kind_name = raw.kind.get_ref().as_str();
        let before = self.problems.len();
        // An unknown kind is the one mistake: its keys are not judged
        // against it (the operator's `url` is right for the `slack` meant).
        let known = KINDS.contains(&kind_name);
        let only =
            |cx: &mut Self, key: &str, span: Option<std::ops::Range<usize>>, kinds: &[&str]| {
                if let Some(span) = span.filter(|_| known) {
                    if !kinds.contains(&kind_name) {
                        cx.err(
                            span,
                            &at(key),
                            format!("`{key}` does not apply to sink kind `{kind_name}`: remove it"),
                        );
                    }
                }
            };
        only(
            self,
            "url",
            raw.url.as_ref().map(Spanned::span),
            &["http", "slack", "teams", "discord"],
        );
        only(
            self,
            "base_url",
            raw.base_url.as_ref().map(Spanned::span),
            &["prodmatic"],
        );
        only(
            self,
            "token",
            raw.token.as_ref().map(Spanned::span),
            &["prodmatic"],
        );
        only(
            self,
            "organization",
            raw.organization.as_ref().map(Spanned::span),
            &["prodmatic"],
        );
        only(
            self,
            "product",
            raw.product.as_ref().map(Spanned::span),
            &["prodmatic"],
        );
        only(
            self,
            "method",
            raw.method.as_ref().map(Spanned::span),
            &["http"],
        );
        only(
            self,
            "headers",
            raw.headers.as_ref().map(Spanned::span),
            &["http"],
        );
        only(self, "path", raw.path.as_ref().map(Spanned::span), &["log"]);
        only(
            self,
            "signing_secret",
            raw.signing_secret.as_ref().map(Spanned::span),
            &["http"],
        );
        let kind = match kind_name {
            "log" => {
                if let Some(p) = &raw.path {
                    let path = std::path::Path::new(p.get_ref());
                    let dir = match path.parent() {
                        Some(d) if !d.as_os_str().is_empty() => d,
                        _ => std::path::Path::new("."),
                    };
                    if !dir.is_dir() {
                        self.err(
                            p.span(),
                            &at("path"),
                            format!(
                                "directory `{}` does not exist: create it (under systemd, LogsDirectory=hookgate makes /var/log/hookgate)",
                                dir.display()
                            ),
                        );
                    }
                }
                Some(SinkKind::Log {
                    path: raw.path.as_ref().map(|p| p.get_ref().into()),
                })
            }
            "http" => self.http_sink(name, &raw),
            "slack" => self
                .chat_url(name, &raw, &[])
                .map(|url| SinkKind::Slack { url }),
            "teams" => self
                .chat_url(name, &raw, &["webhook.office.com", "outlook.office.com"])
                .map(|url| SinkKind::Teams { url }),
            "discord" => self
                .chat_url(name, &raw, &[])
                .map(|url| SinkKind::Discord { url }),
            "prodmatic" => self.prodmatic_sink(name, &raw),
            other => {
                let message = match crate::suggest::closest(other, KINDS) {
                    Some(k) => format!("unknown sink kind `{other}`: did you mean `{k}`?"),
                    None => format!(
                        "unknown sink kind `{other}`: use one of {}",
                        KINDS.join(", ")
                    ),
                };
                self.err(raw.kind.span(), &at("kind"), message);
                None
            }
        };
        let (default_concurrency, default_rate) = defaults(kind_name);
        let concurrency = self.positive(
            &raw.concurrency,
            &at("concurrency"),
            default_concurrency,
            10_000,
        );
        let rate_limit =
            raw.rate_limit
                .as_ref()
                .map_or(default_rate, |v| match parse_rate(v.get_ref()) {
                    Some(r) => Some(r),
                    None => {
                        self.err(
                            v.span(),
                            &at("rate_limit"),
                            format!(
                                "`{}` is not a rate: write it like \"1/s\" or \"30/m\"",
                                v.get_ref()
                            ),
                        );
                        None
                    }
                });
        let schedule = match &raw.retry {
            None => DEFAULT_SCHEDULE.iter().map(|s| Duration::from_secs(*s)).collect(),
            Some(list) => list
                .get_ref()
                .iter()
                .filter_map(|d| match humantime::parse_duration(d) {
                    Ok(d) if d <= super::LONGEST_DURATION => Some(d),
                    Ok(_) => {
                        self.err(
                            list.span(),
                            &at("retry"),
                            format!("`{d}` is too long: at most 3650 days"),
                        );
                        None
                    }
                    Err(_) => {
                        self.err(
                            list.span(),
                            &at("retry"),
                            format!("`{d}` is not a duration: write the list like [\"5s\", \"1m\", \"1h\"]"),
                        );
                        None
                    }
                })
                .collect(),
        };
        let timeout = self.duration(&raw.timeout, &at("timeout"), Duration::from_secs(15));
        if self.problems.len() > before {
            return None;
        }
        Some(SinkConfig {
            name: name.to_owned(),
            kind: kind?,
            concurrency,
            rate_limit,
            schedule,
            timeout,
        })
    }

    /// A chat platform's webhook URL. It is the credential: a plain one in
    /// the file gets a warning, and so does a retired host.
    fn chat_url(
        &mut self,
        name: &str,
        raw: &RawSink,
        retired: &[&str],
    ) -> Option<Result<Secret, String>> {
        let at = format!("sinks.{name}.url");
        let Some(url) = raw.url.as_ref() else {
            self.err(
                raw.kind.span(),
                &format!("sinks.{name}"),
                format!("a `{}` sink needs `url`", raw.kind.get_ref()),
            );
            return None;
        };
        let resolved = match url.get_ref() {
            RawUrl::Plain(u) => {
                self.warn(
                    url.span(),
                    &at,
                    "this webhook URL is a credential written in the file: use { env = \"…\" }, { file } or { credential }",
                );
                Ok(Secret::new(u.as_str()))
            }
            RawUrl::Secret(s) => {
                self.resolve_at(url.span(), s, &at, super::secrets::SecretShape::External)?
            }
        };
        if let Ok(u) = &resolved {
            let text = u.expose_str().unwrap_or("");
            match text.parse::<http::Uri>() {
                Ok(uri) if matches!(uri.scheme_str(), Some("http" | "https")) => {
                    let host = uri.host().unwrap_or("");
                    if retired
                        .iter()
                        .any(|r| host == *r || host.ends_with(&format!(".{r}")))
                    {
                        self.warn(
                            url.span(),
                            &at,
                            format!("{host} is a retired Office 365 connector: create a Workflows webhook (\"Post to a channel when a webhook request is received\") and use its URL"),
                        );
                    }
                }
                _ => self.err(url.span(), &at, "not an http:// or https:// URL"),
            }
        }
        Some(resolved)
    }

    fn prodmatic_sink(&mut self, name: &str, raw: &RawSink) -> Option<SinkKind> {
        let at = |k: &str| format!("sinks.{name}.{k}");
        let need = |cx: &mut Self, key: &str, v: &Option<Spanned<String>>| match v {
            Some(v) if !v.get_ref().trim().is_empty() => Some(v.get_ref().trim().to_owned()),
            _ => {
                cx.err(
                    raw.kind.span(),
                    &format!("sinks.{name}"),
                    format!("a `prodmatic` sink needs `{key}`"),
                );
                None
            }
        };
        let base_url = need(self, "base_url", &raw.base_url);
        let organization = need(self, "organization", &raw.organization);
        let product = need(self, "product", &raw.product);
        if let (Some(b), Some(v)) = (&base_url, &raw.base_url) {
            if !b
                .parse::<http::Uri>()
                .is_ok_and(|u| matches!(u.scheme_str(), Some("http" | "https")))
            {
                self.err(v.span(), &at("base_url"), "not an http:// or https:// URL");
            }
        }
        let token = match raw.token.as_ref() {
            Some(t) => self.resolve(t, &at("token"), super::secrets::SecretShape::External),
            None => {
                self.err(
                    raw.kind.span(),
                    &format!("sinks.{name}"),
                    "a `prodmatic` sink needs `token = { env = \"PRODMATIC_API_TOKEN\" }`",
                );
                None
            }
        };
        Some(SinkKind::Prodmatic {
            base_url: base_url?.trim_end_matches('/').to_owned(),
            token: token?,
            organization: organization?,
            product: product?,
        })
    }

    fn http_sink(&mut self, name: &str, raw: &RawSink) -> Option<SinkKind> {
        let at = |k: &str| format!("sinks.{name}.{k}");
        let Some(url) = raw.url.as_ref() else {
            self.err(
                raw.kind.span(),
                &format!("sinks.{name}"),
                "an `http` sink needs `url`",
            );
            return None;
        };
        let url = match url.get_ref() {
            RawUrl::Plain(u) => Ok(Secret::new(u.as_str())),
            RawUrl::Secret(s) => self.resolve_at(
                url.span(),
                s,
                &at("url"),
                // A URL is never generated in dev mode.
                super::secrets::SecretShape::External,
            )?,
        };
        if let Ok(u) = &url {
            let text = u.expose_str().unwrap_or("");
            let ok = text
                .parse::<http::Uri>()
                .is_ok_and(|u| matches!(u.scheme_str(), Some("http" | "https")));
            if !ok {
                self.err(url_span(raw), &at("url"), "not an http:// or https:// URL");
            }
        }
        let method = match raw.method.as_ref() {
            None => http::Method::POST,
            Some(m) => {
                match http::Method::from_bytes(m.get_ref().to_ascii_uppercase().as_bytes()) {
                    Ok(m) => m,
                    Err(_) => {
                        self.err(
                            m.span(),
                            &at("method"),
                            format!("`{}` is not an HTTP method", m.get_ref()),
                        );
                        http::Method::POST
                    }
                }
            }
        };
        let mut headers = Vec::new();
        if let Some(h) = raw.headers.as_ref() {
            for (k, v) in h.get_ref() {
                match (
                    http::HeaderName::from_bytes(k.as_bytes()),
                    http::HeaderValue::from_str(v),
                ) {
                    (Ok(k), Ok(v)) => headers.push((k, v)),
                    _ => self.err(
                        h.span(),
                        &at("headers"),
                        format!("`{k}: {v}` is not a valid header"),
                    ),
                }
            }
        }
        let signing = match raw.signing_secret.as_ref() {
            None => None,
            Some(s) => {
                match self.resolve(s, &at("signing_secret"), super::secrets::SecretShape::Whsec)? {
                    Err(why) => Some(Err(why)),
                    Ok(secret) => match crate::verify::standard::decode_whsec(
                        secret.expose_str().unwrap_or(""),
                    ) {
                        Some(key) => Some(Ok(Secret::new(key))),
                        None => {
                            self.err(
                            s.span(),
                            &at("signing_secret"),
                            "not a Standard Webhooks key: it looks like `whsec_` followed by base64",
                        );
                            None
                        }
                    },
                }
            }
        };
        Some(SinkKind::Http {
            url,
            method,
            headers,
            signing,
        })
    }
}

fn url_span(raw: &RawSink) -> std::ops::Range<usize> {
    raw.url.as_ref().map(Spanned::span).unwrap_or(0..0)
}
