//! The `http` sink: any URL. By default it sends the original payload bytes
//! with the `Content-Type` they came with; a route's `message` replaces
//! the body. Every request carries `Hookgate-Source`, `Hookgate-Event`,
//! `Hookgate-Delivery` and a stable `Idempotency-Key`; with a
//! `signing_secret`, also Standard Webhooks' `webhook-id`,
//! `webhook-timestamp` and `webhook-signature` (signed at send time).

use std::time::SystemTime;

use serde_bytes::ByteBuf;

use super::{
    classify, excerpt, exchange, no_answer, retry_after, Answer, Outgoing, Part, Request, Sink,
    Verdict,
};
use crate::queue::{BodyOfEvent, BoxFuture, DeliveryRecord, EventRecord, Frozen};
use crate::route::Rendered;
use crate::secret::Secret;

pub struct HttpSink {
    url: Result<Secret, String>,
    method: http::Method,
    headers: Vec<(http::HeaderName, http::HeaderValue)>,
    signing: Option<Result<Secret, String>>,
    client: reqwest::Client,
}

impl HttpSink {
    pub fn new(
        url: Result<Secret, String>,
        method: http::Method,
        headers: Vec<(http::HeaderName, http::HeaderValue)>,
        signing: Option<Result<Secret, String>>,
        client: reqwest::Client,
    ) -> HttpSink {
        HttpSink {
            url,
            method,
            headers,
            signing,
            client,
        }
    }

    /// What an attempt at `d` made at `now` sends: the configured method
    /// and headers, the Standard Webhooks headers when signing (the
    /// signature shown redacted: anyone holding it could replay the
    /// request within the receiver's window), then the frozen request.
    fn request(&self, d: &DeliveryRecord, now: SystemTime) -> Result<Request, String> {
        let frozen = d.frozen.as_ref().ok_or("nothing to send")?;
        let mut headers: Vec<(String, Part)> = self
            .headers
            .iter()
            .map(|(k, v)| {
                let text = String::from_utf8_lossy(v.as_bytes()).into_owned();
                let value = if v.is_sensitive() || credential_header(k.as_str()) {
                    Part::Secret {
                        value: Secret::new(text),
                        shown: "[redacted]".into(),
                    }
                } else {
                    Part::Plain(text)
                };
                (k.as_str().to_owned(), value)
            })
            .collect();
        match &self.signing {
            None => {}
            Some(Err(why)) => headers.push((
                "webhook-signature".into(),
                Part::Missing {
                    what: "signing secret",
                    why: why.clone(),
                    shown: "[signing secret not set]".into(),
                },
            )),
            Some(Ok(key)) => {
                let id = message_id(&d.idempotency_key);
                for (k, v) in
                    crate::verify::standard::sign_headers(key.expose(), &id, now, &frozen.body)
                {
                    let value = if k == "webhook-signature" {
                        Part::Secret {
                            value: Secret::new(v),
                            shown: "v1,[redacted]".into(),
                        }
                    } else {
                        Part::Plain(v)
                    };
                    headers.push((k, value));
                }
            }
        }
        Ok(Request::new(
            self.method.clone(),
            Part::secret_url(&self.url, |u| u),
            headers,
            frozen,
            &d.idempotency_key,
        ))
    }
}

/// Standard Webhooks ids may not contain `.`; the idempotency key does.
pub fn message_id(idempotency_key: &str) -> String {
    format!("msg_{}", idempotency_key.replace('.', "_"))
}

impl Sink for HttpSink {
    fn prepare(&self, rendered: &Rendered, event: &EventRecord) -> Result<Frozen, String> {
        let original_type = event
            .headers
            .iter()
            .find(|(k, _)| k == "content-type")
            .map(|(_, v)| String::from_utf8_lossy(v).into_owned())
            .unwrap_or_else(|| "application/json".into());
        let (content_type, body, body_of_event) = match rendered {
            Rendered::Default => (original_type, event.body.clone(), BodyOfEvent::Held),
            Rendered::Text(t) | Rendered::Json(t) => {
                let kind = if crate::json::skims(t.as_bytes()) {
                    "application/json"
                } else {
                    "text/plain; charset=utf-8"
                };
                (kind.to_owned(), t.clone().into_bytes(), BodyOfEvent::No)
            }
            Rendered::Action { .. } => return Err("actions are for the ProdMatic sink".into()),
        };
        Ok(Frozen {
            content_type,
            headers: vec![
                ("Hookgate-Source".into(), event.source.clone()),
                ("Hookgate-Event".into(), event.event.clone()),
                ("Hookgate-Delivery".into(), event.delivery_id.clone()),
            ],
            body: ByteBuf::from(body),
            body_of_event,
            ..Frozen::default()
        })
    }

    fn outgoing(&self, d: &DeliveryRecord, now: SystemTime) -> Result<Outgoing, String> {
        self.request(d, now).map(Outgoing::Http)
    }

    fn send<'a>(&'a self, d: &'a DeliveryRecord) -> BoxFuture<'a, Answer> {
        Box::pin(async move {
            let req = match self.request(d, SystemTime::now()) {
                Ok(req) => req,
                Err(why) => return no_answer(Verdict::Permanent(why)),
            };
            match exchange(&self.client, req).await {
                Err(answer) => answer,
                Ok((status, headers, body)) => Answer {
                    verdict: classify(status, retry_after(&headers, SystemTime::now())),
                    status: Some(status),
                    response: excerpt(&body),
                    pause: None,
                },
            }
        })
    }
}

/// Headers that carry credentials by their name: an `http` sink's
/// `headers` may set one in the file, and it is shown redacted.
fn credential_header(name: &str) -> bool {
    const NAMES: [&str; 5] = [
        "authorization",
        "proxy-authorization",
        "cookie",
        "x-api-key",
        "x-auth-token",
    ];
    NAMES.iter().any(|n| name.eq_ignore_ascii_case(n))
}
