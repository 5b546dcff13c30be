//! Counters and histograms for `/metrics`, in the Prometheus text format.
//!
//! Labels are bounded: sources and sinks come from the config (a request
//! for an unknown source counts as `_unknown`), outcomes and reasons are
//! fixed strings. A std mutex per family: held for one map update.

use std::collections::BTreeMap;
use std::fmt::Write;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::Duration;

/// Upper bounds of the delivery-attempt latency buckets, in seconds.
const ATTEMPT_BUCKETS: &[f64] = &[
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];
/// Upper bounds of the ingest latency buckets (request to answer), in seconds.
const INGEST_BUCKETS: &[f64] = &[
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
];
/// Upper bounds of the event-log sync buckets, in seconds.
pub const SYNC_BUCKETS: &[f64] = &[
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0,
];

/// Observations per bucket (not cumulative), their count and sum.
#[derive(Debug, Clone, PartialEq)]
pub struct Histogram {
    bounds: &'static [f64],
    counts: Vec<u64>,
    count: u64,
    sum: f64,
}

impl Histogram {
    pub fn new(bounds: &'static [f64]) -> Histogram {
        Histogram {
            bounds,
            counts: vec![0; bounds.len()],
            count: 0,
            sum: 0.0,
        }
    }

    /// How many observations it holds.
    pub fn count(&self) -> u64 {
        self.count
    }

    fn observe(&mut self, took: Duration) {
        let secs = took.as_secs_f64();
        if let Some(i) = self.bounds.iter().position(|b| secs <= *b) {
            self.counts[i] += 1;
        }
        self.count += 1;
        self.sum += secs;
    }

    /// Writes the `_bucket` (cumulative), `_sum` and `_count` lines;
    /// `labels` is empty or `name="value",`.
    fn render(&self, out: &mut String, name: &str, labels: &str) {
        let mut below = 0;
        for (bound, count) in self.bounds.iter().zip(&self.counts) {
            below += count;
            let _ = writeln!(out, "{name}_bucket{{{labels}le=\"{bound}\"}} {below}");
        }
        let _ = writeln!(out, "{name}_bucket{{{labels}le=\"+Inf\"}} {}", self.count);
        let labels = match labels.trim_end_matches(',') {
            "" => String::new(),
            l => format!("{{{l}}}"),
        };
        let _ = writeln!(out, "{name}_sum{labels} {}", self.sum);
        let _ = writeln!(out, "{name}_count{labels} {}", self.count);
    }
}

/// A histogram updated without a lock, for the event log's syncs.
#[derive(Debug)]
pub struct AtomicHistogram {
    bounds: &'static [f64],
    counts: Box<[AtomicU64]>,
    count: AtomicU64,
    sum_nanos: AtomicU64,
}

impl AtomicHistogram {
    pub fn new(bounds: &'static [f64]) -> AtomicHistogram {
        AtomicHistogram {
            bounds,
            counts: bounds.iter().map(|_| AtomicU64::new(0)).collect(),
            count: AtomicU64::new(0),
            sum_nanos: AtomicU64::new(0),
        }
    }

    pub fn observe(&self, took: Duration) {
        let secs = took.as_secs_f64();
        if let Some(i) = self.bounds.iter().position(|b| secs <= *b) {
            self.counts[i].fetch_add(1, Ordering::Relaxed);
        }
        self.sum_nanos
            .fetch_add(took.as_nanos() as u64, Ordering::Relaxed);
        self.count.fetch_add(1, Ordering::Relaxed);
    }

    /// The counts as they are now (each read on its own: a scrape during
    /// an update may see the count one ahead of its bucket).
    pub fn snapshot(&self) -> Histogram {
        Histogram {
            bounds: self.bounds,
            counts: self
                .counts
                .iter()
                .map(|c| c.load(Ordering::Relaxed))
                .collect(),
            count: self.count.load(Ordering::Relaxed),
            sum: self.sum_nanos.load(Ordering::Relaxed) as f64 / 1e9,
        }
    }
}

