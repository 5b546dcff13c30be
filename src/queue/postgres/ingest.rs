//! Appends, group-committed: one writer task takes every append waiting
//! and stores them in one transaction, one round trip: BEGIN, one
//! statement for the dedupe keys, events and inbox rows (which also
//! answers the duplicates), and COMMIT, sent together. A few batches may
//! be in flight at once, each on its own pooled connection. No answer
//! goes out before its transaction commits.
//!
//! Dedupe: `INSERT … ON CONFLICT DO UPDATE … WHERE expired` on
//! `hookgate_seen`. An instance appending a key another has stored but
//! not committed waits on that row, so a duplicate is never answered
//! before its first copy is durable; the id of such a first copy (not in
//! the statement's snapshot) is read after the commit. Duplicates within
//! one batch are resolved here (the first wins).

use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;

use tokio::sync::{mpsc, oneshot, Semaphore};

use super::health::{conn_err, pool_err};
use super::{partitions, Db};
use crate::queue::{Appended, EventId, NewEvent, QueueError};

/// Most appends one transaction takes.
pub const BATCH_MAX: usize = 512;
/// Batches committing at once. Measured (`storage::postgres_append_throughput`,
/// 64 writers, 2 cores, local disk): 1 → 7.7k appends/s, 2 → 10.6k,
/// 3 → 10.3k, 4 → 7.8k.
pub const IN_FLIGHT: usize = 2;
/// Attempts at a batch that met a deadlock or a missing partition.
const TRIES: usize = 3;

/// An append, encoded on the request's task.
pub struct Job {
    pub source: String,
    /// What a listing shows (columns since schema version 4).
    pub provider: String,
    pub event: String,
    pub delivery_id: String,
    pub key: String,
    pub stored_ms: i64,
    pub expires_ms: i64,
    pub received_ms: i64,
    pub record: Vec<u8>,
    pub reply: oneshot::Sender<Result<Appended, QueueError>>,
}

impl Job {
    pub fn new(
        event: NewEvent,
        now_ms: u64,
        reply: oneshot::Sender<Result<Appended, QueueError>>,
    ) -> Job {
        let window = event.dedupe_window.as_millis().min(i64::MAX as u128) as i64;
        let now_ms = now_ms.min(i64::MAX as u64) as i64;
        Job {
            record: event.record.encode(),
            received_ms: event.record.received_at_ms.min(i64::MAX as u64) as i64,
            source: event.record.source,
            provider: event.record.provider,
            event: event.record.event,
            delivery_id: event.record.delivery_id,
            key: event.dedupe.key(&event.record.body),
            stored_ms: now_ms,
            expires_ms: now_ms.saturating_add(window),
            reply,
        }
    }
}

pub enum Msg {
    Append(Job),
    /// Answered once every batch taken before it has committed (or failed).
    Flush(oneshot::Sender<()>),
}

/// The writer: runs until every sender is gone.
pub async fn run(db: Arc<Db>, mut rx: mpsc::Receiver<Msg>) {
    let slots = Arc::new(Semaphore::new(IN_FLIGHT));
    while let Some(first) = rx.recv().await {
        let mut batch = Vec::new();
        let mut flushes = Vec::new();
        // A free slot first, then everything that waits: while batches
        // commit, the next one grows.
        let slot = slots.clone().acquire_owned().await.expect("never closed");
        let mut next = Some(first);
        while let Some(msg) = next.take() {
            match msg {
                Msg::Append(job) => batch.push(job),
                Msg::Flush(done) => {
                    flushes.push(done);
                    break;
                }
            }
            if batch.len() < BATCH_MAX {
                next = rx.try_recv().ok();
            }
        }
        if !batch.is_empty() {
            let db = db.clone();
            tokio::spawn(async move {
                commit(&db, batch).await;
                drop(slot);
            });
        } else {
            drop(slot);
        }
        if !flushes.is_empty() {
            // Every slot free: every batch before the flush is done.
            let all = slots
                .acquire_many(IN_FLIGHT as u32)
                .await
                .expect("never closed");
            drop(all);
            for done in flushes {
                let _ = done.send(());
            }
        }
    }
}

