//! The one thread that writes accepted events: group commit.
//!
//! Requests hand their encoded record to this thread and wait. The thread
//! takes everything waiting (a batch), checks dedupe keys, writes the batch
//! to sled, makes it durable once, and answers every request of the batch.
//! Under load one fsync answers hundreds of requests; alone, a request costs
//! one fsync, as without batching. Async workers never block on sled.
//!
//! A batch's events go to the inbox as one framed byte stream cut into parts
//! of at most [`PART_BYTES`] (see `inbox.rs`): a few sled writes per batch
//! instead of one per event, and no sled value large enough to become a
//! separate blob file (which sled would not fsync).

use std::collections::HashMap;
use std::fs::File;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use tokio::sync::{mpsc, oneshot};

use super::inbox;
use super::{Appended, EventId, QueueError};

type Reply = oneshot::Sender<Result<Appended, QueueError>>;

/// One append waiting for the writer.
pub struct Job {
    pub seen_key: Vec<u8>,
    pub expiry_ms: u64,
    pub now_ms: u64,
    pub value: Vec<u8>,
    pub reply: Reply,
}

/// What the writer writes to.
pub struct Store {
    pub db: sled::Db,
    pub inbox: sled::Tree,
    pub seen: sled::Tree,
    /// sled's log file, opened by us: sled only calls `sync_file_range`,
    /// which neither flushes the device cache nor metadata. `fdatasync` on
    /// the same file does.
    pub log: File,
    /// Set by a failed batch, cleared by a good one (for `/readyz`).
    pub failing: Arc<AtomicBool>,
}

impl Store {
    /// Writes what sled holds in memory to disk, durably.
    pub fn make_durable(&self) -> Result<(), QueueError> {
        self.db.flush()?;
        self.log.sync_data().map_err(QueueError::Storage)
    }
}

/// Runs until every sender is gone. `batch_max` 1 turns group commit off.
///
/// Two stages overlap: this thread applies batch k+1 to sled while the
/// syncer thread makes batch k durable and answers it.
pub fn run(store: Store, mut rx: mpsc::Receiver<Job>, batch_max: usize) {
    let store = Arc::new(store);
    let (to_syncer, applied) = std::sync::mpsc::channel::<Applied>();
    let syncer = {
        let store = store.clone();
        std::thread::Builder::new()
            .name("hookgate-sync".into())
            .spawn(move || sync_loop(&store, applied))
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
        let applied = apply(&store, std::mem::take(&mut batch));
        if batch_max == 1 {
            // Group commit off: every event waits for its own sync.
            sync(&store, vec![applied]);
        } else if to_syncer.send(applied).is_err() {
            break;
        }
    }
    drop(to_syncer);
    let _ = syncer.join();
}

/// A batch written to sled (not yet durable), with what to answer.
struct Applied {
    answers: Vec<(Reply, Result<Appended, String>)>,
    /// What to take back if the sync fails.
    seen_keys: Vec<Vec<u8>>,
    part_keys: Vec<[u8; 12]>,
}

fn apply(store: &Store, batch: Vec<Job>) -> Applied {
    let mut stream = inbox::Stream::default();
    let mut seen = sled::Batch::default();
    let mut in_batch: HashMap<&[u8], EventId> = HashMap::new();
    let mut outcomes = Vec::with_capacity(batch.len());
    let mut seen_keys = Vec::new();
    let mut part_keys = Vec::new();
    let written: Result<(), QueueError> = (|| {
        for job in &batch {
            if let Some(id) = in_batch.get(job.seen_key.as_slice()) {
                outcomes.push(Appended::Duplicate(*id));
                continue;
            }
            if let Some(prev) = store.seen.get(&job.seen_key)? {
                if let Some((expiry, id)) = decode_seen(&prev) {
                    if expiry > job.now_ms {
                        outcomes.push(Appended::Duplicate(id));
                        continue;
                    }
                }
            }
            let id = EventId(store.db.generate_id()?);
            stream.push(id, &job.value);
            seen.insert(job.seen_key.as_slice(), &encode_seen(job.expiry_ms, id)[..]);
            in_batch.insert(&job.seen_key, id);
            seen_keys.push(job.seen_key.clone());
            outcomes.push(Appended::Queued(id));
        }
        // Inbox before seen: sled's log replays in order, so after a crash a
        // dedupe key never exists without its event.
        let mut inbox = sled::Batch::default();
        for (key, part) in stream.parts() {
            inbox.insert(&key[..], part);
            part_keys.push(key);
        }
        store.inbox.apply_batch(inbox)?;
        store.seen.apply_batch(seen)?;
        Ok(())
    })();
    drop(in_batch);
    let answers = match written {
        Ok(()) => batch
            .into_iter()
            .zip(outcomes)
            .map(|(job, outcome)| (job.reply, Ok(outcome)))
            .collect(),
        Err(e) => {
            let message = e.to_string();
            batch
                .into_iter()
                .map(|job| (job.reply, Err(message.clone())))
                .collect()
        }
    };
    Applied {
        answers,
        seen_keys,
        part_keys,
    }
}

fn sync_loop(store: &Store, applied: std::sync::mpsc::Receiver<Applied>) {
    while let Ok(first) = applied.recv() {
        let mut group = vec![first];
        group.extend(applied.try_iter());
        sync(store, group);
    }
}

/// Makes applied batches durable with one sync, then answers them.
fn sync(store: &Store, group: Vec<Applied>) {
    match store.make_durable() {
        Ok(()) => {
            store.failing.store(false, Ordering::Release);
            for applied in group {
                for (reply, outcome) in applied.answers {
                    let _ = reply
                        .send(outcome.map_err(|m| QueueError::Storage(std::io::Error::other(m))));
                }
            }
        }
        Err(e) => {
            store.failing.store(true, Ordering::Release);
            let events: usize = group.iter().map(|a| a.seen_keys.len()).sum();
            tracing::error!(error = %e, events, "cannot make a batch of events durable");
            let message = e.to_string();
            for applied in group {
                // Take back what may be half there, so the providers'
                // retries are not "duplicates" of events never on disk.
                for key in &applied.seen_keys {
                    let _ = store.seen.remove(key);
                }
                for key in &applied.part_keys {
                    let _ = store.inbox.remove(key);
                }
                for (reply, _) in applied.answers {
                    let _ = reply.send(Err(QueueError::Storage(std::io::Error::other(
                        message.clone(),
                    ))));
                }
            }
        }
    }
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
