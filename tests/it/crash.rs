//! SIGKILL under concurrent signed load: every delivery that got a 202 is in
//! the queue after restart, once.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use http::{Method, StatusCode};

use hookgate::queue::SledQueue;
use hookgate::verify::SignInput;

use crate::support::*;

const SOURCES: &str = r#"
[sources.github]
provider = "github"
secret = { file = "{dir}/github" }
"#;

const WORKERS: usize = 16;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_under_load_loses_no_acknowledged_delivery() {
    let dir = tempfile::tempdir().unwrap();
    let daemon = Daemon::start(dir.path(), SOURCES, &[]).await;
    let github = providers_of(dir.path(), SOURCES)["github"].clone();
    let body = sample("github", "push");
    let acked = Arc::new(Mutex::new(Vec::<String>::new()));
    let stop = Arc::new(AtomicBool::new(false));

    let workers: Vec<_> = (0..WORKERS)
        .map(|w| {
            let (github, body, acked, stop) =
                (github.clone(), body.clone(), acked.clone(), stop.clone());
            let url = daemon.url("github");
            tokio::spawn(async move {
                // Bounded: at most 5000 requests per worker, or until stopped.
                for i in 0..5000 {
                    if stop.load(Ordering::Relaxed) {
                        break;
                    }
                    let id = format!("w{w}-{i}");
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
                        Ok((status, _, _)) => panic!("{id}: unexpected {status}"),
                        // The daemon died under us: this delivery was never acknowledged.
                        Err(_) => break,
                    }
                }
            })
        })
        .collect();

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
        let signed = github.sign(&SignInput {
            body: &body,
            event: "push",
            delivery_id: id,
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
        assert_eq!(
            status,
            StatusCode::OK,
            "{id} was acknowledged before the crash"
        );
    }
    assert!(daemon.terminate().success());

    let queue = SledQueue::open(&dir.path().join("data"), false).unwrap();
    let mut stored = BTreeMap::<String, usize>::new();
    for (_, record) in queue.inbox().unwrap() {
        *stored.entry(record.delivery_id).or_default() += 1;
    }
    let lost: Vec<&String> = acked
        .iter()
        .filter(|id| !stored.contains_key(*id))
        .collect();
    assert!(
        lost.is_empty(),
        "{} acknowledged deliveries lost, e.g. {:?}",
        lost.len(),
        &lost[..lost.len().min(5)]
    );
    let doubled: Vec<_> = stored.iter().filter(|(_, n)| **n > 1).collect();
    assert!(doubled.is_empty(), "stored twice: {doubled:?}");
    eprintln!(
        "crash test: {} acknowledged, {} stored",
        acked.len(),
        stored.len()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn full_disk_answers_503_and_loses_nothing_acknowledged() {
    let dir = tempfile::tempdir().unwrap();
    // sled's files may not grow past 3 MiB: a few hundred events fit.
    let daemon = Daemon::start_with_full_disk(dir.path(), SOURCES, 3 * 1024).await;
    let github = providers_of(dir.path(), SOURCES)["github"].clone();
    let body = sample("github", "push");
    let mut acked = Vec::new();
    let mut refused = 0;
    // Bounded: stop after 30 refusals or 20 000 requests.
    for i in 0..20_000 {
        let id = format!("full-{i}");
        let signed = github.sign(&SignInput {
            body: &body,
            event: "push",
            delivery_id: &id,
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
        match status {
            StatusCode::ACCEPTED => acked.push(id),
            StatusCode::SERVICE_UNAVAILABLE => {
                refused += 1;
                if refused == 30 {
                    break;
                }
            }
            other => panic!("{id}: {other}: a full disk answers 202 or 503, nothing else"),
        }
    }
    assert!(acked.len() > 10, "some events fit ({})", acked.len());
    assert_eq!(refused, 30, "the disk filled up");
    let ready = format!("http://{}/readyz", daemon.admin);
    let (status, _, _) = hookgate::client::request(Method::GET, &ready, &[], vec![])
        .await
        .unwrap();
    assert_eq!(
        status,
        StatusCode::SERVICE_UNAVAILABLE,
        "/readyz reports the queue as not writable"
    );

    // With room again, everything acknowledged is there, and new events land.
    let daemon = daemon.kill().restart().await;
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
    let queue = SledQueue::open(&dir.path().join("data"), false).unwrap();
    let stored: Vec<String> = queue
        .inbox()
        .unwrap()
        .into_iter()
        .map(|(_, r)| r.delivery_id)
        .collect();
    for id in &acked {
        assert!(stored.contains(id), "{id} was acknowledged, then lost");
    }
    assert!(stored.contains(&"after".to_string()));
}
