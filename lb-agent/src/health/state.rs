//! The daemon's view of health: the table of checks (`Monitor`), one failback gate per
//! service, their latest evaluation, and the MySQL side effects some services ask for: the
//! graceful handover (the sorry server read-only until the writer has all it took) and
//! fencing (the old writer read-only while the sorry server takes the writes).
//!
//! Without I/O: side effects leave as `Action`s for the daemon to run (`runner`), and their
//! results come back as `Event`s, so the daemon's loop never waits on a database. Services are
//! known by name.

use std::{
    collections::{HashMap, HashSet},
    net::IpAddr,
    time::{Duration, Instant},
};

use anyhow::Result;

use super::{
    follow::Followers,
    monitor::{Change, Monitor, Report},
    mysql::{SourceLogin, Target},
    switchover::{self, Switch},
    verdict::{self, AdoptedSorry, Evaluation, Fenced, Gates, Held, Maintenance, ServiceMode},
};
use crate::{
    balancer::desired::Verdicts,
    config::{Config, Real, Service},
    decision::shared::Decision,
};

/// After a failed handover, when to try again: doubling from the first to the last, since
/// every graceful attempt keeps the sorry server read-only for up to `HANDOVER_WAIT` (a
/// writer that cannot catch up must not turn into writes refused most of the time).
const HANDOVER_RETRY: Duration = Duration::from_secs(1);
const HANDOVER_RETRY_MAX: Duration = Duration::from_secs(30);

/// The wait before handover attempt `failures + 1`.
fn handover_backoff(failures: u32) -> Duration {
    HANDOVER_RETRY
        .saturating_mul(1 << failures.saturating_sub(1).min(5))
        .min(HANDOVER_RETRY_MAX)
}

/// What the health tasks report to the daemon's loop.
#[derive(Debug)]
pub enum Event {
    /// Boxed: a MySQL state is large, the other events are small.
    Check(Box<Report>),
    /// A handover (service name, attempt number) ended.
    Handover(String, u64, Result<(), String>),
    /// Fencing of a server ended.
    Fence(IpAddr, Result<(), String>),
    /// A replica's re-pointing (service, replica) ended.
    Repointed(String, IpAddr, Result<(), String>),
    /// A switchover's fence of the writer (service) ended: client sessions killed, how many.
    SwitchFenced(String, Result<usize, String>),
}

/// A side effect for the daemon to run; its result comes back as an `Event`.
#[derive(Debug, Clone)]
pub enum Action {
    /// Set `read_only=1` on a writer that answers while the sorry server has the writes.
    Fence { target: Target },
    /// Hand the writes back from the sorry server (see `runner::handover`).
    Handover {
        service: String,
        attempt: u64,
        /// The sorry server to make read-only first (graceful), if any.
        sorry: Option<Target>,
        /// The writers, and whether each is fenced (its fence is lifted).
        writers: Vec<(Target, bool)>,
    },
    /// Make a server writable again (the sorry server, after the flip of a graceful
    /// handover: run after this evaluation's maps are written).
    MakeWritable { target: Target },
    /// This host's server, while the agent cannot reach the quorum: its clients killed, then
    /// `read_only` (see `mysql::self_fence`).
    SelfFence { target: Target },
    /// A switchover's fence of `service`'s writer: its clients killed, then `read_only`
    /// (the same statements as `SelfFence`); the result comes back as `SwitchFenced`.
    SwitchFence { service: String, target: Target },
    /// With `[quorum]`: stop (`on` false: the server took the writes from the one it
    /// replicates) or start (the writes went back) a sorry server's replication from its
    /// service's writer (see `mysql::set_replicating`).
    SetReplicating { target: Target, on: bool },
    /// A writer that answers while the sorry server has the writes: end the client sessions
    /// that hold row locks there (see `mysql::kill_orphans`).
    KillOrphans { target: Target },
    /// This host's server: end its binary-log dump threads to replicas at `to`, which this
    /// agent cannot reach (see `mysql::end_dumps_to`).
    EndDumps { target: Target, to: Vec<IpAddr> },
    /// A replica of `service` to replicate from `source` (see `health::follow`,
    /// `mysql::repoint`).
    Repoint {
        service: String,
        target: Target,
        source: std::net::SocketAddr,
        login: super::mysql::SourceLogin,
    },
    /// Run check `check` now, besides its schedule (a switchover's reads: see
    /// `switch_step`).
    CheckNow {
        check: usize,
        probe: super::monitor::Probe,
    },
}

/// A service's handover back from its sorry server (with `graceful` or `fence`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Handover {
    Idle,
    Running(u64),
    Ready,
    Failed { retry_at: Instant },
}

pub struct HealthState {
    pub monitor: Monitor,
    gates: Gates,
    pub eval: Evaluation,
    handovers: HashMap<String, Handover>,
    /// Per service: failed handovers in a row and the last one's error (reset when one
    /// succeeds or the gate stays on the sorry server).
    handover_failures: HashMap<String, (u32, String)>,
    attempts: u64,
    fenced: Fenced,
    fencing: HashSet<IpAddr>,
    /// Services whose side effects wait (the pair's writer decision: this agent does not
    /// decide them now): no handover, no fence, and one on its sorry server stays there.
    paused: HashSet<String>,
    /// Per service: the last writer change that may have lost transactions (why, when, in
    /// UTC) and how many since start (see `health::risk`).
    risks: HashMap<String, (String, u64)>,
    /// Writer changes at risk not yet taken by the daemon (to notify).
    new_risks: Vec<(String, String)>,
    /// Services whose writer the pair decides: their changes at risk are the decision's
    /// (`note_risk`), not their gates'.
    shared: HashSet<String>,
    /// Per service with replicas: where each stands (see `follow`), kept across a reload.
    pub followers: HashMap<String, Followers>,
    /// Per service with replicas: how they log in to the writer (password file read at
    /// start and reload, like the checks').
    pub logins: HashMap<String, SourceLogin>,
    /// Replicas that found they cannot follow, not yet taken by the daemon (to alert).
    pub new_follow_failures: Vec<(String, String)>,
    /// Servers in maintenance (`lb-agent maintenance`), kept across a reload (not across a
    /// restart of the agent).
    pub maintenance: HashMap<IpAddr, Maintenance>,
    /// Switchovers under way (`lb-agent switchover`), by service.
    switches: HashMap<String, Switch>,
    /// Per service: why the last switchover failed, for `status` (cleared by the next).
    pub switch_failures: HashMap<String, String>,
}

