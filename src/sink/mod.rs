//! Sinks, one file each, one trait: `prepare` freezes what will be sent
//! (at routing time), `outgoing` says what an attempt does with it (the
//! request, secrets marked), and `send` does exactly that once and says
//! what the answer means. `hookgate route` shows `outgoing` without sending.

pub mod discord;
pub mod http;
pub mod log;
pub mod prodmatic;
pub mod slack;
pub mod summary;
pub mod teams;

use std::path::PathBuf;
use std::time::{Duration, SystemTime};

use crate::config::{SinkConfig, SinkKind};
use crate::queue::{BoxFuture, DeliveryRecord, EventRecord, Frozen};
use crate::route::Rendered;
use crate::secret::Secret;

/// What one attempt came to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    Delivered,
    /// Try again later, not before `after` when the sink said so.
    Retry {
        after: Option<Duration>,
        why: String,
    },
    /// The sink is busy: wait `after`, and this attempt does not count.
    RateLimited {
        after: Duration,
    },
    /// Never going to work: dead now.
    Permanent(String),
    /// The sink itself is gone (revoked webhook): dead now, and the sink
    /// holds further deliveries dead until a replay or reload.
    SinkGone(String),
}

/// An attempt's verdict plus what to keep on the record.
#[derive(Debug, Clone)]
pub struct Answer {
    pub verdict: Verdict,
    pub status: Option<u16>,
    /// The start of the answer's body.
    pub response: String,
    /// The platform says its budget is spent (`X-RateLimit-Remaining: 0`):
    /// start nothing more on this sink for this long.
    pub pause: Option<Duration>,
}

pub trait Sink: Send + Sync {
    /// Freezes the request for `rendered` content of `event`.
    fn prepare(&self, rendered: &Rendered, event: &EventRecord) -> Result<Frozen, String>;
    /// What an attempt at `d` made at `now` does: `send` does exactly
    /// this. `Err` when the delivery has nothing to send.
    fn outgoing(&self, d: &DeliveryRecord, now: SystemTime) -> Result<Outgoing, String>;
    /// One attempt to deliver `d`.
    fn send<'a>(&'a self, d: &'a DeliveryRecord) -> BoxFuture<'a, Answer>;
}

/// What one attempt at a delivery does.
#[derive(Debug, Clone)]
pub enum Outgoing {
    Http(Request),
    /// A line the log sink writes to its file (stdout when `None`).
    Line {
        to: Option<PathBuf>,
        text: String,
    },
}

/// An HTTP request as a sink sends it. Credentials are [`Part::Secret`],
/// so what may be shown of it is at hand without them.
#[derive(Debug, Clone)]
pub struct Request {
    pub method: ::http::Method,
    pub url: Part,
    /// In the order they are sent. The HTTP client adds `Host`,
    /// `Content-Length` and `Accept: */*`.
    pub headers: Vec<(String, Part)>,
    pub body: bytes::Bytes,
}

/// Every request's `User-Agent`, unless a sink's `headers` set one.
pub const USER_AGENT: &str = concat!("hookgate/", env!("CARGO_PKG_VERSION"));

impl Request {
    /// `method` to `url` with the sink's own `headers`, then the
    /// delivery's: `Content-Type`, `Idempotency-Key`, the frozen headers,
    /// and hookgate's `User-Agent` unless one is set already.
    pub fn new(
        method: ::http::Method,
        url: Part,
        mut headers: Vec<(String, Part)>,
        frozen: &Frozen,
        idempotency_key: &str,
    ) -> Request {
        let plain = |k: &str, v: &str| (k.to_owned(), Part::Plain(v.to_owned()));
        headers.push(plain("Content-Type", &frozen.content_type));
        headers.push(plain("Idempotency-Key", idempotency_key));
        headers.extend(frozen.headers.iter().map(|(k, v)| plain(k, v)));
        if !headers
            .iter()
            .any(|(k, _)| k.eq_ignore_ascii_case("user-agent"))
        {
            headers.push(plain("User-Agent", USER_AGENT));
        }
        Request {
            method,
            url,
            headers,
            body: bytes::Bytes::copy_from_slice(&frozen.body),
        }
    }
}

