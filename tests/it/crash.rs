//! SIGKILL under concurrent signed load: every delivery that got a 202 is in
//! the queue after restart, once.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use http::{Method, StatusCode};

use hookgate::queue::LocalStore;
use hookgate::verify::SignInput;

use crate::support::*;

const SOURCES: &str = r#"
[sources.github]
provider = "github"
secret = { file = "{dir}/github" }
"#;

const WORKERS: usize = 16;

/// Signed pushes from `WORKERS` concurrent clients until `stop` (at most
/// 5000 each): returns the workers and the ids that got a 202. A 503 is
/// allowed when `draining`; a connection error (the daemon is gone) ends
/// a worker; any other answer fails the test.
fn signed_load(
    url: String,
    github: Arc<dyn hookgate::verify::Provider>,
    prefix: &'static str,
    draining: bool,
    stop: Arc<AtomicBool>,
) -> (Vec<tokio::task::JoinHandle<()>>, Arc<Mutex<Vec<String>>>) {
    let body = sample("github", "push");
    let acked = Arc::new(Mutex::new(Vec::<String>::new()));
    let workers = (0..WORKERS)
        .map(|w| {
            let (github, body, acked, stop, url) = (
                github.clone(),
                body.clone(),
                acked.clone(),
                stop.clone(),
                url.clone(),
            );
            tokio::spawn(async move {
                for i in 0..5000 {
                    if stop.load(Ordering::Relaxed) {
                        break;
                    }
                    let id = format!("{prefix}-{w}-{i}");
                    let signed = github.sign(&SignInput {
                        body: &body,
                        event: "push",
                        delivery_id: &id,
                        now: SystemTime::now(),
                    });
                    match hookgate::client::request(
                        Method::POST,
                        &url,
                        &signed.headers,
                        signed.body,
                    )
                    .await
                    {
                        Ok((StatusCode::ACCEPTED, _, _)) => acked.lock().unwrap().push(id),
                        Ok((StatusCode::SERVICE_UNAVAILABLE, _, _)) if draining => {}
                        Ok((status, _, _)) => panic!("{id}: unexpected {status}"),
                        // The daemon is gone: this delivery was never acknowledged.
                        Err(_) => break,
                    }
                }
            })
        })
        .collect();
    (workers, acked)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_under_load_loses_no_acknowledged_delivery() {
    let dir = tempfile::tempdir().unwrap();
    let daemon = Daemon::start(dir.path(), SOURCES, &[]).await;
    let github = providers_of(dir.path(), SOURCES)["github"].clone();
    let stop = Arc::new(AtomicBool::new(false));
    let (workers, acked) = signed_load(
        daemon.url("github"),
        github.clone(),
        "kill",
        false,
        stop.clone(),
    );

    tokio::time::sleep(Duration::from_millis(1500)).await;
    let daemon = daemon.kill();
    stop.store(true, Ordering::Relaxed);
    for w in workers {
        w.await.unwrap();
    }
    let acked = acked.lock().unwrap().clone();
    assert!(
        acked.len() >= 50,
        "the load ran ({} acknowledged)",
        acked.len()
    );

    // Restarted on the same data: replays of acknowledged deliveries are
    // duplicates, so the dedupe keys survived the crash with their events.
    let daemon = daemon.restart().await;
    for id in acked.iter().rev().take(20) {
        let status = post_push(&daemon.url("github"), &github, id).await;
        assert_eq!(
            status,
            StatusCode::OK,
            "{id} was acknowledged before the crash"
        );
    }
    daemon.wait_routed().await;
    assert!(daemon.terminate().success());

    let (queue, stored) = stored_ids(dir.path());
    assert_none_lost(&acked, &stored);
    let doubled: Vec<_> = stored.iter().filter(|(_, n)| **n > 1).collect();
    assert!(doubled.is_empty(), "stored twice: {doubled:?}");
    // The restarted daemon routed every event (to nowhere: no routes) and
    // saved its place at shutdown; the count went with the place, so a
    // crash that took the place back did not count anything twice.
    let stats = queue.stats().unwrap();
    assert_eq!(stats.inbox, 0, "{stats:?}");
    assert_eq!(stats.unmatched, stored.len() as u64, "{stats:?}");
    eprintln!(
        "crash test: {} acknowledged, {} stored",
        acked.len(),
        stored.len()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn full_disk_answers_503_and_loses_nothing_acknowledged() {
    let dir = tempfile::tempdir().unwrap();
    // 12 MiB for everything, the daemon's own log included (regression: a
    // failed log write used to panic the request it was about): one 8 MiB
    // event-log segment fits, the next one does not.
    let Some(disk) = SmallDisk::mount(dir.path(), 12) else {
        let root = std::process::Command::new("id")
            .arg("-u")
            .output()
            .unwrap()
            .stdout
            == b"0\n";
        assert!(!root, "root could not mount a tmpfs");
        eprintln!("full_disk test skipped: mounting a small disk needs root");
        return;
    };
    let daemon = Daemon::start(dir.path(), SOURCES, &[]).await;
    let github = providers_of(dir.path(), SOURCES)["github"].clone();
    let body = sample("github", "push");
    let acked = Arc::new(Mutex::new(Vec::<String>::new()));
    let refused = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    // Bounded: 8 workers, 2500 requests each at most, stop after 30 refusals.
    let workers: Vec<_> = (0..8)
        .map(|w| {
            let (github, body, acked, refused) =
                (github.clone(), body.clone(), acked.clone(), refused.clone());
            let url = daemon.url("github");
            let log = daemon.config.with_extension("log");
            tokio::spawn(async move {
                for i in 0..2500 {
                    if refused.load(Ordering::Relaxed) >= 30 {
                        break;
                    }
                    let id = format!("full-{w}-{i}");
                    let signed = github.sign(&SignInput {
                        body: &body,
                        event: "push",
                        delivery_id: &id,
                        now: SystemTime::now(),
                    });
                    let answer =
                        hookgate::client::request(Method::POST, &url, &signed.headers, signed.body)
                            .await;
                    let status = match answer {
                        Ok((status, _, _)) => status,
                        Err(e) => panic!(
                            "{id}: {e}; daemon log:\n{}",
                            std::fs::read_to_string(&log).unwrap_or_default()
                        ),
                    };
                    match status {
                        StatusCode::ACCEPTED => acked.lock().unwrap().push(id),
                        StatusCode::SERVICE_UNAVAILABLE => {
                            refused.fetch_add(1, Ordering::Relaxed);
                        }
                        other => {
                            panic!("{id}: {other}: a full disk answers 202 or 503, nothing else")
                        }
                    }
                }
            })
        })
        .collect();
    for w in workers {
        w.await.unwrap();
    }
    let acked = acked.lock().unwrap().clone();
    assert!(
        acked.len() > 1000,
        "a segment's worth fit ({})",
        acked.len()
    );
    assert!(refused.load(Ordering::Relaxed) >= 30, "the disk filled up");
    let ready_url = format!("http://{}/readyz", daemon.admin);
    let (status, _, _) = hookgate::client::request(Method::GET, &ready_url, &[], vec![])
        .await
        .unwrap();
    assert_eq!(
        status,
        StatusCode::SERVICE_UNAVAILABLE,
        "/readyz reports the queue as not writable"
    );

    // With room again, the daemon is ready again by itself: no webhook
    // has to arrive first (regression: `/readyz` stayed 503 until one did,
    // and a load balancer gating on it never sent one).
    disk.grow(64);
    let mut ready = false;
    for _ in 0..50 {
        let (status, _, _) = hookgate::client::request(Method::GET, &ready_url, &[], vec![])
            .await
            .unwrap();
        if status == StatusCode::OK {
            ready = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(ready, "/readyz is 200 again once space returns");
    // Everything acknowledged is there after a restart, and new events land.
    let daemon = daemon.kill();
    let daemon = daemon.restart().await;
    let signed = github.sign(&SignInput {
        body: &body,
        event: "push",
        delivery_id: "after",
        now: SystemTime::now(),
    });
    let (status, _, _) = hookgate::client::request(
        Method::POST,
        &daemon.url("github"),
        &signed.headers,
        signed.body,
    )
    .await
    .unwrap();
    assert_eq!(status, StatusCode::ACCEPTED);
    assert!(daemon.terminate().success());
    let (queue, stored) = stored_ids(dir.path());
    assert_none_lost(&acked, &stored);
    assert!(stored.contains_key("after"));
    drop(queue);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_under_load_drains_and_loses_nothing_acknowledged() {
    let dir = tempfile::tempdir().unwrap();
    let daemon = Daemon::start(dir.path(), SOURCES, &[]).await;
    let github = providers_of(dir.path(), SOURCES)["github"].clone();
    let stop = Arc::new(AtomicBool::new(false));
    let (workers, acked) = signed_load(
        daemon.url("github"),
        github.clone(),
        "term",
        true,
        stop.clone(),
    );
    tokio::time::sleep(Duration::from_millis(1000)).await;
    let status = daemon.terminate();
    stop.store(true, Ordering::Relaxed);
    for w in workers {
        w.await.unwrap();
    }
    assert!(status.success(), "drained and exited 0: {status:?}");
    let acked = acked.lock().unwrap().clone();
    assert!(
        acked.len() >= 50,
        "the load ran ({} acknowledged)",
        acked.len()
    );
    let (_queue, stored) = stored_ids(dir.path());
    assert_none_lost(&acked, &stored);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_routers_place_is_saved_once_it_idles_so_a_sigkill_routes_nothing_twice() {
    let dir = tempfile::tempdir().unwrap();
    let daemon = Daemon::start(dir.path(), SOURCES, &[]).await;
    let github = providers_of(dir.path(), SOURCES)["github"].clone();
    for i in 0..3 {
        let status = post_push(&daemon.url("github"), &github, &format!("idle-{i}")).await;
        assert_eq!(status, StatusCode::ACCEPTED);
    }
    daemon.wait_routed().await;
    // Routed to nowhere (no routes): the place moves in memory, is saved
    // after 500 ms without events, and sled is made durable each second.
    tokio::time::sleep(Duration::from_millis(2500)).await;
    drop(daemon.kill());
    let queue = LocalStore::inspect(&dir.path().join("data")).unwrap();
    let stats = queue.stats().unwrap();
    assert_eq!((stats.inbox, stats.unmatched), (0, 3), "{stats:?}");
}
