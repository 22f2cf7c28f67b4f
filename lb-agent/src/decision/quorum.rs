//! The writer decision under a lease in etcd (`[quorum]`, DESIGN §7 I4), without I/O.
//!
//! Two hosts cannot tell "the other is dead" from "I cannot reach it"; a third vote can.
//! Patroni's model, for the write VIP: the decision of each service is an etcd key, written
//! only by the agent holding the *leader key* (under its lease) with a compare-and-swap, and
//! every agent's data plane follows what is committed — nothing else.
//!
//! The rules:
//! 1. **Current**: an agent's decisions are current while its last successful round with
//!    etcd (a lease renewal, then linearizable reads) was *sent* less than `fence_after` (two
//!    thirds of the TTL) ago. Not current, its data plane holds the writes of every shared
//!    service and its own server, if it had the writes, is fenced (`read_only`, clients
//!    killed) — all before its lease can expire in etcd, which counts the TTL from a moment
//!    after the send. Local time is monotonic; the lease runs on etcd's clock, so a jump of
//!    a host's wall clock shortens nothing.
//! 2. **Who decides**: any agent with a live lease takes the leader key when nobody holds it
//!    (a create-if-absent transaction), and keeps it while it renews its lease. Not the VRRP
//!    master: in a partition both hosts can be VRRP master, and the one that can reach the
//!    majority must be able to decide.
//! 3. **Two steps per change**: a new decision is first committed *settling* (every data
//!    plane holds the service's writes) under a new epoch; every agent acknowledges the epoch
//!    (its key under `agents/`, written once its data plane holds) and only when all agents
//!    registered have — or their keys vanished with their expired leases — does the leader
//!    commit it *settled*, and the new target takes writes. An agent that has not seen the
//!    change (cut off, stalled) is out of the way by then: it acknowledged, or its lease ran
//!    out, and it fenced itself before that. So no moment has two servers taking writes, and
//!    a new leader waits out the old one's TTL before anything moves.
//! 4. **Epochs only grow**: a new epoch is one more than any this agent has seen — committed,
//!    its own, or acknowledged by another agent. A committed decision below that (etcd
//!    restarted with its data lost) is stale: nobody follows it, and the leader commits its
//!    decision again above every epoch known.
//! 5. **One outage, one fence**: an outage of etcd itself (its leader killed, a re-election)
//!    makes every agent non-current at once, so the writer's own agent fences it (rule 1)
//!    while the leader is also cut off. When the leader is current again, a writer that
//!    reads read-only is most likely that fence, lifted by its agent as soon as it is current
//!    again too: for `lift_grace` after regaining, the leader does not move the writes away
//!    from a writer for being read-only (the daemon's `no_move_to_sorry`). A writer down, or
//!    read-only for longer (its agent still cut off, an operator), moves as before.

use std::{
    collections::BTreeMap,
    time::{Duration, Instant},
};

pub use super::shared::{Decision, Placement};

/// A decision as etcd holds it.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Stored {
    pub epoch: u64,
    pub sorry: bool,
    /// Step one of a change (rule 3): every data plane holds the writes.
    pub settling: bool,
    /// The agent that wrote it.
    pub by: String,
    /// On the sorry server by an operator's switchover (see `shared::Decision`); absent in
    /// what older agents wrote.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub switched: bool,
}

impl Stored {
    pub fn decision(&self) -> Decision {
        Decision {
            epoch: self.epoch,
            sorry: self.sorry,
            switched: self.switched,
        }
    }
}

/// A committed decision and its key's revision (for the compare-and-swap).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Committed {
    pub stored: Stored,
    pub mod_revision: i64,
}

/// What one round with etcd saw.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Observation {
    /// The holder of the leader key.
    pub leader: Option<String>,
    /// By service.
    pub decisions: BTreeMap<String, Committed>,
    /// Every agent registered (its lease alive): the epochs it acknowledged, by service.
    pub agents: BTreeMap<String, BTreeMap<String, u64>>,
    /// Every agent's maintenance words (see `decision::maintenance`), under its lease.
    pub maintenance: BTreeMap<String, super::maintenance::MarkSet>,
}

/// A round's outcome: the observation, with the moment its lease renewal was sent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Round {
    Seen { sent: Instant, seen: Observation },
    Failed(String),
}

/// A write for the leader to make: `decision` replaces the key at `mod_revision` (0: the key
/// must not exist), if this agent still holds the leader key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Proposal {
    pub service: String,
    pub stored: Stored,
    pub mod_revision: i64,
}