/// A part of a request that may be, or hold, a credential.
#[derive(Debug, Clone)]
pub enum Part {
    Plain(String),
    /// A credential, or a value holding one; `shown` is what may be printed.
    Secret {
        value: Secret,
        shown: String,
    },
    /// A credential that is not set (`why`: as the config says it): no
    /// attempt goes out; it waits, `what` is not configured. `shown`
    /// stands in for it.
    Missing {
        what: &'static str,
        why: String,
        shown: String,
    },
}

impl Part {
    /// A URL that is itself the credential (chat webhooks, `http` sinks):
    /// shown as its origin only. `adjust` makes the URL sent of the
    /// configured one (Discord's `?wait=true`).
    pub fn secret_url(url: &Result<Secret, String>, adjust: fn(String) -> String) -> Part {
        match url {
            Ok(u) => {
                let sent = adjust(u.expose_str().unwrap_or_default().to_owned());
                Part::Secret {
                    shown: redact_url(&sent),
                    value: Secret::new(sent),
                }
            }
            Err(why) => Part::Missing {
                what: "sink",
                why: why.clone(),
                shown: "[secret not set]".into(),
            },
        }
    }

    /// What may be printed of it.
    pub fn shown(&self) -> &str {
        match self {
            Part::Plain(s) => s,
            Part::Secret { shown, .. } | Part::Missing { shown, .. } => shown,
        }
    }

    /// The value to send, or the answer of an attempt that cannot go out.
    fn sendable(&self) -> Result<&str, Answer> {
        match self {
            Part::Plain(s) => Ok(s),
            Part::Secret { value, .. } => Ok(value.expose_str().unwrap_or_default()),
            Part::Missing { what, why, .. } => Err(no_answer(Verdict::Retry {
                after: None,
                why: format!("{what} not configured: {why}"),
            })),
        }
    }
}

/// A credential URL as it may be shown: scheme, host and port; the rest
/// (and any user info) `[redacted]`.
pub fn redact_url(url: &str) -> String {
    let Ok(uri) = url.parse::<::http::Uri>() else {
        return "[redacted]".into();
    };
    let (Some(scheme), Some(host)) = (uri.scheme_str(), uri.host()) else {
        return "[redacted]".into();
    };
    let port = uri.port_u16().map(|p| format!(":{p}")).unwrap_or_default();
    let hidden = uri.authority().is_some_and(|a| a.as_str().contains('@'))
        || uri.path_and_query().is_some_and(|p| p.as_str() != "/");
    let rest = if hidden { "/[redacted]" } else { "/" };
    format!("{scheme}://{host}{port}{rest}")
}

/// Builds the sink a config describes, to deliver.
pub fn build(config: &SinkConfig) -> Result<Box<dyn Sink>, String> {
    build_as(config, true)
}

/// Builds the sink a config describes only to prepare and show requests
/// (`hookgate route`): a log sink opens no file and starts no writer.
pub fn build_to_show(config: &SinkConfig) -> Result<Box<dyn Sink>, String> {
    build_as(config, false)
}

fn build_as(config: &SinkConfig, deliver: bool) -> Result<Box<dyn Sink>, String> {
    Ok(match &config.kind {
        SinkKind::Log { path } if deliver => Box::new(log::LogSink::open(path.as_deref())?),
        SinkKind::Log { path } => Box::new(log::LogSink::unopened(path.as_deref())),
        SinkKind::Http {
            url,
            method,
            headers,
            signing,
        } => Box::new(http::HttpSink::new(
            url.clone(),
            method.clone(),
            headers.clone(),
            signing.clone(),
            client(config.timeout)?,
        )),
        SinkKind::Slack { url } => Box::new(slack::SlackSink(ChatWebhook::new(
            url.clone(),
            client(config.timeout)?,
        ))),
        SinkKind::Teams { url } => Box::new(teams::TeamsSink(ChatWebhook::new(
            url.clone(),
            client(config.timeout)?,
        ))),
        SinkKind::Discord { url } => Box::new(discord::DiscordSink(ChatWebhook::new(
            url.clone(),
            client(config.timeout)?,
        ))),
        SinkKind::Prodmatic {
            base_url,
            token,
            organization,
            product,
        } => Box::new(prodmatic::ProdmaticSink::new(
            base_url.clone(),
            token.clone(),
            organization.clone(),
            product.clone(),
            client(config.timeout)?,
        )),
    })
}

