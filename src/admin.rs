//! The admin listener (loopback only): `/healthz`, `/readyz` and the JSON
//! API the CLI talks to while the daemon holds the sled lock.

use std::sync::Arc;

use bytes::Bytes;
use http::{Method, Request, Response, StatusCode};
use http_body_util::Full;

use crate::queue::Queue;

/// Answers one admin request.
pub fn handle<B>(req: &Request<B>, queue: &Arc<dyn Queue>) -> Response<Full<Bytes>> {
    if req.method() != Method::GET {
        return reply(
            StatusCode::METHOD_NOT_ALLOWED,
            "text/plain",
            "use GET\n".into(),
        );
    }
    match req.uri().path() {
        "/healthz" => reply(StatusCode::OK, "text/plain", "ok\n".into()),
        "/readyz" => {
            if queue.writable() {
                reply(StatusCode::OK, "text/plain", "ready\n".into())
            } else {
                reply(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "text/plain",
                    "queue not writable\n".into(),
                )
            }
        }
        "/api/queue/stats" => match queue.stats() {
            Ok(stats) => reply(
                StatusCode::OK,
                "application/json",
                serde_json::to_string(&stats).expect("stats serialize"),
            ),
            Err(e) => reply(
                StatusCode::INTERNAL_SERVER_ERROR,
                "application/json",
                serde_json::json!({ "error": e.to_string() }).to_string(),
            ),
        },
        _ => reply(StatusCode::NOT_FOUND, "text/plain", "not found\n".into()),
    }
}

fn reply(status: StatusCode, content_type: &str, body: String) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(Bytes::from(body)));
    *r.status_mut() = status;
    r.headers_mut().insert(
        http::header::CONTENT_TYPE,
        content_type.parse().expect("static"),
    );
    r
}
