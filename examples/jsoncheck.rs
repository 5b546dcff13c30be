//! How long the JSON checks (`src/json.rs`) take beside serde_json's, on the
//! bundled 7.5 KB push as it is (pretty) and compact: the best of seven
//! runs of 5,000 each. `cargo run --release --example jsoncheck`, pinned
//! (`taskset -c 1`) on a noisy machine.

fn main() {
    let push = std::fs::read("samples/github/push.json").unwrap();
    let compact =
        serde_json::to_vec(&serde_json::from_slice::<serde_json::Value>(&push).unwrap()).unwrap();
    for (name, doc) in [("pretty", &push), ("compact", &compact)] {
        let n = 5000;
        for (what, f) in [
            ("skims", hookgate::json::skims as fn(&[u8]) -> bool),
            ("serde_skims", hookgate::json::serde_skims),
            ("reads", hookgate::json::reads),
            ("serde_reads", hookgate::json::serde_reads),
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
