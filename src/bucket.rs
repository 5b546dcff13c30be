//! A token bucket: per-source ingress rates (429 beyond) and per-sink
//! delivery rates.

use std::sync::Mutex;
use std::time::Instant;

use crate::config::Rate;

#[derive(Debug)]
pub struct Bucket {
    rate: Rate,
    /// (tokens left, when they were counted). A std mutex: held for a few
    /// arithmetic operations, never across an await.
    state: Mutex<(f64, Instant)>,
}

impl Bucket {
    pub fn new(rate: Rate) -> Bucket {
        Bucket {
            rate,
            state: Mutex::new((f64::from(rate.burst), Instant::now())),
        }
    }

    /// Whole tokens there are now (none taken).
    pub fn available(&self, now: Instant) -> u32 {
        let mut s = self.state.lock().expect("bucket lock");
        let elapsed = now.saturating_duration_since(s.1).as_secs_f64();
        s.0 = (s.0 + elapsed * self.rate.per_second).min(f64::from(self.rate.burst));
        s.1 = now;
        s.0.floor() as u32
    }

    /// Takes one token if there is one.
    pub fn try_take(&self, now: Instant) -> bool {
        let mut s = self.state.lock().expect("bucket lock");
        let elapsed = now.saturating_duration_since(s.1).as_secs_f64();
        s.0 = (s.0 + elapsed * self.rate.per_second).min(f64::from(self.rate.burst));
        s.1 = now;
        if s.0 >= 1.0 {
            s.0 -= 1.0;
            true
        } else {
            false
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn allows_burst_then_refills() {
        let b = Bucket::new(Rate {
            burst: 2,
            per_second: 2.0,
        });
        let t = Instant::now();
        assert!(b.try_take(t));
        assert!(b.try_take(t));
        assert!(!b.try_take(t));
        assert!(b.try_take(t + Duration::from_millis(500)));
        assert!(!b.try_take(t + Duration::from_millis(500)));
    }
}
