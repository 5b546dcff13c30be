//! `hookgate queue migrate`'s far end: a local data directory's unfinished
//! work taken in, in one transaction, once per local install id.
//!
//! Events not yet routed get ids here and wait in the inbox like any
//! other, their dedupe keys with them (a key the database already holds
//! is a delivery it took itself: that copy is not imported twice).
//! Pending and dead deliveries keep their frozen requests and idempotency
//! keys, so a sink that saw one before the move recognises it; they get
//! ids here.

use std::collections::BTreeSet;

use super::health::{conn_err, pool_err};
use super::routing::Columns;
use super::{partitions, Db};
use crate::queue::{Carried, Imported, QueueError};

const CLAIM: &str = "INSERT INTO hookgate_imports (install_id, events, pending, dead)
    VALUES ($1, $2, $3, $4) ON CONFLICT (install_id) DO NOTHING";

const EVENT: &str = "
WITH id AS (SELECT nextval('hookgate_event_id') AS id),
seen AS (
    INSERT INTO hookgate_seen (source, key, event_id, stored_ms, expires_ms)
    SELECT $1, $2, id, $3, $4 FROM id
    ON CONFLICT (source, key) DO NOTHING
    RETURNING event_id
),
ev AS (
    INSERT INTO hookgate_events (id, received_ms, source, record, provider, event, delivery_id)
    SELECT event_id, $5, $1, $6, $7, $8, $9 FROM seen
    RETURNING id, received_ms
)
INSERT INTO hookgate_inbox (event_id, received_ms) SELECT id, received_ms FROM ev";

pub async fn import(db: &Db, carried: Carried, now_ms: u64) -> Result<Imported, QueueError> {
    let pending = carried
        .deliveries
        .iter()
        .filter(|d| d.dead_ms.is_none())
        .count();
    let dead = carried.deliveries.len() - pending;
    let mut out = Imported {
        events: 0,
        pending,
        dead,
        already: false,
    };
    let days: BTreeSet<i64> = carried
        .events
        .iter()
        .map(|e| partitions::day_of(e.record.received_at_ms as i64))
        .collect();
    let mut conn = db.pool.get().await.map_err(|e| pool_err(&db.health, e))?;
    let done = async {
        partitions::ensure(&conn, partitions::EVENTS, &days).await?;
        let tx = conn.transaction().await?;
        let claimed = tx
            .execute(
                CLAIM,
                &[
                    &(carried.from_install as i64),
                    &(carried.events.len() as i64),
                    &(pending as i64),
                    &(dead as i64),
                ],
            )
            .await?;
        if claimed == 0 {
            tx.rollback().await?;
            return Ok(None);
        }
        let mut events = 0;
        for e in &carried.events {
            events += tx
                .execute(
                    EVENT,
                    &[
                        &e.record.source,
                        &e.dedupe_key,
                        &(now_ms as i64),
                        &(e.expires_ms as i64),
                        &(e.record.received_at_ms as i64),
                        &e.record.encode(),
                        &e.record.provider,
                        &e.record.event,
                        &e.record.delivery_id,
                    ],
                )
                .await? as usize;
        }
        if !carried.deliveries.is_empty() {
            let fresh = tx
                .query(
                    "SELECT nextval('hookgate_delivery_id') FROM generate_series(1, $1::int8)",
                    &[&(carried.deliveries.len() as i64)],
                )
                .await?;
            let mut cols = Columns::default();
            for (d, row) in carried.deliveries.iter().zip(&fresh) {
                let mut d = d.clone();
                d.id = row.get::<_, i64>(0) as u64;
                cols.push(&d, d.dead_ms.is_some());
            }
            cols.insert(&tx).await?;
        }
        tx.commit().await?;
        Ok::<_, tokio_postgres::Error>(Some(events))
    }
    .await;
    match done {
        Ok(Some(events)) => {
            out.events = events;
            db.appended.notify_one();
            Ok(out)
        }
        Ok(None) => Ok(Imported {
            already: true,
            ..Imported::default()
        }),
        Err(e) => Err(conn_err(&db.health, &db.pool, conn, e)),
    }
}
