//! The `http` sink: any URL. By default it sends the original payload bytes
//! with the `Content-Type` they came with; a route's `message` replaces
//! the body. Every request carries `Hookgate-Source`, `Hookgate-Event`,
//! `Hookgate-Delivery` and a stable `Idempotency-Key`.

use std::time::{Duration, SystemTime};

use serde_bytes::ByteBuf;

use super::{classify, excerpt, retry_after, Answer, Sink, Verdict};
use crate::queue::{BoxFuture, DeliveryRecord, EventRecord, Frozen};
use crate::route::Rendered;
use crate::secret::Secret;

pub struct HttpSink {
    url: Result<Secret, String>,
    method: http::Method,
    headers: Vec<(http::HeaderName, http::HeaderValue)>,
    client: reqwest::Client,
}

impl HttpSink {
    pub fn new(
        url: Result<Secret, String>,
        method: http::Method,
        headers: Vec<(http::HeaderName, http::HeaderValue)>,
        timeout: Duration,
    ) -> Result<HttpSink, String> {
        let client = reqwest::Client::builder()
            .timeout(timeout)
            .connect_timeout(timeout.min(Duration::from_secs(10)))
            // A redirect is an answer, not an instruction (Standard Webhooks).
            .redirect(reqwest::redirect::Policy::none())
            .user_agent(concat!("hookgate/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|e| format!("cannot build the HTTP client: {e}"))?;
        Ok(HttpSink {
            url,
            method,
            headers,
            client,
        })
    }
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
            Rendered::Text(t) => {
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
        })
    }

    fn send<'a>(&'a self, d: &'a DeliveryRecord) -> BoxFuture<'a, Answer> {
        Box::pin(async move {
            let fail = |verdict, response: String| Answer {
                verdict,
                status: None,
                response,
            };
            let url = match &self.url {
                Ok(u) => u.expose_str().unwrap_or_default().to_owned(),
                Err(why) => {
                    return fail(
                        Verdict::Retry {
                            after: None,
                            why: format!("sink not configured: {why}"),
                        },
                        String::new(),
                    )
                }
            };
            let Some(frozen) = &d.frozen else {
                return fail(Verdict::Permanent("nothing to send".into()), String::new());
            };
            let mut req = self
                .client
                .request(self.method.clone(), &url)
                .header(http::header::CONTENT_TYPE, &frozen.content_type)
                .header("Idempotency-Key", &d.idempotency_key);
            for (k, v) in &frozen.headers {
                req = req.header(k.as_str(), v.as_str());
            }
            for (k, v) in &self.headers {
                req = req.header(k, v);
            }
            match req.body(frozen.body.to_vec()).send().await {
                Err(e) => {
                    // Never echo the URL: for many sinks it is the credential.
                    let why = if e.is_timeout() {
                        "timeout".to_owned()
                    } else if e.is_connect() {
                        "connection failed".to_owned()
                    } else {
                        "request failed".to_owned()
                    };
                    fail(Verdict::Retry { after: None, why }, String::new())
                }
                Ok(resp) => {
                    let status = resp.status().as_u16();
                    let after = retry_after(resp.headers(), SystemTime::now());
                    let body = resp.bytes().await.unwrap_or_default();
                    Answer {
                        verdict: classify(status, after),
                        status: Some(status),
                        response: excerpt(&body),
                    }
                }
            }
        })
    }
}
