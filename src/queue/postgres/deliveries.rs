//! Claims, outcomes and releases of deliveries, under leases by the
//! database's clock.
//!
//! A claim that finds something due takes the sink's advisory lock for
//! its transaction, so claims of one sink are serial across the cluster:
//! its token bucket (`hookgate_sink_limits`) is refilled and debited
//! there, and the leases out are counted against its concurrency. A delivery starts only as the head of
//! its order key (lowest (event, item) pending) while no delivery of that
//! key is under a lease. An outcome is written only where the lease token
//! still stands: once a lease lapsed and another instance claimed the
//! delivery, the first instance's late outcome is dropped.

use std::time::Duration;

use tokio_postgres::Row;

use super::health::{conn_err, pool_err};
use super::{partitions, Db};
use crate::queue::{Claimed, DeliveryRecord, Due, Lease, Limits, QueueError, Settle};

/// The columns [`record_of`] reads.
pub const COLS: &str = "id, due_ms, failures, reason, dead_ms, record";
/// How long a sink whose concurrency is used up (by the cluster) waits
/// before it looks again.
const CONCURRENCY_POLL: Duration = Duration::from_millis(250);

/// A delivery as stored: the record, its mutable fields from their columns.
pub fn record_of(row: &Row) -> Result<DeliveryRecord, QueueError> {
    let id: i64 = row.get(0);
    let bytes: &[u8] = row.get(5);
    let mut rec = DeliveryRecord::decode(bytes).map_err(|e| QueueError::Corrupt {
        key: format!("delivery {id}"),
        reason: e.to_string(),
    })?;
    rec.id = id as u64;
    rec.due_ms = row.get::<_, i64>(1) as u64;
    rec.failures = row.get::<_, i32>(2) as u32;
    rec.reason = row.get(3);
    rec.dead_ms = row.get::<_, Option<i64>>(4).map(|m| m as u64);
    Ok(rec)
}

/// Claims of one sink wait for each other (an advisory lock: taking it
/// writes nothing, so a claim that finds nothing commits without a WAL
/// flush). Key: hookgate's class and the sink's name hashed.
const LOCK: &str = "SELECT pg_advisory_xact_lock(1752133483, hashtext($1))";

/// The sink's bucket as last written, how long ago, and the leases out;
/// read once the lock is held, so every claim committed before is seen.
const LIMITS: &str = "
SELECT
    (SELECT tokens FROM hookgate_sink_limits WHERE sink = $1),
    (SELECT extract(epoch FROM clock_timestamp() - refilled_at)::float8
     FROM hookgate_sink_limits WHERE sink = $1),
    (SELECT count(*) FROM hookgate_deliveries
     WHERE sink = $1 AND NOT dead AND lease_until > now()),
    (SELECT paused_until_ms FROM hookgate_sink_limits WHERE sink = $1)";

/// A pause for the whole cluster (the later of two wins).
const PAUSE: &str = "
INSERT INTO hookgate_sink_limits AS l (sink, tokens, refilled_at, paused_until_ms)
VALUES ($1, 0, clock_timestamp(), $2)
ON CONFLICT (sink) DO UPDATE SET paused_until_ms = greatest(l.paused_until_ms, EXCLUDED.paused_until_ms)";

const SAVE_TOKENS: &str = "
INSERT INTO hookgate_sink_limits (sink, tokens, refilled_at) VALUES ($1, $2, clock_timestamp())
ON CONFLICT (sink) DO UPDATE SET tokens = EXCLUDED.tokens, refilled_at = EXCLUDED.refilled_at";

/// Due, unleased deliveries that head their order key and whose key has
/// none out, in due order, leased for `$4` seconds under token `$5`.
const PICK: &str = "
WITH picked AS (
    SELECT d.id FROM hookgate_deliveries d
    WHERE d.sink = $1 AND NOT d.dead AND d.due_ms <= $2
      AND (d.lease_until IS NULL OR d.lease_until <= now())
      AND (d.order_key IS NULL OR (
          NOT EXISTS (SELECT 1 FROM hookgate_deliveries o
              WHERE o.sink = d.sink AND o.order_key = d.order_key AND NOT o.dead
                AND (o.event_id, o.item, o.id) < (d.event_id, d.item, d.id))
          AND NOT EXISTS (SELECT 1 FROM hookgate_deliveries o
              WHERE o.sink = d.sink AND o.order_key = d.order_key AND NOT o.dead
                AND o.lease_until > now())))
    ORDER BY d.due_ms, d.id
    LIMIT $3
    FOR UPDATE SKIP LOCKED
)
UPDATE hookgate_deliveries d
SET lease_token = $5, lease_until = now() + make_interval(secs => $4)
FROM picked WHERE d.id = picked.id
RETURNING d.id, d.due_ms, d.failures, d.reason, d.dead_ms, d.record";