/// A real server whose check flipped: for notify_up / notify_down.
#[derive(Debug, Clone)]
pub struct Flip {
    pub addr: IpAddr,
    pub port: u16,
    pub up: bool,
    pub reason: Option<String>,
}

impl HealthState {
    /// Reads the checks of `cfg` (password files included); nothing runs yet (the daemon
    /// starts the tasks of `monitor`). `adopted_sorry`: see `verdict::gates`.
    pub fn new(cfg: &Config, adopted_sorry: &AdoptedSorry, now: Instant) -> Result<HealthState> {
        Self::build(cfg, &Gates::new(), adopted_sorry, Fenced::new(), 0, now)
    }

    /// The checks of `cfg` (password files read), its gates seeded from `prior` (by service
    /// name and policy) or an adopted data plane, evaluated once.
    fn build(
        cfg: &Config,
        prior: &Gates,
        adopted_sorry: &AdoptedSorry,
        fenced: Fenced,
        attempts: u64,
        now: Instant,
    ) -> Result<HealthState> {
        let monitor = Monitor::new(cfg)?;
        let logins = replication_logins(cfg)?;
        let mut gates = verdict::gates(cfg, prior, adopted_sorry);
        let eval = verdict::evaluate(cfg, &monitor, &mut gates, &fenced, &Held::default(), now);
        Ok(HealthState {
            monitor,
            gates,
            eval,
            handovers: HashMap::new(),
            handover_failures: HashMap::new(),
            attempts,
            fenced,
            fencing: HashSet::new(),
            paused: HashSet::new(),
            risks: HashMap::new(),
            new_risks: Vec::new(),
            shared: HashSet::new(),
            followers: HashMap::new(),
            logins,
            new_follow_failures: Vec::new(),
            maintenance: HashMap::new(),
            switches: HashMap::new(),
            switch_failures: HashMap::new(),
        })
    }

    /// Starts the gates where an adopted data plane is (see `verdict::gates`), without
    /// reading the checks again.
    pub fn set_adopted(&mut self, cfg: &Config, adopted_sorry: &AdoptedSorry, now: Instant) {
        self.gates = verdict::gates(cfg, &Gates::new(), adopted_sorry);
        self.eval = self.evaluation(cfg, now);
    }

    /// The verdicts of the checks as they stand, through the gates, with what keeps
    /// servers out (`held`).
    fn evaluation(&mut self, cfg: &Config, now: Instant) -> Evaluation {
        let held = self.held(cfg);
        verdict::evaluate(
            cfg,
            &self.monitor,
            &mut self.gates,
            &self.fenced,
            &held,
            now,
        )
    }

    /// The state for a reloaded `cfg`: new checks (password files read again), gates kept
    /// for services that keep their name and policy, what was fenced kept. Changes nothing
    /// here: the daemon commits it only when the whole reload succeeded.
    pub fn reloaded(&self, cfg: &Config, now: Instant) -> Result<HealthState> {
        Self::build(
            cfg,
            &self.gates,
            &AdoptedSorry::new(),
            self.fenced.clone(),
            self.attempts,
            now,
        )
        .map(|mut h| {
            // What was at risk stays reported; replicas keep where they stand (a replica
            // that could not follow stays out until it is seen following).
            h.risks = self.risks.clone();
            h.maintenance = self.maintenance.clone();
            h.followers = cfg
                .services
                .iter()
                .filter(|vs| !vs.replicas.is_empty())
                .filter_map(|vs| Some((vs.name.clone(), self.followers.get(&vs.name)?.clone())))
                .collect();
            h
        })
    }

    pub fn verdicts(&self) -> &Verdicts {
        &self.eval.verdicts
    }

    /// The services whose handovers and fencing wait (see `paused`).
    pub fn set_paused(&mut self, services: HashSet<String>) {
        self.paused = services;
    }

    /// The shared writer decision moved `service` (see `crate::decision`): its failback gate
    /// starts from it — held on the sorry server (the writer must prove it has caught up
    /// before it gets the writes back) or in the pool — instead of from this agent's own
    /// view, which may never have seen the writer fail.
    pub fn inherit(&mut self, cfg: &Config, service: &str, decision: Decision) {
        use crate::balancer::failback::Gate;
        let Some(vs) = cfg.service(service) else {
            return;
        };
        let sorry = decision.sorry;
        if self.eval.holds_sorry(service) == sorry && self.switched(service) == decision.switched {
            return;
        }
        let gate = match (sorry, decision.switched) {
            (true, true) => Gate::switched_over(vs.failback, vs.failback_delay),
            (true, false) => Gate::held(vs.failback, vs.failback_delay),
            (false, _) => Gate::new(vs.failback, vs.failback_delay),
        };
        self.gates.insert(service.to_string(), gate);
        self.handovers.insert(service.to_string(), Handover::Idle);
        if let Some(v) = self.eval.verdicts.get_mut(service) {
            v.hold_sorry = sorry;
        }
        tracing::info!(
            service,
            sorry,
            switched = decision.switched,
            "failback gate taken from the shared writer decision"
        );
    }

    /// `service` is on its sorry server by an operator's switchover (until switched back):
    /// what a leader's decision carries to the other agents.
    pub fn switched(&self, service: &str) -> bool {
        self.gates.get(service).is_some_and(|g| g.switched())
    }

