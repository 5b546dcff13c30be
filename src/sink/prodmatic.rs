//! ProdMatic's REST API: `create_idea`, `create_feedback` (POST) and
//! `update_feature` (PATCH) under `/organizations/{org}/products/{product}`,
//! with a bearer token and an `Idempotency-Key`. A route's `fields` become
//! the JSON body; `fields.organization` and `fields.product` override the
//! sink's, `fields.id` names the feature to update, and empty fields are
//! left out. `X-RateLimit-Remaining: 0` pauses the sink until
//! `X-RateLimit-Reset`; a 429 waits for it too.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde_json::Value;

use super::{
    classify, excerpt, exchange, frozen_json, no_answer, retry_after, Answer, Outgoing, Part,
    Request, Sink, Verdict,
};
use crate::queue::{BoxFuture, DeliveryRecord, EventRecord, Frozen};
use crate::route::Rendered;
use crate::secret::Secret;

pub struct ProdmaticSink {
    base_url: String,
    token: Result<Secret, String>,
    organization: String,
    product: String,
    client: reqwest::Client,
}

impl ProdmaticSink {
    pub fn new(
        base_url: String,
        token: Result<Secret, String>,
        organization: String,
        product: String,
        client: reqwest::Client,
    ) -> ProdmaticSink {
        ProdmaticSink {
            base_url,
            token,
            organization,
            product,
            client,
        }
    }

    /// What an attempt at `d` sends: the frozen method and path under
    /// `base_url`, with the bearer token.
    fn request(&self, d: &DeliveryRecord) -> Result<Request, String> {
        let frozen = d.frozen.as_ref().ok_or("nothing to send")?;
        let method = frozen
            .method
            .as_deref()
            .and_then(|m| http::Method::from_bytes(m.as_bytes()).ok())
            .unwrap_or(http::Method::POST);
        let url = format!("{}{}", self.base_url, frozen.path.as_deref().unwrap_or(""));
        let auth = match &self.token {
            Ok(t) => Part::Secret {
                value: Secret::new(format!("Bearer {}", t.expose_str().unwrap_or_default())),
                shown: "Bearer [redacted]".into(),
            },
            Err(why) => Part::Missing {
                what: "sink",
                why: why.clone(),
                shown: "Bearer [secret not set]".into(),
            },
        };
        Ok(Request::new(
            method,
            Part::Plain(url),
            vec![("Authorization".into(), auth)],
            frozen,
            &d.idempotency_key,
        ))
    }
}

/// A rendered field: JSON when it is an array or object (`externalLinks`),
/// otherwise text; ids like "35436" stay strings.
fn field_value(v: &str) -> Value {
    let t = v.trim();
    if t.starts_with('[') || t.starts_with('{') {
        if let Ok(j) = serde_json::from_str(t) {
            return j;
        }
    }
    Value::String(v.to_owned())
}

/// `s` percent-encoded for a URL path segment. The form encoder writes a
/// space as `+`, which in a path is a plus; it writes a real `+` as `%2B`,
/// so every `+` it leaves was a space.
fn segment(s: &str) -> String {
    form_urlencoded::byte_serialize(s.as_bytes())
        .collect::<String>()
        .replace('+', "%20")
}

impl Sink for ProdmaticSink {
    fn prepare(&self, rendered: &Rendered, _event: &EventRecord) -> Result<Frozen, String> {
        let Rendered::Action { action, fields } = rendered else {
            return Err("a ProdMatic route needs an `action`".into());
        };
        let mut org = self.organization.clone();
        let mut product = self.product.clone();
        let mut id = None;
        let mut body = serde_json::Map::new();
        for (k, v) in fields {
            if v.trim().is_empty() {
                continue;
            }
            match k.as_str() {
                "organization" => org = v.trim().to_owned(),
                "product" => product = v.trim().to_owned(),
                "id" if action == "update_feature" => id = Some(v.trim().to_owned()),
                _ => {
                    body.insert(k.clone(), field_value(v));
                }
            }
        }
        let base = format!(
            "/organizations/{}/products/{}",
            segment(&org),
            segment(&product)
        );
        let (method, path) = match action.as_str() {
            "create_idea" => ("POST", format!("{base}/ideas")),
            "create_feedback" => ("POST", format!("{base}/feedback")),
            "update_feature" => {
                let id = id.ok_or("update_feature rendered an empty `id`")?;
                ("PATCH", format!("{base}/features/{}", segment(&id)))
            }
            other => return Err(format!("unknown action `{other}`")),
        };
        Ok(Frozen {
            method: Some(method.into()),
            path: Some(path),
            ..frozen_json(&Value::Object(body))
        })
    }

    fn outgoing(&self, d: &DeliveryRecord, _now: SystemTime) -> Result<Outgoing, String> {
        self.request(d).map(Outgoing::Http)
    }

