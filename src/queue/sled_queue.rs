//! The embedded backend: sled, one database under `data_dir`.
//!
//! Trees: `inbox` (accepted events in arrival order, framed per commit; see
//! `inbox.rs`), `seen` (source ‖ 0 ‖ dedupe key → expiry ‖ event id). All
//! writes of accepted events go through the writer thread (`writer.rs`),
//! which batches them into one durable commit.

use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::SystemTime;

use tokio::sync::{mpsc, oneshot};

use super::inbox;
use super::writer::{self, decode_seen, Job, Store};
use super::{
    unix_millis, Appended, BoxFuture, EventId, EventRecord, NewEvent, Queue, QueueError, Stats,
};

/// sled's page cache; the default (1 GiB) would dwarf the daemon.
const CACHE_BYTES: u64 = 8 << 20;
/// sled's log segment size (its default). Items larger than a quarter of it
/// would go to blob files that sled does not fsync; `inbox::PART_BYTES`
/// keeps every node well below that.
const SEGMENT_BYTES: usize = 512 << 10;
/// Most appends one commit takes.
const BATCH_MAX: usize = 1024;

#[derive(Debug)]
pub struct SledQueue {
    db: sled::Db,
    inbox: sled::Tree,
    seen: sled::Tree,
    jobs: mpsc::Sender<Job>,
    /// sled's log file, for `fdatasync` (see `writer::Store::log`).
    log: std::fs::File,
    closed: AtomicBool,
    failing: Arc<AtomicBool>,
}

impl SledQueue {
    /// Opens (or creates) the queue in `dir` and starts its writer thread.
    /// `group_commit` off makes every append its own commit (to measure the
    /// difference).
    pub fn open(dir: &Path, group_commit: bool) -> Result<SledQueue, QueueError> {
        let db = sled::Config::new()
            .path(dir)
            .cache_capacity(CACHE_BYTES)
            .segment_size(SEGMENT_BYTES)
            // The writer makes each batch durable; nothing else flushes.
            .flush_every_ms(None)
            .open()?;
        let inbox = db.open_tree("inbox")?;
        let seen = db.open_tree("seen")?;
        let log = std::fs::File::open(dir.join("db")).map_err(QueueError::Storage)?;
        // The files sled just created must survive a power loss too.
        std::fs::File::open(dir)
            .and_then(|d| d.sync_all())
            .map_err(QueueError::Storage)?;
        let failing = Arc::new(AtomicBool::new(false));
        let (jobs, rx) = mpsc::channel(BATCH_MAX * 4);
        let store = Store {
            db: db.clone(),
            inbox: inbox.clone(),
            seen: seen.clone(),
            log: log.try_clone().map_err(QueueError::Storage)?,
            failing: failing.clone(),
        };
        let batch_max = if group_commit { BATCH_MAX } else { 1 };
        std::thread::Builder::new()
            .name("hookgate-writer".into())
            .spawn(move || writer::run(store, rx, batch_max))
            .map_err(QueueError::Storage)?;
        Ok(SledQueue {
            db,
            inbox,
            seen,
            jobs,
            log,
            closed: AtomicBool::new(false),
            failing,
        })
    }

    /// Every event in the inbox, oldest first.
    pub fn inbox(&self) -> Result<Vec<(EventId, EventRecord)>, QueueError> {
        let mut out = Vec::new();
        inbox::read_events(self.inbox.iter(), |id, bytes| {
            let record = EventRecord::decode(bytes).map_err(|e| QueueError::Corrupt {
                key: id.to_string(),
                reason: e.to_string(),
            })?;
            out.push((id, record));
            Ok(())
        })?;
        Ok(out)
    }

    /// Forgets dedupe keys whose window has passed. Returns how many.
    pub fn prune_seen(&self, now: SystemTime) -> Result<usize, QueueError> {
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

    /// Makes everything written so far durable (used at shutdown).
    pub fn flush(&self) -> Result<(), QueueError> {
        self.db.flush()?;
        self.log.sync_data().map_err(QueueError::Storage)
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
        !self.closed.load(Ordering::Acquire) && !self.failing.load(Ordering::Acquire)
    }

    fn stats(&self) -> Result<Stats, QueueError> {
        Ok(Stats {
            inbox: {
                let mut n = 0;
                inbox::read_events(self.inbox.iter(), |_, _| {
                    n += 1;
                    Ok(())
                })?;
                n
            },
            seen: self.seen.len() as u64,
            disk_bytes: self.db.size_on_disk()?,
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
