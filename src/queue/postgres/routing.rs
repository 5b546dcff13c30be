//! Routing exactly once across instances: a router takes the oldest
//! inbox rows nobody holds (`FOR UPDATE SKIP LOCKED`) in a transaction it
//! keeps open while it routes them, and records the page (deliveries in,
//! inbox rows out) in that same transaction. The row locks are the claim:
//! a router that dies or loses its connection rolls back, and its page is
//! free at once; one that stalls is cut off by the database after
//! `HOLD_SECS` idle (`idle_in_transaction_session_timeout`). Its `routed`
//! then fails, and the page goes to whoever takes it next.
//!
//! Holding the page costs no write per event (a claim column updated,
//! then committed, was one more row version per event) and one commit per
//! page fewer. The records of events this instance stored come from
//! memory (`recent.rs`); only the others' are read back.

use std::sync::Mutex;

use deadpool_postgres::{GenericClient, Object};
use tokio_postgres::error::SqlState;

use super::health::{conn_err, pool_err};
use super::Db;
use crate::queue::{DeliveryRecord, EventId, InboxPage, PageClaim, QueueError, Routed};

/// How long a router may hold a page without a word to the database.
const HOLD_SECS: u32 = 30;
/// Slots of `hookgate_unmatched` (routers add to one at random).
const UNMATCHED_SLOTS: i32 = 16;

const CLAIM: &str = "
SELECT received_ms, event_id FROM hookgate_inbox
ORDER BY event_id
LIMIT $1
FOR UPDATE SKIP LOCKED";

/// The claimed events' records, each looked up by its key (a lateral
/// join: one index probe per event in its day's partition, where a plain
/// join may hash the whole table).
const RECORDS: &str = "
SELECT e.id, e.record
FROM unnest($1::int8[], $2::int8[]) AS k(received_ms, id)
CROSS JOIN LATERAL (
    SELECT id, record FROM hookgate_events
    WHERE received_ms = k.received_ms AND id = k.id
) e
ORDER BY e.id";

/// The page this instance's router holds: a pooled connection with its
/// transaction open. Dropped without `routed`, the connection is closed,
/// not returned to the pool (the database rolls the transaction back).
#[derive(Default)]
pub struct HeldPage(Mutex<Option<(u64, Object)>>);

impl HeldPage {
    fn hold(&self, token: u64, conn: Object) {
        let old = self
            .0
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .replace((token, conn));
        if let Some((_, conn)) = old {
            let _ = Object::take(conn);
        }
    }

    fn take(&self, token: u64) -> Option<Object> {
        let mut held = self.0.lock().unwrap_or_else(|e| e.into_inner());
        match held.take() {
            Some((t, conn)) if t == token => Some(conn),
            other => {
                *held = other;
                None
            }
        }
    }
}

impl Drop for HeldPage {
    fn drop(&mut self) {
        if let Some((_, conn)) = self.0.get_mut().unwrap_or_else(|e| e.into_inner()).take() {
            let _ = Object::take(conn);
        }
    }
}

pub async fn inbox(db: &Db, n: usize) -> Result<InboxPage, QueueError> {
    let token: u64 = rand::random();
    let conn = db.pool.get().await.map_err(|e| pool_err(&db.health, e))?;
    let n = n.min(i64::MAX as usize) as i64;
    let claimed = async {
        let stmt = conn.prepare_cached(CLAIM).await?;
        // The claim's plan is the same whatever its limit: made once.
        let begin = format!(
            "BEGIN; SET LOCAL idle_in_transaction_session_timeout = '{HOLD_SECS}s';
             SET LOCAL plan_cache_mode = force_generic_plan"
        );
        // One round trip: each is sent when first polled, in order.
        let limit: [&(dyn tokio_postgres::types::ToSql + Sync); 1] = [&n];
        let (begun, keys) = tokio::join!(conn.batch_execute(&begin), conn.query(&stmt, &limit));
        begun?;
        let keys = keys?;
        if keys.is_empty() {
            return Ok(None);
        }
        // This instance's own events from memory, the rest read back.
        let mut events = Vec::with_capacity(keys.len());
        let (mut days, mut ids) = (Vec::new(), Vec::new());
        for key in &keys {
            let (day, id): (i64, i64) = (key.get(0), key.get(1));
            match db.recent.take(id) {
                Some(record) => events.push((EventId(id as u64), record)),
                None => {
                    days.push(day);
                    ids.push(id);
                }
            }
        }
        if !ids.is_empty() {
            let stmt = conn.prepare_cached(RECORDS).await?;
            for row in conn.query(&stmt, &[&days, &ids]).await? {
                events.push((EventId(row.get::<_, i64>(0) as u64), row.get(1)));
            }
            events.sort_unstable_by_key(|(id, _)| *id);
        }
        Ok(Some(events))
    }
    .await;
    let events = match claimed {
        Ok(Some(events)) => events,
        Ok(None) => {
            // Nothing to hold: end the transaction, keep the connection.
            return match conn.batch_execute("ROLLBACK").await {
                Ok(()) => Ok(InboxPage {
                    events: Vec::new(),
                    claim: PageClaim { from: 0, next: 0 },
                }),
                Err(e) => Err(conn_err(&db.health, &db.pool, conn, e)),
            };
        }
        Err(e) => {
            // Whatever state the transaction is in, the connection goes.
            let e = conn_err(&db.health, &db.pool, conn, e);
            return Err(e);
        }
    };
    let page = InboxPage {
        events,
        claim: PageClaim {
            from: token,
            next: 0,
        },
    };
    db.page.hold(token, conn);
    Ok(page)
}

