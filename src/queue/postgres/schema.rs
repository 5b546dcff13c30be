//! The schema, versioned: each migration runs once, in order, in its own
//! transaction, under an advisory lock so that instances starting
//! together do not race; an instance refuses a schema newer than it knows.
//! A look at the database from the command line (`queue stats`, `queue
//! dead …` with no daemon answering) migrates nothing: it takes the
//! schema only as this build would leave it ([`as_is`]).

use tokio_postgres::Client;

use super::super::QueueError;

/// `pg_advisory_lock` key held while migrating ("hookgate" in ASCII).
const MIGRATE_LOCK: i64 = 0x686f_6f6b_6761_7465;

/// Migration `i` makes version `i + 1`. Never change one that shipped; add one.
const MIGRATIONS: &[&str] = &[
    // 1: events (partitioned by day, `partitions.rs`), the inbox of
    // unrouted events, dedupe keys, deliveries and dead letters, the
    // sinks' cluster-wide limits, and counters.
    r#"
CREATE TABLE hookgate_meta (
    one boolean PRIMARY KEY DEFAULT true CHECK (one),
    install_id bigint NOT NULL
);
CREATE SEQUENCE hookgate_event_id;
CREATE TABLE hookgate_events (
    id bigint NOT NULL,
    received_ms bigint NOT NULL,
    source text NOT NULL,
    record bytea NOT NULL,
    PRIMARY KEY (received_ms, id)
) PARTITION BY RANGE (received_ms);
CREATE INDEX hookgate_events_id ON hookgate_events (id);
-- Room on each page, so that a claim's update stays on the page (HOT) and
-- writes no index entry.
CREATE TABLE hookgate_inbox (
    event_id bigint PRIMARY KEY,
    received_ms bigint NOT NULL,
    claim_token bigint,
    claim_until timestamptz
) WITH (
    fillfactor = 50,
    autovacuum_vacuum_scale_factor = 0,
    autovacuum_vacuum_threshold = 2000,
    autovacuum_vacuum_cost_delay = 0
);
CREATE TABLE hookgate_seen (
    source text NOT NULL,
    key text NOT NULL,
    event_id bigint NOT NULL,
    stored_ms bigint NOT NULL,
    expires_ms bigint NOT NULL,
    PRIMARY KEY (source, key)
);
-- No index on expires_ms: one more index write per accepted event for a
-- prune every 10 minutes, whose batches find the expired keys (the oldest
-- rows) at the front of the heap.
CREATE SEQUENCE hookgate_delivery_id;
CREATE TABLE hookgate_deliveries (
    id bigint PRIMARY KEY,
    sink text NOT NULL,
    event_id bigint NOT NULL,
    -- 0 for none, else the item's index + 1: none sorts first.
    item bigint NOT NULL,
    order_key text,
    dead boolean NOT NULL,
    due_ms bigint NOT NULL,
    failures integer NOT NULL,
    reason text,
    dead_ms bigint,
    lease_token bigint,
    lease_until timestamptz,
    -- The postcard `DeliveryRecord`; the columns above override its
    -- fields of the same name, so replay and bury are plain UPDATEs.
    record bytea NOT NULL
) WITH (
    fillfactor = 70,
    -- A queue: rows come and go all day. Vacuum as soon as a few thousand
    -- are dead rather than a fifth of the table, and without pauses, so
    -- the space is reused instead of the table growing.
    autovacuum_vacuum_scale_factor = 0,
    autovacuum_vacuum_threshold = 2000,
    autovacuum_vacuum_insert_scale_factor = 0,
    autovacuum_vacuum_insert_threshold = 2000,
    autovacuum_vacuum_cost_delay = 0,
    toast.autovacuum_vacuum_scale_factor = 0,
    toast.autovacuum_vacuum_threshold = 2000,
    toast.autovacuum_vacuum_cost_delay = 0
);
-- Records are stored as they are, never compressed by PostgreSQL (an
-- event's body is LZ4 already). An event's stays inline up to a page
-- (toast_tuple_target, on each partition: it is written once). A
-- delivery's frozen request goes out of line (TOAST) past 2 kB, so the
-- row a claim or an outcome updates stays small: the update is HOT, and
-- the request is written once, not once per update.
ALTER TABLE hookgate_events ALTER COLUMN record SET STORAGE EXTERNAL;
ALTER TABLE hookgate_deliveries ALTER COLUMN record SET STORAGE EXTERNAL;
CREATE INDEX hookgate_deliveries_due ON hookgate_deliveries (sink, due_ms, id) WHERE NOT dead;
CREATE INDEX hookgate_deliveries_order ON hookgate_deliveries (sink, order_key, event_id, item, id)
    WHERE NOT dead AND order_key IS NOT NULL;
CREATE INDEX hookgate_deliveries_leased ON hookgate_deliveries (sink, lease_until)
    WHERE NOT dead AND lease_until IS NOT NULL;
CREATE INDEX hookgate_deliveries_dead ON hookgate_deliveries (sink) WHERE dead;
CREATE TABLE hookgate_sink_limits (
    sink text PRIMARY KEY,
    tokens double precision NOT NULL,
    refilled_at timestamptz NOT NULL,
    -- The platform asked the sink to wait (a 429, Retry-After) until then
    -- (ms): no instance claims before.
    paused_until_ms bigint NOT NULL DEFAULT 0
);
-- Local data directories whose work `hookgate queue migrate` carried in
-- (by their install id): a second run imports nothing twice.
CREATE TABLE hookgate_imports (
    install_id bigint PRIMARY KEY,
    imported_at timestamptz NOT NULL DEFAULT now(),
    events bigint NOT NULL,
    pending bigint NOT NULL,
    dead bigint NOT NULL
);
-- Events no route matched: a few rows added to at random, so that
-- routers do not queue on one row.
CREATE TABLE hookgate_unmatched (
    slot integer PRIMARY KEY,
    n bigint NOT NULL
);
"#,
    // 2: dead letters by when they died, so that expiring them
    // (`server.dead_letter_retention`, `dead.rs`) reads only those past
    // it. Every dead row has its time (one without would be dated by its
    // due time, as the local backend dates it). A plain CREATE INDEX (a
    // migration is a transaction): it holds off writes to the table while
    // it reads it, once.
    r#"
UPDATE hookgate_deliveries SET dead_ms = due_ms WHERE dead AND dead_ms IS NULL;
CREATE INDEX hookgate_deliveries_dead_at ON hookgate_deliveries (dead_ms) WHERE dead;
"#,
    // 3: a router holds its page by the rows' locks in an open
    // transaction (`routing.rs`), not by a token and an expiry written to
    // each row. The columns go, so that a router of an older build, which
    // would not see the locks as a claim, fails loudly instead of routing
    // a page twice.
    r#"
ALTER TABLE hookgate_inbox DROP COLUMN claim_token, DROP COLUMN claim_until;
-- Its rows are inserted and deleted, never updated: no room to keep.
ALTER TABLE hookgate_inbox SET (fillfactor = 100);
"#,
    // 4: lookups (`lookups.rs`). What an event listing shows, as columns
    // written at ingest (NULL in rows stored before, or by an instance of
    // an older build: read from their records), and its delivery id
    // indexed. Deliveries by event, and dead letters in id order (of a
    // sink, and all): partial indexes of dead rows, which claims and
    // outcomes of pending ones never write.
    // Delivered deliveries are kept (their final record) in a table of
    // their own, partitioned by day delivered and dropped whole after
    // `server.retention`, off the queue table and its partial indexes.
    // Plain CREATE INDEXes, as in 2: writes wait while they are built.
    r#"
ALTER TABLE hookgate_events ADD COLUMN provider text, ADD COLUMN event text,
    ADD COLUMN delivery_id text;
CREATE INDEX hookgate_events_delivery_id ON hookgate_events (delivery_id, id);
CREATE INDEX hookgate_deliveries_event ON hookgate_deliveries (event_id);
CREATE INDEX hookgate_deliveries_dead_sink ON hookgate_deliveries (sink, id) WHERE dead;
CREATE INDEX hookgate_deliveries_dead_id ON hookgate_deliveries (id) WHERE dead;
DROP INDEX hookgate_deliveries_dead;
CREATE TABLE hookgate_delivered (
    id bigint NOT NULL,
    delivered_ms bigint NOT NULL,
    event_id bigint NOT NULL,
    sink text NOT NULL,
    -- The final postcard `DeliveryRecord`, attempts and all.
    record bytea NOT NULL
) PARTITION BY RANGE (delivered_ms);
ALTER TABLE hookgate_delivered ALTER COLUMN record SET STORAGE EXTERNAL;
CREATE INDEX hookgate_delivered_id ON hookgate_delivered (id);
CREATE INDEX hookgate_delivered_event ON hookgate_delivered (event_id);
CREATE INDEX hookgate_delivered_sink ON hookgate_delivered (sink, id);
"#,
];

/// The newest schema this build knows.
pub const VERSION: i32 = MIGRATIONS.len() as i32;

/// Brings the schema to [`VERSION`]; returns the install id.
pub async fn migrate(client: &mut Client) -> Result<u64, String> {
    let e = |e: tokio_postgres::Error| format!("migrating the schema: {e}");
    client
        .execute("SELECT pg_advisory_lock($1)", &[&MIGRATE_LOCK])
        .await
        .map_err(e)?;
    let done = migrate_locked(client).await;
    // Unlocked by closing the session too, if this fails.
    let _ = client
        .execute("SELECT pg_advisory_unlock($1)", &[&MIGRATE_LOCK])
        .await;
    done
}

async fn migrate_locked(client: &mut Client) -> Result<u64, String> {
    let e = |e: tokio_postgres::Error| format!("migrating the schema: {e}");
    client
        .batch_execute(
            // One implicit transaction: the SET lasts to its end. Without
            // it, every start logged PostgreSQL's notice that the table
            // exists (as INFO, per table).
            "SET LOCAL client_min_messages = warning;
             CREATE TABLE IF NOT EXISTS hookgate_schema (
                version integer PRIMARY KEY,
                applied_at timestamptz NOT NULL DEFAULT now())",
        )
        .await
        .map_err(e)?;
    let row = client
        .query_one("SELECT coalesce(max(version), 0) FROM hookgate_schema", &[])
        .await
        .map_err(e)?;
    let current: i32 = row.get(0);
    if current > VERSION {
        return Err(newer_schema(current));
    }
    for (i, sql) in MIGRATIONS.iter().enumerate().skip(current as usize) {
        let version = i as i32 + 1;
        let tx = client.transaction().await.map_err(e)?;
        tx.batch_execute(sql).await.map_err(|err| {
            format!(
                "migrating the schema to version {version}: {}",
                super::with_causes(&err)
            )
        })?;
        tx.execute(
            "INSERT INTO hookgate_schema (version) VALUES ($1)",
            &[&version],
        )
        .await
        .map_err(e)?;
        tx.commit().await.map_err(e)?;
        tracing::info!(version, "migrated the database schema");
    }
    let made: i64 = rand::random();
    client
        .execute(
            "INSERT INTO hookgate_meta (install_id) VALUES ($1) ON CONFLICT (one) DO NOTHING",
            &[&made],
        )
        .await
        .map_err(e)?;
    let install: i64 = client
        .query_one("SELECT install_id FROM hookgate_meta", &[])
        .await
        .map_err(e)?
        .get(0);
    Ok(install as u64)
}

/// The install id of a database whose schema is already [`VERSION`];
/// changes nothing. A newer binary looking at a cluster must not migrate
/// the schema under the daemons that run on it, and a look at a database
/// no hookgate has used must not make one there.
pub async fn as_is(client: &Client) -> Result<u64, String> {
    let e = |e: tokio_postgres::Error| format!("reading the schema's version: {e}");
    let row = client
        .query_one(
            "SELECT to_regclass('hookgate_schema') IS NOT NULL \
             AND to_regclass('hookgate_meta') IS NOT NULL",
            &[],
        )
        .await
        .map_err(e)?;
    if !row.get::<_, bool>(0) {
        return Err(
            "the database holds no hookgate schema: no hookgate daemon has used it \
             (is queue.url the daemons' database?)"
                .into(),
        );
    }
    let current: i32 = client
        .query_one("SELECT coalesce(max(version), 0) FROM hookgate_schema", &[])
        .await
        .map_err(e)?
        .get(0);
    if current > VERSION {
        return Err(newer_schema(current));
    }
    if current < VERSION {
        return Err(format!(
            "the database's hookgate schema is version {current}, older than this hookgate's \
             ({VERSION}); a look from the command line does not migrate it under the daemons \
             that use it: run the `hookgate` those daemons run, or start this version's \
             `hookgate serve` on it first"
        ));
    }
    let install: Option<i64> = client
        .query_opt("SELECT install_id FROM hookgate_meta", &[])
        .await
        .map_err(e)?
        .map(|row| row.get(0));
    install.map(|id| id as u64).ok_or_else(|| {
        "the database's hookgate schema has no install id: start `hookgate serve` on it once".into()
    })
}

fn newer_schema(found: i32) -> String {
    format!(
        "the database's hookgate schema is version {found}, newer than this hookgate knows \
         (versions 1 to {VERSION}): a newer hookgate migrated it; run that version, or point \
         queue.url at another database"
    )
}

/// As [`migrate`], for the port.
pub async fn migrate_or_refuse(client: &mut Client) -> Result<u64, QueueError> {
    migrate(client)
        .await
        .map_err(|m| QueueError::Storage(std::io::Error::other(m)))
}
