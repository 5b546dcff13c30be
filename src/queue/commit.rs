//! Group commit: many writers, one fsync.
//!
//! A writer that has put its records in sled calls [`GroupCommit::durable`].
//! One flusher task fsyncs everything written so far and wakes every writer
//! whose write came before that flush started. Under load one fsync answers
//! hundreds of requests; alone, a request costs one fsync, as without it.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;

use tokio::sync::{watch, Notify};

/// The flusher's progress: writes up to `durable` are on disk; a flush that
/// failed covered writes up to `failed`.
#[derive(Debug, Clone, Copy, Default)]
struct Progress {
    durable: u64,
    failed: u64,
}

#[derive(Debug)]
struct Inner {
    db: sled::Db,
    /// Sequence number of the last write handed to the flusher.
    written: AtomicU64,
    wake: Notify,
    progress: watch::Sender<Progress>,
    stop: AtomicBool,
}

/// Handle to the flusher; dropping it lets the flusher finish and exit.
#[derive(Debug)]
pub struct GroupCommit {
    inner: Arc<Inner>,
}

impl GroupCommit {
    /// Starts the flusher on the current tokio runtime.
    pub fn start(db: sled::Db) -> GroupCommit {
        let inner = Arc::new(Inner {
            db,
            written: AtomicU64::new(0),
            wake: Notify::new(),
            progress: watch::Sender::new(Progress::default()),
            stop: AtomicBool::new(false),
        });
        tokio::spawn(flusher(inner.clone()));
        GroupCommit { inner }
    }

    /// Resolves once everything this caller wrote before calling is fsynced.
    pub async fn durable(&self) -> std::io::Result<()> {
        let inner = &self.inner;
        // Our write happened before this increment, and the flusher reads the
        // counter before it starts a flush: a flush that covers `seq` covers
        // our write.
        let seq = inner.written.fetch_add(1, Ordering::AcqRel) + 1;
        let mut rx = inner.progress.subscribe();
        inner.wake.notify_one();
        let p = *rx
            .wait_for(|p| p.durable >= seq || p.failed >= seq)
            .await
            .map_err(|_| std::io::Error::other("flusher stopped"))?;
        if p.durable >= seq {
            Ok(())
        } else {
            Err(std::io::Error::other("fsync failed"))
        }
    }
}

impl Drop for GroupCommit {
    fn drop(&mut self) {
        self.inner.stop.store(true, Ordering::Release);
        self.inner.wake.notify_one();
    }
}

async fn flusher(inner: Arc<Inner>) {
    loop {
        let target = inner.written.load(Ordering::Acquire);
        let done = {
            let p = inner.progress.borrow();
            p.durable.max(p.failed)
        };
        if target <= done {
            if inner.stop.load(Ordering::Acquire) {
                return;
            }
            // A writer that bumped `written` after our load has also called
            // notify_one, which leaves a permit: this cannot miss it.
            inner.wake.notified().await;
            continue;
        }
        let db = inner.db.clone();
        let result = tokio::task::spawn_blocking(move || db.flush()).await;
        inner.progress.send_modify(|p| match result {
            Ok(Ok(_)) => p.durable = p.durable.max(target),
            Ok(Err(ref e)) => {
                tracing::error!(error = %e, "fsync of the queue failed");
                p.failed = p.failed.max(target);
            }
            Err(ref e) => {
                tracing::error!(error = %e, "fsync task failed");
                p.failed = p.failed.max(target);
            }
        });
    }
}
