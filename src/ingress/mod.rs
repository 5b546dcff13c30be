//! `POST /hooks/{source}`: the only code that answers providers.
//!
//! Checks run in the order DESIGN.md fixes, and the first that fails
//! answers: unknown source (404) → method (405) → client IP (403) → size
//! (413) → proof of origin (401) → body shape (400) → rate (429) → replayed
//! signature (200) → dedupe (200) → queue (202 after fsync, or 503).

pub mod client_ip;
pub mod listener;
pub mod replay;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use bytes::Bytes;
use http::{header, HeaderMap, Method, StatusCode};
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use hyper::{Request, Response};

use crate::bucket::Bucket;
use crate::config::{Proof, ProviderKind, Server, Source};
use crate::live::Live;
use crate::metrics::Metrics;
use crate::queue::{unix_millis, Appended, EventId, EventRecord, Ingest, NewEvent, QueueError};
use crate::verify::{Envelope, Inbound, Provider};
use replay::{Claim, ReplayCache, Ticket};

/// Headers never stored with an event: they carry credentials.
const CREDENTIAL_HEADERS: [&str; 5] = [
    "authorization",
    "proxy-authorization",
    "cookie",
    "x-gitlab-token",
    "x-api-key",
];

/// How long a body may take to start arriving before [`BODY_MIN_RATE`]
/// applies (a sender's first write, TCP slow start).
const BODY_GRACE: Duration = Duration::from_secs(2);

/// Bytes per second a body must average after [`BODY_GRACE`]: a provider's
/// servers send far faster; a client below it only holds a connection.
const BODY_MIN_RATE: u64 = 16 * 1024;

/// Longest a request waits for the queue to store its event.
const APPEND_LIMIT: std::time::Duration = std::time::Duration::from_secs(10);

/// Everything a request needs: the sources, server limits and the queue.
pub struct Gateway {
    server: Server,
    /// Swapped whole by a reload.
    sources: Live<HashMap<String, SourceState>>,
    queue: Arc<dyn Ingest>,
    metrics: Arc<Metrics>,
    /// Verified signatures of timestamped schemes; kept across reloads.
    replays: ReplayCache,
}

struct SourceState {
    source: Source,
    bucket: Option<Bucket>,
}

impl Gateway {
    pub fn new(
        server: Server,
        sources: impl IntoIterator<Item = Source>,
        queue: Arc<dyn Ingest>,
        metrics: Arc<Metrics>,
    ) -> Gateway {
        Gateway {
            server,
            sources: Live::new(source_states(sources)),
            queue,
            metrics,
            replays: ReplayCache::new(replay::CAPACITY),
        }
    }

    /// Serves these sources from the next request on (a reload).
    pub fn set_sources(&self, sources: impl IntoIterator<Item = Source>) {
        self.sources.set(source_states(sources));
    }

    pub fn server(&self) -> &Server {
        &self.server
    }

    pub fn queue(&self) -> &Arc<dyn Ingest> {
        &self.queue
    }

    /// Answers one request, and counts the answer.
    pub async fn handle(&self, req: Request<Incoming>, peer: SocketAddr) -> Response<Full<Bytes>> {
        let started = Instant::now();
        // Only configured names become labels: unknown ones are `_unknown`.
        let sources = self.sources.get();
        let source = req
            .uri()
            .path()
            .strip_prefix("/hooks/")
            .and_then(|n| sources.get_key_value(n))
            .map_or("_unknown", |(name, _)| name.as_str());
        let response = self.answer(&sources, req, peer).await;
        self.metrics
            .request(source, response.status().as_u16(), started.elapsed());
        response
    }