/// An HTTP client for one sink: its timeout, no redirects (an answer, not
/// an instruction), hookgate's user agent.
pub fn client(timeout: Duration) -> Result<reqwest::Client, String> {
    reqwest::Client::builder()
        .timeout(timeout)
        .connect_timeout(timeout.min(Duration::from_secs(10)))
        .redirect(reqwest::redirect::Policy::none())
        .user_agent(USER_AGENT)
        .build()
        .map_err(|e| format!("cannot build the HTTP client: {e}"))
}

/// An answer that says nothing was exchanged.
pub fn no_answer(verdict: Verdict) -> Answer {
    Answer {
        verdict,
        status: None,
        response: String::new(),
        pause: None,
    }
}

/// Sends a request and reads the answer. Transport failures are
/// retryable; a credential that is not set sends nothing and waits; the
/// URL is never echoed (for chat sinks it is the credential).
pub async fn exchange(
    client: &reqwest::Client,
    req: Request,
) -> Result<(u16, ::http::HeaderMap, bytes::Bytes), Answer> {
    let mut builder = client.request(req.method.clone(), req.url.sendable()?);
    for (name, value) in &req.headers {
        let text = value.sendable()?;
        builder = match (value, ::http::HeaderValue::from_str(text)) {
            (Part::Secret { .. }, Ok(mut v)) => {
                v.set_sensitive(true);
                builder.header(name.as_str(), v)
            }
            _ => builder.header(name.as_str(), text),
        };
    }
    match builder.body(req.body).send().await {
        Err(e) => {
            let why = if e.is_timeout() {
                "timeout"
            } else if e.is_connect() {
                "connection failed"
            } else {
                "request failed"
            };
            Err(no_answer(Verdict::Retry {
                after: None,
                why: why.into(),
            }))
        }
        Ok(resp) => {
            let status = resp.status().as_u16();
            let headers = resp.headers().clone();
            Ok((status, headers, read_capped(resp).await))
        }
    }
}

/// Most of an answer's body read: plenty to classify it (platforms answer
/// with small JSON); an endpoint that streams more is cut off there, not
/// read into memory or waited on until the timeout.
const ANSWER_BYTES: usize = 64 << 10;

async fn read_capped(mut resp: reqwest::Response) -> bytes::Bytes {
    let mut body = bytes::BytesMut::new();
    while body.len() < ANSWER_BYTES {
        match resp.chunk().await {
            Ok(Some(chunk)) => {
                let room = ANSWER_BYTES - body.len();
                body.extend_from_slice(&chunk[..chunk.len().min(room)]);
            }
            Ok(None) | Err(_) => break,
        }
    }
    body.freeze()
}

/// What a platform's answer means: the verdict, and a pause when its
/// rate-limit budget is spent.
pub type Judge = fn(u16, &::http::HeaderMap, &[u8]) -> (Verdict, Option<Duration>);

/// Where a chat sink posts: its (secret) incoming-webhook URL, or why it
/// has none, and the HTTP client. Slack, Teams and Discord each wrap one.
pub struct ChatWebhook {
    url: Result<crate::secret::Secret, String>,
    client: reqwest::Client,
}

impl ChatWebhook {
    pub fn new(url: Result<crate::secret::Secret, String>, client: reqwest::Client) -> ChatWebhook {
        ChatWebhook { url, client }
    }

    /// What an attempt at `d` sends: the frozen request POSTed to the
    /// URL, `url_for` adjusting it.
    pub fn request(
        &self,
        url_for: fn(String) -> String,
        d: &DeliveryRecord,
    ) -> Result<Request, String> {
        let frozen = d.frozen.as_ref().ok_or("nothing to send")?;
        Ok(Request::new(
            ::http::Method::POST,
            Part::secret_url(&self.url, url_for),
            Vec::new(),
            frozen,
            &d.idempotency_key,
        ))
    }

