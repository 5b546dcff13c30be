//! The durable queue: the narrow [`Queue`] trait ingress talks to, the
//! versioned record stored on disk, and the two backends.
//!
//! Nothing here knows HTTP. The contract that matters: when
//! [`Queue::append`] returns `Queued`, the event is fsynced; when it returns
//! an error, nothing of the event remains.

pub(crate) mod delivery;
pub mod local;
mod lookup;
pub mod postgres;
mod record;

use std::collections::BTreeMap;
use std::future::Future;
use std::pin::Pin;
use std::time::{Duration, SystemTime};

pub use delivery::{Attempt, BodyOfEvent, DeliveryRecord, Frozen};
pub use local::{Local, LocalStore, Page};
pub use lookup::{
    Added, DeliveryFilter, DeliveryPage, DeliveryStatus, DeliveryView, EventFilter, EventPage,
    EventSummary, MAX_PAGE,
};
/// A stored GitHub push, for tests across the crate.
#[cfg(test)]
pub(crate) use record::tests::sample as sample_record;
pub use record::{DecodeError, EventRecord};

/// An event that passed its proof, ready to be stored.
#[derive(Debug, Clone)]
pub struct NewEvent {
    pub record: EventRecord,
    /// What dedupes this delivery within its source.
    pub dedupe: Dedupe,
    /// How long the dedupe key is remembered.
    pub dedupe_window: Duration,
}

/// What dedupes a delivery within its source.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Dedupe {
    /// A key complete in itself: an id the proof covers, or the body's
    /// digest ([`body_digest`]) when the provider sends no id.
    Key(String),
    /// An id the proof does not cover (`X-GitHub-Delivery`): anyone
    /// holding a captured request can send it under another id, so a
    /// delivery is a duplicate only with the same body too. Its whole key
    /// is [`Dedupe::key`]. The local store keys it on the id alone and
    /// compares the bodies when an id comes again, so a request hashes no
    /// body (the SHA-256 of a 7.5 KB push is a fifth of a request's CPU,
    /// bench/README.md).
    IdAndBody(String),
}

impl Dedupe {
    /// The whole key, as PostgreSQL stores it: a key as it is, or an id
    /// with `sha256:<hex of body>` after a space (which never occurs in a
    /// digest, so the id cannot forge the split).
    pub fn key(&self, body: &[u8]) -> String {
        match self {
            Dedupe::Key(key) => key.clone(),
            Dedupe::IdAndBody(id) => format!("{id} {}", body_digest(body)),
        }
    }
}

/// `sha256:<hex>` of `body`: the dedupe key of a delivery without an id,
/// and the second half of an unsigned id's.
pub fn body_digest(body: &[u8]) -> String {
    use sha2::Digest;
    format!("sha256:{}", hex::encode(sha2::Sha256::digest(body)))
}

/// What `append` did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Appended {
    /// Stored and fsynced under this id.
    Queued(EventId),
    /// The dedupe key was seen within its window: stored earlier as this id.
    Duplicate(EventId),
}

/// The queue's id of an event: its place in the log, so id order is arrival order.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct EventId(pub u64);

impl std::fmt::Display for EventId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "evt_{:016x}", self.0)
    }
}

/// Why text is not an event id.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("`{0}` is not an event id: write it as the 202 answer gave it (`evt_` and 16 hex digits) or as lookups show it (a number)")]
pub struct NotAnEventId(pub String);

impl std::str::FromStr for EventId {
    type Err = NotAnEventId;

    /// Either form an operator has: `evt_…` (the 202's answer, logs; an
    /// Idempotency-Key starts with it) or the number (lookups, the API's
    /// `id`).
    fn from_str(s: &str) -> Result<EventId, NotAnEventId> {
        let parsed = match s.strip_prefix("evt_") {
            Some(hex)
                if (1..=16).contains(&hex.len()) && hex.bytes().all(|b| b.is_ascii_hexdigit()) =>
            {
                u64::from_str_radix(hex, 16).ok()
            }
            Some(_) => None,
            None if !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit()) => s.parse().ok(),
            None => None,
        };
        parsed
            .map(EventId)
            .ok_or_else(|| NotAnEventId(s.to_owned()))
    }
}

