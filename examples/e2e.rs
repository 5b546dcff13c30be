//! End-to-end benchmark (not a test): signed GitHub pushes into a running
//! hookgate at a fixed rate, an in-process stand-in sink that records when
//! each delivery arrives, and the time from sending to arrival.
//!
//!   cargo run --release --example e2e -- HOOKGATE_URL[,URL…] SECRET SINK_PORT RATE SECONDS [backlog]
//!
//! `bench/e2e.sh` starts hookgate with an http sink pointed at SINK_PORT and
//! runs this three times: paced (latency), as fast as it can, and with the
//! sink down while sending (`backlog`: the deliveries pile up, then the
//! sink comes up and the drain rate is the dispatcher's throughput).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::Full;
use tokio_util::sync::CancellationToken;

#[tokio::main]
async fn main() {
    let args: Vec<String> = std::env::args().collect();
    let (url, secret, port, rate, seconds, backlog) = match &args[..] {
        [_, u, s, p, r, t] => (u, s, p, r, t, false),
        [_, u, s, p, r, t, b] if b == "backlog" => (u, s, p, r, t, true),
        _ => {
            eprintln!("usage: e2e HOOKGATE_URL SECRET SINK_PORT RATE(0 = as fast as possible) SECONDS [backlog]");
            std::process::exit(2);
        }
    };
    let rate: f64 = rate.parse().unwrap();
    let seconds: f64 = seconds.parse().unwrap();
    let arrived: Arc<Mutex<HashMap<String, Instant>>> = Arc::default();

    // The stand-in sink.
    let stop = CancellationToken::new();
    let start_sink = {
        let (arrived, stop, port) = (arrived.clone(), stop.clone(), port.clone());
        move || async move {
            let listener = tokio::net::TcpListener::bind(format!("127.0.0.1:{port}"))
                .await
                .unwrap();
            let limits = hookgate::ingress::listener::Limits {
                max_connections: 1024,
                header_timeout: Duration::from_secs(10),
                drain_timeout: Duration::from_millis(100),
            };
            tokio::spawn(hookgate::ingress::listener::run(
                listener,
                limits,
                move |req: http::Request<hyper::body::Incoming>, _| {
                    let log = arrived.clone();
                    async move {
                        if let Some(id) = req
                            .headers()
                            .get("hookgate-delivery")
                            .and_then(|v| v.to_str().ok())
                        {
                            log.lock()
                                .unwrap()
                                .entry(id.to_owned())
                                .or_insert_with(Instant::now);
                        }
                        http::Response::new(Full::new(Bytes::new()))
                    }
                },
                stop,
            ));
        }
    };
    if !backlog {
        start_sink.clone()().await;
    }

    let github = hookgate::verify::github::Github {
        secret: hookgate::secret::Secret::new(secret.as_str()),
        legacy_sha1: false,
    };
    let body = hookgate::samples::find("github", "push")
        .unwrap()
        .as_bytes()
        .to_vec();
    let client = hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
        .pool_max_idle_per_host(64)
        .build_http::<Full<Bytes>>();
    let sent: Arc<Mutex<HashMap<String, Instant>>> = Arc::default();
    let run = format!("e2e{}", std::process::id());
    let started = Instant::now();
    let total = if rate > 0.0 {
        (rate * seconds) as usize
    } else {
        usize::MAX
    };
    let mut tasks = Vec::new();
    let workers = 32;
    for w in 0..workers {
        let (client, url, body, sent, run) = (
            client.clone(),
            // Several URLs, comma-separated: each worker keeps to one.
            url.split(',')
                .nth(w % url.split(',').count())
                .unwrap()
                .to_owned(),
            body.clone(),
            sent.clone(),
            run.clone(),
        );
        let github = hookgate::verify::github::Github {
            secret: github.secret.clone(),
            legacy_sha1: false,
        };
        tasks.push(tokio::spawn(async move {
            use hookgate::verify::{Provider, SignInput};
            let mut i = w;
            while i < total && started.elapsed().as_secs_f64() < seconds {
                if rate > 0.0 {
                    let at = started + Duration::from_secs_f64(i as f64 / rate);
                    tokio::time::sleep_until(at.into()).await;
                }
                let id = format!("{run}-{i}");
                let signed = github.sign(&SignInput {
                    body: &body,
                    event: "push",
                    delivery_id: &id,
                    now: std::time::SystemTime::now(),
                });
                let mut req = http::Request::post(&url);
                for (k, v) in &signed.headers {
                    req = req.header(k.as_str(), v.as_str());
                }
                let t = Instant::now();
                if let Ok(resp) = client
                    .request(req.body(Full::new(Bytes::from(signed.body))).unwrap())
                    .await
                {
                    if resp.status() == 202 {
                        sent.lock().unwrap().insert(id, t);
                    }
                }
                i += workers;
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    let send_done = started.elapsed();
    let accepted = sent.lock().unwrap().len();
    if backlog {
        start_sink().await;
    }
    // Wait for the deliveries to arrive (at most 90 s more).
    let deadline = Instant::now() + Duration::from_secs(90);
    while arrived.lock().unwrap().len() < accepted && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let all_done = started.elapsed();
    let sent = sent.lock().unwrap();
    let arrived = arrived.lock().unwrap();
    let mut lat: Vec<Duration> = sent
        .iter()
        .filter_map(|(id, t)| arrived.get(id).map(|a| *a - *t))
        .collect();
    lat.sort();
    let pct = |p: f64| {
        lat.get(((lat.len() as f64 * p) as usize).min(lat.len().saturating_sub(1)))
            .copied()
            .unwrap_or_default()
    };
    let last = arrived.values().max().copied().unwrap_or(started);
    let first = arrived.values().min().copied().unwrap_or(started);
    println!(
        "accepted {accepted} in {:.1}s ({:.0}/s); delivered {} ({:.0}/s from first to last arrival, {:.1}s in all); end-to-end p50 {:.1} ms, p99 {:.1} ms, max {:.1} ms",
        send_done.as_secs_f64(),
        accepted as f64 / send_done.as_secs_f64(),
        lat.len(),
        lat.len() as f64 / (last - first).as_secs_f64().max(1e-3),
        all_done.as_secs_f64(),
        pct(0.50).as_secs_f64() * 1e3,
        pct(0.99).as_secs_f64() * 1e3,
        lat.last().copied().unwrap_or_default().as_secs_f64() * 1e3,
    );
    stop.cancel();
}
