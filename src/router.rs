//! The router stage: claims a page of accepted events from storage
//! ([`Queue::inbox`]), evaluates every route, freezes each delivery's
//! request with its sink, and records the page's deliveries and that its
//! events are routed in one transaction ([`Queue::routed`]). An event no
//! route matches is recorded as unmatched; a route whose template fails
//! makes dead deliveries with the error, and the other routes go on.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use crate::dispatch::Sinks;
use crate::live::Live;
use crate::queue::{unix_millis, DeliveryRecord, EventId, EventRecord, Queue, QueueError, Routed};
use crate::route::{Outcome, Routes};

/// Events routed per pass.
const PAGE: usize = 64;
/// Longest wait between looks at an empty inbox (storage wakes the router
/// when it accepts events: [`Queue::appended`]).
const IDLE: Duration = Duration::from_millis(500);
/// Least time between two log lines about deliveries of one route and
/// sink dead at routing: a template that fails for every event would
/// otherwise write a line for every event.
const DEAD_LOG_EVERY: Duration = Duration::from_secs(60);

/// Routes until `shutdown`. `wake` tells the dispatcher about new work.
pub async fn run(
    queue: Arc<dyn Queue>,
    routes: Arc<Live<Routes>>,
    sinks: Arc<Live<Sinks>>,
    wake: Arc<Notify>,
    metrics: Arc<crate::metrics::Metrics>,
    heartbeat: Arc<crate::notify::Heartbeat>,
    shutdown: CancellationToken,
) {
    let mut dead_lines = DeadLines::default();
    loop {
        heartbeat.beat();
        // What routing makes could not be recorded: wait for the state
        // store to recover (`Queue::heal`).
        if !queue.state_writable() {
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = tokio::time::sleep(IDLE) => continue,
            }
        }
        let page = match queue.inbox(PAGE).await {
            Ok(page) => page,
            // A storage failure is logged once by the backend.
            Err(e @ QueueError::Storage(_)) => {
                tracing::debug!(error = %e, "cannot read accepted events back");
                tokio::time::sleep(IDLE).await;
                continue;
            }
            Err(e) => {
                tracing::error!(error = %e, "cannot read accepted events back");
                tokio::time::sleep(IDLE).await;
                continue;
            }
        };
        if page.events.is_empty() {
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = queue.appended() => continue,
                _ = tokio::time::sleep(IDLE) => {}
            }
            // Nothing came for a while: save the place pages that made no
            // deliveries left in memory (under load they are saved every
            // few seconds; saving at every lull would write the state each time).
            if let Err(e) = queue.routing_idle().await {
                tracing::error!(error = %e, "cannot save the router's place");
            }
            continue;
        }
        // One snapshot per page: a reload applies from the next page on.
        // Routing a page takes milliseconds of CPU (reading payloads,
        // templates, freezing requests): on the blocking pool, not on a
        // tokio worker, where every request on that worker waited for it
        // (p99 63 ms at 5,000 req/s with a route reading the payload).
        let (routes, sinks, install) = (routes.get(), sinks.get(), queue.install_id());
        let (page, routed) = match tokio::task::spawn_blocking(move || {
            let routed = route_page(install, &routes, &sinks, &page.events);
            (page, routed)
        })
        .await
        {
            Ok(done) => done,
            Err(e) => {
                tracing::error!(error = %e, "routing a page failed; the events will be routed again");
                tokio::time::sleep(IDLE).await;
                continue;
            }
        };
        let recorded = match routed {
            Ok(routed) => queue.routed(&page, routed).await,
            Err(e) => Err(e),
        };
        match recorded {
            Ok(routed) => {
                count(&metrics, &routed);
                dead_lines.log(&routed, Instant::now());
            }
            Err(QueueError::Moved) => {}
            // A storage failure is logged once by the state store.
            Err(e @ QueueError::Storage(_)) => {
                tracing::debug!(error = %e, "cannot record routing; the events will be routed again")
            }
            Err(e) => {
                tracing::error!(error = %e, "cannot record routing; the events will be routed again");
                tokio::time::sleep(IDLE).await;
            }
        }
        wake.notify_one();
        if shutdown.is_cancelled() {
            return;
        }
        // Reading a page and recording it are ready at once on the local
        // backend, so with a backlog this loop would never give its
        // worker back. The dispatcher task it just woke waits in that
        // worker's LIFO slot, which no other worker steals from: with a
        // million events to route, nothing was delivered for minutes.
        tokio::task::yield_now().await;
    }
}

