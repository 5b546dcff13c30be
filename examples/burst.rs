//! A fixed number of signed 7.5 KB GitHub pushes (not a test), each with
//! a unique delivery id, over `CONCURRENCY` kept-alive connections, each
//! sending its next request once the last is answered. For counting
//! instructions per request (`bench/callgrind.sh`), where the count must
//! not depend on timing: with one connection every request is its own
//! batch.
//!
//!   cargo run --release --example burst -- HOOKGATE_URL SECRET COUNT [CONCURRENCY]
//!
//! Prints one line with the answers by status; exits 1 unless all are 202.

mod common;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use bytes::Bytes;
use http_body_util::Full;

#[tokio::main(flavor = "current_thread")]
async fn main() -> std::process::ExitCode {
    let args: Vec<String> = std::env::args().collect();
    let (url, secret, count, concurrency) = match &args[..] {
        [_, url, secret, count] => (url, secret, count, "1"),
        [_, url, secret, count, c] => (url, secret, count, c.as_str()),
        _ => {
            eprintln!("usage: burst HOOKGATE_URL SECRET COUNT [CONCURRENCY]");
            return std::process::ExitCode::from(2);
        }
    };
    let count: usize = count.parse().expect("COUNT is a number");
    let concurrency: usize = concurrency.parse().expect("CONCURRENCY is a number");
    let url: http::Uri = url.parse().expect("HOOKGATE_URL is a URL");
    let (body, headers) = common::signed_push(secret);
    let headers: Arc<Vec<(String, String)>> = Arc::new(headers);
    let client = hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
        .build_http::<Full<Bytes>>();
    let run = format!("burst{}-{}", std::process::id(), rand::random::<u32>());
    let next = Arc::new(AtomicUsize::new(0));
    let accepted = Arc::new(AtomicUsize::new(0));
    let mut tasks = Vec::new();
    for _ in 0..concurrency {
        let (client, url, body, headers, run, next, accepted) = (
            client.clone(),
            url.clone(),
            body.clone(),
            headers.clone(),
            run.clone(),
            next.clone(),
            accepted.clone(),
        );
        tasks.push(tokio::spawn(async move {
            let mut others = Vec::new();
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= count {
                    return others;
                }
                let mut req = http::Request::post(url.clone())
                    .header("x-github-delivery", format!("{run}-{i}"));
                for (k, v) in headers.iter() {
                    req = req.header(k.as_str(), v.as_str());
                }
                let req = req.body(Full::new(body.clone())).expect("a valid request");
                match client.request(req).await {
                    Ok(resp) if resp.status() == 202 => {
                        accepted.fetch_add(1, Ordering::Relaxed);
                    }
                    Ok(resp) => others.push(resp.status().to_string()),
                    Err(e) => others.push(e.to_string()),
                }
            }
        }));
    }
    let mut others = Vec::new();
    for t in tasks {
        others.extend(t.await.expect("a sender"));
    }
    let accepted = accepted.load(Ordering::Relaxed);
    println!(
        "sent {count} over {concurrency} connections: 202 {accepted}, other {}",
        others.len()
    );
    if let Some(first) = others.first() {
        eprintln!("first other answer: {first}");
    }
    if accepted == count {
        std::process::ExitCode::SUCCESS
    } else {
        std::process::ExitCode::FAILURE
    }
}