    /// One event; returns the flip (if a check's up/down changed) and whether anything
    /// changed that needs an evaluation.
    pub fn handle(&mut self, event: Event, now: Instant) -> (Option<Flip>, bool) {
        match event {
            Event::Check(r) => match self.record(*r) {
                Some(Change { check, up }) => {
                    let c = &self.monitor.checks[check];
                    let flip = up.map(|up| Flip {
                        addr: c.addr,
                        port: c.port,
                        up,
                        reason: c.reason.clone(),
                    });
                    (flip, true)
                }
                // A result that only confirms the last one still matters while a service is
                // held on its sorry server (`caught-up` waits for a check of the writer that
                // ran after the sorry server's, whatever it reads) or waits for its sorry
                // server to drain (for a check of it that started after the writer failed).
                None => (
                    None,
                    self.eval
                        .verdicts
                        .values()
                        .any(|v| v.hold_sorry || v.hold_writes),
                ),
            },
            Event::Handover(service, attempt, result) => {
                let Some(h) = self.handovers.get_mut(&service) else {
                    return (None, false);
                };
                if *h != Handover::Running(attempt) {
                    return (None, false);
                }
                *h = match result {
                    Ok(()) => {
                        self.handover_failures.remove(&service);
                        Handover::Ready
                    }
                    Err(e) => {
                        let failed = self
                            .handover_failures
                            .entry(service.clone())
                            .or_insert((0, String::new()));
                        failed.0 += 1;
                        let wait = handover_backoff(failed.0);
                        tracing::warn!(service, error = %e, failures = failed.0, retry_in = ?wait, "handover back from the sorry server failed; the sorry server keeps the writes");
                        failed.1 = e;
                        Handover::Failed {
                            retry_at: now + wait,
                        }
                    }
                };
                (None, true)
            }
            Event::Repointed(service, replica, result) => {
                let Some(f) = self.followers.get_mut(&service) else {
                    return (None, false);
                };
                match f.repointed(replica, result) {
                    Some(why) => {
                        tracing::error!(service, replica = %replica, "{why}; it leaves the read pool and is not touched again until it replicates from the writer");
                        self.new_follow_failures
                            .push((service, format!("replica {replica}: {why}")));
                    }
                    None => {
                        tracing::info!(service, replica = %replica, "re-pointed; waiting for its replication threads")
                    }
                }
                (None, true)
            }
            Event::SwitchFenced(service, result) => {
                let Some(sw) = self.switches.get_mut(&service) else {
                    return (None, false);
                };
                sw.fencing = false;
                match result {
                    Ok(killed) => {
                        tracing::warn!(
                            service,
                            killed,
                            "switchover: the writer is fenced (clients disconnected, read_only=1); waiting for the sorry server to have all it committed"
                        );
                        sw.fenced_at = Some(now);
                    }
                    Err(e) => sw.failed = Some(format!("could not fence the writer: {e}")),
                }
                (None, true)
            }
            Event::Fence(addr, result) => {
                self.fencing.remove(&addr);
                match result {
                    Ok(()) => {
                        tracing::warn!(server = %addr, "fenced: set read_only=1 while the sorry server takes the writes");
                        self.fenced.insert(addr);
                    }
                    Err(e) => tracing::warn!(server = %addr, error = %e, "fencing failed"),
                }
                (None, true)
            }
        }
    }

    /// A check result through the monitor, logging (once, until a real result) a run the
    /// agent could not make itself.
    fn record(&mut self, r: Report) -> Option<Change> {
        let check = r.check;
        let had = self
            .monitor
            .checks
            .get(check)
            .is_some_and(|c| c.local_error.is_some());
        let change = self.monitor.record(r);
        if let Some(c) = self.monitor.checks.get(check) {
            match (&c.local_error, had) {
                (Some(why), false) => tracing::warn!(
                    server = %c.addr,
                    port = c.port,
                    "check could not run (the agent's own resources; the server's verdict stands): {why}"
                ),
                (None, true) => tracing::info!(server = %c.addr, port = c.port, "check runs again"),
                _ => {}
            }
        }
        change
    }

    /// Evaluates again; returns the previous verdicts when they changed, and the side
    /// effects to run.
    pub fn evaluate(&mut self, cfg: &Config, now: Instant) -> Vec<Action> {
        let mut actions = Vec::new();
        self.switch_step(cfg, now, &mut actions);
        let mut next = self.evaluation(cfg, now);
        self.record_risks(&mut next);
        self.hold_switching(&mut next);
        for vs in &cfg.services {
            // Fence first, and never while a handover runs: a fence landing after the
            // handover would make the writer read-only under the writes.
            let on_sorry = self.eval.holds_sorry(&vs.name) || next.holds_sorry(&vs.name);
            let handing_over = matches!(
                self.handover(&vs.name),
                Handover::Running(_) | Handover::Ready
            );
            if self.paused.contains(&vs.name) {
                // Not ours to decide now: a service on its sorry server stays there (its
                // handover is the deciding agent's), and nothing is fenced.
                if self.eval.holds_sorry(&vs.name)
                    && let Some(v) = next.verdicts.get_mut(&vs.name)
                {
                    v.hold_sorry = true;
                }
                continue;
            }
            if (vs.fence || vs.graceful) && on_sorry && !handing_over {
                self.adopt_fences(vs);
            }
            if vs.fence && on_sorry && !handing_over {
                self.fence_step(vs, &mut actions);
            }
            if vs.graceful || vs.fence {
                self.handover_step(vs, &mut next, now, &mut actions);
            }
        }
        self.eval = next;
        actions
    }

    /// What keeps servers out besides their checks; a server whose maintenance ended is
    /// back (and forgotten here) once it has caught up.
    fn held(&mut self, cfg: &Config) -> Held {
        let monitor = &self.monitor;
        self.maintenance.retain(|addr, mt| {
            *mt == Maintenance::On || {
                let state = cfg
                    .servers_at(*addr)
                    .find_map(|r| monitor.checked(r).filter(|c| c.is_up()));
                let caught_up = state.is_some_and(|c| Maintenance::caught_up(c.mysql.as_ref()));
                if caught_up {
                    tracing::info!(server = %addr, "maintenance over: caught up, back in its pools");
                }
                !caught_up
            }
        });
        let eval = &self.eval;
        let quarantined = verdict::errant_writers(cfg, monitor, &|s| eval.holds_sorry(s))
            .into_iter()
            .map(|e| {
                (
                    e.addr,
                    format!(
                        "errant transactions {} (the writer of {} is back with what its sorry \
                         server lacks): out until rebuilt",
                        e.gtids, e.service
                    ),
                )
            })
            .collect();
        Held {
            cannot_follow: self.cannot_follow(),
            maintenance: self.maintenance.clone(),
            quarantined,
        }
    }

