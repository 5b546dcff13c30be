//! The durable queue: the narrow [`Queue`] trait ingress talks to, the
//! versioned record stored on disk, and the sled backend.
//!
//! Nothing here knows HTTP. The contract that matters: when
//! [`Queue::append`] returns `Queued`, the event is fsynced; when it returns
//! an error, nothing of the event remains.

mod deliveries;
mod delivery;
mod log;
mod record;
mod seen;
mod sled_queue;
mod state;
mod writer;

use std::future::Future;
use std::pin::Pin;
use std::time::{Duration, SystemTime};

pub use deliveries::{Refused, Requeued, Routed};
pub use delivery::{Attempt, DeliveryRecord, Frozen};
/// A stored GitHub push, for tests across the crate.
#[cfg(test)]
pub(crate) use record::tests::sample as sample_record;
pub use record::{DecodeError, EventRecord};
pub use sled_queue::{Page, SledQueue};
pub use state::Healed;

/// An event that passed its proof, ready to be stored.
#[derive(Debug, Clone)]
pub struct NewEvent {
    pub record: EventRecord,
    /// What dedupes this delivery within its source.
    pub dedupe_key: String,
    /// How long the dedupe key is remembered.
    pub dedupe_window: Duration,
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

#[derive(Debug, thiserror::Error)]
pub enum QueueError {
    #[error("the queue is shutting down")]
    ShuttingDown,
    #[error("storage error: {0}")]
    Storage(#[source] std::io::Error),
    /// The router's place moved under a page it was routing (sled was
    /// reopened after a failure): the page is read again.
    #[error("the router's place in the log moved; routing again from it")]
    Moved,
    #[error("stored record {key} is unreadable: {reason}")]
    Corrupt { key: String, reason: String },
}

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

pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// What ingress needs of a queue. Small on purpose: a distributed backend
/// (NATS JetStream) must be able to implement it.
pub trait Queue: Send + Sync + 'static {
    /// Stores `event` unless its dedupe key was seen; resolves once durable.
    fn append(
        &self,
        event: NewEvent,
        now: SystemTime,
    ) -> BoxFuture<'_, Result<Appended, QueueError>>;
    /// Whether appends can succeed now (for `/readyz`).
    fn writable(&self) -> bool;
    fn stats(&self) -> Result<Stats, QueueError>;
    /// Refuses new appends; those in flight finish.
    fn close(&self);
}

/// Milliseconds since the Unix epoch (0 before it).
pub fn unix_millis(t: SystemTime) -> u64 {
    t.duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}
