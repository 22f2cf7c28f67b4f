//! The writer decision in the daemon: which services the pair decides (a sorry server behind
//! a VRRP address), who decides (the VRRP master of that address), what the data plane
//! follows (the shared decision in place of this agent's own verdict), and which health side
//! effects run (the graceful handover and fencing only on the agent that decides: the others'
//! are paused in `HealthState`, so they never start).

use std::time::Instant;

use anyhow::Result;
use lb_agent::{
    balancer::desired::Verdicts,
    config::{Config, Service},
    decision::{
        quorum::Quorum,
        shared::{Decision, Effect, Placement},
    },
    health::risk,
};

use super::{core::Daemon, pair::Datagram};

/// Services whose writer the agents decide together: `Config::writer_services`, with a
/// `[pair]` or a `[quorum]` configured.
pub fn shared_services(cfg: &Config) -> Vec<&Service> {
    if cfg.pair.is_none() && cfg.quorum.is_none() {
        return vec![];
    }
    cfg.writer_services()
}

/// The verdicts a starting agent's data plane begins with: its checks', and the writes of
/// every shared service waiting until the pair is heard — a fresh data plane must neither
/// send them where its own view says nor bounce frames a peer forwarded to it.
pub fn starting_verdicts(cfg: &Config, health: &Verdicts) -> Verdicts {
    let mut v = health.clone();
    for vs in shared_services(cfg) {
        let e = v.entry(vs.name.clone()).or_default();
        e.hold_writes = true;
        e.leased = true;
    }
    v
}

impl Daemon {
    fn shared_services(&self) -> Vec<&Service> {
        shared_services(&self.cfg)
    }

    /// This agent decides: it is VRRP master of a shared service's address.
    pub(super) fn leading(&self) -> bool {
        let masters = self.vrrp.masters();
        self.shared_services()
            .iter()
            .any(|vs| masters.contains(&vs.address))
    }

    /// After a VRRP step: the decision moves with the master role.
    pub(super) fn update_leadership(&mut self, now: Instant) -> bool {
        let leading = self.leading();
        let Some(pair) = &mut self.pair else {
            return false;
        };
        if pair.shared.is_leader() == leading {
            return false;
        }
        pair.shared.set_leader(now, leading);
        tracing::info!(
            leading,
            "writer decision: {}",
            if leading {
                "this agent decides"
            } else {
                "this agent follows"
            }
        );
        if leading {
            self.gates_from_decisions();
        }
        true
    }

    /// A new leader's failback gates start from the decisions it followed, not from what
    /// its own checks made of them meanwhile: a follower's gate moves by its own view (it
    /// only holds, never acts), and a gate that went to the sorry server while this agent
    /// was cut off from the writer — a link down that has since healed — would otherwise
    /// move the writes at once when it leads, without a fence or a drain, away from a
    /// writer that is committing (the lab's link-down then adverts-lost steps: one counter
    /// increment lost). From the decision, its own checks move the gate again only by the
    /// failover's rules (the quorum lost now, the sorry server drained after that).
    pub(super) fn gates_from_decisions(&mut self) {
        let held: Vec<(String, Decision)> = self
            .shared_services()
            .iter()
            .filter_map(|vs| {
                let d = match (&self.pair, &self.quorum) {
                    (Some(p), _) => p.shared.decision(&vs.name)?,
                    (_, Some(q)) => q.state.last_followed(&vs.name)?.decision(),
                    (None, None) => return None,
                };
                (d.epoch > 0).then_some((vs.name.clone(), d))
            })
            .collect();
        for (service, d) in held {
            self.health.inherit(&self.cfg, &service, d);
        }
    }

    /// The leader turns its checks' verdicts into decisions (a new epoch when one changes),
    /// reporting a change that may lose transactions; every agent logs when its decisions
    /// stop or start being current (rule 5 of `decision::shared`).
    pub(super) fn decide(&mut self, now: Instant) {
        let proposals: Vec<(String, Placement)> = self
            .shared_services()
            .iter()
            .map(|vs| {
                let local = self.health.verdicts().get(&vs.name);
                let want = Placement {
                    sorry: local.is_some_and(|v| v.hold_sorry),
                    switched: self.health.switched(&vs.name),
                };
                (vs.name.clone(), want)
            })
            .collect();
        if self.quorum.is_some() {
            return self.decide_in_quorum(now, proposals);
        }
        let Some(pair) = &mut self.pair else {
            return;
        };
        let current = pair.shared.current(now);
        if current != pair.was_current {
            pair.was_current = current;
            if current {
                tracing::info!("writer decisions current again: the data plane follows them");
            } else {
                tracing::warn!(
                    "writer decisions not current (the peer unheard for {:?}): the writes of the shared services wait",
                    lb_agent::decision::shared::SILENCE
                );
            }
        }
        let mut moved = Vec::new();
        for (service, want) in proposals {
            if let Some(Effect::Follow { decision, .. }) = pair.shared.propose(now, &service, want)
            {
                tracing::warn!(
                    service,
                    epoch = decision.epoch,
                    sorry = decision.sorry,
                    switched = decision.switched,
                    "writer decision: {}",
                    if decision.sorry {
                        "the sorry server takes the writes"
                    } else {
                        "the real servers take the writes"
                    }
                );
                moved.push((service, decision.sorry));
            }
        }
        self.report_moves(moved);
    }

