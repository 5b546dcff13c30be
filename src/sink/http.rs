//! The `http` sink: any URL. By default it sends the original payload bytes
//! with the `Content-Type` they came with; a route's `message` replaces
//! the body. Every request carries `Hookgate-Source`, `Hookgate-Event`,
//! `Hookgate-Delivery` and a stable `Idempotency-Key`; with a
//! `signing_secret`, also Standard Webhooks' `webhook-id`,
//! `webhook-timestamp` and `webhook-signature` (signed at send time).

use std::time::SystemTime;

use serde_bytes::ByteBuf;

use super::{
    classify, configured, excerpt, exchange, no_answer, retry_after, Answer, Sink, Verdict,
};
use crate::queue::{BoxFuture, DeliveryRecord, EventRecord, Frozen};
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
        let (content_type, body) = match rendered {
            Rendered::Default => (original_type, event.body.clone()),
            Rendered::Text(t) | Rendered::Json(t) => {
                let kind = if serde_json::from_str::<serde::de::IgnoredAny>(t).is_ok() {
                    "application/json"
                } else {
                    "text/plain; charset=utf-8"
                };
                (kind.to_owned(), t.clone().into_bytes())
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
            ..Frozen::default()
        })
    }

    fn send<'a>(&'a self, d: &'a DeliveryRecord) -> BoxFuture<'a, Answer> {
        Box::pin(async move {
            let url = match configured(&self.url) {
                Ok(u) => u,
                Err(answer) => return answer,
            };
            let Some(frozen) = &d.frozen else {
                return no_answer(Verdict::Permanent("nothing to send".into()));
            };
            let mut req = self.client.request(self.method.clone(), &url);
            for (k, v) in &self.headers {
                req = req.header(k, v);
            }
            match &self.signing {
                None => {}
                Some(Err(why)) => {
                    return no_answer(Verdict::Retry {
                        after: None,
                        why: format!("signing secret not configured: {why}"),
                    })
                }
                Some(Ok(key)) => {
                    let id = message_id(&d.idempotency_key);
                    for (k, v) in crate::verify::standard::sign_headers(
                        key.expose(),
                        &id,
                        SystemTime::now(),
                        &frozen.body,
                    ) {
                        req = req.header(k, v);
                    }
                }
            }
            match exchange(req, frozen, &d.idempotency_key).await {
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