    /// `lb-agent maintenance SERVER on|off`: refused for a server that has the writes of a
    /// service (it would move them unplanned: a switchover is the way, and there is none yet)
    /// and for one this configuration does not know.
    /// `on_sorry`: the services whose writes the data plane sends to their sorry server.
    pub fn set_maintenance(
        &mut self,
        cfg: &Config,
        on_sorry: &HashSet<String>,
        server: IpAddr,
        on: bool,
    ) -> Result<String, String> {
        let known = cfg.services.iter().any(|vs| {
            vs.members().any(|(_, r)| r.address == server) || vs.replicas.contains(&server)
        });
        if !known {
            return Err(format!("{server} is no server of this configuration"));
        }
        if !on {
            return Ok(match self.maintenance.get_mut(&server) {
                Some(mt) => {
                    *mt = Maintenance::Returning;
                    format!("{server}: maintenance ended; back once it replicates with no lag")
                }
                None => format!("{server} is not in maintenance"),
            });
        }
        for vs in cfg.services.iter().filter(|vs| vs.sorry.is_some()) {
            if vs.reals.iter().any(|r| r.address == server) && !on_sorry.contains(&vs.name) {
                return Err(format!(
                    "{server} has the writes of {}: maintenance would move them unplanned \
                     (switch them over first: `lb-agent switchover {}`)",
                    vs.name, vs.name
                ));
            }
        }
        self.maintenance.insert(server, Maintenance::On);
        let sorry_of: Vec<&str> = cfg
            .services
            .iter()
            .filter(|vs| vs.sorry.as_ref().is_some_and(|s| s.address == server))
            .map(|vs| vs.name.as_str())
            .collect();
        Ok(if sorry_of.is_empty() {
            format!("{server}: in maintenance (drained; established connections go on)")
        } else {
            format!(
                "{server}: in maintenance (drained); still the sorry server of {}: a writer \
                 failure sends the writes here",
                sorry_of.join(", ")
            )
        })
    }

    /// Another agent's operator word (see `decision::maintenance`): taken as said here,
    /// without this agent's refusals (they were that agent's to make). Returns what changed.
    pub fn maintenance_from_peer(&mut self, server: IpAddr, on: bool) -> Option<String> {
        if on {
            let was = self.maintenance.insert(server, Maintenance::On);
            (was != Some(Maintenance::On)).then(|| format!("{server}: in maintenance (drained)"))
        } else {
            let mt = self.maintenance.get_mut(&server)?;
            (*mt == Maintenance::On).then(|| {
                *mt = Maintenance::Returning;
                format!("{server}: maintenance ended; back once it replicates with no lag")
            })
        }
    }

    /// Whether `server` is in maintenance (its re-pointing waits).
    pub fn in_maintenance(&self, server: IpAddr) -> bool {
        self.maintenance.contains_key(&server)
    }

    /// Every replica that cannot follow its service's writer, with why: out of every read
    /// pool.
    pub fn cannot_follow(&self) -> HashMap<IpAddr, String> {
        self.followers
            .values()
            .flat_map(|f| f.cannot_follow())
            .map(|(a, why)| (a, why.to_string()))
            .collect()
    }

    /// Replicas that just found they cannot follow (to alert once): taken.
    pub fn take_follow_failures(&mut self) -> Vec<(String, String)> {
        std::mem::take(&mut self.new_follow_failures)
    }

    /// The services whose writer the pair decides (see `shared`).
    pub fn set_shared(&mut self, services: HashSet<String>) {
        self.shared = services;
    }

    /// A writer change that may lose transactions, decided outside the gates (the pair's
    /// leader moved `service`'s writes).
    pub fn note_risk(&mut self, service: &str, why: String) {
        let when = utc(std::time::SystemTime::now());
        let r = self.risks.entry(service.to_string()).or_default();
        *r = (format!("{when}: {why}"), r.1 + 1);
        self.new_risks.push((service.to_string(), why));
        if let Some(report) = self.eval.report_mut(service) {
            report.writer_risk = Some(r.0.clone());
            report.writer_risks = r.1;
        }
    }

    /// Keeps the writer changes at risk of the services this agent decides alone (the
    /// pair's are reported with its decisions), and shows the last one of each in its
    /// report.
    fn record_risks(&mut self, next: &mut Evaluation) {
        for (service, why) in std::mem::take(&mut next.risks) {
            if self.paused.contains(&service) || self.shared.contains(&service) {
                continue;
            }
            self.note_risk(&service, why);
        }
        for report in &mut next.reports {
            if let Some((why, n)) = self.risks.get(&report.name) {
                report.writer_risk = Some(why.clone());
                report.writer_risks = *n;
            }
        }
    }

    /// Writer changes that may have lost transactions since the last call: (service, why).
    pub fn take_risks(&mut self) -> Vec<(String, String)> {
        std::mem::take(&mut self.new_risks)
    }

    /// Whether a handover back from `service`'s sorry server is under way (or will retry).
    pub fn handing_over(&self, service: &str) -> bool {
        self.handover(service) != Handover::Idle
    }

    fn handover(&self, service: &str) -> Handover {
        self.handovers
            .get(service)
            .copied()
            .unwrap_or(Handover::Idle)
    }

