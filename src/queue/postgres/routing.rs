//! Routing exactly once across instances: a router claims the oldest
//! unclaimed inbox rows (`FOR UPDATE SKIP LOCKED`, stamped with a random
//! token and an expiry by the database's clock), and records the page in
//! one transaction that deletes those rows only where its token still
//! stands. A router that stalls past the expiry loses its page to another
//! (its `routed` then finds fewer rows and rolls back: `Moved`).

use super::health::{conn_err, pool_err};
use super::Db;
use crate::queue::{DeliveryRecord, EventId, InboxPage, PageClaim, QueueError, Routed};

/// How long a router's claim on a page holds.
const CLAIM_SECS: f64 = 30.0;
/// Slots of `hookgate_unmatched` (routers add to one at random).
const UNMATCHED_SLOTS: i32 = 16;

const CLAIM: &str = "
WITH picked AS (
    SELECT event_id FROM hookgate_inbox
    WHERE claim_until IS NULL OR claim_until < now()
    ORDER BY event_id
    LIMIT $1
    FOR UPDATE SKIP LOCKED
),
claimed AS (
    UPDATE hookgate_inbox i
    SET claim_token = $2, claim_until = now() + make_interval(secs => $3)
    FROM picked WHERE i.event_id = picked.event_id
    RETURNING i.event_id, i.received_ms
)
SELECT received_ms, event_id FROM claimed";

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

pub async fn inbox(db: &Db, n: usize) -> Result<InboxPage, QueueError> {
    let token: i64 = rand::random();
    let conn = db.pool.get().await.map_err(|e| pool_err(&db.health, e))?;
    let n = n.min(i64::MAX as usize) as i64;
    let claimed = async {
        let stmt = conn.prepare_cached(CLAIM).await?;
        let keys = conn.query(&stmt, &[&n, &token, &CLAIM_SECS]).await?;
        if keys.is_empty() {
            return Ok(Vec::new());
        }
        let days: Vec<i64> = keys.iter().map(|r| r.get(0)).collect();
        let ids: Vec<i64> = keys.iter().map(|r| r.get(1)).collect();
        let stmt = conn.prepare_cached(RECORDS).await?;
        conn.query(&stmt, &[&days, &ids]).await
    }
    .await;
    let rows = match claimed {
        Ok(rows) => rows,
        Err(e) => return Err(conn_err(&db.health, &db.pool, conn, e)),
    };
    Ok(InboxPage {
        events: rows
            .iter()
            .map(|r| (EventId(r.get::<_, i64>(0) as u64), r.get::<_, Vec<u8>>(1)))
            .collect(),
        claim: PageClaim {
            from: token as u64,
            next: 0,
        },
    })
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
        tx: &deadpool_postgres::Transaction<'_>,
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
    let ids: Vec<i64> = page.events.iter().map(|(id, _)| id.0 as i64).collect();
    let token = page.claim.from as i64;
    let count = routed
        .iter()
        .map(|r| r.pending.len() + r.dead.len())
        .sum::<usize>() as i64;
    let unmatched = routed
        .iter()
        .filter(|r| r.pending.is_empty() && r.dead.is_empty())
        .count() as i64;
    let mut conn = db.pool.get().await.map_err(|e| pool_err(&db.health, e))?;
    let done = async {
        let tx = conn.transaction().await?;
        let deleted = tx
            .execute(
                "DELETE FROM hookgate_inbox WHERE event_id = ANY($1) AND claim_token = $2",
                &[&ids, &token],
            )
            .await?;
        if deleted != ids.len() as u64 {
            tx.rollback().await?;
            return Ok(false);
        }
        if count > 0 {
            let fresh = tx
                .query(
                    "SELECT nextval('hookgate_delivery_id') FROM generate_series(1, $1::int8)",
                    &[&count],
                )
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
            cols.insert(&tx).await?;
        }
        if unmatched > 0 {
            let slot = rand::random::<i32>().rem_euclid(UNMATCHED_SLOTS);
            tx.execute(
                "INSERT INTO hookgate_unmatched (slot, n) VALUES ($1, $2)
                 ON CONFLICT (slot) DO UPDATE SET n = hookgate_unmatched.n + EXCLUDED.n",
                &[&slot, &unmatched],
            )
            .await?;
        }
        tx.commit().await?;
        Ok::<_, tokio_postgres::Error>(true)
    }
    .await;
    match done {
        Ok(true) => Ok(routed),
        Ok(false) => Err(QueueError::Moved),
        Err(e) => Err(conn_err(&db.health, &db.pool, conn, e)),
    }
}
