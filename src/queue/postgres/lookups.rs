//! Lookups in the PostgreSQL backend: events and deliveries listed, dead
//! letters replayed by filter, re-routing (`add_missing`).
//!
//! Events: by id (`hookgate_events_id`), by delivery id
//! (`hookgate_events_delivery_id`, schema version 4), by time through the
//! day partitions. A row stored before version 4 (or by an older build)
//! has no provider, event or delivery id columns: its record says them,
//! and a lookup by delivery id reads those rows too (the index finds them
//! by their NULL). Source and event have no index: a call reads at most
//! [`WINDOW`] rows for them and says where to go on.
//!
//! Deliveries: pending and dead in `hookgate_deliveries`, delivered in
//! `hookgate_delivered`, in one statement (one snapshot: a delivery
//! moving between them is seen once). By event, sink and the state's
//! time through indexes; route, source, event type, delivery id (and the
//! time made, which is not a column) are read from the records, a bounded
//! window per call.
//!
//! A replay by filter locks its batch of dead letters (`FOR UPDATE`) in
//! the transaction that replays them, so two instances replaying at once
//! replay each letter once and count it once. Re-routing serialises on
//! an advisory lock per event, and on the inbox rows of events not routed
//! yet (a router holds them locked while it routes).

use std::collections::{BTreeMap, HashSet};

use tokio_postgres::error::SqlState;
use tokio_postgres::types::ToSql;
use tokio_postgres::Row;

use super::deliveries::{record_of, COLS};
use super::health::{conn_err, pool_err};
use super::routing::Columns;
use super::Db;
use crate::queue::lookup::{page_of, page_size};
use crate::queue::{
    Added, DeliveryFilter, DeliveryPage, DeliveryRecord, DeliveryStatus, DeliveryView, EventFilter,
    EventPage, EventRecord, EventSummary, QueueError, RefuseReplay, Refused, Requeued,
    NOTHING_TO_SEND,
};

/// Most rows a listing reads per call for what it filters in Rust.
pub const WINDOW: usize = 2_000;
/// Dead letters locked and replayed per transaction.
const REPLAY_BATCH: usize = 500;
/// Most deliveries `add_missing` stores per transaction.
const ADD_BATCH: usize = 500;
/// Advisory lock class of re-routing an event (the second key: the
/// event id hashed); sinks' claims use `1752133483`.
const EVENT_LOCK: i32 = 1_752_133_484;
/// Attempts at a re-routing batch that met a deadlock.
const TRIES: usize = 3;

/// A statement's parameters, bound as its conditions are written.
#[derive(Default)]
struct Params(Vec<Box<dyn ToSql + Sync + Send>>);

impl Params {
    /// `$n` for `v`.
    fn bind(&mut self, v: impl ToSql + Sync + Send + 'static) -> String {
        self.0.push(Box::new(v));
        format!("${}", self.0.len())
    }

    fn args(&self) -> Vec<&(dyn ToSql + Sync)> {
        self.0
            .iter()
            .map(|p| p.as_ref() as &(dyn ToSql + Sync))
            .collect()
    }
}

fn as_i64(v: u64) -> i64 {
    v.min(i64::MAX as u64) as i64
}

/// Either failure of a statement with Rust between its parts.
enum Fail {
    Db(tokio_postgres::Error),
    Queue(QueueError),
}

impl From<tokio_postgres::Error> for Fail {
    fn from(e: tokio_postgres::Error) -> Fail {
        Fail::Db(e)
    }
}

impl From<QueueError> for Fail {
    fn from(e: QueueError) -> Fail {
        Fail::Queue(e)
    }
}

/// What an event listing reads: the columns, and the record only where
/// they are missing (a row stored before schema version 4).
const EVENT_COLS: &str = "id, received_ms, source, provider, event, delivery_id, \
     CASE WHEN delivery_id IS NULL THEN record END";

fn summary_of(row: &Row) -> Result<EventSummary, QueueError> {
    let id = row.get::<_, i64>(0) as u64;
    let received_ms = row.get::<_, i64>(1) as u64;
    let source: String = row.get(2);
    if let Some(delivery_id) = row.get::<_, Option<String>>(5) {
        return Ok(EventSummary {
            id,
            received_ms,
            source,
            provider: row.get::<_, Option<String>>(3).unwrap_or_default(),
            event: row.get::<_, Option<String>>(4).unwrap_or_default(),
            delivery_id,
        });
    }
    let record: &[u8] = row.get(6);
    let s = EventRecord::summary(record).map_err(|e| QueueError::Corrupt {
        key: crate::queue::EventId(id).to_string(),
        reason: e.to_string(),
    })?;
    Ok(EventSummary {
        id,
        received_ms,
        source,
        provider: s.provider.to_owned(),
        event: s.event.to_owned(),
        delivery_id: s.delivery_id.to_owned(),
    })
}