    /// Holds the sorry server while a handover runs; starts one when the gate wants the writes
    /// back; lets the flip through once it is done.
    fn handover_step(
        &mut self,
        vs: &Service,
        next: &mut Evaluation,
        now: Instant,
        actions: &mut Vec<Action>,
    ) {
        let was_sorry = self.eval.holds_sorry(&vs.name);
        let wants_pool = !next.holds_sorry(&vs.name);
        if !wants_pool {
            self.handovers.insert(vs.name.clone(), Handover::Idle);
            self.handover_failures.remove(&vs.name);
            return;
        }
        if !was_sorry {
            return;
        }
        match self.handover(&vs.name) {
            Handover::Ready => {
                self.handovers.insert(vs.name.clone(), Handover::Idle);
                // The writer is writable again (the handover lifted its fence).
                for rs in &vs.reals {
                    self.fenced.remove(&rs.address);
                }
                if vs.graceful
                    && let Some(target) = self.target(vs.sorry.as_ref())
                {
                    // After this evaluation's maps are written: the writes are on the
                    // writer before the sorry server accepts any again.
                    actions.push(Action::MakeWritable { target });
                }
                tracing::info!(service = %vs.name, "handover done: writes go back to the real servers");
                return;
            }
            // Not while a fence is on its way to one of the writers.
            _ if vs.reals.iter().any(|r| self.fencing.contains(&r.address)) => {}
            Handover::Idle => actions.push(self.start_handover(vs)),
            Handover::Failed { retry_at } if now >= retry_at => {
                actions.push(self.start_handover(vs))
            }
            Handover::Running(_) | Handover::Failed { .. } => {}
        }
        if let Some(v) = next.verdicts.get_mut(&vs.name) {
            v.hold_sorry = true;
        }
        let failed = match self.handover(&vs.name) {
            Handover::Failed { retry_at } => self
                .handover_failures
                .get(&vs.name)
                .map(|(n, e)| (*n, e.clone(), retry_at.saturating_duration_since(now))),
            _ => None,
        };
        if let Some(r) = next.report_mut(&vs.name) {
            r.mode = ServiceMode::Sorry;
            r.waiting = Some(if let Some((n, e, wait)) = failed {
                format!("handover failed {n} time(s) in a row ({e}); next try in {wait:.0?}")
            } else if vs.graceful {
                "handing over: sorry server read-only until the writer has its writes".into()
            } else {
                "handing over: lifting the writer's fence".into()
            });
        }
    }

    fn target(&self, rs: Option<&Real>) -> Option<Target> {
        self.monitor.mysql_target(rs?)
    }

    fn start_handover(&mut self, vs: &Service) -> Action {
        self.attempts += 1;
        let attempt = self.attempts;
        self.handovers
            .insert(vs.name.clone(), Handover::Running(attempt));
        let sorry = if vs.graceful {
            self.target(vs.sorry.as_ref())
        } else {
            None
        };
        let writers: Vec<(Target, bool)> = vs
            .reals
            .iter()
            .filter_map(|rs| Some((self.target(Some(rs))?, self.fenced.contains(&rs.address))))
            .collect();
        tracing::info!(service = %vs.name, graceful = vs.graceful, "handing the writes back from the sorry server");
        Action::Handover {
            service: vs.name.clone(),
            attempt,
            sorry,
            writers,
        }
    }

    /// A writer found read-only while the sorry server holds the writes is fenced already —
    /// by the other agent (this one took the decision over from it), by this agent before a
    /// restart, by a switchover, or by its own configuration (`read_only=ON` at start): the
    /// fence is taken as this agent's, so that the writer counts for the failback and the
    /// handover lifts it. Without this, an agent that did not set the fence itself judged
    /// the writer "read_only=1: not writable" and never handed the writes back.
    fn adopt_fences(&mut self, vs: &Service) {
        for rs in &vs.reals {
            let read_only = self.monitor.answering(rs).is_some_and(|m| !m.writable());
            if read_only && !self.fencing.contains(&rs.address) && self.fenced.insert(rs.address) {
                tracing::info!(
                    service = %vs.name,
                    server = %rs.address,
                    "the writer is read-only while the sorry server has the writes: taken as this agent's fence (the handover back lifts it)"
                );
            }
        }
    }

    /// Fences every real server that answers and is writable while the sorry server holds
    /// the writes.
    fn fence_step(&mut self, vs: &Service, actions: &mut Vec<Action>) {
        for rs in &vs.reals {
            let writable = self.monitor.answering(rs).is_some_and(|m| m.writable());
            if !writable || self.fencing.contains(&rs.address) {
                continue;
            }
            let Some(target) = self.monitor.mysql_target(rs) else {
                continue;
            };
            self.fenced.remove(&rs.address);
            self.fencing.insert(rs.address);
            actions.push(Action::Fence { target });
        }
    }

    /// The next time a gate or a handover retry wants to be asked again.
    pub fn next_deadline(&self) -> Option<Instant> {
        let retries = self.handovers.values().filter_map(|h| match h {
            Handover::Failed { retry_at } => Some(*retry_at),
            _ => None,
        });
        self.gates
            .values()
            .filter_map(|g| g.poll_timeout())
            .chain(retries)
            .min()
    }

