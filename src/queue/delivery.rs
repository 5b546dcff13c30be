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
    /// Whether `body` is the event's own body (the http sink's default),
    /// which a pending local delivery stores as a reference to the event,
    /// not a copy ([`DeliveryRecord::encode_referring`]). Not itself part
    /// of any stored form.
    #[serde(skip)]
    pub body_of_event: BodyOfEvent,
}

/// Where a frozen request's body comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum BodyOfEvent {
    /// The sink made it: it is stored with the record.
    #[default]
    No,
    /// The event's body, held in `body`.
    Held,
    /// The event's body, not read back yet: `body` is empty until the
    /// storage reads the event (the local backend, when it hands the
    /// record to the dispatcher).
    Unread,
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
    /// The route's `order_key`, rendered: deliveries with the same key to
    /// the same sink go one at a time, in event order. Last, so the head
    /// fields ([`DeliveryRecord::sink_of`]) read the same in every version.
    pub order_key: Option<String>,
}

/// A record as version 1 stored it (no `order_key`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct RecordV1 {
    id: u64,
    event_id: u64,
    source: String,
    event: String,
    delivery_id: String,
    route: String,
    sink: String,
    item: Option<u32>,
    idempotency_key: String,
    created_ms: u64,
    due_ms: u64,
    failures: u32,
    attempts: Vec<Attempt>,
    reason: Option<String>,
    dead_ms: Option<u64>,
    frozen: Option<Frozen>,
}

impl From<RecordV1> for DeliveryRecord {
    fn from(r: RecordV1) -> DeliveryRecord {
        DeliveryRecord {
            id: r.id,
            event_id: r.event_id,
            source: r.source,
            event: r.event,
            delivery_id: r.delivery_id,
            route: r.route,
            sink: r.sink,
            item: r.item,
            idempotency_key: r.idempotency_key,
            created_ms: r.created_ms,
            due_ms: r.due_ms,
            failures: r.failures,
            attempts: r.attempts,
            reason: r.reason,
            dead_ms: r.dead_ms,
            frozen: r.frozen,
            order_key: None,
        }
    }
}

/// The start of every `deliveries` key of `sink`.
pub fn sink_prefix(sink: &str) -> Vec<u8> {
    let mut k = Vec::with_capacity(sink.len() + 17);
    k.extend_from_slice(sink.as_bytes());
    k.push(0);
    k
}

/// The first `dead_at` key of letters that died at `ms` or later.
pub fn dead_at_bound(ms: u64) -> [u8; 16] {
    let mut k = [0; 16];
    k[..8].copy_from_slice(&ms.to_be_bytes());
    k
}

/// The start of every `order` entry of `key` on `sink`.
pub fn order_prefix(sink: &str, key: &str) -> Vec<u8> {
    let mut k = sink_prefix(sink);
    k.extend_from_slice(&(key.len() as u32).to_be_bytes());
    k.extend_from_slice(key.as_bytes());
    k
}

#[derive(Debug, Serialize, Deserialize)]
enum Stored {
    V1(RecordV1),
    V2(DeliveryRecord),
    /// The record without its request (`frozen: None`), then the request
    /// with its body LZ4-compressed when that makes it smaller. A GitHub
    /// push forwarded by an http sink is 7.5 KB of JSON and about a third
    /// of that compressed; a million of them waiting for a sink that is
    /// down are written at routing and again at each outcome, so the size
    /// is what a backlog costs in disk, write volume and memory.
    V3(DeliveryRecord, Option<FrozenV3>),
    /// As V3, and the request's body may be [`Body::Event`]: not stored,
    /// because it is the event's own body, byte for byte (an http sink
    /// forwarding the payload), and the event log holds it. The record
    /// shrinks from the compressed body (2.7 KB for a 7.5 KB push) to a
    /// few hundred bytes, and routing skips compressing the body again.
    V4(DeliveryRecord, Option<FrozenV3>),
}

#[derive(Debug, Serialize, Deserialize)]
struct FrozenV3 {
    content_type: String,
    headers: Vec<(String, String)>,
    body: Body,
    method: Option<String>,
    path: Option<String>,
}