/// Stores `batch` and answers each append.
async fn commit(db: &Db, batch: Vec<Job>) {
    // Within the batch, the first of each key goes to the database; the
    // others are its duplicates.
    let mut first_of: HashMap<(&str, &str), usize> = HashMap::new();
    let mut of = vec![None; batch.len()];
    let mut unique = Vec::new();
    for (i, job) in batch.iter().enumerate() {
        match first_of.get(&(job.source.as_str(), job.key.as_str())) {
            Some(&f) => of[i] = Some(f),
            None => {
                first_of.insert((job.source.as_str(), job.key.as_str()), i);
                unique.push(i);
            }
        }
    }
    let mut result = Err(Retry::Conflict);
    for attempt in 1..=TRIES {
        let started = std::time::Instant::now();
        result = store(db, &batch, &unique).await;
        if result.is_ok() {
            db.commits.observe(started.elapsed());
            db.committed
                .fetch_add(batch.len() as u64, std::sync::atomic::Ordering::Relaxed);
        }
        match &result {
            Err(Retry::Partition(days)) => {
                let made = match db.pool.get().await {
                    Ok(c) => partitions::ensure(&c, partitions::EVENTS, days)
                        .await
                        .map_err(|e| e.to_string()),
                    Err(e) => Err(e.to_string()),
                };
                if let Err(e) = made {
                    tracing::error!(error = %e, "cannot make a partition for new events");
                }
            }
            Err(Retry::Conflict) if attempt < TRIES => {}
            _ => break,
        }
    }
    let answers = match result {
        Ok(a) => a,
        Err(e) => {
            let msg = match e {
                Retry::Partition(_) | Retry::Conflict => {
                    "could not store the events after retrying".to_owned()
                }
                Retry::Fail(e) => e.to_string(),
            };
            for job in batch {
                let _ = job.reply.send(Err(storage(&msg)));
            }
            return;
        }
    };
    // Fill in the duplicates within the batch, from their first.
    let mut full = vec![None; batch.len()];
    for (answer, &i) in answers.into_iter().zip(&unique) {
        full[i] = answer;
    }
    for i in 0..batch.len() {
        if let Some(f) = of[i] {
            full[i] = match &full[f] {
                Some(Appended::Queued(id) | Appended::Duplicate(id)) => {
                    Some(Appended::Duplicate(*id))
                }
                None => None,
            };
        }
    }
    for (job, answer) in batch.into_iter().zip(full) {
        if let Some(Appended::Queued(id)) = &answer {
            db.recent.put(id.0 as i64, job.record);
        }
        let _ = job.reply.send(answer.ok_or_else(|| {
            // Its key's holder went (expired and pruned) between the
            // commit and the look: not a 2xx, the sender tries again.
            storage("a dedupe key was neither stored nor found")
        }));
    }
    db.appended.notify_one();
}

fn storage(msg: &str) -> QueueError {
    QueueError::Storage(std::io::Error::other(msg.to_owned()))
}

enum Retry {
    /// Some event's day has no partition yet.
    Partition(BTreeSet<i64>),
    /// A deadlock with another instance's batch.
    Conflict,
    Fail(QueueError),
}

impl From<QueueError> for Retry {
    fn from(e: QueueError) -> Retry {
        Retry::Fail(e)
    }
}

/// The one statement storing a batch: dedupe keys (in key order, so two
/// batches lock them in the same order), then the events that won their
/// key (with what a listing shows of each) and their inbox rows. Returns
/// each append's ordinal, whether it was stored, and its id: its own, or
/// else the id its key is held by as this statement's snapshot shows it
/// (NULL when the holder committed while the insert waited on it, or
/// replaced an expired key meanwhile).
const STORE: &str = "
WITH input AS (
    SELECT nextval('hookgate_event_id') AS id, t.*
    FROM unnest($1::text[], $2::text[], $3::int8[], $4::int8[], $5::int8[], $6::bytea[],
            $7::text[], $8::text[], $9::text[])
        WITH ORDINALITY AS t(source, key, stored_ms, expires_ms, received_ms, record,
            provider, event, delivery_id, ord)
),
won AS (
    INSERT INTO hookgate_seen AS s (source, key, event_id, stored_ms, expires_ms)
    SELECT source, key, id, stored_ms, expires_ms FROM input ORDER BY source, key
    ON CONFLICT (source, key) DO UPDATE
        SET event_id = EXCLUDED.event_id, stored_ms = EXCLUDED.stored_ms,
            expires_ms = EXCLUDED.expires_ms
        WHERE s.expires_ms <= EXCLUDED.stored_ms
    RETURNING s.event_id
),
ev AS (
    INSERT INTO hookgate_events (id, received_ms, source, provider, event, delivery_id, record)
    SELECT i.id, i.received_ms, i.source, i.provider, i.event, i.delivery_id, i.record
    FROM input i JOIN won w ON w.event_id = i.id
    RETURNING id, received_ms
),
inbox AS (
    INSERT INTO hookgate_inbox (event_id, received_ms) SELECT id, received_ms FROM ev
)
SELECT i.ord, w.event_id IS NOT NULL,
    coalesce(w.event_id, (
        SELECT h.event_id FROM hookgate_seen h
        WHERE h.source = i.source AND h.key = i.key AND h.expires_ms > i.stored_ms))