/// What the daemon must do after a round.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Effect {
    /// The committed decision of a service moved (a new epoch): the failback gate starts
    /// from it, as after a `shared::Effect::Follow`.
    Follow { service: String, decision: Decision },
}

#[derive(Debug)]
pub struct Quorum {
    me: String,
    ttl: Duration,
    /// When the last successful round was sent.
    renewed: Option<Instant>,
    /// When the first good round of the current run of currency was sent (rule 5).
    current_since: Option<Instant>,
    seen: Observation,
    /// The highest epoch seen per service: committed, proposed or acknowledged by anyone.
    highest: BTreeMap<String, u64>,
    /// The decision each service follows (its last committed one at or above `highest`).
    following: BTreeMap<String, Stored>,
    /// Proposals sent and not yet seen committed, with when.
    pending: BTreeMap<String, (Stored, Instant)>,
    /// Why the last round failed (cleared by a good one).
    pub last_error: Option<String>,
}

impl Quorum {
    pub fn new(me: impl Into<String>, ttl: Duration) -> Quorum {
        Quorum {
            me: me.into(),
            ttl,
            renewed: None,
            current_since: None,
            seen: Observation::default(),
            highest: BTreeMap::new(),
            following: BTreeMap::new(),
            pending: BTreeMap::new(),
            last_error: None,
        }
    }

    pub fn me(&self) -> &str {
        &self.me
    }

    /// Rule 1: how long after its last good round an agent stops following.
    pub fn fence_after(&self) -> Duration {
        self.ttl * 2 / 3
    }

    /// How often the I/O side runs a round (three per TTL: one lost round changes nothing).
    pub fn period(&self) -> Duration {
        self.ttl / 3
    }

    /// Rule 1.
    pub fn current(&self, now: Instant) -> bool {
        self.current_until().is_some_and(|t| now < t)
    }

    /// Until when the decisions are current (the data plane's lease ends there too).
    pub fn current_until(&self) -> Option<Instant> {
        Some(self.renewed? + self.fence_after())
    }

    /// Rule 5: how long after regaining currency a read-only writer is taken for the fence of
    /// the same outage. Two TTLs: by then its agent has had rounds enough to be current again
    /// and lift it, or it is still cut off (its lease expired) and its fence stays.
    pub fn lift_grace(&self) -> Duration {
        self.ttl * 2
    }

    /// For how long the decisions have been current without a break; `None` when not current.
    pub fn current_for(&self, now: Instant) -> Option<Duration> {
        let since = self.current_since.filter(|_| self.current(now))?;
        Some(now.saturating_duration_since(since))
    }

    /// When the last good round was sent.
    pub fn renewed(&self) -> Option<Instant> {
        self.renewed
    }

    pub fn leader(&self) -> Option<&str> {
        self.seen.leader.as_deref()
    }

    /// This agent holds the leader key and is current: it decides.
    pub fn leading(&self, now: Instant) -> bool {
        self.leader() == Some(self.me.as_str()) && self.current(now)
    }

    /// What the data plane follows for `service`: the committed decision, when current, not
    /// stale and settled; `None`: the writes wait.
    pub fn followed(&self, now: Instant, service: &str) -> Option<Decision> {
        if !self.current(now) {
            return None;
        }
        let s = self.following.get(service)?;
        let committed = self.seen.decisions.get(service)?;
        let fresh = committed.stored == *s && !s.settling;
        fresh.then(|| s.decision())
    }

    /// The decision this agent last followed for `service`, settled or not, current or not
    /// (where its own server stood: the self-fence asks).
    pub fn last_followed(&self, service: &str) -> Option<&Stored> {
        self.following.get(service)
    }

    /// The committed decision of `service`, as last seen.
    pub fn committed(&self, service: &str) -> Option<&Committed> {
        self.seen.decisions.get(service)
    }

    /// The epochs this agent acknowledges: what its data plane now follows (settling or not).
    pub fn acknowledged(&self) -> BTreeMap<String, u64> {
        self.following
            .iter()
            .map(|(s, d)| (s.clone(), d.epoch))
            .collect()
    }

