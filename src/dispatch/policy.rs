//! Retry policy and circuit breaker: pure functions of counts and clocks,
//! tested without time.
//!
//! The schedule is persisted as a position (`failures` on the record), not
//! as a backoff iterator in memory, so a restart resumes where it was; that
//! is why this is a small table walk rather than a `backon` builder.

use std::time::Duration;

use crate::sink::Verdict;

/// What to do with a record after an attempt.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Next {
    Done,
    /// Try again at this time (ms); `counted` says whether the attempt used
    /// up a step of the schedule.
    At {
        due_ms: u64,
        counted: bool,
    },
    Dead(String),
}

/// Decides the record's next state. `failures` counts earlier failed
/// attempts; `jitter` is in [-1, 1] (±20 % of the step).
pub fn next(
    verdict: &Verdict,
    failures: u32,
    schedule: &[Duration],
    now_ms: u64,
    jitter: f64,
) -> Next {
    match verdict {
        Verdict::Delivered => Next::Done,
        Verdict::RateLimited { after } => Next::At {
            due_ms: later(now_ms, *after),
            counted: false,
        },
        Verdict::Retry { after, why } => {
            let step = failures as usize; // index of the delay before the next attempt
            let Some(delay) = schedule.get(step) else {
                return Next::Dead(format!(
                    "gave up after {} attempts; last: {why}",
                    failures + 1
                ));
            };
            let jittered = delay.as_secs_f64() * (1.0 + 0.2 * jitter.clamp(-1.0, 1.0));
            let wait = Duration::from_secs_f64(jittered).max(after.unwrap_or_default());
            Next::At {
                due_ms: later(now_ms, wait),
                counted: true,
            }
        }
        Verdict::Permanent(why) => Next::Dead(format!("permanent: {why}")),
        Verdict::SinkGone(why) => Next::Dead(format!("sink gone: {why}")),
    }
}

/// `now_ms` plus `wait`, the wait capped at a day (a sink's answer cannot
/// park a delivery for longer, nor wrap the clock).
fn later(now_ms: u64, wait: Duration) -> u64 {
    now_ms.saturating_add(wait.min(crate::sink::LONGEST_WAIT).as_millis() as u64)
}

/// A sink's circuit breaker: after `THRESHOLD` failures in a row it opens
/// for a while (doubling, up to `MAX_OPEN`); then one attempt may probe.
#[derive(Debug, Clone, Default)]
pub struct Breaker {
    failures: u32,
    open_until_ms: u64,
    open_for: Duration,
    probing: bool,
}

const THRESHOLD: u32 = 5;
const FIRST_OPEN: Duration = Duration::from_secs(30);
const MAX_OPEN: Duration = Duration::from_secs(600);

impl Breaker {
    /// Whether an attempt may start now. In the half-open state only one.
    pub fn allows(&mut self, now_ms: u64) -> bool {
        if self.failures < THRESHOLD {
            return true;
        }
        if now_ms < self.open_until_ms || self.probing {
            return false;
        }
        self.probing = true;
        true
    }

    /// Whether the one attempt `allows` let through is a probe.
    pub fn probing(&self) -> bool {
        self.probing
    }

    /// Whether attempts are held back now.
    pub fn is_open(&self, now_ms: u64) -> bool {
        self.failures >= THRESHOLD && (now_ms < self.open_until_ms || self.probing)
    }

    /// When attempts are held back now: how long until a probe may go.
    /// While a probe is out, as long as the breaker may stay open: the
    /// probe's end wakes the dispatcher.
    pub fn held(&self, now_ms: u64) -> Option<Duration> {
        self.is_open(now_ms).then(|| {
            if self.probing {
                MAX_OPEN
            } else {
                Duration::from_millis(self.open_until_ms - now_ms)
            }
        })
    }

    /// The probe `allows` granted did not go out after all.
    pub fn abandon_probe(&mut self) {
        self.probing = false;
    }

    /// The sink answered: the breaker closes. Returns whether it was open.
    pub fn success(&mut self) -> bool {
        let was_open = self.failures >= THRESHOLD;
        *self = Breaker::default();
        was_open
    }

