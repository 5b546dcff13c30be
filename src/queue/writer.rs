//! The two threads behind the queue.
//!
//! The **writer** takes every append waiting (a batch: group commit),
//! checks dedupe keys and writes the batch to the event log (`log.rs`).
//! The **syncer** makes everything written so far durable with one
//! `fdatasync`, then answers those requests; meanwhile the writer prepares
//! and writes the next batch. Under load one sync answers dozens of
//! requests; alone, a request costs one sync. No sled call and no sync
//! ever runs on a tokio worker.
//!
//! The **indexer** then records each event in sled — a pointer in `inbox`
//! (id → frame length), its dedupe key in `seen`, and how far into the log
//! it has got in `meta` — and every second makes sled durable. After a
//! crash, whatever the log has past that point is indexed again.

use std::collections::HashMap;
use std::fs::File;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc as std_mpsc, Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use tokio::sync::{mpsc, oneshot};

use super::log::{self, Log, LogEntry, LogEntryRef};
use super::{Appended, EventId, QueueError};

/// How often the indexer makes sled durable.
const CHECKPOINT_EVERY: Duration = Duration::from_secs(1);
/// sled `meta` key: the log position (u64 BE of `seq << 40 | offset`) sled
/// has indexed everything before.
pub const INDEXED_KEY: &[u8] = b"log_indexed";

pub type Reply = oneshot::Sender<Result<Appended, QueueError>>;

/// One append waiting for the writer.
pub struct Job {
    pub seen_key: Vec<u8>,
    pub expiry_ms: u64,
    pub now_ms: u64,
    pub value: Vec<u8>,
    pub reply: Reply,
}

/// A logged event, for the indexer.
#[derive(Debug, Clone)]
pub struct Logged {
    pub id: EventId,
    pub len: u32,
    pub seen_key: Vec<u8>,
    pub expiry_ms: u64,
}

/// sled and its log file.
pub struct Store {
    pub db: sled::Db,
    pub inbox: sled::Tree,
    pub seen: sled::Tree,
    pub meta: sled::Tree,
    /// sled's log file, opened by us: sled only calls `sync_file_range`,
    /// which flushes neither the device cache nor metadata; `fdatasync` on
    /// the same file does.
    pub file: File,
}

impl Store {
    /// Records logged events in sled (not yet durable). Recording the same
    /// events again writes the same keys and values.
    pub fn index(&self, events: &[Logged]) -> Result<(), QueueError> {
        let Some(last) = events.last() else {
            return Ok(());
        };
        let mut inbox = sled::Batch::default();
        let mut seen = sled::Batch::default();
        for e in events {
            inbox.insert(&e.id.0.to_be_bytes(), &e.len.to_be_bytes());
            seen.insert(e.seen_key.as_slice(), &encode_seen(e.expiry_ms, e.id)[..]);
        }
        // In this order: sled replays its log in order, so a position or
        // dedupe key that survived a crash has its pointers with it.
        self.inbox.apply_batch(inbox)?;
        self.seen.apply_batch(seen)?;
        let end = last.id.0 + u64::from(last.len);
        self.meta.insert(INDEXED_KEY, &end.to_be_bytes())?;
        Ok(())
    }

    /// Makes what sled holds durable.
    pub fn checkpoint(&self) -> Result<(), QueueError> {
        self.db.flush()?;
        self.file.sync_data().map_err(QueueError::Storage)
    }

    /// The log position sled has indexed everything before.
    pub fn indexed(&self) -> Result<EventId, QueueError> {
        Ok(EventId(
            self.meta
                .get(INDEXED_KEY)?
                .and_then(|v| Some(u64::from_be_bytes(v.as_ref().try_into().ok()?)))
                .unwrap_or(0),
        ))
    }

