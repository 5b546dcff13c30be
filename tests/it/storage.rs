//! The storage port's behaviour, the same cases against both adapters:
//! `both!` makes `case::local` (the event log and sled in a tempdir) and
//! `case::postgres` (a fresh database on the shared throwaway cluster;
//! skipped with a message when PostgreSQL is not installed) from one
//! `async fn case(b: Backend)`. Cases only PostgreSQL has (several
//! instances on one database, leases, cluster-wide limits, the database
//! going away) are `postgres_*`.

use std::collections::{BTreeSet, HashSet};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use hookgate::config::Rate;
use hookgate::queue::postgres::Postgres;
use hookgate::queue::{
    unix_millis, Added, Appended, Attempt, BodyOfEvent, DeliveryFilter, DeliveryRecord,
    DeliveryStatus, DeliveryView, EventFilter, EventId, EventRecord, EventSummary, Frozen, Healed,
    InboxPage, Ingest, Limits, Local, LocalStore, NewEvent, Queue, QueueError, Routed, Settle,
};

use crate::support::postgres::Cluster;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Local,
    Postgres,
}

/// A queue under test, and what keeps it alive.
struct Backend {
    q: Arc<dyn Queue>,
    kind: Kind,
    /// The database's URL and name (PostgreSQL).
    url: String,
    db: String,
    _dir: Option<tempfile::TempDir>,
}

impl Backend {
    fn local() -> Backend {
        let dir = tempfile::tempdir().unwrap();
        let q = Local::new(LocalStore::open(dir.path(), true).unwrap());
        Backend {
            q: Arc::new(q),
            kind: Kind::Local,
            url: String::new(),
            db: String::new(),
            _dir: Some(dir),
        }
    }

    /// `None` when PostgreSQL is not installed (the test is skipped).
    async fn postgres() -> Option<Backend> {
        let (db, url) = Cluster::fresh_database()?;
        let q = Postgres::open(&url, 8).await.unwrap();
        Some(Backend {
            q: Arc::new(q),
            kind: Kind::Postgres,
            url,
            db,
            _dir: None,
        })
    }

    /// Another instance on the same database.
    async fn another(&self) -> Arc<dyn Queue> {
        Arc::new(Postgres::open(&self.url, 8).await.unwrap())
    }
}

/// `case::local` and `case::postgres` for each case.
macro_rules! both {
    ($($case:ident),* $(,)?) => {$(
        mod $case {
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn local() {
                super::$case(super::Backend::local()).await
            }

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn postgres() {
                if let Some(b) = super::Backend::postgres().await {
                    super::$case(b).await
                }
            }
        }
    )*};
}

/// PostgreSQL-only cases.
macro_rules! postgres_only {
    ($($case:ident),* $(,)?) => {$(
        #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
        async fn $case() {
            if let Some(b) = Backend::postgres().await {
                cases::$case(b).await
            }
        }
    )*};
}

both!(
    append_then_duplicate_then_queued_after_the_window,
    concurrent_appends_of_one_key_queue_it_once,
    event_returns_what_was_stored,
    inbox_claims_each_event_once,
    routed_assigns_delivery_ids_and_counts,
    claim_goes_in_due_order_and_not_twice,
    claim_starts_only_the_head_of_an_order_key,
    settle_done_reschedule_bury,
    a_body_of_the_event_is_claimed_rescheduled_and_buried_whole,
    dead_letters_page_by_id,
    requeue_one_all_and_refused,
    bury_orphans_spares_claimed_and_configured,
    dead_letters_expire_by_when_they_died,
    dead_letters_expire_past_one_batch,
    close_refuses_new_appends,
    events_list_by_each_filter_and_page,
    events_pages_are_bounded_and_delivery_ids_indexed,
    deliveries_by_event_sink_status_and_time,
    delivered_history_expires_after_retention,
    requeue_where_dry_run_then_replays,
    add_missing_creates_only_what_is_missing,
);

