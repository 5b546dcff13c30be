//! The admin listener: `/healthz`, `/readyz`, `/metrics`, and the JSON API
//! the CLI talks to (on the local backend the daemon holds the data
//! directory's lock, so the CLI asks it):
//!
//! | request | answer |
//! |---|---|
//! | `GET /metrics` | Prometheus text |
//! | `GET /api/openapi.json` | this table, as OpenAPI 3.0 (`openapi.rs`) |
//! | `GET /api/queue/stats` | counts by state |
//! | `GET /api/events`, `GET /api/events/{id}` | events searched; one with its deliveries |
//! | `GET /api/deliveries` | deliveries searched (pending, delivered, dead) |
//! | `GET /api/dead` | dead deliveries searched |
//! | `GET /api/dead/{id}` | one, with its attempt history |
//! | `POST /api/dead/{id}/replay`, `POST /api/dead/replay` | requeue one, or those a filter selects |
//! | `POST /api/reroute` | route kept events again, making what is missing |
//! | `GET /api/sinks` | each sink's health |
//!
//! Every other path is the console (`console/`), HTML for a browser.
//! Every request passes [`Guard`] first (`Host`, token or session, CSRF).
//! Searches and filters are `lookup.rs`, their query strings `query.rs`.

mod guard;
pub mod lookup;
pub mod openapi;
pub mod query;

pub use guard::{Caller, Guard, Refused, CSRF_HEADER};

use std::sync::Arc;

use bytes::Bytes;
use http::{Method, Request, Response, StatusCode};
use http_body_util::Full;
use serde::Serialize;

use crate::config::SinkConfig;
use crate::dispatch::Dispatcher;
use crate::queue::{DeliveryRecord, Queue};

/// What the admin API reaches.
pub struct Admin {
    /// Decides who gets an answer (`Host`, bearer token, CSRF).
    pub guard: Guard,
    pub queue: Arc<dyn Queue>,
    pub dispatcher: Arc<Dispatcher>,
    pub metrics: Arc<crate::metrics::Metrics>,
    /// The routes in force, for re-routing.
    pub routes: Arc<crate::live::Live<crate::route::Routes>>,
}

/// A dead delivery, as `dead list` shows it.
#[derive(Debug, Serialize, serde::Deserialize, PartialEq, Eq)]
pub struct DeadSummary {
    pub id: u64,
    pub source: String,
    pub event: String,
    pub delivery_id: String,
    pub route: String,
    pub sink: String,
    pub attempts: usize,
    pub last_status: Option<u16>,
    pub reason: String,
    /// RFC 3339.
    pub dead_at: String,
}

impl DeadSummary {
    pub fn of(d: &DeliveryRecord) -> DeadSummary {
        let at = std::time::UNIX_EPOCH + std::time::Duration::from_millis(d.dead_ms.unwrap_or(0));
        DeadSummary {
            id: d.id,
            source: d.source.clone(),
            event: d.event.clone(),
            delivery_id: d.delivery_id.clone(),
            route: d.route.clone(),
            sink: d.sink.clone(),
            attempts: d.attempts.len(),
            last_status: d.last_status(),
            reason: d.reason.clone().unwrap_or_default(),
            dead_at: humantime::format_rfc3339_seconds(at).to_string(),
        }
    }
}

impl DeadSummary {
    /// The same, from a search's answer.
    pub fn of_item(d: &lookup::DeliveryItem) -> DeadSummary {
        DeadSummary {
            id: d.id,
            source: d.source.clone(),
            event: d.event.clone(),
            delivery_id: d.delivery_id.clone(),
            route: d.route.clone(),
            sink: d.sink.clone(),
            attempts: d.attempts.len(),
            last_status: d.attempts.last().and_then(|a| a.status),
            reason: d.reason.clone().unwrap_or_default(),
            dead_at: d
                .dead_at
                .as_deref()
                .map(|t| t.split('.').next().unwrap_or(t).to_owned() + "Z")
                .unwrap_or_default(),
        }
    }
}

/// A dead delivery in full, for `dead show`.
#[derive(Debug, Serialize, serde::Deserialize)]
pub struct DeadDetail {
    #[serde(flatten)]
    pub summary: DeadSummary,
    pub idempotency_key: String,
    pub body_bytes: usize,
    pub history: Vec<crate::queue::Attempt>,
}

impl DeadDetail {
    pub fn of(d: &DeliveryRecord) -> DeadDetail {
        DeadDetail {
            summary: DeadSummary::of(d),
            idempotency_key: d.idempotency_key.clone(),
            body_bytes: d.frozen.as_ref().map_or(0, |f| f.body.len()),
            history: d.attempts.clone(),
        }
    }
}