/// The conditions every event listing has: below `before`, in the time
/// range (its days only are read).
fn event_conditions(filter: &EventFilter, before: Option<u64>, p: &mut Params) -> Vec<String> {
    let mut conds = Vec::new();
    if let Some(b) = before {
        conds.push(format!("id < {}", p.bind(as_i64(b))));
    }
    if let Some(s) = filter.since_ms {
        conds.push(format!("received_ms >= {}", p.bind(as_i64(s))));
    }
    if let Some(u) = filter.until_ms {
        conds.push(format!("received_ms < {}", p.bind(as_i64(u))));
    }
    conds
}

fn where_of(conds: &[String]) -> String {
    match conds.is_empty() {
        true => "TRUE".into(),
        false => conds.join(" AND "),
    }
}

/// Rows of `sql` as event summaries that match `filter`; and where the
/// reading stopped when it read `window` rows.
async fn read_events(
    conn: &deadpool_postgres::Object,
    sql: &str,
    p: &Params,
    filter: &EventFilter,
    window: usize,
    matched: &mut Vec<(u64, EventSummary)>,
) -> Result<Option<u64>, Fail> {
    let rows = conn.query(sql, &p.args()).await?;
    for row in &rows {
        let s = summary_of(row)?;
        if filter.matches(&s) {
            matched.push((s.id, s));
        }
    }
    Ok(match rows.len() == window {
        true => rows.last().map(|r| r.get::<_, i64>(0) as u64),
        false => None,
    })
}

pub async fn events(
    db: &Db,
    filter: &EventFilter,
    before: Option<u64>,
    limit: usize,
) -> Result<EventPage, QueueError> {
    let limit = page_size(limit);
    let conn = db.pool.get().await.map_err(|e| pool_err(&db.health, e))?;
    let done = async {
        let mut matched = Vec::new();
        let cut;
        if let Some(delivery_id) = &filter.delivery_id {
            // By the index: every condition in SQL.
            let mut p = Params::default();
            let mut conds = event_conditions(filter, before, &mut p);
            conds.push(format!("delivery_id = {}", p.bind(delivery_id.clone())));
            if let Some(s) = &filter.source {
                conds.push(format!("source = {}", p.bind(s.clone())));
            }
            if let Some(e) = &filter.event {
                conds.push(format!("event = {}", p.bind(e.clone())));
            }
            let sql = format!(
                "SELECT {EVENT_COLS} FROM hookgate_events WHERE {} ORDER BY id DESC LIMIT {limit}",
                where_of(&conds)
            );
            let exact = read_events(&conn, &sql, &p, filter, limit, &mut matched).await?;
            // Rows without the columns (found by the index as NULL): by
            // their records, a window at a time.
            let mut p = Params::default();
            let mut conds = event_conditions(filter, before, &mut p);
            conds.push("delivery_id IS NULL".into());
            if let Some(s) = &filter.source {
                conds.push(format!("source = {}", p.bind(s.clone())));
            }
            let sql = format!(
                "SELECT {EVENT_COLS} FROM hookgate_events WHERE {} ORDER BY id DESC LIMIT {WINDOW}",
                where_of(&conds)
            );
            let legacy = read_events(&conn, &sql, &p, filter, WINDOW, &mut matched).await?;
            cut = exact.max(legacy);
        } else {
            // Source and event have no index: a window of the newest.
            let window = match filter.source.is_some() || filter.event.is_some() {
                true => WINDOW,
                false => limit,
            };
            let mut p = Params::default();
            let conds = event_conditions(filter, before, &mut p);
            let sql = format!(
                "SELECT {EVENT_COLS} FROM hookgate_events WHERE {} ORDER BY id DESC LIMIT {window}",
                where_of(&conds)
            );
            cut = read_events(&conn, &sql, &p, filter, window, &mut matched).await?;
        }
        Ok::<_, Fail>(page_of(matched, cut, limit))
    }
    .await;
    match done {
        Ok((items, next_before)) => Ok(EventPage { items, next_before }),
        Err(Fail::Db(e)) => Err(conn_err(&db.health, &db.pool, conn, e)),
        Err(Fail::Queue(e)) => Err(e),
    }
}