    /// `lb-agent switchover SERVICE [--to SERVER]`: to the sorry server (the default), or
    /// back to the writer from a switchover. Refused, with the reason, for a service this
    /// agent does not decide now, without `graceful` (the way back needs it), with more
    /// than one writer, or when `switchover::refusal` finds the sorry server unfit.
    pub fn request_switchover(
        &mut self,
        cfg: &Config,
        service: &str,
        to: Option<IpAddr>,
        now: Instant,
    ) -> Result<String, String> {
        let Some(vs) = cfg.service(service) else {
            return Err(format!("no virtual server named {service:?}"));
        };
        let Some(sorry) = vs.sorry.as_ref() else {
            return Err(format!("{service} has no sorry server to switch over to"));
        };
        let [writer] = vs.reals.as_slice() else {
            return Err(format!(
                "{service} has {} real servers: a switchover needs exactly one writer",
                vs.reals.len()
            ));
        };
        if !vs.graceful {
            return Err(format!(
                "{service}: a switchover needs `graceful = true` (the way back makes the sorry \
                 server read-only until the writer has everything)"
            ));
        }
        if self.paused.contains(service) {
            return Err(format!(
                "this agent does not decide the writer of {service} now: run it on the agent \
                 that does (the VRRP master of {}, or the quorum's leader)",
                vs.address
            ));
        }
        let health = self.operator_health(vs);
        let gate = self.gates.get_mut(service).ok_or("no failback gate")?;
        match to {
            Some(addr) if addr == writer.address => {
                gate.request_switch_back(health)?;
                Ok(format!(
                    "{service}: switching back to {addr}: the sorry server read-only until \
                     {addr} has all it took, then the writes go to {addr}"
                ))
            }
            Some(addr) if addr != sorry.address => Err(format!(
                "{addr} is neither the writer ({}) nor the sorry server ({}) of {service}",
                writer.address, sorry.address
            )),
            _ => {
                if gate.mode() == crate::balancer::failback::Mode::Sorry {
                    return Err(format!(
                        "{service}: the writes are on the sorry server already"
                    ));
                }
                if let Some(why) = switchover::refusal(
                    self.monitor.checked(writer),
                    self.monitor.checked(sorry),
                    writer.address,
                ) {
                    return Err(format!("{service}: refused: {why}"));
                }
                gate.begin_switchover(now)
                    .map_err(|e| format!("{service}: {e}"))?;
                self.switch_failures.remove(service);
                self.switches.insert(service.to_string(), Switch::new(now));
                Ok(format!(
                    "{service}: switching over to {}: the writer {} fenced, the writes wait \
                     until {} has all it committed (at most {:?})",
                    sorry.address,
                    writer.address,
                    sorry.address,
                    switchover::TIMEOUT
                ))
            }
        }
    }

    /// The switchovers under way, one step each: fence the writer once, flip when ready,
    /// or give up (out of time, or a failed step) and lift the writer's fence.
    fn switch_step(&mut self, cfg: &Config, now: Instant, actions: &mut Vec<Action>) {
        let services: Vec<String> = self.switches.keys().cloned().collect();
        for service in services {
            let (Some(vs), Some(gate)) = (cfg.service(&service), self.gates.get_mut(&service))
            else {
                self.switches.remove(&service);
                continue;
            };
            let (Some(writer), Some(sorry)) = (vs.reals.first(), vs.sorry.as_ref()) else {
                self.switches.remove(&service);
                continue;
            };
            // Done (the gate flipped) or overtaken by a failover.
            if gate.switching().is_none() {
                if gate.switched() {
                    tracing::warn!(service, sorry = %sorry.address, "switchover done: the sorry server has the writes");
                }
                self.switches.remove(&service);
                continue;
            }
            let sw = self.switches.get_mut(&service).expect("listed above");
            let failure = sw.failed.clone().or_else(|| {
                sw.timed_out(now)
                    .then(|| format!("not done within {:?} ({})", switchover::TIMEOUT, sw.waiting))
            });
            if let Some(why) = failure {
                gate.abort_switchover();
                let fence_sent = sw.fenced_at.is_some() || sw.fencing || sw.failed.is_some();
                self.switches.remove(&service);
                tracing::error!(service, error = %why, "switchover failed: the writes stay on the writer (its fence lifted)");
                self.switch_failures.insert(service.clone(), why);
                if fence_sent && let Some(target) = self.monitor.mysql_target(writer) {
                    self.fenced.remove(&writer.address);
                    actions.push(Action::MakeWritable { target });
                }
                continue;
            }
            if sw.fenced_at.is_none() {
                if !sw.fencing
                    && let Some(target) = self.monitor.mysql_target(writer)
                {
                    sw.fencing = true;
                    actions.push(Action::SwitchFence {
                        service: service.clone(),
                        target,
                    });
                }
                continue;
            }
            // The handover back lifts the fence of a writer it knows fenced.
            self.fenced.insert(writer.address);
            // The reads the flip waits for, now rather than at the checks' next runs.
            if let Some(fenced_at) = sw.fenced_at {
                let writer_read = self
                    .monitor
                    .checked(writer)
                    .and_then(|c| c.read_started())
                    .is_some_and(|t| t >= fenced_at);
                let (ask, asked) = if writer_read {
                    (sorry, &mut sw.asked_sorry)
                } else {
                    (writer, &mut sw.asked_writer)
                };
                if !*asked && let Some(check) = self.monitor.check_for(ask) {
                    *asked = true;
                    actions.push(Action::CheckNow {
                        check,
                        probe: self.monitor.checks[check].probe.clone(),
                    });
                }
            }
            match switchover::ready(
                sw,
                self.monitor.checked(writer),
                self.monitor.checked(sorry),
            ) {
                Ok(()) => gate.switch_now(),
                Err(why) => {
                    if why == switchover::NOT_WRITABLE
                        && !sw.lifting
                        && let Some(target) = self.monitor.mysql_target(sorry)
                    {
                        sw.lifting = true;
                        actions.push(Action::MakeWritable { target });
                    }
                    sw.waiting = why;
                }
            }
        }
    }

    /// While a switchover runs, the service's writes wait (new connections held, not sent to
    /// a writer that refuses them), and its report says what it waits for.
    fn hold_switching(&self, next: &mut Evaluation) {
        for (service, sw) in &self.switches {
            if let Some(v) = next.verdicts.get_mut(service) {
                v.hold_writes = true;
            }
            if let Some(r) = next.report_mut(service) {
                r.waiting = Some(format!("switching over: {}", sw.waiting));
            }
        }
    }

    /// `status`: where a planned switchover of `service` stands, if one ran.
    pub fn switchover_status(&self, service: &str) -> Option<String> {
        if let Some(sw) = self.switches.get(service) {
            return Some(format!("under way: {}", sw.waiting));
        }
        if self.gates.get(service).is_some_and(|g| g.switched()) {
            return Some(
                "switched over: the sorry server has the writes until `lb-agent switchover \
                 SERVICE --to WRITER`"
                    .into(),
            );
        }
        self.switch_failures
            .get(service)
            .map(|why| format!("failed: {why}"))
    }

