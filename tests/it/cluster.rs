//! Several hookgate processes on one PostgreSQL database (the real binary,
//! a real throwaway cluster): the promises of one daemon, cluster-wide.
//! Dedupe across instances, every acknowledged event delivered, a killed
//! instance's claimed deliveries finished by the other, and a sink's
//! `rate_limit` held for the whole cluster.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use http::StatusCode;

use crate::support::postgres::{instance, pushes_to, Cluster, URL_ENV};
use crate::support::receiver::{Receiver, Reply};
use crate::support::*;

/// A fresh database on the shared cluster (its URL), or `None`: skipped.
async fn database() -> Option<String> {
    tokio::task::spawn_blocking(|| Cluster::fresh_database().map(|(_, url)| url))
        .await
        .unwrap()
}

/// The `Idempotency-Key`s the sink received, with how often each came.
fn keys(rx: &Receiver) -> BTreeMap<String, usize> {
    let mut keys = BTreeMap::new();
    for r in rx.received() {
        let key = r.headers["idempotency-key"].to_str().unwrap().to_owned();
        *keys.entry(key).or_default() += 1;
    }
    keys
}

/// Waits (up to `limit`) until the sink has seen `n` distinct keys.
async fn wait_keys(rx: &Receiver, n: usize, limit: Duration) -> BTreeMap<String, usize> {
    let deadline = Instant::now() + limit;
    loop {
        let got = keys(rx);
        if got.len() >= n || Instant::now() >= deadline {
            return got;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_instances_deliver_each_acknowledged_event_and_dedupe_across_each_other() {
    let Some(db) = database().await else {
        return;
    };
    let rx = Receiver::start(Reply::status(200)).await;
    let text = pushes_to(&rx.url("/"), "");
    let (da, dbb) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let a = instance(da.path(), &text, &db).await;
    let b = instance(dbb.path(), &text, &db).await;
    let github = providers_of(da.path(), &text)["github"].clone();

    // Unique deliveries, alternating between the instances, from 8 clients;
    // and every fifth id sent to both at the same moment.
    let statuses: Arc<Mutex<BTreeMap<String, Vec<StatusCode>>>> = Arc::default();
    let workers: Vec<_> = (0..8)
        .map(|w| {
            let (ua, ub, github, statuses) = (
                a.url("github"),
                b.url("github"),
                github.clone(),
                statuses.clone(),
            );
            tokio::spawn(async move {
                for i in 0..40 {
                    let id = format!("two-{w}-{i}");
                    let got = if i % 5 == 0 {
                        let (x, y) = tokio::join!(
                            try_post_push(&ua, &github, &id),
                            try_post_push(&ub, &github, &id)
                        );
                        vec![x.unwrap(), y.unwrap()]
                    } else {
                        let url = if i % 2 == 0 { &ua } else { &ub };
                        vec![post_push(url, &github, &id).await]
                    };
                    statuses.lock().unwrap().insert(id, got);
                }
            })
        })
        .collect();
    for w in workers {
        w.await.unwrap();
    }
    let statuses = statuses.lock().unwrap().clone();
    let mut accepted = 0;
    for (id, got) in &statuses {
        let mut got = got.clone();
        got.sort();
        let want = if got.len() == 2 {
            vec![StatusCode::OK, StatusCode::ACCEPTED]
        } else {
            vec![StatusCode::ACCEPTED]
        };
        assert_eq!(got, want, "{id}: one 202, and a 200 for its twin");
        accepted += 1;
    }
    let keys = wait_keys(&rx, accepted, Duration::from_secs(30)).await;
    assert_eq!(keys.len(), accepted, "one idempotency key per 202");
    // /metrics, /readyz and `queue stats` on this backend.
    let (status, metrics) = admin_get(a.admin, "/metrics").await;
    assert_eq!(status, StatusCode::OK);
    let committed: u64 = metrics
        .lines()
        .find_map(|l| l.strip_prefix("hookgate_db_committed_events_total "))
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no commit count in:\n{metrics}"));
    assert!(committed > 0, "{committed}");
    assert!(metrics.contains("hookgate_db_commit_duration_seconds_count"));
    assert_eq!(admin_get(b.admin, "/readyz").await.0, StatusCode::OK);
    let stats = b.cli(&["queue", "stats", "--json"]);
    let stats: hookgate::queue::Stats = serde_json::from_slice(&stats.stdout).unwrap();
    assert_eq!(
        (stats.inbox, stats.deliveries, stats.dead),
        (0, 0, 0),
        "{stats:?}"
    );
    let twice: Vec<_> = keys.iter().filter(|(_, n)| **n > 1).collect();
    eprintln!(
        "two instances: {accepted} accepted, {} keys delivered, {} sent twice",
        keys.len(),
        twice.len()
    );
    let b_log = b.config.with_extension("log");
    assert!(a.terminate().success());
    assert!(b.terminate().success());
    // The second found the schema and the days' partitions made: no
    // notice of PostgreSQL's about them in its log.
    let log = std::fs::read_to_string(b_log).unwrap();
    assert!(!log.contains("already exists"), "{log}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_instances_claimed_deliveries_are_finished_by_the_other() {
    let Some(db) = database().await else {
        return;
    };
    // A slow sink: the killed instance has attempts out when it dies.
    let rx = Receiver::start(Reply::status(200).delay(Duration::from_millis(300))).await;
    let text = pushes_to(&rx.url("/"), "timeout = \"2s\"\nconcurrency = 8");
    let (da, dbb) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let a = instance(da.path(), &text, &db).await;
    let github = providers_of(da.path(), &text)["github"].clone();
    let stop = Arc::new(AtomicBool::new(false));
    let acked: Arc<Mutex<BTreeSet<String>>> = Arc::default();
    // Bounded, so the survivor can finish the rest well inside the wait.
    let load: Vec<_> = (0..4)
        .map(|w| {
            let (url, github, acked, stop) =
                (a.url("github"), github.clone(), acked.clone(), stop.clone());
            tokio::spawn(async move {
                for i in 0..40 {
                    if stop.load(Ordering::Relaxed) {
                        break;
                    }
                    let id = format!("kill-{w}-{i}");
                    match try_post_push(&url, &github, &id).await {
                        Ok(StatusCode::ACCEPTED) => {
                            acked.lock().unwrap().insert(id);
                        }
                        Ok(other) => panic!("{id}: unexpected {other}"),
                        Err(_) => break,
                    }
                }
            })
        })
        .collect();
    // Killed with attempts out (the sink answers after 300 ms, 8 at once).
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let a = a.kill();
    stop.store(true, Ordering::Relaxed);
    for w in load {
        w.await.unwrap();
    }
    let acked = acked.lock().unwrap().clone();
    assert!(acked.len() >= 20, "the load ran ({})", acked.len());
    // Only the other instance runs now: it routes what the killed one left
    // unrouted (a page it had claimed, once the claim lapses: 30 s), and
    // takes its claimed deliveries once their leases lapse (2 s timeout +
    // 5 s + 15 s). About 30 s here; the wait allows for a loaded machine.
    let before = keys(&rx).len();
    let started = Instant::now();
    let b = instance(dbb.path(), &text, &db).await;
    let keys = wait_keys(&rx, acked.len(), Duration::from_secs(120)).await;
    eprintln!(
        "killed instance: {} acknowledged, {before} delivered before it died, the rest in {:?} by the other",
        acked.len(),
        started.elapsed()
    );
    // An event stored but not yet answered when the instance died is
    // delivered too, unacknowledged: at most one per load worker.
    assert!(
        keys.len() >= acked.len() && keys.len() <= acked.len() + 4,
        "every acknowledged event reached the sink: {} keys, {} acknowledged",
        keys.len(),
        acked.len()
    );
    assert!(b.terminate().success());
    drop(a);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sinks_rate_limit_holds_for_the_whole_cluster() {
    let Some(db) = database().await else {
        return;
    };
    let rx = Receiver::start(Reply::status(200)).await;
    let text = pushes_to(&rx.url("/"), "rate_limit = \"2/s\"");
    let (da, dbb) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let a = instance(da.path(), &text, &db).await;
    let b = instance(dbb.path(), &text, &db).await;
    let github = providers_of(da.path(), &text)["github"].clone();
    let started = Instant::now();
    for i in 0..40 {
        let url = if i % 2 == 0 {
            a.url("github")
        } else {
            b.url("github")
        };
        assert_eq!(
            post_push(&url, &github, &format!("rate-{i}")).await,
            StatusCode::ACCEPTED
        );
    }
    tokio::time::sleep_until((started + Duration::from_secs(10)).into()).await;
    let got: Vec<Duration> = rx
        .received()
        .iter()
        .map(|r| r.at.saturating_duration_since(started))
        .filter(|at| *at <= Duration::from_secs(10))
        .collect();
    // 2 a second over 10 s, plus the bucket's burst: both instances
    // together, not 2 each.
    let burst = 2;
    assert!(
        got.len() <= 20 + burst,
        "{} deliveries in 10 s at 2/s for the cluster",
        got.len()
    );
    assert!(got.len() >= 12, "deliveries went on ({})", got.len());
    assert!(a.terminate().success());
    assert!(b.terminate().success());
}

/// GitHub pushes to a sink that is down (`capture`: its deliveries wait)
/// and to one that refuses them (`strict`: a dead letter), on `queue`.
fn two_sinks(queue: &str, capture: &str, strict: &str) -> String {
    format!(
        r#"
{queue}
[sources.github]
provider = "github"
secret = {{ file = "{{dir}}/github" }}

[sinks.capture]
kind = "http"
url = "{capture}"
timeout = "1s"

[sinks.strict]
kind = "http"
url = "{strict}"

[[routes]]
name = "pushes"
source = "github"
event = "push"
to = ["capture", "strict"]
"#
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn queue_migrate_moves_the_local_work_into_postgres_and_the_daemon_insists_on_it() {
    let Some(db) = database().await else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let strict = Receiver::start(Reply::status(400)).await;
    let down = format!("http://127.0.0.1:{}/", free_port());
    // The local backend: three events, each with a delivery waiting for
    // the sink that is down, and a dead letter from the one that refuses.
    let local = two_sinks("", &down, &strict.url("/"));
    let d = Daemon::start(dir.path(), &local, &[]).await;
    let github = providers_of(dir.path(), &local)["github"].clone();
    for i in 0..3 {
        assert_eq!(
            post_push(&d.url("github"), &github, &format!("move-{i}")).await,
            StatusCode::ACCEPTED
        );
    }
    strict.wait_for(3, Duration::from_secs(10)).await;
    d.wait_routed().await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(d.terminate().success());

    // On postgres now: the daemon refuses while data_dir holds that work.
    let capture = Receiver::start(Reply::status(200)).await;
    let pg = two_sinks(
        &format!("[queue]\nbackend = \"postgres\"\nurl = {{ env = \"{URL_ENV}\" }}\n"),
        &capture.url("/"),
        &strict.url("/"),
    );
    let (config, _, _) = Daemon::write_config(dir.path(), &pg);
    let run = |args: &[&str]| {
        std::process::Command::new(binary())
            .env(URL_ENV, &db)
            .arg("--config")
            .arg(&config)
            .args(args)
            .output()
            .unwrap()
    };
    let refused = run(&["serve"]);
    let said = String::from_utf8_lossy(&refused.stderr);
    assert!(!refused.status.success(), "{said}");
    assert!(
        said.contains("still holds the local backend's unfinished work (0 events not yet routed, 3 pending deliveries, 3 dead letters)"),
        "{said}"
    );
    assert!(said.contains("hookgate queue migrate"), "{said}");

    let moved = run(&["queue", "migrate", "--json"]);
    let out = String::from_utf8_lossy(&moved.stdout);
    assert!(
        moved.status.success(),
        "{out}{}",
        String::from_utf8_lossy(&moved.stderr)
    );
    let done: serde_json::Value = serde_json::from_str(out.trim()).unwrap();
    assert_eq!(done["pending"], 3, "{out}");
    assert_eq!(done["dead"], 3, "{out}");
    assert_eq!(done["already"], false, "{out}");
    let again = run(&["queue", "migrate"]);
    assert!(again.status.success());
    assert!(
        String::from_utf8_lossy(&again.stdout).contains("nothing to move"),
        "{}",
        String::from_utf8_lossy(&again.stdout)
    );

    // The daemon starts on postgres and sends what waited, with the
    // idempotency keys the local backend gave them.
    let d = Daemon::start_env(dir.path(), &pg, &[], &[(URL_ENV, &db)]).await;
    let got = wait_keys(&capture, 3, Duration::from_secs(20)).await;
    assert_eq!(got.len(), 3, "{got:?}");
    let dead = d.cli(&["queue", "dead", "list", "--json"]);
    let list: serde_json::Value = serde_json::from_slice(&dead.stdout).unwrap();
    assert_eq!(list.as_array().unwrap().len(), 3, "{list}");
    assert!(d.terminate().success());
}

/// A look from the command line (`queue stats`, `queue dead list` with no
/// daemon answering) takes the database as it is: on one no hookgate has
/// used, or one whose schema is older than this binary's (a newer
/// `hookgate` on an operator's machine, the cluster's daemons older), it
/// says so and changes nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_look_from_the_command_line_never_migrates_the_schema() {
    let Some((name, url)) = tokio::task::spawn_blocking(Cluster::fresh_database)
        .await
        .unwrap()
    else {
        return;
    };
    let psql = |sql: &str| Cluster::shared_psql(&name, sql);
    let dir = tempfile::tempdir().unwrap();
    let text = pushes_to(&format!("http://127.0.0.1:{}/", free_port()), "");
    let (config, _, _) = Daemon::write_config(dir.path(), &text);
    let run = |args: &[&str]| {
        let out = std::process::Command::new(binary())
            .env(URL_ENV, &url)
            .arg("--config")
            .arg(&config)
            .args(args)
            .output()
            .unwrap();
        let said = String::from_utf8_lossy(&out.stderr).into_owned();
        (out, said)
    };
    let tables = "SELECT count(*) FROM pg_tables WHERE tablename LIKE 'hookgate%'";

    for args in [&["queue", "stats"][..], &["queue", "dead", "list"]] {
        let (out, said) = run(args);
        assert!(!out.status.success(), "{args:?}: {said}");
        assert!(
            said.contains("the database holds no hookgate schema: no hookgate daemon has used it (is queue.url the daemons' database?)"),
            "{args:?}: {said}"
        );
    }
    assert_eq!(psql(tables), "0", "a look made tables");

    // A daemon made the schema; then it looks a version older.
    let d = instance(dir.path(), &text, &url).await;
    assert!(d.terminate().success());
    let version: i32 = psql("SELECT max(version) FROM hookgate_schema")
        .parse()
        .unwrap();
    let made = psql(tables);
    psql(&format!(
        "DELETE FROM hookgate_schema WHERE version = {version}"
    ));
    let (out, said) = run(&["queue", "stats"]);
    assert!(!out.status.success(), "{said}");
    assert!(
        said.contains(&format!(
            "the database's hookgate schema is version {}, older than this hookgate's ({version})",
            version - 1
        )),
        "{said}"
    );
    assert!(
        said.contains("start this version's `hookgate serve` on it first"),
        "{said}"
    );
    assert_eq!(
        psql("SELECT max(version) FROM hookgate_schema"),
        (version - 1).to_string(),
        "a look migrated the schema"
    );
    assert_eq!(psql(tables), made);

    // As this build leaves it: the look answers.
    psql(&format!(
        "INSERT INTO hookgate_schema (version) VALUES ({version})"
    ));
    let (out, said) = run(&["queue", "stats", "--json"]);
    assert!(out.status.success(), "{said}");
    let stats: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(stats["deliveries"], 0, "{stats}");
}