    /// Indexes what the log has past the indexed position, makes sled
    /// durable, and returns how many events that was and the last segment
    /// holding events.
    pub fn recover(&self, dir: &std::path::Path) -> Result<(usize, u64), QueueError> {
        let (from_seq, from_offset) = log::place_of(self.indexed()?);
        let mut replayed = 0;
        let mut last_used = from_seq;
        for seq in log::segments(dir).map_err(QueueError::Storage)? {
            if seq < from_seq {
                continue;
            }
            let start = if seq == from_seq { from_offset } else { 0 };
            let found = log::scan(dir, seq, start).map_err(QueueError::Storage)?;
            if found.is_empty() {
                continue;
            }
            last_used = seq;
            let logged: Vec<Logged> = found
                .into_iter()
                .map(|f| {
                    let LogEntry::V1 {
                        seen_key,
                        expiry_ms,
                        ..
                    } = f.entry;
                    Logged {
                        id: f.id,
                        len: f.len,
                        seen_key: seen_key.into_vec(),
                        expiry_ms,
                    }
                })
                .collect();
            replayed += logged.len();
            self.index(&logged)?;
        }
        self.checkpoint()?;
        Ok((replayed, last_used))
    }
}

/// State the request side, the writer and the indexer share.
#[derive(Default)]
pub struct Shared {
    /// Acknowledged events sled does not have yet, by dedupe key.
    pending: Mutex<HashMap<Vec<u8>, (u64, EventId)>>,
    progress: Mutex<Progress>,
    caught_up: Condvar,
    /// Rung when the indexer has recorded new events (the router waits on it).
    pub indexed: tokio::sync::Notify,
    /// Set by a failed commit, cleared by a good one (for `/readyz`).
    pub failing: AtomicBool,
    /// Set for good by a failed sync.
    poisoned: AtomicBool,
}

/// Log positions: acknowledged up to, indexed up to.
#[derive(Default, Clone, Copy)]
struct Progress {
    acked: u64,
    indexed: u64,
}

impl Shared {
    /// Waits (up to `limit`) until sled has every acknowledged event.
    pub fn settle(&self, limit: Duration) {
        let progress = self.progress.lock().expect("progress lock");
        let target = progress.acked;
        let _ = self
            .caught_up
            .wait_timeout_while(progress, limit, |p| p.indexed < target)
            .expect("progress lock");
    }
}

/// A batch written to the log, waiting for its sync.
struct Written {
    file: Arc<File>,
    answers: Vec<(Reply, Appended)>,
    logged: Vec<Logged>,
}

/// The writer loop; runs until every sender is gone. `batch_max` 1 turns
/// group commit off: each event is written and synced on its own.
pub fn run_writer(
    mut log: Log,
    store: Arc<Store>,
    shared: Arc<Shared>,
    mut rx: mpsc::Receiver<Job>,
    batch_max: usize,
    to_indexer: std_mpsc::Sender<Vec<Logged>>,
) {
    let (to_syncer, written) = std_mpsc::channel::<Written>();
    let syncer = {
        let shared = shared.clone();
        let to_indexer = to_indexer.clone();
        std::thread::Builder::new()
            .name("hookgate-sync".into())
            .spawn(move || run_syncer(&shared, written, &to_indexer))
            .expect("spawn the sync thread")
    };
    let mut batch = Vec::with_capacity(batch_max);
    while let Some(first) = rx.blocking_recv() {
        batch.push(first);
        while batch.len() < batch_max {
            match rx.try_recv() {
                Ok(job) => batch.push(job),
                Err(_) => break,
            }
        }
        let jobs = std::mem::take(&mut batch);
        if shared.poisoned.load(Ordering::Acquire) {
            fail(jobs, "the event log could not be synced; restart hookgate");
            continue;
        }
        match commit(&mut log, &store, &shared, &jobs) {
            Ok(Committed {
                outcomes,
                logged,
                file,
            }) => {
                let answers = jobs.into_iter().map(|j| j.reply).zip(outcomes).collect();
                let written = Written {
                    file,
                    answers,
                    logged,
                };
                if batch_max == 1 {
                    sync(&shared, vec![written], &to_indexer);
                } else if to_syncer.send(written).is_err() {
                    break;
                }
            }
            Err(e) => {
                shared.failing.store(true, Ordering::Release);
                tracing::error!(error = %e, events = jobs.len(), "cannot store a batch of events");
                fail(jobs, &e.to_string());
            }
        }
    }
    drop(to_syncer);
    let _ = syncer.join();
}

