//! Sinks, one file each, one trait: `prepare` freezes what will be sent
//! (at routing time), `send` makes one attempt and says what it means.

pub mod http;
pub mod log;

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
        } => Box::new(http::HttpSink::new(
            url.clone(),
            method.clone(),
            headers.clone(),
            config.timeout,
        )?),
    })
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
        return (secs.is_finite() && secs >= 0.0)
            .then(|| Duration::from_secs_f64(secs.min(86_400.0)));
    }
    let at = httpdate::parse_http_date(v).ok()?;
    Some(at.duration_since(now).unwrap_or_default())
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
    }
}
