//! Failover under load (the real binary, real throwaway clusters): a
//! primary and a synchronous standby on loopback, hookgate on a multi-host
//! URL with `target_session_attrs=read-write`; the primary is stopped with
//! `pg_ctl stop -m immediate` and the standby promoted. hookgate answers
//! 503 (and `/readyz` 503) while no primary takes writes, 202 again once
//! the standby is promoted, and every event it acknowledged reaches the
//! sink.
//!
//! `HOOKGATE_FAILOVER_ASYNC=1` leaves the replication asynchronous: then
//! acknowledged events may be lost, and the test is meant to notice.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use hookgate::verify::Provider;
use http::StatusCode;

use crate::support::postgres::{instance, pushes_to, Cluster};
use crate::support::receiver::{Receiver, Reply};
use crate::support::*;

const WORKERS: usize = 8;
/// How long there is no primary: the standby is promoted this long after
/// the primary stopped. Long enough that a daemon backing off its looks
/// at the database (1, 2, 4, 8 s …) would still answer 503 well after the
/// promotion.
const NO_PRIMARY: Duration = Duration::from_secs(7);
/// How soon after the promotion 202s are to come back.
const BACK_WITHIN: Duration = Duration::from_secs(3);
/// Most requests one worker sends (the load is bounded even if the test
/// loses track of time).
const PER_WORKER: usize = 20_000;

/// One request of the load: when it was sent and answered, and how.
#[derive(Debug, Clone)]
struct Sent {
    id: String,
    sent: Instant,
    answered: Instant,
    status: Result<StatusCode, String>,
}