fn fail(jobs: Vec<Job>, message: &str) {
    for job in jobs {
        let _ = job
            .reply
            .send(Err(QueueError::Storage(std::io::Error::other(
                message.to_owned(),
            ))));
    }
}

/// A written batch: each job's outcome, what the indexer must record, and
/// the file to sync.
struct Committed {
    outcomes: Vec<Appended>,
    logged: Vec<Logged>,
    file: Arc<File>,
}

/// Dedupes and writes one batch.
fn commit(
    log: &mut Log,
    store: &Store,
    shared: &Shared,
    jobs: &[Job],
) -> Result<Committed, QueueError> {
    /// What a job turned out to be before logging.
    enum Plan {
        Duplicate(EventId),
        /// Same key as an earlier job of this batch (its index among `new`).
        SameAs(usize),
        New(usize),
    }
    let mut plans = Vec::with_capacity(jobs.len());
    let mut in_batch: HashMap<&[u8], usize> = HashMap::new();
    let mut entries = Vec::new();
    let mut new_jobs = Vec::new();
    {
        let pending = shared.pending.lock().expect("pending lock");
        for job in jobs {
            let key = job.seen_key.as_slice();
            if let Some(&n) = in_batch.get(key) {
                plans.push(Plan::SameAs(n));
                continue;
            }
            // Pending first: the indexer removes a key only after sled has it.
            let earlier = match pending.get(key) {
                Some(&found) => Some(found),
                None => store.seen.get(key)?.and_then(|v| decode_seen(&v)),
            };
            if let Some((expiry, id)) = earlier {
                if expiry > job.now_ms {
                    // Its answer waits for the sync that covers the first
                    // copy: this batch is synced with or after it.
                    plans.push(Plan::Duplicate(id));
                    continue;
                }
            }
            in_batch.insert(key, entries.len());
            plans.push(Plan::New(entries.len()));
            new_jobs.push(job);
            entries.push(LogEntryRef::V1 {
                seen_key: &job.seen_key,
                expiry_ms: job.expiry_ms,
                record: &job.value,
            });
        }
    }
    let log::Placed { placed, file } = log.write(&entries).map_err(QueueError::Storage)?;
    let logged: Vec<Logged> = new_jobs
        .iter()
        .zip(&placed)
        .map(|(job, &(id, len))| Logged {
            id,
            len,
            seen_key: job.seen_key.clone(),
            expiry_ms: job.expiry_ms,
        })
        .collect();
    {
        // Later batches must see these as duplicates, even before the sync.
        let mut pending = shared.pending.lock().expect("pending lock");
        for e in &logged {
            pending.insert(e.seen_key.clone(), (e.expiry_ms, e.id));
        }
    }
    let outcomes = plans
        .into_iter()
        .map(|p| match p {
            Plan::Duplicate(id) => Appended::Duplicate(id),
            Plan::SameAs(n) => Appended::Duplicate(placed[n].0),
            Plan::New(n) => Appended::Queued(placed[n].0),
        })
        .collect();
    Ok(Committed {
        outcomes,
        logged,
        file,
    })
}

fn run_syncer(
    shared: &Shared,
    written: std_mpsc::Receiver<Written>,
    to_indexer: &std_mpsc::Sender<Vec<Logged>>,
) {
    while let Ok(first) = written.recv() {
        let mut group = vec![first];
        group.extend(written.try_iter());
        sync(shared, group, to_indexer);
    }
}