/// A delivered delivery leaves the queue for the history, in one
/// statement: only under its lease token, with its final record.
const DONE: &str = "
WITH gone AS (
    DELETE FROM hookgate_deliveries WHERE id = $1 AND lease_token = $2
    RETURNING id, event_id, sink)
INSERT INTO hookgate_delivered (id, delivered_ms, event_id, sink, record)
SELECT id, $3, event_id, sink, $4 FROM gone";

const NEXT_DUE: &str = "
SELECT due_ms FROM hookgate_deliveries WHERE sink = $1 AND NOT dead ORDER BY due_ms LIMIT 1";

/// The earliest pending due time, and whether any delivery is due and
/// unleased (one round trip, no lock: what an idle sink costs).
const LOOK: &str = "
SELECT
    (SELECT due_ms FROM hookgate_deliveries WHERE sink = $1 AND NOT dead ORDER BY due_ms LIMIT 1),
    EXISTS (SELECT 1 FROM hookgate_deliveries
        WHERE sink = $1 AND NOT dead AND due_ms <= $2
          AND (lease_until IS NULL OR lease_until <= now()))";

/// No claims of `sink` before `until_ms`, on any instance.
pub async fn pause(db: &Db, sink: &str, until_ms: u64) -> Result<(), QueueError> {
    let until = until_ms.min(i64::MAX as u64) as i64;
    let conn = db.pool.get().await.map_err(|e| pool_err(&db.health, e))?;
    match conn.execute(PAUSE, &[&sink, &until]).await {
        Ok(_) => Ok(()),
        Err(e) => Err(conn_err(&db.health, &db.pool, conn, e)),
    }
}

pub async fn claim(db: &Db, sink: &str, limits: Limits, now_ms: u64) -> Result<Due, QueueError> {
    let token: i64 = rand::random();
    let now_ms = now_ms.min(i64::MAX as u64) as i64;
    let mut conn = db.pool.get().await.map_err(|e| pool_err(&db.health, e))?;
    let done = async {
        let look = conn
            .query_one(&conn.prepare_cached(LOOK).await?, &[&sink, &now_ms])
            .await?;
        let (next_due, any): (Option<i64>, bool) = (look.get(0), look.get(1));
        if !any {
            return Ok((Vec::new(), next_due, None));
        }
        let tx = conn.transaction().await?;
        tx.execute(&tx.prepare_cached(LOCK).await?, &[&sink])
            .await?;
        let row = tx
            .query_one(&tx.prepare_cached(LIMITS).await?, &[&sink])
            .await?;
        let (stored, elapsed, active, paused): (Option<f64>, Option<f64>, i64, Option<i64>) =
            (row.get(0), row.get(1), row.get(2), row.get(3));
        // A platform's pause holds for every instance.
        if let Some(until) = paused.filter(|&u| u > now_ms) {
            let wait = Duration::from_millis((until - now_ms) as u64);
            tx.commit().await?;
            return Ok((Vec::new(), next_due, Some(wait)));
        }
        let tokens = limits.rate.map(|r| {
            let burst = f64::from(r.burst);
            match stored {
                Some(t) => (t + elapsed.unwrap_or(0.0).max(0.0) * r.per_second).min(burst),
                None => burst,
            }
        });
        let free = limits.concurrency.saturating_sub(active.max(0) as usize);
        let mut allowed = limits.max.min(free);
        if let Some(t) = tokens {
            allowed = allowed.min(t.max(0.0).floor() as usize);
        }
        let mut claimed = Vec::new();
        if allowed > 0 {
            let lease = limits.lease.as_secs_f64();
            let limit = allowed.min(i64::MAX as usize) as i64;
            claimed = tx
                .query(
                    &tx.prepare_cached(PICK).await?,
                    &[&sink, &now_ms, &limit, &lease, &token],
                )
                .await?;
        }
        let left = tokens.map(|t| t - claimed.len() as f64);
        if let (Some(left), false) = (left, claimed.is_empty()) {
            tx.execute(&tx.prepare_cached(SAVE_TOKENS).await?, &[&sink, &left])
                .await?;
        }
        let look = tx
            .query_one(&tx.prepare_cached(LOOK).await?, &[&sink, &now_ms])
            .await?;
        let (next_due, more): (Option<i64>, bool) = (look.get(0), look.get(1));
        // Held by the limits: all that was allowed went, less than asked,
        // and more is due.
        let mut held = None;
        if claimed.len() == allowed && allowed < limits.max && more {
            held = Some(match (left, limits.rate) {
                (Some(left), Some(rate)) if left < 1.0 && rate.per_second > 0.0 => {
                    Duration::from_secs_f64(((1.0 - left) / rate.per_second).min(3600.0))
                }
                _ => CONCURRENCY_POLL,
            });
        }
        tx.commit().await?;
        Ok::<_, tokio_postgres::Error>((claimed, next_due, held))
    }
    .await;
    let (rows, next_due, held) = match done {
        Ok(d) => d,
        Err(e) => return Err(conn_err(&db.health, &db.pool, conn, e)),
    };
    let mut claimed = Vec::with_capacity(rows.len());
    for row in &rows {
        let rec = record_of(row)?;
        claimed.push(Claimed {
            lease: Lease {
                id: rec.id,
                sink: sink.to_owned(),
                order_key: rec.order_key.clone(),
                key: Vec::new(),
                token: token as u64,
            },
            rec,
        });
    }
    claimed.sort_by_key(|c| (c.rec.due_ms, c.rec.id));
    Ok(Due {
        claimed,
        next_due: next_due.map(|d| d as u64),
        held,
    })
}

