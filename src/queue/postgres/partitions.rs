//! Events are partitioned by day of `received_ms`, the delivered history
//! by day of `delivered_ms`: partitions are made ahead (at open and at
//! every prune, and on demand when a row finds none), and a day past
//! retention goes whole (`DROP TABLE`), never row by row. A day that
//! still holds unrouted events is kept.

use std::collections::BTreeSet;

use tokio_postgres::Client;

/// One partition's span.
pub const DAY_MS: i64 = 86_400_000;
/// Advisory lock held while partitions are made or dropped, so that two
/// instances do not race to make the same one.
const PARTITION_LOCK: i64 = 0x686f_6f6b_7061_7274;
/// Dedupe keys deleted per statement when pruning.
const SEEN_BATCH: i64 = 5000;

pub fn day_of(ms: i64) -> i64 {
    ms.div_euclid(DAY_MS)
}

/// A table partitioned by day.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Table {
    name: &'static str,
    /// What its rows are, for logs.
    what: &'static str,
}

/// Events, by day received.
pub const EVENTS: Table = Table {
    name: "hookgate_events",
    what: "events",
};
/// The delivered history, by day delivered (schema version 4).
pub const DELIVERED: Table = Table {
    name: "hookgate_delivered",
    what: "delivered deliveries",
};

impl Table {
    fn partition(self, day: i64) -> String {
        match day < 0 {
            true => format!("{}_m{}", self.name, -day),
            false => format!("{}_d{day}", self.name),
        }
    }

    fn day_of_partition(self, name: &str) -> Option<i64> {
        let rest = name.strip_prefix(self.name)?;
        if let Some(d) = rest.strip_prefix("_d") {
            d.parse().ok()
        } else {
            rest.strip_prefix("_m")?.parse::<i64>().ok().map(|d| -d)
        }
    }
}

/// Makes the partitions of `table` for `days` that do not exist yet.
pub async fn ensure(
    client: &Client,
    table: Table,
    days: &BTreeSet<i64>,
) -> Result<(), tokio_postgres::Error> {
    if days.is_empty() {
        return Ok(());
    }
    // One implicit transaction: the lock is held to its end, and a day
    // that exists already is no notice in the log.
    let mut sql = format!(
        "SELECT pg_advisory_xact_lock({PARTITION_LOCK}); SET LOCAL client_min_messages = warning;"
    );
    for &day in days {
        // Rows are written once: each stays on its page up to a page
        // (`record` is EXTERNAL), not toasted past 2 kB.
        sql.push_str(&format!(
            "CREATE TABLE IF NOT EXISTS {} PARTITION OF {} FOR VALUES FROM ({}) TO ({}) WITH (toast_tuple_target = 8160);",
            table.partition(day),
            table.name,
            day * DAY_MS,
            (day + 1) * DAY_MS
        ));
    }
    client.batch_execute(&sql).await
}

/// Yesterday to two days ahead of `now_ms`.
pub fn around(now_ms: i64) -> BTreeSet<i64> {
    let today = day_of(now_ms);
    (today - 1..=today + 2).collect()
}

/// Whether `e` is an insert that found no partition for its row.
pub fn no_partition(e: &tokio_postgres::Error) -> bool {
    e.as_db_error().is_some_and(|db| {
        db.code() == &tokio_postgres::error::SqlState::CHECK_VIOLATION
            && db.message().starts_with("no partition")
    })
}

/// Drops the days of `table` that ended before `cutoff_ms` (of events,
/// those that hold no unrouted event); returns how many rows went.
pub async fn drop_before(
    client: &Client,
    table: Table,
    cutoff_ms: i64,
) -> Result<u64, tokio_postgres::Error> {
    let rows = client
        .query(
            "SELECT c.relname::text FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid
             WHERE i.inhparent = $1::text::regclass",
            &[&table.name],
        )
        .await?;
    let mut days: Vec<i64> = rows
        .iter()
        .filter_map(|r| table.day_of_partition(r.get::<_, &str>(0)))
        .filter(|d| (d + 1) * DAY_MS <= cutoff_ms)
        .collect();
    days.sort_unstable();
    let mut removed = 0u64;
    for day in days {
        let (from, to) = (day * DAY_MS, (day + 1) * DAY_MS);
        let unrouted = table == EVENTS
            && client
                .query_one(
                    "SELECT EXISTS (SELECT 1 FROM hookgate_inbox WHERE received_ms >= $1 AND received_ms < $2)",
                    &[&from, &to],
                )
                .await?
                .get::<_, bool>(0);
        if unrouted {
            tracing::warn!(
                partition = table.partition(day),
                "keeping a day of events past retention: some are not routed yet"
            );
            continue;
        }
        let n: i64 = client
            .query_one(
                &format!("SELECT count(*) FROM {}", table.partition(day)),
                &[],
            )
            .await?
            .get(0);
        client
            .batch_execute(&format!(
                "SELECT pg_advisory_xact_lock({PARTITION_LOCK}); SET LOCAL lock_timeout = '10s'; DROP TABLE IF EXISTS {};",
                table.partition(day)
            ))
            .await?;
        removed += n as u64;
        tracing::info!(
            partition = table.partition(day),
            rows = n,
            "dropped a day of {} past retention",
            table.what
        );
    }
    Ok(removed)
}

/// Deletes expired dedupe keys, a batch at a time; returns how many.
pub async fn prune_seen(client: &Client, now_ms: i64) -> Result<u64, tokio_postgres::Error> {
    let mut removed = 0;
    loop {
        let n = client
            .execute(
                "DELETE FROM hookgate_seen WHERE ctid = ANY (ARRAY(
                    SELECT ctid FROM hookgate_seen WHERE expires_ms <= $1 LIMIT $2))",
                &[&now_ms, &SEEN_BATCH],
            )
            .await?;
        removed += n;
        if (n as i64) < SEEN_BATCH {
            return Ok(removed);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip() {
        for day in [-3, 0, 20_000] {
            assert_eq!(EVENTS.day_of_partition(&EVENTS.partition(day)), Some(day));
            assert_eq!(
                DELIVERED.day_of_partition(&DELIVERED.partition(day)),
                Some(day)
            );
        }
        assert_eq!(EVENTS.partition(3), "hookgate_events_d3");
        assert_eq!(DELIVERED.partition(-3), "hookgate_delivered_m3");
        assert_eq!(day_of(-1), -1);
        assert_eq!(day_of(DAY_MS), 1);
        assert_eq!(EVENTS.day_of_partition("hookgate_events_x"), None);
        assert_eq!(EVENTS.day_of_partition("hookgate_delivered_d3"), None);
    }
}
