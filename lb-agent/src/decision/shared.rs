//! The writer decision shared by the agents, without I/O.
//!
//! Per service with a sorry server, one `Decision`: whether its writes go to the sorry
//! server, with an `epoch` (a fencing token) that only grows. It is made in one place — the
//! agent that is VRRP master for the service's address, the *leader* — and every other agent
//! follows it, in its data plane too (a backup that receives VIP frames forwards them by the
//! leader's decision, not by its own checks). The decision moves with the master role: a new
//! leader continues the one it followed ("writes on the sorry server since epoch N") and its
//! failback gate starts from it, instead of from its own local view — the agent that never
//! saw its writer fail must not send the writes back before the writer has caught up.
//!
//! The rules, in order:
//! 1. A higher epoch is newer, whoever sent it: a leader that hears a higher epoch from a
//!    peer (that peer led more recently, while this one was cut off or restarting) takes it.
//! 2. Equal epochs that disagree (two leaders at once, each deciding): the sorry server
//!    wins, and the epoch moves on — the writer must then prove it has caught up, so no
//!    transaction the sorry server took is lost.
//! 3. A leader decides only when *synced*: it has heard a peer since it became leader, or no
//!    peer for `SILENCE` (the peer is gone). Until then it keeps what it has.
//! 4. A follower follows the leader's messages only (an agent that claims to lead).
//! 5. The data plane follows the decisions only while they are *current*: a peer was heard
//!    within `SILENCE` (for a leader: before it started leading, until it is synced), or
//!    this agent leads synced. Otherwise the writes wait: an agent cut off for longer (a
//!    link down, a pair channel that fails, a restart) cannot know whether the peer moved
//!    the writes meanwhile, and frames it forwarded by its old decision would make a second
//!    writer — the returning agent of the link flap would send writes to a server that has
//!    not yet got the sorry server's.
//!
//! Every agent sends its view every `PERIOD`, and at once when it changes, becomes leader,
//! or hears a peer that is behind.

use std::{
    collections::BTreeMap,
    time::{Duration, Instant},
};

/// How often every agent sends its view.
pub const PERIOD: Duration = Duration::from_secs(1);
/// A peer unheard for this long is gone (three periods).
pub const SILENCE: Duration = Duration::from_secs(3);

/// One service's decision.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
pub struct Decision {
    /// Grows with every change, across leaders; 0 = nothing decided yet.
    pub epoch: u64,
    /// The writes go to the sorry server.
    pub sorry: bool,
    /// ... because an operator switched the service over (`lb-agent switchover`): it stays
    /// there until switched back, whatever its failback policy — also on an agent that
    /// becomes leader meanwhile. Left out of the wire when false (older agents' views).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub switched: bool,
}

/// Where a leader's checks want a service's writes: what it proposes (a plain `bool` is
/// "on the sorry server or not", not switched over).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Placement {
    pub sorry: bool,
    /// On the sorry server by an operator's switchover (meaningful with `sorry` only).
    pub switched: bool,
}

impl From<bool> for Placement {
    fn from(sorry: bool) -> Placement {
        Placement {
            sorry,
            switched: false,
        }
    }
}

/// What one agent tells the others.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct View {
    /// The sender (its `router_id`).
    pub from: String,
    /// It leads (is VRRP master for the services' addresses).
    pub leader: bool,
    /// By service name.
    pub decisions: BTreeMap<String, Decision>,
    /// The operators' maintenance words this agent holds (see `maintenance`), carried
    /// here for the daemon; absent from older agents' views.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub maintenance: super::maintenance::MarkSet,
}

/// What the daemon must do after an event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Effect {
    /// A service's decision changed: apply it to the data plane, and (when this agent leads
    /// or will lead) start the service's failback gate from it.
    Follow { service: String, decision: Decision },
}

#[derive(Debug)]
pub struct Shared {
    me: String,
    decisions: BTreeMap<String, Decision>,
    leader: bool,
    /// When this agent last became leader.
    leading_since: Option<Instant>,
    /// When a peer was last heard.
    peer_heard: Option<Instant>,
    /// Send our view at the next `poll_send`.
    send_now: bool,
    last_sent: Option<Instant>,
    started: Instant,
}

