//! The embedded backend: sled, one database under `data_dir`.
//!
//! Trees: `inbox` (event id → [`StoredEvent`]), `seen` (source ‖ 0 ‖ dedupe
//! key → expiry ‖ event id). The dedupe check and the inbox write happen in
//! one transaction, so a crash can never leave a "seen" key without its
//! event (which would turn the provider's retry into a silent duplicate).

use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::SystemTime;

use sled::transaction::{ConflictableTransactionError, TransactionError, Transactional};

use super::commit::GroupCommit;
use super::{
    unix_millis, Appended, BoxFuture, EventId, EventRecord, NewEvent, Queue, QueueError, Stats,
    StoredEvent,
};

/// sled's page cache; the default (1 GiB) would dwarf the daemon.
const CACHE_BYTES: u64 = 16 << 20;

#[derive(Debug)]
pub struct SledQueue {
    db: sled::Db,
    inbox: sled::Tree,
    seen: sled::Tree,
    /// `None`: every append fsyncs on its own (for measuring the difference).
    commit: Option<GroupCommit>,
    closed: AtomicBool,
    /// Set by a failed write, cleared by a good one; `/readyz` reads it.
    failing: AtomicBool,
}

impl SledQueue {
    /// Opens (or creates) the queue in `dir`. Must run inside a tokio runtime
    /// when `group_commit` is on: the flusher is a task.
    pub fn open(dir: &Path, group_commit: bool) -> Result<SledQueue, QueueError> {
        let db = sled::Config::new()
            .path(dir)
            .cache_capacity(CACHE_BYTES)
            // We fsync when a request needs it; no background flushing.
            .flush_every_ms(None)
            .open()?;
        let inbox = db.open_tree("inbox")?;
        let seen = db.open_tree("seen")?;
        let commit = group_commit.then(|| GroupCommit::start(db.clone()));
        Ok(SledQueue {
            db,
            inbox,
            seen,
            commit,
            closed: AtomicBool::new(false),
            failing: AtomicBool::new(false),
        })
    }

    /// Every event in the inbox, oldest first.
    pub fn inbox(&self) -> Result<Vec<(EventId, EventRecord)>, QueueError> {
        self.inbox
            .iter()
            .map(|kv| {
                let (k, v) = kv?;
                let id = EventId(u64::from_be_bytes(k.as_ref().try_into().map_err(|_| {
                    QueueError::Corrupt {
                        key: hex::encode(&k),
                        reason: "inbox key is not 8 bytes".into(),
                    }
                })?));
                let record = StoredEvent::decode(&v)
                    .map_err(|e| QueueError::Corrupt {
                        key: id.to_string(),
                        reason: e.to_string(),
                    })?
                    .into_record();
                Ok((id, record))
            })
            .collect()
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

    /// Fsyncs whatever is pending (used at shutdown).
    pub fn flush(&self) -> Result<(), QueueError> {
        self.db.flush()?;
        Ok(())
    }

    async fn durable(&self) -> Result<(), QueueError> {
        let r = match &self.commit {
            Some(gc) => gc.durable().await,
            None => {
                let db = self.db.clone();
                tokio::task::spawn_blocking(move || {
                    db.flush().map(drop).map_err(std::io::Error::other)
                })
                .await
                .unwrap_or_else(|e| Err(std::io::Error::other(e)))
            }
        };
        r.map_err(QueueError::Storage)
    }

    async fn append_inner(&self, event: NewEvent, now: SystemTime) -> Result<Appended, QueueError> {
        if self.closed.load(Ordering::Acquire) {
            return Err(QueueError::ShuttingDown);
        }
        let id = EventId(self.db.generate_id()?);
        let key = id.0.to_be_bytes();
        let now_ms = unix_millis(now);
        let expiry = now_ms.saturating_add(event.dedupe_window.as_millis() as u64);
        let seen_key = seen_key(&event.record.source, &event.dedupe_key);
        let seen_val = sled::IVec::from(encode_seen(expiry, id).as_slice());
        let body = sled::IVec::from(StoredEvent::V1(event.record).encode());

        let result = (&self.seen, &self.inbox).transaction(|(seen, inbox)| {
            if let Some(prev) = seen.get(&seen_key)? {
                if let Some((prev_expiry, prev_id)) = decode_seen(&prev) {
                    if prev_expiry > now_ms {
                        return Err(ConflictableTransactionError::Abort(prev_id));
                    }
                }
            }
            seen.insert(seen_key.as_slice(), seen_val.clone())?;
            inbox.insert(&key, body.clone())?;
            Ok(())
        });
        match result {
            Ok(()) => {}
            Err(TransactionError::Abort(prev)) => {
                // The first copy may not be on disk yet; answer for it only
                // once it is.
                self.durable().await?;
                return Ok(Appended::Duplicate(prev));
            }
            Err(TransactionError::Storage(e)) => {
                self.failing.store(true, Ordering::Release);
                return Err(e.into());
            }
        }
        match self.durable().await {
            Ok(()) => {
                self.failing.store(false, Ordering::Release);
                Ok(Appended::Queued(id))
            }
            Err(e) => {
                self.failing.store(true, Ordering::Release);
                // Take it back, so the provider's retry is not a "duplicate"
                // of an event that may never reach the disk.
                let undo = (&self.seen, &self.inbox).transaction(|(seen, inbox)| {
                    if seen.get(&seen_key)?.as_ref() == Some(&seen_val) {
                        seen.remove(seen_key.as_slice())?;
                    }
                    inbox.remove(&key)?;
                    Ok::<_, ConflictableTransactionError<()>>(())
                });
                if let Err(undo) = undo {
                    tracing::error!(event = %id, error = ?undo, "cannot take back an event whose fsync failed");
                }
                Err(e)
            }
        }
    }
}

impl Queue for SledQueue {
    fn append(
        &self,
        event: NewEvent,
        now: SystemTime,
    ) -> BoxFuture<'_, Result<Appended, QueueError>> {
        Box::pin(self.append_inner(event, now))
    }

    fn writable(&self) -> bool {
        !self.closed.load(Ordering::Acquire) && !self.failing.load(Ordering::Acquire)
    }

    fn stats(&self) -> Result<Stats, QueueError> {
        Ok(Stats {
            inbox: self.inbox.len() as u64,
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

fn encode_seen(expiry_ms: u64, id: EventId) -> [u8; 16] {
    let mut v = [0; 16];
    v[..8].copy_from_slice(&expiry_ms.to_be_bytes());
    v[8..].copy_from_slice(&id.0.to_be_bytes());
    v
}

fn decode_seen(v: &[u8]) -> Option<(u64, EventId)> {
    let expiry = u64::from_be_bytes(v.get(..8)?.try_into().ok()?);
    let id = u64::from_be_bytes(v.get(8..16)?.try_into().ok()?);
    Some((expiry, EventId(id)))
}

#[cfg(test)]
mod tests;