#[derive(Debug, Serialize, Deserialize)]
enum Body {
    Plain(ByteBuf),
    /// `lz4_flex::compress_prepend_size`.
    Lz4(ByteBuf),
    /// The event's body (V4 only).
    Event,
}

/// Bodies shorter than this are stored as they are (LZ4 gains little).
const COMPRESS_FROM: usize = 256;

impl Body {
    fn pack(body: &[u8]) -> Body {
        if body.len() >= COMPRESS_FROM {
            let packed = lz4_flex::compress_prepend_size(body);
            if packed.len() < body.len() {
                return Body::Lz4(ByteBuf::from(packed));
            }
        }
        Body::Plain(ByteBuf::from(body.to_vec()))
    }

    fn unpack(self) -> Result<(ByteBuf, BodyOfEvent), postcard::Error> {
        match self {
            Body::Plain(b) => Ok((b, BodyOfEvent::No)),
            Body::Lz4(b) => crate::queue::record::decompress_body(&b)
                .map(|b| (ByteBuf::from(b), BodyOfEvent::No))
                .map_err(|_| postcard::Error::DeserializeBadEncoding),
            Body::Event => Ok((ByteBuf::new(), BodyOfEvent::Unread)),
        }
    }
}

impl FrozenV3 {
    /// `f` as stored; its body as [`Body::Event`] when `refer` and it is
    /// the event's.
    fn pack(f: Frozen, refer: bool) -> FrozenV3 {
        let body = match f.body_of_event {
            BodyOfEvent::Held | BodyOfEvent::Unread if refer => Body::Event,
            // Never written as an empty copy of a body not read back.
            BodyOfEvent::Unread => Body::Event,
            BodyOfEvent::Held | BodyOfEvent::No => Body::pack(&f.body),
        };
        FrozenV3 {
            body,
            content_type: f.content_type,
            headers: f.headers,
            method: f.method,
            path: f.path,
        }
    }

    fn unpack(self) -> Result<Frozen, postcard::Error> {
        let (body, body_of_event) = self.body.unpack()?;
        Ok(Frozen {
            content_type: self.content_type,
            headers: self.headers,
            body,
            method: self.method,
            path: self.path,
            body_of_event,
        })
    }

    fn refers(&self) -> bool {
        matches!(self.body, Body::Event)
    }
}