    /// One attempt: sends [`ChatWebhook::request`] and lets `judge` read
    /// the answer.
    pub async fn post(
        &self,
        url_for: fn(String) -> String,
        d: &DeliveryRecord,
        judge: Judge,
    ) -> Answer {
        let req = match self.request(url_for, d) {
            Ok(req) => req,
            Err(why) => return no_answer(Verdict::Permanent(why)),
        };
        match exchange(&self.client, req).await {
            Err(answer) => answer,
            Ok((status, headers, body)) => {
                let (verdict, pause) = judge(status, &headers, &body);
                Answer {
                    verdict,
                    status: Some(status),
                    response: excerpt(&body),
                    pause,
                }
            }
        }
    }
}

/// A chat message from a text template: its text under `key` (Slack
/// `text`, Discord `content`), even when the text parses as JSON: the
/// payload values in it must not become message structure.
pub fn text_message(text: &str, key: &str) -> serde_json::Map<String, serde_json::Value> {
    serde_json::Map::from_iter([(key.to_owned(), serde_json::Value::String(text.to_owned()))])
}

/// A chat message from a `*.json` template: the object it wrote. Any other
/// output is the template's mistake, and the delivery dies with it rather
/// than post the template's source as text.
pub fn json_message(text: &str) -> Result<serde_json::Map<String, serde_json::Value>, String> {
    match serde_json::from_str(text) {
        Ok(serde_json::Value::Object(m)) => Ok(m),
        Ok(other) => Err(format!(
            "the `*.json` template wrote {}, not a JSON object: write the message as {{...}}",
            json_kind(&other)
        )),
        Err(e) => Err(format!(
            "the `*.json` template did not write valid JSON ({e}): check its quotes and commas \
             (values are written as JSON already: `{{{{ payload.title }}}}`, not `\"{{{{ payload.title }}}}\"`)"
        )),
    }
}

fn json_kind(v: &serde_json::Value) -> &'static str {
    match v {
        serde_json::Value::Null => "null",
        serde_json::Value::Bool(_) => "a boolean",
        serde_json::Value::Number(_) => "a number",
        serde_json::Value::String(_) => "a string",
        serde_json::Value::Array(_) => "an array",
        serde_json::Value::Object(_) => "an object",
    }
}

/// An object built with `json!({...})`.
pub fn object(v: serde_json::Value) -> serde_json::Map<String, serde_json::Value> {
    match v {
        serde_json::Value::Object(m) => m,
        _ => serde_json::Map::new(),
    }
}

/// A JSON body, frozen.
pub fn frozen_json(value: &serde_json::Value) -> Frozen {
    Frozen {
        content_type: "application/json".into(),
        body: serde_bytes::ByteBuf::from(value.to_string().into_bytes()),
        ..Frozen::default()
    }
}

/// At most 512 bytes of an answer, as text.
pub fn excerpt(body: &[u8]) -> String {
    let cut = &body[..body.len().min(512)];
    String::from_utf8_lossy(cut).into_owned()
}

/// `Retry-After`: seconds or an HTTP date.
pub fn retry_after(headers: &::http::HeaderMap, now: std::time::SystemTime) -> Option<Duration> {
    let v = headers
        .get(::http::header::RETRY_AFTER)?
        .to_str()
        .ok()?
        .trim();
    if let Ok(secs) = v.parse::<f64>() {
        return wait_secs(secs);
    }
    let at = httpdate::parse_http_date(v).ok()?;
    Some(at.duration_since(now).unwrap_or_default().min(LONGEST_WAIT))
}

/// The longest wait a platform's answer can impose on a delivery.
pub const LONGEST_WAIT: Duration = Duration::from_secs(86_400);

/// A wait a platform asked for in (fractional) seconds, capped at
/// [`LONGEST_WAIT`]; `None` unless finite and not negative.
pub fn wait_secs(secs: f64) -> Option<Duration> {
    (secs.is_finite() && secs >= 0.0)
        .then(|| Duration::from_secs_f64(secs.min(LONGEST_WAIT.as_secs_f64())))
}