/// Polls `until` every 50 ms (at most `limit`); whether it came true.
async fn wait_until(limit: Duration, mut until: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + limit;
    while Instant::now() < deadline {
        if until() {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    until()
}

/// Runs blocking cluster work off the runtime's threads.
async fn blocking<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> T {
    tokio::task::spawn_blocking(f).await.unwrap()
}

/// Polls `sql` on `cluster` until it prints `want` (at most 30 s).
fn settle(cluster: &Cluster, sql: &str, want: &str) {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let got = cluster.psql("postgres", sql);
        if got == want {
            return;
        }
        assert!(Instant::now() < deadline, "{sql}: {got:?}, not {want:?}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// `kill -SIG pid`.
fn signal(pid: &str, sig: &str) {
    let ok = std::process::Command::new("kill")
        .arg(format!("-{sig}"))
        .arg(pid)
        .status()
        .unwrap();
    assert!(ok.success(), "kill -{sig} {pid}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failover_to_a_synchronous_standby_answers_503_then_202_and_loses_nothing_acknowledged() {
    let began = Instant::now();
    let synchronous = std::env::var("HOOKGATE_FAILOVER_ASYNC").as_deref() != Ok("1");
    let Some((primary, standby, db)) = blocking(move || {
        let primary = Cluster::start()?;
        let db = primary.create_database();
        let standby = Cluster::standby_of(&primary);
        settle(
            &primary,
            "SELECT count(*) FROM pg_stat_replication WHERE state = 'streaming'",
            "1",
        );
        if synchronous {
            // Only now, so the standby's copy of the configuration lacks it:
            // promoted, it would wait for a standby of its own forever.
            primary.psql(
                "postgres",
                "ALTER SYSTEM SET synchronous_standby_names = '*'",
            );
            primary.psql("postgres", "SELECT pg_reload_conf()");
            settle(
                &primary,
                "SELECT sync_state FROM pg_stat_replication",
                "sync",
            );
        }
        assert_eq!(
            standby.psql("postgres", "SHOW synchronous_standby_names"),
            ""
        );
        assert_eq!(standby.psql("postgres", "SELECT pg_is_in_recovery()"), "t");
        Some((Arc::new(primary), Arc::new(standby), db))
    })
    .await
    else {
        return;
    };
    let url = format!(
        "host=127.0.0.1,127.0.0.1 port={},{} user=postgres dbname={db} \
         target_session_attrs=read-write connect_timeout=2 sslmode=disable",
        primary.port(),
        standby.port()
    );

    let rx = Receiver::start(Reply::status(200)).await;
    let text = pushes_to(&rx.url("/"), "timeout = \"2s\"");
    let dir = tempfile::tempdir().unwrap();
    let daemon = instance(dir.path(), &text, &url).await;
    let github: Arc<dyn Provider> = providers_of(dir.path(), &text)["github"].clone();
    let started = Instant::now();

    // The load: unique ids from several clients, every answer recorded.
    let stop = Arc::new(AtomicBool::new(false));
    let sent: Arc<Mutex<Vec<Sent>>> = Arc::default();
    let workers: Vec<_> = (0..WORKERS)
        .map(|w| {
            let (url, github, stop, sent) = (
                daemon.url("github"),
                github.clone(),
                stop.clone(),
                sent.clone(),
            );
            tokio::spawn(async move {
                for i in 0..PER_WORKER {
                    if stop.load(Ordering::Relaxed) {
                        break;
                    }
                    let id = format!("failover-{w}-{i}");
                    let at = Instant::now();
                    let status = try_post_push(&url, &github, &id).await;
                    let was_503 = status == Ok(StatusCode::SERVICE_UNAVAILABLE);
                    sent.lock().unwrap().push(Sent {
                        id,
                        sent: at,
                        answered: Instant::now(),
                        status,
                    });
                    if was_503 {
                        // As a provider would: not in a tight loop.
                        tokio::time::sleep(Duration::from_millis(20)).await;
                    }
                }
            })
        })
        .collect();
    // `/readyz`, every 50 ms.
    let ready: Arc<Mutex<Vec<(Instant, StatusCode)>>> = Arc::default();
    let poller = {
        let (admin, ready, stop) = (daemon.admin, ready.clone(), stop.clone());
        tokio::spawn(async move {
            while !stop.load(Ordering::Relaxed) {
                let (status, _) = admin_get(admin, "/readyz").await;
                ready.lock().unwrap().push((Instant::now(), status));
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        })
    };
    let acked = |since: Instant| {
        sent.lock()
            .unwrap()
            .iter()
            .filter(|s| s.sent >= since && s.status == Ok(StatusCode::ACCEPTED))
            .count()
    };
    assert!(
        wait_until(Duration::from_secs(10), || acked(started) >= 100).await,
        "the load runs ({} acknowledged)",
        acked(started)
    );
    tokio::time::sleep(Duration::from_millis(1000)).await;

    // The primary stops sending WAL for a moment first, so it dies with
    // commits the standby lacks: synchronous, they wait for the standby
    // and are never answered; asynchronous, they were answered, and are
    // lost. (The standby's side would not do: what the primary sent is in
    // the socket's buffer, and arrives anyway.)
    let p = primary.clone();
    let walsender =
        blocking(move || p.psql("postgres", "SELECT pid FROM pg_stat_replication")).await;
    assert!(!walsender.is_empty(), "the primary streams to the standby");
    signal(&walsender, "STOP");
    tokio::time::sleep(Duration::from_millis(500)).await;
    // The primary dies (its WAL sender with it, on the SIGQUIT pending when
    // it resumes); the standby is promoted `NO_PRIMARY` later.
    let killing = Instant::now();
    let p = primary.clone();
    let stopping = tokio::task::spawn_blocking(move || p.stop("immediate"));
    tokio::time::sleep(Duration::from_millis(200)).await;
    signal(&walsender, "CONT");
    stopping.await.unwrap();
    let killed = Instant::now();
    tokio::time::sleep(NO_PRIMARY).await;
    let promoting = Instant::now();
    let s = standby.clone();
    blocking(move || s.promote()).await;
    let promoted = Instant::now();

    // 202s again, on the new primary (bounded).
    let back = wait_until(Duration::from_secs(60), || acked(promoted) >= 200).await;
    // `/readyz` answers 200 again.
    let ready_again = wait_until(Duration::from_secs(10), || {
        ready
            .lock()
            .unwrap()
            .last()
            .is_some_and(|(at, s)| *at > promoted && *s == StatusCode::OK)
    })
    .await;
    stop.store(true, Ordering::Relaxed);
    for w in workers {
        w.await.unwrap();
    }
    poller.await.unwrap();
    let sent = sent.lock().unwrap().clone();
    let ready = ready.lock().unwrap().clone();
    let log = std::fs::read_to_string(daemon.config.with_extension("log")).unwrap_or_default();
    assert!(back, "no 202s within 60 s of the promotion\n{log}");
    assert!(ready_again, "/readyz not 200 again after the promotion");

    // Every answer a 202 or a 503.
    let odd: Vec<_> = sent
        .iter()
        .filter(|s| {
            !matches!(
                s.status,
                Ok(StatusCode::ACCEPTED | StatusCode::SERVICE_UNAVAILABLE)
            )
        })
        .take(5)
        .collect();
    assert!(odd.is_empty(), "answers other than 202 and 503: {odd:?}");
    let is = |s: &Sent, code: StatusCode| s.status == Ok(code);
    let unavailable: Vec<&Sent> = sent
        .iter()
        .filter(|s| is(s, StatusCode::SERVICE_UNAVAILABLE))
        .collect();
    // No 503 while the primary ran; some while there was none.
    let early: Vec<_> = unavailable
        .iter()
        .filter(|s| s.answered < killing)
        .take(5)
        .collect();
    assert!(early.is_empty(), "503 before the failover: {early:?}");
    assert!(
        unavailable
            .iter()
            .any(|s| s.sent >= killed && s.answered <= promoting),
        "503s while no primary took writes"
    );
    // No 202 for a request sent once the primary was gone and answered
    // before the standby was promoted: nothing could have stored it.
    let phantom: Vec<_> = sent
        .iter()
        .filter(|s| is(s, StatusCode::ACCEPTED) && s.sent >= killed && s.answered < promoting)
        .take(5)
        .collect();
    assert!(phantom.is_empty(), "202 with no primary: {phantom:?}");
    // 202s soon after the promotion.
    let first_back = sent
        .iter()
        .filter(|s| is(s, StatusCode::ACCEPTED) && s.sent >= promoted)
        .map(|s| s.answered.duration_since(promoted))
        .min()
        .expect("202s after the promotion");
    assert!(
        first_back <= BACK_WITHIN,
        "the first 202 came {first_back:?} after the promotion"
    );
    // `/readyz`: 200 before, 503 during, 200 after.
    assert!(ready
        .iter()
        .filter(|(at, _)| *at < killing)
        .all(|(_, s)| *s == StatusCode::OK));
    assert!(
        ready.iter().any(|(at, s)| *at >= killed
            && *at <= promoting
            && *s == StatusCode::SERVICE_UNAVAILABLE),
        "/readyz 503 while no primary took writes: {:?}",
        ready
            .iter()
            .filter(|(at, _)| *at >= killing)
            .map(|(at, s)| (at.duration_since(killing), s.as_u16()))
            .collect::<Vec<_>>()
    );

    // Every acknowledged delivery reaches the sink (it was in the new
    // primary: the only database left).
    let acked_ids: BTreeSet<String> = sent
        .iter()
        .filter(|s| is(s, StatusCode::ACCEPTED))
        .map(|s| s.id.clone())
        .collect();
    let delivered = || -> BTreeMap<String, usize> {
        let mut got = BTreeMap::new();
        for r in rx.received() {
            let id = r.headers["hookgate-delivery"].to_str().unwrap().to_owned();
            *got.entry(id).or_default() += 1;
        }
        got
    };
    wait_until(Duration::from_secs(45), || {
        let got = delivered();
        acked_ids.iter().all(|id| got.contains_key(id))
    })
    .await;
    let got = delivered();
    let lost: Vec<&String> = acked_ids
        .iter()
        .filter(|id| !got.contains_key(*id))
        .collect();
    let s = standby.clone();
    let db2 = db.clone();
    let stored: usize = blocking(move || s.psql(&db2, "SELECT count(*) FROM hookgate_events"))
        .await
        .parse()
        .unwrap();

    // The figures.
    let first_503 = unavailable.iter().map(|s| s.answered).min();
    let last_503 = unavailable.iter().map(|s| s.answered).max();
    let first_202_after = sent
        .iter()
        .filter(|s| is(s, StatusCode::ACCEPTED) && s.sent >= killed)
        .map(|s| s.answered)
        .min();
    let ready_503: Vec<Instant> = ready
        .iter()
        .filter(|(_, s)| *s != StatusCode::OK)
        .map(|(at, _)| *at)
        .collect();
    let ms = |from: Instant, to: Option<Instant>| {
        to.map_or("-".to_owned(), |t| {
            format!("{} ms", t.saturating_duration_since(from).as_millis())
        })
    };
    let down_logged = log.matches("the database cannot take writes;").count();
    let up_logged = log.matches("the database takes writes again").count();
    let per_request = log.matches("cannot store the event").count();
    eprintln!(
        "failover ({}): {} requests, {} acknowledged ({} after the promotion), {} answered 503, \
         {} stored in the new primary, {} delivered, lost = {}\n  \
         from the kill: first 503 at {}, last 503 at {} (503s for {}), \
         pg_ctl stop took {}, promotion at {} (took {}), first 202 of a request sent after the kill at {} ({} ms after the promotion)\n  \
         /readyz 503 from {} to {}; logged down {down_logged}x, up {up_logged}x, \
         `cannot store the event` {per_request}x; the test took {:?}",
        if synchronous { "synchronous" } else { "ASYNCHRONOUS" },
        sent.len(),
        acked_ids.len(),
        acked(promoted),
        unavailable.len(),
        stored,
        got.len(),
        lost.len(),
        ms(killing, first_503),
        ms(killing, last_503),
        match (first_503, last_503) {
            (Some(a), Some(b)) => format!("{} ms", b.duration_since(a).as_millis()),
            _ => "-".into(),
        },
        ms(killing, Some(killed)),
        ms(killing, Some(promoting)),
        ms(promoting, Some(promoted)),
        ms(killing, first_202_after),
        first_back.as_millis(),
        ms(killing, ready_503.first().copied()),
        ms(killing, ready_503.last().copied()),
        began.elapsed(),
    );
    assert!(
        lost.is_empty(),
        "{} acknowledged deliveries lost in the failover, e.g. {:?}",
        lost.len(),
        &lost[..lost.len().min(5)]
    );
    assert!(
        stored >= acked_ids.len(),
        "{stored} stored, {} acked",
        acked_ids.len()
    );
    // The state changes are logged, not each refused request.
    assert!(
        (1..=3).contains(&down_logged) && (1..=3).contains(&up_logged),
        "logged down {down_logged}x, up {up_logged}x"
    );
    assert!(
        per_request <= WORKERS,
        "{per_request} requests refused with an error line each"
    );
    assert!(daemon.terminate().success());
}
