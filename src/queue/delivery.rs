//! Delivery records: one per (event, route, sink[, item]), with the request
//! body frozen at routing time so every retry sends identical bytes.
//! Versioned like events.

use serde::{Deserialize, Serialize};
use serde_bytes::ByteBuf;

/// One attempt, as kept on the record.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Attempt {
    pub at_ms: u64,
    /// HTTP status, when there was an answer.
    pub status: Option<u16>,
    pub latency_ms: u64,
    /// What happened, short: `ok`, `retry: 503`, `timeout`, …
    pub outcome: String,
    /// The start of the answer's body (at most 512 bytes).
    pub response: String,
}

/// What a sink will send.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct Frozen {
    pub content_type: String,
    pub headers: Vec<(String, String)>,
    pub body: ByteBuf,
    /// The method, when the sink does not always use POST (ProdMatic).
    pub method: Option<String>,
    /// The path under the sink's base URL (ProdMatic).
    pub path: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeliveryRecord {
    pub id: u64,
    pub event_id: u64,
    pub source: String,
    pub event: String,
    pub delivery_id: String,
    pub route: String,
    pub sink: String,
    pub item: Option<u32>,
    /// Stable across re-routing after a crash: event, route, sink, item.
    pub idempotency_key: String,
    pub created_ms: u64,
    pub due_ms: u64,
    /// Attempts that counted against the schedule.
    pub failures: u32,
    pub attempts: Vec<Attempt>,
    /// Why it is dead (dead records only).
    pub reason: Option<String>,
    pub dead_ms: Option<u64>,
    /// `None` when rendering failed: the record is born dead.
    pub frozen: Option<Frozen>,
}

/// The start of every `deliveries` key of `sink`.
pub fn sink_prefix(sink: &str) -> Vec<u8> {
    let mut k = Vec::with_capacity(sink.len() + 17);
    k.extend_from_slice(sink.as_bytes());
    k.push(0);
    k
}

#[derive(Debug, Serialize, Deserialize)]
enum Stored {
    V1(DeliveryRecord),
}

/// The first fields of a stored record, borrowed (no body decoded).
#[derive(Deserialize)]
enum StoredHead<'a> {
    #[allow(dead_code)]
    V1(#[serde(borrow)] Head<'a>),
}

#[derive(Deserialize)]
#[allow(dead_code)]
struct Head<'a> {
    id: u64,
    event_id: u64,
    source: &'a str,
    event: &'a str,
    delivery_id: &'a str,
    route: &'a str,
    sink: &'a str,
}

impl DeliveryRecord {
    /// The sink of a stored record, reading nothing after it.
    pub fn sink_of(bytes: &[u8]) -> Option<&str> {
        match postcard::from_bytes::<StoredHead>(bytes).ok()? {
            StoredHead::V1(h) => Some(h.sink),
        }
    }

    pub fn encode(&self) -> Vec<u8> {
        postcard::to_stdvec(&Stored::V1(self.clone())).expect("in-memory encoding cannot fail")
    }

    pub fn decode(bytes: &[u8]) -> Result<DeliveryRecord, postcard::Error> {
        match postcard::from_bytes(bytes)? {
            Stored::V1(r) => Ok(r),
        }
    }

    /// Key in the `deliveries` tree: sink, 0, due time, id. Each sink's
    /// deliveries are a range ordered by due time, so a sink with a backlog
    /// never hides another sink's due work.
    pub fn due_key(&self) -> Vec<u8> {
        let mut k = sink_prefix(&self.sink);
        k.extend_from_slice(&self.due_ms.to_be_bytes());
        k.extend_from_slice(&self.id.to_be_bytes());
        k
    }

    /// The last attempt's status, for listings.
    pub fn last_status(&self) -> Option<u16> {
        self.attempts.last().and_then(|a| a.status)
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// A record for tests: due at `due_ms` on sink `s`.
    pub(crate) fn sample(id: u64, due_ms: u64) -> DeliveryRecord {
        DeliveryRecord {
            id,
            event_id: 1,
            source: "github".into(),
            event: "push".into(),
            delivery_id: "d".into(),
            route: "r".into(),
            sink: "s".into(),
            item: Some(2),
            idempotency_key: "k".into(),
            created_ms: 1,
            due_ms,
            failures: 0,
            attempts: vec![],
            reason: None,
            dead_ms: None,
            frozen: Some(Frozen {
                content_type: "application/json".into(),
                headers: vec![],
                body: ByteBuf::from(b"{}".to_vec()),
                method: None,
                path: None,
            }),
        }
    }

    #[test]
    fn round_trips_and_orders_by_due_time() {
        let mut r = sample(7, 500);
        assert_eq!(DeliveryRecord::decode(&r.encode()).unwrap(), r);
        let early = r.due_key();
        r.due_ms = 501;
        assert!(early < r.due_key());
    }
}
