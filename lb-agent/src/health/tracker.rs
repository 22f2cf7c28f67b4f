//! Rise/fall hysteresis without I/O: a checked thing changes state only after `rise`
//! successes in a row (down → up) or `fall` failures in a row (up → down), so one lost probe
//! does not move traffic and one lucky probe does not bring it back.

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Tracker {
    rise: u32,
    fall: u32,
    up: bool,
    /// Results in a row that disagree with `up`.
    against: u32,
}

impl Tracker {
    /// `rise` and `fall` below 1 count as 1.
    pub fn new(rise: u32, fall: u32, up: bool) -> Tracker {
        Tracker {
            rise: rise.max(1),
            fall: fall.max(1),
            up,
            against: 0,
        }
    }

    pub fn is_up(&self) -> bool {
        self.up
    }

    /// Sets the state without hysteresis (the first result of a check); returns the new
    /// state when it changed.
    pub fn force(&mut self, up: bool) -> Option<bool> {
        self.against = 0;
        let changed = self.up != up;
        self.up = up;
        changed.then_some(up)
    }

    /// Records one result; returns the new state when it changed.
    pub fn record(&mut self, ok: bool) -> Option<bool> {
        if ok == self.up {
            self.against = 0;
            return None;
        }
        self.against += 1;
        let needed = if self.up { self.fall } else { self.rise };
        if self.against < needed {
            return None;
        }
        self.up = ok;
        self.against = 0;
        Some(ok)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Feeds `results` ('+' ok, '-' failed) and returns the state after each.
    fn run(t: &mut Tracker, results: &str) -> String {
        results
            .chars()
            .map(|c| {
                t.record(c == '+');
                if t.is_up() { 'U' } else { 'D' }
            })
            .collect()
    }

    #[test]
    fn fall_and_rise_need_results_in_a_row() {
        let cases = [
            // (rise, fall, start up, results, states after each)
            (1, 1, true, "+-+-", "UDUD"),
            (2, 3, true, "--+---", "UUUUUD"),
            (2, 3, false, "+-++", "DDDU"),
            (3, 2, false, "++-+++--", "DDDDDUUD"),
            (0, 0, true, "-+", "DU"),
        ];
        for (rise, fall, up, results, want) in cases {
            let mut t = Tracker::new(rise, fall, up);
            assert_eq!(
                run(&mut t, results),
                want,
                "rise {rise} fall {fall} {results}"
            );
        }
    }

    #[test]
    fn record_reports_only_changes() {
        let mut t = Tracker::new(1, 2, true);
        assert_eq!(t.record(false), None);
        assert_eq!(t.record(false), Some(false));
        assert_eq!(t.record(false), None);
        assert_eq!(t.record(true), Some(true));
    }
}
