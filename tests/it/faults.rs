//! Storage faults with the real binary: a disk that fills up under the
//! routing and delivery state while deliveries are going out, then frees.

use std::collections::HashMap;
use std::io::Write;
use std::time::{Duration, Instant};

use http::{Method, StatusCode};

use crate::support::receiver::{Receiver, Reply};
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

/// Regression (#8.1, #8.2): with sled's writes failing (ENOSPC), each
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
    // sled; the daemon's own log stays outside, on the real disk.
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
        "each delivery sent at most 3 times: {per_delivery:?}"
    );
    let log = std::fs::read_to_string(daemon.config.with_extension("log")).unwrap();
    let errors = log
        .lines()
        .filter(|l| l.contains("cannot write routing and delivery state"))
        .count();
    assert!(
        errors <= 2,
        "logged once per state change, not per attempt: {errors}"
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