#[derive(Debug, thiserror::Error)]
pub enum QueueError {
    #[error("the queue is shutting down")]
    ShuttingDown,
    #[error("storage error: {0}")]
    Storage(#[source] std::io::Error),
    /// The router's place moved under a page it was routing (the state
    /// was reopened after a failure): the page is read again.
    #[error("the router's place in the log moved; routing again from it")]
    Moved,
    #[error("stored record {key} is unreadable: {reason}")]
    Corrupt { key: String, reason: String },
    /// What the backend cannot do (with what to do instead).
    #[error("{0}")]
    Unsupported(String),
}

impl QueueError {
    /// The same error again, for each of several callers it answers (an
    /// I/O error keeps its kind and message).
    pub(crate) fn copy(&self) -> QueueError {
        match self {
            QueueError::ShuttingDown => QueueError::ShuttingDown,
            QueueError::Storage(e) => {
                QueueError::Storage(std::io::Error::new(e.kind(), e.to_string()))
            }
            QueueError::Moved => QueueError::Moved,
            QueueError::Corrupt { key, reason } => QueueError::Corrupt {
                key: key.clone(),
                reason: reason.clone(),
            },
            QueueError::Unsupported(why) => QueueError::Unsupported(why.clone()),
        }
    }
}

/// sled's errors: only in converting an earlier version's state.
impl From<sled::Error> for QueueError {
    fn from(e: sled::Error) -> Self {
        QueueError::Storage(std::io::Error::other(e))
    }
}

/// Counts by state.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Stats {
    /// Events accepted and not yet routed.
    pub inbox: u64,
    /// Delivery ids remembered for dedupe.
    pub seen: u64,
    /// Bytes on disk.
    pub disk_bytes: u64,
    /// Deliveries waiting for their (next) attempt.
    #[serde(default)]
    pub deliveries: u64,
    /// Deliveries that failed for good.
    #[serde(default)]
    pub dead: u64,
    /// Events no route matched.
    #[serde(default)]
    pub unmatched: u64,
    /// Of `deliveries`, those held for sinks that are disabled (their
    /// secret is not set): sent once it is and the config is reloaded.
    #[serde(default)]
    pub held: u64,
    /// The disabled sinks: why, and how many deliveries each holds.
    #[serde(default)]
    pub disabled: std::collections::BTreeMap<String, Disabled>,
}

/// A sink that cannot send (its URL or token secret is not set).
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Disabled {
    pub reason: String,
    /// Deliveries it holds.
    pub held: u64,
}

/// What routing made of one event.
#[derive(Debug, Clone)]
pub struct Routed {
    pub event: EventId,
    pub pending: Vec<DeliveryRecord>,
    pub dead: Vec<DeliveryRecord>,
}

/// What a replay did.
#[derive(Debug, Default, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Requeued {
    /// Dead deliveries made pending again.
    pub replayed: usize,
    /// Those left dead, and why.
    #[serde(default)]
    pub refused: Vec<Refused>,
    /// The sinks the replayed deliveries go to.
    #[serde(skip)]
    pub sinks: std::collections::BTreeSet<String>,
}

/// A dead delivery a replay left dead.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Refused {
    pub id: u64,
    pub reason: String,
}

/// What [`Queue::heal`] found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Healed {
    /// Nothing was wrong.
    Healthy,
    /// It was failing and writes durably again; `reopened` when the state file had
    /// to be opened again, or the database connection made anew (what the
    /// local state store held in memory only is gone).
    Recovered { reopened: bool },
    /// Still cannot write.
    Failing,
}

pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// Accepted events claimed for routing, oldest first.
#[derive(Debug)]
pub struct InboxPage {
    /// Each event's id and stored record (`EventRecord::encode` bytes).
    pub events: Vec<(EventId, Vec<u8>)>,
    /// The backend's hold on them, handed back with [`Queue::routed`].
    pub claim: PageClaim,
}

/// What a backend needs to record a page's routing exactly once: the
/// local backend's cursor before and after the page; PostgreSQL's claim
/// token. Opaque outside the backends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PageClaim {
    pub(crate) from: u64,
    pub(crate) next: u64,
}

/// What a sink allows (the config's `concurrency` and `rate_limit`), for
/// a backend that holds them across instances.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Most deliveries to claim now.
    pub max: usize,
    /// Most attempts out at once to this sink.
    pub concurrency: usize,
    pub rate: Option<crate::config::Rate>,
    /// How long a claim holds when its instance stops answering (longer
    /// than an attempt can take): then another instance may claim it.
    pub lease: Duration,
}

/// A delivery claimed for an attempt: nobody else attempts it until it is
/// settled or its lease lapses.
#[derive(Debug)]
pub struct Claimed {
    pub rec: DeliveryRecord,
    pub lease: Lease,
}