/// The one statement of a delivery listing: the queue's rows and the
/// history's, newest first, at most `window`; what is in SQL of `filter`
/// (the rest is checked on the records). Columns: [`COLS`], then the
/// state (0 pending, 1 delivered, 2 dead).
fn deliveries_query(
    filter: &DeliveryFilter,
    before: Option<u64>,
    window: usize,
) -> (String, Params) {
    let mut p = Params::default();
    let mut common = Vec::new();
    if let Some(b) = before {
        common.push(format!("id < {}", p.bind(as_i64(b))));
    }
    if let Some(e) = filter.event_id {
        common.push(format!("event_id = {}", p.bind(as_i64(e))));
    }
    if let Some(s) = &filter.sink {
        common.push(format!("sink = {}", p.bind(s.clone())));
    }
    let time = |column: &str, p: &mut Params| {
        let mut conds = Vec::new();
        if let Some(s) = filter.since_ms {
            conds.push(format!("{column} >= {}", p.bind(as_i64(s))));
        }
        if let Some(u) = filter.until_ms {
            conds.push(format!("{column} < {}", p.bind(as_i64(u))));
        }
        conds
    };
    // An event's deliveries are few: all of them, by its index, sorted
    // after (an order by id in each part lets a planner with stale
    // statistics walk the whole table by id instead).
    let order = match filter.event_id {
        Some(_) => String::new(),
        None => format!(" ORDER BY id DESC LIMIT {window}"),
    };
    let queue = |extra: Vec<String>| {
        let conds = [common.clone(), extra].concat();
        format!(
            "SELECT {COLS}, CASE WHEN dead THEN 2 ELSE 0 END::int2 FROM hookgate_deliveries \
             WHERE {}{order}",
            where_of(&conds)
        )
    };
    let history = |extra: Vec<String>| {
        let conds = [common.clone(), extra].concat();
        format!(
            "SELECT id, NULL::int8, NULL::int4, NULL::text, NULL::int8, record, 1::int2 \
             FROM hookgate_delivered WHERE {}{order}",
            where_of(&conds)
        )
    };
    let wrap = |part: String| match filter.event_id {
        Some(_) => format!("{part} ORDER BY id DESC LIMIT {window}"),
        None => part,
    };
    let sql = match filter.status {
        Some(DeliveryStatus::Pending) => wrap(queue(vec!["NOT dead".into()])),
        Some(DeliveryStatus::Dead) => {
            let mut conds = vec!["dead".to_owned()];
            conds.extend(time("dead_ms", &mut p));
            wrap(queue(conds))
        }
        Some(DeliveryStatus::Delivered) => wrap(history(time("delivered_ms", &mut p))),
        None => format!(
            "SELECT * FROM (({}) UNION ALL ({})) u ORDER BY id DESC LIMIT {window}",
            queue(vec![]),
            history(vec![])
        ),
    };
    (sql, p)
}

/// A row of [`deliveries_query`].
fn view_of(row: &Row) -> Result<(u64, DeliveryView), QueueError> {
    let id = row.get::<_, i64>(0) as u64;
    let (status, record) = match row.get::<_, i16>(6) {
        0 => (DeliveryStatus::Pending, record_of(row)?),
        2 => (DeliveryStatus::Dead, record_of(row)?),
        _ => {
            let mut rec = DeliveryRecord::decode(row.get::<_, &[u8]>(5)).map_err(|e| {
                QueueError::Corrupt {
                    key: format!("delivered {id}"),
                    reason: e.to_string(),
                }
            })?;
            rec.id = id;
            (DeliveryStatus::Delivered, rec)
        }
    };
    Ok((id, DeliveryView { status, record }))
}