/// The first fields of a stored record, borrowed (no body decoded).
#[derive(Deserialize)]
enum StoredHead<'a> {
    V1(#[serde(borrow)] Head<'a>),
    V2(#[serde(borrow)] Head<'a>),
    V3(#[serde(borrow)] Head<'a>),
    V4(#[serde(borrow)] Head<'a>),
}

/// What a stored delivery is (the same fields in every version): read
/// without its attempts or request, to filter listings and to tell one
/// (event, route, sink, item) from another.
#[derive(Debug, Deserialize, PartialEq, Eq)]
pub struct Head<'a> {
    pub id: u64,
    pub event_id: u64,
    pub source: &'a str,
    pub event: &'a str,
    pub delivery_id: &'a str,
    pub route: &'a str,
    pub sink: &'a str,
    pub item: Option<u32>,
}

impl DeliveryRecord {
    /// The sink of a stored record, reading nothing after it.
    pub fn sink_of(bytes: &[u8]) -> Option<&str> {
        Self::head(bytes).map(|h| h.sink)
    }

    /// The identifying fields of a stored record, reading nothing after
    /// them.
    pub fn head(bytes: &[u8]) -> Option<Head<'_>> {
        match postcard::from_bytes::<StoredHead>(bytes).ok()? {
            StoredHead::V1(h) | StoredHead::V2(h) | StoredHead::V3(h) | StoredHead::V4(h) => {
                Some(h)
            }
        }
    }

    /// The record as stored, with its whole request: wherever the event
    /// may be gone before the record is read (dead letters, delivered
    /// history, PostgreSQL). A body not read back
    /// ([`BodyOfEvent::Unread`]) is still written as a reference, never as
    /// an empty copy.
    pub fn encode(&self) -> Vec<u8> {
        self.encode_as(false)
    }

    /// The record as stored, its request's body a reference to the event
    /// when it is the event's ([`BodyOfEvent`]): the local backend's
    /// pending deliveries, whose events the log keeps while they wait
    /// (its `refs` tree, see `LocalStore::prune_log`).
    pub fn encode_referring(&self) -> Vec<u8> {
        self.encode_as(true)
    }

    fn encode_as(&self, refer: bool) -> Vec<u8> {
        let mut bare = self.clone();
        let frozen = bare.frozen.take().map(|f| FrozenV3::pack(f, refer));
        let stored = match &frozen {
            Some(f) if f.refers() => Stored::V4(bare, frozen),
            _ => Stored::V3(bare, frozen),
        };
        postcard::to_stdvec(&stored).expect("in-memory encoding cannot fail")
    }

    /// Whether its request's body is its event's ([`BodyOfEvent`]): what
    /// [`DeliveryRecord::encode_referring`] stores as a reference.
    pub fn refers_to_event(&self) -> bool {
        self.frozen
            .as_ref()
            .is_some_and(|f| f.body_of_event != BodyOfEvent::No)
    }

    /// Its `refs` key in the local backend: event id, then id.
    pub fn ref_key(&self) -> [u8; 16] {
        let mut k = [0; 16];
        k[..8].copy_from_slice(&self.event_id.to_be_bytes());
        k[8..].copy_from_slice(&self.id.to_be_bytes());
        k
    }

    pub fn decode(bytes: &[u8]) -> Result<DeliveryRecord, postcard::Error> {
        match postcard::from_bytes(bytes)? {
            Stored::V1(r) => Ok(r.into()),
            Stored::V2(r) => Ok(r),
            Stored::V3(mut r, frozen) | Stored::V4(mut r, frozen) => {
                r.frozen = frozen.map(FrozenV3::unpack).transpose()?;
                Ok(r)
            }
        }
    }

    /// Key in the `order` tree when the record has an order key: sink, 0,
    /// the key's length (u32) and bytes, event id, item (0 for none, else
    /// index + 1, so none sorts first), id. All deliveries of one key to
    /// one sink are a range in event order, its first entry the head. The
    /// length prefix keeps a key from being the prefix of another (a
    /// rendered key may hold any byte, a 0 too).
    pub fn order_index_key(&self) -> Option<Vec<u8>> {
        let key = self.order_key.as_deref()?;
        let mut k = order_prefix(&self.sink, key);
        k.extend_from_slice(&self.event_id.to_be_bytes());
        k.extend_from_slice(&self.item.map_or(0, |i| u64::from(i) + 1).to_be_bytes());
        k.extend_from_slice(&self.id.to_be_bytes());
        Some(k)
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

    /// When a dead record died: `dead_ms`, or, for one written without it
    /// (none is, but a record cannot say so), its `due_ms`, when its last
    /// attempt was due. Dead letters expire by it.
    pub fn dead_at(&self) -> u64 {
        self.dead_ms.unwrap_or(self.due_ms)
    }

    /// Key in the `dead_at` tree: [`DeliveryRecord::dead_at`], id (both
    /// big-endian). The dead letters past a retention are the range
    /// before [`dead_at_bound`] of the cutoff.
    pub fn dead_at_key(&self) -> [u8; 16] {
        let mut k = [0; 16];
        k[..8].copy_from_slice(&self.dead_at().to_be_bytes());
        k[8..].copy_from_slice(&self.id.to_be_bytes());
        k
    }

    /// When a delivered record was delivered: its last attempt, or, for
    /// one settled without any (none is), its due time. Its history is
    /// kept for `server.retention` from then.
    pub fn delivered_ms(&self) -> u64 {
        self.attempts.last().map_or(self.due_ms, |a| a.at_ms)
    }

    /// Key in the `delivered_at` tree: [`DeliveryRecord::delivered_ms`],
    /// id (both big-endian); the history past a retention is the range
    /// before [`dead_at_bound`] of the cutoff.
    pub fn delivered_at_key(&self) -> [u8; 16] {
        let mut k = [0; 16];
        k[..8].copy_from_slice(&self.delivered_ms().to_be_bytes());
        k[8..].copy_from_slice(&self.id.to_be_bytes());
        k
    }

    /// Key in the `by_event` tree: event id, id (both big-endian). An
    /// event's deliveries, in every state, are the range of its id.
    pub fn by_event_key(&self) -> [u8; 16] {
        let mut k = [0; 16];
        k[..8].copy_from_slice(&self.event_id.to_be_bytes());
        k[8..].copy_from_slice(&self.id.to_be_bytes());
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

    /// `n` bytes LZ4 cannot shrink (xorshift).
    pub(crate) fn incompressible(n: usize) -> Vec<u8> {
        let mut x = 0x9e37_79b9_7f4a_7c15_u64;
        (0..n)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                (x >> 32) as u8
            })
            .collect()
    }

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
                body_of_event: BodyOfEvent::No,
            }),
            order_key: None,
        }
    }

    /// A body that is its event's is stored as a reference (V4) only when
    /// asked (`encode_referring`), decodes unread and empty, and is never
    /// written as an empty copy; every other body is stored whole (V3).
    #[test]
    fn a_body_of_the_event_is_stored_as_a_reference_only_when_asked() {
        let mut r = sample(7, 500);
        let body = incompressible(4_000);
        let frozen = r.frozen.as_mut().unwrap();
        frozen.body = ByteBuf::from(body.clone());
        frozen.body_of_event = BodyOfEvent::Held;
        assert!(r.refers_to_event());

        let referring = r.encode_referring();
        assert!(referring.len() < 200, "{} bytes", referring.len());
        assert!(matches!(
            postcard::from_bytes(&referring),
            Ok(Stored::V4(..))
        ));
        let read = DeliveryRecord::decode(&referring).unwrap();
        let frozen = read.frozen.as_ref().unwrap();
        assert_eq!(frozen.body_of_event, BodyOfEvent::Unread);
        assert!(frozen.body.is_empty());
        assert_eq!(DeliveryRecord::head(&referring).unwrap().id, 7);

        // Whole: the body is in the record, and it reads back as the
        // sink's own (nothing left to read back).
        let whole = r.encode();
        assert!(matches!(postcard::from_bytes(&whole), Ok(Stored::V3(..))));
        let back = DeliveryRecord::decode(&whole).unwrap();
        assert_eq!(back.frozen.as_ref().unwrap().body.as_slice(), &body[..]);
        assert_eq!(back.frozen.as_ref().unwrap().body_of_event, BodyOfEvent::No);

        // Not read back, it stays a reference even when asked for whole.
        assert_eq!(read.encode(), referring);
        assert_eq!(read.encode_referring(), referring);

        // The sink's own body is whole either way.
        let own = sample(8, 500);
        assert!(!own.refers_to_event());
        assert_eq!(own.encode_referring(), own.encode());
    }

    #[test]
    fn round_trips_and_orders_by_due_time() {
        let mut r = sample(7, 500);
        assert_eq!(DeliveryRecord::decode(&r.encode()).unwrap(), r);
        let early = r.due_key();
        r.due_ms = 501;
        assert!(early < r.due_key());
    }

    /// Records stored before `order_key` existed read back without one,
    /// and their sink is found without decoding them.
    #[test]
    fn reads_version_1_records() {
        let mut r = sample(7, 500);
        let v1 = RecordV1 {
            id: r.id,
            event_id: r.event_id,
            source: r.source.clone(),
            event: r.event.clone(),
            delivery_id: r.delivery_id.clone(),
            route: r.route.clone(),
            sink: r.sink.clone(),
            item: r.item,
            idempotency_key: r.idempotency_key.clone(),
            created_ms: r.created_ms,
            due_ms: r.due_ms,
            failures: r.failures,
            attempts: r.attempts.clone(),
            reason: None,
            dead_ms: None,
            frozen: r.frozen.clone(),
        };
        let bytes = postcard::to_stdvec(&Stored::V1(v1)).unwrap();
        // As version 1 wrote it (variant 0, then the fields in order).
        assert_eq!(
            hex::encode(&bytes),
            "0007010667697468756204707573680164017201730102016b01f40300000000\
             01106170706c69636174696f6e2f6a736f6e00027b7d0000"
        );
        assert_eq!(DeliveryRecord::decode(&bytes).unwrap(), r);
        assert_eq!(DeliveryRecord::sink_of(&bytes), Some("s"));
        assert_eq!(DeliveryRecord::head(&bytes).unwrap().item, Some(2));
        r.order_key = Some("PM-1".into());
        let v2 = postcard::to_stdvec(&Stored::V2(r.clone())).unwrap();
        assert_eq!(v2[0], 1, "version 2");
        assert_eq!(DeliveryRecord::decode(&v2).unwrap(), r);
        assert_eq!(DeliveryRecord::sink_of(&v2), Some("s"));
        let v3 = r.encode();
        assert_eq!(v3[0], 2, "written as version 3");
        assert_eq!(DeliveryRecord::decode(&v3).unwrap(), r);
        assert_eq!(DeliveryRecord::sink_of(&v3), Some("s"));
    }

    /// A body worth compressing is stored compressed and reads back
    /// byte for byte; a short one, or one LZ4 cannot shrink, as it is.
    #[test]
    fn frozen_bodies_are_stored_compressed_when_that_is_smaller() {
        let push = include_bytes!("../../samples/github/push.json");
        let mut r = sample(7, 500);
        r.frozen.as_mut().unwrap().body = ByteBuf::from(push.to_vec());
        let stored = r.encode();
        assert!(
            stored.len() < push.len() / 2,
            "{} bytes stored for a {}-byte body",
            stored.len(),
            push.len()
        );
        assert_eq!(DeliveryRecord::decode(&stored).unwrap(), r);
        // Random bytes do not compress: kept plain (and a little longer).
        let noise = incompressible(4096);
        r.frozen.as_mut().unwrap().body = ByteBuf::from(noise.clone());
        let stored = r.encode();
        assert!(stored.len() > noise.len());
        assert_eq!(DeliveryRecord::decode(&stored).unwrap(), r);
        // A corrupt compressed body is an error, not a panic or a
        // huge allocation.
        let mut bare = r.clone();
        let mut bad = FrozenV3::pack(bare.frozen.take().unwrap(), false);
        bad.body = Body::Lz4(ByteBuf::from(vec![0xff, 0xff, 0xff, 0x7f, 1]));
        let bytes = postcard::to_stdvec(&Stored::V3(bare, Some(bad))).unwrap();
        assert!(DeliveryRecord::decode(&bytes).is_err());
    }

    /// Dead letters sort by when they died, whatever their id; one
    /// without a dead time is dated by its due time.
    #[test]
    fn dead_at_keys_sort_by_death_then_id() {
        let mut young = sample(1, 0);
        young.dead_ms = Some(2_000);
        let mut old = sample(9, 0);
        old.dead_ms = Some(1_000);
        assert!(old.dead_at_key() < young.dead_at_key());
        assert!(old.dead_at_key() < dead_at_bound(1_001));
        assert!(young.dead_at_key() >= dead_at_bound(2_000));
        assert_eq!(&young.dead_at_key()[8..], &1u64.to_be_bytes());
        let undated = sample(3, 1_500);
        assert_eq!(undated.dead_at(), 1_500);
    }

    /// One key's entries sort by event, then item (none first), and no
    /// key's prefix is another's.
    #[test]
    fn order_entries_sort_in_event_order() {
        let mut a = sample(9, 0);
        a.order_key = Some("A".into());
        a.item = None;
        let mut b = a.clone();
        b.id = 3;
        b.item = Some(0);
        let mut c = a.clone();
        c.id = 1;
        c.event_id = 2;
        let (ka, kb, kc) = (
            a.order_index_key().unwrap(),
            b.order_index_key().unwrap(),
            c.order_index_key().unwrap(),
        );
        assert!(ka < kb && kb < kc);
        let prefix = order_prefix("s", "A");
        assert!(ka.starts_with(&prefix));
        let mut other = a.clone();
        other.order_key = Some("A\0x".into());
        assert!(!other.order_index_key().unwrap().starts_with(&prefix));
        a.order_key = None;
        assert_eq!(a.order_index_key(), None);
    }
}
