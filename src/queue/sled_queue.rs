//! The embedded backend: sled, one database under `data_dir`.
//!
//! Layout under `data_dir`: `log/` (the events themselves, `log.rs`) and
//! `sled/` with the trees `inbox` (event id → frame length, in arrival
//! order), `seen` (source ‖ 0 ‖ dedupe key → expiry ‖ event id) and `meta`
//! (how far into the log sled has indexed). Accepted events go through the
//! writer and indexer threads (`writer.rs`).

use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::SystemTime;

use tokio::sync::{mpsc, oneshot};

use super::log::{self, Log};
use super::writer::{self, decode_seen, Job, Shared, Store};
use super::{
    unix_millis, Appended, BoxFuture, EventId, EventRecord, NewEvent, Queue, QueueError, Stats,
};

/// sled's page cache; the default (1 GiB) would dwarf the daemon.
const CACHE_BYTES: u64 = 8 << 20;
/// sled's log segment size (its default). Items larger than a quarter of it
/// would go to blob files that sled does not fsync; sled holds only small
/// pointers and keys, so no node comes near that.
const SEGMENT_BYTES: usize = 512 << 10;
/// Most appends one commit takes.
const BATCH_MAX: usize = 1024;
/// How long readers wait for the indexer to catch up with what was acknowledged.
const SETTLE_LIMIT: std::time::Duration = std::time::Duration::from_secs(10);

pub struct SledQueue {
    pub(super) db: sled::Db,
    pub(super) inbox: sled::Tree,
    /// Pending deliveries by due time (`delivery.rs`).
    pub(super) deliveries: sled::Tree,
    /// Dead deliveries by id.
    pub(super) dead: sled::Tree,
    /// Events no route matched, by id (kept for inspection).
    pub(super) unmatched: sled::Tree,
    log_dir: std::path::PathBuf,
    reader: log::Reader,
    seen: sled::Tree,
    store: Arc<Store>,
    shared: Arc<Shared>,
    jobs: mpsc::Sender<Job>,
    closed: AtomicBool,
}

impl std::fmt::Debug for SledQueue {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SledQueue").finish_non_exhaustive()
    }
}

impl SledQueue {
    /// Opens (or creates) the queue in `dir`: replays the log into sled,
    /// then starts the writer and indexer threads. `group_commit` off makes
    /// every append its own commit (to measure the difference).
    pub fn open(dir: &Path, group_commit: bool) -> Result<SledQueue, QueueError> {
        let sled_dir = dir.join("sled");
        let db = sled::Config::new()
            .path(&sled_dir)
            .cache_capacity(CACHE_BYTES)
            .segment_size(SEGMENT_BYTES)
            // The indexer makes sled durable at its checkpoints.
            .flush_every_ms(None)
            .open()?;
        let inbox = db.open_tree("inbox")?;
        let seen = db.open_tree("seen")?;
        let meta = db.open_tree("meta")?;
        let deliveries = db.open_tree("deliveries")?;
        let dead = db.open_tree("dead")?;
        let unmatched = db.open_tree("unmatched")?;
        let file = std::fs::File::open(sled_dir.join("db")).map_err(QueueError::Storage)?;
        let store = Arc::new(Store {
            db: db.clone(),
            inbox: inbox.clone(),
            seen,
            meta,
            file,
        });
        let log_dir = dir.join("log");
        let (replayed, last_used) = store.recover(&log_dir)?;
        if replayed > 0 {
            tracing::info!(
                events = replayed,
                "indexed acknowledged events found in the log"
            );
        }
        std::fs::create_dir_all(&log_dir).map_err(QueueError::Storage)?;
        log::remove_unused(&log_dir, last_used).map_err(QueueError::Storage)?;
        let log = Log::create(&log_dir, last_used).map_err(QueueError::Storage)?;
        // The directories just created must survive a power loss too.
        for d in [dir, sled_dir.as_path()] {
            std::fs::File::open(d)
                .and_then(|f| f.sync_all())
                .map_err(QueueError::Storage)?;
        }

        let shared = Arc::new(Shared::default());
        let (jobs, rx) = mpsc::channel(BATCH_MAX * 4);
        let (to_indexer, indexed) = std::sync::mpsc::channel();
        let batch_max = if group_commit { BATCH_MAX } else { 1 };
        {
            let (store, shared) = (store.clone(), shared.clone());
            std::thread::Builder::new()
                .name("hookgate-writer".into())
                .spawn(move || writer::run_writer(log, store, shared, rx, batch_max, to_indexer))
                .map_err(QueueError::Storage)?;
        }
        {
            let (store, shared) = (store.clone(), shared.clone());
            std::thread::Builder::new()
                .name("hookgate-indexer".into())
                .spawn(move || writer::run_indexer(store, shared, indexed))
                .map_err(QueueError::Storage)?;
        }
        Ok(SledQueue {
            db,
            inbox,
            deliveries,
            dead,
            unmatched,
            reader: log::Reader::new(&log_dir),
            log_dir,
            seen: store.seen.clone(),
            store,
            shared,
            jobs,
            closed: AtomicBool::new(false),
        })
    }