    /// What this agent decided is its to report (see `health::risk`): each change of writer
    /// (service, to the sorry server) that may lose transactions.
    pub(super) fn report_moves(&mut self, moved: Vec<(String, bool)>) {
        for (service, sorry) in moved {
            let Some(vs) = self.cfg.service(&service) else {
                continue;
            };
            let why = if sorry {
                risk::failover(&self.health.monitor, vs, self.quorum.is_some())
            } else {
                risk::failback(vs)
            };
            if let Some(why) = why {
                self.health.note_risk(&service, why);
            }
        }
    }

    /// What the data plane follows: the health verdicts, with the pair's decision in place of
    /// this agent's own for every shared service that has one.
    pub(super) fn effective_verdicts(&self) -> Verdicts {
        self.with_decisions(&self.cfg, self.health.verdicts())
    }

    /// `base` (the verdicts of `cfg`'s checks) with the pair's decisions on top: the running
    /// configuration's, or a reload's before it is committed.
    pub(super) fn with_decisions(&self, cfg: &Config, base: &Verdicts) -> Verdicts {
        let mut v = base.clone();
        if let Some(q) = &self.quorum {
            return quorum_decisions(cfg, &q.state, v);
        }
        let Some(pair) = &self.pair else {
            return v;
        };
        let now = Instant::now();
        let settled = pair.shared.settled(now);
        let current = pair.shared.current(now);
        for vs in shared_services(cfg) {
            let e = v.entry(vs.name.clone()).or_default();
            e.leased = true;
            match pair.shared.decision(&vs.name).filter(|d| d.epoch > 0) {
                Some(d) => {
                    e.hold_sorry = d.sorry;
                    e.force_primary = !d.sorry;
                    // Not known to be current (cut off from the peer): the writes wait.
                    e.hold_writes |= !current;
                }
                // Not yet known where the writes are: they wait.
                None if !settled => e.hold_writes = true,
                None => {}
            }
        }
        v
    }

    /// Before an evaluation: the shared services whose handover and fencing wait — all of
    /// them on a follower, and on a leader that may not decide yet (not synced): a handover
    /// it ran now would make the sorry server read-only and writable again while the
    /// decision still sends the writes there.
    pub(super) fn pause_side_effects(&mut self, now: Instant) {
        let deciding = match (&self.pair, &self.quorum) {
            (Some(p), _) => p.shared.is_leader() && p.shared.synced(now),
            (_, Some(q)) => q.state.leading(now),
            _ => false,
        };
        // The pair's decision changes are reported in `decide`, not the gates'.
        self.health.set_shared(
            self.shared_services()
                .iter()
                .map(|vs| vs.name.clone())
                .collect(),
        );
        let paused = if deciding {
            Default::default()
        } else {
            self.shared_services()
                .iter()
                .map(|vs| vs.name.clone())
                .collect()
        };
        self.health.set_paused(paused);
    }

    /// A datagram from the pair: decisions it moved become this agent's gates (so that, as
    /// leader later, it starts from them) and its data plane's.
    pub async fn on_pair_datagram(&mut self, (bytes, from): Datagram) -> Result<()> {
        let now = Instant::now();
        let Some(pair) = &mut self.pair else {
            return Ok(());
        };
        let (effects, marks) = pair.receive(now, &bytes, from);
        for e in effects {
            let Effect::Follow { service, decision } = e;
            tracing::info!(
                service,
                epoch = decision.epoch,
                sorry = decision.sorry,
                "writer decision received"
            );
            self.health.inherit(&self.cfg, &service, decision);
        }
        self.take_maintenance_words(&marks);
        // Hearing the peer is what makes the decisions current again.
        self.renew_lease()?;
        self.health_step().await
    }

    /// The pair's period: decide (a leader may just have become synced), send (and renew
    /// the lease).
    pub async fn on_pair_timer(&mut self) -> Result<()> {
        self.health_step().await
    }

