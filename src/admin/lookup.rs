//! Lookups and bulk changes over the admin API: events (with headers and
//! payload), their deliveries and every attempt, filtered and paged by a
//! cursor; dead letters replayed by filter; events re-routed through the
//! current routes. The answers' shapes are the CLI's and the console's.

use std::time::{Duration, Instant, SystemTime};

use bytes::Bytes;
use http::{Response, StatusCode};
use http_body_util::Full;
use serde::{Deserialize, Serialize};

use super::query::{self, rfc3339, BadQuery, Query};
use super::{error, json, Admin};
use crate::queue::{
    DeliveryFilter, DeliveryStatus, DeliveryView, EventFilter, EventId, EventRecord, EventSummary,
    QueueError,
};

/// One page of a search, newest first. `next_before`: pass it as `before`
/// for the next page; absent on the last.
#[derive(Debug, Serialize, Deserialize)]
pub struct Paged<T> {
    pub items: Vec<T>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub next_before: Option<u64>,
}

/// An event as a search lists it.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct EventItem {
    pub id: u64,
    /// RFC 3339, to the millisecond.
    pub received_at: String,
    pub source: String,
    pub provider: String,
    pub event: String,
    /// The provider's id for the delivery (GitHub's `X-GitHub-Delivery`).
    pub delivery_id: String,
}

impl EventItem {
    pub fn of(e: &EventSummary) -> EventItem {
        EventItem {
            id: e.id,
            received_at: rfc3339(e.received_ms),
            source: e.source.clone(),
            provider: e.provider.clone(),
            event: e.event.clone(),
            delivery_id: e.delivery_id.clone(),
        }
    }
}

/// An event in full: what came in, and what became of it.
#[derive(Debug, Serialize, Deserialize)]
pub struct EventDetail {
    #[serde(flatten)]
    pub item: EventItem,
    pub client_ip: String,
    /// As received, credentials left out (they are never stored).
    pub headers: Vec<(String, String)>,
    pub body_bytes: usize,
    /// The body, when it is JSON (a Figma passcode masked).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub payload: Option<serde_json::Value>,
    /// The body, when it is not JSON: as text, or base64 if not UTF-8.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub body_text: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub body_base64: Option<String>,
    /// Every delivery it made, newest first.
    pub deliveries: Vec<DeliveryItem>,
}

/// A delivery: where it goes, where it stands, and each attempt.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct DeliveryItem {
    pub id: u64,
    pub status: DeliveryStatus,
    pub event_id: u64,
    pub source: String,
    pub event: String,
    pub delivery_id: String,
    pub route: String,
    pub sink: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub item: Option<u32>,
    pub idempotency_key: String,
    pub created_at: String,
    /// Pending: when the next attempt is due.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub due_at: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub delivered_at: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub dead_at: Option<String>,
    pub failures: u32,
    /// Pending, and nothing is sent to its sink now: why (the sink
    /// disabled until its secret is set, paused at the platform's
    /// request, or its breaker open), as this instance sees the sink.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub held: Option<String>,
    /// Why it is dead, or why the last attempt failed.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    pub attempts: Vec<AttemptItem>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct AttemptItem {
    pub at: String,
    /// The platform's status code; absent when no answer came.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub status: Option<u16>,
    pub latency_ms: u64,
    pub outcome: String,
    /// The answer's first bytes.
    pub response: String,
}