/// The sinks a missing secret disables, with the reason: what
/// `Queue::stats` reports as held (the daemon's sinks, or the config's
/// when the CLI reads storage itself).
pub fn disabled_sinks<'a>(
    sinks: impl IntoIterator<Item = &'a SinkConfig>,
) -> Vec<(String, String)> {
    sinks
        .into_iter()
        .filter_map(|s| Some((s.name.clone(), s.kind.unconfigured()?.to_owned())))
        .collect()
}

impl Admin {
    /// Answers one request to the admin listener: the API's, or the
    /// console's.
    pub async fn serve<B>(&self, req: Request<B>) -> Response<Full<Bytes>>
    where
        B: hyper::body::Body,
        B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    {
        let first = req.uri().path().split('/').nth(1).unwrap_or("");
        if matches!(first, "api" | "healthz" | "readyz" | "metrics") {
            self.handle(&req).await
        } else {
            crate::console::serve(self, req).await
        }
    }

    /// Answers one API request.
    pub async fn handle<B>(&self, req: &Request<B>) -> Response<Full<Bytes>> {
        let path = req.uri().path().trim_end_matches('/');
        let parts: Vec<&str> = path.split('/').filter(|p| !p.is_empty()).collect();
        let probe = matches!(parts.as_slice(), ["healthz" | "readyz"]);
        if let Err(refused) = self.guard.check(req, probe) {
            return refusal(&refused);
        }
        // HEAD is answered as GET (hyper sends no body with it).
        let method = match *req.method() {
            Method::HEAD => &Method::GET,
            ref m => m,
        };
        match allowed(&parts) {
            None => {
                return error(
                    StatusCode::NOT_FOUND,
                    "no such path: /api/openapi.json lists the API's",
                )
            }
            Some(allow) if method.as_str() != allow => {
                let mut r = error(
                    StatusCode::METHOD_NOT_ALLOWED,
                    &format!("{path} answers {allow} only"),
                );
                let allow = match allow {
                    "GET" => "GET, HEAD",
                    other => other,
                };
                r.headers_mut()
                    .insert(http::header::ALLOW, http::HeaderValue::from_static(allow));
                return r;
            }
            Some(_) => {}
        }
        match (method, parts.as_slice()) {
            (&Method::GET, ["healthz"]) => text(StatusCode::OK, "ok\n"),
            (&Method::GET, ["readyz"]) => {
                if !self.queue.writable() {
                    text(StatusCode::SERVICE_UNAVAILABLE, "queue not writable\n")
                } else if !self.queue.state_writable() {
                    text(
                        StatusCode::SERVICE_UNAVAILABLE,
                        "routing and delivery state not writable\n",
                    )
                } else {
                    text(StatusCode::OK, "ready\n")
                }
            }
            (&Method::GET, ["api", "queue", "stats"]) => result(self.stats().await),
            (&Method::GET, ["metrics"]) => match self.stats().await {
                Ok(stats) => {
                    let backend = self.queue.gauges();
                    let (log_syncs, synced_events) = match backend.log_syncs {
                        Some((h, n)) => (Some(h), n),
                        None => (None, 0),
                    };
                    let (breakers, oldest_due_age) = self
                        .dispatcher
                        .gauges(crate::queue::unix_millis(std::time::SystemTime::now()))
                        .await;
                    let gauges = crate::metrics::Gauges {
                        inbox: stats.inbox,
                        deliveries: stats.deliveries,
                        dead: stats.dead,
                        unmatched: stats.unmatched,
                        held: stats.held,
                        disabled: stats.disabled,
                        oldest_due_age,
                        breakers,
                        log_syncs,
                        synced_events,
                        damaged_frames: backend.damaged_frames,
                        db_commits: backend.db_commits,
                        dead_by_sink: self.queue.dead_by_sink().await.unwrap_or_default(),
                    };
                    reply(
                        StatusCode::OK,
                        "text/plain; version=0.0.4",
                        self.metrics.render(&gauges),
                    )
                }
                Err(e) => error(StatusCode::INTERNAL_SERVER_ERROR, &e.to_string()),
            },
            (&Method::GET, ["api", "sinks"]) => result(
                self.dispatcher
                    .health(crate::queue::unix_millis(std::time::SystemTime::now()))
                    .await,
            ),
            (&Method::GET, ["api", "openapi.json"]) => json(StatusCode::OK, &openapi::document()),
            (&Method::GET, ["api", "events"]) => self.search_events(req.uri().query()).await,
            (&Method::GET, ["api", "events", id]) => self.show_event(id).await,
            (&Method::GET, ["api", "deliveries"]) => {
                self.search_deliveries(req.uri().query(), false).await
            }
            (&Method::GET, ["api", "dead"]) => {
                self.search_deliveries(req.uri().query(), true).await
            }
            (&Method::POST, ["api", "reroute"]) => self.reroute(req.uri().query()).await,
            (&Method::GET, ["api", "dead", id]) => match id.parse::<u64>() {
                Err(_) => error(StatusCode::BAD_REQUEST, "the id is a number"),
                Ok(id) => match self.queue.dead_letter(id).await {
                    Ok(Some(d)) => json(StatusCode::OK, &DeadDetail::of(&d)),
                    Ok(None) => error(StatusCode::NOT_FOUND, "no dead delivery with that id"),
                    Err(e) => error(StatusCode::INTERNAL_SERVER_ERROR, &e.to_string()),
                },
            },
            (&Method::POST, ["api", "dead", "replay"]) => {
                self.replay_where(req.uri().query()).await
            }
            (&Method::POST, ["api", "dead", id, "replay"]) => match id.parse::<u64>() {
                Err(_) => error(StatusCode::BAD_REQUEST, "the id is a number"),
                Ok(id) => match self.dispatcher.replay(Some(id)).await {
                    Ok(done) => match done.refused.first() {
                        Some(refused) => error(
                            StatusCode::CONFLICT,
                            &format!("dead delivery {id} not replayed: {}", refused.reason),
                        ),
                        None if done.replayed == 0 => {
                            error(StatusCode::NOT_FOUND, "no dead delivery with that id")
                        }
                        None => json(StatusCode::OK, &done),
                    },
                    Err(e) => error(StatusCode::INTERNAL_SERVER_ERROR, &e.to_string()),
                },
            },
            // `allowed` and the arms above name the same paths; should they
            // ever differ, a 404 rather than a panic.
            _ => error(
                StatusCode::NOT_FOUND,
                "no such path: /api/openapi.json lists the API's",
            ),
        }
    }
}

