//! Sinks, one file each, one trait: `prepare` freezes what will be sent
//! (at routing time), `send` makes one attempt and says what it means.

pub mod discord;
pub mod http;
pub mod log;
pub mod prodmatic;
pub mod slack;
pub mod summary;
pub mod teams;

use std::time::Duration;

use crate::config::{SinkConfig, SinkKind};
use crate::queue::{BoxFuture, DeliveryRecord, EventRecord, Frozen};
use crate::route::Rendered;

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
    /// One attempt to deliver `d`.
    fn send<'a>(&'a self, d: &'a DeliveryRecord) -> BoxFuture<'a, Answer>;
}

/// Builds the sink a config describes.
pub fn build(config: &SinkConfig) -> Result<Box<dyn Sink>, String> {
    Ok(match &config.kind {
        SinkKind::Log { path } => Box::new(log::LogSink::open(path.as_deref())?),
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
        .user_agent(concat!("hookgate/", env!("CARGO_PKG_VERSION")))
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

/// The URL (or token) of a sink whose credential is a secret, or the
/// verdict when it is missing (deliveries wait and retry until it is set).
pub fn configured(secret: &Result<crate::secret::Secret, String>) -> Result<String, Answer> {
    match secret {
        Ok(u) => Ok(u.expose_str().unwrap_or_default().to_owned()),
        Err(why) => Err(no_answer(Verdict::Retry {
            after: None,
            why: format!("sink not configured: {why}"),
        })),
    }
}

/// Sends a frozen request and reads the answer. Transport failures are
/// retryable; the URL is never echoed (for chat sinks it is the credential).
pub async fn exchange(
    req: reqwest::RequestBuilder,
    frozen: &Frozen,
    key: &str,
) -> Result<(u16, ::http::HeaderMap, bytes::Bytes), Answer> {
    let mut req = req
        .header(::http::header::CONTENT_TYPE, &frozen.content_type)
        .header("Idempotency-Key", key);
    for (k, v) in &frozen.headers {
        req = req.header(k.as_str(), v.as_str());
    }
    match req.body(frozen.body.to_vec()).send().await {
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

    /// One attempt: POST the frozen request to the URL, `url_for`
    /// adjusting it, and let `judge` read the answer.
    pub async fn post(
        &self,
        url_for: fn(String) -> String,
        d: &DeliveryRecord,
        judge: Judge,
    ) -> Answer {
        let url = match configured(&self.url) {
            Ok(u) => url_for(u),
            Err(answer) => return answer,
        };
        let Some(frozen) = &d.frozen else {
            return no_answer(Verdict::Permanent("nothing to send".into()));
        };
        match exchange(self.client.post(&url), frozen, &d.idempotency_key).await {
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
