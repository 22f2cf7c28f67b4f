//! The writer decision in the daemon with `[quorum]` (see `lb_agent::decision::quorum` for
//! the rules, `super::quorum` for etcd): a round's result moves the decisions the data plane
//! follows; the leader proposes; every agent acknowledges what its data plane follows;
//! an agent that stopped being current fences its own server, and lifts that fence once it
//! is current again; a graceful handover's "sorry server writable again" waits until the
//! writes are committed elsewhere.

use std::{
    collections::{BTreeMap, HashMap},
    net::IpAddr,
    time::{Duration, Instant},
};

/// How long a "make writable" gets before the checks' view of it is believed (a few check
/// intervals), and a failed one is tried again.
pub(super) const RETRY_WRITABLE: Duration = Duration::from_secs(3);

use anyhow::Result;
use lb_agent::{
    decision::quorum::{Effect, Placement, Round},
    health::{mysql::Target, runner, state::Action},
};

use super::{
    core::Daemon,
    quorum::{QuorumLink, Report},
    writer::shared_services,
};

/// What the daemon keeps beside the link for the self-fence and the deferred writes.
#[derive(Default)]
pub struct Fences {
    /// This host's servers fenced for want of a quorum, with the last attempt to lift the
    /// fence (they stay here until their check reads them writable after one).
    pub self_fenced: BTreeMap<IpAddr, Option<Instant>>,
    /// Sorry servers to make writable once their service's writes are settled on the real
    /// servers, or decided again later than `epoch`.
    pub deferred_writable: Vec<(String, u64, Target)>,
    /// Per service, when the leader last made its sorry server writable because the
    /// committed writes are on it (tried again while it reads read-only).
    pub ensured_writable: HashMap<String, Instant>,
    /// Per service, when the leader last stopped or started its sorry server's replication
    /// from the writer (see `ensure_replication`).
    pub replication_changed: HashMap<String, Instant>,
    /// Per service, when the deciding agent last looked for orphaned transactions on its
    /// writers while the sorry server had the writes.
    pub orphans_checked: HashMap<String, Instant>,
    /// Writers reported with errant transactions, by the binary log position they had
    /// (a new position is reported again).
    pub errant_reported: std::collections::HashSet<(IpAddr, String)>,
    /// Per service, why the leader holds back a move to the sorry server its checks ask for
    /// (logged when it changes).
    pub held_moves: HashMap<String, String>,
    /// Per server of this host, when its dumps to unreachable replicas were last ended.
    pub dumps_ended: HashMap<IpAddr, Instant>,
}

impl Daemon {
    /// A round with etcd ended, or a proposal did not commit.
    pub async fn on_quorum_report(&mut self, report: Report) -> Result<()> {
        let Some(q) = &mut self.quorum else {
            return Ok(());
        };
        match report {
            Report::NotCommitted { service, why } => {
                tracing::warn!(service, why, "writer decision not committed");
                q.state.proposal_failed(&service);
            }
            Report::Round(round) => {
                if let Round::Failed(why) = &round {
                    q.failed_rounds += 1;
                    if q.failing % 10 == 0 {
                        tracing::warn!(error = %why, failed_in_a_row = q.failing + 1, "quorum: a round with etcd failed");
                    }
                    q.failing += 1;
                } else {
                    if q.failing > 0 {
                        tracing::info!(
                            after = q.failing,
                            "quorum: a round with etcd succeeded again"
                        );
                    }
                    q.failing = 0;
                    q.rounds += 1;
                }
                // The other agents' maintenance words (a round seen: heard), merged below.
                let words: Option<Vec<_>> = match &round {
                    Round::Seen { seen, .. } => Some(
                        seen.maintenance
                            .iter()
                            .filter(|(agent, _)| agent.as_str() != q.state.me())
                            .map(|(_, marks)| marks.clone())
                            .collect(),
                    ),
                    Round::Failed(_) => None,
                };
                let before = q.state.leader().map(str::to_string);
                let effects = q.state.on_round(round);
                let now_leads = q.state.leader() == Some(q.state.me())
                    && before.as_deref() != Some(q.state.me());
                if q.state.leader() != before.as_deref() {
                    tracing::info!(
                        leader = q.state.leader().unwrap_or("none"),
                        this_agent = q.state.leader() == Some(q.state.me()),
                        "quorum: the leader key changed hands"
                    );
                }
                for Effect::Follow { service, decision } in effects {
                    tracing::info!(
                        service,
                        epoch = decision.epoch,
                        sorry = decision.sorry,
                        "writer decision committed"
                    );
                    self.health.inherit(&self.cfg, &service, decision);
                }
                if now_leads {
                    // As with `[pair]`: the new leader's gates start from the decisions.
                    self.gates_from_decisions();
                }
                if let Some(words) = words {
                    self.maintenance.heard();
                    for marks in &words {
                        self.take_maintenance_words(marks);
                    }
                }
            }
        }
        self.quorum_step().await
    }