    fn send<'a>(&'a self, d: &'a DeliveryRecord) -> BoxFuture<'a, Answer> {
        Box::pin(async move {
            let req = match self.request(d) {
                Ok(req) => req,
                Err(why) => return no_answer(Verdict::Permanent(why)),
            };
            match exchange(&self.client, req).await {
                Err(answer) => answer,
                Ok((status, headers, body)) => {
                    let now = SystemTime::now();
                    let reset = reset_in(&headers, now);
                    let verdict = match classify(status, retry_after(&headers, now).or(reset)) {
                        // A 401/403 is the token, not this delivery: keep it.
                        Verdict::Permanent(_) if status == 401 || status == 403 => Verdict::Retry {
                            after: None,
                            why: format!("{status}: the API token was refused"),
                        },
                        v => v,
                    };
                    let spent = headers
                        .get("x-ratelimit-remaining")
                        .and_then(|v| v.to_str().ok()?.trim().parse::<u64>().ok())
                        == Some(0);
                    Answer {
                        verdict,
                        status: Some(status),
                        response: excerpt(&body),
                        pause: if spent { reset } else { None },
                    }
                }
            }
        })
    }
}

/// `X-RateLimit-Reset`: epoch seconds, or seconds from now when small.
fn reset_in(headers: &http::HeaderMap, now: SystemTime) -> Option<Duration> {
    let v: f64 = headers
        .get("x-ratelimit-reset")?
        .to_str()
        .ok()?
        .trim()
        .parse()
        .ok()?;
    if !v.is_finite() || v < 0.0 {
        return None;
    }
    let secs = if v > 1e9 {
        v - now.duration_since(UNIX_EPOCH).ok()?.as_secs_f64()
    } else {
        v
    };
    Some(Duration::from_secs_f64(secs.clamp(0.0, 3600.0)))
}

#[cfg(test)]
mod tests {
    #[test]
    fn path_segments_are_percent_encoded() {
        assert_eq!(segment("feat 12"), "feat%2012");
        assert_eq!(segment("a+b/c?d"), "a%2Bb%2Fc%3Fd");
        assert_eq!(segment("plain-id_1.2"), "plain-id_1.2");
    }

    use super::*;
    use std::collections::BTreeMap;

    fn sink() -> ProdmaticSink {
        ProdmaticSink::new(
            "https://api.prodmatic.test/v1".into(),
            Ok(Secret::new("t")),
            "org123".into(),
            "prod456".into(),
            reqwest::Client::new(),
        )
    }

    fn event() -> EventRecord {
        EventRecord {
            source: "s".into(),
            provider: "github".into(),
            event: "push".into(),
            delivery_id: "d".into(),
            received_at_ms: 0,
            client_ip: "127.0.0.1".into(),
            headers: vec![],
            body: vec![],
        }
    }

    #[test]
    fn actions_become_paths_and_bodies() {
        let fields = BTreeMap::from([
            ("id".to_string(), "FEAT-123".to_string()),
            ("status".to_string(), "COMPLETED".to_string()),
            (
                "externalLinks".to_string(),
                r#"[{"url":"https://x"}]"#.to_string(),
            ),
            ("note".to_string(), "".to_string()),
            ("externalId".to_string(), "35436".to_string()),
        ]);
        let f = sink()
            .prepare(
                &Rendered::Action {
                    action: "update_feature".into(),
                    fields,
                },
                &event(),
            )
            .unwrap();
        assert_eq!(f.method.as_deref(), Some("PATCH"));
        assert_eq!(
            f.path.as_deref(),
            Some("/organizations/org123/products/prod456/features/FEAT-123")
        );
        let body: Value = serde_json::from_slice(&f.body).unwrap();
        assert_eq!(
            body,
            serde_json::json!({"status": "COMPLETED", "externalLinks": [{"url": "https://x"}], "externalId": "35436"})
        );

        let f = sink()
            .prepare(
                &Rendered::Action {
                    action: "create_feedback".into(),
                    fields: BTreeMap::from([
                        ("product".to_string(), "widgets".to_string()),
                        ("title".to_string(), "t".to_string()),
                    ]),
                },
                &event(),
            )
            .unwrap();
        assert_eq!(
            f.path.as_deref(),
            Some("/organizations/org123/products/widgets/feedback")
        );
        assert!(sink()
            .prepare(&Rendered::Text("x".into()), &event())
            .is_err());
    }

    #[test]
    fn reset_is_epoch_or_seconds() {
        let now = UNIX_EPOCH + Duration::from_secs(1_800_000_000);
        let mut h = http::HeaderMap::new();
        h.insert("x-ratelimit-reset", "1800000030".parse().unwrap());
        assert_eq!(reset_in(&h, now), Some(Duration::from_secs(30)));
        h.insert("x-ratelimit-reset", "12".parse().unwrap());
        assert_eq!(reset_in(&h, now), Some(Duration::from_secs(12)));
    }
}