impl DeliveryItem {
    pub fn of(v: &DeliveryView) -> DeliveryItem {
        let d = &v.record;
        let delivered = (v.status == DeliveryStatus::Delivered)
            .then(|| d.attempts.last().map(|a| rfc3339(a.at_ms)))
            .flatten();
        DeliveryItem {
            id: d.id,
            status: v.status,
            event_id: d.event_id,
            source: d.source.clone(),
            event: d.event.clone(),
            delivery_id: d.delivery_id.clone(),
            route: d.route.clone(),
            sink: d.sink.clone(),
            item: d.item,
            idempotency_key: d.idempotency_key.clone(),
            created_at: rfc3339(d.created_ms),
            due_at: (v.status == DeliveryStatus::Pending).then(|| rfc3339(d.due_ms)),
            delivered_at: delivered,
            dead_at: d
                .dead_ms
                .filter(|_| v.status == DeliveryStatus::Dead)
                .map(rfc3339),
            failures: d.failures,
            held: None,
            reason: d.reason.clone(),
            attempts: d
                .attempts
                .iter()
                .map(|a| AttemptItem {
                    at: rfc3339(a.at_ms),
                    status: a.status,
                    latency_ms: a.latency_ms,
                    outcome: a.outcome.clone(),
                    response: a.response.clone(),
                })
                .collect(),
        }
    }
}

impl EventDetail {
    pub fn of(id: u64, e: &EventRecord, deliveries: Vec<DeliveryItem>) -> EventDetail {
        use base64::Engine as _;
        let payload = serde_json::from_slice::<serde_json::Value>(&e.body)
            .ok()
            .map(|mut v| {
                if e.provider == "figma" {
                    if let Some(p) = v.get_mut("passcode").filter(|p| p.is_string()) {
                        *p = serde_json::Value::String("(hidden)".into());
                    }
                }
                v
            });
        let (body_text, body_base64) = match (&payload, std::str::from_utf8(&e.body)) {
            (Some(_), _) => (None, None),
            (None, Ok(text)) => (Some(text.to_owned()), None),
            (None, Err(_)) => (
                None,
                Some(base64::engine::general_purpose::STANDARD.encode(&e.body)),
            ),
        };
        EventDetail {
            item: EventItem {
                id,
                received_at: rfc3339(e.received_at_ms),
                source: e.source.clone(),
                provider: e.provider.clone(),
                event: e.event.clone(),
                delivery_id: e.delivery_id.clone(),
            },
            client_ip: e.client_ip.clone(),
            headers: e
                .headers
                .iter()
                .map(|(n, v)| (n.clone(), String::from_utf8_lossy(v).into_owned()))
                .collect(),
            body_bytes: e.body.len(),
            payload,
            body_text,
            body_base64,
            deliveries,
        }
    }
}

/// What a replay by filter did, or (dry) would do.
#[derive(Debug, Serialize, Deserialize)]
pub struct Replayed {
    pub dry_run: bool,
    #[serde(flatten)]
    pub done: crate::queue::Requeued,
}

type Answer = Response<Full<Bytes>>;

/// How long a search goes on reading further stretches (a backend reads
/// a bounded stretch per call where it has no index for a filter) to fill
/// its page; past it the page answers what it has, and `next_before`.
const FILL_BUDGET: Duration = Duration::from_millis(500);

/// Why a lookup has no answer: the status and what to tell the operator.
#[derive(Debug)]
pub struct Failure(pub StatusCode, pub String);

impl Failure {
    fn answer(self) -> Answer {
        error(self.0, &self.1)
    }
}

impl From<BadQuery> for Failure {
    fn from(e: BadQuery) -> Failure {
        Failure(StatusCode::BAD_REQUEST, e.0)
    }
}

impl From<QueueError> for Failure {
    fn from(e: QueueError) -> Failure {
        Failure(StatusCode::SERVICE_UNAVAILABLE, e.to_string())
    }
}

/// A page filled by `read` (ids below a cursor, how many wanted: items
/// and where to go on), a stretch at a time, until it is full, nothing
/// more matches, or [`FILL_BUDGET`] is spent.
async fn fill<T, F, Fut>(page: query::Page, mut read: F) -> Result<Paged<T>, Failure>
where
    F: FnMut(Option<u64>, usize) -> Fut,
    Fut: std::future::Future<Output = Result<(Vec<T>, Option<u64>), QueueError>>,
{
    let started = Instant::now();
    let (mut items, mut before) = (Vec::new(), page.before);
    loop {
        let (found, next) = read(before, page.limit - items.len()).await?;
        items.extend(found);
        before = next;
        if items.len() >= page.limit || before.is_none() || started.elapsed() > FILL_BUDGET {
            return Ok(Paged {
                items,
                next_before: before,
            });
        }
    }
}