    /// Renews this agent's lease on its data plane while its decisions are current (see
    /// `xdp_ebpf::maps::SERVICE_LEASED`): with every view sent (once a second, a third of
    /// the lease, and at once on a change) and whenever a peer is heard. A decision that is not current holds the writes by itself; the lease is for
    /// the agent that cannot say so any more (stalled).
    pub(super) fn renew_lease(&mut self) -> Result<()> {
        if let Some(q) = &self.quorum {
            // Exactly as long as the decisions are current: a stalled agent's data plane
            // stops with them, before the quorum lease can expire.
            let now = Instant::now();
            let Some(left) = q
                .state
                .current_until()
                .and_then(|t| t.checked_duration_since(now))
            else {
                return Ok(());
            };
            let until = lb_agent::dataplane::monotonic_ns() + left.as_nanos() as u64;
            return self.dp.maps().set_lease(until);
        }
        let Some(pair) = &self.pair else {
            return Ok(());
        };
        if !pair.shared.current(Instant::now()) {
            return Ok(());
        }
        let until = lb_agent::dataplane::monotonic_ns() + xdp_ebpf::maps::LEASE_NS;
        self.dp.maps().set_lease(until)
    }

    /// When the pair's next send is due, if there is a pair.
    pub fn pair_deadline(&self) -> Option<Instant> {
        self.pair.as_ref().map(|p| p.shared.next_send())
    }

    /// Sends the view when due, and with it renews the lease (every period of the pair).
    pub(super) fn send_pair(&mut self, now: Instant) -> Result<()> {
        let marks = self.maintenance.all();
        if self.pair.as_mut().is_some_and(|p| p.send_due(now, marks)) {
            self.renew_lease()?;
        }
        Ok(())
    }

    /// `status`: each shared service's decision.
    pub(super) fn decision_text(&self, service: &str) -> Option<String> {
        if !self.shared_services().iter().any(|vs| vs.name == service) {
            return None;
        }
        if let Some(q) = &self.quorum {
            return Some(quorum_text(&q.state, service, Instant::now()));
        }
        let pair = self.pair.as_ref()?;
        let who = if pair.shared.is_leader() {
            "this agent decides"
        } else {
            "this agent follows"
        };
        Some(
            match pair.shared.decision(service).filter(|d| d.epoch > 0) {
                Some(d) => format!(
                    "epoch {}: {} ({who})",
                    d.epoch,
                    if d.sorry {
                        "the sorry server has the writes"
                    } else {
                        "the real servers have the writes"
                    }
                ),
                None => format!("none yet: this agent's own checks ({who})"),
            },
        )
    }
}

/// `base` with the committed decisions of etcd on top (`decision::quorum`): a service
/// follows its decision only while it is current, settled and not stale; otherwise its
/// writes wait (the target stays where it last was, so nothing else changes in the maps).
fn quorum_decisions(cfg: &Config, q: &Quorum, mut v: Verdicts) -> Verdicts {
    let now = Instant::now();
    for vs in shared_services(cfg) {
        let e = v.entry(vs.name.clone()).or_default();
        e.leased = true;
        match q.followed(now, &vs.name) {
            Some(d) => {
                e.hold_sorry = d.sorry;
                e.force_primary = !d.sorry;
            }
            None => {
                e.hold_writes = true;
                if let Some(last) = q.last_followed(&vs.name) {
                    e.hold_sorry = last.sorry;
                    e.force_primary = !last.sorry;
                }
            }
        }
    }
    v
}

/// `status`: a service's decision in etcd, and why its writes wait when they do.
fn quorum_text(q: &Quorum, service: &str, now: Instant) -> String {
    let who = match q.leader() {
        Some(l) if l == q.me() => "this agent decides".to_string(),
        Some(l) => format!("{l} decides"),
        None => "nobody holds the leader key".to_string(),
    };
    if !q.current(now) {
        let why = q.last_error.as_deref().unwrap_or("no round with etcd yet");
        return format!("no quorum: the writes wait ({why})");
    }
    match (q.committed(service), q.followed(now, service)) {
        (_, Some(d)) => format!(
            "epoch {}: {} ({who})",
            d.epoch,
            if d.sorry {
                "the sorry server has the writes"
            } else {
                "the real servers have the writes"
            }
        ),
        (Some(c), None) if c.stored.settling => format!(
            "epoch {}: moving the writes to the {}: they wait until every agent holds them ({who})",
            c.stored.epoch,
            if c.stored.sorry {
                "sorry server"
            } else {
                "real servers"
            }
        ),
        (Some(c), None) => format!(
            "epoch {} in etcd is older than one this agent knows (etcd lost its data?): the writes wait for a new decision ({who})",
            c.stored.epoch
        ),
        (None, None) => format!("none yet: the writes wait for the first decision ({who})"),
    }
}