pub async fn deliveries(
    db: &Db,
    filter: &DeliveryFilter,
    before: Option<u64>,
    limit: usize,
) -> Result<DeliveryPage, QueueError> {
    let limit = page_size(limit);
    // What SQL does not select: checked on the records, a window at a time.
    let by_time_made =
        filter.has_time() && matches!(filter.status, None | Some(DeliveryStatus::Pending));
    let refine = by_time_made
        || filter.route.is_some()
        || filter.source.is_some()
        || filter.event.is_some()
        || filter.delivery_id.is_some();
    let window = match refine {
        true => WINDOW,
        false => limit,
    };
    let (sql, p) = deliveries_query(filter, before, window);
    let conn = db.pool.get().await.map_err(|e| pool_err(&db.health, e))?;
    let rows = match conn.query(&sql, &p.args()).await {
        Ok(rows) => rows,
        Err(e) => return Err(conn_err(&db.health, &db.pool, conn, e)),
    };
    drop(conn);
    let mut matched = Vec::new();
    for row in &rows {
        let (id, view) = view_of(row)?;
        if filter.matches(view.status, &view.record) {
            matched.push((id, view));
        }
    }
    let cut = match rows.len() == window {
        true => rows.last().map(|r| r.get::<_, i64>(0) as u64),
        false => None,
    };
    let (items, next_before) = page_of(matched, cut, limit);
    Ok(DeliveryPage { items, next_before })
}

/// Replays the dead letters `filter` selects, oldest first: each batch
/// is read `FOR UPDATE` and replayed in one transaction (another
/// instance's replay of the same letters waits, then finds them no
/// longer dead); with `dry_run`, read only.
pub async fn requeue_where(
    db: &Db,
    filter: &DeliveryFilter,
    now_ms: u64,
    refuse: RefuseReplay<'_>,
    dry_run: bool,
) -> Result<Requeued, QueueError> {
    let filter = filter.dead_only();
    let mut out = Requeued::default();
    let mut after = -1i64;
    loop {
        let mut p = Params::default();
        let mut conds = vec!["dead".to_owned(), format!("id > {}", p.bind(after))];
        if let Some(e) = filter.event_id {
            conds.push(format!("event_id = {}", p.bind(as_i64(e))));
        }
        if let Some(s) = &filter.sink {
            conds.push(format!("sink = {}", p.bind(s.clone())));
        }
        if let Some(s) = filter.since_ms {
            conds.push(format!("dead_ms >= {}", p.bind(as_i64(s))));
        }
        if let Some(u) = filter.until_ms {
            conds.push(format!("dead_ms < {}", p.bind(as_i64(u))));
        }
        let sql = format!(
            "SELECT {COLS} FROM hookgate_deliveries WHERE {} ORDER BY id LIMIT {REPLAY_BATCH}{}",
            where_of(&conds),
            if dry_run { "" } else { " FOR UPDATE" }
        );
        let mut conn = db.pool.get().await.map_err(|e| pool_err(&db.health, e))?;
        let done = async {
            let tx = conn.transaction().await?;
            let rows = tx.query(&sql, &p.args()).await?;
            let mut replay = Vec::new();
            let mut sinks = Vec::new();
            let mut refused = Vec::new();
            for row in &rows {
                let rec = record_of(row)?;
                if !filter.matches(DeliveryStatus::Dead, &rec) {
                    continue;
                }
                let reason = match rec.frozen {
                    None => Some(NOTHING_TO_SEND.to_owned()),
                    Some(_) => refuse(&rec),
                };
                match reason {
                    Some(reason) => refused.push(Refused { id: rec.id, reason }),
                    None if dry_run => sinks.push(rec.sink),
                    None => replay.push(rec.id as i64),
                }
            }
            if !replay.is_empty() {
                let moved = tx
                    .query(
                        "UPDATE hookgate_deliveries
                         SET dead = false, due_ms = $2, failures = 0, reason = NULL, dead_ms = NULL,
                             lease_token = NULL, lease_until = NULL
                         WHERE id = ANY($1) AND dead
                         RETURNING sink",
                        &[&replay, &as_i64(now_ms)],
                    )
                    .await?;
                sinks.extend(moved.iter().map(|r| r.get::<_, String>(0)));
            }
            tx.commit().await?;
            let last = rows.last().map(|r| r.get::<_, i64>(0));
            Ok::<_, Fail>((rows.len(), last, sinks, refused))
        }
        .await;
        let (read, last, sinks, refused) = match done {
            Ok(d) => d,
            Err(Fail::Db(e)) => return Err(conn_err(&db.health, &db.pool, conn, e)),
            Err(Fail::Queue(e)) => return Err(e),
        };
        out.replayed += sinks.len();
        out.sinks.extend(sinks);
        out.refused.extend(refused);
        match last {
            Some(last) if read == REPLAY_BATCH => after = last,
            _ => return Ok(out),
        }
    }
}