/// Makes written batches durable with one sync per file, then answers them.
/// A failed sync poisons the log: what the page cache holds after a failed
/// `fdatasync` is unknowable, so nothing more is acknowledged until a
/// restart reads back what really is on disk.
fn sync(shared: &Shared, group: Vec<Written>, to_indexer: &std_mpsc::Sender<Vec<Logged>>) {
    let mut files: Vec<&Arc<File>> = Vec::new();
    for w in &group {
        if !files.iter().any(|f| Arc::ptr_eq(f, &w.file)) {
            files.push(&w.file);
        }
    }
    let synced = files.iter().try_for_each(|f| f.sync_data());
    if let Err(e) = synced.and_then(|()| {
        if shared.poisoned.load(Ordering::Acquire) {
            Err(std::io::Error::other("an earlier sync failed"))
        } else {
            Ok(())
        }
    }) {
        shared.poisoned.store(true, Ordering::Release);
        shared.failing.store(true, Ordering::Release);
        tracing::error!(error = %e, "cannot sync the event log; refusing events until restart");
        for w in group {
            for (reply, _) in w.answers {
                let _ = reply.send(Err(QueueError::Storage(std::io::Error::other(format!(
                    "sync failed: {e}"
                )))));
            }
        }
        return;
    }
    shared.failing.store(false, Ordering::Release);
    for w in group {
        if let Some(last) = w.logged.last() {
            shared.progress.lock().expect("progress lock").acked = last.id.0 + u64::from(last.len);
        }
        for (reply, outcome) in w.answers {
            let _ = reply.send(Ok(outcome));
        }
        if !w.logged.is_empty() {
            let _ = to_indexer.send(w.logged);
        }
    }
}

/// The indexer loop; runs until the writer is gone, then checkpoints.
pub fn run_indexer(store: Arc<Store>, shared: Arc<Shared>, rx: std_mpsc::Receiver<Vec<Logged>>) {
    let mut last_checkpoint = Instant::now();
    loop {
        let first = match rx.recv_timeout(CHECKPOINT_EVERY) {
            Ok(batch) => Some(batch),
            Err(std_mpsc::RecvTimeoutError::Timeout) => None,
            Err(std_mpsc::RecvTimeoutError::Disconnected) => break,
        };
        for batch in first.into_iter().chain(rx.try_iter()) {
            if let Err(e) = index(&store, &shared, &batch) {
                // The log keeps the events; the next start indexes them.
                tracing::error!(error = %e, "cannot index logged events into sled; the log keeps them");
                shared.failing.store(true, Ordering::Release);
            }
        }
        // The router and dispatcher write to sled too: checkpoint on time,
        // not only after new events.
        if last_checkpoint.elapsed() >= CHECKPOINT_EVERY {
            if let Err(e) = store.checkpoint() {
                tracing::error!(error = %e, "sled checkpoint failed; the log keeps everything");
            }
            last_checkpoint = Instant::now();
        }
    }
    if let Err(e) = store.checkpoint() {
        tracing::error!(error = %e, "final sled checkpoint failed; the next start re-indexes from the log");
    }
}

fn index(store: &Store, shared: &Shared, batch: &[Logged]) -> Result<(), QueueError> {
    store.index(batch)?;
    let mut pending = shared.pending.lock().expect("pending lock");
    for e in batch {
        if pending.get(&e.seen_key).is_some_and(|&(_, id)| id == e.id) {
            pending.remove(&e.seen_key);
        }
    }
    drop(pending);
    if let Some(last) = batch.last() {
        shared.progress.lock().expect("progress lock").indexed = last.id.0 + u64::from(last.len);
        shared.caught_up.notify_all();
        shared.indexed.notify_one();
    }
    Ok(())
}

pub fn encode_seen(expiry_ms: u64, id: EventId) -> [u8; 16] {
    let mut v = [0; 16];
    v[..8].copy_from_slice(&expiry_ms.to_be_bytes());
    v[8..].copy_from_slice(&id.0.to_be_bytes());
    v
}

pub fn decode_seen(v: &[u8]) -> Option<(u64, EventId)> {
    let expiry = u64::from_be_bytes(v.get(..8)?.try_into().ok()?);
    let id = u64::from_be_bytes(v.get(8..16)?.try_into().ok()?);
    Some((expiry, EventId(id)))
}