    /// The decisions stop being current now (the data plane's lease ends with them).
    pub async fn on_quorum_deadline(&mut self) -> Result<()> {
        self.quorum_step().await
    }

    /// When the decisions stop being current, if they are.
    pub fn quorum_deadline(&self) -> Option<Instant> {
        let q = self.quorum.as_ref()?;
        q.state.current_until().filter(|t| *t > Instant::now())
    }

    /// After anything that may have moved the quorum's state: the data plane's lease, the
    /// maps (and the leader's next step), then what the data plane follows acknowledged,
    /// the self-fence, and the deferred writes.
    async fn quorum_step(&mut self) -> Result<()> {
        self.renew_lease()?;
        self.health_step().await?;
        let now = Instant::now();
        // Not through `run`: its deferral would take this step's released writes again.
        for a in self.fence_step(now) {
            runner::spawn(a, &self.health_tx);
        }
        if let Some(q) = &mut self.quorum {
            q.acknowledge();
        }
        Ok(())
    }

    /// The self-fence (rule 1 of `decision::quorum`): not current, this host's server that
    /// had the writes is fenced once; current again, the fence is lifted (the data plane
    /// sends it writes only by a committed decision, so a writable server is harmless).
    fn fence_step(&mut self, now: Instant) -> Vec<Action> {
        let Some(q) = &self.quorum else {
            return vec![];
        };
        let mut actions = Vec::new();
        if q.state.current(now) {
            // Until the check reads it writable after an attempt: a lift can fail (a
            // server that stalls after a heal), and a read before the attempt may be stale.
            let fenced: Vec<(IpAddr, Option<Instant>)> = self
                .fences
                .self_fenced
                .iter()
                .map(|(a, t)| (*a, *t))
                .collect();
            for (addr, tried) in fenced {
                if tried.is_some_and(|t| now.duration_since(t) < RETRY_WRITABLE) {
                    continue;
                }
                if tried.is_some() && self.reads_writable(addr) == Some(true) {
                    tracing::info!(server = %addr, "this host's self-fence is lifted");
                    self.fences.self_fenced.remove(&addr);
                    continue;
                }
                if let Some(target) = self.target_of(addr) {
                    tracing::info!(server = %addr, "quorum regained: lifting this host's self-fence");
                    actions.push(Action::MakeWritable { target });
                }
                self.fences.self_fenced.insert(addr, Some(now));
            }
            // Sorry servers whose handover is settled (every agent holds the writes on the
            // real servers, so none sends them to the sorry server), or whose service was
            // decided again since: writable again. The settled step keeps the epoch of its
            // settling step, so "later epoch" alone would wait for the next change.
            let mut keep = Vec::new();
            for (service, epoch, target) in std::mem::take(&mut self.fences.deferred_writable) {
                match q.state.followed(now, &service) {
                    Some(d) if !d.sorry || d.epoch > epoch => {
                        tracing::info!(service, server = %target.addr, epoch = d.epoch, "handover settled everywhere: the sorry server may take writes again");
                        actions.push(Action::MakeWritable { target })
                    }
                    _ => keep.push((service, epoch, target)),
                }
            }
            self.fences.deferred_writable = keep;
            self.ensure_sorry_writable(now, &mut actions);
            return actions;
        }
        for vs in shared_services(&self.cfg) {
            let Some(last) = q.state.last_followed(&vs.name) else {
                continue;
            };
            let had_writes: Vec<IpAddr> = if last.sorry {
                vs.sorry.iter().map(|r| r.address).collect()
            } else {
                vs.reals.iter().map(|r| r.address).collect()
            };
            for addr in had_writes {
                let local = self
                    .state
                    .known
                    .get(&addr)
                    .is_some_and(|(_, info)| info.local);
                // Once per loss (a lift under way stops: the server stays fenced).
                if !local || self.fences.self_fenced.get(&addr) == Some(&None) {
                    continue;
                }
                if let Some(target) = self.target_of(addr) {
                    tracing::warn!(server = %addr, service = %vs.name, "no quorum: fencing this host's server (it had the writes)");
                    actions.push(Action::SelfFence { target });
                    self.fences.self_fenced.insert(addr, None);
                }
            }
        }
        actions
    }