    /// Every event in the inbox, oldest first.
    pub fn inbox(&self) -> Result<Vec<(EventId, EventRecord)>, QueueError> {
        self.shared.settle(SETTLE_LIMIT);
        self.inbox_page(usize::MAX)
    }

    /// Waits until the indexer has recorded new events (or returns at once
    /// when it did since the last call).
    pub async fn indexed(&self) {
        self.shared.indexed.notified().await;
    }

    /// Every event the log holds, routed or not, oldest first (for
    /// inspection and tests; reads every segment).
    pub fn events(&self) -> Result<Vec<(EventId, EventRecord)>, QueueError> {
        self.shared.settle(SETTLE_LIMIT);
        let mut out = Vec::new();
        for seq in log::segments(&self.log_dir).map_err(QueueError::Storage)? {
            for found in log::scan(&self.log_dir, seq, 0).map_err(QueueError::Storage)? {
                let log::LogEntry::V1 { record, .. } = found.entry;
                let record = EventRecord::decode(&record).map_err(|e| QueueError::Corrupt {
                    key: found.id.to_string(),
                    reason: e.to_string(),
                })?;
                out.push((found.id, record));
            }
        }
        Ok(out)
    }

    /// Up to `n` events from the front of the inbox, oldest first (what the
    /// indexer has recorded so far; no waiting).
    pub fn inbox_page(&self, n: usize) -> Result<Vec<(EventId, EventRecord)>, QueueError> {
        self.inbox
            .iter()
            .take(n)
            .map(|kv| {
                let (k, v) = kv?;
                let corrupt = |reason: String| QueueError::Corrupt {
                    key: hex::encode(&k),
                    reason,
                };
                let id = EventId(u64::from_be_bytes(
                    k.as_ref()
                        .try_into()
                        .map_err(|_| corrupt("inbox key is not 8 bytes".into()))?,
                ));
                let len = u32::from_be_bytes(
                    v.as_ref()
                        .try_into()
                        .map_err(|_| corrupt("inbox value is not 4 bytes".into()))?,
                );
                let log::LogEntry::V1 { record, .. } = self.reader.read(id, len)?;
                let record = EventRecord::decode(&record).map_err(|e| corrupt(e.to_string()))?;
                Ok((id, record))
            })
            .collect()
    }