/// Logs deliveries dead at routing: the first of a route and sink, then
/// at most one each [`DEAD_LOG_EVERY`], saying how many were not logged
/// in between (`hookgate_route_render_failures_total` counts them all).
/// By route, then sink: looked up by `&str`, so a quiet one allocates
/// nothing.
#[derive(Default)]
struct DeadLines(HashMap<String, HashMap<String, Quiet>>);

/// A route and sink's last line, and its dead deliveries since.
struct Quiet {
    logged: Instant,
    unlogged: u64,
}

impl DeadLines {
    fn log(&mut self, routed: &[Routed], now: Instant) {
        for rec in routed.iter().flat_map(|r| &r.dead) {
            let Some(unlogged) = self.due(&rec.route, &rec.sink, now) else {
                continue;
            };
            let reason = rec.reason.as_deref().unwrap_or_default();
            let event = EventId(rec.event_id);
            if unlogged == 0 {
                tracing::warn!(event = %event, route = %rec.route, sink = %rec.sink, reason = %reason, "delivery is dead before its first attempt");
            } else {
                tracing::warn!(event = %event, route = %rec.route, sink = %rec.sink, reason = %reason, unlogged, "delivery is dead before its first attempt; {unlogged} more of this route and sink were since the last such line, not logged (`hookgate queue dead list` shows them)");
            }
        }
    }

    /// Whether a dead delivery of `route` and `sink` at `now` is logged:
    /// `Some` with how many were not since the last line.
    fn due(&mut self, route: &str, sink: &str, now: Instant) -> Option<u64> {
        let sinks = match self.0.get_mut(route) {
            Some(sinks) => sinks,
            None => self.0.entry(route.to_owned()).or_default(),
        };
        match sinks.get_mut(sink) {
            Some(q) if now.duration_since(q.logged) < DEAD_LOG_EVERY => {
                q.unlogged += 1;
                None
            }
            Some(q) => {
                let unlogged = std::mem::take(&mut q.unlogged);
                q.logged = now;
                Some(unlogged)
            }
            None => {
                let quiet = Quiet {
                    logged: now,
                    unlogged: 0,
                };
                sinks.insert(sink.to_owned(), quiet);
                Some(0)
            }
        }
    }
}

/// Counts, per route, the events it matched and its deliveries whose
/// template failed (born dead with a `template:` reason).
fn count(metrics: &crate::metrics::Metrics, routed: &[Routed]) {
    for r in routed {
        let mut by_route: BTreeMap<&str, u64> = BTreeMap::new();
        for d in &r.pending {
            by_route.entry(&d.route).or_default();
        }
        for d in &r.dead {
            let failed = d
                .reason
                .as_deref()
                .is_some_and(|w| w.starts_with("template:"));
            *by_route.entry(&d.route).or_default() += u64::from(failed);
        }
        for (route, failed) in by_route {
            metrics.route(route, failed);
        }
    }
}

/// Routes a page of stored events. An event that cannot be read (a record
/// of a newer format after a downgrade) is logged and passed over, counted
/// as unmatched: it stays in the log, and the events after it are routed.
/// Any other failure fails the page, to be routed again.
fn route_page(
    install: u64,
    routes: &Routes,
    sinks: &Sinks,
    events: &[(EventId, Vec<u8>)],
) -> Result<Vec<Routed>, QueueError> {
    events
        .iter()
        .map(|(id, stored)| match route_stored(install, routes, sinks, *id, stored) {
            Err(QueueError::Corrupt { key, reason }) => {
                tracing::error!(event = %key, reason = %reason, "cannot read a stored event: passed over unrouted (counted as unmatched); it stays in the log");
                Ok(Routed {
                    event: *id,
                    pending: Vec::new(),
                    dead: Vec::new(),
                })
            }
            other => other,
        })
        .collect()
}

