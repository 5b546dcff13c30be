//! Routing and delivery end to end: the real server, a stand-in target on
//! loopback, exact bytes and headers, retries, dead letters, isolation.

use std::time::{Duration, Instant};

use http::StatusCode;

use crate::support::receiver::{Receiver, Reply};
use crate::support::*;

const GITHUB: &str = r#"
[sources.github]
provider = "github"
secret = { file = "{dir}/github" }
"#;

/// A config with one http sink to `url` (extra sink keys in `sink`) and a
/// route for GitHub pushes.
fn config(url: &str, sink: &str, route: &str) -> String {
    format!(
        r#"{GITHUB}
[sinks.target]
kind = "http"
url = "{url}"
{sink}

[[routes]]
name = "pushes"
source = "github"
event = "push"
to = ["target"]
{route}
"#
    )
}

async fn push(gw: &TestGateway, id: &str) -> Vec<u8> {
    let body = sample("github", "push");
    let signed = gw.sign("github", "push", &body, id);
    assert_eq!(gw.post("github", &signed).await.0, StatusCode::ACCEPTED);
    body
}

#[tokio::test]
async fn http_sink_gets_the_original_bytes_and_identity_headers() {
    let rx = Receiver::start(Reply::status(200)).await;
    let gw = TestGateway::start("", &config(&rx.url("/in?x=1"), "", "")).await;
    let body = push(&gw, "exact-1").await;
    let got = rx.wait_for(1, Duration::from_secs(10)).await;
    assert_eq!(got.len(), 1);
    let r = &got[0];
    assert_eq!(r.method, http::Method::POST);
    assert_eq!(r.path, "/in?x=1");
    assert_eq!(
        r.body.as_ref(),
        body.as_slice(),
        "the payload byte for byte"
    );
    assert_eq!(r.headers["content-type"], "application/json");
    assert_eq!(r.headers["hookgate-source"], "github");
    assert_eq!(r.headers["hookgate-event"], "push");
    assert_eq!(r.headers["hookgate-delivery"], "exact-1");
    let key = r.headers["idempotency-key"].to_str().unwrap();
    assert!(
        key.starts_with("evt_") && key.ends_with(".pushes.target"),
        "{key}"
    );
    // Delivered: nothing pending, nothing dead.
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(gw.queue.dead_letters().unwrap().is_empty());
}

#[tokio::test]
async fn a_message_replaces_the_body_and_unmatched_events_are_kept() {
    let rx = Receiver::start(Reply::status(204)).await;
    let route = r#"message = '{"text": {{ (payload.pusher.name ~ " pushed " ~ payload.commits | length ~ " commits") | tojson }}}'"#;
    let gw = TestGateway::start("", &config(&rx.url("/"), "", route)).await;
    push(&gw, "msg-1").await;
    let got = rx.wait_for(1, Duration::from_secs(10)).await;
    let v: serde_json::Value = serde_json::from_slice(&got[0].body).unwrap();
    assert!(
        v["text"].as_str().unwrap().ends_with("pushed 2 commits"),
        "{v}"
    );
    assert_eq!(got[0].headers["content-type"], "application/json");
    // An issues event matches no route: recorded, not delivered.
    let s = gw.sign(
        "github",
        "issues",
        &sample("github", "issues"),
        "unmatched-1",
    );
    assert_eq!(gw.post("github", &s).await.0, StatusCode::ACCEPTED);
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(rx.received().len(), 1);
    assert_eq!(gw.queue.stats().unwrap().unmatched, 1);
}