pub(super) const INSERT_DELIVERIES: &str = "
INSERT INTO hookgate_deliveries
    (id, sink, event_id, item, order_key, dead, due_ms, failures, reason, dead_ms, record)
SELECT * FROM unnest($1::int8[], $2::text[], $3::int8[], $4::int8[], $5::text[], $6::bool[],
    $7::int8[], $8::int4[], $9::text[], $10::int8[], $11::bytea[])";

/// A delivery's columns, for `INSERT_DELIVERIES`.
#[derive(Default)]
pub(super) struct Columns {
    id: Vec<i64>,
    sink: Vec<String>,
    event_id: Vec<i64>,
    item: Vec<i64>,
    order_key: Vec<Option<String>>,
    dead: Vec<bool>,
    due_ms: Vec<i64>,
    failures: Vec<i32>,
    reason: Vec<Option<String>>,
    dead_ms: Vec<Option<i64>>,
    record: Vec<Vec<u8>>,
}

impl Columns {
    pub(super) fn push(&mut self, d: &DeliveryRecord, dead: bool) {
        self.id.push(d.id as i64);
        self.sink.push(d.sink.clone());
        self.event_id.push(d.event_id as i64);
        self.item.push(item_rank(d.item));
        self.order_key.push(d.order_key.clone());
        self.dead.push(dead);
        self.due_ms.push(d.due_ms as i64);
        self.failures.push(d.failures as i32);
        self.reason.push(d.reason.clone());
        self.dead_ms.push(d.dead_ms.map(|m| m as i64));
        self.record.push(d.encode());
    }
}

impl Columns {
    /// Inserts the deliveries pushed.
    pub(super) async fn insert(
        &self,
        tx: &impl GenericClient,
    ) -> Result<u64, tokio_postgres::Error> {
        tx.execute(
            &tx.prepare_cached(INSERT_DELIVERIES).await?,
            &[
                &self.id,
                &self.sink,
                &self.event_id,
                &self.item,
                &self.order_key,
                &self.dead,
                &self.due_ms,
                &self.failures,
                &self.reason,
                &self.dead_ms,
                &self.record,
            ],
        )
        .await
    }
}

/// An item's place in event order: none first.
pub fn item_rank(item: Option<u32>) -> i64 {
    item.map_or(0, |i| i64::from(i) + 1)
}

pub async fn routed(
    db: &Db,
    page: &InboxPage,
    mut routed: Vec<Routed>,
) -> Result<Vec<Routed>, QueueError> {
    let Some(conn) = db.page.take(page.claim.from) else {
        return Err(QueueError::Moved);
    };
    let ids: Vec<i64> = page.events.iter().map(|(id, _)| id.0 as i64).collect();
    let count = routed
        .iter()
        .map(|r| r.pending.len() + r.dead.len())
        .sum::<usize>() as i64;
    let unmatched = routed
        .iter()
        .filter(|r| r.pending.is_empty() && r.dead.is_empty())
        .count() as i64;
    let done = async {
        let deleted = conn
            .execute(&conn.prepare_cached(DELETE_PAGE).await?, &[&ids])
            .await?;
        if deleted != ids.len() as u64 {
            conn.batch_execute("ROLLBACK").await?;
            return Ok(false);
        }
        if count > 0 {
            let fresh = conn
                .query(&conn.prepare_cached(DELIVERY_IDS).await?, &[&count])
                .await?;
            let mut fresh = fresh.iter().map(|r| r.get::<_, i64>(0) as u64);
            let mut cols = Columns::default();
            for r in &mut routed {
                for d in &mut r.pending {
                    d.id = fresh.next().expect("as many ids as deliveries");
                    cols.push(d, false);
                }
                for d in &mut r.dead {
                    d.id = fresh.next().expect("as many ids as deliveries");
                    cols.push(d, true);
                }
            }
            cols.insert(&conn).await?;
        }
        if unmatched > 0 {
            let slot = rand::random::<i32>().rem_euclid(UNMATCHED_SLOTS);
            conn.execute(&conn.prepare_cached(UNMATCHED).await?, &[&slot, &unmatched])
                .await?;
        }
        conn.batch_execute("COMMIT").await?;
        Ok::<_, tokio_postgres::Error>(true)
    }
    .await;
    match done {
        Ok(true) => Ok(routed),
        Ok(false) => Err(QueueError::Moved),
        // The database ended the transaction (the page was held too long,
        // or the session was cut): the page is back in the inbox.
        Err(e)
            if e.is_closed()
                || e.code() == Some(&SqlState::IDLE_IN_TRANSACTION_SESSION_TIMEOUT) =>
        {
            let _ = Object::take(conn);
            Err(QueueError::Moved)
        }
        Err(e) => Err(conn_err(&db.health, &db.pool, conn, e)),
    }
}

const DELETE_PAGE: &str = "DELETE FROM hookgate_inbox WHERE event_id = ANY($1)";
const DELIVERY_IDS: &str =
    "SELECT nextval('hookgate_delivery_id') FROM generate_series(1, $1::int8)";
const UNMATCHED: &str = "
INSERT INTO hookgate_unmatched (slot, n) VALUES ($1, $2)
ON CONFLICT (slot) DO UPDATE SET n = hookgate_unmatched.n + EXCLUDED.n";