/// Routes one event as stored. When no route's `source` and `event`
/// filters admit it, its payload is not even decompressed.
fn route_stored(
    install: u64,
    routes: &Routes,
    sinks: &Sinks,
    id: EventId,
    stored: &[u8],
) -> Result<Routed, QueueError> {
    let corrupt = |e: crate::queue::DecodeError| QueueError::Corrupt {
        key: id.to_string(),
        reason: e.to_string(),
    };
    let head = EventRecord::head(stored).map_err(corrupt)?;
    if !routes.could_match(head.source, head.event) {
        return Ok(Routed {
            event: id,
            pending: Vec::new(),
            dead: Vec::new(),
        });
    }
    let event = EventRecord::decode(stored).map_err(corrupt)?;
    route_one(install, routes, sinks, id, &event)
}

/// Routes one event (the caller records the result; storage gives the
/// deliveries their ids). `install` is the store's id, part of each
/// idempotency key.
pub fn route_one(
    install: u64,
    routes: &Routes,
    sinks: &Sinks,
    id: EventId,
    event: &EventRecord,
) -> Result<Routed, QueueError> {
    if !routes.could_match(&event.source, &event.event) {
        // No route looks at this source and event type: the payload is
        // not even parsed.
        return Ok(Routed {
            event: id,
            pending: Vec::new(),
            dead: Vec::new(),
        });
    }
    let routed = freeze(
        install,
        sinks,
        id,
        event,
        routes.evaluate_event(event),
        SystemTime::now(),
    );
    if routed.pending.is_empty() && routed.dead.is_empty() {
        tracing::debug!(event = %id, source = %event.source, kind = %event.event, "no route matched");
    }
    Ok(routed)
}

/// The delivery records routing's `outcomes` for `event` make at `now`:
/// each with its request frozen by its sink, or dead before its first
/// attempt with the reason (a template that failed, a sink that cannot
/// send what the route made). What the router records, and what
/// `hookgate route` shows.
pub fn freeze(
    install: u64,
    sinks: &Sinks,
    id: EventId,
    event: &EventRecord,
    outcomes: Vec<Outcome>,
    now: SystemTime,
) -> Routed {
    let now = unix_millis(now);
    let mut pending = Vec::new();
    let mut dead = Vec::new();
    for outcome in outcomes {
        let (route, sink, item, order_key) = match &outcome {
            Outcome::Rendered {
                route,
                sink,
                item,
                order_key,
                ..
            } => (route, sink, *item, order_key.clone()),
            Outcome::Failed { route, sink, .. } => (route, sink, None, None),
        };
        let mut rec = DeliveryRecord {
            id: 0,
            event_id: id.0,
            source: event.source.clone(),
            event: event.event.clone(),
            delivery_id: event.delivery_id.clone(),
            route: route.clone(),
            sink: sink.clone(),
            item: item.map(|i| i as u32),
            idempotency_key: idempotency_key(install, id, route, sink, item),
            created_ms: now,
            due_ms: now,
            failures: 0,
            attempts: Vec::new(),
            reason: None,
            dead_ms: None,
            frozen: None,
            order_key,
        };
        let frozen = match &outcome {
            Outcome::Failed { error, .. } => Err(format!("template: {error}")),
            Outcome::Rendered { content, .. } => match sinks.get(sink) {
                Some(s) => s
                    .sink
                    .prepare(content, event)
                    .map_err(|e| format!("prepare: {e}")),
                None => Err(format!("sink `{sink}` is not configured")),
            },
        };
        match frozen {
            Ok(f) => {
                rec.frozen = Some(f);
                pending.push(rec);
            }
            Err(reason) => {
                rec.reason = Some(reason);
                rec.dead_ms = Some(now);
                dead.push(rec);
            }
        }
    }
    Routed {
        event: id,
        pending,
        dead,
    }
}