    /// The leader makes sure a sorry server that the settled decision gives the writes can
    /// take them: a graceful handover that did not finish, or a self-fence of the other
    /// host's agent that nobody lifted (its host down for good), may have left it
    /// read-only. Not while a handover is under way (that one wants it read-only), and
    /// only once per epoch (a failed attempt is logged; the next change tries again).
    fn ensure_sorry_writable(&mut self, now: Instant, actions: &mut Vec<Action>) {
        let Some(q) = &self.quorum else {
            return;
        };
        if !q.state.leading(now) {
            return;
        }
        for vs in shared_services(&self.cfg) {
            let Some(d) = q.state.followed(now, &vs.name) else {
                continue;
            };
            let Some(sorry) = vs.sorry.as_ref() else {
                continue;
            };
            if !d.sorry
                || !self.health.eval.holds_sorry(&vs.name)
                || self.health.handing_over(&vs.name)
                || self
                    .fences
                    .ensured_writable
                    .get(&vs.name)
                    .is_some_and(|t| now.duration_since(*t) < RETRY_WRITABLE)
                || self
                    .fences
                    .deferred_writable
                    .iter()
                    .any(|(s, _, _)| *s == vs.name)
            {
                continue;
            }
            if self.reads_writable(sorry.address) != Some(false) {
                continue;
            }
            let Some(target) = self.health.monitor.mysql_target(sorry) else {
                continue;
            };
            tracing::warn!(service = %vs.name, server = %sorry.address, epoch = d.epoch, "the writes are decided on the sorry server, which is read-only: making it writable");
            self.fences.ensured_writable.insert(vs.name.clone(), now);
            actions.push(Action::MakeWritable { target });
        }
    }

    /// `status`: the quorum's side.
    pub(super) fn quorum_status(&self) -> Option<lb_agent::control::status::QuorumStatus> {
        let q = self.quorum.as_ref()?;
        let now = Instant::now();
        Some(lb_agent::control::status::QuorumStatus {
            connected: q.state.current(now),
            leader: q.state.leader().map(str::to_string),
            this_agent_leads: q.state.leading(now),
            since_renewal_ms: q
                .state
                .renewed()
                .map(|t| now.duration_since(t).as_millis() as u64),
            last_error: q.state.last_error.clone(),
            epochs: shared_services(&self.cfg)
                .iter()
                .filter_map(|vs| Some((vs.name.clone(), q.state.committed(&vs.name)?.stored.epoch)))
                .collect(),
            rounds: q.rounds,
            failed_rounds: q.failed_rounds,
            self_fenced: self.fences.self_fenced.keys().copied().collect(),
        })
    }

    /// What the latest check of server `addr` read: writable or not; none when the check
    /// is down or does not read it.
    fn reads_writable(&self, addr: IpAddr) -> Option<bool> {
        self.cfg
            .services
            .iter()
            .flat_map(|vs| vs.reals.iter().chain(vs.sorry.iter()))
            .filter(|r| r.address == addr)
            .find_map(|r| {
                let c = self.health.monitor.checked(r)?;
                c.is_up().then_some(())?;
                Some(c.mysql.as_ref()?.writable())
            })
    }

    /// A MySQL-checked server of any service, as a target for SQL.
    fn target_of(&self, addr: IpAddr) -> Option<Target> {
        self.cfg
            .services
            .iter()
            .flat_map(|vs| vs.reals.iter().chain(vs.sorry.iter()))
            .filter(|r| r.address == addr)
            .find_map(|r| self.health.monitor.mysql_target(r))
    }

    /// With `[quorum]`, a graceful handover's "sorry server writable again" waits until the
    /// writes are committed elsewhere: until then the sorry server may still get them.
    pub(super) fn defer_writable(&mut self, actions: Vec<Action>) -> Vec<Action> {
        let Some(q) = &self.quorum else {
            return actions;
        };
        let mut now_actions = Vec::new();
        for a in actions {
            let Action::MakeWritable { target } = &a else {
                now_actions.push(a);
                continue;
            };
            let service = shared_services(&self.cfg).into_iter().find(|vs| {
                vs.sorry
                    .as_ref()
                    .is_some_and(|s| s.address == target.addr.ip())
            });
            match service {
                Some(vs) => {
                    let epoch = q.state.committed(&vs.name).map_or(0, |c| c.stored.epoch);
                    self.fences
                        .deferred_writable
                        .push((vs.name.clone(), epoch, target.clone()));
                }
                None => now_actions.push(a),
            }
        }
        now_actions
    }