    /// `lb-agent failback SERVICE`.
    pub fn request_failback(&mut self, cfg: &Config, service: &str) -> Result<(), String> {
        let Some(vs) = cfg.service(service) else {
            return Err(format!("no virtual server named {service:?}"));
        };
        let health = self.operator_health(vs);
        let Some(gate) = self.gates.get_mut(service) else {
            return Err(format!("no virtual server named {service:?}"));
        };
        gate.request_failback(health)
    }

    /// What an operator's way back from the sorry server is judged on: the real servers of
    /// `vs` usable in the last evaluation, against its quorum.
    fn operator_health(&self, vs: &Service) -> crate::balancer::failback::Health {
        let usable = self
            .eval
            .reports
            .iter()
            .find(|r| r.name == vs.name)
            .map_or(0, |r| r.reals.iter().filter(|r| r.usable).count() as u32);
        crate::balancer::failback::Health::new(usable, vs.quorum, true)
    }
}

/// `2026-12-01T23:05:09Z` (civil-from-days, Howard Hinnant's algorithm).
fn utc(t: std::time::SystemTime) -> String {
    let secs = t
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let (days, rem) = ((secs / 86_400) as i64, secs % 86_400);
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1_460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}Z",
        rem / 3600,
        rem / 60 % 60,
        rem % 60
    )
}

