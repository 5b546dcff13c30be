//! Counters and histograms for `/metrics`, in the Prometheus text format.
//!
//! Labels are bounded: sources and sinks come from the config (a request
//! for an unknown source counts as `_unknown`), outcomes and reasons are
//! fixed strings. A std mutex per family: held for one map update.

use std::collections::BTreeMap;
use std::fmt::Write;
use std::sync::Mutex;
use std::time::Duration;

/// Upper bounds of the attempt-latency buckets, in seconds.
const BUCKETS: [f64; 11] = [
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];

#[derive(Debug, Default, Clone)]
struct Histogram {
    counts: [u64; BUCKETS.len()],
    count: u64,
    sum: f64,
}

/// Queue depths and per-sink state, read when `/metrics` is scraped.
#[derive(Debug, Default, Clone)]
pub struct Gauges {
    pub inbox: u64,
    pub deliveries: u64,
    pub dead: u64,
    pub unmatched: u64,
    /// Seconds the oldest due delivery has waited past its due time.
    pub oldest_due_age: f64,
    /// Sink name → breaker open.
    pub breakers: BTreeMap<String, bool>,
}

#[derive(Debug, Default)]
pub struct Metrics {
    requests: Mutex<BTreeMap<(String, &'static str), u64>>,
    verify_failures: Mutex<BTreeMap<(String, &'static str), u64>>,
    deliveries: Mutex<BTreeMap<(String, &'static str), u64>>,
    latency: Mutex<BTreeMap<String, Histogram>>,
}

/// The outcome label of an ingress answer.
pub fn outcome(status: u16) -> &'static str {
    match status {
        202 => "queued",
        200 => "duplicate",
        400 => "bad_request",
        401 => "unauthorized",
        403 => "forbidden",
        404 => "not_found",
        405 => "method_not_allowed",
        408 => "timeout",
        413 => "too_large",
        429 => "rate_limited",
        503 => "unavailable",
        _ => "other",
    }
}

impl Metrics {
    pub fn request(&self, source: &str, status: u16) {
        *self
            .requests
            .lock()
            .expect("metrics lock")
            .entry((source.to_owned(), outcome(status)))
            .or_default() += 1;
    }

    pub fn verify_failure(&self, source: &str, reason: &'static str) {
        *self
            .verify_failures
            .lock()
            .expect("metrics lock")
            .entry((source.to_owned(), reason))
            .or_default() += 1;
    }

    /// One attempt's outcome (`delivered`, `retry`, `rate_limited`, `dead`)
    /// and how long it took.
    pub fn attempt(&self, sink: &str, outcome: &'static str, took: Duration) {
        *self
            .deliveries
            .lock()
            .expect("metrics lock")
            .entry((sink.to_owned(), outcome))
            .or_default() += 1;
        let secs = took.as_secs_f64();
        let mut latency = self.latency.lock().expect("metrics lock");
        let h = latency.entry(sink.to_owned()).or_default();
        for (i, bound) in BUCKETS.iter().enumerate() {
            if secs <= *bound {
                h.counts[i] += 1;
            }
        }
        h.count += 1;
        h.sum += secs;
    }

    /// The Prometheus text exposition.
    pub fn render(&self, gauges: &Gauges) -> String {
        let mut out = String::new();
        let counters = |out: &mut String,
                        name: &str,
                        help: &str,
                        l1: &str,
                        l2: &str,
                        map: &BTreeMap<(String, &'static str), u64>| {
            let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} counter");
            for ((a, b), v) in map {
                let _ = writeln!(out, "{name}{{{l1}=\"{}\",{l2}=\"{b}\"}} {v}", escape(a));
            }
        };
        counters(
            &mut out,
            "hookgate_requests_total",
            "Webhook requests by source and outcome.",
            "source",
            "outcome",
            &self.requests.lock().expect("metrics lock"),
        );
        counters(
            &mut out,
            "hookgate_verification_failures_total",
            "Requests whose proof of origin failed, by source and reason.",
            "source",
            "reason",
            &self.verify_failures.lock().expect("metrics lock"),
        );
        counters(
            &mut out,
            "hookgate_delivery_attempts_total",
            "Delivery attempts by sink and outcome.",
            "sink",
            "outcome",
            &self.deliveries.lock().expect("metrics lock"),
        );
        let _ = writeln!(
            out,
            "# HELP hookgate_attempt_duration_seconds Time one delivery attempt took.\n# TYPE hookgate_attempt_duration_seconds histogram"
        );
        for (sink, h) in self.latency.lock().expect("metrics lock").iter() {
            let sink = escape(sink);
            for (bound, count) in BUCKETS.iter().zip(h.counts) {
                let _ = writeln!(out, "hookgate_attempt_duration_seconds_bucket{{sink=\"{sink}\",le=\"{bound}\"}} {count}");
            }
            let _ = writeln!(
                out,
                "hookgate_attempt_duration_seconds_bucket{{sink=\"{sink}\",le=\"+Inf\"}} {}",
                h.count
            );
            let _ = writeln!(
                out,
                "hookgate_attempt_duration_seconds_sum{{sink=\"{sink}\"}} {}",
                h.sum
            );
            let _ = writeln!(
                out,
                "hookgate_attempt_duration_seconds_count{{sink=\"{sink}\"}} {}",
                h.count
            );
        }
        let _ = writeln!(
            out,
            "# HELP hookgate_queue_depth Items by queue state.\n# TYPE hookgate_queue_depth gauge"
        );
        for (state, v) in [
            ("inbox", gauges.inbox),
            ("deliveries", gauges.deliveries),
            ("dead", gauges.dead),
            ("unmatched", gauges.unmatched),
        ] {
            let _ = writeln!(out, "hookgate_queue_depth{{state=\"{state}\"}} {v}");
        }
        let _ = writeln!(
            out,
            "# HELP hookgate_oldest_due_delivery_age_seconds How long the most overdue delivery has waited.\n# TYPE hookgate_oldest_due_delivery_age_seconds gauge\nhookgate_oldest_due_delivery_age_seconds {}",
            gauges.oldest_due_age
        );
        let _ = writeln!(out, "# HELP hookgate_circuit_breaker_open Whether a sink's breaker holds attempts back.\n# TYPE hookgate_circuit_breaker_open gauge");
        for (sink, open) in &gauges.breakers {
            let _ = writeln!(
                out,
                "hookgate_circuit_breaker_open{{sink=\"{}\"}} {}",
                escape(sink),
                u8::from(*open)
            );
        }
        out
    }
}

/// Label values escape `\`, `"` and newlines.
fn escape(v: &str) -> String {
    v.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_counters_histograms_and_gauges() {
        let m = Metrics::default();
        m.request("github", 202);
        m.request("github", 202);
        m.request("_unknown", 404);
        m.verify_failure("github", "mismatch");
        m.attempt("slack", "delivered", Duration::from_millis(30));
        let text = m.render(&Gauges {
            inbox: 1,
            breakers: BTreeMap::from([("slack".to_string(), true)]),
            ..Gauges::default()
        });
        assert!(
            text.contains("hookgate_requests_total{source=\"github\",outcome=\"queued\"} 2\n"),
            "{text}"
        );
        assert!(
            text.contains("hookgate_requests_total{source=\"_unknown\",outcome=\"not_found\"} 1\n")
        );
        assert!(text.contains(
            "hookgate_verification_failures_total{source=\"github\",reason=\"mismatch\"} 1\n"
        ));
        assert!(text
            .contains("hookgate_attempt_duration_seconds_bucket{sink=\"slack\",le=\"0.025\"} 0\n"));
        assert!(text
            .contains("hookgate_attempt_duration_seconds_bucket{sink=\"slack\",le=\"0.05\"} 1\n"));
        assert!(text.contains("hookgate_queue_depth{state=\"inbox\"} 1\n"));
        assert!(text.contains("hookgate_circuit_breaker_open{sink=\"slack\"} 1\n"));
    }
}