    /// A failure that says the sink is unwell (not a permanent 4xx).
    /// Attempts that were already in flight when the breaker opened do not
    /// extend it; only a failed probe doubles the wait. Returns how long it
    /// opened for, when this failure opened it (again).
    pub fn failure(&mut self, now_ms: u64) -> Option<Duration> {
        self.failures += 1;
        let reopen = if self.probing {
            self.probing = false;
            Some((self.open_for * 2).clamp(FIRST_OPEN, MAX_OPEN))
        } else if self.failures == THRESHOLD {
            Some(FIRST_OPEN)
        } else {
            None
        };
        if let Some(wait) = reopen {
            self.open_for = wait;
            self.open_until_ms = now_ms + wait.as_millis() as u64;
        }
        reopen
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn retry() -> Verdict {
        Verdict::Retry {
            after: None,
            why: "503".into(),
        }
    }

    #[test]
    fn walks_the_schedule_with_jitter_then_gives_up() {
        let schedule = [Duration::from_secs(5), Duration::from_secs(30)];
        assert_eq!(
            next(&retry(), 0, &schedule, 1000, 0.0),
            Next::At {
                due_ms: 6000,
                counted: true
            }
        );
        assert_eq!(
            next(&retry(), 0, &schedule, 1000, 1.0),
            Next::At {
                due_ms: 7000,
                counted: true
            }
        );
        assert_eq!(
            next(&retry(), 0, &schedule, 1000, -1.0),
            Next::At {
                due_ms: 5000,
                counted: true
            }
        );
        assert_eq!(
            next(&retry(), 1, &schedule, 0, 0.0),
            Next::At {
                due_ms: 30_000,
                counted: true
            }
        );
        assert!(
            matches!(next(&retry(), 2, &schedule, 0, 0.0), Next::Dead(why) if why.contains("3 attempts"))
        );
    }

    #[test]
    fn retry_after_is_a_floor_and_429_does_not_count() {
        let schedule = [Duration::from_secs(5)];
        let v = Verdict::Retry {
            after: Some(Duration::from_secs(60)),
            why: "503".into(),
        };
        assert_eq!(
            next(&v, 0, &schedule, 0, 0.0),
            Next::At {
                due_ms: 60_000,
                counted: true
            }
        );
        let limited = Verdict::RateLimited {
            after: Duration::from_secs(2),
        };
        assert_eq!(
            next(&limited, 9, &schedule, 0, 0.0),
            Next::At {
                due_ms: 2000,
                counted: false
            }
        );
    }

    #[test]
    fn permanent_answers_die_at_once() {
        assert!(matches!(
            next(&Verdict::Permanent("400".into()), 0, &[], 0, 0.0),
            Next::Dead(_)
        ));
        assert!(
            matches!(next(&Verdict::SinkGone("410".into()), 0, &[], 0, 0.0), Next::Dead(w) if w.starts_with("sink gone"))
        );
    }

    #[test]
    fn failures_in_flight_when_it_opens_do_not_extend_it() {
        let mut b = Breaker::default();
        for _ in 0..40 {
            b.failure(0);
        }
        assert!(b.allows(30_000), "still one probe after 30 s");
    }

    #[test]
    fn breaker_opens_probes_and_closes() {
        let mut b = Breaker::default();
        for _ in 0..4 {
            b.failure(0);
            assert!(b.allows(0));
        }
        assert_eq!(b.failure(0), Some(FIRST_OPEN), "the fifth opens it");
        assert!(!b.allows(1000), "open after 5 failures");
        assert!(b.allows(30_000), "one probe after 30 s");
        assert!(!b.allows(30_001), "only one");
        assert_eq!(b.failure(30_002), Some(FIRST_OPEN * 2));
        assert!(!b.allows(60_000), "open again, for twice as long");
        assert!(b.allows(90_002));
        assert!(b.success());
        assert!(b.allows(90_003) && b.allows(90_004));
    }

    #[test]
    fn huge_waits_are_capped_and_never_wrap() {
        let day = 86_400_000;
        assert_eq!(
            next(
                &Verdict::RateLimited {
                    after: Duration::MAX
                },
                0,
                &[],
                u64::MAX - 5,
                0.0
            ),
            Next::At {
                due_ms: u64::MAX,
                counted: false
            }
        );
        assert_eq!(
            next(
                &Verdict::Retry {
                    after: Some(Duration::from_secs(u64::MAX)),
                    why: "503".into()
                },
                0,
                &[Duration::from_secs(1)],
                1_000,
                0.0
            ),
            Next::At {
                due_ms: 1_000 + day,
                counted: true
            }
        );
    }

    /// A probe whose answer is not a failure (a 429, a 4xx) closes the
    /// breaker; a probe that never went out frees its place.
    #[test]
    fn a_probe_always_settles() {
        let mut b = Breaker::default();
        for _ in 0..THRESHOLD {
            b.failure(0);
        }
        assert!(!b.allows(1_000));
        assert_eq!(b.held(1_000), Some(Duration::from_secs(29)));
        assert!(b.allows(30_000), "the probe");
        assert!(!b.allows(30_001), "one probe at a time");
        assert_eq!(b.held(30_001), Some(MAX_OPEN), "until the probe ends");
        b.abandon_probe();
        assert!(b.allows(30_002), "an abandoned probe frees its place");
        b.success();
        assert!(b.allows(30_003) && b.held(30_003).is_none());
    }
}
