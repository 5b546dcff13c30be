//! Storage faults with the real binary: a disk that fills up under the
//! routing and delivery state while deliveries are going out, then frees;
//! and writes and syncs failing at random (ENOSPC, EIO) on the event log
//! and the routing and delivery state under signed load (`support::shim`), then a SIGKILL.

use std::collections::{BTreeSet, HashMap};
use std::io::Write;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use http::{Method, StatusCode};

use hookgate::verify::{Provider, SignInput};

use crate::support::receiver::{Receiver, Reply};
use crate::support::shim::{FaultShim, Rule};
use crate::support::*;

/// Fills the filesystem holding `dir` with a file of zeros; returns it.
fn fill(dir: &std::path::Path) -> std::path::PathBuf {
    let path = dir.join("filler");
    let mut f = std::fs::File::create(&path).unwrap();
    for chunk in [1 << 20, 4096, 1] {
        let zeros = vec![0u8; chunk];
        while f.write_all(&zeros).is_ok() {}
    }
    path
}

async fn readyz(admin: std::net::SocketAddr) -> StatusCode {
    let url = format!("http://{admin}/readyz");
    match hookgate::client::request(Method::GET, &url, &[], vec![]).await {
        Ok((status, _, _)) => status,
        Err(e) => panic!("/readyz: {e}"),
    }
}

/// Waits up to `limit` for `/readyz` to answer `want`.
async fn wait_readyz(admin: std::net::SocketAddr, want: StatusCode, limit: Duration) -> bool {
    let deadline = Instant::now() + limit;
    while Instant::now() < deadline {
        if readyz(admin).await == want {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    false
}

/// How many times each delivery (by its Idempotency-Key) reached the sink.
fn sends(sink: &Receiver) -> HashMap<String, usize> {
    let mut n = HashMap::new();
    for r in sink.received() {
        let key = r.headers["idempotency-key"].to_str().unwrap().to_owned();
        *n.entry(key).or_default() += 1;
    }
    n
}

/// Regression (#8.1, #8.2): with the state's writes failing (ENOSPC), each
/// delivery whose outcome could not be recorded was leased and sent again
/// at once, ~200,000 times a second, until a restart; and `/readyz` came
/// back only with webhook traffic. Now: dispatching and routing pause,
/// `/readyz` says not ready, and once space returns everything is
/// delivered without a restart, each delivery a bounded number of times.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_disk_under_the_state_store_pauses_delivery_and_heals_without_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    std::fs::create_dir_all(&data).unwrap();
    // Two 8 MiB log segments (the one in use and the next, prepared) and
    // the state; the daemon's own log stays outside, on the real disk.
    let Some(_disk) = SmallDisk::mount(&data, 24) else {
        eprintln!("full-disk fault test skipped: mounting a small disk needs root");
        return;
    };
    let sink = Receiver::start(Reply::status(200)).await;
    let sources = format!(
        "{SOURCES}\n[sinks.target]\nkind = \"http\"\nurl = \"{}\"\n\n[[routes]]\nname = \"all\"\nsource = \"github\"\nto = [\"target\"]\n",
        sink.url("/in")
    );
    let daemon = Daemon::start(dir.path(), &sources, &[]).await;
    let github = providers_of(dir.path(), SOURCES)["github"].clone();
    assert_eq!(
        post_push(&daemon.url("github"), &github, "before").await,
        StatusCode::ACCEPTED
    );
    assert_eq!(sink.wait_for(1, Duration::from_secs(10)).await.len(), 1);

    let filler = fill(&data);
    // The log's segment was prepared ahead: events still fit and are
    // acknowledged; what routing and delivery make of them cannot be saved.
    let mut accepted = 0;
    for i in 0..20 {
        let status = post_push(&daemon.url("github"), &github, &format!("full-{i}")).await;
        assert!(
            status == StatusCode::ACCEPTED || status == StatusCode::SERVICE_UNAVAILABLE,
            "full-{i}: {status}"
        );
        accepted += usize::from(status == StatusCode::ACCEPTED);
    }
    assert!(accepted > 0, "the prepared segment took events");
    assert!(
        wait_readyz(
            daemon.admin,
            StatusCode::SERVICE_UNAVAILABLE,
            Duration::from_secs(10)
        )
        .await,
        "/readyz says not ready while state cannot be written"
    );
    tokio::time::sleep(Duration::from_secs(3)).await;
    let during = sink.received().len();
    assert!(
        during <= 1 + 20 * 2,
        "no flood while outcomes cannot be recorded: {during} requests"
    );

    // Space returns: no restart, no webhook traffic, and it heals.
    std::fs::remove_file(&filler).unwrap();
    assert!(
        wait_readyz(daemon.admin, StatusCode::OK, Duration::from_secs(40)).await,
        "/readyz is ready again once space returns, without traffic; log:\n{}",
        std::fs::read_to_string(daemon.config.with_extension("log")).unwrap_or_default()
    );
    assert_eq!(
        post_push(&daemon.url("github"), &github, "after").await,
        StatusCode::ACCEPTED
    );
    // Every acknowledged event reaches the sink, each at most a few times.
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut per_delivery = sends(&sink);
    let expected = accepted + 2;
    while per_delivery.len() < expected && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(200)).await;
        per_delivery = sends(&sink);
    }
    let stats = daemon.cli(&["queue", "stats"]);
    let worst = per_delivery.values().max().copied().unwrap_or(0);
    assert!(
        worst <= 3,
        "each delivery sent at most 3 times: {per_delivery:?}; log:\n{}",
        std::fs::read_to_string(daemon.config.with_extension("log")).unwrap_or_default()
    );
    let log = std::fs::read_to_string(daemon.config.with_extension("log")).unwrap();
    let errors = log
        .lines()
        .filter(|l| l.contains("cannot write routing and delivery state"))
        .count();
    assert!(
        errors <= 2,
        "logged once per state change, not per attempt: {errors}; log:\n{log}"
    );
    assert_eq!(
        per_delivery.len(),
        expected,
        "every acknowledged event delivered; stats {}",
        String::from_utf8_lossy(&stats.stdout)
    );
    assert!(daemon.terminate().success());
}