postgres_only!(
    postgres_two_instances_route_every_event_exactly_once,
    postgres_a_router_that_lost_its_page_is_moved,
    postgres_concurrency_holds_across_instances,
    postgres_rate_holds_across_instances,
    postgres_a_lapsed_lease_goes_to_another_instance,
    postgres_refuses_a_newer_schema,
    postgres_group_commit_shares_transactions,
    postgres_prune_drops_whole_days_once_routed,
    postgres_two_instances_appending_one_key_queue_it_once,
    postgres_a_key_committed_while_the_append_waits_is_its_duplicate,
    postgres_imports_a_local_stores_work_once,
    postgres_a_platforms_pause_holds_for_every_instance,
    postgres_schema_2_indexes_dead_letters_of_a_version_1_database,
    postgres_two_instances_requeue_where_replay_each_once,
    postgres_two_instances_add_missing_create_each_once,
    postgres_lookups_read_indexes,
    postgres_events_stored_before_version_4_are_looked_up,
);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_instances_starting_together_migrate_once() {
    let Some((db, url)) = Cluster::fresh_database() else {
        return;
    };
    let opens: Vec<_> = (0..4)
        .map(|_| {
            let url = url.clone();
            tokio::spawn(async move { Postgres::open(&url, 2).await.unwrap().install_id() })
        })
        .collect();
    let mut installs = HashSet::new();
    for o in opens {
        installs.insert(o.await.unwrap());
    }
    assert_eq!(installs.len(), 1, "one install id: {installs:?}");
    assert_eq!(
        Cluster::shared_psql(&db, "SELECT count(*) FROM hookgate_schema"),
        hookgate::queue::postgres::SCHEMA_VERSION.to_string()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_read_only_database_refuses_appends_until_writable() {
    let Some(cluster) = Cluster::start() else {
        return;
    };
    let db = cluster.create_database();
    let q = Postgres::open(&cluster.url(&db), 4).await.unwrap();
    let now = SystemTime::now();
    queued(q.append(event("gh", "one", now), now).await.unwrap());
    // What a demoted primary or a guard against a full disk does.
    let admin = "dbname=postgres options='-c default_transaction_read_only=off'";
    cluster.psql(admin, "ALTER SYSTEM SET default_transaction_read_only = on");
    cluster.psql(admin, "SELECT pg_reload_conf()");
    tokio::time::sleep(Duration::from_millis(300)).await;
    let e = q.append(event("gh", "two", now), now).await.unwrap_err();
    assert!(matches!(e, QueueError::Storage(_)), "{e:?}");
    assert!(!q.writable() && !q.state_writable());
    assert_eq!(q.heal().await, Healed::Failing);
    cluster.psql(admin, "ALTER SYSTEM RESET default_transaction_read_only");
    cluster.psql(admin, "SELECT pg_reload_conf()");
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(q.heal().await, Healed::Recovered { reopened: true });
    assert!(q.writable());
    queued(q.append(event("gh", "two", now), now).await.unwrap());
}

/// Makes a CA and a server certificate for `san` in `dir` with openssl;
/// false (and a message) when openssl is missing.
fn make_certs(dir: &std::path::Path, san: &str) -> bool {
    let run = |args: &[&str]| {
        std::process::Command::new("openssl")
            .args(args)
            .current_dir(dir)
            .output()
    };
    let ec = [
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:prime256v1",
        "-nodes",
    ];
    let Ok(out) = run(&[
        &["req", "-x509"][..],
        &ec,
        &[
            "-keyout",
            "ca.key",
            "-out",
            "ca.pem",
            "-days",
            "2",
            "-subj",
            "/CN=hookgate test CA",
        ],
    ]
    .concat()) else {
        eprintln!("skipped: openssl not installed");
        return false;
    };
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = run(&[
        &["req"][..],
        &ec,
        &[
            "-keyout",
            "server.key",
            "-out",
            "server.csr",
            "-subj",
            "/CN=server",
        ],
    ]
    .concat())
    .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    std::fs::write(
        dir.join("ext"),
        format!("subjectAltName={san}\nbasicConstraints=CA:FALSE\nkeyUsage=digitalSignature\nextendedKeyUsage=serverAuth\n"),
    )
    .unwrap();
    let out = run(&[
        "x509",
        "-req",
        "-in",
        "server.csr",
        "-CA",
        "ca.pem",
        "-CAkey",
        "ca.key",
        "-CAcreateserial",
        "-out",
        "server.crt",
        "-days",
        "2",
        "-extfile",
        "ext",
    ])
    .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    true
}

/// sslmode as libpq has it: `require` encrypts without checking,
/// `verify-ca` checks the chain, `verify-full` the chain and the name.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_tls_modes_check_what_libpq_checks() {
    let Some(cluster) = Cluster::init() else {
        return;
    };
    let certs = tempfile::tempdir().unwrap();
    if !make_certs(certs.path(), "IP:127.0.0.1,DNS:localhost") {
        return;
    }
    let install = |cluster: &Cluster| {
        for f in ["server.crt", "server.key"] {
            cluster.write_file(f, &std::fs::read(certs.path().join(f)).unwrap());
        }
    };
    install(&cluster);
    // TLS or nothing over TCP.
    cluster.write_file(
        "pg_hba.conf",
        b"local all all trust\nhostssl all all 127.0.0.1/32 trust\n",
    );
    cluster.add_option("-c ssl=on");
    cluster.start_server();
    let db = cluster.create_database();
    let ca = certs.path().join("ca.pem");
    let url = |extra: &str| {
        format!(
            "host=127.0.0.1 port={} user=postgres dbname={db} connect_timeout=5 {extra}",
            cluster.port()
        )
    };
    let opens = |u: String| async move { Postgres::open(&u, 2).await.map(|_| ()) };
    assert!(
        opens(url("sslmode=disable")).await.is_err(),
        "no TLS, no entry"
    );
    opens(url("sslmode=require")).await.unwrap();
    opens(url(&format!(
        "sslmode=verify-full sslrootcert={}",
        ca.display()
    )))
    .await
    .unwrap();
    let e = opens(url("sslmode=verify-full")).await.unwrap_err();
    assert!(e.to_string().contains("certificate"), "unknown CA: {e}");
    // A certificate for another name: the chain holds, the name does not.
    cluster.stop("fast");
    assert!(make_certs(certs.path(), "DNS:db.example"));
    install(&cluster);
    cluster.start_server();
    opens(url(&format!(
        "sslmode=verify-ca sslrootcert={}",
        ca.display()
    )))
    .await
    .unwrap();
    let e = opens(url(&format!(
        "sslmode=verify-full sslrootcert={}",
        ca.display()
    )))
    .await
    .unwrap_err();
    assert!(e.to_string().contains("certificate"), "wrong name: {e}");
    opens(url("sslmode=require")).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_database_stopped_then_back() {
    let Some(cluster) = Cluster::start() else {
        return;
    };
    let db = cluster.create_database();
    let q = Postgres::open(&cluster.url(&db), 4).await.unwrap();
    let now = SystemTime::now();
    let before = q.append(event("gh", "one", now), now).await.unwrap();
    assert!(q.writable() && q.state_writable());
    cluster.stop("immediate");
    let e = q.append(event("gh", "two", now), now).await.unwrap_err();
    assert!(matches!(e, QueueError::Storage(_)), "{e:?}");
    assert!(!q.writable() && !q.state_writable());
    // Refused at once while down, no connection tried.
    let e = q.append(event("gh", "three", now), now).await.unwrap_err();
    assert!(matches!(e, QueueError::Storage(_)), "{e:?}");
    assert_eq!(q.heal().await, Healed::Failing);
    cluster.start_server();
    assert_eq!(q.heal().await, Healed::Recovered { reopened: true });
    assert!(q.writable() && q.state_writable());
    assert_eq!(q.heal().await, Healed::Healthy);
    let after = q.append(event("gh", "two", now), now).await.unwrap();
    assert!(matches!(after, Appended::Queued(_)), "{after:?}");
    let Appended::Queued(id) = before else {
        panic!("{before:?}")
    };
    assert!(q.event(id).await.unwrap().is_some());
}

// Helpers.

fn record(source: &str, received: SystemTime) -> EventRecord {
    EventRecord {
        source: source.into(),
        provider: "github".into(),
        event: "push".into(),
        delivery_id: "d-1".into(),
        received_at_ms: unix_millis(received),
        client_ip: "192.0.2.1".into(),
        headers: vec![("x-github-event".into(), b"push".to_vec())],
        body: br#"{"ref":"refs/heads/main"}"#.to_vec(),
    }
}

fn event(source: &str, key: &str, received: SystemTime) -> NewEvent {
    NewEvent {
        record: record(source, received),
        dedupe: hookgate::queue::Dedupe::Key(key.into()),
        dedupe_window: Duration::from_secs(60),
    }
}

fn queued(a: Appended) -> EventId {
    match a {
        Appended::Queued(id) => id,
        other => panic!("expected Queued, got {other:?}"),
    }
}

/// A delivery of `event` to `sink`, due at `due_ms`.
pub(crate) fn delivery(event: EventId, sink: &str, due_ms: u64) -> DeliveryRecord {
    DeliveryRecord {
        id: 0,
        event_id: event.0,
        source: "gh".into(),
        event: "push".into(),
        delivery_id: "d-1".into(),
        route: "r".into(),
        sink: sink.into(),
        item: None,
        idempotency_key: format!("{}-{sink}", event.0),
        created_ms: 1,
        due_ms,
        failures: 0,
        attempts: vec![],
        reason: None,
        dead_ms: None,
        frozen: Some(Frozen {
            content_type: "application/json".into(),
            headers: vec![],
            body: serde_bytes::ByteBuf::from(b"{}".to_vec()),
            ..Frozen::default()
        }),
        order_key: None,
    }
}

pub(crate) fn dead(mut d: DeliveryRecord, reason: &str) -> DeliveryRecord {
    d.reason = Some(reason.into());
    d.dead_ms = Some(5);
    d
}

fn limits(max: usize) -> Limits {
    Limits {
        max,
        concurrency: 1000,
        rate: None,
        lease: Duration::from_secs(60),
    }
}

/// Appends `n` events (fresh keys); their ids.
pub(crate) async fn append_n(q: &Arc<dyn Queue>, n: usize, tag: &str) -> Vec<EventId> {
    let now = SystemTime::now();
    let mut ids = Vec::new();
    for i in 0..n {
        ids.push(queued(
            q.append(event("gh", &format!("{tag}-{i}"), now), now)
                .await
                .unwrap(),
        ));
    }
    ids
}

/// Routes every event in the inbox with `make` (its deliveries, pending
/// and dead); returns what `routed` gave back.
pub(crate) async fn route_with(
    q: &Arc<dyn Queue>,
    make: impl Fn(EventId) -> (Vec<DeliveryRecord>, Vec<DeliveryRecord>),
) -> Vec<Routed> {
    let page = q.inbox(1000).await.unwrap();
    let routed = page
        .events
        .iter()
        .map(|(id, _)| {
            let (pending, dead) = make(*id);
            Routed {
                event: *id,
                pending,
                dead,
            }
        })
        .collect();
    q.routed(&page, routed).await.unwrap()
}

fn claimed_ids(due: &hookgate::queue::Due) -> Vec<u64> {
    due.claimed.iter().map(|c| c.rec.id).collect()
}

/// Claims until `want` shows up (a release is written in the background
/// by PostgreSQL's adapter), for at most 5 s.
async fn claim_until(q: &Arc<dyn Queue>, sink: &str, now_ms: u64, want: u64) -> Vec<u64> {
    let start = std::time::Instant::now();
    loop {
        let due = q.claim(sink, limits(10), now_ms).await.unwrap();
        let ids = claimed_ids(&due);
        if ids.contains(&want) || start.elapsed() > Duration::from_secs(5) {
            return ids;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Every page of events `filter` selects, following `next_before`; and
/// how many calls it took.
async fn all_events(
    q: &Arc<dyn Queue>,
    filter: &EventFilter,
    limit: usize,
) -> (Vec<EventSummary>, usize) {
    let (mut all, mut calls, mut before) = (Vec::new(), 0, None);
    loop {
        let page = q.events(filter, before, limit).await.unwrap();
        calls += 1;
        assert!(page.items.len() <= limit);
        all.extend(page.items);
        match page.next_before {
            Some(b) => before = Some(b),
            None => return (all, calls),
        }
        assert!(calls < 1000, "paging ends");
    }
}

fn ids_of(events: &[EventSummary]) -> Vec<u64> {
    events.iter().map(|e| e.id).collect()
}

/// The ids of every delivery `filter` selects, newest first, following
/// `next_before`.
async fn all_deliveries(
    q: &Arc<dyn Queue>,
    filter: &DeliveryFilter,
    limit: usize,
) -> Vec<DeliveryView> {
    let (mut all, mut before, mut calls) = (Vec::new(), None, 0);
    loop {
        let page = q.deliveries(filter, before, limit).await.unwrap();
        calls += 1;
        assert!(page.items.len() <= limit);
        all.extend(page.items);
        match page.next_before {
            Some(b) => before = Some(b),
            None => return all,
        }
        assert!(calls < 1000, "paging ends");
    }
}

async fn delivery_ids(q: &Arc<dyn Queue>, filter: DeliveryFilter) -> Vec<u64> {
    all_deliveries(q, &filter, 50)
        .await
        .iter()
        .map(|v| v.record.id)
        .collect()
}

/// An event of `source` and `event` type with `delivery_id`, received at
/// `received_ms`.
fn looked_up(source: &str, event_type: &str, delivery_id: &str, received_ms: u64) -> NewEvent {
    let mut e = event(
        source,
        &format!("{source}-{delivery_id}-{received_ms}"),
        SystemTime::now(),
    );
    e.record.provider = if source == "gl" { "gitlab" } else { "github" }.into();
    e.record.event = event_type.into();
    e.record.delivery_id = delivery_id.into();
    e.record.received_at_ms = received_ms;
    e
}

/// Settles a claimed delivery as delivered, its last attempt at `at_ms`.
async fn deliver(q: &Arc<dyn Queue>, c: &hookgate::queue::Claimed, at_ms: u64) -> DeliveryRecord {
    let mut rec = c.rec.clone();
    rec.attempts.push(Attempt {
        at_ms,
        status: Some(200),
        latency_ms: 4,
        outcome: "delivered".into(),
        response: "ok".into(),
    });
    q.settle(&c.lease, &rec, Settle::Done).await.unwrap();
    rec
}

// The cases both adapters pass.

async fn append_then_duplicate_then_queued_after_the_window(b: Backend) {
    let q = &b.q;
    let now = SystemTime::now();
    let first = queued(q.append(event("gh", "k", now), now).await.unwrap());
    let later = now + Duration::from_secs(30);
    assert_eq!(
        q.append(event("gh", "k", later), later).await.unwrap(),
        Appended::Duplicate(first)
    );
    // The same key from another source is another delivery.
    let other = queued(q.append(event("gl", "k", later), later).await.unwrap());
    assert_ne!(other, first);
    let past = now + Duration::from_secs(61);
    let again = queued(q.append(event("gh", "k", past), past).await.unwrap());
    assert!(again > first, "{again:?} after {first:?}");
    let stats = q.stats(&[]).await.unwrap();
    assert_eq!(stats.inbox, 3);
}

async fn concurrent_appends_of_one_key_queue_it_once(b: Backend) {
    let now = SystemTime::now();
    let mut tasks = Vec::new();
    for i in 0..40 {
        let q = b.q.clone();
        let key = if i % 2 == 0 {
            "same".to_owned()
        } else {
            format!("own-{i}")
        };
        tasks.push(tokio::spawn(async move {
            (
                key.clone(),
                q.append(event("gh", &key, now), now).await.unwrap(),
            )
        }));
    }
    let mut same = Vec::new();
    let mut own = HashSet::new();
    for t in tasks {
        let (key, a) = t.await.unwrap();
        match key.as_str() {
            "same" => same.push(a),
            _ => assert!(own.insert(queued(a))),
        }
    }
    let firsts: Vec<EventId> = same
        .iter()
        .filter_map(|a| match a {
            Appended::Queued(id) => Some(*id),
            Appended::Duplicate(_) => None,
        })
        .collect();
    assert_eq!(firsts.len(), 1, "{same:?}");
    for a in &same {
        if let Appended::Duplicate(id) = a {
            assert_eq!(*id, firsts[0]);
        }
    }
    assert!(!own.contains(&firsts[0]));
    assert_eq!(b.q.stats(&[]).await.unwrap().inbox, 21);
}

async fn event_returns_what_was_stored(b: Backend) {
    let now = SystemTime::now();
    let e = event("gh", "k", now);
    let id = queued(b.q.append(e.clone(), now).await.unwrap());
    assert_eq!(b.q.event(id).await.unwrap(), Some(e.record.clone()));
    assert_eq!(b.q.event(EventId(id.0 + 1000)).await.unwrap(), None);
    let page = b.q.inbox(10).await.unwrap();
    assert_eq!(page.events.len(), 1);
    assert_eq!(page.events[0].0, id);
    assert_eq!(EventRecord::decode(&page.events[0].1).unwrap(), e.record);
}

async fn inbox_claims_each_event_once(b: Backend) {
    let q = &b.q;
    let ids = append_n(q, 3, "e").await;
    let page = q.inbox(10).await.unwrap();
    let got: Vec<EventId> = page.events.iter().map(|(id, _)| *id).collect();
    assert_eq!(got, ids, "oldest first");
    let again = q.inbox(10).await.unwrap();
    match b.kind {
        // Claimed: another router (this instance's or another's) does not
        // see them until the claim lapses.
        Kind::Postgres => assert!(again.events.is_empty(), "{:?}", again.events),
        // One router per data_dir, reading from its cursor: the page is
        // read again until it is routed.
        Kind::Local => assert_eq!(again.events.len(), 3),
    }
    let none = page
        .events
        .iter()
        .map(|(id, _)| Routed {
            event: *id,
            pending: vec![],
            dead: vec![],
        })
        .collect();
    q.routed(&page, none).await.unwrap();
    assert!(q.inbox(10).await.unwrap().events.is_empty());
    let stats = q.stats(&[]).await.unwrap();
    assert_eq!((stats.inbox, stats.unmatched), (0, 3));
    // A page read before those were routed is stale now.
    if b.kind == Kind::Local {
        let stale = q.routed(&again, vec![]).await;
        assert!(matches!(stale, Err(QueueError::Moved)), "{stale:?}");
    }
    // New events come after.
    let more = append_n(q, 1, "f").await;
    let page = q.inbox(10).await.unwrap();
    assert_eq!(page.events.iter().map(|e| e.0).collect::<Vec<_>>(), more);
}

async fn routed_assigns_delivery_ids_and_counts(b: Backend) {
    let q = &b.q;
    let ids = append_n(q, 2, "e").await;
    let routed = route_with(q, |id| match id == ids[0] {
        true => {
            let mut broken = dead(delivery(id, "c", 0), "template failed");
            broken.frozen = None;
            (
                vec![delivery(id, "a", 0), delivery(id, "b", 0)],
                vec![broken],
            )
        }
        false => (vec![], vec![]),
    })
    .await;
    assert_eq!(routed.len(), 2);
    let all: Vec<u64> = routed
        .iter()
        .flat_map(|r| r.pending.iter().chain(&r.dead).map(|d| d.id))
        .collect();
    assert_eq!(all.len(), 3);
    assert_eq!(
        all.iter().collect::<BTreeSet<_>>().len(),
        3,
        "distinct ids: {all:?}"
    );
    let stats = q
        .stats(&[("b".into(), "its secret is not set".into())])
        .await
        .unwrap();
    assert_eq!(
        (
            stats.inbox,
            stats.deliveries,
            stats.dead,
            stats.unmatched,
            stats.held
        ),
        (0, 2, 1, 1, 1)
    );
    assert_eq!(stats.disabled["b"].held, 1);
    assert!(stats.disk_bytes > 0);
    let dead_id = routed[0].dead[0].id;
    let stored = q.dead_letter(dead_id).await.unwrap().unwrap();
    assert_eq!(stored.sink, "c");
    assert_eq!(stored.reason.as_deref(), Some("template failed"));
    assert_eq!(stored.frozen, None);
    // Pending ones are not dead letters.
    assert_eq!(q.dead_letter(routed[0].pending[0].id).await.unwrap(), None);
    assert_eq!(q.next_due("a").await.unwrap(), Some(0));
    assert_eq!(q.next_due("nowhere").await.unwrap(), None);
}

async fn claim_goes_in_due_order_and_not_twice(b: Backend) {
    let q = &b.q;
    let ids = append_n(q, 4, "e").await;
    let dues = [300, 100, 200, 5000];
    let routed = route_with(q, |id| {
        let i = ids.iter().position(|x| *x == id).unwrap();
        (vec![delivery(id, "s", dues[i])], vec![])
    })
    .await;
    let by_due = |d: u64| routed[dues.iter().position(|x| *x == d).unwrap()].pending[0].id;
    let due = q.claim("s", limits(2), 1000).await.unwrap();
    assert_eq!(claimed_ids(&due), vec![by_due(100), by_due(200)]);
    assert_eq!(due.next_due, Some(100), "earliest pending");
    let due = q.claim("s", limits(10), 1000).await.unwrap();
    assert_eq!(
        claimed_ids(&due),
        vec![by_due(300)],
        "claimed ones skipped, 5000 not due"
    );
    assert!(claimed_ids(&q.claim("s", limits(10), 1000).await.unwrap()).is_empty());
    assert!(claimed_ids(&q.claim("other", limits(10), 1000).await.unwrap()).is_empty());
    // Released: due again.
    let first = q.claim("s", limits(10), 6000).await.unwrap();
    assert_eq!(claimed_ids(&first), vec![by_due(5000)]);
    q.release(&first.claimed[0].lease);
    assert_eq!(
        claim_until(q, "s", 6000, by_due(5000)).await,
        vec![by_due(5000)]
    );
}

async fn claim_starts_only_the_head_of_an_order_key(b: Backend) {
    let q = &b.q;
    let ids = append_n(q, 5, "e").await;
    // e0, e1: key A (e0 two items); e2: key B; e3 (not due yet), e4: key C.
    let routed = route_with(q, |id| {
        let i = ids.iter().position(|x| *x == id).unwrap();
        let mut ds = match i {
            0 => {
                let mut x = delivery(id, "s", 100);
                x.item = Some(0);
                let mut y = delivery(id, "s", 10);
                y.item = Some(1);
                vec![x, y]
            }
            3 => vec![delivery(id, "s", 9000)],
            _ => vec![delivery(id, "s", 50)],
        };
        let key = ["A", "A", "B", "C", "C"][i];
        for d in &mut ds {
            d.order_key = Some(key.into());
        }
        (ds, vec![])
    })
    .await;
    let id_of = |event: usize, n: usize| routed[event].pending[n].id;
    let due = q.claim("s", limits(10), 1000).await.unwrap();
    // B's head (due 50), then A's head (item 0, due 100); A's item 1 and
    // e1 wait for it; C's head is not due, so e4 waits too.
    assert_eq!(claimed_ids(&due), vec![id_of(2, 0), id_of(0, 0)]);
    assert!(claimed_ids(&q.claim("s", limits(10), 1000).await.unwrap()).is_empty());
    let a = due
        .claimed
        .iter()
        .find(|c| c.rec.id == id_of(0, 0))
        .unwrap();
    q.settle(&a.lease, &a.rec, Settle::Done).await.unwrap();
    let due = q.claim("s", limits(10), 1000).await.unwrap();
    assert_eq!(claimed_ids(&due), vec![id_of(0, 1)]);
    // Buried, the head lets the next go.
    let mut rec = due.claimed[0].rec.clone();
    rec.reason = Some("gave up".into());
    rec.dead_ms = Some(1000);
    q.settle(&due.claimed[0].lease, &rec, Settle::Bury)
        .await
        .unwrap();
    let due = q.claim("s", limits(10), 1000).await.unwrap();
    assert_eq!(claimed_ids(&due), vec![id_of(1, 0)]);
}

async fn settle_done_reschedule_bury(b: Backend) {
    let q = &b.q;
    append_n(q, 3, "e").await;
    route_with(q, |id| (vec![delivery(id, "s", 10)], vec![])).await;
    let due = q.claim("s", limits(10), 1000).await.unwrap();
    assert_eq!(due.claimed.len(), 3);
    let [done, later, bury] = &due.claimed[..] else {
        unreachable!()
    };
    q.settle(&done.lease, &done.rec, Settle::Done)
        .await
        .unwrap();
    let mut rec = later.rec.clone();
    rec.due_ms = 5000;
    rec.failures = 1;
    rec.attempts.push(Attempt {
        at_ms: 1000,
        status: Some(503),
        latency_ms: 12,
        outcome: "retry: 503".into(),
        response: "busy".into(),
    });
    q.settle(&later.lease, &rec, Settle::Reschedule)
        .await
        .unwrap();
    let mut gone = bury.rec.clone();
    gone.reason = Some("410 Gone".into());
    gone.dead_ms = Some(1000);
    gone.failures = 4;
    q.settle(&bury.lease, &gone, Settle::Bury).await.unwrap();
    let stats = q.stats(&[]).await.unwrap();
    assert_eq!((stats.deliveries, stats.dead), (1, 1));
    assert!(claimed_ids(&q.claim("s", limits(10), 1000).await.unwrap()).is_empty());
    assert_eq!(q.next_due("s").await.unwrap(), Some(5000));
    let due = q.claim("s", limits(10), 5000).await.unwrap();
    assert_eq!(due.claimed.len(), 1);
    assert_eq!(due.claimed[0].rec, rec, "rescheduled as settled");
    let stored = q.dead_letter(gone.id).await.unwrap().unwrap();
    assert_eq!(stored, gone);
    assert_eq!(q.dead_by_sink().await.unwrap().get("s"), Some(&1));
}

/// A delivery forwarding its event's body (the http sink's default) is
/// claimed with that body byte for byte, again after a reschedule, and
/// keeps it as a dead letter, on every backend (the local one stores it as
/// a reference to the event and reads it back).
async fn a_body_of_the_event_is_claimed_rescheduled_and_buried_whole(b: Backend) {
    let q = &b.q;
    append_n(q, 2, "fwd").await;
    let body = record("gh", SystemTime::now()).body;
    route_with(q, |id| {
        let mut d = delivery(id, "s", 10);
        let frozen = d.frozen.as_mut().unwrap();
        frozen.body = serde_bytes::ByteBuf::from(body.clone());
        frozen.body_of_event = BodyOfEvent::Held;
        (vec![d], vec![])
    })
    .await;
    let due = q.claim("s", limits(10), 1000).await.unwrap();
    assert_eq!(due.claimed.len(), 2);
    for c in &due.claimed {
        assert_eq!(c.rec.frozen.as_ref().unwrap().body.as_slice(), &body[..]);
    }
    let [later, bury] = &due.claimed[..] else {
        unreachable!()
    };
    let mut rec = later.rec.clone();
    rec.due_ms = 5000;
    rec.failures = 1;
    q.settle(&later.lease, &rec, Settle::Reschedule)
        .await
        .unwrap();
    let mut gone = bury.rec.clone();
    gone.reason = Some("410 Gone".into());
    gone.dead_ms = Some(1000);
    q.settle(&bury.lease, &gone, Settle::Bury).await.unwrap();
    let due = q.claim("s", limits(10), 5000).await.unwrap();
    assert_eq!(due.claimed.len(), 1);
    let again = due.claimed[0].rec.frozen.as_ref().unwrap();
    assert_eq!(again.body.as_slice(), &body[..], "after a reschedule");
    let dead = q.dead_letter(gone.id).await.unwrap().unwrap();
    assert_eq!(dead.frozen.unwrap().body.as_slice(), &body[..]);
}

async fn dead_letters_page_by_id(b: Backend) {
    let q = &b.q;
    append_n(q, 5, "e").await;
    let routed = route_with(q, |id| {
        let sink = if id.0 % 2 == 0 { "a" } else { "b" };
        (vec![], vec![dead(delivery(id, sink, 0), "no")])
    })
    .await;
    let mut ids: Vec<u64> = routed.iter().map(|r| r.dead[0].id).collect();
    ids.sort();
    let mut seen = Vec::new();
    let mut after = None;
    loop {
        let page = q.dead_letters(after, 2).await.unwrap();
        assert!(page.len() <= 2);
        let Some(last) = page.last() else { break };
        after = Some(last.id);
        seen.extend(page.iter().map(|d| d.id));
    }
    assert_eq!(seen, ids);
    assert!(q.dead_letters(Some(u64::MAX), 10).await.unwrap().is_empty());
    let by_sink = q.dead_by_sink().await.unwrap();
    assert_eq!(by_sink.values().sum::<u64>(), 5);
}

async fn requeue_one_all_and_refused(b: Backend) {
    let q = &b.q;
    let ids = append_n(q, 3, "e").await;
    let attempt = Attempt {
        at_ms: 3,
        status: Some(500),
        latency_ms: 1,
        outcome: "retry: 500".into(),
        response: String::new(),
    };
    let routed = route_with(q, |id| {
        let i = ids.iter().position(|x| *x == id).unwrap();
        let mut d = dead(delivery(id, ["a", "gone", "a"][i], 0), "failed");
        d.failures = 7;
        d.attempts.push(attempt.clone());
        if i == 2 {
            d.frozen = None;
        }
        (vec![], vec![d])
    })
    .await;
    let id = |i: usize| routed[i].dead[0].id;
    let keep = |d: &DeliveryRecord| {
        (d.sink == "gone").then(|| "sink `gone` is not in the config".to_owned())
    };
    let one = q.requeue(Some(id(0)), 2000, &keep).await.unwrap();
    assert_eq!(one.replayed, 1);
    assert!(one.refused.is_empty());
    assert_eq!(one.sinks, BTreeSet::from(["a".to_owned()]));
    assert_eq!(q.dead_letter(id(0)).await.unwrap(), None);
    let due = q.claim("a", limits(10), 2000).await.unwrap();
    assert_eq!(claimed_ids(&due), vec![id(0)]);
    let rec = &due.claimed[0].rec;
    assert_eq!(
        (rec.due_ms, rec.failures, rec.reason.as_deref(), rec.dead_ms),
        (2000, 0, None, None)
    );
    assert_eq!(rec.attempts, vec![attempt.clone()], "history kept");
    let all = q.requeue(None, 2000, &keep).await.unwrap();
    assert_eq!(all.replayed, 0);
    let refused: Vec<u64> = all.refused.iter().map(|r| r.id).collect();
    assert_eq!(refused, vec![id(1), id(2)]);
    assert!(all.refused[0].reason.contains("not in the config"));
    assert!(
        all.refused[1].reason.contains("template failed"),
        "{:?}",
        all.refused[1]
    );
    assert_eq!(q.stats(&[]).await.unwrap().dead, 2);
    // Replaying all takes every one that may go.
    let every = q.requeue(None, 2000, &|_| None).await.unwrap();
    assert_eq!(every.replayed, 1);
    assert_eq!(every.refused.len(), 1);
    assert_eq!(
        q.requeue(Some(999_999), 0, &|_| None)
            .await
            .unwrap()
            .replayed,
        0
    );
}

async fn bury_orphans_spares_claimed_and_configured(b: Backend) {
    let q = &b.q;
    let ids = append_n(q, 6, "e").await;
    // "ab" begins with a configured sink's name, "zz" sorts after them.
    let routed = route_with(q, |id| {
        let i = ids.iter().position(|x| *x == id).unwrap();
        (
            vec![delivery(
                id,
                ["a", "gone", "gone", "b", "ab", "zz"][i],
                10 + i as u64,
            )],
            vec![],
        )
    })
    .await;
    let mut one = limits(1);
    one.max = 1;
    let claimed = q.claim("gone", one, 1000).await.unwrap();
    assert_eq!(claimed_ids(&claimed), vec![routed[1].pending[0].id]);
    let n = q
        .bury_orphans(&["a".into(), "b".into()], 2000)
        .await
        .unwrap();
    assert_eq!(n, 3);
    for r in &routed[4..] {
        let id = r.pending[0].id;
        assert!(q.dead_letter(id).await.unwrap().is_some(), "{id} buried");
    }
    let buried = q
        .dead_letter(routed[2].pending[0].id)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        buried.reason.as_deref(),
        Some("sink `gone` removed from the config")
    );
    assert_eq!(buried.dead_ms, Some(2000));
    let stats = q.stats(&[]).await.unwrap();
    assert_eq!((stats.deliveries, stats.dead), (3, 3));
    // The claimed one settles itself.
    let c = &claimed.claimed[0];
    q.settle(&c.lease, &c.rec, Settle::Done).await.unwrap();
    assert_eq!(q.stats(&[]).await.unwrap().deliveries, 2);
    assert_eq!(
        q.bury_orphans(&["a".into(), "b".into()], 3000)
            .await
            .unwrap(),
        0
    );
}

/// Events are listed newest first, routed or not, by each filter, and
/// page by `before`.
async fn events_list_by_each_filter_and_page(b: Backend) {
    let q = &b.q;
    let t = unix_millis(SystemTime::now()) - 3_600_000;
    let now = SystemTime::now();
    let mut ids = Vec::new();
    for (source, kind, did, at) in [
        ("gh", "push", "d-a", t),
        ("gl", "merge_request", "d-b", t + 10_000),
        ("gh", "pull_request", "d-c", t + 20_000),
        ("gh", "push", "d-a", t + 30_000),
        ("gl", "merge_request", "", t + 40_000),
    ] {
        ids.push(
            queued(
                q.append(looked_up(source, kind, did, at), now)
                    .await
                    .unwrap(),
            )
            .0,
        );
    }
    // The first three are routed; the last two wait.
    let page = q.inbox(3).await.unwrap();
    assert_eq!(page.events.len(), 3);
    let none = page
        .events
        .iter()
        .map(|(id, _)| Routed {
            event: *id,
            pending: vec![],
            dead: vec![],
        })
        .collect();
    q.routed(&page, none).await.unwrap();
    let newest_first = |of: &[usize]| of.iter().map(|&i| ids[i]).collect::<Vec<_>>();
    let list = |f: EventFilter| async move { ids_of(&all_events(q, &f, 50).await.0) };

    let (all, _) = all_events(q, &EventFilter::default(), 50).await;
    assert_eq!(ids_of(&all), newest_first(&[4, 3, 2, 1, 0]));
    assert_eq!(
        all[3],
        EventSummary {
            id: ids[1],
            received_ms: t + 10_000,
            source: "gl".into(),
            provider: "gitlab".into(),
            event: "merge_request".into(),
            delivery_id: "d-b".into(),
        }
    );
    let f = |source: Option<&str>, event: Option<&str>, delivery_id: Option<&str>| EventFilter {
        source: source.map(Into::into),
        event: event.map(Into::into),
        delivery_id: delivery_id.map(Into::into),
        ..Default::default()
    };
    assert_eq!(
        list(f(Some("gh"), None, None)).await,
        newest_first(&[3, 2, 0])
    );
    assert_eq!(
        list(f(None, Some("push"), None)).await,
        newest_first(&[3, 0])
    );
    // Routed and not: both found by their delivery id.
    assert_eq!(
        list(f(None, None, Some("d-a"))).await,
        newest_first(&[3, 0])
    );
    assert!(list(f(Some("gl"), None, Some("d-a"))).await.is_empty());
    assert_eq!(
        list(f(Some("gh"), Some("push"), Some("d-a"))).await,
        newest_first(&[3, 0])
    );
    // No delivery id is one too.
    assert_eq!(list(f(None, None, Some(""))).await, newest_first(&[4]));
    assert!(list(f(None, None, Some("d-zz"))).await.is_empty());
    let range = EventFilter {
        since_ms: Some(t + 10_000),
        until_ms: Some(t + 40_000),
        ..Default::default()
    };
    assert_eq!(list(range).await, newest_first(&[3, 2, 1]));
    // Pages of two.
    let page = q.events(&EventFilter::default(), None, 2).await.unwrap();
    assert_eq!(
        (ids_of(&page.items), page.next_before),
        (newest_first(&[4, 3]), Some(ids[3]))
    );
    let page = q
        .events(&EventFilter::default(), page.next_before, 2)
        .await
        .unwrap();
    assert_eq!(
        (ids_of(&page.items), page.next_before),
        (newest_first(&[2, 1]), Some(ids[1]))
    );
    let page = q
        .events(&EventFilter::default(), page.next_before, 2)
        .await
        .unwrap();
    assert_eq!(ids_of(&page.items), newest_first(&[0]));
    if let Some(b) = page.next_before {
        assert!(q
            .events(&EventFilter::default(), Some(b), 2)
            .await
            .unwrap()
            .items
            .is_empty());
    }
    let (paged, _) = all_events(q, &f(Some("gh"), None, None), 1).await;
    assert_eq!(ids_of(&paged), newest_first(&[3, 2, 0]));
    let below = q
        .events(&EventFilter::default(), Some(ids[2]), 50)
        .await
        .unwrap();
    assert_eq!(ids_of(&below.items), newest_first(&[1, 0]));
    // The events themselves still read.
    assert_eq!(
        q.event(EventId(ids[1])).await.unwrap().unwrap().delivery_id,
        "d-b"
    );
}

/// Past what a call reads for a filter without an index, a page says
/// where to go on; a delivery id is found at once however old.
async fn events_pages_are_bounded_and_delivery_ids_indexed(b: Backend) {
    let q = &b.q;
    let now = SystemTime::now();
    let t = unix_millis(now) - 3_600_000;
    let needle = queued(
        q.append(looked_up("rare", "push", "needle", t), now)
            .await
            .unwrap(),
    )
    .0;
    let n = 10_048;
    let tasks: Vec<_> = (0..64)
        .map(|w| {
            let q = q.clone();
            tokio::spawn(async move {
                for i in 0..n / 64 {
                    let did = format!("hay-{w}-{i}");
                    queued(
                        q.append(looked_up("gh", "push", &did, t + 1), now)
                            .await
                            .unwrap(),
                    );
                }
            })
        })
        .collect();
    for task in tasks {
        task.await.unwrap();
    }
    loop {
        let page = q.inbox(1000).await.unwrap();
        if page.events.is_empty() {
            break;
        }
        let none = page
            .events
            .iter()
            .map(|(id, _)| Routed {
                event: *id,
                pending: vec![],
                dead: vec![],
            })
            .collect();
        q.routed(&page, none).await.unwrap();
    }
    let started = std::time::Instant::now();
    let page = q.events(&EventFilter::default(), None, 50).await.unwrap();
    eprintln!(
        "{:?}: the newest 50 of {} events in {:?}",
        b.kind,
        n + 1,
        started.elapsed()
    );
    assert_eq!(page.items.len(), 50);
    let by_id = EventFilter {
        delivery_id: Some("needle".into()),
        ..Default::default()
    };
    let started = std::time::Instant::now();
    let page = q.events(&by_id, None, 50).await.unwrap();
    eprintln!("{:?}: one delivery id in {:?}", b.kind, started.elapsed());
    assert_eq!(
        (ids_of(&page.items), page.next_before),
        (vec![needle], None)
    );
    let by_source = EventFilter {
        source: Some("rare".into()),
        ..Default::default()
    };
    let page = q.events(&by_source, None, 50).await.unwrap();
    assert!(
        page.items.is_empty(),
        "the oldest is past what one call reads"
    );
    assert!(page.next_before.is_some_and(|b| b > needle));
    let (found, calls) = all_events(q, &by_source, 50).await;
    assert_eq!(ids_of(&found), vec![needle]);
    assert!(calls >= 2, "{calls}");
}

/// Deliveries in every state, by event, sink, route, state and the time
/// of the state, newest first, paged.
async fn deliveries_by_event_sink_status_and_time(b: Backend) {
    let q = &b.q;
    let ids = append_n(q, 3, "e").await;
    let routed = route_with(q, |id| {
        let i = ids.iter().position(|x| *x == id).unwrap();
        let made = |sink: &str, created_ms: u64| {
            let mut d = delivery(id, sink, 0);
            d.created_ms = created_ms;
            d
        };
        match i {
            0 => {
                let mut c = dead(made("c", 120), "template: boom");
                c.frozen = None;
                c.dead_ms = Some(1_500);
                (vec![made("a", 100), made("b", 110)], vec![c])
            }
            1 => (vec![made("a", 200)], vec![]),
            _ => {
                let mut d = made("b", 300);
                d.route = "r2".into();
                (vec![d], vec![])
            }
        }
    })
    .await;
    let (d0a, d0b, d0c) = (
        routed[0].pending[0].id,
        routed[0].pending[1].id,
        routed[0].dead[0].id,
    );
    let (d1a, d2b) = (routed[1].pending[0].id, routed[2].pending[0].id);
    // e0's to `a` is delivered at 2 000; e1's dies at 3 000.
    let due = q.claim("a", limits(10), 1_000).await.unwrap();
    assert_eq!(claimed_ids(&due), vec![d0a, d1a]);
    let delivered = deliver(q, &due.claimed[0], 2_000).await;
    let mut buried = due.claimed[1].rec.clone();
    buried.reason = Some("410 Gone".into());
    buried.dead_ms = Some(3_000);
    q.settle(&due.claimed[1].lease, &buried, Settle::Bury)
        .await
        .unwrap();

    let of_event = all_deliveries(
        q,
        &DeliveryFilter {
            event_id: Some(ids[0].0),
            ..Default::default()
        },
        50,
    )
    .await;
    let seen: Vec<(u64, DeliveryStatus)> =
        of_event.iter().map(|v| (v.record.id, v.status)).collect();
    assert_eq!(
        seen,
        vec![
            (d0c, DeliveryStatus::Dead),
            (d0b, DeliveryStatus::Pending),
            (d0a, DeliveryStatus::Delivered)
        ]
    );
    assert_eq!(
        of_event[2].record, delivered,
        "the final record, attempts and all"
    );
    assert_eq!(of_event[0].record.reason.as_deref(), Some("template: boom"));
    let f = |status: Option<DeliveryStatus>,
             sink: Option<&str>,
             since: Option<u64>,
             until: Option<u64>| DeliveryFilter {
        status,
        sink: sink.map(Into::into),
        since_ms: since,
        until_ms: until,
        ..Default::default()
    };
    use DeliveryStatus::{Dead, Delivered, Pending};
    assert_eq!(
        delivery_ids(q, f(None, None, None, None)).await,
        vec![d2b, d1a, d0c, d0b, d0a]
    );
    assert_eq!(
        delivery_ids(q, f(None, Some("a"), None, None)).await,
        vec![d1a, d0a]
    );
    assert_eq!(
        delivery_ids(q, f(Some(Pending), None, None, None)).await,
        vec![d2b, d0b]
    );
    assert_eq!(
        delivery_ids(q, f(Some(Pending), Some("b"), None, None)).await,
        vec![d2b, d0b]
    );
    assert!(delivery_ids(q, f(Some(Pending), Some("a"), None, None))
        .await
        .is_empty());
    assert_eq!(
        delivery_ids(q, f(Some(Dead), None, None, None)).await,
        vec![d1a, d0c]
    );
    assert_eq!(
        delivery_ids(q, f(Some(Delivered), None, None, None)).await,
        vec![d0a]
    );
    // The time of each state: died, delivered, made.
    assert_eq!(
        delivery_ids(q, f(Some(Dead), None, Some(2_000), None)).await,
        vec![d1a]
    );
    assert_eq!(
        delivery_ids(q, f(Some(Dead), None, None, Some(2_000))).await,
        vec![d0c]
    );
    assert_eq!(
        delivery_ids(q, f(Some(Delivered), None, Some(2_000), Some(2_001))).await,
        vec![d0a]
    );
    assert!(delivery_ids(q, f(Some(Delivered), None, Some(2_001), None))
        .await
        .is_empty());
    assert_eq!(
        delivery_ids(q, f(None, None, Some(200), None)).await,
        vec![d2b, d1a]
    );
    assert_eq!(
        delivery_ids(q, f(Some(Pending), None, Some(105), Some(301))).await,
        vec![d2b, d0b]
    );
    let by_route = DeliveryFilter {
        route: Some("r2".into()),
        ..Default::default()
    };
    assert_eq!(delivery_ids(q, by_route).await, vec![d2b]);
    let by_event_type = DeliveryFilter {
        event_id: Some(ids[0].0),
        status: Some(Dead),
        ..Default::default()
    };
    assert_eq!(delivery_ids(q, by_event_type).await, vec![d0c]);
    // Pages of two, and below an id.
    let page = q
        .deliveries(&DeliveryFilter::default(), None, 2)
        .await
        .unwrap();
    let got: Vec<u64> = page.items.iter().map(|v| v.record.id).collect();
    assert_eq!((got, page.next_before), (vec![d2b, d1a], Some(d1a)));
    let paged: Vec<u64> = all_deliveries(q, &DeliveryFilter::default(), 2)
        .await
        .iter()
        .map(|v| v.record.id)
        .collect();
    assert_eq!(paged, vec![d2b, d1a, d0c, d0b, d0a]);
    let below = q
        .deliveries(&DeliveryFilter::default(), Some(d0c), 50)
        .await
        .unwrap();
    let got: Vec<u64> = below.items.iter().map(|v| v.record.id).collect();
    assert_eq!((got, below.next_before), (vec![d0b, d0a], None));
    // Pending ones read as they now are.
    let pending = all_deliveries(q, &f(Some(Pending), Some("b"), None, None), 50).await;
    assert_eq!(pending[1].record, routed[0].pending[1]);
}

/// The delivered history goes once delivered longer ago than the
/// retention (whole days at a time on PostgreSQL).
async fn delivered_history_expires_after_retention(b: Backend) {
    let q = &b.q;
    let ids = append_n(q, 2, "e").await;
    route_with(q, |id| (vec![delivery(id, "s", 0)], vec![])).await;
    let due = q.claim("s", limits(10), 1_000).await.unwrap();
    assert_eq!(due.claimed.len(), 2);
    const DAY: u64 = 86_400_000;
    let old = deliver(q, &due.claimed[0], DAY + 5_000).await;
    let young = deliver(q, &due.claimed[1], 10 * DAY).await;
    let delivered = DeliveryFilter {
        status: Some(DeliveryStatus::Delivered),
        ..Default::default()
    };
    assert_eq!(
        delivery_ids(q, delivered.clone()).await,
        vec![young.id, old.id]
    );
    assert_eq!(
        q.stats(&[]).await.unwrap().deliveries,
        0,
        "out of the queue"
    );
    q.prune(at_ms(10 * DAY + 3_600_000), Duration::from_millis(2 * DAY))
        .await
        .unwrap();
    assert_eq!(delivery_ids(q, delivered).await, vec![young.id]);
    let of = |e: EventId| DeliveryFilter {
        event_id: Some(e.0),
        ..Default::default()
    };
    assert!(delivery_ids(q, of(ids[0])).await.is_empty());
    assert_eq!(delivery_ids(q, of(ids[1])).await, vec![young.id]);
    // The events themselves are younger than the retention: kept.
    assert!(q.event(ids[0]).await.unwrap().is_some());
}

/// Dead letters replayed by filter: a dry run counts and changes
/// nothing; the same refusals as `requeue`; the status asked is ignored.
async fn requeue_where_dry_run_then_replays(b: Backend) {
    let q = &b.q;
    let ids = append_n(q, 5, "e").await;
    let routed = route_with(q, |id| {
        let i = ids.iter().position(|x| *x == id).unwrap();
        let sink = if i == 3 { "gone" } else { "a" };
        let mut d = dead(delivery(id, sink, 0), "failed");
        d.dead_ms = Some([1_000, 2_000, 2_500, 2_000, 2_000][i]);
        if i == 2 {
            d.route = "r2".into();
        }
        if i == 4 {
            d.frozen = None;
        }
        let pending = match i {
            0 => vec![delivery(id, "a", 50)],
            _ => vec![],
        };
        (pending, vec![d])
    })
    .await;
    let id = |i: usize| routed[i].dead[0].id;
    let refuse = |d: &DeliveryRecord| {
        (d.sink == "gone").then(|| "sink `gone` is not in the config".to_owned())
    };
    let window = DeliveryFilter {
        sink: Some("a".into()),
        since_ms: Some(1_500),
        until_ms: Some(3_000),
        status: Some(DeliveryStatus::Pending),
        ..Default::default()
    };
    let dry = q
        .requeue_where(&window, 9_000, &refuse, true)
        .await
        .unwrap();
    assert_eq!(dry.replayed, 2, "{dry:?}");
    assert_eq!(
        dry.refused.iter().map(|r| r.id).collect::<Vec<_>>(),
        vec![id(4)]
    );
    assert!(dry.refused[0].reason.contains("template failed"));
    assert_eq!(dry.sinks, BTreeSet::from(["a".to_owned()]));
    assert_eq!(
        q.stats(&[]).await.unwrap().dead,
        5,
        "a dry run changes nothing"
    );
    let route_r = DeliveryFilter {
        route: Some("r".into()),
        ..window.clone()
    };
    let one = q
        .requeue_where(&route_r, 9_000, &refuse, false)
        .await
        .unwrap();
    assert_eq!((one.replayed, one.refused.len()), (1, 1));
    assert_eq!(q.dead_letter(id(1)).await.unwrap(), None);
    let claimed = q.claim("a", limits(10), 9_000).await.unwrap();
    let mut got = claimed_ids(&claimed);
    got.sort();
    assert_eq!(got, vec![routed[0].pending[0].id, id(1)]);
    let rec = &claimed
        .claimed
        .iter()
        .find(|c| c.rec.id == id(1))
        .unwrap()
        .rec;
    assert_eq!(
        (rec.due_ms, rec.failures, rec.reason.as_deref(), rec.dead_ms),
        (9_000, 0, None, None)
    );
    for c in &claimed.claimed {
        q.release(&c.lease);
    }
    // Everything dead: the one to a removed sink and the one with nothing
    // to send stay, and say why.
    let all = DeliveryFilter::default();
    let dry = q.requeue_where(&all, 9_000, &refuse, true).await.unwrap();
    assert_eq!(dry.replayed, 2);
    let mut refused: Vec<u64> = dry.refused.iter().map(|r| r.id).collect();
    refused.sort();
    assert_eq!(refused, vec![id(3), id(4)]);
    let real = q.requeue_where(&all, 9_000, &refuse, false).await.unwrap();
    assert_eq!((real.replayed, real.refused.len()), (2, 2));
    let dead_ids = delivery_ids(
        q,
        DeliveryFilter {
            status: Some(DeliveryStatus::Dead),
            ..Default::default()
        },
    )
    .await;
    assert_eq!(dead_ids, vec![id(4), id(3)]);
    let again = q.requeue_where(&all, 9_000, &refuse, false).await.unwrap();
    assert_eq!(again.replayed, 0);
    let of_event = DeliveryFilter {
        event_id: Some(ids[3].0),
        ..Default::default()
    };
    let gone = q
        .requeue_where(&of_event, 9_000, &|_| None, false)
        .await
        .unwrap();
    assert_eq!((gone.replayed, gone.refused.len()), (1, 0));
    assert_eq!(q.stats(&[]).await.unwrap().dead, 1);
}

/// Re-routing stores only what is missing (pending, delivered and dead
/// ones exist), under fresh ids; an event not routed yet is left to
/// routing.
async fn add_missing_creates_only_what_is_missing(b: Backend) {
    let q = &b.q;
    let e0 = append_n(q, 1, "e").await[0];
    let routed = route_with(q, |id| {
        let mut c = dead(delivery(id, "c", 0), "failed");
        c.dead_ms = Some(10);
        (vec![delivery(id, "a", 0), delivery(id, "b", 0)], vec![c])
    })
    .await;
    let due = q.claim("b", limits(10), 1_000).await.unwrap();
    deliver(q, &due.claimed[0], 1_500).await;
    let e1 = append_n(q, 1, "f").await[0];
    let target = |e: EventId, route: &str, sink: &str| {
        let mut d = delivery(e, sink, 0);
        d.route = route.into();
        d
    };
    let mut born_dead = target(e0, "r", "e");
    born_dead.reason = Some("template: boom".into());
    born_dead.dead_ms = Some(20);
    born_dead.frozen = None;
    let again = vec![
        target(e0, "r", "a"),
        target(e0, "r", "b"),
        target(e0, "r", "c"),
        target(e0, "r", "d"),
        target(e0, "r", "d"),
        target(e0, "r2", "a"),
        born_dead,
        target(e1, "r", "a"),
    ];
    let added = q.add_missing(again.clone()).await.unwrap();
    assert_eq!(
        added,
        Added {
            created: 3,
            existing: 5
        }
    );
    let views = all_deliveries(
        q,
        &DeliveryFilter {
            event_id: Some(e0.0),
            ..Default::default()
        },
        50,
    )
    .await;
    let old: Vec<u64> = routed[0]
        .pending
        .iter()
        .chain(&routed[0].dead)
        .map(|d| d.id)
        .collect();
    let new: Vec<&DeliveryView> = views
        .iter()
        .filter(|v| !old.contains(&v.record.id))
        .collect();
    assert_eq!(views.len(), 6);
    let mut made: Vec<(String, String, DeliveryStatus)> = new
        .iter()
        .map(|v| (v.record.route.clone(), v.record.sink.clone(), v.status))
        .collect();
    made.sort_by(|a, b| (&a.0, &a.1).cmp(&(&b.0, &b.1)));
    assert_eq!(
        made,
        vec![
            ("r".into(), "d".into(), DeliveryStatus::Pending),
            ("r".into(), "e".into(), DeliveryStatus::Dead),
            ("r2".into(), "a".into(), DeliveryStatus::Pending)
        ]
    );
    assert!(
        new.iter().all(|v| v.record.id > *old.iter().max().unwrap()),
        "fresh ids"
    );
    let due = q.claim("d", limits(10), 1_000).await.unwrap();
    assert_eq!(due.claimed.len(), 1, "the new one is due");
    q.release(&due.claimed[0].lease);
    // Once: the same again makes nothing.
    assert_eq!(
        q.add_missing(again).await.unwrap(),
        Added {
            created: 0,
            existing: 8
        }
    );
    // Routed now (to nothing): e1's is missing.
    route_with(q, |_| (vec![], vec![])).await;
    let e1_again = vec![target(e1, "r", "a")];
    assert_eq!(
        q.add_missing(e1_again).await.unwrap(),
        Added {
            created: 1,
            existing: 0
        }
    );
    assert_eq!(q.add_missing(vec![]).await.unwrap(), Added::default());
}

/// `SystemTime` at `ms` after the epoch (the tests' clock for dead times).
fn at_ms(ms: u64) -> SystemTime {
    SystemTime::UNIX_EPOCH + Duration::from_millis(ms)
}

/// Dead letters go once they died longer ago than the retention, the
/// oldest and only those, by sink; a young one can still be replayed,
/// and one replayed and dead again is dated by its second death.
async fn dead_letters_expire_by_when_they_died(b: Backend) {
    let q = &b.q;
    let ids = append_n(q, 5, "e").await;
    // e0..e3 are pending (buried below at different times); e4 is born
    // dead at 1 500 (its template failed).
    let routed = route_with(q, |id| {
        let i = ids.iter().position(|x| *x == id).unwrap();
        let sink = ["a", "b", "a", "b", "b"][i];
        match i {
            4 => {
                let mut d = dead(delivery(id, sink, 0), "template: boom");
                d.dead_ms = Some(1_500);
                (vec![], vec![d])
            }
            _ => (vec![delivery(id, sink, 10 + i as u64)], vec![]),
        }
    })
    .await;
    let id = |i: usize| match i {
        4 => routed[4].dead[0].id,
        _ => routed[i].pending[0].id,
    };
    // e0 (a) dies at 1 000, e1 (b) at 2 000, e2 (a) at 5 000, e3 (b) at 9 000.
    for (sink, of) in [("a", [0, 2]), ("b", [1, 3])] {
        let due = q.claim(sink, limits(10), 1_000).await.unwrap();
        assert_eq!(claimed_ids(&due), vec![id(of[0]), id(of[1])]);
        for c in &due.claimed {
            let i = (0..4).find(|&i| id(i) == c.rec.id).unwrap();
            let mut rec = c.rec.clone();
            rec.reason = Some("410 Gone".into());
            rec.dead_ms = Some([1_000, 2_000, 5_000, 9_000][i]);
            q.settle(&c.lease, &rec, Settle::Bury).await.unwrap();
        }
    }
    assert_eq!(q.stats(&[]).await.unwrap().dead, 5);
    // Kept 3 s, at 6 s: what died before 3 s goes (e0, e4, e1).
    let keep = Duration::from_millis(3_000);
    let expired = q.prune_dead(at_ms(6_000), keep).await.unwrap();
    assert_eq!(
        expired,
        [("a".to_owned(), 1), ("b".to_owned(), 2)].into(),
        "by sink"
    );
    for i in [0, 1, 4] {
        assert_eq!(q.dead_letter(id(i)).await.unwrap(), None, "e{i} expired");
    }
    for i in [2, 3] {
        assert!(q.dead_letter(id(i)).await.unwrap().is_some(), "e{i} kept");
    }
    let stats = q.stats(&[]).await.unwrap();
    assert_eq!((stats.dead, stats.deliveries), (2, 0));
    assert_eq!(
        q.dead_by_sink().await.unwrap(),
        [("a".to_owned(), 1), ("b".to_owned(), 1)].into()
    );
    let listed: Vec<u64> = q
        .dead_letters(None, 100)
        .await
        .unwrap()
        .iter()
        .map(|d| d.id)
        .collect();
    assert_eq!(listed, vec![id(2), id(3)]);
    // Nothing more is due: a second pass deletes nothing.
    assert!(q.prune_dead(at_ms(6_000), keep).await.unwrap().is_empty());
    // An expired one is gone for replay too.
    assert_eq!(
        q.requeue(Some(id(0)), 7_000, &|_| None)
            .await
            .unwrap()
            .replayed,
        0
    );
    // A young one still replays; it fails again at 20 s.
    assert_eq!(
        q.requeue(Some(id(2)), 7_000, &|_| None)
            .await
            .unwrap()
            .replayed,
        1
    );
    assert_eq!(q.stats(&[]).await.unwrap().dead, 1);
    let due = q.claim("a", limits(10), 7_000).await.unwrap();
    assert_eq!(claimed_ids(&due), vec![id(2)]);
    let mut again = due.claimed[0].rec.clone();
    again.reason = Some("410 Gone".into());
    again.dead_ms = Some(20_000);
    q.settle(&due.claimed[0].lease, &again, Settle::Bury)
        .await
        .unwrap();
    // At 13 s, what died before 10 s goes: e3 (9 s), not e2, whose first
    // death (5 s) no longer counts.
    let expired = q.prune_dead(at_ms(13_000), keep).await.unwrap();
    assert_eq!(expired, [("b".to_owned(), 1)].into());
    assert_eq!(
        q.dead_letter(id(2)).await.unwrap().unwrap().dead_ms,
        Some(20_000)
    );
    // It goes once its second death is past the retention.
    assert!(q.prune_dead(at_ms(23_000), keep).await.unwrap().is_empty());
    let expired = q.prune_dead(at_ms(23_001), keep).await.unwrap();
    assert_eq!(expired, [("a".to_owned(), 1)].into());
    let stats = q.stats(&[]).await.unwrap();
    assert_eq!((stats.dead, stats.deliveries), (0, 0));
    assert!(q.dead_by_sink().await.unwrap().is_empty());
}

/// More dead letters than one batch deletes: every one goes, each once.
async fn dead_letters_expire_past_one_batch(b: Backend) {
    let q = &b.q;
    append_n(q, 3, "e").await;
    route_with(q, |id| {
        let dead = (0..900)
            .map(|item| {
                let mut d = dead(delivery(id, "s", 0), "template: boom");
                d.item = Some(item);
                d.dead_ms = Some(1_000 + u64::from(item));
                d
            })
            .collect();
        (vec![], dead)
    })
    .await;
    // One of each event's young enough to stay.
    let keep = Duration::from_millis(1_000);
    let expired = q.prune_dead(at_ms(2_899), keep).await.unwrap();
    assert_eq!(expired, [("s".to_owned(), 3 * 899)].into());
    let left = q.dead_letters(None, 10).await.unwrap();
    assert_eq!(left.len(), 3);
    assert!(left.iter().all(|d| d.dead_ms == Some(1_899)), "{left:?}");
}

async fn close_refuses_new_appends(b: Backend) {
    let now = SystemTime::now();
    let mut tasks = Vec::new();
    for i in 0..50 {
        let q = b.q.clone();
        tasks.push(tokio::spawn(async move {
            q.append(event("gh", &format!("k{i}"), now), now).await
        }));
    }
    for t in tasks {
        queued(t.await.unwrap().unwrap());
    }
    b.q.close();
    let e = b.q.append(event("gh", "late", now), now).await.unwrap_err();
    assert!(matches!(e, QueueError::ShuttingDown), "{e:?}");
    b.q.flush().await.unwrap();
    assert_eq!(b.q.stats(&[]).await.unwrap().inbox, 50);
}

/// The PostgreSQL-only cases.
mod cases {
    use super::*;

    pub async fn postgres_two_instances_route_every_event_exactly_once(b: Backend) {
        let other = b.another().await;
        let ids = append_n(&b.q, 300, "e").await;
        let route = |q: Arc<dyn Queue>| {
            tokio::spawn(async move {
                let mut mine = Vec::new();
                let mut idle = 0;
                while idle < 3 {
                    let page = q.inbox(16).await.unwrap();
                    if page.events.is_empty() {
                        idle += 1;
                        tokio::time::sleep(Duration::from_millis(20)).await;
                        continue;
                    }
                    let routed = page
                        .events
                        .iter()
                        .map(|(id, _)| Routed {
                            event: *id,
                            pending: vec![delivery(*id, "s", 0)],
                            dead: vec![],
                        })
                        .collect();
                    q.routed(&page, routed).await.unwrap();
                    mine.extend(page.events.iter().map(|(id, _)| *id));
                }
                mine
            })
        };
        let (a, c) = (route(b.q.clone()), route(other.clone()));
        let (a, c) = (a.await.unwrap(), c.await.unwrap());
        assert!(
            !a.is_empty() && !c.is_empty(),
            "both routed: {} and {}",
            a.len(),
            c.len()
        );
        let mut all: Vec<EventId> = a.iter().chain(&c).copied().collect();
        all.sort();
        assert_eq!(all, ids, "each event once");
        let stats = other.stats(&[]).await.unwrap();
        assert_eq!((stats.inbox, stats.deliveries), (0, 300));
    }

    pub async fn postgres_a_router_that_lost_its_page_is_moved(b: Backend) {
        let other = b.another().await;
        append_n(&b.q, 2, "e").await;
        let page = b.q.inbox(10).await.unwrap();
        assert_eq!(page.events.len(), 2);
        assert!(other.inbox(10).await.unwrap().events.is_empty());
        // The first router's session is cut (as the database does to one
        // idle in its transaction past 30 s): its page is free once the
        // session is gone (the call waits for that, up to 10 s).
        Cluster::shared_psql(
            &b.db,
            "SELECT pg_terminate_backend(pid, 10000) FROM pg_stat_activity
             WHERE datname = current_database() AND state = 'idle in transaction'",
        );
        let taken = other.inbox(10).await.unwrap();
        assert_eq!(taken.events.len(), 2);
        let late = b.q.routed(&page, routed_to(&page, "s")).await;
        assert!(matches!(late, Err(QueueError::Moved)), "{late:?}");
        other.routed(&taken, routed_to(&taken, "s")).await.unwrap();
        let stats = b.q.stats(&[]).await.unwrap();
        assert_eq!((stats.inbox, stats.deliveries), (0, 2));
    }

    fn routed_to(page: &InboxPage, sink: &str) -> Vec<Routed> {
        page.events
            .iter()
            .map(|(id, _)| Routed {
                event: *id,
                pending: vec![delivery(*id, sink, 0)],
                dead: vec![],
            })
            .collect()
    }

    /// A 429 one instance got pauses the sink for the others too.
    pub async fn postgres_a_platforms_pause_holds_for_every_instance(b: Backend) {
        let other = b.another().await;
        append_n(&b.q, 3, "p").await;
        route_with(&b.q, |id| (vec![delivery(id, "s", 0)], vec![])).await;
        b.q.pause("s", 6_000).await.unwrap();
        // An earlier pause does not shorten it.
        other.pause("s", 2_000).await.unwrap();
        let due = other.claim("s", limits(10), 1_000).await.unwrap();
        assert!(due.claimed.is_empty(), "paused for every instance");
        assert_eq!(due.held, Some(Duration::from_secs(5)));
        let due = other.claim("s", limits(10), 6_001).await.unwrap();
        assert_eq!(due.claimed.len(), 3, "claimed once the pause is over");
    }

    pub async fn postgres_concurrency_holds_across_instances(b: Backend) {
        let other = b.another().await;
        append_n(&b.q, 20, "e").await;
        route_with(&b.q, |id| (vec![delivery(id, "s", 0)], vec![])).await;
        let limits = Limits {
            max: 10,
            concurrency: 3,
            rate: None,
            lease: Duration::from_secs(60),
        };
        // Many claims at once from both instances.
        let mut tasks = Vec::new();
        for i in 0..10 {
            let q = if i % 2 == 0 {
                b.q.clone()
            } else {
                other.clone()
            };
            tasks.push(tokio::spawn(async move {
                q.claim("s", limits, 1000).await.unwrap()
            }));
        }
        let mut out = Vec::new();
        for t in tasks {
            out.extend(t.await.unwrap().claimed);
        }
        assert_eq!(out.len(), 3, "never more than the concurrency out");
        let due = other.claim("s", limits, 1000).await.unwrap();
        assert!(due.claimed.is_empty());
        assert!(due.held.is_some(), "held by the cluster's concurrency");
        b.q.settle(&out[0].lease, &out[0].rec, Settle::Done)
            .await
            .unwrap();
        let due = other.claim("s", limits, 1000).await.unwrap();
        assert_eq!(due.claimed.len(), 1, "a slot freed");
    }

    pub async fn postgres_rate_holds_across_instances(b: Backend) {
        let other = b.another().await;
        append_n(&b.q, 20, "e").await;
        route_with(&b.q, |id| (vec![delivery(id, "s", 0)], vec![])).await;
        let limits = Limits {
            max: 10,
            concurrency: 100,
            rate: Some(Rate {
                burst: 3,
                per_second: 2.0,
            }),
            lease: Duration::from_secs(60),
        };
        // Many claims at once from both instances share the burst.
        let started = std::time::Instant::now();
        // What the bucket can have given since the start: the burst and
        // two a second.
        let allowed = || 3 + (started.elapsed().as_secs_f64() * 2.0).floor() as usize;
        let mut tasks = Vec::new();
        for i in 0..10 {
            let q = if i % 2 == 0 {
                b.q.clone()
            } else {
                other.clone()
            };
            tasks.push(tokio::spawn(async move {
                q.claim("s", limits, 1000).await.unwrap()
            }));
        }
        let mut total = 0;
        for t in tasks {
            total += t.await.unwrap().claimed.len();
        }
        assert!(
            total >= 3 && total <= allowed(),
            "{total} claimed, {} allowed",
            allowed()
        );
        // Spent: held until the next token, at most half a second away.
        let held = other.claim("s", limits, 1000).await.unwrap();
        total += held.claimed.len();
        if held.claimed.is_empty() {
            let wait = held.held.expect("held by the rate");
            assert!(wait <= Duration::from_millis(500), "{wait:?}");
        }
        assert!(total <= allowed(), "{total} claimed, {} allowed", allowed());
        tokio::time::sleep(Duration::from_millis(600)).await;
        let more = b.q.claim("s", limits, 1000).await.unwrap();
        assert!(!more.claimed.is_empty(), "refilled");
        total += more.claimed.len();
        assert!(total <= allowed(), "{total} claimed, {} allowed", allowed());
    }

    pub async fn postgres_a_lapsed_lease_goes_to_another_instance(b: Backend) {
        let other = b.another().await;
        append_n(&b.q, 1, "e").await;
        route_with(&b.q, |id| (vec![delivery(id, "s", 0)], vec![])).await;
        let short = Limits {
            lease: Duration::from_millis(500),
            ..limits(10)
        };
        let mine = b.q.claim("s", short, 1000).await.unwrap();
        assert_eq!(mine.claimed.len(), 1);
        assert!(other
            .claim("s", short, 1000)
            .await
            .unwrap()
            .claimed
            .is_empty());
        tokio::time::sleep(Duration::from_millis(700)).await;
        let theirs = other.claim("s", short, 1000).await.unwrap();
        assert_eq!(claimed_ids(&theirs), claimed_ids(&mine));
        // The first instance's late outcome is ignored.
        let c = &mine.claimed[0];
        b.q.settle(&c.lease, &c.rec, Settle::Done).await.unwrap();
        assert_eq!(b.q.stats(&[]).await.unwrap().deliveries, 1);
        let mut later = c.rec.clone();
        later.due_ms = 99;
        b.q.settle(&c.lease, &later, Settle::Reschedule)
            .await
            .unwrap();
        b.q.release(&c.lease);
        let c = &theirs.claimed[0];
        other.settle(&c.lease, &c.rec, Settle::Done).await.unwrap();
        assert_eq!(b.q.stats(&[]).await.unwrap().deliveries, 0);
    }

    /// `queue migrate`'s far end: the local store's unrouted events (with
    /// their dedupe keys), pending and dead deliveries, once.
    pub async fn postgres_imports_a_local_stores_work_once(b: Backend) {
        let local = Backend::local();
        let now = SystemTime::now();
        let first = queued(local.q.append(event("gh", "m-1", now), now).await.unwrap());
        queued(local.q.append(event("gh", "m-2", now), now).await.unwrap());
        // One routed to a waiting and a dead delivery; one left unrouted.
        let page = local.q.inbox(1).await.unwrap();
        assert_eq!(page.events[0].0, first);
        let mut dead = delivery(first, "s", 1_000);
        dead.reason = Some("permanent: 400".into());
        dead.dead_ms = Some(2_000);
        let routed = vec![Routed {
            event: first,
            pending: vec![delivery(first, "s", 1_000)],
            dead: vec![dead],
        }];
        local.q.routed(&page, routed).await.unwrap();
        // Closed (the daemon stopped), its directory kept.
        let Backend { q, _dir: dir, .. } = local;
        drop(q);
        let dir = dir.unwrap();
        let carried = LocalStore::inspect(dir.path()).unwrap().export().unwrap();
        assert_eq!(carried.events.len(), 1);
        assert_eq!(carried.events[0].dedupe_key, "m-2");
        assert_eq!(carried.deliveries.len(), 2);
        let install = carried.from_install;
        let keys: BTreeSet<String> = carried
            .deliveries
            .iter()
            .map(|d| d.idempotency_key.clone())
            .collect();

        let done = b.q.import(carried).await.unwrap();
        assert_eq!((done.events, done.pending, done.dead), (1, 1, 1));
        assert!(!done.already);
        // The event waits in the inbox, its key remembered.
        let page = b.q.inbox(10).await.unwrap();
        assert_eq!(page.events.len(), 1);
        let again = b.q.append(event("gh", "m-2", now), now).await.unwrap();
        assert_eq!(again, Appended::Duplicate(page.events[0].0));
        // The deliveries keep their idempotency keys.
        let due = b.q.claim("s", limits(10), unix_millis(now)).await.unwrap();
        assert_eq!(due.claimed.len(), 1);
        let dead = b.q.dead_letters(None, 10).await.unwrap();
        assert_eq!(dead.len(), 1);
        let got: BTreeSet<String> = [&due.claimed[0].rec, &dead[0]]
            .iter()
            .map(|d| d.idempotency_key.clone())
            .collect();
        assert_eq!(got, keys);
        // Once: the same store's work again imports nothing.
        let carried = hookgate::queue::Carried {
            from_install: install,
            ..Default::default()
        };
        let twice = b.q.import(carried).await.unwrap();
        assert!(twice.already);
        assert_eq!(b.q.dead_letters(None, 10).await.unwrap().len(), 1);
    }

    pub async fn postgres_refuses_a_newer_schema(b: Backend) {
        drop(b.q);
        Cluster::shared_psql(&b.db, "INSERT INTO hookgate_schema (version) VALUES (99)");
        let e = Postgres::open(&b.url, 2).await.unwrap_err().to_string();
        assert!(e.contains("version 99"), "{e}");
        assert!(
            e.contains(&format!(
                "versions 1 to {}",
                hookgate::queue::postgres::SCHEMA_VERSION
            )),
            "{e}"
        );
        Cluster::shared_psql(&b.db, "DELETE FROM hookgate_schema WHERE version = 99");
        Postgres::open(&b.url, 2).await.unwrap();
    }

    /// A database of schema version 1 (dead letters not indexed by time,
    /// one even without its time; inbox rows claimed by columns) is
    /// brought to the newest version at open: its dead letters expire like
    /// new ones, found by the new index.
    pub async fn postgres_schema_2_indexes_dead_letters_of_a_version_1_database(b: Backend) {
        append_n(&b.q, 2, "e").await;
        let routed = route_with(&b.q, |id| {
            let mut d = dead(delivery(id, "s", 2_000), "template: boom");
            d.dead_ms = Some(1_000);
            (vec![], vec![d])
        })
        .await;
        let (first, second) = (routed[0].dead[0].id, routed[1].dead[0].id);
        drop(b.q);
        Cluster::shared_psql(
            &b.db,
            &format!(
                "UPDATE hookgate_deliveries SET dead_ms = NULL WHERE id = {second};
                 DROP INDEX hookgate_deliveries_dead_at;
                 DROP TABLE hookgate_delivered;
                 DROP INDEX hookgate_deliveries_event, hookgate_deliveries_dead_sink,
                     hookgate_deliveries_dead_id, hookgate_events_delivery_id;
                 CREATE INDEX hookgate_deliveries_dead ON hookgate_deliveries (sink) WHERE dead;
                 ALTER TABLE hookgate_events DROP COLUMN provider, DROP COLUMN event,
                     DROP COLUMN delivery_id;
                 ALTER TABLE hookgate_inbox ADD COLUMN claim_token bigint,
                     ADD COLUMN claim_until timestamptz;
                 DELETE FROM hookgate_schema WHERE version >= 2"
            ),
        );
        let q = Postgres::open(&b.url, 2).await.unwrap();
        assert_eq!(
            Cluster::shared_psql(&b.db, "SELECT max(version) FROM hookgate_schema"),
            hookgate::queue::postgres::SCHEMA_VERSION.to_string()
        );
        // Without a time, it is dated by its due time.
        assert_eq!(
            q.dead_letter(second).await.unwrap().unwrap().dead_ms,
            Some(2_000)
        );
        let plan = Cluster::shared_psql(
            &b.db,
            "SET enable_seqscan = off; EXPLAIN SELECT ctid FROM hookgate_deliveries
             WHERE dead AND dead_ms < 5 ORDER BY dead_ms LIMIT 1000",
        );
        assert!(plan.contains("hookgate_deliveries_dead_at"), "{plan}");
        let keep = Duration::from_millis(1_000);
        let expired = q.prune_dead(at_ms(2_500), keep).await.unwrap();
        assert_eq!(expired, [("s".to_owned(), 1)].into());
        assert_eq!(q.dead_letter(first).await.unwrap(), None);
        let expired = q.prune_dead(at_ms(3_001), keep).await.unwrap();
        assert_eq!(expired, [("s".to_owned(), 1)].into());
        assert_eq!(q.stats(&[]).await.unwrap().dead, 0);
    }

    pub async fn postgres_two_instances_appending_one_key_queue_it_once(b: Backend) {
        let other = b.another().await;
        let now = SystemTime::now();
        for round in 0..5 {
            let key = format!("same-{round}");
            let tasks: Vec<_> = (0..16)
                .map(|i| {
                    let q = if i % 2 == 0 {
                        b.q.clone()
                    } else {
                        other.clone()
                    };
                    let key = key.clone();
                    tokio::spawn(
                        async move { q.append(event("gh", &key, now), now).await.unwrap() },
                    )
                })
                .collect();
            let mut answers = Vec::new();
            for t in tasks {
                answers.push(t.await.unwrap());
            }
            let firsts: HashSet<EventId> = answers
                .iter()
                .filter_map(|a| match a {
                    Appended::Queued(id) => Some(*id),
                    Appended::Duplicate(_) => None,
                })
                .collect();
            assert_eq!(firsts.len(), 1, "{answers:?}");
            let first = firsts.into_iter().next().unwrap();
            assert!(answers.iter().all(
                |a| matches!(a, Appended::Queued(id) | Appended::Duplicate(id) if *id == first)
            ));
        }
        assert_eq!(b.q.stats(&[]).await.unwrap().inbox, 5);
    }

    /// An append whose key another session stores meanwhile waits for
    /// that session and, once it commits, is a duplicate of what it
    /// stored: an id its own statement could not see, read after its
    /// commit.
    pub async fn postgres_a_key_committed_while_the_append_waits_is_its_duplicate(b: Backend) {
        let (client, conn) = tokio_postgres::connect(&b.url, tokio_postgres::NoTls)
            .await
            .unwrap();
        tokio::spawn(conn);
        let now = SystemTime::now();
        let now_ms = unix_millis(now) as i64;
        client
            .batch_execute(&format!(
                "BEGIN; INSERT INTO hookgate_seen (source, key, event_id, stored_ms, expires_ms)
                 VALUES ('gh', 'held', 424242, {now_ms}, {})",
                now_ms + 60_000
            ))
            .await
            .unwrap();
        let q = b.q.clone();
        let append =
            tokio::spawn(async move { q.append(event("gh", "held", now), now).await.unwrap() });
        tokio::time::sleep(Duration::from_millis(300)).await;
        assert!(!append.is_finished(), "the append waits on the held key");
        client.batch_execute("COMMIT").await.unwrap();
        assert_eq!(append.await.unwrap(), Appended::Duplicate(EventId(424242)));
        assert_eq!(b.q.stats(&[]).await.unwrap().inbox, 0);
    }

    pub async fn postgres_prune_drops_whole_days_once_routed(b: Backend) {
        let q = &b.q;
        let now = SystemTime::now();
        let old = now - Duration::from_secs(10 * 86_400);
        // Its day has no partition yet: made on demand.
        let gone = queued(q.append(event("gh", "old", old), now).await.unwrap());
        let kept = queued(q.append(event("gh", "new", now), now).await.unwrap());
        let partitions = || {
            Cluster::shared_psql(
                &b.db,
                "SELECT count(*) FROM pg_inherits WHERE inhparent = 'hookgate_events'::regclass",
            )
            .parse::<u32>()
            .unwrap()
        };
        let before = partitions();
        assert!(
            before >= 5,
            "yesterday to two days ahead, and the old day: {before}"
        );
        let retention = Duration::from_secs(2 * 86_400);
        assert_eq!(
            q.prune(now, retention).await.unwrap(),
            0,
            "not routed: kept"
        );
        assert!(q.event(gone).await.unwrap().is_some());
        route_with(q, |_| (vec![], vec![])).await;
        assert_eq!(q.prune(now, retention).await.unwrap(), 1);
        assert_eq!(partitions(), before - 1);
        assert_eq!(q.event(gone).await.unwrap(), None);
        assert!(q.event(kept).await.unwrap().is_some());
        // Dedupe keys go once their window passed.
        assert_eq!(q.stats(&[]).await.unwrap().seen, 2);
        q.prune(now + Duration::from_secs(61), retention)
            .await
            .unwrap();
        assert_eq!(q.stats(&[]).await.unwrap().seen, 0);
        assert!(q.event(kept).await.unwrap().is_some());
    }

    /// Two instances replaying the same dead letters at once replay each
    /// once, and their counts add up.
    pub async fn postgres_two_instances_requeue_where_replay_each_once(b: Backend) {
        let other = b.another().await;
        let n = 1_200;
        let now = SystemTime::now();
        let tasks: Vec<_> = (0..16)
            .map(|w| {
                let q = b.q.clone();
                tokio::spawn(async move {
                    for i in 0..n / 16 {
                        queued(
                            q.append(event("gh", &format!("{w}-{i}"), now), now)
                                .await
                                .unwrap(),
                        );
                    }
                })
            })
            .collect();
        for t in tasks {
            t.await.unwrap();
        }
        loop {
            let page = b.q.inbox(500).await.unwrap();
            if page.events.is_empty() {
                break;
            }
            let made = page
                .events
                .iter()
                .map(|(id, _)| Routed {
                    event: *id,
                    pending: vec![],
                    dead: vec![dead(delivery(*id, "a", 0), "failed")],
                })
                .collect();
            b.q.routed(&page, made).await.unwrap();
        }
        assert_eq!(b.q.stats(&[]).await.unwrap().dead, n as u64);
        let all = DeliveryFilter::default();
        let (x, y) = tokio::join!(
            b.q.requeue_where(&all, 1_000, &|_| None, false),
            other.requeue_where(&all, 1_000, &|_| None, false)
        );
        let (x, y) = (x.unwrap(), y.unwrap());
        assert_eq!(
            x.replayed + y.replayed,
            n,
            "{} + {}",
            x.replayed,
            y.replayed
        );
        let stats = b.q.stats(&[]).await.unwrap();
        assert_eq!((stats.dead, stats.deliveries), (0, n as u64));
    }

    /// Two instances re-routing the same events at once store each
    /// missing delivery once.
    pub async fn postgres_two_instances_add_missing_create_each_once(b: Backend) {
        let other = b.another().await;
        let ids = append_n(&b.q, 40, "e").await;
        route_with(&b.q, |_| (vec![], vec![])).await;
        let wanted: Vec<DeliveryRecord> = ids
            .iter()
            .flat_map(|&e| [delivery(e, "a", 0), delivery(e, "b", 0)])
            .collect();
        let (x, y) = tokio::join!(
            b.q.add_missing(wanted.clone()),
            other.add_missing(wanted.clone())
        );
        let (x, y) = (x.unwrap(), y.unwrap());
        assert_eq!(x.created + y.created, 80, "{x:?} {y:?}");
        assert_eq!(x.existing + y.existing, 80, "{x:?} {y:?}");
        assert_eq!(b.q.stats(&[]).await.unwrap().deliveries, 80);
    }

    /// What the lookups ask, the indexes of schema version 4 answer.
    pub async fn postgres_lookups_read_indexes(b: Backend) {
        append_n(&b.q, 1, "e").await;
        route_with(&b.q, |id| (vec![delivery(id, "a", 0)], vec![])).await;
        let plan = |sql: &str| {
            Cluster::shared_psql(
                &b.db,
                &format!("SET enable_seqscan = off; SET enable_bitmapscan = off; EXPLAIN {sql}"),
            )
        };
        // On a partitioned table, each partition's index is named after
        // the partition and its columns.
        let lookups = [
            (
                "SELECT id FROM hookgate_events WHERE delivery_id = 'x' ORDER BY id DESC LIMIT 50",
                "_delivery_id_id_idx",
            ),
            (
                "SELECT id FROM hookgate_deliveries WHERE event_id = 7",
                "hookgate_deliveries_event",
            ),
            (
                "SELECT id FROM hookgate_delivered WHERE event_id = 7",
                "_event_id_idx",
            ),
            (
                "SELECT id FROM hookgate_deliveries WHERE dead AND sink = 'a' ORDER BY id DESC LIMIT 50",
                "hookgate_deliveries_dead_sink",
            ),
            (
                "SELECT id FROM hookgate_deliveries WHERE dead ORDER BY id DESC LIMIT 50",
                "hookgate_deliveries_dead_id",
            ),
            (
                "SELECT id FROM hookgate_delivered WHERE sink = 'a' ORDER BY id DESC LIMIT 50",
                "_sink_id_idx",
            ),
        ];
        for (sql, index) in lookups {
            let p = plan(sql);
            assert!(p.contains(index), "{sql}: {p}");
        }
    }

    /// Events stored before schema version 4 (or by an older build) have
    /// no lookup columns: their records say what they are, and a delivery
    /// id finds them.
    pub async fn postgres_events_stored_before_version_4_are_looked_up(b: Backend) {
        let now = SystemTime::now();
        let t = unix_millis(now);
        let old = queued(
            b.q.append(looked_up("gh", "push", "d-old", t), now)
                .await
                .unwrap(),
        );
        let new = queued(
            b.q.append(looked_up("gh", "issues", "d-new", t), now)
                .await
                .unwrap(),
        );
        // Written at ingest.
        assert_eq!(
            Cluster::shared_psql(
                &b.db,
                "SELECT string_agg(concat_ws('/', provider, event, delivery_id), ',' ORDER BY id)
                 FROM hookgate_events"
            ),
            "github/push/d-old,github/issues/d-new"
        );
        Cluster::shared_psql(
            &b.db,
            &format!(
                "UPDATE hookgate_events SET provider = NULL, event = NULL, delivery_id = NULL \
                 WHERE id = {}",
                old.0
            ),
        );
        let (all, _) = all_events(&b.q, &EventFilter::default(), 50).await;
        assert_eq!(ids_of(&all), vec![new.0, old.0]);
        assert_eq!(
            (all[1].event.as_str(), all[1].delivery_id.as_str()),
            ("push", "d-old")
        );
        let q = &b.q;
        let by = |f: EventFilter| async move { ids_of(&all_events(q, &f, 50).await.0) };
        assert_eq!(
            by(EventFilter {
                delivery_id: Some("d-old".into()),
                ..Default::default()
            })
            .await,
            vec![old.0]
        );
        assert_eq!(
            by(EventFilter {
                event: Some("push".into()),
                ..Default::default()
            })
            .await,
            vec![old.0]
        );
        assert_eq!(
            by(EventFilter {
                delivery_id: Some("d-new".into()),
                ..Default::default()
            })
            .await,
            vec![new.0]
        );
    }

    /// Many appends at once share transactions: fewer commits than
    /// appends, and every one answered.
    pub async fn postgres_group_commit_shares_transactions(b: Backend) {
        let now = SystemTime::now();
        let mut tasks = Vec::new();
        for i in 0..400 {
            let q = b.q.clone();
            tasks.push(tokio::spawn(async move {
                q.append(event("gh", &format!("k{i}"), now), now)
                    .await
                    .unwrap()
            }));
        }
        for t in tasks {
            queued(t.await.unwrap());
        }
        let (commits, events) = b.q.gauges().db_commits.expect("commits counted");
        assert_eq!(events, 400);
        assert!(
            commits.count() < 200,
            "400 appends took {} commits",
            commits.count()
        );
        assert_eq!(b.q.stats(&[]).await.unwrap().inbox, 400);
    }
}

/// A measurement, not a check: appends per second from many concurrent
/// writers, and how many share a commit. `cargo test --test it
/// storage::postgres_append_throughput -- --ignored --nocapture`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore]
async fn postgres_append_throughput() {
    let Some(b) = Backend::postgres().await else {
        return;
    };
    let now = SystemTime::now();
    let writers = 64;
    let each = 200;
    let started = std::time::Instant::now();
    let tasks: Vec<_> = (0..writers)
        .map(|w| {
            let q = b.q.clone();
            tokio::spawn(async move {
                for i in 0..each {
                    queued(
                        q.append(event("gh", &format!("{w}-{i}"), now), now)
                            .await
                            .unwrap(),
                    );
                }
            })
        })
        .collect();
    for t in tasks {
        t.await.unwrap();
    }
    let took = started.elapsed();
    let (commits, events) = b.q.gauges().log_syncs.unwrap();
    eprintln!(
        "{events} appends from {writers} writers in {took:?}: {:.0}/s, {} commits ({:.1} appends each)",
        events as f64 / took.as_secs_f64(),
        commits.count(),
        events as f64 / commits.count() as f64
    );
}

/// A measurement, not a check: what ingest, routing and settling cost
/// per event and per delivery, on a cluster of its own with
/// `pg_stat_statements` (time and WAL per statement). `cargo test --test
/// it storage::postgres_costs -- --ignored --nocapture`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore]
async fn postgres_costs() {
    let Some(cluster) = Cluster::init() else {
        return;
    };
    cluster.add_option("-c shared_preload_libraries=pg_stat_statements");
    cluster.add_option("-c pg_stat_statements.track=all");
    cluster.start_server();
    let db = cluster.create_database();
    cluster.psql(&db, "CREATE EXTENSION pg_stat_statements");
    let q: Arc<dyn Queue> = Arc::new(Postgres::open(&cluster.url(&db), 8).await.unwrap());
    cluster.psql(&db, "SELECT pg_stat_statements_reset()");
    let phases = measure_phases(&q, 20_000).await;
    eprintln!("{phases}");
    let top = cluster.psql(
        &db,
        "SELECT calls, rows, round(total_exec_time::numeric, 1) AS total_ms,
                round((total_exec_time / greatest(rows, 1) * 1000)::numeric, 1) AS us_per_row,
                round(wal_bytes / greatest(rows, 1)) AS wal_per_row,
                left(regexp_replace(query, '\\s+', ' ', 'g'), 90)
         FROM pg_stat_statements WHERE calls >= 10 ORDER BY total_exec_time DESC LIMIT 12",
    );
    eprintln!("calls|rows|total_ms|us_per_row|wal_per_row|query\n{top}");
}

/// The same measurement against the local backend (no statement
/// statistics: wall time per phase).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore]
async fn local_costs() {
    let b = Backend::local();
    let phases = measure_phases(&b.q, 20_000).await;
    eprintln!("{phases}");
}

/// Appends `n` events (64 writers), routes them a page of 64 at a time
/// to one delivery each, then claims and settles each Done; the time of
/// each phase.
async fn measure_phases(q: &Arc<dyn Queue>, n: usize) -> String {
    let now = SystemTime::now();
    let started = std::time::Instant::now();
    let writers = 64;
    let tasks: Vec<_> = (0..writers)
        .map(|w| {
            let q = q.clone();
            tokio::spawn(async move {
                for i in 0..n / writers {
                    let mut e = event("gh", &format!("{w}-{i}"), now);
                    e.record.delivery_id = format!("{w}-{i}");
                    queued(q.append(e, now).await.unwrap());
                }
            })
        })
        .collect();
    for t in tasks {
        t.await.unwrap();
    }
    let ingest = started.elapsed();
    let n = n / writers * writers;
    let started = std::time::Instant::now();
    let mut routed = 0;
    while routed < n {
        let page = q.inbox(64).await.unwrap();
        let made = page
            .events
            .iter()
            .map(|(id, _)| Routed {
                event: *id,
                pending: vec![delivery(*id, "s", 0)],
                dead: vec![],
            })
            .collect();
        routed += page.events.len();
        q.routed(&page, made).await.unwrap();
    }
    let route = started.elapsed();
    let started = std::time::Instant::now();
    let mut settled = 0;
    while settled < n {
        let due = q.claim("s", limits(64), 1_000).await.unwrap();
        for c in due.claimed {
            let mut rec = c.rec.clone();
            rec.attempts.push(Attempt {
                at_ms: unix_millis(SystemTime::now()),
                status: Some(200),
                latency_ms: 3,
                outcome: "delivered".into(),
                response: "ok".into(),
            });
            q.settle(&c.lease, &rec, Settle::Done).await.unwrap();
            settled += 1;
        }
    }
    let settle = started.elapsed();
    let per = |d: Duration| d.as_secs_f64() * 1e6 / n as f64;
    format!(
        "{n} events: ingest {ingest:?} ({:.1} us each), routing {route:?} ({:.1} us each), claim+settle {settle:?} ({:.1} us each)",
        per(ingest),
        per(route),
        per(settle)
    )
}

/// A measurement, not a check: lookups on 100,000 events and as many
/// deliveries (a third delivered, a few dead). `cargo test --release
/// --test it storage::lookups_at_scale -- --ignored --nocapture`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore]
async fn lookups_at_scale_local() {
    lookups_at_scale(Backend::local()).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore]
async fn lookups_at_scale_postgres() {
    if let Some(b) = Backend::postgres().await {
        lookups_at_scale(b).await
    }
}

async fn lookups_at_scale(b: Backend) {
    let q = &b.q;
    let n = 100_000u64;
    let now = SystemTime::now();
    let t = unix_millis(now) - 3_600_000;
    let started = std::time::Instant::now();
    let tasks: Vec<_> = (0..64u64)
        .map(|w| {
            let q = q.clone();
            tokio::spawn(async move {
                for i in 0..n / 64 {
                    let k = w * (n / 64) + i;
                    let source = if k % 100 == 7 { "rare" } else { "gh" };
                    let e = looked_up(source, "push", &format!("did-{k}"), t + k * 30);
                    queued(q.append(e, now).await.unwrap());
                }
            })
        })
        .collect();
    for task in tasks {
        task.await.unwrap();
    }
    eprintln!("{:?}: appended in {:?}", b.kind, started.elapsed());
    let sinks = ["a", "b", "c", "d"];
    let mut events = Vec::new();
    loop {
        let page = q.inbox(1000).await.unwrap();
        if page.events.is_empty() {
            break;
        }
        let made = page
            .events
            .iter()
            .map(|(id, _)| {
                events.push(*id);
                let mut d = delivery(*id, sinks[(id.0 % 4) as usize], 0);
                d.route = if id.0 % 10 == 3 { "r3" } else { "r" }.into();
                Routed {
                    event: *id,
                    pending: vec![d],
                    dead: vec![],
                }
            })
            .collect();
        q.routed(&page, made).await.unwrap();
    }
    eprintln!("{:?}: routed in {:?}", b.kind, started.elapsed());
    // A third delivered, one in a hundred dead, the rest pending.
    let tasks: Vec<_> = sinks
        .iter()
        .map(|&sink| {
            let q = q.clone();
            tokio::spawn(async move {
                let mut done = 0;
                while done < n / 12 {
                    let due = q.claim(sink, limits(64), 1_000).await.unwrap();
                    for c in due.claimed {
                        done += 1;
                        if done % 33 == 0 {
                            let mut rec = c.rec.clone();
                            rec.reason = Some("gone".into());
                            rec.dead_ms = Some(5_000);
                            q.settle(&c.lease, &rec, Settle::Bury).await.unwrap();
                        } else {
                            deliver(&q, &c, 5_000).await;
                        }
                    }
                }
            })
        })
        .collect();
    for task in tasks {
        task.await.unwrap();
    }
    eprintln!("{:?}: settled in {:?}", b.kind, started.elapsed());
    let middle = events[events.len() / 2].0;
    let time = |label: &'static str| {
        move |took: Vec<Duration>, items: usize, more: bool| {
            let mut took = took;
            took.sort();
            eprintln!(
                "{label:<48} median {:>9.2?}  max {:>9.2?}  {items} items{}",
                took[took.len() / 2],
                took[took.len() - 1],
                if more { ", more" } else { "" }
            )
        }
    };
    macro_rules! measure {
        ($label:expr, $call:expr) => {{
            let mut took = Vec::new();
            let mut last = (0, false);
            for _ in 0..7 {
                let s = std::time::Instant::now();
                let page = $call.await.unwrap();
                took.push(s.elapsed());
                last = (page.items.len(), page.next_before.is_some());
            }
            time($label)(took, last.0, last.1);
        }};
    }
    let ev = |f: EventFilter| f;
    measure!(
        "events: newest 50",
        q.events(&EventFilter::default(), None, 50)
    );
    measure!(
        "events: 50 from the middle",
        q.events(&EventFilter::default(), Some(middle), 50)
    );
    measure!(
        "events: by delivery id",
        q.events(
            &ev(EventFilter {
                delivery_id: Some("did-500".into()),
                ..Default::default()
            }),
            None,
            50
        )
    );
    measure!(
        "events: source 1 in 100",
        q.events(
            &ev(EventFilter {
                source: Some("rare".into()),
                ..Default::default()
            }),
            None,
            50
        )
    );
    measure!(
        "events: an hour 40 minutes back",
        q.events(
            &ev(EventFilter {
                since_ms: Some(t + 1_200_000),
                until_ms: Some(t + 4_800_000),
                ..Default::default()
            }),
            None,
            50
        )
    );
    let df = |f: DeliveryFilter| f;
    measure!(
        "deliveries: newest 50",
        q.deliveries(&DeliveryFilter::default(), None, 50)
    );
    measure!(
        "deliveries: of one event",
        q.deliveries(
            &df(DeliveryFilter {
                event_id: Some(middle),
                ..Default::default()
            }),
            None,
            50
        )
    );
    measure!(
        "deliveries: sink b",
        q.deliveries(
            &df(DeliveryFilter {
                sink: Some("b".into()),
                ..Default::default()
            }),
            None,
            50
        )
    );
    for status in [
        DeliveryStatus::Pending,
        DeliveryStatus::Delivered,
        DeliveryStatus::Dead,
    ] {
        measure!(
            "deliveries: by status",
            q.deliveries(
                &df(DeliveryFilter {
                    status: Some(status),
                    ..Default::default()
                }),
                None,
                50
            )
        );
        measure!(
            "deliveries: by status, sink c",
            q.deliveries(
                &df(DeliveryFilter {
                    status: Some(status),
                    sink: Some("c".into()),
                    ..Default::default()
                }),
                None,
                50
            )
        );
    }
    measure!(
        "deliveries: route r3 (1 in 10)",
        q.deliveries(
            &df(DeliveryFilter {
                route: Some("r3".into()),
                ..Default::default()
            }),
            None,
            50
        )
    );
    let mut took = Vec::new();
    let mut replayed = 0;
    let dead_of_d = DeliveryFilter {
        sink: Some("d".into()),
        ..Default::default()
    };
    for _ in 0..7 {
        let s = std::time::Instant::now();
        replayed = q
            .requeue_where(&dead_of_d, 9_000, &|_| None, true)
            .await
            .unwrap()
            .replayed;
        took.push(s.elapsed());
    }
    time("requeue_where: dead of sink d, dry run")(took, replayed, false);
    if b.kind == Kind::Postgres && std::env::var("HOOKGATE_EXPLAIN").is_ok() {
        for sql in [
            format!("SELECT * FROM ((SELECT id, due_ms, failures, reason, dead_ms, record, CASE WHEN dead THEN 2 ELSE 0 END::int2 FROM hookgate_deliveries WHERE event_id = {middle}) UNION ALL (SELECT id, NULL::int8, NULL::int4, NULL::text, NULL::int8, record, 1::int2 FROM hookgate_delivered WHERE event_id = {middle})) u ORDER BY id DESC LIMIT 50"),
            "SELECT id FROM hookgate_deliveries WHERE sink = 'c' AND NOT dead ORDER BY id DESC LIMIT 50".into(),
            "SELECT id FROM hookgate_deliveries WHERE dead ORDER BY id DESC LIMIT 50".into(),
        ] {
            eprintln!("{}", Cluster::shared_psql(&b.db, &format!("EXPLAIN ANALYZE {sql}")));
        }
    }
}