pub async fn settle(
    db: &Db,
    lease: &Lease,
    rec: &DeliveryRecord,
    how: Settle,
) -> Result<(), QueueError> {
    let (id, token) = (lease.id as i64, lease.token as i64);
    let conn = db.pool.get().await.map_err(|e| pool_err(&db.health, e))?;
    let bytes = rec.encode();
    let failures = rec.failures.min(i32::MAX as u32) as i32;
    let written = match how {
        Settle::Done => {
            let at = rec.delivered_ms().min(i64::MAX as u64) as i64;
            async {
                let stmt = conn.prepare_cached(DONE).await?;
                let args: [&(dyn tokio_postgres::types::ToSql + Sync); 4] =
                    [&id, &token, &at, &bytes];
                match conn.execute(&stmt, &args).await {
                    // A day no partition was made for ahead (a clock far off).
                    Err(e) if partitions::no_partition(&e) => {
                        let day = [partitions::day_of(at)].into();
                        partitions::ensure(&conn, partitions::DELIVERED, &day).await?;
                        conn.execute(&stmt, &args).await
                    }
                    moved => moved,
                }
            }
            .await
        }
        Settle::Reschedule => {
            conn.execute(
                "UPDATE hookgate_deliveries
                 SET due_ms = $3, failures = $4, record = $5, lease_token = NULL, lease_until = NULL
                 WHERE id = $1 AND lease_token = $2 AND NOT dead",
                &[&id, &token, &(rec.due_ms as i64), &failures, &bytes],
            )
            .await
        }
        Settle::Bury => {
            conn.execute(
                "UPDATE hookgate_deliveries
                 SET dead = true, reason = $3, dead_ms = coalesce($4, due_ms), failures = $5, record = $6,
                     lease_token = NULL, lease_until = NULL
                 WHERE id = $1 AND lease_token = $2 AND NOT dead",
                &[
                    &id,
                    &token,
                    &rec.reason,
                    &rec.dead_ms.map(|m| m as i64),
                    &failures,
                    &bytes,
                ],
            )
            .await
        }
    };
    match written {
        Ok(0) => {
            tracing::warn!(
                delivery = lease.id,
                sink = %lease.sink,
                "an outcome came after its claim lapsed and another instance took the delivery; it is not recorded"
            );
            Ok(())
        }
        Ok(_) => Ok(()),
        Err(e) => Err(conn_err(&db.health, &db.pool, conn, e)),
    }
}

/// Clears a lease (the attempt never ended); the delivery is due again.
pub async fn release(db: &Db, lease: &Lease) -> Result<(), QueueError> {
    let conn = db.pool.get().await.map_err(|e| pool_err(&db.health, e))?;
    match conn
        .execute(
            "UPDATE hookgate_deliveries SET lease_token = NULL, lease_until = NULL
             WHERE id = $1 AND lease_token = $2",
            &[&(lease.id as i64), &(lease.token as i64)],
        )
        .await
    {
        Ok(_) => Ok(()),
        Err(e) => Err(conn_err(&db.health, &db.pool, conn, e)),
    }
}

pub async fn next_due(db: &Db, sink: &str) -> Result<Option<u64>, QueueError> {
    let conn = db.pool.get().await.map_err(|e| pool_err(&db.health, e))?;
    let found = async {
        let stmt = conn.prepare_cached(NEXT_DUE).await?;
        conn.query_opt(&stmt, &[&sink]).await
    }
    .await;
    match found {
        Ok(r) => Ok(r.map(|r| r.get::<_, i64>(0) as u64)),
        Err(e) => Err(conn_err(&db.health, &db.pool, conn, e)),
    }
}

pub async fn bury_orphans(db: &Db, sinks: &[String], now_ms: u64) -> Result<usize, QueueError> {
    let conn = db.pool.get().await.map_err(|e| pool_err(&db.health, e))?;
    match conn
        .execute(
            "UPDATE hookgate_deliveries
             SET dead = true, dead_ms = $2,
                 reason = 'sink `' || sink || '` removed from the config',
                 lease_token = NULL, lease_until = NULL
             WHERE NOT dead AND sink <> ALL($1)
               AND (lease_until IS NULL OR lease_until <= now())",
            &[&sinks, &(now_ms as i64)],
        )
        .await
    {
        Ok(n) => Ok(n as usize),
        Err(e) => Err(conn_err(&db.health, &db.pool, conn, e)),
    }
}
