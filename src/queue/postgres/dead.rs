//! Dead letters: listed by id, counted by sink, replayed with plain
//! UPDATEs (the record's mutable fields are columns), and deleted once
//! past their retention, a batch per statement, found by the partial
//! index on `dead_ms` (schema version 2).

use std::collections::BTreeMap;

use super::deliveries::{record_of, COLS};
use super::health::{conn_err, pool_err};
use super::Db;
use crate::queue::{DeliveryRecord, QueueError, RefuseReplay, Refused, Requeued, NOTHING_TO_SEND};

/// Dead letters read per page when replaying them all.
const REPLAY_PAGE: i64 = 500;
/// Dead letters deleted per statement when expiring them: each statement
/// is its own short transaction.
const PRUNE_BATCH: i64 = 1000;

/// One batch of expired dead letters, oldest first, by sink. The conditions
/// are checked again on each row as it is deleted, so one replayed (or
/// deleted by another instance) since the batch was picked stays.
const PRUNE: &str = "
WITH gone AS (
    DELETE FROM hookgate_deliveries
    WHERE ctid = ANY (ARRAY(
            SELECT ctid FROM hookgate_deliveries
            WHERE dead AND dead_ms < $1 ORDER BY dead_ms LIMIT $2))
      AND dead AND dead_ms < $1
    RETURNING sink)
SELECT sink, count(*) FROM gone GROUP BY sink";

pub async fn page(
    db: &Db,
    after: Option<u64>,
    limit: usize,
) -> Result<Vec<DeliveryRecord>, QueueError> {
    let Some(after) = after.map_or(Some(-1), |a| i64::try_from(a).ok()) else {
        return Ok(Vec::new());
    };
    let limit = limit.min(i64::MAX as usize) as i64;
    let conn = db.pool.get().await.map_err(|e| pool_err(&db.health, e))?;
    let rows = match conn
        .query(
            &format!(
                "SELECT {COLS} FROM hookgate_deliveries WHERE dead AND id > $1 ORDER BY id LIMIT $2"
            ),
            &[&after, &limit],
        )
        .await
    {
        Ok(rows) => rows,
        Err(e) => return Err(conn_err(&db.health, &db.pool, conn, e)),
    };
    rows.iter().map(record_of).collect()
}

pub async fn one(db: &Db, id: u64) -> Result<Option<DeliveryRecord>, QueueError> {
    let Ok(id) = i64::try_from(id) else {
        return Ok(None);
    };
    let conn = db.pool.get().await.map_err(|e| pool_err(&db.health, e))?;
    match conn
        .query_opt(
            &format!("SELECT {COLS} FROM hookgate_deliveries WHERE dead AND id = $1"),
            &[&id],
        )
        .await
    {
        Ok(row) => row.as_ref().map(record_of).transpose(),
        Err(e) => Err(conn_err(&db.health, &db.pool, conn, e)),
    }
}

pub async fn by_sink(db: &Db) -> Result<BTreeMap<String, u64>, QueueError> {
    let conn = db.pool.get().await.map_err(|e| pool_err(&db.health, e))?;
    match conn
        .query(
            "SELECT sink, count(*) FROM hookgate_deliveries WHERE dead GROUP BY sink",
            &[],
        )
        .await
    {
        Ok(rows) => Ok(rows
            .iter()
            .map(|r| (r.get::<_, String>(0), r.get::<_, i64>(1) as u64))
            .collect()),
        Err(e) => Err(conn_err(&db.health, &db.pool, conn, e)),
    }
}

pub async fn requeue(
    db: &Db,
    id: Option<u64>,
    now_ms: u64,
    refuse: RefuseReplay<'_>,
) -> Result<Requeued, QueueError> {
    let mut out = Requeued::default();
    let mut after = None;
    loop {
        let records = match id {
            Some(id) => one(db, id).await?.into_iter().collect(),
            None => page(db, after, REPLAY_PAGE as usize).await?,
        };
        let Some(last) = records.last() else {
            break;
        };
        after = Some(last.id);
        let full = records.len() as i64 == REPLAY_PAGE;
        let mut replay = Vec::new();
        for rec in records {
            let reason = match rec.frozen {
                None => Some(NOTHING_TO_SEND.to_owned()),
                Some(_) => refuse(&rec),
            };
            match reason {
                Some(reason) => out.refused.push(Refused { id: rec.id, reason }),
                None => replay.push(rec.id as i64),
            }
        }
        if !replay.is_empty() {
            let conn = db.pool.get().await.map_err(|e| pool_err(&db.health, e))?;
            let rows = match conn
                .query(
                    "UPDATE hookgate_deliveries
                     SET dead = false, due_ms = $2, failures = 0, reason = NULL, dead_ms = NULL,
                         lease_token = NULL, lease_until = NULL
                     WHERE id = ANY($1) AND dead
                     RETURNING sink",
                    &[&replay, &(now_ms as i64)],
                )
                .await
            {
                Ok(rows) => rows,
                Err(e) => return Err(conn_err(&db.health, &db.pool, conn, e)),
            };
            out.replayed += rows.len();
            out.sinks.extend(rows.iter().map(|r| r.get::<_, String>(0)));
        }
        if id.is_some() || !full {
            break;
        }
    }
    Ok(out)
}

/// Deletes the dead letters that died before `cutoff_ms`, a batch per
/// statement until one finds fewer; returns how many went, by sink.
pub async fn prune(db: &Db, cutoff_ms: u64) -> Result<BTreeMap<String, u64>, QueueError> {
    let cutoff = cutoff_ms.min(i64::MAX as u64) as i64;
    let mut expired = BTreeMap::new();
    loop {
        let conn = db.pool.get().await.map_err(|e| pool_err(&db.health, e))?;
        let rows = match conn.query(PRUNE, &[&cutoff, &PRUNE_BATCH]).await {
            Ok(rows) => rows,
            Err(e) => return Err(conn_err(&db.health, &db.pool, conn, e)),
        };
        drop(conn);
        let mut deleted = 0;
        for r in &rows {
            let n = r.get::<_, i64>(1);
            deleted += n;
            *expired.entry(r.get::<_, String>(0)).or_default() += n as u64;
        }
        if deleted < PRUNE_BATCH {
            return Ok(expired);
        }
    }
}