/// A backend's hold on a claimed delivery: which delivery, and the local
/// backend's key of its record or PostgreSQL's lease token.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Lease {
    pub id: u64,
    pub sink: String,
    pub order_key: Option<String>,
    pub(crate) key: Vec<u8>,
    pub(crate) token: u64,
}

/// A sink's claim.
#[derive(Debug, Default)]
pub struct Due {
    pub claimed: Vec<Claimed>,
    /// When its earliest delivery not claimed now is due (ms), if any.
    pub next_due: Option<u64>,
    /// Something is due but the cluster-wide limits hold it back this long.
    pub held: Option<Duration>,
}

/// What an attempt's outcome does to its delivery.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Settle {
    /// Delivered (or nothing more to do): it leaves the queue for the
    /// delivered history, kept for `server.retention` (the dispatcher
    /// settles it without its frozen request: nothing sends it again).
    Done,
    /// Due again at its `due_ms`.
    Reschedule,
    /// Dead, with its `reason`.
    Bury,
}

/// Why a replay leaves a delivery whose template failed dead (both backends).
pub(crate) const NOTHING_TO_SEND: &str = "its template failed, so there is nothing to send: fix the route; the event is routed again only by a new delivery";

/// Why a replay leaves a dead delivery dead (its sink was removed), or `None`.
pub type RefuseReplay<'a> = &'a (dyn Fn(&DeliveryRecord) -> Option<String> + Send + Sync);

/// What `hookgate queue migrate` carries from the local backend into
/// PostgreSQL: the work not yet done.
#[derive(Debug, Default)]
pub struct Carried {
    /// The local store's id: a database remembers what it imported, so a
    /// second run after a crash imports nothing twice.
    pub from_install: u64,
    /// Events not yet routed, oldest first (routed again there).
    pub events: Vec<CarriedEvent>,
    /// Pending and dead deliveries (dead ones have `dead_ms`), with their
    /// frozen requests and idempotency keys as they are.
    pub deliveries: Vec<DeliveryRecord>,
}

/// An accepted event not yet routed, with its dedupe key.
#[derive(Debug, Clone)]
pub struct CarriedEvent {
    pub record: EventRecord,
    pub dedupe_key: String,
    /// When its dedupe key is forgotten (ms).
    pub expires_ms: u64,
}

/// What an import did.
#[derive(Debug, Default, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Imported {
    pub events: usize,
    pub pending: usize,
    pub dead: usize,
    /// This store had imported that one before: nothing was imported again.
    pub already: bool,
}

/// Figures only one backend has, for `/metrics`.
#[derive(Debug, Clone, Default)]
pub struct BackendGauges {
    /// The event log's syncs and the events they made durable (local).
    pub log_syncs: Option<(crate::metrics::Histogram, u64)>,
    /// Damaged log frames skipped (local).
    pub damaged_frames: u64,
    /// Group commits of appends and the events they made durable
    /// (PostgreSQL).
    pub db_commits: Option<(crate::metrics::Histogram, u64)>,
}

/// What ingress needs of storage (the part of [`Queue`] the gateway sees).
#[async_trait::async_trait]
pub trait Ingest: Send + Sync + 'static {
    /// Stores `event` unless its dedupe key was seen; resolves once durable.
    async fn append(&self, event: NewEvent, now: SystemTime) -> Result<Appended, QueueError>;
    /// Whether appends can succeed now (for `/readyz`).
    fn writable(&self) -> bool;
    /// Refuses new appends; those in flight finish.
    fn close(&self);
    /// Says a proven request's append will follow: held from its proof of
    /// origin until [`Ingest::append`] is called. A writer that commits in
    /// batches waits for such requests (up to its commit delay) instead of
    /// committing without them.
    fn preparing(&self) -> Preparing {
        Preparing(None)
    }
}

/// A request on its way to [`Ingest::append`], counted until dropped (see
/// [`Ingest::preparing`]).
pub struct Preparing(Option<std::sync::Arc<std::sync::atomic::AtomicUsize>>);

impl Preparing {
    /// Counts one more on `count` until dropped.
    pub fn counted(count: &std::sync::Arc<std::sync::atomic::AtomicUsize>) -> Preparing {
        count.fetch_add(1, std::sync::atomic::Ordering::AcqRel);
        Preparing(Some(count.clone()))
    }
}

impl Drop for Preparing {
    fn drop(&mut self) {
        if let Some(count) = &self.0 {
            count.fetch_sub(1, std::sync::atomic::Ordering::AcqRel);
        }
    }
}