/// Queue depths and per-sink state, read when `/metrics` is scraped.
#[derive(Debug, Default, Clone)]
pub struct Gauges {
    pub inbox: u64,
    pub deliveries: u64,
    pub dead: u64,
    pub unmatched: u64,
    /// Deliveries held for disabled sinks (also counted in `deliveries`).
    pub held: u64,
    /// Disabled sinks: why, and what each holds.
    pub disabled: BTreeMap<String, crate::queue::Disabled>,
    /// Seconds the oldest due delivery has waited past its due time.
    pub oldest_due_age: f64,
    /// Sink name → breaker open.
    pub breakers: BTreeMap<String, bool>,
    /// The event log's syncs (none for a queue without a log).
    pub log_syncs: Option<Histogram>,
    /// Events those syncs made durable.
    pub synced_events: u64,
    /// Damaged log frames skipped when reading the log back.
    pub damaged_frames: u64,
    /// Dead deliveries by sink.
    pub dead_by_sink: BTreeMap<String, u64>,
    /// PostgreSQL: the group commits of appends, and the events they
    /// made durable.
    pub db_commits: Option<(Histogram, u64)>,
}

/// Answers to one source's requests: counts by outcome, and latency.
#[derive(Debug)]
struct Answers {
    outcomes: BTreeMap<&'static str, u64>,
    latency: Histogram,
}

#[derive(Debug, Default)]
pub struct Metrics {
    /// By source; one lock per request, and no allocation once a source
    /// has been seen.
    requests: Mutex<BTreeMap<String, Answers>>,
    verify_failures: Mutex<BTreeMap<String, BTreeMap<&'static str, u64>>>,
    /// By source, then by the index of the secret that matched.
    secret_matches: Mutex<BTreeMap<String, BTreeMap<usize, u64>>>,
    deliveries: Mutex<BTreeMap<String, BTreeMap<&'static str, u64>>>,
    latency: Mutex<BTreeMap<String, Histogram>>,
    /// By route: events it matched, deliveries whose template failed.
    routes: Mutex<BTreeMap<String, BTreeMap<&'static str, u64>>>,
    /// The last reload: when (Unix seconds), and whether it was applied.
    last_reload: Mutex<Option<(u64, bool)>>,
    /// By sink: dead letters deleted past `server.dead_letter_retention`.
    dead_expired: Mutex<BTreeMap<String, u64>>,
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

/// `map[key]`, inserted with `new` (and `key` copied) the first time only.
fn slot<'m, V>(map: &'m mut BTreeMap<String, V>, key: &str, new: impl FnOnce() -> V) -> &'m mut V {
    if !map.contains_key(key) {
        map.insert(key.to_owned(), new());
    }
    map.get_mut(key).expect("just inserted")
}

impl Metrics {
    /// One answered request: its status and how long answering took.
    pub fn request(&self, source: &str, status: u16, took: Duration) {
        let mut requests = self.requests.lock().expect("metrics lock");
        let answers = slot(&mut requests, source, || Answers {
            outcomes: BTreeMap::new(),
            latency: Histogram::new(INGEST_BUCKETS),
        });
        *answers.outcomes.entry(outcome(status)).or_default() += 1;
        answers.latency.observe(took);
    }

    pub fn verify_failure(&self, source: &str, reason: &'static str) {
        let mut failures = self.verify_failures.lock().expect("metrics lock");
        *slot(&mut failures, source, BTreeMap::new)
            .entry(reason)
            .or_default() += 1;
    }

    /// A proven request of `source`, and which of its secrets (the index in
    /// its `secret` list) matched.
    pub fn secret_match(&self, source: &str, secret: usize) {
        let mut matches = self.secret_matches.lock().expect("metrics lock");
        *slot(&mut matches, source, BTreeMap::new)
            .entry(secret)
            .or_default() += 1;
    }

