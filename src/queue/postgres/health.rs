//! Whether the database takes writes now: every failure is classified
//! here, a failure that says the server is gone or read-only marks it
//! down (logged once), and `heal` probes it back up.

use std::sync::atomic::{AtomicBool, Ordering};

use deadpool_postgres::{Object, Pool, PoolError};

use super::super::QueueError;

/// The database's state as this instance last saw it.
#[derive(Debug)]
pub struct Health {
    up: AtomicBool,
}

impl Health {
    pub fn new() -> Health {
        Health {
            up: AtomicBool::new(true),
        }
    }

    pub fn up(&self) -> bool {
        self.up.load(Ordering::Acquire)
    }

    /// Marks the database down; logs only the change.
    pub fn down(&self, why: &dyn std::fmt::Display) {
        if self.up.swap(false, Ordering::AcqRel) {
            tracing::error!(error = %why, "the database cannot take writes; answering 503 until it can");
        }
    }

    /// Marks it up; true (and logged) when it was down.
    pub fn recovered(&self) -> bool {
        let was_up = self.up.swap(true, Ordering::AcqRel);
        if !was_up {
            tracing::info!("the database takes writes again");
        }
        !was_up
    }
}

/// Whether `e` says the server is unreachable, shutting down, or
/// read-only (a standby, during a failover): the connection is not to be
/// used again.
pub fn unavailable(e: &tokio_postgres::Error) -> bool {
    use std::error::Error;
    use tokio_postgres::error::SqlState;
    match e.code() {
        // Not the server's answer: the connection closed, failed (I/O,
        // TLS, timeout) or lost its place in the protocol. A value that
        // does not convert (hookgate's own mistake) says nothing of it.
        None => {
            e.is_closed()
                || e.source().is_some_and(|s| s.is::<std::io::Error>())
                || e.to_string().starts_with("unexpected message")
        }
        Some(code) => {
            let c = code.code();
            *code == SqlState::READ_ONLY_SQL_TRANSACTION
                || c.starts_with("08")
                || c.starts_with("57P")
                || c.starts_with("53")
                || c.starts_with("58")
        }
    }
}

/// Turns a database error into the port's, marking the database down
/// when it is unavailable (and dropping the pool's idle connections, so
/// the next ones are made afresh).
pub fn db_err(health: &Health, pool: &Pool, e: tokio_postgres::Error) -> QueueError {
    if unavailable(&e) {
        health.down(&e);
        pool.retain(|_, _| false);
    }
    QueueError::Storage(std::io::Error::other(e))
}

/// As [`db_err`], and the connection `conn` is dropped rather than
/// returned to the pool when the error says it is no good.
pub fn conn_err(
    health: &Health,
    pool: &Pool,
    conn: Object,
    e: tokio_postgres::Error,
) -> QueueError {
    if unavailable(&e) {
        let _ = Object::take(conn);
    }
    db_err(health, pool, e)
}

/// No connection to be had.
pub fn pool_err(health: &Health, e: PoolError) -> QueueError {
    match &e {
        PoolError::Backend(be) if !unavailable(be) => {}
        // Every connection busy: the database is fine.
        PoolError::Closed | PoolError::Timeout(deadpool_postgres::TimeoutType::Wait) => {}
        _ => health.down(&super::with_causes(&e)),
    }
    QueueError::Storage(std::io::Error::other(super::with_causes(&e)))
}