    /// A round ended. Returns the services whose committed decision moved.
    pub fn on_round(&mut self, round: Round) -> Vec<Effect> {
        let (sent, seen) = match round {
            Round::Failed(why) => {
                self.last_error = Some(why);
                return vec![];
            }
            Round::Seen { sent, seen } => (sent, seen),
        };
        self.last_error = None;
        if !self.current(sent) {
            self.current_since = Some(sent);
        }
        self.renewed = Some(self.renewed.map_or(sent, |r| r.max(sent)));
        // Rule 4: every epoch anyone acknowledged counts.
        for acks in seen.agents.values() {
            for (service, &epoch) in acks {
                self.raise(service, epoch);
            }
        }
        let mut effects = Vec::new();
        for (service, c) in &seen.decisions {
            let known = self.highest.get(service).copied().unwrap_or(0);
            if c.stored.epoch < known {
                // Stale (rule 4): not followed.
                continue;
            }
            self.raise(service, c.stored.epoch);
            // A proposal is done when it, or something newer, is committed (the settling
            // step of its own epoch is not: that is the step before).
            if self
                .pending
                .get(service)
                .is_some_and(|(p, _)| p.epoch < c.stored.epoch || *p == c.stored)
            {
                self.pending.remove(service);
            }
            let before = self.following.insert(service.clone(), c.stored.clone());
            if before.as_ref().map(|b| (b.epoch, b.sorry)) != Some((c.stored.epoch, c.stored.sorry))
            {
                effects.push(Effect::Follow {
                    service: service.clone(),
                    decision: c.stored.decision(),
                });
            }
        }
        self.seen = seen;
        effects
    }

    /// The leader's checks say where `service`'s writes should go. Returns the write that
    /// moves the decision one step (rule 3), if one is due.
    pub fn propose(
        &mut self,
        now: Instant,
        service: &str,
        want: impl Into<Placement>,
    ) -> Option<Proposal> {
        let want = want.into();
        let sorry = want.sorry;
        if !self.leading(now) {
            return None;
        }
        if let Some((_, at)) = self.pending.get(service)
            && now.duration_since(*at) < self.ttl
        {
            return None;
        }
        let committed = self.seen.decisions.get(service);
        let known = self.highest.get(service).copied().unwrap_or(0);
        let usable = committed.filter(|c| c.stored.epoch >= known && c.stored.epoch > 0);
        let stored = match usable {
            Some(c) if c.stored.sorry == sorry && !c.stored.settling => return None,
            // Step two: everyone holds the writes under this epoch.
            Some(c) if c.stored.sorry == sorry => {
                if !self.all_acknowledged(service, c.stored.epoch) {
                    return None;
                }
                Stored {
                    settling: false,
                    by: self.me.clone(),
                    ..c.stored.clone()
                }
            }
            // Step one of a change (or of a first or re-made decision).
            _ => Stored {
                epoch: self.highest.values().copied().max().unwrap_or(0) + 1,
                sorry,
                settling: true,
                by: self.me.clone(),
                switched: sorry && want.switched,
            },
        };
        let mod_revision = committed.map_or(0, |c| c.mod_revision);
        self.raise(service, stored.epoch);
        self.pending
            .insert(service.to_string(), (stored.clone(), now));
        Some(Proposal {
            service: service.to_string(),
            stored,
            mod_revision,
        })
    }

    /// Every registered agent acknowledged `epoch` of `service` (rule 3).
    fn all_acknowledged(&self, service: &str, epoch: u64) -> bool {
        self.seen
            .agents
            .values()
            .all(|acks| acks.get(service).is_some_and(|&e| e >= epoch))
    }

    /// A proposal failed to commit (compare failed, etcd unreachable): it may be made again.
    pub fn proposal_failed(&mut self, service: &str) {
        self.pending.remove(service);
    }