    /// One attempt's outcome (`delivered`, `retry`, `rate_limited`, `dead`)
    /// and how long it took.
    pub fn attempt(&self, sink: &str, outcome: &'static str, took: Duration) {
        let mut deliveries = self.deliveries.lock().expect("metrics lock");
        *slot(&mut deliveries, sink, BTreeMap::new)
            .entry(outcome)
            .or_default() += 1;
        drop(deliveries);
        let mut latency = self.latency.lock().expect("metrics lock");
        slot(&mut latency, sink, || Histogram::new(ATTEMPT_BUCKETS)).observe(took);
    }

    /// One event `route` matched; `failed` of its deliveries could not be
    /// rendered (they are dead with the template's error).
    pub fn route(&self, route: &str, failed: u64) {
        let mut routes = self.routes.lock().expect("metrics lock");
        let by = slot(&mut routes, route, BTreeMap::new);
        *by.entry("matched").or_default() += 1;
        *by.entry("render_failed").or_default() += failed;
    }

    /// `n` dead letters of `sink` were deleted, past their retention.
    pub fn dead_expired(&self, sink: &str, n: u64) {
        let mut expired = self.dead_expired.lock().expect("metrics lock");
        *slot(&mut expired, sink, || 0) += n;
    }

    /// A reload was applied (`ok`) or refused, at `unix_s`.
    pub fn reload(&self, ok: bool, unix_s: u64) {
        *self.last_reload.lock().expect("metrics lock") = Some((unix_s, ok));
    }