/// The usual meaning of an HTTP status for a webhook target.
pub fn classify(status: u16, retry_after: Option<Duration>) -> Verdict {
    match status {
        200..=299 => Verdict::Delivered,
        429 => Verdict::RateLimited {
            after: retry_after.unwrap_or(Duration::from_secs(30)),
        },
        410 => Verdict::SinkGone(format!("{status}: the endpoint is gone")),
        408 | 425 | 500..=599 => Verdict::Retry {
            after: retry_after,
            why: format!("{status}"),
        },
        _ => Verdict::Permanent(format!("{status}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A URL that is a credential shows its origin only.
    #[test]
    fn credential_urls_show_their_origin_only() {
        assert_eq!(
            redact_url("https://hooks.slack.com/services/T1/B1/x"),
            "https://hooks.slack.com/[redacted]"
        );
        assert_eq!(
            redact_url("https://user:pw@example.com:8443/in?token=abc"),
            "https://example.com:8443/[redacted]"
        );
        assert_eq!(redact_url("https://example.com/"), "https://example.com/");
        assert_eq!(redact_url("not a url"), "[redacted]");
        let missing = Part::secret_url(&Err("env:X is not set".into()), |u| u);
        assert_eq!(missing.shown(), "[secret not set]");
        assert!(matches!(
            missing.sendable(),
            Err(Answer { verdict: Verdict::Retry { why, .. }, .. }) if why == "sink not configured: env:X is not set"
        ));
    }

    #[test]
    fn statuses_mean_what_webhook_senders_expect() {
        assert_eq!(classify(204, None), Verdict::Delivered);
        assert!(matches!(classify(503, None), Verdict::Retry { .. }));
        assert!(matches!(classify(408, None), Verdict::Retry { .. }));
        assert!(matches!(classify(425, None), Verdict::Retry { .. }));
        assert_eq!(
            classify(429, Some(Duration::from_secs(7))),
            Verdict::RateLimited {
                after: Duration::from_secs(7)
            }
        );
        assert!(matches!(classify(410, None), Verdict::SinkGone(_)));
        assert!(matches!(classify(400, None), Verdict::Permanent(_)));
        assert!(matches!(classify(404, None), Verdict::Permanent(_)));
    }

    #[test]
    fn text_stays_text_and_json_templates_must_write_an_object() {
        let hostile = r#"{"text": "<!channel>", "blocks": []}"#;
        assert_eq!(
            serde_json::Value::Object(text_message(hostile, "text")),
            serde_json::json!({ "text": hostile })
        );
        assert_eq!(json_message(hostile).unwrap()["text"], "<!channel>");
        let e = json_message(r#"{"text": ""oops""}"#).unwrap_err();
        assert!(e.contains("not `\"{{ payload.title }}\"`"), "{e}");
        let e = json_message("[1]").unwrap_err();
        assert!(e.contains("wrote an array, not a JSON object"), "{e}");
    }

    #[test]
    fn retry_after_takes_seconds_or_a_date() {
        let now = std::time::SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000);
        let mut h = ::http::HeaderMap::new();
        h.insert("retry-after", "12".parse().unwrap());
        assert_eq!(retry_after(&h, now), Some(Duration::from_secs(12)));
        let later = httpdate::fmt_http_date(now + Duration::from_secs(90));
        h.insert("retry-after", later.parse().unwrap());
        assert_eq!(retry_after(&h, now), Some(Duration::from_secs(90)));
        h.insert("retry-after", "soon".parse().unwrap());
        assert_eq!(retry_after(&h, now), None);
        // Far-off answers are capped, never parked for centuries.
        h.insert(
            "retry-after",
            "Fri, 31 Dec 9999 23:59:59 GMT".parse().unwrap(),
        );
        assert_eq!(retry_after(&h, now), Some(LONGEST_WAIT));
        h.insert("retry-after", "1e20".parse().unwrap());
        assert_eq!(retry_after(&h, now), Some(LONGEST_WAIT));
    }
}