/// Stores the missing of `deliveries`, whole events per transaction.
pub async fn add_missing(db: &Db, deliveries: Vec<DeliveryRecord>) -> Result<Added, QueueError> {
    let mut by_event: BTreeMap<u64, Vec<DeliveryRecord>> = BTreeMap::new();
    for d in deliveries {
        by_event.entry(d.event_id).or_default().push(d);
    }
    let mut out = Added::default();
    let mut batch = Vec::new();
    let mut size = 0;
    for (event, ds) in by_event {
        if size > 0 && size + ds.len() > ADD_BATCH {
            add_batch(db, std::mem::take(&mut batch), &mut out).await?;
            size = 0;
        }
        size += ds.len();
        batch.push((event, ds));
    }
    if size > 0 {
        add_batch(db, batch, &mut out).await?;
    }
    Ok(out)
}

/// Takes each event's advisory lock, in order (two re-routings of one
/// event take turns).
const LOCK_EVENTS: &str = "
SELECT pg_advisory_xact_lock($2, k)
FROM (SELECT DISTINCT hashint8(id) AS k FROM unnest($1::int8[]) AS t(id) ORDER BY 1) l";

/// Events not routed yet, locked so that no router takes them meanwhile;
/// waits for a router that holds one (its deliveries are then seen).
const UNROUTED: &str = "SELECT event_id FROM hookgate_inbox WHERE event_id = ANY($1) FOR KEY SHARE";

/// Every delivery of the events, in any state (one snapshot).
const EXISTING: &str = "
SELECT record FROM hookgate_deliveries WHERE event_id = ANY($1)
UNION ALL
SELECT record FROM hookgate_delivered WHERE event_id = ANY($1)";

async fn add_batch(
    db: &Db,
    events: Vec<(u64, Vec<DeliveryRecord>)>,
    out: &mut Added,
) -> Result<(), QueueError> {
    let ids: Vec<i64> = events.iter().map(|(e, _)| as_i64(*e)).collect();
    let mut tries = 0;
    loop {
        tries += 1;
        let mut conn = db.pool.get().await.map_err(|e| pool_err(&db.health, e))?;
        let done = async {
            let tx = conn.transaction().await?;
            tx.execute(LOCK_EVENTS, &[&ids, &EVENT_LOCK]).await?;
            let unrouted: HashSet<i64> = tx
                .query(UNROUTED, &[&ids])
                .await?
                .iter()
                .map(|r| r.get(0))
                .collect();
            let mut have = HashSet::new();
            for row in tx.query(EXISTING, &[&ids]).await? {
                if let Some(h) = DeliveryRecord::head(row.get::<_, &[u8]>(0)) {
                    have.insert((h.event_id, h.route.to_owned(), h.sink.to_owned(), h.item));
                }
            }
            let (mut new, mut existing) = (Vec::new(), 0u64);
            for (event, ds) in &events {
                if unrouted.contains(&as_i64(*event)) {
                    // Routing makes its deliveries.
                    existing += ds.len() as u64;
                    continue;
                }
                for d in ds {
                    match have.insert((d.event_id, d.route.clone(), d.sink.clone(), d.item)) {
                        true => new.push(d.clone()),
                        false => existing += 1,
                    }
                }
            }
            if !new.is_empty() {
                let fresh = tx
                    .query(
                        "SELECT nextval('hookgate_delivery_id') FROM generate_series(1, $1::int8)",
                        &[&(new.len() as i64)],
                    )
                    .await?;
                let mut cols = Columns::default();
                for (d, row) in new.iter_mut().zip(&fresh) {
                    d.id = row.get::<_, i64>(0) as u64;
                    cols.push(d, d.dead_ms.is_some());
                }
                cols.insert(&tx).await?;
            }
            tx.commit().await?;
            Ok::<_, tokio_postgres::Error>((new.len() as u64, existing))
        }
        .await;
        match done {
            Ok((created, existing)) => {
                out.created += created;
                out.existing += existing;
                return Ok(());
            }
            Err(e) if tries < TRIES && e.code() == Some(&SqlState::T_R_DEADLOCK_DETECTED) => {}
            Err(e) => return Err(conn_err(&db.health, &db.pool, conn, e)),
        }
    }
}
