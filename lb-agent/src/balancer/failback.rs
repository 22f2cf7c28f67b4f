//! When a service's traffic goes to its sorry server and when it comes back, without I/O.
//!
//! Going to the sorry server happens when fewer real servers than the quorum are usable, as
//! soon as the sorry server has applied what it received from them: a check of it that
//! started after the quorum was lost finds its relay log drained (a replica that takes writes
//! before that has older row images still to apply, which overwrite the new writes). Until
//! then the writes wait (`draining`). Coming back follows the service's policy, because the recipe's answer ("as soon as a TCP connect
//! works") hands writes back to a MySQL server that has not yet replicated the writes the
//! sorry server took meanwhile:
//! - `immediate`: as soon as the quorum is back (keepalived's behaviour);
//! - `delay`: after the quorum has held without interruption for the delay;
//! - `manual`: when an operator asks (`lb-agent failback SERVICE`) and the quorum holds;
//! - `caught-up`: when the health checks say every recovered server has replicated what the
//!   sorry server holds (see `health::mysql`).
//!
//! A planned switchover (`lb-agent switchover`) moves a healthy service to its sorry server
//! on an operator's word: the gate only records it (`begin_switchover`, then `switch_now`
//! once `health::switchover` has fenced the writer and seen the sorry server catch up, or
//! `abort_switchover`); a service switched over stays on the sorry server whatever the
//! policy until the operator switches it back (`request_switch_back`).

use std::time::{Duration, Instant};

use crate::config::Failback;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// The real servers take the traffic.
    Pool,
    /// The sorry server does.
    Sorry,
}

#[derive(Debug, Clone)]
pub struct Gate {
    policy: Failback,
    delay: Duration,
    mode: Mode,
    /// Since when the quorum has held while on the sorry server (`delay`).
    quorum_since: Option<Instant>,
    /// An operator asked to fail back (`manual`), not yet carried out.
    requested: bool,
    /// Why the service is still on the sorry server, for status.
    waiting: Option<String>,
    /// Since when the quorum is lost while still in the pool (the sorry server drains).
    lost_at: Option<Instant>,
    /// A switchover under way (in the pool), since when.
    switching: Option<Instant>,
    /// The switchover is ready: the next step moves to the sorry server.
    switch_go: bool,
    /// On the sorry server by a switchover: stays there until switched back.
    switched: bool,
}

/// What the health checks say of a service now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Health {
    /// Real servers that pass their checks (and role), sorry server excluded.
    pub usable: u32,
    pub quorum: u32,
    /// For `caught-up`: every usable real server has replicated what the sorry server has.
    pub caught_up: bool,
    /// When the latest check of the sorry server that found its relay log drained started;
    /// `None` when the latest found it not drained.
    pub sorry_drained: Option<Instant>,
    /// The sorry server has a relay log to drain (it replicates, and is checked as MySQL).
    pub drain_needed: bool,
}

impl Health {
    /// Health with nothing to drain (a sorry server that replicates from nobody).
    pub fn new(usable: u32, quorum: u32, caught_up: bool) -> Health {
        Health {
            usable,
            quorum,
            caught_up,
            sorry_drained: None,
            drain_needed: false,
        }
    }
}

impl Gate {
    pub fn new(policy: Failback, delay: Duration) -> Gate {
        Gate {
            policy,
            delay,
            mode: Mode::Pool,
            quorum_since: None,
            requested: false,
            waiting: None,
            lost_at: None,
            switching: None,
            switch_go: false,
            switched: false,
        }
    }

    /// A gate that starts on the sorry server: the policy must be met before the real
    /// servers get the traffic (after a reboot, a writer must prove it has caught up).
    pub fn held(policy: Failback, delay: Duration) -> Gate {
        Gate {
            mode: Mode::Sorry,
            ..Gate::new(policy, delay)
        }
    }

    /// A gate that starts on the sorry server by a switchover another agent made (the
    /// shared decision says so): it stays there until switched back, as on that agent.
    pub fn switched_over(policy: Failback, delay: Duration) -> Gate {
        Gate {
            switched: true,
            ..Gate::held(policy, delay)
        }
    }

    pub fn policy(&self) -> Failback {
        self.policy
    }

    pub fn mode(&self) -> Mode {
        self.mode
    }

    /// Why the service waits on its sorry server; `None` when it does not.
    pub fn waiting(&self) -> Option<&str> {
        self.waiting.as_deref()
    }