/// An endpoint that answers 200 and then streams without end: the answer
/// is read up to a cap and judged at once, not held in memory or waited on
/// until the sink's timeout.
#[tokio::test]
async fn an_endless_answer_is_cut_off() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/", listener.local_addr().unwrap());
    tokio::spawn(async move {
        let (mut conn, _) = listener.accept().await.unwrap();
        let mut buf = vec![0u8; 64 << 10];
        let _ = conn.read(&mut buf).await;
        let _ = conn
            .write_all(b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n")
            .await;
        let chunk = format!("{:x}\r\n{}\r\n", 8192, "x".repeat(8192));
        // 800 KiB a second until the client hangs up (at most 100 s).
        for _ in 0..10_000 {
            if conn.write_all(chunk.as_bytes()).await.is_err() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    });
    let gw = TestGateway::start("", &config(&url, r#"timeout = "20s""#, "")).await;
    let started = Instant::now();
    push(&gw, "endless-1").await;
    loop {
        let stats = gw.queue.stats().unwrap();
        if stats.inbox == 0 && stats.deliveries == 0 {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "still waiting on the endless answer: {stats:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(gw.queue.dead_letters().unwrap().is_empty(), "delivered");
}

/// A 429 holds the whole sink back for Retry-After, not only the delivery
/// that got it: the rest of the backlog would each collect one.
#[tokio::test]
async fn a_429_pauses_the_whole_sink() {
    let rx = Receiver::start(Reply::status(200)).await;
    rx.script([Reply::status(429).header("Retry-After", "2")]);
    let gw = TestGateway::start("", &config(&rx.url("/"), "concurrency = 1", "")).await;
    for i in 0..3 {
        push(&gw, &format!("paused-{i}")).await;
    }
    let got = rx.wait_for(4, Duration::from_secs(15)).await;
    assert_eq!(got.len(), 4, "the 429, then three deliveries");
    assert!(
        got[1].at - got[0].at >= Duration::from_millis(1900),
        "nothing went to the sink during its Retry-After: {:?}",
        got[1].at - got[0].at
    );
}

#[tokio::test]
async fn retryable_failures_follow_the_schedule_and_429_waits_for_retry_after() {
    let rx = Receiver::start(Reply::status(200)).await;
    rx.script([
        Reply::status(503).header("Retry-After", "1"),
        Reply::status(429).header("Retry-After", "1"),
        Reply::status(500),
    ]);
    let gw = TestGateway::start(
        "",
        &config(&rx.url("/"), r#"retry = ["200ms", "200ms", "200ms"]"#, ""),
    )
    .await;
    push(&gw, "retry-1").await;
    let got = rx.wait_for(4, Duration::from_secs(15)).await;
    assert_eq!(got.len(), 4, "503, 429, 500, then 200");
    let gap = |a: usize, b: usize| got[b].at - got[a].at;
    assert!(
        gap(0, 1) >= Duration::from_millis(950),
        "Retry-After on a 503 is a floor: {:?}",
        gap(0, 1)
    );
    assert!(
        gap(1, 2) >= Duration::from_millis(950),
        "429 waits for Retry-After: {:?}",
        gap(1, 2)
    );
    assert!(
        gap(2, 3) < Duration::from_millis(950),
        "then the schedule: {:?}",
        gap(2, 3)
    );
    let keys: Vec<_> = got
        .iter()
        .map(|r| r.headers["idempotency-key"].clone())
        .collect();
    assert!(
        keys.windows(2).all(|w| w[0] == w[1]),
        "the same key on every attempt"
    );
    assert!(
        got.windows(2).all(|w| w[0].body == w[1].body),
        "the same bytes on every attempt"
    );
}

#[tokio::test]
async fn permanent_answers_go_dead_at_once_with_their_history() {
    let rx = Receiver::start(Reply::status(400)).await;
    let gw = TestGateway::start("", &config(&rx.url("/"), r#"retry = ["100ms"]"#, "")).await;
    push(&gw, "perm-1").await;
    let dead = gw.wait_dead(1).await;
    assert_eq!(dead.len(), 1);
    assert_eq!(rx.received().len(), 1, "no retry after a 400");
    let d = &dead[0];
    assert_eq!(
        (d.route.as_str(), d.sink.as_str(), d.delivery_id.as_str()),
        ("pushes", "target", "perm-1")
    );
    assert_eq!(d.last_status(), Some(400));
    assert!(
        d.reason.as_deref().unwrap().starts_with("permanent"),
        "{:?}",
        d.reason
    );

    // Replayed, it is delivered once the target is fixed.
    rx.script([Reply::status(200)]);
    assert_eq!(
        gw.queue
            .requeue(
                Some(d.id),
                hookgate::queue::unix_millis(std::time::SystemTime::now()),
                |_| None
            )
            .unwrap()
            .replayed,
        1
    );
    let got = rx.wait_for(2, Duration::from_secs(10)).await;
    assert_eq!(got.len(), 2);
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(gw.queue.dead_letters().unwrap().is_empty());
}

#[tokio::test]
async fn exhausted_schedule_goes_dead_and_a_gone_endpoint_disables_the_sink() {
    let rx = Receiver::start(Reply::status(502)).await;
    let gw = TestGateway::start(
        "",
        &config(&rx.url("/"), r#"retry = ["100ms", "100ms"]"#, ""),
    )
    .await;
    push(&gw, "gave-up").await;
    let dead = gw.wait_dead(1).await;
    assert_eq!(rx.received().len(), 3);
    assert!(
        dead[0]
            .reason
            .as_deref()
            .unwrap()
            .contains("gave up after 3 attempts"),
        "{:?}",
        dead[0].reason
    );
    assert_eq!(dead[0].attempts.len(), 3);

    let gone = Receiver::start(Reply::status(410)).await;
    let gw = TestGateway::start("", &config(&gone.url("/"), "", "")).await;
    push(&gw, "gone-1").await;
    gw.wait_dead(1).await;
    push(&gw, "gone-2").await;
    let dead = gw.wait_dead(2).await;
    assert_eq!(
        gone.received().len(),
        1,
        "a disabled sink is not called again"
    );
    assert!(
        dead.iter().any(|d| d
            .reason
            .as_deref()
            .unwrap_or("")
            .starts_with("sink disabled")),
        "{dead:?}"
    );
}

#[tokio::test]
async fn a_hanging_sink_does_not_delay_a_healthy_one() {
    // Blocked behind the slow sink the fast one would take 8 s or more; a
    // wide gap to the bound below, so a slow CI machine cannot fail it.
    let slow = Receiver::start(Reply::status(200).delay(Duration::from_secs(8))).await;
    let fast = Receiver::start(Reply::status(200)).await;
    let text = format!(
        r#"{GITHUB}
[sinks.slow]
kind = "http"
url = "{}"
concurrency = 1
timeout = "10s"

[sinks.fast]
kind = "http"
url = "{}"

[[routes]]
name = "both"
source = "github"
to = ["slow", "fast"]
"#,
        slow.url("/"),
        fast.url("/")
    );
    let gw = TestGateway::start("", &text).await;
    let started = Instant::now();
    for i in 0..5 {
        push(&gw, &format!("iso-{i}")).await;
    }
    let got = fast.wait_for(5, Duration::from_secs(10)).await;
    assert_eq!(got.len(), 5);
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "fast sink waited for the slow one: {:?}",
        started.elapsed()
    );
    assert!(slow.received().len() <= 1, "the slow sink has one slot");
}

#[tokio::test]
async fn a_failing_template_fails_its_route_only() {
    let rx = Receiver::start(Reply::status(200)).await;
    let text = format!(
        r#"{GITHUB}
[sinks.target]
kind = "http"
url = "{}"

[[routes]]
name = "broken"
source = "github"
to = ["target"]
message = "{{{{ payload.commits | join(1, 2, 3) }}}}"

[[routes]]
name = "fine"
source = "github"
to = ["target"]
"#,
        rx.url("/")
    );
    let gw = TestGateway::start("", &text).await;
    push(&gw, "tpl-1").await;
    let dead = gw.wait_dead(1).await;
    assert_eq!(dead[0].route, "broken");
    assert!(
        dead[0].reason.as_deref().unwrap().starts_with("template"),
        "{:?}",
        dead[0].reason
    );
    assert!(dead[0].frozen.is_none());
    assert_eq!(
        rx.wait_for(1, Duration::from_secs(10)).await.len(),
        1,
        "the other route delivered"
    );
}

#[tokio::test]
async fn a_restart_resumes_the_schedule_without_loss_or_early_resend() {
    let rx = Receiver::start(Reply::status(200)).await;
    rx.script([Reply::status(503)]);
    let gw = TestGateway::start("", &config(&rx.url("/"), r#"retry = ["2s"]"#, "")).await;
    push(&gw, "resume-1").await;
    assert_eq!(rx.wait_for(1, Duration::from_secs(10)).await.len(), 1);
    // Let the rescheduled record reach a sled checkpoint, then restart.
    tokio::time::sleep(Duration::from_millis(1200)).await;
    let gw = gw.restart().await;
    let got = rx.wait_for(2, Duration::from_secs(10)).await;
    assert_eq!(got.len(), 2, "delivered after the restart");
    assert!(
        got[1].at - got[0].at >= Duration::from_millis(1550),
        "not before its time (2 s less 20 % jitter): {:?}",
        got[1].at - got[0].at
    );
    assert_eq!(
        got[0].headers["idempotency-key"],
        got[1].headers["idempotency-key"]
    );
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(rx.received().len(), 2, "and only once more");
    drop(gw);
}

#[tokio::test]
async fn log_sink_writes_one_json_line_per_delivery() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("deliveries.jsonl");
    let text = format!(
        r#"{GITHUB}
[sinks.audit]
kind = "log"
path = "{}"

[[routes]]
name = "all"
to = ["audit"]
message = "{{{{ source }}}}/{{{{ event }}}}"
"#,
        path.display()
    );
    let gw = TestGateway::start("", &text).await;
    push(&gw, "log-1").await;
    let mut lines = Vec::new();
    for _ in 0..100 {
        lines = std::fs::read_to_string(&path)
            .unwrap_or_default()
            .lines()
            .map(str::to_owned)
            .collect();
        if !lines.is_empty() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(lines.len(), 1);
    let v: serde_json::Value = serde_json::from_str(&lines[0]).unwrap();
    assert_eq!(v["message"], "github/push");
    assert_eq!(v["delivery_id"], "log-1");
    assert_eq!(v["route"], "all");
}

/// A log sink whose output blocks (a FIFO nobody reads, standing in for a
/// stdout pipe to a stalled reader) must not stop ingress or other sinks,
/// and loses no line once the output moves again. The runtime here has one
/// thread: a write blocked on it would stall everything until the watchdog
/// below drains the FIFO, 20 s in, and the timing assertions fail.
#[tokio::test]
async fn a_blocked_log_output_stalls_nothing_else_and_loses_no_line() {
    use std::io::Read;
    use std::os::unix::fs::OpenOptionsExt;
    let dir = tempfile::tempdir().unwrap();
    let fifo = dir.path().join("out.fifo");
    let c_path = std::ffi::CString::new(fifo.as_os_str().as_encoded_bytes()).unwrap();
    // SAFETY: a valid NUL-terminated path.
    assert_eq!(unsafe { libc::mkfifo(c_path.as_ptr(), 0o600) }, 0);
    // A reader must exist before the sink opens the FIFO for writing.
    let mut reader = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK)
        .open(&fifo)
        .unwrap();
    let rx = Receiver::start(Reply::status(200)).await;
    // Lines of ~20 KB: three fill the pipe's 64 KiB.
    let filler = "x".repeat(20_000);
    let text = format!(
        r#"{GITHUB}
[sinks.audit]
kind = "log"
path = "{}"
timeout = "2s"
retry = ["250ms", "250ms", "250ms", "250ms", "250ms", "250ms", "250ms", "250ms", "250ms", "250ms"]

[sinks.target]
kind = "http"
url = "{}"

[[routes]]
name = "all"
to = ["audit", "target"]
message = "{filler}"
"#,
        fifo.display(),
        rx.url("/")
    );
    let started = Instant::now();
    let drain = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let drained = {
        let drain = drain.clone();
        std::thread::spawn(move || {
            let mut out = Vec::new();
            let mut buf = vec![0u8; 1 << 16];
            let deadline = started + Duration::from_secs(60);
            while Instant::now() < deadline {
                let go = drain.load(std::sync::atomic::Ordering::Relaxed)
                    || started.elapsed() > Duration::from_secs(20);
                if go {
                    match reader.read(&mut buf) {
                        Ok(n) => out.extend_from_slice(&buf[..n]),
                        Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
                        Err(e) => panic!("{e}"),
                    }
                    let lines = out.iter().filter(|b| **b == b'\n').count();
                    if lines >= 8 {
                        break;
                    }
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            String::from_utf8(out).unwrap()
        })
    };
    let gw = TestGateway::start("", &text).await;
    for i in 0..8 {
        let id = format!("blk-{i}");
        tokio::time::timeout(Duration::from_secs(5), push(&gw, &id))
            .await
            .expect("ingress answers while the log output is blocked");
    }
    assert_eq!(rx.wait_for(8, Duration::from_secs(10)).await.len(), 8);
    assert!(
        started.elapsed() < Duration::from_secs(15),
        "the http sink waited for the log output: {:?}",
        started.elapsed()
    );
    drain.store(true, std::sync::atomic::Ordering::Relaxed);
    let written = tokio::task::spawn_blocking(move || drained.join().unwrap())
        .await
        .unwrap();
    let mut ids: Vec<String> = written
        .lines()
        .map(|l| {
            let v: serde_json::Value = serde_json::from_str(l).unwrap();
            v["delivery_id"].as_str().unwrap().to_owned()
        })
        .collect();
    ids.sort();
    ids.dedup();
    let expected: Vec<String> = (0..8).map(|i| format!("blk-{i}")).collect();
    assert_eq!(
        ids, expected,
        "every delivery reached the log once it moved"
    );
}

#[tokio::test]
async fn http_sink_signs_as_standard_webhooks_when_asked() {
    let rx = Receiver::start(Reply::status(200)).await;
    let sink = r#"signing_secret = { file = "{dir}/standard" }"#;
    let gw = TestGateway::start("", &config(&rx.url("/"), sink, "")).await;
    let body = push(&gw, "signed-1").await;
    let got = rx.wait_for(1, Duration::from_secs(10)).await;
    let r = &got[0];
    let id = r.headers["webhook-id"].to_str().unwrap();
    assert!(id.starts_with("msg_evt_") && !id.contains('.'), "{id}");
    // The receiver verifies it as any Standard Webhooks consumer would.
    let key =
        hookgate::verify::standard::decode_whsec("whsec_C2FVsBQIhrscChlQIMV+b5sSYspob7oD").unwrap();
    hookgate::verify::standard::verify_headers(
        &key,
        &r.headers,
        &body,
        std::time::SystemTime::now(),
        Duration::from_secs(300),
    )
    .expect("a valid Standard Webhooks signature");
}

/// Parses Prometheus text: every sample line is `name{labels} value`, every
/// family has HELP and TYPE. Returns samples by `name{labels}`.
fn parse_prometheus(text: &str) -> std::collections::BTreeMap<String, f64> {
    let mut samples = std::collections::BTreeMap::new();
    let mut typed = std::collections::BTreeSet::new();
    for line in text.lines() {
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            let mut parts = rest.split(' ');
            let name = parts.next().unwrap();
            assert!(
                matches!(parts.next(), Some("counter" | "gauge" | "histogram")),
                "{line}"
            );
            typed.insert(name.to_owned());
            continue;
        }
        if line.starts_with("# HELP ") {
            continue;
        }
        let (series, value) = line
            .rsplit_once(' ')
            .unwrap_or_else(|| panic!("not a sample: {line}"));
        let value: f64 = value
            .parse()
            .unwrap_or_else(|_| panic!("not a number: {line}"));
        let name = series.split('{').next().unwrap();
        let family = ["_bucket", "_sum", "_count"]
            .iter()
            .find_map(|s| name.strip_suffix(s).filter(|f| typed.contains(*f)))
            .unwrap_or(name);
        assert!(typed.contains(family), "no TYPE for {name}");
        if series.contains('{') {
            assert!(series.ends_with('}'), "{line}");
        }
        samples.insert(series.to_owned(), value);
    }
    samples
}

#[tokio::test]
async fn metrics_parse_and_count_what_happened() {
    let rx = Receiver::start(Reply::status(200)).await;
    let gw = TestGateway::start("", &config(&rx.url("/"), "", "")).await;
    push(&gw, "m-1").await;
    push(&gw, "m-2").await;
    let mut forged = gw.sign("github", "push", &sample("github", "push"), "m-3");
    forged.body.push(b' ');
    assert_eq!(gw.post("github", &forged).await.0, StatusCode::UNAUTHORIZED);
    assert_eq!(
        gw.request(http::Method::POST, "nope", &[], vec![]).await.0,
        StatusCode::NOT_FOUND
    );
    rx.wait_for(2, Duration::from_secs(10)).await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    let (status, headers, body) = hookgate::client::request(
        http::Method::GET,
        &format!("http://{}/metrics", gw.admin),
        &[],
        vec![],
    )
    .await
    .unwrap();
    assert_eq!(status, StatusCode::OK);
    assert!(headers["content-type"]
        .to_str()
        .unwrap()
        .starts_with("text/plain"));
    let m = parse_prometheus(std::str::from_utf8(&body).unwrap());
    let get = |k: &str| {
        m.get(k)
            .copied()
            .unwrap_or_else(|| panic!("no {k} in {m:#?}"))
    };
    assert_eq!(
        get(r#"hookgate_requests_total{source="github",outcome="queued"}"#),
        2.0
    );
    assert_eq!(
        get(r#"hookgate_requests_total{source="github",outcome="unauthorized"}"#),
        1.0
    );
    assert_eq!(
        get(r#"hookgate_requests_total{source="_unknown",outcome="not_found"}"#),
        1.0
    );
    assert_eq!(
        get(r#"hookgate_verification_failures_total{source="github",reason="mismatch"}"#),
        1.0
    );
    assert_eq!(
        get(r#"hookgate_delivery_attempts_total{sink="target",outcome="delivered"}"#),
        2.0
    );
    assert_eq!(
        get(r#"hookgate_attempt_duration_seconds_count{sink="target"}"#),
        2.0
    );
    assert_eq!(get(r#"hookgate_queue_depth{state="deliveries"}"#), 0.0);
    assert_eq!(get(r#"hookgate_circuit_breaker_open{sink="target"}"#), 0.0);
    // Every answer is timed: two 202s and the 401.
    assert_eq!(
        get(r#"hookgate_ingest_duration_seconds_count{source="github"}"#),
        3.0
    );
    assert_eq!(
        get(r#"hookgate_ingest_duration_seconds_bucket{source="github",le="+Inf"}"#),
        3.0
    );
    assert_eq!(
        get(r#"hookgate_ingest_duration_seconds_count{source="_unknown"}"#),
        1.0
    );
    // Each 202 waited for a sync of the log.
    assert_eq!(get("hookgate_log_synced_events_total"), 2.0);
    let syncs = get("hookgate_log_sync_duration_seconds_count");
    assert!((1.0..=2.0).contains(&syncs), "{syncs} syncs");
    assert_eq!(
        get(r#"hookgate_log_sync_duration_seconds_bucket{le="+Inf"}"#),
        syncs
    );
}

#[tokio::test]
async fn a_reload_changes_routing_and_buries_deliveries_to_removed_sinks() {
    let old = Receiver::start(Reply::status(503)).await;
    let new = Receiver::start(Reply::status(200)).await;
    let gw = TestGateway::start("", &config(&old.url("/"), r#"retry = ["1h"]"#, "")).await;
    push(&gw, "before-reload").await;
    assert_eq!(
        old.wait_for(1, Duration::from_secs(10)).await.len(),
        1,
        "first attempt failed; the retry waits an hour"
    );

    let replacement = format!(
        r#"{GITHUB}
[sinks.fresh]
kind = "http"
url = "{}"

[[routes]]
name = "pushes-v2"
source = "github"
event = "push"
to = ["fresh"]
"#,
        new.url("/v2")
    );
    gw.reload(&replacement).await;
    let dead = gw.wait_dead(1).await;
    assert_eq!(dead.len(), 1);
    assert_eq!(dead[0].delivery_id, "before-reload");
    assert!(
        dead[0]
            .reason
            .as_deref()
            .unwrap()
            .contains("sink `target` removed"),
        "{:?}",
        dead[0].reason
    );

    push(&gw, "after-reload").await;
    let got = new.wait_for(1, Duration::from_secs(10)).await;
    assert_eq!(got.len(), 1);
    assert_eq!(got[0].path, "/v2");
    assert_eq!(got[0].headers["hookgate-delivery"], "after-reload");
    assert_eq!(old.received().len(), 1, "the old sink is not called again");
}

/// A reload that removes a sink while an attempt to it is out: the attempt
/// settles its record (delivered here), and no dead copy is left behind to
/// be replayed as a duplicate.
#[tokio::test]
async fn a_reload_leaves_an_attempt_in_flight_to_settle_its_record() {
    let slow = Receiver::start(Reply::status(200).delay(Duration::from_secs(2))).await;
    let other = Receiver::start(Reply::status(200)).await;
    let gw = TestGateway::start("", &config(&slow.url("/"), "", "")).await;
    let pending = || gw.queue.stats().unwrap().deliveries;
    push(&gw, "in-flight").await;
    // Routed, and its attempt out (the receiver answers after 2 s).
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(pending(), 1);
    let elsewhere = config(&other.url("/"), "", "")
        .replace("[sinks.target]", "[sinks.elsewhere]")
        .replace(r#"to = ["target"]"#, r#"to = ["elsewhere"]"#);
    gw.reload(&elsewhere).await;
    assert_eq!(slow.wait_for(1, Duration::from_secs(10)).await.len(), 1);
    let started = Instant::now();
    while pending() > 0 {
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "the attempt settled"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let dead: Vec<String> = gw
        .queue
        .dead_letters()
        .unwrap()
        .into_iter()
        .map(|d| format!("{}: {:?}", d.delivery_id, d.reason))
        .collect();
    assert!(
        dead.is_empty(),
        "a delivered record has no dead copy: {dead:?}"
    );
}

/// Regression (#8.4): deliveries to a sink whose secret was not set were
/// skipped at routing, counted nowhere, and could never be sent. They are
/// held, visible in the stats and metrics, and go out once the secret is
/// set and the config reloaded.
#[tokio::test]
async fn a_sink_without_its_secret_holds_its_deliveries_until_a_reload_sets_it() {
    let rx = Receiver::start(Reply::status(200)).await;
    let text = format!(
        r#"{GITHUB}
[sinks.held]
kind = "http"
url = {{ file = "{{dir}}/held-url" }}

[sinks.target]
kind = "http"
url = "{}"

[[routes]]
name = "both"
source = "github"
to = ["held", "target"]
"#,
        rx.url("/target")
    );
    let gw = TestGateway::start("", &text).await;
    push(&gw, "disabled-1").await;
    assert_eq!(
        rx.wait_for(1, Duration::from_secs(10)).await.len(),
        1,
        "the configured sink delivers"
    );
    tokio::time::sleep(Duration::from_millis(300)).await;
    let (_, body) = admin_get(gw.admin, "/api/queue/stats").await;
    let stats: hookgate::queue::Stats = serde_json::from_str(&body).unwrap();
    assert_eq!(
        (stats.deliveries, stats.held, stats.dead),
        (1, 1, 0),
        "{stats:?}"
    );
    assert!(
        stats.disabled["held"].reason.contains("held-url"),
        "{stats:?}"
    );
    let (_, metrics) = admin_get(gw.admin, "/metrics").await;
    assert!(
        metrics.contains("hookgate_queue_depth{state=\"held\"} 1\n"),
        "{metrics}"
    );
    assert!(metrics.contains("hookgate_sink_held_deliveries{sink=\"held\"} 1\n"));
    assert!(metrics.contains("hookgate_sink_disabled{sink=\"held\",reason="));
    // "What happened to this delivery?": pending, and held, with why; the
    // one delivered says nothing of the kind.
    let (status, body) = admin_get(gw.admin, "/api/deliveries").await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let page: serde_json::Value = serde_json::from_str(&body).unwrap();
    let items = page["items"].as_array().unwrap();
    let of = |sink: &str| items.iter().find(|d| d["sink"] == sink).unwrap().clone();
    let held = of("held");
    assert_eq!(held["status"], "pending", "{held}");
    let why = held["held"].as_str().unwrap_or_default();
    assert!(
        why.contains("sink `held` is disabled until its secret is set") && why.contains("held-url"),
        "{held}"
    );
    assert!(of("target").get("held").is_none(), "{body}");
    let event = held["event_id"].as_u64().unwrap();
    let (_, body) = admin_get(gw.admin, &format!("/api/events/{event}")).await;
    assert!(
        body.contains("is disabled until its secret is set"),
        "{body}"
    );
    let (status, page) = admin_get(gw.admin, &format!("/events/{event}")).await;
    assert_eq!(status, StatusCode::OK, "{page}");
    assert!(
        page.contains("data-held>held: sink `held` is disabled until its secret is set"),
        "{page}"
    );

    // The secret is set, the config reloaded: the held delivery goes out.
    std::fs::write(gw.dir.path().join("held-url"), rx.url("/held")).unwrap();
    gw.reload(&text).await;
    let got = rx.wait_for(2, Duration::from_secs(10)).await;
    assert_eq!(got.len(), 2);
    assert_eq!(got[1].path, "/held");
}

#[tokio::test]
async fn a_reload_keeps_pending_deliveries_to_sinks_that_stay() {
    let rx = Receiver::start(Reply::status(200)).await;
    rx.script([Reply::status(503)]);
    let gw = TestGateway::start("", &config(&rx.url("/"), r#"retry = ["1s"]"#, "")).await;
    push(&gw, "pending-1").await;
    assert_eq!(rx.wait_for(1, Duration::from_secs(10)).await.len(), 1);
    // Same sink, one more route: the pending retry is untouched.
    let more = format!(
        "{}\n[[routes]]\nname = \"issues\"\nsource = \"github\"\nevent = \"issues\"\nto = [\"target\"]\n",
        config(&rx.url("/"), r#"retry = ["1s"]"#, "")
    );
    gw.reload(&more).await;
    let got = rx.wait_for(2, Duration::from_secs(10)).await;
    assert_eq!(
        got.len(),
        2,
        "the queued retry was delivered after the reload"
    );
    assert_eq!(got[1].headers["hookgate-delivery"], "pending-1");
    assert!(gw.queue.dead_letters().unwrap().is_empty());
}

/// Regression (#8.4): replaying a dead letter whose sink was removed
/// printed "replayed 1" and the delivery hung until the next reload. It is
/// refused with the reason, and stays dead.
#[tokio::test]
async fn replaying_a_dead_letter_whose_sink_was_removed_is_refused_with_the_reason() {
    let rx = Receiver::start(Reply::status(400)).await;
    let gw = TestGateway::start("", &config(&rx.url("/"), "", "")).await;
    push(&gw, "removed-1").await;
    let dead = gw.wait_dead(1).await;
    let other = format!(
        "{GITHUB}\n[sinks.other]\nkind = \"http\"\nurl = \"{}\"\n\n[[routes]]\nname = \"pushes\"\nsource = \"github\"\nto = [\"other\"]\n",
        rx.url("/")
    );
    gw.reload(&other).await;
    let url = format!("http://{}/api/dead/{}/replay", gw.admin, dead[0].id);
    let (status, _, body) = hookgate::client::request(
        http::Method::POST,
        &url,
        &[("x-hookgate-csrf".into(), "1".into())],
        vec![],
    )
    .await
    .unwrap();
    let body = String::from_utf8_lossy(&body);
    assert_eq!(status, StatusCode::CONFLICT, "{body}");
    assert!(
        body.contains("`target` is no longer in the config"),
        "{body}"
    );
    assert_eq!(gw.queue.dead_letters().unwrap().len(), 1, "still dead");
    let all = format!("http://{}/api/dead/replay", gw.admin);
    let (status, _, body) = hookgate::client::request(
        http::Method::POST,
        &all,
        &[("x-hookgate-csrf".into(), "1".into())],
        vec![],
    )
    .await
    .unwrap();
    assert_eq!(status, StatusCode::OK);
    let done: hookgate::queue::Requeued = serde_json::from_slice(&body).unwrap();
    assert_eq!((done.replayed, done.refused.len()), (0, 1), "{done:?}");
}

/// #8.13: what an operator needs to see what fails, in /metrics: per-route
/// matches and render failures, dead letters per sink, the last reload,
/// the build; and each delivery's log lines name route, sink and the
/// provider's delivery id.
#[tokio::test]
async fn metrics_show_routes_dead_letters_per_sink_and_the_last_reload() {
    let rx = Receiver::start(Reply::status(400)).await;
    let text = format!(
        "{}\n[[routes]]\nname = \"broken\"\nsource = \"github\"\nto = [\"target\"]\nmessage = \"{{{{ range(1000000) | length }}}}\"\n",
        config(&rx.url("/"), "", "")
    );
    let gw = TestGateway::start("", &text).await;
    push(&gw, "observed-1").await;
    gw.wait_dead(2).await;
    gw.reload(&text).await;
    let (_, metrics) = admin_get(gw.admin, "/metrics").await;
    for line in [
        "hookgate_route_matches_total{route=\"pushes\"} 1\n",
        "hookgate_route_matches_total{route=\"broken\"} 1\n",
        "hookgate_route_render_failures_total{route=\"broken\"} 1\n",
        "hookgate_route_render_failures_total{route=\"pushes\"} 0\n",
        "hookgate_sink_dead_deliveries{sink=\"target\"} 2\n",
        "hookgate_config_last_reload_successful 1\n",
        "hookgate_build_info{version=\"",
    ] {
        assert!(metrics.contains(line), "{line} in {metrics}");
    }
}

/// Posts a push whose payload names an issue `key` and a number `n`.
async fn issue_event(gw: &TestGateway, key: &str, n: u32) {
    let body = format!(r#"{{"issue": {{"key": "{key}"}}, "n": {n}}}"#);
    let signed = gw.sign("github", "push", body.as_bytes(), &format!("{key}{n}"));
    assert_eq!(gw.post("github", &signed).await.0, StatusCode::ACCEPTED);
}

const ORDERED: &str = r#"message = "{{ payload.issue.key }}{{ payload.n }}"
order_key = "{{ payload.issue.key }}""#;

/// Item 15 of #8: with `order_key`, deliveries of one key go one at a
/// time in event order, even on a sink with four slots; a failing head
/// holds back its key only. Without it, A2 and A3 overtook A1's retry.
#[tokio::test]
async fn deliveries_with_the_same_order_key_go_one_at_a_time_in_event_order() {
    // Slow answers: two attempts of one key would overlap if allowed.
    let rx = Receiver::start(Reply::status(200).delay(Duration::from_millis(150))).await;
    rx.script([Reply::status(503)]);
    let gw = TestGateway::start(
        "",
        &config(&rx.url("/"), "concurrency = 4\nretry = [\"1s\"]", ORDERED),
    )
    .await;
    issue_event(&gw, "A", 1).await;
    assert_eq!(rx.wait_for(1, Duration::from_secs(10)).await.len(), 1);
    issue_event(&gw, "A", 2).await;
    issue_event(&gw, "A", 3).await;
    issue_event(&gw, "B", 1).await;
    let got = rx.wait_for(5, Duration::from_secs(15)).await;
    let bodies: Vec<_> = got
        .iter()
        .map(|r| String::from_utf8_lossy(&r.body).into_owned())
        .collect();
    assert_eq!(
        bodies,
        ["A1", "B1", "A1", "A2", "A3"],
        "B does not wait for A's retry; A's later events wait for A1"
    );
    // One at a time: each starts only after the last one's answer.
    assert!(got[3].at - got[2].at >= Duration::from_millis(150));
    assert!(got[4].at - got[3].at >= Duration::from_millis(150));
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(rx.received().len(), 5, "each delivered once");
    gw.stop().await;
}

/// A head that goes dead lets the next delivery of its key go; the dead
/// letter stays visible (and replayable).
#[tokio::test]
async fn a_dead_head_unblocks_its_order_key() {
    let rx = Receiver::start(Reply::status(200)).await;
    rx.script([Reply::status(400)]);
    let gw = TestGateway::start(
        "",
        &config(&rx.url("/"), "concurrency = 4\nretry = [\"1s\"]", ORDERED),
    )
    .await;
    issue_event(&gw, "A", 1).await;
    assert_eq!(rx.wait_for(1, Duration::from_secs(10)).await.len(), 1);
    issue_event(&gw, "A", 2).await;
    let got = rx.wait_for(2, Duration::from_secs(10)).await;
    assert_eq!(got.len(), 2);
    assert_eq!(&got[1].body[..], b"A2");
    let dead = gw.wait_dead(1).await;
    assert_eq!(dead[0].order_key.as_deref(), Some("A"));
    gw.stop().await;
}

/// More deliveries of a blocked key than the dispatcher reads in one page
/// (256) do not hide another key's delivery behind them.
#[tokio::test]
async fn a_long_queue_behind_a_blocked_key_hides_no_other_key() {
    let rx = Receiver::start(Reply::status(200)).await;
    rx.script([Reply::status(503)]);
    let gw = TestGateway::start(
        "",
        &config(&rx.url("/"), "concurrency = 4\nretry = [\"30s\"]", ORDERED),
    )
    .await;
    issue_event(&gw, "A", 0).await;
    assert_eq!(rx.wait_for(1, Duration::from_secs(10)).await.len(), 1);
    for n in 1..=300 {
        issue_event(&gw, "A", n).await;
    }
    issue_event(&gw, "B", 1).await;
    let got = rx.wait_for(2, Duration::from_secs(10)).await;
    let bodies: Vec<_> = got.iter().map(|r| r.body.clone()).collect();
    assert_eq!(bodies, [&b"A0"[..], b"B1"], "B went; A waits for A0");
    gw.stop().await;
}

/// The order survives a restart: the index is in sled beside the records.
#[tokio::test]
async fn a_restart_keeps_a_key_waiting_for_its_head() {
    let rx = Receiver::start(Reply::status(200)).await;
    rx.script([Reply::status(503)]);
    let gw = TestGateway::start(
        "",
        &config(&rx.url("/"), "concurrency = 4\nretry = [\"2s\"]", ORDERED),
    )
    .await;
    issue_event(&gw, "A", 1).await;
    assert_eq!(rx.wait_for(1, Duration::from_secs(10)).await.len(), 1);
    issue_event(&gw, "A", 2).await;
    let gw = gw.restart().await;
    let got = rx.wait_for(3, Duration::from_secs(10)).await;
    let bodies: Vec<_> = got.iter().map(|r| r.body.clone()).collect();
    assert_eq!(bodies, [&b"A1"[..], b"A1", b"A2"]);
    gw.stop().await;
}
