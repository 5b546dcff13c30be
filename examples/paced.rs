//! Open-loop ingest latency (not a test): signed 7.5 KB GitHub pushes sent
//! at a fixed rate whatever the answers do, each on its own task, and the
//! time from when each request was *due* to its answer. wrk waits for an
//! answer before sending again on a connection, so a stall lowers the rate
//! it offers and hides itself; this does not (no coordinated omission).
//!
//!   cargo run --release --example paced -- HOOKGATE_URL[,URL…] SECRET RATE SECONDS
//!
//! Prints one line: offered and reached rate, answers by status, and the
//! latency percentiles. `bench/ingest.sh` runs it at 5,000 req/s.

mod common;

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::Full;

#[tokio::main]
async fn main() {
    let args: Vec<String> = std::env::args().collect();
    let [_, url, secret, rate, seconds] = &args[..] else {
        eprintln!("usage: paced HOOKGATE_URL SECRET RATE SECONDS");
        std::process::exit(2);
    };
    let rate: f64 = rate.parse().expect("RATE is a number");
    let seconds: f64 = seconds.parse().expect("SECONDS is a number");
    let (body, headers) = common::signed_push(secret);
    let headers: Arc<Vec<(String, String)>> = Arc::new(headers);
    let client = hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
        .pool_max_idle_per_host(256)
        .build_http::<Full<Bytes>>();
    // Several URLs, comma-separated (instances of one cluster): taken in turn.
    let urls: Vec<http::Uri> = url
        .split(',')
        .map(|u| u.parse().expect("HOOKGATE_URL is a URL"))
        .collect();
    let run = format!("paced{}", std::process::id());
    let total = (rate * seconds) as usize;
    // (latency, status, when due); status 0: no answer.
    let results: Arc<Mutex<Vec<(Duration, u16, Duration)>>> =
        Arc::new(Mutex::new(Vec::with_capacity(total)));
    let started = Instant::now();
    let mut tasks = Vec::with_capacity(total);
    for i in 0..total {
        let due = started + Duration::from_secs_f64(i as f64 / rate);
        tokio::time::sleep_until(due.into()).await;
        let (client, url, body, headers, results) = (
            client.clone(),
            urls[i % urls.len()].clone(),
            body.clone(),
            headers.clone(),
            results.clone(),
        );
        let id = format!("{run}-{i}");
        tasks.push(tokio::spawn(async move {
            let mut req = http::Request::post(url).header("x-github-delivery", id);
            for (k, v) in headers.iter() {
                req = req.header(k.as_str(), v.as_str());
            }
            let req = req.body(Full::new(body)).expect("a valid request");
            let status =
                match tokio::time::timeout(Duration::from_secs(30), client.request(req)).await {
                    Ok(Ok(resp)) => resp.status().as_u16(),
                    _ => 0,
                };
            results
                .lock()
                .unwrap()
                .push((due.elapsed(), status, due - started));
        }));
    }
    let sent_in = started.elapsed();
    for t in tasks {
        t.await.unwrap();
    }
    let mut results = std::mem::take(&mut *results.lock().unwrap());
    results.sort();
    let count = |pred: &dyn Fn(u16) -> bool| results.iter().filter(|(_, s, _)| pred(*s)).count();
    let pct = |p: f64| {
        let i = ((results.len() as f64 * p).ceil() as usize).clamp(1, results.len()) - 1;
        results[i].0.as_secs_f64() * 1000.0
    };
    println!(
        "offered {rate:.0}/s for {seconds:.0} s (sent in {:.1} s): 202 {}, other {}, no answer {}; \
         latency from due time p50 {:.2} ms, p90 {:.2} ms, p99 {:.2} ms, p99.9 {:.2} ms, max {:.2} ms",
        sent_in.as_secs_f64(),
        count(&|s| s == 202),
        count(&|s| s != 202 && s != 0),
        count(&|s| s == 0),
        pct(0.5),
        pct(0.9),
        pct(0.99),
        pct(0.999),
        pct(1.0),
    );
    if std::env::var_os("PACED_TIMELINE").is_some() {
        // The worst latency of each 100 ms of due times: stalls line up.
        let mut worst = std::collections::BTreeMap::new();
        for (latency, _, due) in &results {
            let slot = worst.entry(due.as_millis() / 100).or_insert(Duration::ZERO);
            *slot = (*slot).max(*latency);
        }
        for (slot, latency) in worst {
            if latency > Duration::from_millis(10) {
                println!(
                    "  at {:.1} s: worst {:.1} ms",
                    slot as f64 / 10.0,
                    latency.as_secs_f64() * 1000.0
                );
            }
        }
    }
}