const SOURCES: &str = r#"
[sources.github]
provider = "github"
secret = { file = "{dir}/github" }
"#;

/// Which calls fail while faults are on, and how often.
struct Scenario {
    name: &'static str,
    rules: &'static [Rule],
}

const fn rule(path: &'static str, op: &'static str, rate: f64) -> Rule {
    Rule { path, op, rate }
}

/// One round each, seeds `FAULT_SEED` (default 1), +1, +2. The state is
/// synced only at checkpoints (every second), the log at every batch:
/// hence the rates. A failed log sync poisons the log for the rest of the round.
const SCENARIOS: [Scenario; 3] = [
    Scenario {
        name: "state writes and syncs",
        rules: &[rule("/state/", "any", 0.3)],
    },
    Scenario {
        name: "log writes, state writes and syncs",
        rules: &[rule("/state/", "any", 0.2), rule("/log/", "write", 0.02)],
    },
    Scenario {
        name: "every write and sync",
        rules: &[
            rule("/state/", "any", 0.2),
            rule("/log/", "write", 0.02),
            rule("/log/", "sync", 0.004),
        ],
    },
];

/// Longest the faults stay on in a round.
const FAULTS_FOR: Duration = Duration::from_secs(4);
/// Longest any one request may take before the daemon counts as hung.
const HUNG: Duration = Duration::from_secs(10);
/// Slack between the shim writing a fault down and the daemon acting on
/// it (a sync's failure poisoning the log).
const SETTLE: Duration = Duration::from_millis(200);

/// #8: writes and syncs fail at random on the event log and on the state while
/// signed webhooks arrive and deliveries go out; then faults stop, the
/// daemon is SIGKILLed and started again without them. Throughout: every
/// answer is 202 or 503, in time; a failed log sync makes the daemon
/// refuse and report not ready until the restart; `/readyz` blames the
/// log or the state only when that one failed, and once faults stop it is ready
/// again without a restart unless the log was poisoned. After the restart
/// every acknowledged event is stored once and delivered, and no delivery
/// reaches the sink more than once per recovered fault plus once for the
/// kill. `FAULT_KEEP=1` keeps a copy of the data as the kill left it
/// (`data.killed`) for a failure to look at.
///
/// Regression: it found that when the healer reopened the state but the probe
/// right after failed, the next good probe reported no reopen, the
/// router's cursor was not read back, and acknowledged events were never
/// delivered (seed 2: 60 of 1186). `StateStore` now remembers the reopen
/// until the cursor is read back, and stays failing until then.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn random_write_and_sync_failures_lose_nothing_acknowledged_and_resend_boundedly() {
    let base = std::env::var("FAULT_SEED")
        .ok()
        .map(|s| s.parse::<u64>().expect("FAULT_SEED is a number"))
        .unwrap_or(1);
    for (i, scenario) in SCENARIOS.iter().enumerate() {
        let seed = base + i as u64;
        let why = format!(
            "seed {seed}, faults on {}; FAULT_SEED={base} runs these rounds again",
            scenario.name
        );
        let started = Instant::now();
        let Some(summary) = fault_round(seed, scenario, &why).await else {
            eprintln!("fault injection test skipped: no C compiler (cc)");
            return;
        };
        eprintln!("{why}: {summary} in {:.1?}", started.elapsed());
    }
}