/// The storage port: everything the daemon, the admin API and the CLI
/// ask of storage. Two adapters: `local` (the event log and redb, one
/// daemon per `data_dir`) and `postgres` (any number of daemons on one
/// database). The behavioural suite in `tests/it/storage.rs` runs the same
/// cases against both.
///
/// The contract that matters: when [`Queue::append`] returns `Queued`, the
/// event is durable; when it returns an error, nothing of it remains.
/// Every event is routed once ([`Queue::inbox`] then [`Queue::routed`]);
/// a delivery is attempted only under a claim ([`Queue::claim`]) and
/// leaves the queue only when its outcome is settled.
#[async_trait::async_trait]
pub trait Queue: Ingest {
    // Routing.

    /// Up to `n` accepted events not yet routed, claimed for routing.
    async fn inbox(&self, n: usize) -> Result<InboxPage, QueueError>;
    /// Records what routing made of a claimed page, in one transaction:
    /// each event's deliveries (given their ids here) or that no route
    /// matched, and the events are routed. [`QueueError::Moved`] when the
    /// claim was lost meanwhile: nothing is recorded, and the events are
    /// claimed again.
    async fn routed(
        &self,
        page: &InboxPage,
        routed: Vec<Routed>,
    ) -> Result<Vec<Routed>, QueueError>;
    /// The router is idle: a good moment to save what it keeps in memory.
    async fn routing_idle(&self) -> Result<(), QueueError>;
    /// Resolves when events may have been accepted since the last call.
    async fn appended(&self);
    /// This store's random id, part of every idempotency key: event ids
    /// start again in a fresh store.
    fn install_id(&self) -> u64;

    // Delivery.

    /// Claims `sink`'s due deliveries that may start now: in due order, the
    /// head of each order key only, none already claimed, within `limits`.
    async fn claim(&self, sink: &str, limits: Limits, now_ms: u64) -> Result<Due, QueueError>;
    /// Writes a claimed delivery's outcome (`rec` as it now is) and
    /// releases its claim.
    async fn settle(
        &self,
        lease: &Lease,
        rec: &DeliveryRecord,
        how: Settle,
    ) -> Result<(), QueueError>;
    /// Releases a claim without an outcome (the attempt never ended): the
    /// delivery is due again.
    fn release(&self, lease: &Lease);
    /// The platform asked `sink` to wait (a 429's Retry-After) until
    /// `until_ms`: a backend shared by several instances pauses it for all
    /// of them (each instance pauses itself in any case).
    async fn pause(&self, sink: &str, until_ms: u64) -> Result<(), QueueError>;
    /// When `sink`'s earliest pending delivery is due (ms), if it has one.
    async fn next_due(&self, sink: &str) -> Result<Option<u64>, QueueError>;
    /// Whether this backend holds each sink's `concurrency` and
    /// `rate_limit` itself (for every instance at once).
    fn limits_cluster_wide(&self) -> bool;
    /// Buries pending deliveries to sinks not in `sinks` (removed from the
    /// config), except those claimed now; returns how many.
    async fn bury_orphans(&self, sinks: &[String], now_ms: u64) -> Result<usize, QueueError>;

    // Dead letters.

    /// Dead deliveries by id, after `after`, at most `limit`.
    async fn dead_letters(
        &self,
        after: Option<u64>,
        limit: usize,
    ) -> Result<Vec<DeliveryRecord>, QueueError>;
    async fn dead_letter(&self, id: u64) -> Result<Option<DeliveryRecord>, QueueError>;
    /// Dead deliveries per sink.
    async fn dead_by_sink(&self) -> Result<BTreeMap<String, u64>, QueueError>;
    /// Moves dead deliveries (one, or all with `None`) back to pending, due
    /// at `now_ms` with a fresh schedule (their history kept). One that
    /// `refuse` has a reason against, or whose template failed, stays dead
    /// and is reported.
    async fn requeue(
        &self,
        id: Option<u64>,
        now_ms: u64,
        refuse: RefuseReplay<'_>,
    ) -> Result<Requeued, QueueError>;
    /// Replays the dead letters `filter` selects (its status is ignored:
    /// dead only) as [`Queue::requeue`] does (same refusals, same
    /// counts), oldest first, a transaction per batch. With `dry_run`
    /// nothing changes and the counts say what would go.
    async fn requeue_where(
        &self,
        filter: &DeliveryFilter,
        now_ms: u64,
        refuse: RefuseReplay<'_>,
        dry_run: bool,
    ) -> Result<Requeued, QueueError>;
    /// Re-routing: stores the deliveries given (fresh ids, as
    /// [`Queue::routed`] gives them; one with `dead_ms` as a dead letter)
    /// except those whose (event_id, route, sink, item) exists already,
    /// pending, delivered (in the history) or dead, and those of events
    /// not routed yet (routing makes theirs). A transaction per batch.
    async fn add_missing(&self, deliveries: Vec<DeliveryRecord>) -> Result<Added, QueueError>;