fn answer<T: Serialize>(r: Result<T, Failure>) -> Answer {
    match r {
        Ok(v) => json(StatusCode::OK, &v),
        Err(f) => f.answer(),
    }
}

/// The lookups that read storage alone: what the admin API answers, and
/// what the CLI reads itself when no daemon answers (`hookgate events
/// list|show`, `hookgate deliveries list`). Only a running daemon knows
/// why a pending delivery is held ([`Admin`] adds it).
pub struct Stored<'a>(pub &'a dyn crate::queue::Queue);

impl Stored<'_> {
    /// The events a query string selects, a page of them.
    pub async fn events_page(&self, raw: Option<&str>) -> Result<Paged<EventItem>, Failure> {
        let q = Query::parse(raw, query::EVENT_PARAMS)?;
        let (filter, page) = (q.event_filter(SystemTime::now())?, q.page()?);
        let filter = &filter;
        fill(page, |before, want| async move {
            let found = self.0.events(filter, before, want).await?;
            Ok((
                found.items.iter().map(EventItem::of).collect(),
                found.next_before,
            ))
        })
        .await
    }

    /// One event, with every delivery it made.
    pub async fn event_detail(&self, id: u64) -> Result<EventDetail, Failure> {
        let Some(event) = self.0.event(EventId(id)).await? else {
            return Err(Failure(
                StatusCode::NOT_FOUND,
                "no event with that id (past server.retention, or never stored)".into(),
            ));
        };
        let deliveries = self.deliveries_of(id, usize::MAX).await?;
        Ok(EventDetail::of(id, &event, deliveries))
    }

    /// Up to `most` of the deliveries event `id` made, newest first.
    pub async fn deliveries_of(&self, id: u64, most: usize) -> Result<Vec<DeliveryItem>, Failure> {
        let filter = DeliveryFilter {
            event_id: Some(id),
            ..DeliveryFilter::default()
        };
        let mut deliveries = Vec::new();
        let mut before = None;
        loop {
            let page = self
                .0
                .deliveries(&filter, before, query::LIMIT_MAX.min(most))
                .await?;
            deliveries.extend(page.items.iter().map(DeliveryItem::of));
            before = page.next_before;
            if before.is_none() || deliveries.len() >= most {
                break;
            }
        }
        deliveries.truncate(most);
        Ok(deliveries)
    }

    /// The deliveries a query string selects (of the dead only, with
    /// `dead_only`), a page of them.
    pub async fn deliveries_page(
        &self,
        raw: Option<&str>,
        dead_only: bool,
    ) -> Result<Paged<DeliveryItem>, Failure> {
        let params = if dead_only {
            query::DEAD_PARAMS
        } else {
            query::DELIVERY_PARAMS
        };
        let q = Query::parse(raw, params)?;
        let (mut filter, page) = (q.delivery_filter(SystemTime::now())?, q.page()?);
        if dead_only {
            filter.status = Some(DeliveryStatus::Dead);
        }
        let filter = &filter;
        fill(page, |before, want| async move {
            let found = self.0.deliveries(filter, before, want).await?;
            Ok((
                found.items.iter().map(DeliveryItem::of).collect(),
                found.next_before,
            ))
        })
        .await
    }
}