    fn raise(&mut self, service: &str, epoch: u64) {
        let e = self.highest.entry(service.to_string()).or_default();
        *e = (*e).max(epoch);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const W: &str = "mysql-write";
    const TTL: Duration = Duration::from_secs(3);

    /// etcd as the tests see it: a leader key, decisions and the agents' acknowledgements,
    /// with the revision counter; and the agents' lease expiries.
    #[derive(Default)]
    struct Etcd {
        leader: Option<String>,
        decisions: BTreeMap<String, Committed>,
        agents: BTreeMap<String, BTreeMap<String, u64>>,
        /// Each agent's lease, on etcd's clock: registered until then.
        leases: BTreeMap<String, Instant>,
        revision: i64,
    }

    impl Etcd {
        /// One round of `q` at `now`, as the I/O side runs it: renew (or re-grant) the
        /// lease, take the leader key when free, publish the acknowledgements, read.
        fn round(&mut self, q: &mut Quorum, now: Instant) -> Vec<Effect> {
            self.expire(now);
            self.leases.insert(q.me.clone(), now + TTL);
            if self.leader.is_none() {
                self.leader = Some(q.me.clone());
            }
            self.agents.insert(q.me.clone(), q.acknowledged());
            let seen = self.observe();
            let effects = q.on_round(Round::Seen { sent: now, seen });
            // The data plane applied what it follows: acknowledge it at once.
            self.agents.insert(q.me.clone(), q.acknowledged());
            effects
        }

        fn expire(&mut self, now: Instant) {
            let gone: Vec<String> = self
                .leases
                .iter()
                .filter(|(_, until)| **until <= now)
                .map(|(a, _)| a.clone())
                .collect();
            for a in gone {
                self.leases.remove(&a);
                self.agents.remove(&a);
                if self.leader.as_deref() == Some(a.as_str()) {
                    self.leader = None;
                }
            }
        }

        fn observe(&self) -> Observation {
            Observation {
                leader: self.leader.clone(),
                decisions: self.decisions.clone(),
                agents: self.agents.clone(),
                maintenance: Default::default(),
            }
        }

        /// The leader's compare-and-swap.
        fn commit(&mut self, from: &str, p: Proposal) -> bool {
            let at = self.decisions.get(&p.service).map_or(0, |c| c.mod_revision);
            if self.leader.as_deref() != Some(from) || at != p.mod_revision {
                return false;
            }
            self.revision += 1;
            self.decisions.insert(
                p.service,
                Committed {
                    stored: p.stored,
                    mod_revision: self.revision,
                },
            );
            true
        }
    }

    /// Two agents and etcd with injected time.
    struct Cluster {
        etcd: Etcd,
        a: Quorum,
        b: Quorum,
        t0: Instant,
    }

    impl Cluster {
        fn new() -> Cluster {
            Cluster {
                etcd: Etcd::default(),
                a: Quorum::new("db1", TTL),
                b: Quorum::new("db2", TTL),
                t0: Instant::now(),
            }
        }

        fn at(&self, ms: u64) -> Instant {
            self.t0 + Duration::from_millis(ms)
        }

        /// Rounds of both agents (`a` first) and the leader's proposals, until nothing moves.
        fn settle(&mut self, ms: u64, a_sorry: bool, b_sorry: bool) {
            let now = self.at(ms);
            for _ in 0..6 {
                self.etcd.round(&mut self.a, now);
                self.etcd.round(&mut self.b, now);
                for (q, sorry) in [(&mut self.a, a_sorry), (&mut self.b, b_sorry)] {
                    if let Some(p) = q.propose(now, W, sorry) {
                        let me = q.me.clone();
                        if !self.etcd.commit(&me, p) {
                            q.proposal_failed(W);
                        }
                    }
                }
            }
        }
    }

    fn decision(epoch: u64, sorry: bool) -> Option<Decision> {
        Some(Decision {
            epoch,
            sorry,
            switched: false,
        })
    }

    #[test]
    fn the_first_agent_leads_and_a_change_takes_two_steps() {
        let mut c = Cluster::new();
        let now = c.at(0);
        assert_eq!(
            c.a.followed(now, W),
            None,
            "nothing decided: the writes wait"
        );
        c.etcd.round(&mut c.a, now);
        c.etcd.round(&mut c.b, now);
        assert!(c.a.leading(now) && !c.b.leading(now));
        // Step one: settling under epoch 1; nobody forwards yet.
        let p = c.a.propose(now, W, false).unwrap();
        assert!(p.stored.settling && p.stored.epoch == 1 && p.mod_revision == 0);
        assert!(c.etcd.commit("db1", p));
        c.etcd.round(&mut c.a, now);
        assert_eq!(c.a.followed(now, W), None, "settling: held");
        // db2 has not acknowledged epoch 1: no step two.
        assert_eq!(c.a.propose(now, W, false), None);
        c.etcd.round(&mut c.b, now);
        c.etcd.round(&mut c.a, now);
        let p = c.a.propose(now, W, false).unwrap();
        assert!(!p.stored.settling && p.stored.epoch == 1);
        assert!(c.etcd.commit("db1", p));
        c.etcd.round(&mut c.a, now);
        c.etcd.round(&mut c.b, now);
        assert_eq!(c.a.followed(now, W), decision(1, false));
        assert_eq!(c.b.followed(now, W), decision(1, false));
        // A follower's opinion changes nothing.
        assert_eq!(c.b.propose(now, W, true), None);
    }

    #[test]
    fn an_agent_that_cannot_renew_stops_following_before_its_lease_ends() {
        let mut c = Cluster::new();
        c.settle(0, false, false);
        assert_eq!(c.b.followed(c.at(0), W), decision(1, false));
        // db2 cut off after its round at 0: current until two thirds of the TTL, on its
        // monotonic clock, counted from when the round was sent.
        c.b.on_round(Round::Failed("etcd: deadline exceeded".into()));
        assert_eq!(c.b.followed(c.at(1_999), W), decision(1, false));
        assert_eq!(c.b.followed(c.at(2_000), W), None);
        assert!(!c.b.current(c.at(2_000)));
        assert_eq!(c.b.last_error.as_deref(), Some("etcd: deadline exceeded"));
        // Its lease in etcd ends at 3 000 at the earliest: after it stopped.
        assert!(c.b.current_until().unwrap() < c.etcd.leases["db2"]);
    }

    /// The partition of the issue: the writer's host (db1, leading) is cut off from the
    /// majority; db2 can take the leader key only once db1's lease has expired, and db1 has
    /// stopped following a third of the TTL before that.
    #[test]
    fn a_new_leader_waits_out_the_old_lease() {
        let mut c = Cluster::new();
        c.settle(0, false, false);
        assert_eq!(c.etcd.leader.as_deref(), Some("db1"));
        // From 0 on db1 hears nothing; db2 sees db1's server gone and would move the writes.
        for ms in (1_000..=2_900).step_by(100) {
            let now = c.at(ms);
            c.etcd.round(&mut c.b, now);
            assert_eq!(c.b.propose(now, W, true), None, "not leading at {ms}");
        }
        assert!(!c.a.current(c.at(2_000)), "db1 stopped following at 2 s");
        // 3 s: db1's lease has expired; db2 leads, and moves the writes in two steps.
        let now = c.at(3_000);
        c.etcd.round(&mut c.b, now);
        assert!(c.b.leading(now));
        let p = c.b.propose(now, W, true).unwrap();
        assert_eq!((p.stored.epoch, p.stored.settling), (2, true));
        assert!(c.etcd.commit("db2", p));
        c.etcd.round(&mut c.b, now);
        assert_eq!(
            c.b.propose(now, W, true),
            None,
            "its own acknowledgement not read yet"
        );
        c.etcd.round(&mut c.b, now);
        // db1 is no longer registered: only db2's acknowledgement counts.
        let p = c.b.propose(now, W, true).unwrap();
        assert!(c.etcd.commit("db2", p));
        let effects = c.etcd.round(&mut c.b, now);
        assert!(effects.is_empty(), "epoch 2 was followed at its first step");
        assert_eq!(c.b.followed(now, W), decision(2, true));
        // db1 returns: it follows db2's decision, and the gate starts from it.
        let back = c.at(5_000);
        c.etcd.round(&mut c.b, back);
        let effects = c.etcd.round(&mut c.a, back);
        assert_eq!(
            effects,
            vec![Effect::Follow {
                service: W.into(),
                decision: Decision {
                    epoch: 2,
                    sorry: true,
                    switched: false,
                }
            }]
        );
        assert!(!c.a.leading(back), "db2 keeps the leader key");
        assert_eq!(c.a.followed(back, W), decision(2, true));
    }

    /// A leader that loses its key between proposing and committing: the compare fails
    /// (the test's etcd, as the real one, checks the leader key), the proposal may be made
    /// again later; nothing is followed that was not committed.
    #[test]
    fn only_the_key_holder_commits() {
        let mut c = Cluster::new();
        c.settle(0, false, false);
        let now = c.at(500);
        c.etcd.round(&mut c.a, now);
        let p = c.a.propose(now, W, true).unwrap();
        c.etcd.leader = Some("db2".into());
        assert!(!c.etcd.commit("db1", p));
        c.a.proposal_failed(W);
        c.etcd.round(&mut c.a, now);
        assert_eq!(c.a.followed(now, W), decision(1, false));
        assert_eq!(c.a.propose(now, W, true), None, "no longer leading");
    }

    /// etcd restarted with its data lost: every key gone. The agents re-register; the new
    /// leader's first decision is above every epoch anyone knows (rule 4), and a decision
    /// below it is followed by nobody.
    #[test]
    fn after_etcd_lost_its_data_epochs_go_on_from_the_highest_known() {
        let mut c = Cluster::new();
        c.settle(0, false, false);
        c.settle(100, true, true);
        c.settle(200, false, false);
        assert_eq!(c.a.followed(c.at(200), W), decision(3, false));
        c.etcd = Etcd::default();
        // db2 comes first and leads: it knows epoch 3.
        let now = c.at(1_000);
        c.etcd.round(&mut c.b, now);
        assert_eq!(
            c.b.followed(now, W),
            None,
            "nothing committed: the writes wait"
        );
        let p = c.b.propose(now, W, false).unwrap();
        assert_eq!(p.stored.epoch, 4);
        assert!(c.etcd.commit("db2", p));
        // A stale decision (a restored old snapshot, say) is followed by nobody.
        let mut stale = Etcd {
            leader: Some("db2".into()),
            ..Etcd::default()
        };
        stale.commit(
            "db2",
            Proposal {
                service: W.into(),
                stored: Stored {
                    epoch: 2,
                    sorry: true,
                    settling: false,
                    by: "db2".into(),
                    switched: false,
                },
                mod_revision: 0,
            },
        );
        assert!(stale.round(&mut c.a, now).is_empty());
        assert_eq!(c.a.followed(now, W), None);
        c.settle(1_000, false, false);
        assert_eq!(c.a.followed(now, W), decision(4, false));
        assert_eq!(c.b.followed(now, W), decision(4, false));
    }

    /// A follower whose own acknowledgements are behind (restarted: it knows nothing) makes
    /// the leader wait, never skip it; a leader that restarts starts above the epochs the
    /// others acknowledged.
    #[test]
    fn restarts_keep_epochs_growing() {
        let mut c = Cluster::new();
        c.settle(0, false, false);
        c.settle(100, true, true);
        // db1 (leader) restarts as a new process: new name, knows nothing.
        c.etcd.leader = None;
        c.etcd.agents.remove("db1");
        c.etcd.leases.remove("db1");
        c.a = Quorum::new("db1-again", TTL);
        let now = c.at(200);
        c.etcd.round(&mut c.a, now);
        assert!(c.a.leading(now));
        assert_eq!(
            c.a.followed(now, W),
            decision(2, true),
            "it follows epoch 2"
        );
        c.settle(300, false, false);
        assert_eq!(c.b.followed(c.at(300), W), decision(3, false));
    }

    #[test]
    fn periods_and_deadlines_follow_the_ttl() {
        let q = Quorum::new("x", Duration::from_secs(6));
        assert_eq!(q.period(), Duration::from_secs(2));
        assert_eq!(q.fence_after(), Duration::from_secs(4));
        assert!(!q.current(Instant::now()), "never renewed: not current");
    }

    #[test]
    fn currency_is_timed_from_the_round_that_regained_it() {
        let mut c = Cluster::new();
        c.settle(0, false, false);
        // Good rounds every second: current since the first.
        for ms in [1_000, 2_000, 3_000] {
            let t = c.at(ms);
            c.etcd.round(&mut c.a, t);
        }
        assert_eq!(
            c.a.current_for(c.at(3_500)),
            Some(Duration::from_millis(3_500))
        );
        // etcd's leader killed: no good round for 2.5 s (fence_after is 2 s) ...
        assert_eq!(c.a.current_for(c.at(5_100)), None, "not current");
        // ... then good rounds again: the run of currency starts over.
        let t = c.at(5_500);
        c.etcd.round(&mut c.a, t);
        assert_eq!(
            c.a.current_for(c.at(5_600)),
            Some(Duration::from_millis(100))
        );
        assert!(c.a.current_for(c.at(5_600)).unwrap() < c.a.lift_grace());
        // A late round, sent before one already seen, changes nothing.
        c.a.on_round(Round::Seen {
            sent: c.at(5_400),
            seen: c.etcd.observe(),
        });
        assert_eq!(
            c.a.current_for(c.at(5_600)),
            Some(Duration::from_millis(100))
        );
        // One lost round (less than fence_after without a good one) is no break.
        let t = c.at(7_000);
        c.etcd.round(&mut c.a, t);
        assert_eq!(
            c.a.current_for(c.at(7_000)),
            Some(Duration::from_millis(1_500))
        );
        assert_eq!(c.a.lift_grace(), Duration::from_secs(6));
    }
}