/// The replication logins of the services with replicas, their password files read now
/// (the same rules as a check's: see `crate::secret`); a refusal stops the start or reload.
fn replication_logins(cfg: &Config) -> Result<HashMap<String, SourceLogin>> {
    let mut out = HashMap::new();
    for vs in &cfg.services {
        let Some(r) = &vs.replication else { continue };
        let password = super::mysql::read_password(&r.password_file)
            .map_err(|e| anyhow::anyhow!("{} replication: {e}", vs.name))?;
        let login = SourceLogin::new(&r.user, &password)
            .map_err(|e| anyhow::anyhow!("{}: {e}", vs.name))?;
        out.insert(vs.name.clone(), login);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    #[test]
    fn failed_handovers_back_off_to_half_a_minute() {
        let waits: Vec<u64> = (1..=8).map(|n| handover_backoff(n).as_secs()).collect();
        assert_eq!(waits, [1, 2, 4, 8, 16, 30, 30, 30]);
    }

    #[test]
    fn utc_times_read_as_dates() {
        let at = |s| std::time::UNIX_EPOCH + Duration::from_secs(s);
        assert_eq!(super::utc(at(0)), "1970-01-01T00:00:00Z");
        assert_eq!(super::utc(at(951_782_400)), "2000-02-29T00:00:00Z");
        assert_eq!(super::utc(at(1_796_166_309)), "2026-12-01T23:05:09Z");
    }

    use super::*;
    use crate::health::{
        monitor::{Outcome, Report},
        verdict::tests::{mysql, setup},
    };

    /// A passing MySQL check of `check` at `at` (`read_only`; replicating from `source`,
    /// caught up, when given), then an evaluation: its actions.
    fn mysql_up(
        h: &mut HealthState,
        cfg: &Config,
        check: usize,
        read_only: bool,
        source: Option<&str>,
        at: Instant,
    ) -> Vec<Action> {
        let mut outcome = mysql("0-1-4", read_only, source.is_some());
        if let Outcome::Up {
            mysql: Some(st), ..
        } = &mut outcome
            && let Some(r) = st.replica.as_mut()
        {
            r.source_host = source.unwrap_or_default().into();
            r.received = "0-1-4".into();
        }
        h.handle(
            Event::Check(Box::new(Report {
                check,
                outcome,
                started: at,
                at,
            })),
            at,
        );
        h.evaluate(cfg, at)
    }

    /// As the daemon does: handle, and evaluate when told to.
    fn feed(h: &mut HealthState, cfg: &Config, check: usize, at: Instant) {
        let (_, changed) = h.handle(
            Event::Check(Box::new(Report {
                check,
                outcome: mysql("0-1-4", false, true),
                started: at,
                at,
            })),
            at,
        );
        if changed {
            h.evaluate(cfg, at);
        }
    }

    #[test]
    fn a_held_gate_opens_on_results_that_change_nothing() {
        let (cfg, _, _) = setup("caught-up");
        let t0 = Instant::now();
        // A fresh start of a `caught-up` service: held until the writer proves it.
        let mut h = HealthState::new(&cfg, &AdoptedSorry::new(), t0).unwrap();
        let at = |ms| t0 + Duration::from_millis(ms);
        feed(&mut h, &cfg, 0, at(100));
        feed(&mut h, &cfg, 1, at(200));
        assert!(h.verdicts()["write"].hold_sorry, "db1 was read before db2");
        // The same reads again (no writes anywhere): db1's next check is after db2's.
        feed(&mut h, &cfg, 0, at(300));
        assert!(!h.verdicts()["write"].hold_sorry, "{:?}", h.eval.reports);
    }

    /// A switchover asks for the fence first and holds the writes; a failed fence ends it
    /// with the writer made writable again and the reason in `status`.
    #[test]
    fn a_failed_switchover_lifts_the_writers_fence() {
        let (plain, _, _) = setup("caught-up");
        let t0 = Instant::now();
        let mut h = HealthState::new(&plain, &AdoptedSorry::new(), t0).unwrap();
        let refused = h.request_switchover(&plain, "write", None, t0).unwrap_err();
        assert!(refused.contains("graceful"), "{refused}");
        // The same service with `graceful = true` (spliced in after the policy's value).
        let (cfg, _, _) = setup("immediate\"\ngraceful = true\n#");
        let mut h = HealthState::new(&cfg, &AdoptedSorry::new(), t0).unwrap();
        let at = |ms| t0 + Duration::from_millis(ms);
        let up = |h: &mut HealthState, check, read_only, source: Option<&str>, ms| {
            mysql_up(h, &cfg, check, read_only, source, at(ms));
        };
        // A fresh start is held on the sorry server until db1 is read after db2.
        up(&mut h, 0, false, None, 100);
        up(&mut h, 1, false, Some("10.0.0.1"), 200);
        up(&mut h, 0, false, None, 250);
        // (graceful: through a handover, which succeeds here)
        let attempt = h.attempts;
        h.handle(Event::Handover("write".into(), attempt, Ok(())), at(260));
        h.evaluate(&cfg, at(260));
        assert!(!h.verdicts()["write"].hold_sorry, "{:?}", h.eval.reports);
        h.request_switchover(&cfg, "write", None, at(300)).unwrap();
        let actions = h.evaluate(&cfg, at(300));
        assert!(
            matches!(&actions[..], [Action::SwitchFence { service, .. }] if service == "write"),
            "{actions:?}"
        );
        assert!(
            h.verdicts()["write"].hold_writes,
            "the writes wait meanwhile"
        );
        assert!(
            h.switchover_status("write")
                .unwrap()
                .starts_with("under way")
        );
        assert!(h.evaluate(&cfg, at(350)).is_empty(), "one fence");
        h.handle(
            Event::SwitchFenced("write".into(), Err("lock wait timeout".into())),
            at(400),
        );
        let actions = h.evaluate(&cfg, at(400));
        assert!(
            matches!(&actions[..], [Action::MakeWritable { target }] if target.addr.ip().to_string() == "10.0.0.1"),
            "{actions:?}"
        );
        assert!(!h.verdicts()["write"].hold_writes && !h.verdicts()["write"].hold_sorry);
        let said = h.switchover_status("write").unwrap();
        assert!(
            said.starts_with("failed") && said.contains("lock wait"),
            "{said}"
        );
    }

    /// The switchover's target reads read-only when it has everything: it is made writable
    /// (once) before the flip — the writes must not meet a read-only server.
    #[test]
    fn a_switchover_lifts_a_read_only_targets_fence_before_the_flip() {
        let (cfg, _, _) = setup("immediate\"\ngraceful = true\n#");
        let t0 = Instant::now();
        let at = |ms| t0 + Duration::from_millis(ms);
        let mut h = HealthState::new(&cfg, &AdoptedSorry::new(), t0).unwrap();
        let up = |h: &mut HealthState, check, read_only, source: Option<&str>, ms| {
            mysql_up(h, &cfg, check, read_only, source, at(ms))
        };
        up(&mut h, 0, false, None, 100);
        up(&mut h, 1, false, Some("10.0.0.1"), 200);
        up(&mut h, 0, false, None, 250);
        let attempt = h.attempts;
        h.handle(Event::Handover("write".into(), attempt, Ok(())), at(260));
        h.evaluate(&cfg, at(260));
        assert!(!h.verdicts()["write"].hold_sorry);
        h.request_switchover(&cfg, "write", None, at(300)).unwrap();
        h.evaluate(&cfg, at(300));
        h.handle(Event::SwitchFenced("write".into(), Ok(1)), at(310));
        // The two reads the flip waits for are asked for at once, each once.
        let asked = |a: &Vec<Action>| -> Vec<usize> {
            a.iter()
                .filter_map(|a| match a {
                    Action::CheckNow { check, .. } => Some(*check),
                    _ => None,
                })
                .collect()
        };
        assert_eq!(asked(&h.evaluate(&cfg, at(310))), [0], "the writer's");
        assert_eq!(asked(&h.evaluate(&cfg, at(320))), [] as [usize; 0]);
        assert_eq!(
            asked(&up(&mut h, 0, true, None, 400)),
            [1],
            "the sorry server's"
        );
        let lift = |a: &Vec<Action>| {
            a.iter()
                .filter(|a| matches!(a, Action::MakeWritable { target } if target.addr.ip().to_string() == "10.0.0.2"))
                .count()
        };
        let actions = up(&mut h, 1, true, Some("10.0.0.1"), 500);
        assert_eq!(lift(&actions), 1, "{actions:?}");
        assert!(
            !h.verdicts()["write"].hold_sorry,
            "no flip onto a read-only server"
        );
        let again = up(&mut h, 1, true, Some("10.0.0.1"), 600);
        assert_eq!(lift(&again), 0, "lifted once");
        up(&mut h, 1, false, Some("10.0.0.1"), 700);
        assert!(h.verdicts()["write"].hold_sorry, "{:?}", h.eval.reports);
    }

    /// An agent that did not fence the writer itself (it took the decision over, or it
    /// restarted) finds it read-only while the sorry server has the writes: that fence is
    /// taken as its own, the writer counts for the failback, and the handover lifts it —
    /// instead of "read_only=1: not writable" for ever.
    #[test]
    fn a_writer_found_read_only_on_the_sorry_server_is_handed_back() {
        let (cfg, _, _) = setup("immediate\"\ngraceful = true\n#");
        let t0 = Instant::now();
        let at = |ms| t0 + Duration::from_millis(ms);
        let mut h = HealthState::new(&cfg, &AdoptedSorry::new(), t0).unwrap();
        let up = |h: &mut HealthState, check, read_only, source: Option<&str>, ms| {
            mysql_up(h, &cfg, check, read_only, source, at(ms))
        };
        // db1 answers read-only: unusable, the writes go to the sorry server (once drained).
        up(&mut h, 1, false, Some("10.0.0.1"), 100);
        up(&mut h, 0, true, None, 200);
        up(&mut h, 1, false, Some("10.0.0.1"), 250);
        assert!(h.verdicts()["write"].hold_sorry);
        assert!(h.fenced.contains(&"10.0.0.1".parse().unwrap()));
        let actions = up(&mut h, 0, true, None, 300);
        let handover = actions.iter().find_map(|a| match a {
            Action::Handover { writers, .. } => Some(writers.clone()),
            _ => None,
        });
        assert!(
            matches!(&handover.as_deref(), Some([(_, true)])),
            "a handover that lifts the writer's fence: {actions:?}"
        );
    }
}