impl Admin {
    fn stored(&self) -> Stored<'_> {
        Stored(&*self.queue)
    }

    /// `GET /api/events`
    pub(super) async fn search_events(&self, raw: Option<&str>) -> Answer {
        answer(self.events_page(raw).await)
    }

    /// The events a query string selects, a page of them.
    pub async fn events_page(&self, raw: Option<&str>) -> Result<Paged<EventItem>, Failure> {
        self.stored().events_page(raw).await
    }

    /// `GET /api/events/{id}`
    pub(super) async fn show_event(&self, id: &str) -> Answer {
        match id.parse::<EventId>() {
            Ok(id) => answer(self.event_detail(id.0).await),
            Err(e) => error(StatusCode::BAD_REQUEST, &e.to_string()),
        }
    }

    /// One event, with every delivery it made (and why a pending one is
    /// held).
    pub async fn event_detail(&self, id: u64) -> Result<EventDetail, Failure> {
        let mut detail = self.stored().event_detail(id).await?;
        self.mark_held(&mut detail.deliveries);
        Ok(detail)
    }

    /// Up to `most` of the deliveries event `id` made, newest first (the
    /// console's events page counts them by status: no `held`).
    pub async fn deliveries_of(&self, id: u64, most: usize) -> Result<Vec<DeliveryItem>, Failure> {
        self.stored().deliveries_of(id, most).await
    }

    /// Says why, beside each pending delivery whose sink sends nothing
    /// now ([`crate::dispatch::Dispatcher::holds`]).
    fn mark_held(&self, items: &mut [DeliveryItem]) {
        if !items.iter().any(|d| d.status == DeliveryStatus::Pending) {
            return;
        }
        let holds = self
            .dispatcher
            .holds(crate::queue::unix_millis(SystemTime::now()));
        for d in items
            .iter_mut()
            .filter(|d| d.status == DeliveryStatus::Pending)
        {
            d.held = holds.get(&d.sink).cloned();
        }
    }

    /// `GET /api/deliveries`, and `GET /api/dead` (dead ones only).
    pub(super) async fn search_deliveries(&self, raw: Option<&str>, dead_only: bool) -> Answer {
        answer(self.deliveries_page(raw, dead_only).await)
    }

    /// The deliveries a query string selects (of the dead only, with
    /// `dead_only`), a page of them.
    pub async fn deliveries_page(
        &self,
        raw: Option<&str>,
        dead_only: bool,
    ) -> Result<Paged<DeliveryItem>, Failure> {
        let mut paged = self.stored().deliveries_page(raw, dead_only).await?;
        self.mark_held(&mut paged.items);
        Ok(paged)
    }

    /// `POST /api/dead/replay`: the dead letters the filter selects (all,
    /// without one), or what would go with `dry_run=true`.
    pub(super) async fn replay_where(&self, raw: Option<&str>) -> Answer {
        answer(self.replay_filtered(raw).await)
    }

    /// Replays the dead letters a query string selects, or with
    /// `dry_run=true` counts them.
    pub async fn replay_filtered(&self, raw: Option<&str>) -> Result<Replayed, Failure> {
        let q = Query::parse(raw, query::REPLAY_PARAMS)?;
        let (filter, dry_run) = (q.delivery_filter(SystemTime::now())?, q.flag("dry_run")?);
        let done = self.dispatcher.replay_where(&filter, dry_run).await?;
        Ok(Replayed { dry_run, done })
    }

    /// `POST /api/reroute`: the events the filter selects, through the
    /// routes in force, making only deliveries that do not exist yet.
    pub(super) async fn reroute(&self, raw: Option<&str>) -> Answer {
        let (filter, dry_run) = match Query::parse(raw, query::REROUTE_PARAMS)
            .and_then(|q| Ok((q.event_filter(SystemTime::now())?, q.flag("dry_run")?)))
        {
            Ok(v) => v,
            Err(e) => return Failure::from(e).answer(),
        };
        if filter == EventFilter::default() {
            return error(
                StatusCode::BAD_REQUEST,
                "say which events to re-route: give `since` (and `until`), `source`, `event` or \
                 `delivery_id`",
            );
        }
        let (routes, sinks) = (self.routes.get(), self.dispatcher.sinks());
        match crate::reroute::reroute(&*self.queue, &routes, &sinks, &filter, dry_run).await {
            Ok(done) => {
                if !dry_run && done.created > 0 {
                    self.dispatcher.wake();
                }
                json(StatusCode::OK, &done)
            }
            Err(e) => Failure::from(e).answer(),
        }
    }
}