/// One answer to a webhook under faults.
struct Answer {
    id: String,
    sent: SystemTime,
    status: StatusCode,
}

/// One round of the test above; a summary, or `None` without a C compiler.
async fn fault_round(seed: u64, scenario: &Scenario, why: &str) -> Option<String> {
    let dir = tempfile::tempdir().unwrap();
    let shim = FaultShim::build(dir.path(), &dir.path().join("data"))?;
    let sink = Receiver::start(Reply::status(200)).await;
    let sources = format!(
        "{SOURCES}\n[sinks.target]\nkind = \"http\"\nurl = \"{}\"\n\n[[routes]]\nname = \"all\"\nsource = \"github\"\nto = [\"target\"]\n",
        sink.url("/in")
    );
    let mut env = shim.env(seed);
    env.push(("HOOKGATE_LOG".into(), "info,hookgate=debug".into()));
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    let mut daemon = Daemon::start_env(dir.path(), &sources, &[], &env).await;
    let log_path = daemon.config.with_extension("log");
    let daemon_log = || std::fs::read_to_string(&log_path).unwrap_or_default();
    let github = providers_of(dir.path(), SOURCES)["github"].clone();

    shim.on(scenario.rules);
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let poller = tokio::spawn(poll_readyz(daemon.admin, stop.clone()));
    let answers = load(&daemon.url("github"), &github, seed, FAULTS_FOR).await;
    shim.off();
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let mut probes = poller.await.unwrap();

    // Faults made by calls that began before the switch went are written
    // down by now; the state's are noticed at its next commit or checkpoint
    // (each second).
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let faults = shim.faults();
    let poisoned = faults
        .iter()
        .filter(|f| f.poisons_the_log())
        .map(|f| f.at)
        .min();
    let log_faults = faults.iter().filter(|f| !f.in_state()).count();
    let state_faults = faults.iter().filter(|f| f.in_state()).count();

    // Ready again without a restart, unless a log sync failed.
    let after = format!("after-{seed}");
    let mut acked: Vec<String> = answers
        .iter()
        .filter(|a| a.status == StatusCode::ACCEPTED)
        .map(|a| a.id.clone())
        .collect();
    if poisoned.is_none() {
        assert!(
            wait_readyz(daemon.admin, StatusCode::OK, Duration::from_secs(20)).await,
            "{why}: /readyz is ready again once faults stop; kept {:?} log:\n{}",
            dir.keep(),
            daemon_log()
        );
        let status = post_push(&daemon.url("github"), &github, &after).await;
        assert_eq!(status, StatusCode::ACCEPTED, "{why}: {after}");
        acked.push(after.clone());
    } else {
        for _ in 0..5 {
            probes.push(probe_readyz(daemon.admin).await);
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        let status = post_push(&daemon.url("github"), &github, &after).await;
        assert_eq!(
            status,
            StatusCode::SERVICE_UNAVAILABLE,
            "{why}: a poisoned log refuses until a restart"
        );
    }
    assert!(
        daemon.child.try_wait().unwrap().is_none(),
        "{why}: the daemon died; log:\n{}",
        daemon_log()
    );

    // What was answered, and what /readyz said, fits what failed.
    for a in &answers {
        assert!(
            a.status == StatusCode::ACCEPTED || a.status == StatusCode::SERVICE_UNAVAILABLE,
            "{why}: {}: {}: storage faults answer 202 or 503",
            a.id,
            a.status
        );
        assert!(
            a.status == StatusCode::ACCEPTED || log_faults > 0,
            "{why}: {} refused, but only the state failed: webhooks do not wait on it",
            a.id
        );
        if let Some(p) = poisoned {
            assert!(
                a.sent < p + SETTLE || a.status != StatusCode::ACCEPTED,
                "{why}: {} acknowledged after a failed log sync",
                a.id
            );
        }
    }
    for (sent, status, body) in &probes {
        let fine = match *status {
            StatusCode::OK => poisoned.is_none_or(|p| *sent < p + SETTLE),
            StatusCode::SERVICE_UNAVAILABLE if body.contains("queue") => log_faults > 0,
            StatusCode::SERVICE_UNAVAILABLE if body.contains("state") => state_faults > 0,
            _ => false,
        };
        assert!(
            fine,
            "{why}: /readyz {status} {body:?} at {sent:?}: {log_faults} log faults, {state_faults} state faults, log poisoned at {poisoned:?}"
        );
    }
    let log = daemon_log();
    let noticed = log
        .matches("cannot write routing and delivery state")
        .count();
    assert_eq!(
        noticed > 0,
        state_faults > 0,
        "{why}: a failing state is noticed ({state_faults} faults, {noticed} noticed); log:\n{log}"
    );
    let recoveries = log
        .matches("routing and delivery state can be written again")
        .count();

    // SIGKILL, and a restart without faults.
    let daemon = daemon.kill();
    std::fs::rename(&log_path, log_path.with_extension("first.log")).unwrap();
    if std::env::var_os("FAULT_KEEP").is_some() {
        let status = std::process::Command::new("cp")
            .args(["-a"])
            .arg(dir.path().join("data"))
            .arg(dir.path().join("data.killed"))
            .status()
            .unwrap();
        assert!(status.success());
    }
    let daemon = daemon.restart().await;
    let delivered = |sink: &Receiver| -> BTreeSet<String> {
        sink.received()
            .iter()
            .map(|r| r.headers["hookgate-delivery"].to_str().unwrap().to_owned())
            .collect()
    };
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let pending = stats(daemon.admin).await;
        let got = delivered(&sink);
        if (pending.inbox, pending.deliveries) == (0, 0) && acked.iter().all(|id| got.contains(id))
        {
            break;
        }
        if Instant::now() >= deadline {
            let missing: Vec<_> = acked.iter().filter(|id| !got.contains(*id)).collect();
            let kept = dir.keep();
            panic!(
                "{why}: not everything delivered after the restart: {pending:?}, {} of {} acknowledged; missing {missing:?}; kept {kept:?}; faults {faults:#?}",
                acked.len() - missing.len(),
                acked.len()
            );
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(daemon.terminate().success(), "{why}");

    let (_queue, stored) = stored_ids(dir.path());
    assert_none_lost(&acked, &stored);
    let doubled: Vec<_> = stored.iter().filter(|(_, n)| **n > 1).collect();
    assert!(doubled.is_empty(), "{why}: stored twice: {doubled:?}");
    let got = delivered(&sink);
    let undelivered: Vec<_> = stored.keys().filter(|id| !got.contains(*id)).collect();
    assert!(
        undelivered.is_empty(),
        "{why}: stored, never delivered: {undelivered:?}"
    );
    // One key per event, kept across reopens and the restart.
    let mut keys: HashMap<String, BTreeSet<String>> = HashMap::new();
    for r in sink.received() {
        let header = |h: &str| r.headers[h].to_str().unwrap().to_owned();
        keys.entry(header("hookgate-delivery"))
            .or_default()
            .insert(header("idempotency-key"));
    }
    let rekeyed: Vec<_> = keys.iter().filter(|(_, k)| k.len() > 1).collect();
    assert!(
        rekeyed.is_empty(),
        "{why}: one key per delivery: {rekeyed:?}"
    );
    let per_delivery = sends(&sink);
    let bound = 1 + recoveries + 1;
    let worst = per_delivery.values().max().copied().unwrap_or(0);
    let over: Vec<_> = per_delivery.iter().filter(|(_, n)| **n > bound).collect();
    assert!(
        over.is_empty(),
        "{why}: each delivery sent at most once, once more per recovered fault ({recoveries}) and once more for the kill: {over:?}"
    );
    Some(format!(
        "{} faults ({log_faults} log, {state_faults} state, log poisoned: {}), {} of {} acknowledged, {} state recoveries, at most {worst} sends per delivery",
        faults.len(),
        poisoned.is_some(),
        acked.len(),
        answers.len() + 1,
        recoveries
    ))
}

const LOAD_WORKERS: usize = 4;
const LOAD_EACH: usize = 300;

/// Signed pushes from `LOAD_WORKERS` concurrent clients, `LOAD_EACH` each
/// or until `limit`: every answer. A request taking longer than `HUNG`
/// fails the test.
async fn load(url: &str, github: &Arc<dyn Provider>, seed: u64, limit: Duration) -> Vec<Answer> {
    let body = sample("github", "push");
    let deadline = Instant::now() + limit;
    let workers: Vec<_> = (0..LOAD_WORKERS)
        .map(|w| {
            let (github, body, url) = (github.clone(), body.clone(), url.to_owned());
            tokio::spawn(async move {
                let mut answers = Vec::new();
                for i in 0..LOAD_EACH {
                    if Instant::now() >= deadline {
                        break;
                    }
                    let id = format!("fault-{seed}-{w}-{i}");
                    let signed = github.sign(&SignInput {
                        body: &body,
                        event: "push",
                        delivery_id: &id,
                        now: SystemTime::now(),
                    });
                    let sent = SystemTime::now();
                    let request =
                        hookgate::client::request(Method::POST, &url, &signed.headers, signed.body);
                    let status = match tokio::time::timeout(HUNG, request).await {
                        Ok(Ok((status, _, _))) => status,
                        Ok(Err(e)) => panic!("{id}: {e}"),
                        Err(_) => panic!("{id}: no answer in {HUNG:?}"),
                    };
                    answers.push(Answer { id, sent, status });
                }
                answers
            })
        })
        .collect();
    let mut answers = Vec::new();
    for w in workers {
        answers.extend(w.await.unwrap());
    }
    answers
}

/// What `/readyz` said when asked at a time, in time.
async fn probe_readyz(admin: std::net::SocketAddr) -> (SystemTime, StatusCode, String) {
    let url = format!("http://{admin}/readyz");
    let sent = SystemTime::now();
    match tokio::time::timeout(
        HUNG,
        hookgate::client::request(Method::GET, &url, &[], vec![]),
    )
    .await
    {
        Ok(Ok((status, _, body))) => (sent, status, String::from_utf8_lossy(&body).into_owned()),
        Ok(Err(e)) => panic!("/readyz: {e}"),
        Err(_) => panic!("/readyz: no answer in {HUNG:?}"),
    }
}

/// Asks `/readyz` every 50 ms until `stop`.
async fn poll_readyz(
    admin: std::net::SocketAddr,
    stop: Arc<std::sync::atomic::AtomicBool>,
) -> Vec<(SystemTime, StatusCode, String)> {
    let mut seen = Vec::new();
    while !stop.load(std::sync::atomic::Ordering::Relaxed) {
        seen.push(probe_readyz(admin).await);
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    seen
}

async fn stats(admin: std::net::SocketAddr) -> hookgate::queue::Stats {
    let url = format!("http://{admin}/api/queue/stats");
    let (status, _, body) = hookgate::client::request(Method::GET, &url, &[], vec![])
        .await
        .unwrap();
    assert_eq!(status, StatusCode::OK);
    serde_json::from_slice(&body).unwrap()
}

/// Regression, found by the test above (seed 1) when the state was in
/// sled: a disk still full when the healer reopened the state left it
/// closed for good (sled took the snapshot its failed open left behind for
/// the newest). Now: the state's writes fail until the store is failing,
/// and go on failing while the healer probes and reopens it; once they
/// work, it heals without a restart, and a restart opens it too.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reopen_while_the_disk_is_still_full_does_not_keep_the_state_closed() {
    let dir = tempfile::tempdir().unwrap();
    let Some(shim) = FaultShim::build(dir.path(), &dir.path().join("data")) else {
        eprintln!("fault injection test skipped: no C compiler (cc)");
        return;
    };
    let sink = Receiver::start(Reply::status(200)).await;
    let sources = format!(
        "{SOURCES}\n[sinks.target]\nkind = \"http\"\nurl = \"{}\"\n\n[[routes]]\nname = \"all\"\nsource = \"github\"\nto = [\"target\"]\n",
        sink.url("/in")
    );
    let env = shim.env(1);
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    let daemon = Daemon::start_env(dir.path(), &sources, &[], &env).await;
    let github = providers_of(dir.path(), SOURCES)["github"].clone();

    // The state's writes fail until the state store is failing…
    shim.on(&[rule("/state/", "any", 1.0)]);
    let mut i = 0;
    while readyz(daemon.admin).await == StatusCode::OK {
        assert!(i < 100, "the state's failures are noticed");
        let status = post_push(&daemon.url("github"), &github, &format!("push-{i}")).await;
        assert_eq!(status, StatusCode::ACCEPTED);
        i += 1;
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // …and while the healer probes and reopens it (each probe fails)…
    let failed = shim.faults().len();
    let deadline = Instant::now() + Duration::from_secs(10);
    while shim.faults().len() < failed + 3 {
        assert!(Instant::now() < deadline, "the healer tried again");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // …then work: it heals, without a restart.
    shim.off();
    assert!(
        wait_readyz(daemon.admin, StatusCode::OK, Duration::from_secs(20)).await,
        "/readyz is ready again once writes work; the state holds {:?}",
        std::fs::read_dir(dir.path().join("data/state"))
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect::<Vec<_>>()
    );
    let daemon = daemon.kill().restart().await;
    assert_eq!(
        post_push(&daemon.url("github"), &github, "after").await,
        StatusCode::ACCEPTED
    );
    assert!(daemon.terminate().success());
}