    /// The Prometheus text exposition.
    pub fn render(&self, gauges: &Gauges) -> String {
        let mut out = String::new();
        let counters =
            |out: &mut String,
             name: &str,
             help: &str,
             (l1, l2): (&str, &str),
             rows: &mut dyn Iterator<Item = (&String, &BTreeMap<&'static str, u64>)>| {
                let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} counter");
                for (a, by) in rows {
                    for (b, v) in by {
                        let _ = writeln!(out, "{name}{{{l1}=\"{}\",{l2}=\"{b}\"}} {v}", escape(a));
                    }
                }
            };
        let histograms =
            |out: &mut String,
             name: &str,
             help: &str,
             label: &str,
             rows: &mut dyn Iterator<Item = (&String, &Histogram)>| {
                let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} histogram");
                for (value, h) in rows {
                    h.render(out, name, &format!("{label}=\"{}\",", escape(value)));
                }
            };
        {
            let requests = self.requests.lock().expect("metrics lock");
            counters(
                &mut out,
                "hookgate_requests_total",
                "Webhook requests by source and outcome.",
                ("source", "outcome"),
                &mut requests.iter().map(|(s, a)| (s, &a.outcomes)),
            );
            histograms(
                &mut out,
                "hookgate_ingest_duration_seconds",
                "Time from a webhook request's headers to its answer (a 202 includes the log sync).",
                "source",
                &mut requests.iter().map(|(s, a)| (s, &a.latency)),
            );
        }
        counters(
            &mut out,
            "hookgate_verification_failures_total",
            "Requests whose proof of origin failed, by source and reason.",
            ("source", "reason"),
            &mut self.verify_failures.lock().expect("metrics lock").iter(),
        );
        {
            let name = "hookgate_secret_matches_total";
            let _ = writeln!(out, "# HELP {name} Proven requests by source and the secret that matched (its index in the source's `secret` list).\n# TYPE {name} counter");
            for (source, by) in self.secret_matches.lock().expect("metrics lock").iter() {
                for (secret, v) in by {
                    let _ = writeln!(
                        out,
                        "{name}{{source=\"{}\",secret=\"{secret}\"}} {v}",
                        escape(source)
                    );
                }
            }
        }
        counters(
            &mut out,
            "hookgate_delivery_attempts_total",
            "Delivery attempts by sink and outcome.",
            ("sink", "outcome"),
            &mut self.deliveries.lock().expect("metrics lock").iter(),
        );
        histograms(
            &mut out,
            "hookgate_attempt_duration_seconds",
            "Time one delivery attempt took.",
            "sink",
            &mut self.latency.lock().expect("metrics lock").iter(),
        );
        {
            let name = "hookgate_dead_letters_expired_total";
            let _ = writeln!(out, "# HELP {name} Dead letters deleted past server.dead_letter_retention, by sink.\n# TYPE {name} counter");
            for (sink, n) in self.dead_expired.lock().expect("metrics lock").iter() {
                let _ = writeln!(out, "{name}{{sink=\"{}\"}} {n}", escape(sink));
            }
        }
        if let Some((commits, events)) = &gauges.db_commits {
            let name = "hookgate_db_commit_duration_seconds";
            let _ = writeln!(out, "# HELP {name} Time one group commit of accepted events to PostgreSQL took.\n# TYPE {name} histogram");
            commits.render(&mut out, name, "");
            let _ = writeln!(
                out,
                "# HELP hookgate_db_committed_events_total Events made durable by those commits.\n# TYPE hookgate_db_committed_events_total counter\nhookgate_db_committed_events_total {events}"
            );
        }
        if let Some(syncs) = &gauges.log_syncs {
            let name = "hookgate_log_sync_duration_seconds";
            let _ = writeln!(out, "# HELP {name} Time one fdatasync of the event log took (one group commit).\n# TYPE {name} histogram");
            syncs.render(&mut out, name, "");
            let _ = writeln!(
                out,
                "# HELP hookgate_log_synced_events_total Events made durable by those syncs.\n# TYPE hookgate_log_synced_events_total counter\nhookgate_log_synced_events_total {}",
                gauges.synced_events
            );
            let _ = writeln!(
                out,
                "# HELP hookgate_log_damaged_frames_total Damaged event-log frames skipped (each an event lost to disk damage; the log names segment and offset).\n# TYPE hookgate_log_damaged_frames_total counter\nhookgate_log_damaged_frames_total {}",
                gauges.damaged_frames
            );
        }
        {
            let routes = self.routes.lock().expect("metrics lock");
            for (kind, name, help) in [
                ("matched", "hookgate_route_matches_total", "Events each route matched."),
                ("render_failed", "hookgate_route_render_failures_total", "Deliveries whose template failed to render (dead at once, with the error), by route."),
            ] {
                let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} counter");
                for (route, by) in routes.iter() {
                    let _ = writeln!(
                        out,
                        "{name}{{route=\"{}\"}} {}",
                        escape(route),
                        by.get(kind).copied().unwrap_or(0)
                    );
                }
            }
        }
        if let Some((at, ok)) = *self.last_reload.lock().expect("metrics lock") {
            let _ = writeln!(
                out,
                "# HELP hookgate_config_last_reload_successful Whether the last reload (SIGHUP) was applied (1) or refused (0).\n# TYPE hookgate_config_last_reload_successful gauge\nhookgate_config_last_reload_successful {}\n# HELP hookgate_config_last_reload_timestamp_seconds When the last reload was tried.\n# TYPE hookgate_config_last_reload_timestamp_seconds gauge\nhookgate_config_last_reload_timestamp_seconds {at}",
                u8::from(ok)
            );
        }
        let _ = writeln!(
            out,
            "# HELP hookgate_build_info The running build.\n# TYPE hookgate_build_info gauge\nhookgate_build_info{{version=\"{}\"}} 1",
            env!("CARGO_PKG_VERSION")
        );
        let _ = writeln!(out, "# HELP hookgate_sink_dead_deliveries Dead deliveries (dead letters) by sink.\n# TYPE hookgate_sink_dead_deliveries gauge");
        for (sink, n) in &gauges.dead_by_sink {
            let _ = writeln!(
                out,
                "hookgate_sink_dead_deliveries{{sink=\"{}\"}} {n}",
                escape(sink)
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
            ("held", gauges.held),
        ] {
            let _ = writeln!(out, "hookgate_queue_depth{{state=\"{state}\"}} {v}");
        }
        let _ = writeln!(out, "# HELP hookgate_sink_disabled A sink that cannot send because its secret is not set (1), with why; it holds its deliveries.\n# TYPE hookgate_sink_disabled gauge");
        for (sink, d) in &gauges.disabled {
            let _ = writeln!(
                out,
                "hookgate_sink_disabled{{sink=\"{}\",reason=\"{}\"}} 1",
                escape(sink),
                escape(&d.reason)
            );
        }
        let _ = writeln!(out, "# HELP hookgate_sink_held_deliveries Deliveries a disabled sink holds.\n# TYPE hookgate_sink_held_deliveries gauge");
        for (sink, d) in &gauges.disabled {
            let _ = writeln!(
                out,
                "hookgate_sink_held_deliveries{{sink=\"{}\"}} {}",
                escape(sink),
                d.held
            );
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
    fn log_syncs_render_without_labels() {
        let syncs = AtomicHistogram::new(SYNC_BUCKETS);
        syncs.observe(Duration::from_micros(300));
        syncs.observe(Duration::from_millis(7));
        syncs.observe(Duration::from_secs(3));
        let text = Metrics::default().render(&Gauges {
            log_syncs: Some(syncs.snapshot()),
            synced_events: 40,
            ..Gauges::default()
        });
        for line in [
            "hookgate_log_sync_duration_seconds_bucket{le=\"0.0005\"} 1\n",
            "hookgate_log_sync_duration_seconds_bucket{le=\"0.01\"} 2\n",
            "hookgate_log_sync_duration_seconds_bucket{le=\"1\"} 2\n",
            "hookgate_log_sync_duration_seconds_bucket{le=\"+Inf\"} 3\n",
            "hookgate_log_sync_duration_seconds_sum 3.0073\n",
            "hookgate_log_sync_duration_seconds_count 3\n",
            "hookgate_log_synced_events_total 40\n",
        ] {
            assert!(text.contains(line), "{line} in {text}");
        }
    }

    #[test]
    fn renders_counters_histograms_and_gauges() {
        let m = Metrics::default();
        m.request("github", 202, Duration::from_micros(800));
        m.request("github", 202, Duration::from_millis(3));
        m.request("_unknown", 404, Duration::from_micros(10));
        m.verify_failure("github", "mismatch");
        m.attempt("slack", "delivered", Duration::from_millis(30));
        m.dead_expired("slack", 3);
        m.dead_expired("slack", 2);
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
        assert!(
            text.contains("# TYPE hookgate_dead_letters_expired_total counter\nhookgate_dead_letters_expired_total{sink=\"slack\"} 5\n"),
            "{text}"
        );
        // Buckets are cumulative; the count includes what no bound holds.
        for line in [
            "hookgate_ingest_duration_seconds_bucket{source=\"github\",le=\"0.0005\"} 0\n",
            "hookgate_ingest_duration_seconds_bucket{source=\"github\",le=\"0.001\"} 1\n",
            "hookgate_ingest_duration_seconds_bucket{source=\"github\",le=\"0.005\"} 2\n",
            "hookgate_ingest_duration_seconds_bucket{source=\"github\",le=\"+Inf\"} 2\n",
            "hookgate_ingest_duration_seconds_count{source=\"github\"} 2\n",
            "hookgate_ingest_duration_seconds_sum{source=\"github\"} 0.0038\n",
        ] {
            assert!(text.contains(line), "{line} in {text}");
        }
        assert!(
            !text.contains("hookgate_log_sync"),
            "no log, no sync metrics"
        );
        assert!(text.contains("hookgate_circuit_breaker_open{sink=\"slack\"} 1\n"));
    }
}
