//! How each sink is doing, as the console's sinks page and
//! `GET /api/sinks` show it: enabled or why not, the breaker, a pause the
//! platform asked for, what it sent and failed lately, what waits and
//! what is dead. The recent figures are this instance's own.

use std::collections::VecDeque;

use serde::{Deserialize, Serialize};

/// Failures kept per sink for the health page.
const FAILURES_KEPT: usize = 5;
/// Minutes the tally covers.
const MINUTES: usize = 5;

/// What a sink did lately: attempts per minute, and its last failures.
#[derive(Debug, Default)]
pub struct Recent {
    /// (minute since the epoch, delivered, failed), oldest first.
    minutes: VecDeque<(u64, u64, u64)>,
    failures: VecDeque<RecentFailure>,
}

/// A failed attempt, as the health page lists it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RecentFailure {
    /// RFC 3339.
    pub at: String,
    pub delivery: u64,
    pub event_id: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub status: Option<u16>,
    pub outcome: String,
}

impl Recent {
    /// Counts an attempt at `now_ms`; a failure is kept with its details.
    pub fn record(&mut self, now_ms: u64, failure: Option<RecentFailure>) {
        let minute = now_ms / 60_000;
        match self.minutes.back_mut() {
            Some(last) if last.0 == minute => {}
            _ => self.minutes.push_back((minute, 0, 0)),
        }
        let last = self.minutes.back_mut().expect("pushed");
        match failure {
            None => last.1 += 1,
            Some(f) => {
                last.2 += 1;
                if self.failures.len() == FAILURES_KEPT {
                    self.failures.pop_front();
                }
                self.failures.push_back(f);
            }
        }
        while self.minutes.len() > MINUTES {
            self.minutes.pop_front();
        }
    }

    /// Delivered and failed attempts in the last [`MINUTES`] minutes
    /// (this one included).
    pub fn tally(&self, now_ms: u64) -> (u64, u64) {
        let first = (now_ms / 60_000).saturating_sub(MINUTES as u64 - 1);
        self.minutes
            .iter()
            .filter(|m| m.0 >= first)
            .fold((0, 0), |(d, f), m| (d + m.1, f + m.2))
    }

    /// The last failures, newest first.
    pub fn failures(&self) -> Vec<RecentFailure> {
        self.failures.iter().rev().cloned().collect()
    }
}

/// One sink's health.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SinkHealth {
    pub name: String,
    pub kind: String,
    pub enabled: bool,
    /// Why it is disabled: a secret not set, or the platform said the
    /// webhook is gone.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub disabled_reason: Option<String>,
    /// `closed`, `open` (attempts held back) or `probing` (one is out).
    pub breaker: String,
    /// While open: seconds until a probe may go.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub breaker_retry_in_s: Option<u64>,
    /// RFC 3339: the platform asked for a pause until then.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub paused_until: Option<String>,
    /// The configured limit, per second.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rate_limit: Option<f64>,
    pub concurrency: usize,
    /// Attempts out now, on this instance.
    pub in_flight: usize,
    /// On this instance, in the last 5 minutes.
    pub delivered_5m: u64,
    pub failed_5m: u64,
    /// The last failed attempts on this instance, newest first.
    pub recent_failures: Vec<RecentFailure>,
    /// Seconds the most overdue delivery has waited past its due time.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub oldest_due_s: Option<u64>,
    pub dead: u64,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn failure(n: u64) -> RecentFailure {
        RecentFailure {
            at: String::new(),
            delivery: n,
            event_id: n,
            status: Some(500),
            outcome: "retry: 500".into(),
        }
    }

    #[test]
    fn the_tally_covers_five_minutes_and_keeps_five_failures() {
        let mut r = Recent::default();
        let t0 = 1_000 * 60_000;
        r.record(t0, None);
        r.record(t0 + 1, Some(failure(1)));
        r.record(t0 + 60_000, None);
        assert_eq!(r.tally(t0 + 60_000), (2, 1));
        // Five minutes on, the first minute has left the window.
        assert_eq!(r.tally(t0 + 5 * 60_000), (1, 0));
        assert_eq!(r.tally(t0 + 6 * 60_000), (0, 0));
        for n in 2..=8 {
            r.record(t0 + 7 * 60_000, Some(failure(n)));
        }
        let kept: Vec<u64> = r.failures().iter().map(|f| f.delivery).collect();
        assert_eq!(kept, [8, 7, 6, 5, 4]);
        assert!(r.minutes.len() <= MINUTES);
    }
}