/// The one method the API answers at `parts` (a path split at `/`), or
/// `None` for a path it does not have.
fn allowed(parts: &[&str]) -> Option<&'static str> {
    Some(match parts {
        ["api", "reroute"] | ["api", "dead", "replay"] | ["api", "dead", _, "replay"] => "POST",
        ["healthz" | "readyz" | "metrics"]
        | ["api", "queue", "stats"]
        | ["api", "sinks" | "openapi.json" | "events" | "deliveries" | "dead"]
        | ["api", "events" | "dead", _] => "GET",
        _ => return None,
    })
}

impl Admin {
    /// The queue's counts, with what each disabled sink holds.
    async fn stats(&self) -> Result<crate::queue::Stats, crate::queue::QueueError> {
        let sinks = self.dispatcher.sinks();
        let disabled = disabled_sinks(sinks.values().map(|s| &s.config));
        self.queue.stats(&disabled).await
    }
}

/// The answer for a refused request; refusals other than a missing token
/// are logged, as they are what an attack looks like.
fn refusal(refused: &Refused) -> Response<Full<Bytes>> {
    log_refusal(refused);
    let mut r = error(refused.status(), refused.message());
    let challenge = match refused {
        Refused::Token => "Bearer",
        Refused::WrongToken => "Bearer error=\"invalid_token\"",
        _ => return r,
    };
    r.headers_mut().insert(
        http::header::WWW_AUTHENTICATE,
        http::HeaderValue::from_static(challenge),
    );
    r
}

/// Logs a refusal that looks like an attack.
pub(crate) fn log_refusal(refused: &Refused) {
    match refused {
        Refused::Host(host) => {
            tracing::warn!(host = %host, "admin request refused: unknown Host")
        }
        Refused::CrossSite(header) => {
            tracing::warn!(header = %header, "admin request refused: cross-site change")
        }
        Refused::Undeclared => {
            tracing::warn!("admin request refused: a change without the CSRF header")
        }
        Refused::Csrf => {
            tracing::warn!("admin request refused: a change with the session cookie but without its CSRF token")
        }
        Refused::WrongToken => {
            tracing::warn!("admin request refused: a bearer token that is not the admin token")
        }
        Refused::Token | Refused::TokenUnset => {}
    }
}

fn result<T: Serialize>(r: Result<T, crate::queue::QueueError>) -> Response<Full<Bytes>> {
    match r {
        Ok(v) => json(StatusCode::OK, &v),
        Err(e) => error(StatusCode::INTERNAL_SERVER_ERROR, &e.to_string()),
    }
}

fn json<T: Serialize>(status: StatusCode, v: &T) -> Response<Full<Bytes>> {
    reply(
        status,
        "application/json",
        serde_json::to_string(v).expect("serializable"),
    )
}

fn error(status: StatusCode, message: &str) -> Response<Full<Bytes>> {
    json(status, &serde_json::json!({ "error": message }))
}

fn text(status: StatusCode, body: &str) -> Response<Full<Bytes>> {
    reply(status, "text/plain", body.to_owned())
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
