//! Noticing that the agent's own loop stood still (SIGSTOP, a swapped-out process, a VM
//! pause): the periodic tick arrives late. Longer than an advert interval means adverts went
//! out late and the peer may have taken over; the agent says so in its log, `status` and
//! the metrics instead of carrying on as if nothing happened. Without I/O.

use std::time::{Duration, Instant};

pub struct StallWatch {
    period: Duration,
    /// Lateness that counts as a stall (the shortest advert interval).
    allowed: Duration,
    last: Option<Instant>,
    pub stalls: u64,
    pub longest: Duration,
}

impl StallWatch {
    pub fn new(period: Duration, allowed: Duration) -> StallWatch {
        StallWatch {
            period,
            allowed,
            last: None,
            stalls: 0,
            longest: Duration::ZERO,
        }
    }

    /// A tick at `now`: how late it was, when later than `allowed`.
    pub fn tick(&mut self, now: Instant) -> Option<Duration> {
        let late = self
            .last
            .replace(now)
            .map(|t| now.saturating_duration_since(t).saturating_sub(self.period))?;
        (late > self.allowed).then(|| {
            self.stalls += 1;
            self.longest = self.longest.max(late);
            late
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_late_tick_is_a_stall() {
        let t0 = Instant::now();
        let at = |ms| t0 + Duration::from_millis(ms);
        let mut w = StallWatch::new(Duration::from_secs(1), Duration::from_secs(1));
        assert_eq!(w.tick(at(0)), None);
        assert_eq!(w.tick(at(1_000)), None);
        assert_eq!(
            w.tick(at(2_900)),
            None,
            "0.9 s late: within an advert interval"
        );
        assert_eq!(
            w.tick(at(9_900)),
            Some(Duration::from_secs(6)),
            "SIGSTOP 6 s"
        );
        // The burst of missed ticks after it is not another stall.
        assert_eq!(w.tick(at(9_901)), None);
        assert_eq!((w.stalls, w.longest), (1, Duration::from_secs(6)));
    }
}