/// Stable across crashes and re-routing (the event's log position, route,
/// sink, item), and unique across stores: event ids start again in a fresh
/// or restored one, and a platform that dedupes on the key (ProdMatic)
/// would drop a new event under an old key.
fn idempotency_key(
    install: u64,
    id: EventId,
    route: &str,
    sink: &str,
    item: Option<usize>,
) -> String {
    match item {
        Some(i) => format!("{id}-{install:016x}.{route}.{sink}.{i}"),
        None => format!("{id}-{install:016x}.{route}.{sink}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A template that fails for every event logs its first failure, then
    /// one line a minute per route and sink with the count in between.
    #[test]
    fn dead_deliveries_are_logged_once_a_minute_per_route_and_sink() {
        let mut lines = DeadLines::default();
        let t0 = Instant::now();
        let at = |s: u64| t0 + Duration::from_secs(s);
        assert_eq!(lines.due("r", "s", t0), Some(0));
        assert_eq!(lines.due("r", "s", at(1)), None);
        assert_eq!(lines.due("r", "s", at(2)), None);
        assert_eq!(lines.due("r", "t", at(2)), Some(0), "another sink");
        assert_eq!(lines.due("q", "s", at(2)), Some(0), "another route");
        assert_eq!(lines.due("r", "s", at(59)), None);
        assert_eq!(lines.due("r", "s", at(60)), Some(3));
        assert_eq!(lines.due("r", "s", at(61)), None);
        assert_eq!(lines.due("r", "s", at(200)), Some(1));
        assert_eq!(lines.due("r", "s", at(300)), Some(0));
    }

    /// Working through a backlog, the router lets the tasks it shares a
    /// thread with run between its pages (the dispatcher among them).
    #[tokio::test(flavor = "current_thread")]
    async fn the_router_gives_way_between_pages() {
        use crate::queue::{Local, LocalStore, NewEvent};
        let dir = tempfile::tempdir().unwrap();
        let queue: Arc<dyn Queue> =
            Arc::new(Local::new(LocalStore::open(dir.path(), true).unwrap()));
        const EVENTS: usize = PAGE * 20;
        let mut appends = Vec::new();
        for i in 0..EVENTS {
            let event = NewEvent {
                record: EventRecord {
                    source: "gh".into(),
                    provider: "github".into(),
                    event: "push".into(),
                    delivery_id: format!("d-{i}"),
                    received_at_ms: 0,
                    client_ip: "127.0.0.1".into(),
                    headers: vec![],
                    body: b"{}".to_vec(),
                },
                dedupe: crate::queue::Dedupe::Key(format!("d-{i}")),
                dedupe_window: Duration::from_secs(60),
            };
            let queue = queue.clone();
            appends.push(tokio::spawn(async move {
                queue.append(event, SystemTime::now()).await.unwrap()
            }));
        }
        for a in appends {
            a.await.unwrap();
        }
        let shutdown = CancellationToken::new();
        let router = tokio::spawn(run(
            queue.clone(),
            Arc::new(Live::new(Routes::compile(Vec::new()).unwrap())),
            Arc::new(Live::new(Sinks::new())),
            Arc::new(Notify::new()),
            Arc::default(),
            Arc::default(),
            shutdown.clone(),
        ));
        // Runs once the router gives the thread back, and looks at once
        // (the local inbox is read on the calling task): events still
        // waiting then are the proof. `stats` went through the blocking
        // pool, racing the router, which routes 20 pages faster now that
        // it files nothing per event.
        let other = tokio::spawn({
            let queue = queue.clone();
            async move { queue.inbox(EVENTS).await.unwrap().events.len() }
        });
        let waiting = other.await.unwrap();
        shutdown.cancel();
        router.await.unwrap();
        assert!(
            waiting > 0,
            "another task ran only once all {EVENTS} events were routed"
        );
    }

    /// One unreadable record does not stop the events after it.
    #[test]
    fn an_unreadable_event_is_passed_over() {
        let routes = Routes::compile(Vec::new()).unwrap();
        let sinks = Sinks::new();
        let routed = route_page(
            1,
            &routes,
            &sinks,
            &[(EventId(7), b"not a record".to_vec())],
        )
        .unwrap();
        assert_eq!(routed.len(), 1);
        assert_eq!(routed[0].event, EventId(7));
        assert!(routed[0].pending.is_empty() && routed[0].dead.is_empty());
    }
}