    /// Deletes log segments that are wholly indexed, hold no event still
    /// waiting to be routed, and were last written more than `retention`
    /// ago. Delivery records carry their own bodies, so pending and dead
    /// deliveries do not need the log. Returns how many segments went.
    pub fn prune_log(
        &self,
        now: SystemTime,
        retention: std::time::Duration,
    ) -> Result<usize, QueueError> {
        let (indexed_seq, _) = log::place_of(self.store.indexed()?);
        let mut removed = 0;
        for seq in log::segments(&self.log_dir).map_err(QueueError::Storage)? {
            // The writer may still be in `indexed_seq`; later ones are new.
            if seq >= indexed_seq {
                break;
            }
            let start = log::id_of(seq, 0).0.to_be_bytes();
            let end = log::id_of(seq + 1, 0).0.to_be_bytes();
            if self.inbox.range(start..end).next().is_some() {
                continue;
            }
            let age = log::modified(&self.log_dir, seq)
                .ok()
                .and_then(|m| now.duration_since(m).ok())
                .unwrap_or_default();
            if age < retention {
                continue;
            }
            self.reader.forget(seq);
            log::remove(&self.log_dir, seq).map_err(QueueError::Storage)?;
            removed += 1;
        }
        Ok(removed)
    }

    /// Forgets dedupe keys whose window has passed. Returns how many.
    pub fn prune_seen(&self, now: SystemTime) -> Result<usize, QueueError> {
        self.shared.settle(SETTLE_LIMIT);
        let now_ms = unix_millis(now);
        let mut removed = 0;
        for kv in self.seen.iter() {
            let (k, v) = kv?;
            if decode_seen(&v).is_none_or(|(expiry, _)| expiry <= now_ms) {
                // Only if unchanged: a fresh delivery may have just reused the key.
                if self
                    .seen
                    .compare_and_swap(&k, Some(v), None::<&[u8]>)?
                    .is_ok()
                {
                    removed += 1;
                }
            }
        }
        Ok(removed)
    }

    /// Waits for sled to hold every acknowledged event, and makes it
    /// durable (used at shutdown, so the next start has nothing to replay).
    pub fn flush(&self) -> Result<(), QueueError> {
        self.shared.settle(SETTLE_LIMIT);
        self.store.checkpoint()
    }
}

impl Queue for SledQueue {
    fn append(
        &self,
        event: NewEvent,
        now: SystemTime,
    ) -> BoxFuture<'_, Result<Appended, QueueError>> {
        Box::pin(async move {
            if self.closed.load(Ordering::Acquire) {
                return Err(QueueError::ShuttingDown);
            }
            // Encoding (and compressing) runs here, on the request's task,
            // so the writer thread only writes.
            let now_ms = unix_millis(now);
            let (reply, answer) = oneshot::channel();
            let job = Job {
                seen_key: seen_key(&event.record.source, &event.dedupe_key),
                expiry_ms: now_ms.saturating_add(event.dedupe_window.as_millis() as u64),
                now_ms,
                value: event.record.encode(),
                reply,
            };
            self.jobs
                .send(job)
                .await
                .map_err(|_| QueueError::ShuttingDown)?;
            answer.await.map_err(|_| QueueError::ShuttingDown)?
        })
    }

    fn writable(&self) -> bool {
        !self.closed.load(Ordering::Acquire) && !self.shared.failing.load(Ordering::Acquire)
    }

    fn stats(&self) -> Result<Stats, QueueError> {
        self.shared.settle(SETTLE_LIMIT);
        Ok(Stats {
            inbox: self.inbox.len() as u64,
            deliveries: self.deliveries.len() as u64,
            dead: self.dead.len() as u64,
            unmatched: self.unmatched.len() as u64,
            seen: self.seen.len() as u64,
            disk_bytes: self.db.size_on_disk()? + log::disk_bytes(&self.log_dir),
        })
    }

    fn close(&self) {
        self.closed.store(true, Ordering::Release);
    }
}

fn seen_key(source: &str, dedupe_key: &str) -> Vec<u8> {
    let mut k = Vec::with_capacity(source.len() + 1 + dedupe_key.len());
    k.extend_from_slice(source.as_bytes());
    k.push(0);
    k.extend_from_slice(dedupe_key.as_bytes());
    k
}

#[cfg(test)]
mod tests;