    /// The quorum is lost and the writes wait for the sorry server to drain its relay log.
    pub fn draining(&self) -> bool {
        self.mode == Mode::Pool && self.lost_at.is_some()
    }

    /// When `step` should be called again without news (the end of a `delay`).
    pub fn poll_timeout(&self) -> Option<Instant> {
        match (self.mode, self.policy, self.quorum_since) {
            (Mode::Sorry, Failback::Delay, Some(t)) => Some(t + self.delay),
            _ => None,
        }
    }

    /// Since when a switchover is under way, if one is.
    pub fn switching(&self) -> Option<Instant> {
        self.switching
    }

    /// On the sorry server by a switchover (until switched back).
    pub fn switched(&self) -> bool {
        self.switched
    }

    /// `lb-agent switchover SERVICE`: from the pool, while it is not already moving.
    pub fn begin_switchover(&mut self, now: Instant) -> Result<(), String> {
        if self.mode == Mode::Sorry {
            return Err("the service is on its sorry server already".into());
        }
        if self.lost_at.is_some() {
            return Err("the service is failing over already".into());
        }
        if self.switching.is_some() {
            return Err("a switchover is under way".into());
        }
        self.switching = Some(now);
        Ok(())
    }

    /// The writer is fenced and the sorry server has all it committed: the next step moves.
    pub fn switch_now(&mut self) {
        if self.switching.is_some() {
            self.switch_go = true;
        }
    }

    /// The switchover failed (it ran out of time): the service stays in the pool.
    pub fn abort_switchover(&mut self) {
        self.switching = None;
        self.switch_go = false;
    }

    /// `lb-agent switchover SERVICE --to WRITER` on a service switched over: back to the
    /// real servers (through the graceful handover), whatever the policy.
    pub fn request_switch_back(&mut self, h: Health) -> Result<(), String> {
        if !self.switched {
            return Err("the service was not switched over to its sorry server".into());
        }
        self.request_back(h)
    }

    /// `lb-agent failback SERVICE`.
    pub fn request_failback(&mut self, h: Health) -> Result<(), String> {
        if self.mode == Mode::Pool {
            return Err("the service is not on its sorry server".into());
        }
        self.request_back(h)
    }

    /// The way back from the sorry server, asked for by an operator: carried out at the next
    /// step, if the quorum still holds then.
    fn request_back(&mut self, h: Health) -> Result<(), String> {
        if h.usable < h.quorum {
            return Err(format!(
                "only {} of the {} real server(s) the quorum needs pass their checks",
                h.usable, h.quorum
            ));
        }
        self.requested = true;
        Ok(())
    }