    // Looking.

    /// Counts by state, with what each of the `disabled` sinks (name, why)
    /// holds.
    async fn stats(&self, disabled: &[(String, String)]) -> Result<Stats, QueueError>;
    /// One stored event.
    async fn event(&self, id: EventId) -> Result<Option<EventRecord>, QueueError>;
    /// Events received (routed or not), newest first (id descending),
    /// ids below `before` only, at most `limit` (and [`MAX_PAGE`]). A
    /// delivery id is looked up by index; for other filters a backend
    /// may read a bounded stretch per call and say where to go on
    /// ([`EventPage::next_before`]).
    async fn events(
        &self,
        filter: &EventFilter,
        before: Option<u64>,
        limit: usize,
    ) -> Result<EventPage, QueueError>;
    /// Deliveries pending, delivered (kept for `server.retention`) and
    /// dead, newest first by delivery id, ids below `before`, paged as
    /// [`Queue::events`]. An event's deliveries are looked up by index.
    async fn deliveries(
        &self,
        filter: &DeliveryFilter,
        before: Option<u64>,
        limit: usize,
    ) -> Result<DeliveryPage, QueueError>;
    fn gauges(&self) -> BackendGauges;

    // Health and upkeep.

    /// Whether routing and delivery state can be written now.
    fn state_writable(&self) -> bool;
    /// Looks for a failure to recover from, and recovers if it can.
    async fn heal(&self) -> Healed;
    /// Longest wait between two `heal`s while it says `Failing`, when the
    /// backend wants one shorter than the daemon's own backoff (its look
    /// is cheap, and the end of the failure is to be noticed at once).
    fn heal_backoff_max(&self) -> Option<Duration> {
        None
    }
    /// Drops what is past `retention` (events, and deliveries delivered
    /// longer ago) and expired dedupe keys; returns how many events (the
    /// local backend: log segments) went.
    async fn prune(&self, now: SystemTime, retention: Duration) -> Result<u64, QueueError>;
    /// Deletes the dead letters that died (`dead_ms`; one without it is
    /// dated by its `due_ms`) more than `keep` before `now`, in batches
    /// of bounded size, looking at no other; returns how many went, by
    /// sink. A letter replayed meanwhile is not deleted.
    async fn prune_dead(
        &self,
        now: SystemTime,
        keep: Duration,
    ) -> Result<BTreeMap<String, u64>, QueueError>;
    /// After `close` and the last append: makes everything durable.
    async fn flush(&self) -> Result<(), QueueError>;

    // Moving between backends.

    /// Takes in another store's unfinished work in one transaction (once
    /// per `from_install`). A backend that cannot take it says why.
    async fn import(&self, carried: Carried) -> Result<Imported, QueueError>;
}

/// Milliseconds since the Unix epoch (0 before it).
pub fn unix_millis(t: SystemTime) -> u64 {
    t.duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

#[cfg(test)]
mod event_id_tests {
    use super::EventId;

    /// Both forms an operator may hold read as the same id; anything
    /// else is refused with what to write.
    #[test]
    fn an_event_id_reads_from_its_answer_form_or_its_number() {
        let id = EventId(0x100_0000_0000);
        assert_eq!(id.to_string(), "evt_0000010000000000");
        assert_eq!(id.to_string().parse(), Ok(id));
        assert_eq!("1099511627776".parse(), Ok(id));
        assert_eq!("evt_10000000000".parse(), Ok(id));
        assert_eq!("evt_FFFFFFFFFFFFFFFF".parse(), Ok(EventId(u64::MAX)));
        for bad in [
            "",
            "evt_",
            "evt_00000100000000000",
            "evt_+1",
            "+1",
            "-1",
            "evt_xyz",
            "99999999999999999999999",
            "1e3",
        ] {
            let e = bad.parse::<EventId>().unwrap_err();
            assert!(
                e.to_string().contains("`evt_` and 16 hex digits"),
                "{bad}: {e}"
            );
        }
    }
}