    /// The leader's proposals (rule 3), and the changes it made reported when they may
    /// lose transactions.
    pub(super) fn decide_in_quorum(&mut self, now: Instant, proposals: Vec<(String, Placement)>) {
        let Some(q) = &mut self.quorum else {
            return;
        };
        log_current(q, now);
        let held: HashMap<String, String> = proposals
            .iter()
            .filter(|(_, want)| want.sorry)
            .filter_map(|(service, _)| {
                Some((service.clone(), self.no_move_to_sorry(now, service)?))
            })
            .collect();
        let Some(q) = &mut self.quorum else {
            return;
        };
        let mut moved = Vec::new();
        for (service, want) in proposals {
            let sorry = want.sorry;
            let before = q.state.committed(&service).map(|c| c.stored.sorry);
            // A new move to the sorry server that cannot help (see `no_move_to_sorry`):
            // the committed decision stands. A change under way goes on.
            let why = held.get(&service).filter(|_| before == Some(false));
            if self.fences.held_moves.get(&service) != why {
                if let Some(why) = why {
                    tracing::warn!(
                        service,
                        why,
                        "writer decision: the writes stay where they are"
                    );
                }
                match why {
                    Some(w) => self.fences.held_moves.insert(service.clone(), w.clone()),
                    None => self.fences.held_moves.remove(&service),
                };
            }
            if why.is_some() {
                continue;
            }
            let Some(p) = q.state.propose(now, &service, want) else {
                continue;
            };
            tracing::warn!(
                service,
                epoch = p.stored.epoch,
                sorry,
                step = if p.stored.settling {
                    "hold the writes everywhere"
                } else {
                    "release them"
                },
                "writer decision: proposing"
            );
            if p.stored.settling && before.is_some_and(|b| b != sorry) {
                moved.push((service, sorry));
            }
            q.propose(p);
        }
        self.report_moves(moved);
    }
}

impl Daemon {
    /// Why the leader must not move `service`'s writes to its sorry server now, if it must
    /// not: the sorry server does not answer this agent's checks (writes sent there would
    /// only fail, and a server cut off from the leader may be cut off from the clients'
    /// side too), or one of its writers is this host's, fenced for want of a quorum a
    /// moment ago — its checks read it read-only or not answering because of our own
    /// fence, not because it failed; or a writer answers writable now; or a writer reads
    /// read-only just after an outage of etcd that every agent saw — its own agent's fence,
    /// lifted in a moment (rule 5 of `decision::quorum`).
    fn no_move_to_sorry(&self, now: Instant, service: &str) -> Option<String> {
        let vs = self.cfg.service(service)?;
        let sorry = vs.sorry.as_ref()?;
        if !self
            .health
            .monitor
            .checked(sorry)
            .is_some_and(|c| c.is_up())
        {
            return Some(format!("the sorry server {} is down", sorry.address));
        }
        if let Some(r) = vs
            .reals
            .iter()
            .find(|r| self.fences.self_fenced.contains_key(&r.address))
        {
            return Some(format!("{} is this host's, self-fenced", r.address));
        }
        if let Some(q) = &self.quorum
            && let Some(regained) = q.state.current_for(now)
            && regained < q.state.lift_grace()
            && let Some(r) = vs
                .reals
                .iter()
                .find(|r| self.reads_writable(r.address) == Some(false))
        {
            return Some(format!(
                "{} reads read-only {:.1} s after the quorum came back: its agent's fence for the same outage, lifted once it is current (until {:.0?})",
                r.address,
                regained.as_secs_f64(),
                q.state.lift_grace()
            ));
        }
        // The local failback gate remembers a failure (e.g. of our own fence, or while the
        // sorry server was away) until its writer has caught up; but the committed
        // decision has the writes on the writer, and a writer that answers writable now
        // is nothing to fail over from.
        vs.reals
            .iter()
            .find(|r| self.reads_writable(r.address) == Some(true))
            .map(|r| format!("{} answers and is writable", r.address))
    }
}

fn log_current(q: &mut QuorumLink, now: Instant) {
    let current = q.state.current(now);
    if current == q.was_current {
        return;
    }
    q.was_current = current;
    if current {
        tracing::info!("quorum: decisions current again: the data plane follows them");
    } else {
        tracing::warn!(
            error = q.state.last_error.as_deref().unwrap_or("none"),
            "quorum: no good round with etcd for {:?}: the shared writes wait, and this host's writer is fenced",
            q.state.fence_after()
        );
    }
}