impl Shared {
    pub fn new(me: impl Into<String>, now: Instant) -> Shared {
        Shared {
            started: now,
            me: me.into(),
            decisions: BTreeMap::new(),
            leader: false,
            leading_since: None,
            peer_heard: None,
            send_now: true,
            last_sent: None,
        }
    }

    pub fn decision(&self, service: &str) -> Option<Decision> {
        self.decisions.get(service).copied()
    }

    pub fn is_leader(&self) -> bool {
        self.leader
    }

    /// This agent knows where the writes are: it has heard a peer, or waited `SILENCE` since
    /// it started. Until then a service without a decision holds its writes (an agent that
    /// starts while its peer has the decision must not act on its own view meanwhile).
    pub fn settled(&self, now: Instant) -> bool {
        self.peer_heard.is_some() || now.duration_since(self.started) >= SILENCE
    }

    /// Rule 3: the leader may decide.
    pub fn synced(&self, now: Instant) -> bool {
        let Some(since) = self.leading_since else {
            return false;
        };
        self.peer_heard.is_some_and(|h| h >= since) || now.duration_since(since) >= SILENCE
    }

    /// Rule 5: the data plane may follow the decisions this agent holds.
    pub fn current(&self, now: Instant) -> bool {
        let heard_within = |t: Instant| {
            self.peer_heard
                .is_some_and(|h| t.saturating_duration_since(h) < SILENCE)
        };
        match self.leading_since {
            Some(since) if self.leader => self.synced(now) || heard_within(since),
            _ => heard_within(now),
        }
    }

    /// VRRP made this agent leader, or took it away. A new leader keeps the decisions it
    /// followed (they are its starting point) and says so at once.
    pub fn set_leader(&mut self, now: Instant, leader: bool) {
        if leader == self.leader {
            return;
        }
        self.leader = leader;
        self.leading_since = leader.then_some(now);
        self.send_now = true;
    }

    /// The leader's checks say where `service`'s writes should go. Returns the effect when
    /// that makes a new decision (a new epoch); nothing when not leading, not synced, or
    /// unchanged.
    /// A change of `switched` alone makes none: it changes only with a move (a switchover
    /// moves the writes, switching back moves them back).
    pub fn propose(
        &mut self,
        now: Instant,
        service: &str,
        want: impl Into<Placement>,
    ) -> Option<Effect> {
        let want = want.into();
        if !self.leader || !self.synced(now) {
            return None;
        }
        let current = self.decisions.get(service).copied().unwrap_or_default();
        if current.epoch != 0 && current.sorry == want.sorry {
            return None;
        }
        let next = Decision {
            epoch: self.max_epoch() + 1,
            sorry: want.sorry,
            switched: want.sorry && want.switched,
        };
        Some(self.set(service, next))
    }

    /// A peer's view arrived (authenticated and decoded by the caller).
    pub fn on_view(&mut self, now: Instant, view: &View) -> Vec<Effect> {
        if view.from == self.me {
            return vec![];
        }
        self.peer_heard = Some(now);
        let mut effects = Vec::new();
        for (service, theirs) in &view.decisions {
            let ours = self.decisions.get(service).copied().unwrap_or_default();
            let take = if theirs.epoch > ours.epoch {
                // Rule 1 (and rule 4: a follower takes the leader's; a leader takes a higher
                // epoch from anyone).
                view.leader || self.leader || ours.epoch == 0
            } else {
                false
            };
            if take {
                effects.push(self.set(service, *theirs));
            } else if theirs.epoch == ours.epoch && theirs.sorry != ours.sorry && ours.epoch != 0 {
                // Rule 2: two leaders decided differently under one epoch.
                let next = Decision {
                    epoch: self.max_epoch().max(theirs.epoch) + 1,
                    sorry: true,
                    switched: if theirs.sorry {
                        theirs.switched
                    } else {
                        ours.switched
                    },
                };
                effects.push(self.set(service, next));
            } else if theirs.epoch < ours.epoch {
                // The peer is behind: tell it now, not at the next period.
                self.send_now = true;
            }
        }
        // A peer that knows nothing of a decision (it just started) hears it now too.
        if self
            .decisions
            .keys()
            .any(|k| !view.decisions.contains_key(k))
        {
            self.send_now = true;
        }
        effects
    }