    async fn answer(
        &self,
        sources: &HashMap<String, SourceState>,
        req: Request<Incoming>,
        peer: SocketAddr,
    ) -> Response<Full<Bytes>> {
        let Some(state) = req
            .uri()
            .path()
            .strip_prefix("/hooks/")
            .and_then(|n| sources.get(n))
        else {
            let name = req.uri().path();
            tracing::info!(path = name, %peer, "rejected: unknown source");
            return answer(StatusCode::NOT_FOUND, r#"{"error":"unknown source"}"#);
        };
        let source = &state.source;
        let name = source.name.as_str();
        let methods = methods(source.provider);
        if !methods.contains(req.method()) {
            let allow: Vec<&str> = methods.iter().map(Method::as_str).collect();
            tracing::info!(source = name, %peer, method = %req.method(), allowed = %allow.join(", "), "rejected: method not allowed");
            let mut r = answer(
                StatusCode::METHOD_NOT_ALLOWED,
                &format!(r#"{{"error":"use {}"}}"#, allow.join(" or ")),
            );
            r.headers_mut().insert(
                header::ALLOW,
                allow.join(", ").parse().expect("method names"),
            );
            return r;
        }
        let ip = client_ip::client_ip(peer.ip(), req.headers(), &self.server.trusted_proxies);
        if let Some(allow) = &source.allow_ips {
            if !client_ip::in_any(ip, allow) {
                tracing::warn!(source = name, client = %ip, "rejected: client IP not in allow_ips");
                return answer(StatusCode::FORBIDDEN, r#"{"error":"address not allowed"}"#);
            }
        }
        let (parts, body) = req.into_parts();
        let body = match self.read_body(&parts.headers, body).await {
            Ok(b) => b,
            Err((status, msg)) => {
                tracing::warn!(source = name, client = %ip, reason = msg, "rejected: body");
                return answer(status, &format!(r#"{{"error":"{msg}"}}"#));
            }
        };
        let provider = match &source.proof {
            Proof::Ready(p) => p,
            Proof::Closed(reason) => {
                tracing::error!(source = name, client = %ip, reason = %reason, "rejected: source is closed until its secret is configured");
                return answer(
                    StatusCode::SERVICE_UNAVAILABLE,
                    r#"{"error":"this source's secret is not set on the gateway yet: deliveries are refused until it is"}"#,
                );
            }
        };
        let now = SystemTime::now();
        let inbound = Inbound {
            headers: &parts.headers,
            body: &body,
            now,
        };
        let verified = match provider.verify(&inbound) {
            Ok(v) => v,
            Err(e) => {
                self.metrics.verify_failure(name, e.reason());
                tracing::warn!(source = name, client = %ip, reason = e.reason(), detail = %e, "rejected: proof of origin");
                return answer(
                    StatusCode::UNAUTHORIZED,
                    r#"{"error":"signature verification failed"}"#,
                );
            }
        };
        self.metrics.secret_match(name, verified.secret);
        // The queue's writer waits for this request before committing a
        // batch without it (only proven requests: unsigned traffic must
        // not hold batches back); dropped on every early answer below.
        let preparing = self.queue.preparing();
        let envelope = match crate::verify::read_envelope(provider.as_ref(), &inbound) {
            Ok(e) => e,
            Err(e) => {
                tracing::warn!(source = name, client = %ip, detail = %e, "rejected: body shape");
                return answer(
                    StatusCode::BAD_REQUEST,
                    &format!(r#"{{"error":"{}"}}"#, json_escape(&e.to_string())),
                );
            }
        };
        // Only proven requests spend the budget: unsigned traffic cannot
        // crowd out the provider's own deliveries.
        if let Some(bucket) = &state.bucket {
            if !bucket.try_take(Instant::now()) {
                tracing::warn!(source = name, client = %ip, "rejected: rate limit");
                let mut r = answer(StatusCode::TOO_MANY_REQUESTS, r#"{"error":"rate limited"}"#);
                r.headers_mut()
                    .insert(header::RETRY_AFTER, "1".parse().expect("static"));
                return r;
            }
        }
        // A signature already seen inside its window is a replay, whatever
        // unsigned header was changed around it.
        let ticket = match verified.replay.map(|m| self.replays.claim(name, &m, now)) {
            None => None,
            Some(Claim::Fresh(ticket)) => Some(ticket),
            Some(Claim::Seen(id)) => {
                tracing::info!(source = name, client = %ip, event = %id, "replayed signature, not queued again");
                return duplicate(id);
            }
            Some(Claim::InFlight) => {
                tracing::info!(source = name, client = %ip, "the same signed request is being stored now; answered 503");
                return unavailable("the same request is being stored right now: retry");
            }
        };
        let dedupe = envelope.id.dedupe(&body);
        let record = event_record(
            source,
            provider.as_ref(),
            &parts.headers,
            &body,
            envelope,
            &ip,
            now,
        );
        let event = NewEvent {
            record,
            dedupe,
            dedupe_window: source.dedupe_window,
        };
        // The append says it is coming itself until it reaches the writer.
        drop(preparing);
        self.store(name, &ip, event, now, ticket).await
    }

    /// Appends `event` and answers for it: 202, 200 for a duplicate, or 503
    /// when the queue refuses or does not answer within `APPEND_LIMIT` (a
    /// hung disk must not hold every connection; the provider retries, and
    /// if the event did land after all, the retry is a duplicate). A stored
    /// event settles the request's replay `ticket`.
    async fn store(
        &self,
        name: &str,
        ip: &std::net::IpAddr,
        event: NewEvent,
        now: SystemTime,
        ticket: Option<Ticket<'_>>,
    ) -> Response<Full<Bytes>> {
        let appended = match tokio::time::timeout(APPEND_LIMIT, self.queue.append(event, now)).await
        {
            Ok(r) => r,
            Err(_) => {
                tracing::error!(
                    source = name,
                    limit_s = APPEND_LIMIT.as_secs(),
                    "the queue did not store the event in time (is the disk hung?); answered 503"
                );
                return unavailable("storage did not answer in time: retry later");
            }
        };
        if let (Ok(Appended::Queued(id) | Appended::Duplicate(id)), Some(ticket)) =
            (&appended, ticket)
        {
            ticket.stored(*id);
        }
        match appended {
            Ok(Appended::Queued(id)) => {
                tracing::debug!(source = name, event = %id, "queued");
                answer(
                    StatusCode::ACCEPTED,
                    &format!(r#"{{"id":"{id}","status":"queued"}}"#),
                )
            }
            Ok(Appended::Duplicate(id)) => {
                tracing::info!(source = name, client = %ip, event = %id, "duplicate delivery, not queued again");
                duplicate(id)
            }
            Err(e) => match e {
                QueueError::ShuttingDown => {
                    tracing::info!(source = name, "refused: shutting down");
                    unavailable("shutting down: retry later")
                }
                // Storage is down and said so once, when it went: an error
                // line per refused request would flood the log for as long
                // as the outage lasts.
                ref e if !self.queue.writable() => {
                    tracing::debug!(source = name, error = %e, "refused: storage cannot take writes");
                    unavailable("storage cannot take writes now: retry later")
                }
                ref e => {
                    tracing::error!(source = name, error = %e, "cannot store the event");
                    unavailable("the event could not be stored: retry later")
                }
            },
        }
    }

    /// Reads the body under the size cap, the request timeout and a rate
    /// floor: from `BODY_GRACE` on, the body must have arrived at
    /// `BODY_MIN_RATE` on average, so a client that stalls or trickles its
    /// body is cut off (408) in seconds, not after `request_timeout`.
    async fn read_body(
        &self,
        headers: &HeaderMap,
        body: Incoming,
    ) -> Result<Bytes, (StatusCode, &'static str)> {
        let max = self.server.max_body_bytes;
        let declared = headers
            .get(header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<u64>().ok());
        if declared.is_some_and(|n| n > max as u64) {
            return Err((StatusCode::PAYLOAD_TOO_LARGE, "body too large"));
        }
        let started = tokio::time::Instant::now();
        let limit = started + self.server.request_timeout;
        let mut body = Limited::new(body, max);
        let mut chunks: Vec<Bytes> = Vec::new();
        let mut received: u64 = 0;
        loop {
            let earned = Duration::from_millis(received.saturating_mul(1000) / BODY_MIN_RATE);
            let deadline = limit.min(started + BODY_GRACE + earned);
            let frame = match tokio::time::timeout_at(deadline, body.frame()).await {
                Err(_) if deadline == limit => {
                    return Err((StatusCode::REQUEST_TIMEOUT, "request took too long"))
                }
                Err(_) => return Err((StatusCode::REQUEST_TIMEOUT, "body arrived too slowly")),
                Ok(None) => break,
                Ok(Some(Err(e))) if e.is::<http_body_util::LengthLimitError>() => {
                    return Err((StatusCode::PAYLOAD_TOO_LARGE, "body too large"))
                }
                Ok(Some(Err(_))) => {
                    return Err((StatusCode::BAD_REQUEST, "body could not be read"))
                }
                Ok(Some(Ok(frame))) => frame,
            };
            if let Ok(data) = frame.into_data() {
                received += data.len() as u64;
                chunks.push(data);
            }
        }
        Ok(match chunks.len() {
            1 => chunks.swap_remove(0),
            _ => Bytes::from(chunks.concat()),
        })
    }
}

fn source_states(sources: impl IntoIterator<Item = Source>) -> HashMap<String, SourceState> {
    sources
        .into_iter()
        .map(|source| {
            let bucket = source.rate_limit.map(Bucket::new);
            (source.name.clone(), SourceState { source, bucket })
        })
        .collect()
}

/// The event a proven request becomes, as it is stored and routed:
/// credential headers dropped, a proof carried in the body blanked.
/// `hookgate route` makes its sample event here too.
pub fn event_record(
    source: &Source,
    provider: &dyn Provider,
    headers: &HeaderMap,
    body: &[u8],
    envelope: Envelope,
    client_ip: &std::net::IpAddr,
    now: SystemTime,
) -> EventRecord {
    EventRecord {
        source: source.name.clone(),
        provider: source.provider.name().to_owned(),
        event: envelope.event,
        delivery_id: envelope.id.as_str().unwrap_or_default().to_owned(),
        received_at_ms: unix_millis(now),
        client_ip: client_ip.to_string(),
        headers: stored_headers(headers),
        body: provider.stored_body(body).into_owned(),
    }
}

/// Headers kept with the event, for routes to look at. Credentials are dropped.
fn stored_headers(headers: &HeaderMap) -> Vec<(String, Vec<u8>)> {
    headers
        .iter()
        .filter(|(name, _)| !CREDENTIAL_HEADERS.contains(&name.as_str()))
        .map(|(name, value)| (name.as_str().to_owned(), value.as_bytes().to_vec()))
        .collect()
}

/// The methods a provider sends webhooks with. Zendesk triggers may use
/// PUT or PATCH as well (their GET and DELETE carry the fields in the
/// query string, which the signature does not cover); everyone else POSTs.
fn methods(provider: ProviderKind) -> &'static [Method] {
    match provider {
        ProviderKind::Zendesk => &[Method::POST, Method::PUT, Method::PATCH],
        _ => &[Method::POST],
    }
}

/// 200: the delivery was stored before, as event `id`.
fn duplicate(id: EventId) -> Response<Full<Bytes>> {
    answer(
        StatusCode::OK,
        &format!(r#"{{"id":"{id}","status":"duplicate"}}"#),
    )
}

/// 503 with `Retry-After`: the event cannot be taken now, and `why` (our
/// words, never a request's: it is written into the JSON as it is).
fn unavailable(why: &'static str) -> Response<Full<Bytes>> {
    let mut r = answer(
        StatusCode::SERVICE_UNAVAILABLE,
        &format!(r#"{{"error":"{why}"}}"#),
    );
    r.headers_mut()
        .insert(header::RETRY_AFTER, "5".parse().expect("static"));
    r
}

fn answer(status: StatusCode, body: &str) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(Bytes::copy_from_slice(body.as_bytes())));
    *r.status_mut() = status;
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        "application/json".parse().expect("static"),
    );
    r
}

fn json_escape(s: &str) -> String {
    let quoted = serde_json::to_string(s).expect("strings serialize");
    quoted[1..quoted.len() - 1].to_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A queue on a hung disk: appends never finish.
    struct Hung;

    #[async_trait::async_trait]
    impl Ingest for Hung {
        async fn append(&self, _: NewEvent, _: SystemTime) -> Result<Appended, QueueError> {
            std::future::pending().await
        }
        fn writable(&self) -> bool {
            true
        }
        fn close(&self) {}
    }

    #[tokio::test(start_paused = true)]
    async fn a_queue_that_never_answers_gets_a_503_in_time() {
        let loaded = crate::config::parse(
            "[server]\ndata_dir = \"/nonexistent\"\n[sources.s]\nprovider = \"github\"\nsecret = { env = \"HOOKGATE_TEST_UNSET\" }\n",
            &crate::config::secrets::Resolver::default(),
        )
        .unwrap();
        let gw = Gateway::new(
            loaded.config.server,
            Vec::new(),
            Arc::new(Hung),
            Arc::new(Metrics::default()),
        );
        let event = NewEvent {
            record: crate::queue::sample_record(),
            dedupe: crate::queue::Dedupe::Key("d".into()),
            dedupe_window: std::time::Duration::from_secs(60),
        };
        let started = tokio::time::Instant::now();
        let r = gw
            .store(
                "s",
                &"127.0.0.1".parse().unwrap(),
                event,
                SystemTime::now(),
                None,
            )
            .await;
        assert_eq!(r.status(), StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(r.headers()[header::RETRY_AFTER], "5");
        assert_eq!(started.elapsed(), APPEND_LIMIT);
    }

    #[test]
    fn credentials_are_not_stored() {
        let mut h = HeaderMap::new();
        h.insert("x-gitlab-token", "s3cret".parse().unwrap());
        h.insert("authorization", "Bearer x".parse().unwrap());
        h.insert("x-github-event", "push".parse().unwrap());
        let kept = stored_headers(&h);
        assert_eq!(kept, vec![("x-github-event".to_string(), b"push".to_vec())]);
    }
}