FROM input i LEFT JOIN won w ON w.event_id = i.id";

/// The ids the keys that lost are stored under, read after the commit
/// (their holders committed before: the insert waited for them).
const HOLDERS: &str = "
SELECT t.ord, s.event_id
FROM unnest($1::text[], $2::text[]) WITH ORDINALITY AS t(source, key, ord)
JOIN hookgate_seen s ON s.source = t.source AND s.key = t.key";

/// Stores the appends `unique` of `batch` (distinct keys) in one
/// transaction; answers each, in that order (`None`: a duplicate whose
/// holder could not be found).
async fn store(db: &Db, batch: &[Job], unique: &[usize]) -> Result<Vec<Option<Appended>>, Retry> {
    let jobs: Vec<&Job> = unique.iter().map(|&i| &batch[i]).collect();
    let conn = db.pool.get().await.map_err(|e| pool_err(&db.health, e))?;
    let sources: Vec<&str> = jobs.iter().map(|j| j.source.as_str()).collect();
    let keys: Vec<&str> = jobs.iter().map(|j| j.key.as_str()).collect();
    let stored: Vec<i64> = jobs.iter().map(|j| j.stored_ms).collect();
    let expires: Vec<i64> = jobs.iter().map(|j| j.expires_ms).collect();
    let received: Vec<i64> = jobs.iter().map(|j| j.received_ms).collect();
    let records: Vec<&[u8]> = jobs.iter().map(|j| j.record.as_slice()).collect();
    let providers: Vec<&str> = jobs.iter().map(|j| j.provider.as_str()).collect();
    let events: Vec<&str> = jobs.iter().map(|j| j.event.as_str()).collect();
    let delivery_ids: Vec<&str> = jobs.iter().map(|j| j.delivery_id.as_str()).collect();
    let done = async {
        let stmt = conn.prepare_cached(STORE).await?;
        let params: [&(dyn tokio_postgres::types::ToSql + Sync); 9] = [
            &sources,
            &keys,
            &stored,
            &expires,
            &received,
            &records,
            &providers,
            &events,
            &delivery_ids,
        ];
        // One round trip: each request is sent when its future is first
        // polled, and `join!` polls them in order. When the statement
        // fails, the COMMIT finds the transaction aborted and rolls it
        // back; when it succeeded, the COMMIT's answer is the commit's.
        let (begun, rows, committed) = tokio::join!(
            conn.batch_execute("BEGIN"),
            conn.query(&stmt, &params),
            conn.batch_execute("COMMIT"),
        );
        begun?;
        let rows = rows?;
        committed?;
        let mut out: Vec<Option<Appended>> = vec![None; jobs.len()];
        for row in rows {
            let (ord, won, id): (i64, bool, Option<i64>) = (row.get(0), row.get(1), row.get(2));
            out[ord as usize - 1] = id.map(|id| match won {
                true => Appended::Queued(EventId(id as u64)),
                false => Appended::Duplicate(EventId(id as u64)),
            });
        }
        Ok::<_, tokio_postgres::Error>(out)
    }
    .await;
    match done {
        Ok(mut out) => {
            // Committed: a failure from here on leaves the rest unanswered
            // (503), never tried again.
            let lost: Vec<usize> = (0..jobs.len()).filter(|&i| out[i].is_none()).collect();
            if !lost.is_empty() {
                let s: Vec<&str> = lost.iter().map(|&i| sources[i]).collect();
                let k: Vec<&str> = lost.iter().map(|&i| keys[i]).collect();
                let found = match conn.prepare_cached(HOLDERS).await {
                    Ok(stmt) => conn.query(&stmt, &[&s, &k]).await,
                    Err(e) => Err(e),
                };
                match found {
                    Ok(rows) => {
                        for row in rows {
                            let (ord, id): (i64, i64) = (row.get(0), row.get(1));
                            out[lost[ord as usize - 1]] =
                                Some(Appended::Duplicate(EventId(id as u64)));
                        }
                    }
                    Err(e) => {
                        let e = conn_err(&db.health, &db.pool, conn, e);
                        tracing::warn!(error = %e, "cannot look up the events duplicates are of");
                    }
                }
            }
            Ok(out)
        }
        Err(e) if partitions::no_partition(&e) => Err(Retry::Partition(
            received.iter().map(|&ms| partitions::day_of(ms)).collect(),
        )),
        Err(e)
            if e.code() == Some(&tokio_postgres::error::SqlState::T_R_DEADLOCK_DETECTED)
                || e.code()
                    == Some(&tokio_postgres::error::SqlState::T_R_SERIALIZATION_FAILURE) =>
        {
            Err(Retry::Conflict)
        }
        Err(e) => Err(Retry::Fail(conn_err(&db.health, &db.pool, conn, e))),
    }
}