    /// Applies the current health; returns the mode (changed or not).
    pub fn step(&mut self, now: Instant, h: Health) -> Mode {
        let quorum = h.usable >= h.quorum;
        match self.mode {
            Mode::Pool if self.switch_go => {
                self.mode = Mode::Sorry;
                self.switched = true;
                self.abort_switchover();
                self.lost_at = None;
                self.quorum_since = None;
                self.requested = false;
            }
            Mode::Pool if !quorum => {
                // A failure while switching over: a failover (the sorry server drains first).
                self.switching = None;
                let lost = *self.lost_at.get_or_insert(now);
                if !h.drain_needed || h.sorry_drained.is_some_and(|t| t > lost) {
                    self.mode = Mode::Sorry;
                    self.lost_at = None;
                    self.quorum_since = None;
                    self.requested = false;
                }
            }
            Mode::Pool => self.lost_at = None,
            Mode::Sorry if !quorum => {
                self.quorum_since = None;
                self.requested = false;
            }
            Mode::Sorry => {
                let since = *self.quorum_since.get_or_insert(now);
                let back = match self.policy {
                    _ if self.switched => self.requested,
                    Failback::Immediate => true,
                    Failback::Delay => now.duration_since(since) >= self.delay,
                    Failback::Manual => self.requested,
                    Failback::CaughtUp => h.caught_up,
                };
                if back {
                    self.mode = Mode::Pool;
                    self.quorum_since = None;
                    self.requested = false;
                    self.switched = false;
                }
            }
        }
        self.waiting = match (self.mode, quorum) {
            (Mode::Pool, _) if self.draining() => Some(
                "writes wait: the sorry server is applying what it received (relay log)".into(),
            ),
            (Mode::Pool, _) if self.switching.is_some() => Some(
                "switching over: the writer fenced, the writes wait until the sorry server has all it committed".into(),
            ),
            (Mode::Pool, _) => None,
            (Mode::Sorry, _) if self.switched => Some(
                "switched over by an operator: back with `lb-agent switchover SERVICE --to WRITER`"
                    .into(),
            ),
            (Mode::Sorry, false) => Some(format!(
                "{} of {} real server(s) usable",
                h.usable, h.quorum
            )),
            (Mode::Sorry, true) => Some(match self.policy {
                // Never waits with the quorum met; a string keeps `step` total anyway.
                Failback::Immediate => "failing back".into(),
                Failback::Delay => format!(
                    "failback after {:?} of health ({:?} so far)",
                    self.delay,
                    self.quorum_since
                        .map(|s| now.duration_since(s))
                        .unwrap_or_default()
                ),
                Failback::Manual => "waiting for `lb-agent failback`".into(),
                Failback::CaughtUp => {
                    "waiting for the recovered server(s) to replicate the sorry server's writes"
                        .into()
                }
            }),
        };
        self.mode
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn h(usable: u32, caught_up: bool) -> Health {
        Health::new(usable, 1, caught_up)
    }

    /// Runs (seconds since start, usable, caught up) steps; returns the modes as a string.
    fn run(g: &mut Gate, steps: &[(u64, u32, bool)]) -> String {
        let t0 = Instant::now();
        steps
            .iter()
            .map(
                |&(t, u, c)| match g.step(t0 + Duration::from_secs(t), h(u, c)) {
                    Mode::Pool => 'P',
                    Mode::Sorry => 'S',
                },
            )
            .collect()
    }

    #[test]
    fn policies() {
        let d = Duration::from_secs(10);
        let cases = [
            (
                Failback::Immediate,
                vec![(0, 1, false), (1, 0, false), (2, 1, false)],
                "PSP",
            ),
            // Delay: the quorum must hold 10 s without interruption; a flap restarts it.
            (
                Failback::Delay,
                vec![
                    (0, 0, false),
                    (1, 1, false),
                    (5, 0, false),
                    (6, 1, false),
                    (15, 1, false),
                    (16, 1, false),
                ],
                "SSSSSP",
            ),
            // Caught-up: health alone is not enough.
            (
                Failback::CaughtUp,
                vec![(0, 0, false), (1, 1, false), (2, 1, false), (3, 1, true)],
                "SSSP",
            ),
            // Manual without a request never comes back.
            (
                Failback::Manual,
                vec![(0, 0, false), (1, 1, true), (99, 1, true)],
                "SSS",
            ),
        ];
        for (policy, steps, want) in cases {
            let mut g = Gate::new(policy, d);
            assert_eq!(run(&mut g, &steps), want, "{policy:?}");
        }
    }

    /// A switchover: recorded, moved on `switch_now`, kept on the sorry server whatever the
    /// policy (caught-up would come straight back) until switched back; a failure of the
    /// writer while switching is a failover; an abort leaves it in the pool.
    #[test]
    fn a_switchover_holds_the_sorry_server_until_switched_back() {
        let now = Instant::now();
        let mut g = Gate::new(Failback::CaughtUp, Duration::ZERO);
        assert!(g.request_switch_back(h(1, true)).is_err(), "not switched");
        g.begin_switchover(now).unwrap();
        assert!(g.begin_switchover(now).is_err(), "one at a time");
        assert_eq!(g.step(now, h(1, true)), Mode::Pool, "not ready yet");
        assert!(g.waiting().unwrap().contains("switching over"));
        g.switch_now();
        assert_eq!(g.step(now, h(1, true)), Mode::Sorry);
        assert!(g.switched() && g.switching().is_none());
        for _ in 0..3 {
            assert_eq!(
                g.step(now, h(1, true)),
                Mode::Sorry,
                "caught up, still held"
            );
        }
        assert!(g.waiting().unwrap().contains("switched over"));
        assert!(g.begin_switchover(now).is_err(), "already there");
        assert!(
            g.request_switch_back(h(0, true)).is_err(),
            "the writer is down"
        );
        g.request_switch_back(h(1, true)).unwrap();
        assert_eq!(g.step(now, h(1, true)), Mode::Pool);
        assert!(!g.switched());
        // Aborted: stays in the pool, and may be asked again.
        g.begin_switchover(now).unwrap();
        g.abort_switchover();
        assert_eq!(g.step(now, h(1, true)), Mode::Pool);
        assert_eq!(g.waiting(), None);
        // The writer fails while switching: an ordinary failover, not held afterwards.
        g.begin_switchover(now).unwrap();
        assert_eq!(g.step(now, h(0, false)), Mode::Sorry);
        assert!(!g.switched() && g.switching().is_none());
        assert_eq!(g.step(now, h(1, true)), Mode::Pool, "caught-up fails back");
    }

    /// An agent that takes over the decision of a switched-over service (VRRP moved) holds
    /// it as the switching agent did: its caught-up policy does not hand the writes back.
    #[test]
    fn a_gate_inherited_from_a_switchover_holds_until_switched_back() {
        let now = Instant::now();
        let mut g = Gate::switched_over(Failback::CaughtUp, Duration::ZERO);
        for _ in 0..3 {
            assert_eq!(
                g.step(now, h(1, true)),
                Mode::Sorry,
                "caught up, still held"
            );
        }
        assert!(g.switched() && g.waiting().unwrap().contains("switched over"));
        g.request_switch_back(h(1, true)).unwrap();
        assert_eq!(g.step(now, h(1, true)), Mode::Pool);
        assert!(!g.switched());
    }

    #[test]
    fn manual_failback_needs_the_quorum_and_is_consumed() {
        let now = Instant::now();
        let mut g = Gate::new(Failback::Manual, Duration::ZERO);
        assert!(
            g.request_failback(h(1, true)).is_err(),
            "not on the sorry server"
        );
        g.step(now, h(0, false));
        assert!(g.request_failback(h(0, false)).is_err(), "no quorum");
        assert_eq!(g.waiting(), Some("0 of 1 real server(s) usable"));
        g.step(now, h(1, false));
        assert_eq!(g.waiting(), Some("waiting for `lb-agent failback`"));
        g.request_failback(h(1, false)).unwrap();
        assert_eq!(g.step(now, h(1, false)), Mode::Pool);
        assert_eq!(g.waiting(), None);
        // A later outage needs a new request.
        g.step(now, h(0, false));
        assert_eq!(g.step(now, h(1, false)), Mode::Sorry);
    }

    #[test]
    fn a_request_is_dropped_when_the_quorum_fails_before_it_is_carried_out() {
        let now = Instant::now();
        let mut g = Gate::new(Failback::Manual, Duration::ZERO);
        g.step(now, h(0, false));
        g.step(now, h(1, false));
        g.request_failback(h(1, false)).unwrap();
        g.step(now, h(0, false));
        assert_eq!(g.step(now, h(1, false)), Mode::Sorry);
    }

    #[test]
    fn delay_wakes_at_the_end_of_the_delay() {
        let t0 = Instant::now();
        let mut g = Gate::new(Failback::Delay, Duration::from_secs(3));
        g.step(t0, h(0, false));
        assert_eq!(g.poll_timeout(), None);
        g.step(t0 + Duration::from_secs(1), h(1, false));
        assert_eq!(g.poll_timeout(), Some(t0 + Duration::from_secs(4)));
        assert_eq!(g.step(t0 + Duration::from_secs(4), h(1, false)), Mode::Pool);
        assert_eq!(g.poll_timeout(), None);
    }

    #[test]
    fn the_sorry_server_takes_the_writes_once_a_later_check_finds_it_drained() {
        let t0 = Instant::now();
        let at = |ms| t0 + Duration::from_millis(ms);
        let drain = |usable, drained: Option<u64>| Health {
            sorry_drained: drained.map(at),
            drain_needed: true,
            ..Health::new(usable, 1, false)
        };
        let mut g = Gate::new(Failback::CaughtUp, Duration::ZERO);
        assert_eq!(g.step(at(0), drain(1, Some(0))), Mode::Pool);
        assert!(!g.draining());
        // The writer fails at 100: the last drained check (at 0) read before that.
        assert_eq!(g.step(at(100), drain(0, Some(0))), Mode::Pool);
        assert!(g.draining());
        assert!(g.waiting().unwrap().contains("relay log"));
        // A check at 300 finds received transactions not applied yet.
        assert_eq!(g.step(at(310), drain(0, None)), Mode::Pool);
        assert!(g.draining());
        // One started at 600 finds it drained: now the sorry server takes the writes.
        assert_eq!(g.step(at(610), drain(0, Some(600))), Mode::Sorry);
        assert!(!g.draining());
        // The writer returning while the sorry server drains cancels the wait.
        let mut g = Gate::new(Failback::CaughtUp, Duration::ZERO);
        g.step(at(0), drain(0, None));
        assert!(g.draining());
        assert_eq!(g.step(at(50), drain(1, None)), Mode::Pool);
        assert!(!g.draining());
        assert_eq!(g.waiting(), None);
    }
}
