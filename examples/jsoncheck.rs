//! How long the JSON checks (`src/json.rs`) take beside serde_json's, on the
//! bundled 7.5 KB push as it is (pretty) and compact, and what a provider
//! reading a field did and does: the best of seven
//! runs of 5,000 each (`N=` another count). `cargo run --release --example jsoncheck`, pinned
//! (`taskset -c 1`) on a noisy machine.

fn main() {
    let push = std::fs::read("samples/github/push.json").unwrap();
    let compact =
        serde_json::to_vec(&serde_json::from_slice::<serde_json::Value>(&push).unwrap()).unwrap();
    for (name, doc) in [("pretty", &push), ("compact", &compact)] {
        let n: usize = std::env::var("N")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(5000);
        for (what, f) in [
            ("skims", hookgate::json::skims as fn(&[u8]) -> bool),
            ("serde_skims", hookgate::json::serde_skims),
            ("reads", hookgate::json::reads),
            ("serde_reads", hookgate::json::serde_reads),
            ("reads + find", reads_and_find),
            ("serde_json::Value + get", value_and_get),
        ] {
            let mut best = f64::MAX;
            for _ in 0..7 {
                let t = std::time::Instant::now();
                for _ in 0..n {
                    assert!(f(std::hint::black_box(doc)));
                }
                best = best.min(t.elapsed().as_secs_f64() * 1e6 / n as f64);
            }
            println!("{name} {} B {what}: {best:.2} µs", doc.len());
        }
    }
}

/// What a provider reading its event type from the body does now.
fn reads_and_find(doc: &[u8]) -> bool {
    hookgate::json::reads(doc)
        && hookgate::json::find(doc, &["ref"])
            .and_then(hookgate::json::text)
            .is_some()
}

/// What it did before.
fn value_and_get(doc: &[u8]) -> bool {
    serde_json::from_slice::<serde_json::Value>(doc).is_ok_and(|v| v.get("ref").is_some())
}