    /// Our view, when it is time to send it (`PERIOD`, or sooner after a change).
    pub fn poll_send(&mut self, now: Instant) -> Option<View> {
        let due = self.send_now
            || self
                .last_sent
                .is_none_or(|t| now.duration_since(t) >= PERIOD);
        if !due {
            return None;
        }
        self.send_now = false;
        self.last_sent = Some(now);
        Some(View {
            from: self.me.clone(),
            leader: self.leader,
            decisions: self.decisions.clone(),
            maintenance: Default::default(),
        })
    }

    /// Something else in the view changed (a maintenance word): send it at once.
    pub fn send_soon(&mut self) {
        self.send_now = true;
    }

    /// When `poll_send` next has something (a time already past when it has now).
    pub fn next_send(&self) -> Instant {
        match (self.send_now, self.last_sent) {
            (false, Some(t)) => t + PERIOD,
            (_, last) => last.unwrap_or(self.started),
        }
    }

    fn max_epoch(&self) -> u64 {
        self.decisions.values().map(|d| d.epoch).max().unwrap_or(0)
    }

    fn set(&mut self, service: &str, d: Decision) -> Effect {
        self.decisions.insert(service.to_string(), d);
        self.send_now = true;
        Effect::Follow {
            service: service.to_string(),
            decision: d,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const W: &str = "mysql-write";

    /// Two agents with injected time; views are delivered unless `cut`.
    struct Pair {
        a: Shared,
        b: Shared,
        t0: Instant,
        now: Instant,
        cut: bool,
    }

    impl Pair {
        fn new() -> Pair {
            let t0 = Instant::now();
            Pair {
                a: Shared::new("db1", t0),
                b: Shared::new("db2", t0),
                t0,
                now: t0,
                cut: false,
            }
        }

        /// db1 leads and has decided, epoch 1, that the real servers have the writes; db2
        /// has heard it.
        fn led_by_db1() -> Pair {
            let mut p = Pair::new();
            p.a.set_leader(p.now, true);
            p.exchange();
            p.a.propose(p.now, W, false);
            p.exchange();
            p
        }

        fn at(&mut self, ms: u64) {
            self.now = self.t0 + Duration::from_millis(ms);
        }

        /// Each agent sends what is due; the other receives it (unless cut).
        fn exchange(&mut self) -> (Vec<Effect>, Vec<Effect>) {
            let now = self.now;
            let (mut ea, mut eb) = (vec![], vec![]);
            for _ in 0..4 {
                let va = self.a.poll_send(now);
                let vb = self.b.poll_send(now);
                if self.cut {
                    break;
                }
                if let Some(v) = va {
                    eb.extend(self.b.on_view(now, &v));
                }
                if let Some(v) = vb {
                    ea.extend(self.a.on_view(now, &v));
                }
            }
            (ea, eb)
        }
    }

    fn sorry(epoch: u64, sorry: bool) -> Decision {
        Decision {
            epoch,
            sorry,
            switched: false,
        }
    }

    #[test]
    fn the_leader_decides_and_the_follower_follows() {
        let mut p = Pair::new();
        p.a.set_leader(p.now, true);
        p.exchange();
        assert!(p.a.synced(p.now), "heard the peer since leading");
        assert!(p.a.propose(p.now, W, false).is_some());
        let (_, eb) = p.exchange();
        assert_eq!(
            eb,
            vec![Effect::Follow {
                service: W.into(),
                decision: sorry(1, false)
            }]
        );
        // The writer fails: the leader moves the writes to the sorry server, epoch 2.
        p.at(500);
        p.a.propose(p.now, W, true).unwrap();
        p.exchange();
        assert_eq!(p.b.decision(W), Some(sorry(2, true)));
        // A follower's own opinion changes nothing.
        assert_eq!(p.b.propose(p.now, W, false), None);
        assert_eq!(p.b.decision(W), Some(sorry(2, true)));
    }

    /// A switchover is part of the decision: the follower (and so a leader it becomes)
    /// holds the writes on the sorry server as switched over, not as a failure its failback
    /// policy would end; switching back ends it. A view without the field (an older agent)
    /// reads as not switched, and a false one is not on the wire.
    #[test]
    fn a_switchover_is_carried_to_the_next_leader() {
        let mut p = Pair::led_by_db1();
        p.at(500);
        let want = Placement {
            sorry: true,
            switched: true,
        };
        p.a.propose(p.now, W, want).unwrap();
        let (_, eb) = p.exchange();
        let switched = Decision {
            epoch: 2,
            sorry: true,
            switched: true,
        };
        assert_eq!(
            eb,
            vec![Effect::Follow {
                service: W.into(),
                decision: switched
            }]
        );
        // db1 goes away; db2 leads from the switched decision and proposes what its gate
        // (inherited from it) holds: nothing changes.
        p.at(1_000);
        p.a.set_leader(p.now, false);
        p.b.set_leader(p.now, true);
        p.exchange();
        assert_eq!(p.b.propose(p.now, W, want), None);
        assert_eq!(p.b.decision(W), Some(switched));
        // Switched back by the operator on db2: the writes return, not switched any more.
        p.at(2_000);
        assert!(p.b.propose(p.now, W, false).is_some());
        p.exchange();
        assert_eq!(p.a.decision(W), Some(sorry(3, false)));
        // The wire: `switched` only when true; absent reads as false.
        let json = serde_json::to_string(&switched).unwrap();
        assert_eq!(json, r#"{"epoch":2,"sorry":true,"switched":true}"#);
        assert_eq!(
            serde_json::to_string(&sorry(3, true)).unwrap(),
            r#"{"epoch":3,"sorry":true}"#
        );
        let old: Decision = serde_json::from_str(r#"{"epoch":3,"sorry":true}"#).unwrap();
        assert_eq!(old, sorry(3, true));
    }

    /// The link flap of the issue: the leader (db1) is cut off, db2 takes over, sends the
    /// writes to its sorry server; when db1 returns and leads again it starts from db2's
    /// decision — writes on the sorry server — not from its own (its writer never failed).
    #[test]
    fn a_returning_leader_inherits_the_sorry_period() {
        let mut p = Pair::led_by_db1();
        // db1's link goes down (its VRRP instance faults): db2 becomes leader and, once
        // synced (db1 silent for SILENCE), decides for the sorry server.
        p.cut = true;
        p.at(1_000);
        p.a.set_leader(p.now, false);
        p.b.set_leader(p.now, true);
        assert_eq!(p.b.propose(p.now, W, true), None, "not synced yet");
        p.at(1_000 + SILENCE.as_millis() as u64);
        assert!(p.b.propose(p.now, W, true).is_some());
        assert_eq!(p.b.decision(W), Some(sorry(2, true)));
        // db1 never saw its writer fail; meanwhile it still holds epoch 1.
        assert_eq!(p.a.decision(W), Some(sorry(1, false)));
        // Cut off for longer than SILENCE, db1 cannot know that: its data plane must not
        // follow epoch 1 any more (rule 5); db2, leading synced, may.
        assert!(!p.a.current(p.now));
        assert!(p.b.current(p.now));
        // The link returns; db1 preempts (VRRP) — it may be leader before or after the
        // first exchange: both orders end on db2's decision.
        p.at(6_000);
        p.cut = false;
        p.a.set_leader(p.now, true);
        p.b.set_leader(p.now, false);
        assert!(
            !p.a.current(p.now),
            "a leader cut off before it led: not current"
        );
        assert_eq!(
            p.a.propose(p.now, W, false),
            None,
            "db1 must hear db2 first"
        );
        let (ea, _) = p.exchange();
        assert_eq!(
            ea,
            vec![Effect::Follow {
                service: W.into(),
                decision: sorry(2, true)
            }]
        );
        // Only now may db1 decide, and moving the writes back is a new epoch.
        assert!(p.a.current(p.now), "db1 heard db2 since leading");
        assert_eq!(
            p.a.propose(p.now, W, false),
            Some(Effect::Follow {
                service: W.into(),
                decision: sorry(3, false)
            })
        );
        p.exchange();
        assert_eq!(p.b.decision(W), Some(sorry(3, false)));
    }

    /// Two leaders at once (adverts lost both ways), each deciding under the same epoch:
    /// when they hear each other the sorry server wins and the epoch moves on.
    #[test]
    fn two_leaders_that_disagree_settle_on_the_sorry_server() {
        let mut p = Pair::led_by_db1();
        p.cut = true;
        p.at(4_000);
        p.b.set_leader(p.now, true);
        p.at(8_000);
        p.b.propose(p.now, W, true).unwrap();
        p.a.propose(p.now, W, false);
        assert_eq!(p.a.decision(W), Some(sorry(1, false)));
        assert_eq!(p.b.decision(W), Some(sorry(2, true)));
        // db1 (epoch 1) hears db2's epoch 2: rule 1, it takes it.
        p.cut = false;
        p.at(9_000);
        p.exchange();
        assert_eq!(p.a.decision(W), Some(sorry(2, true)));
        assert_eq!(p.b.decision(W), Some(sorry(2, true)));
        // The same under equal epochs.
        let mut x = Shared::new("x", p.now);
        x.set_leader(p.now, true);
        x.on_view(p.now, &view("y", true, sorry(5, false)));
        let effects = x.on_view(p.now, &view("y", true, sorry(5, true)));
        assert_eq!(
            effects,
            vec![Effect::Follow {
                service: W.into(),
                decision: sorry(6, true)
            }]
        );
    }

    fn view(from: &str, leader: bool, d: Decision) -> View {
        View {
            from: from.into(),
            leader,
            decisions: [(W.to_string(), d)].into_iter().collect(),
            maintenance: Default::default(),
        }
    }

    /// A restarted agent knows nothing (epoch 0): it takes what it hears, and as leader it
    /// decides nothing until synced; a stale view (lower epoch) is answered at once.
    #[test]
    fn restarts_and_stale_views() {
        let t = Instant::now();
        let mut fresh = Shared::new("db1", t);
        assert!(!fresh.settled(t));
        fresh.set_leader(t, true);
        assert_eq!(fresh.propose(t, W, false), None, "not synced");
        fresh.on_view(t, &view("db2", false, sorry(7, true)));
        assert_eq!(fresh.decision(W), Some(sorry(7, true)));
        assert!(fresh.synced(t) && fresh.settled(t));
        fresh.poll_send(t);
        assert!(fresh.poll_send(t).is_none());
        // A peer that knows nothing (restarted) gets our view now, and so does one behind.
        fresh.on_view(
            t,
            &View {
                from: "db2".into(),
                leader: false,
                decisions: BTreeMap::new(),
                maintenance: Default::default(),
            },
        );
        assert!(fresh.poll_send(t).is_some());
        fresh.on_view(t, &view("db2", false, sorry(3, false)));
        assert_eq!(fresh.decision(W), Some(sorry(7, true)));
        assert!(fresh.poll_send(t).is_some());
        // Our own messages looped back are ignored; a follower ignores a non-leader's newer
        // epoch unless it knows nothing.
        let mut f = Shared::new("db2", t);
        f.on_view(t, &view("db1", true, sorry(4, false)));
        assert!(f.on_view(t, &view("db3", false, sorry(9, true))).is_empty());
        assert_eq!(f.decision(W), Some(sorry(4, false)));
        assert!(f.on_view(t, &view("db2", true, sorry(99, true))).is_empty());
    }

    #[test]
    fn views_go_out_every_period_and_at_once_after_a_change() {
        let t = Instant::now();
        let mut s = Shared::new("db1", t);
        assert!(s.settled(t + SILENCE), "alone: settled after SILENCE");
        assert!(s.poll_send(t).is_some(), "at start");
        assert!(s.poll_send(t + Duration::from_millis(500)).is_none());
        assert_eq!(s.next_send(), t + PERIOD);
        assert!(s.poll_send(t + PERIOD).is_some());
        s.set_leader(t + PERIOD, true);
        assert!(s.poll_send(t + PERIOD).is_some(), "on becoming leader");
    }

    /// Rule 5 in a clean handover: the new leader heard the old one just before it took
    /// over, so its decisions stay current until it is synced — no moment of held writes.
    #[test]
    fn a_clean_handover_keeps_the_decisions_current() {
        let mut p = Pair::led_by_db1();
        assert!(p.a.current(p.now) && p.b.current(p.now));
        // db1 resigns and goes quiet; db2 leads 300 ms after it last heard db1.
        p.a.set_leader(p.now, false);
        p.exchange();
        p.cut = true;
        p.at(300);
        p.b.set_leader(p.now, true);
        for ms in [300, 2_000, 3_100, 3_400, 10_000] {
            p.at(ms);
            assert!(p.b.current(p.now), "at {ms} ms");
        }
        // A follower that stops hearing its leader: current for SILENCE, then not.
        let mut q = Pair::new();
        q.a.set_leader(q.now, true);
        q.exchange();
        q.cut = true;
        q.at(2_900);
        assert!(q.b.current(q.now));
        q.at(3_000);
        assert!(!q.b.current(q.now));
    }
}
