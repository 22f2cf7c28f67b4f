//! The daemon's view of health: the checks (`Monitor`), one failback gate per service, their
//! latest evaluation, and the MySQL side effects some services ask for: the graceful handover
//! (the sorry server read-only until the writer has all it took) and fencing (the old writer
//! read-only while the sorry server takes the writes). Side effects run as tasks; their
//! results come back as events, so the daemon's loop never waits on a database.

use std::{
    collections::HashSet,
    net::IpAddr,
    time::{Duration, Instant},
};

use anyhow::Result;
use tokio::sync::mpsc;

use super::{
    gtid::Gtids,
    monitor::{Change, Monitor, Report},
    mysql::{self, Target},
    verdict::{self, Evaluation, Fenced},
};
use crate::{
    balancer::{desired::ServiceVerdict, failback::Gate},
    config::{Config, RealServer, VirtualServer},
};

/// How long a graceful handover waits for the writer to execute the sorry server's binary log.
const HANDOVER_WAIT: Duration = Duration::from_secs(5);
/// How long the sorry server's position must stand still (read-only) before the flip.
const SETTLE: Duration = Duration::from_millis(50);
/// After a failed handover, when to try again.
const HANDOVER_RETRY: Duration = Duration::from_secs(1);

/// What the health tasks report to the daemon's loop.
#[derive(Debug)]
pub enum Event {
    Check(Report),
    /// A handover (service index, attempt number) ended.
    Handover(usize, u64, Result<(), String>),
    /// Fencing of a server ended.
    Fence(IpAddr, Result<(), String>),
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
    gates: Vec<(String, Gate)>,
    pub eval: Evaluation,
    tx: mpsc::Sender<Event>,
    handovers: Vec<Handover>,
    attempts: u64,
    fenced: Fenced,
    fencing: HashSet<IpAddr>,
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
    /// Reads the checks of `cfg` (password files included) and starts their tasks.
    /// `adopted_sorry`: per virtual server, whether an adopted data plane has it on its sorry
    /// server (`None`: nothing adopted; see `verdict::gates`).
    pub fn start(
        cfg: &Config,
        tx: mpsc::Sender<Event>,
        adopted_sorry: &[Option<bool>],
        now: Instant,
    ) -> Result<HealthState> {
        let monitor = Monitor::new(cfg)?;
        monitor.spawn(tx.clone());
        let mut gates = verdict::gates(cfg, &[], adopted_sorry);
        let fenced = Fenced::new();
        let eval = verdict::evaluate(cfg, &monitor, &mut gates, &fenced, now);
        Ok(HealthState {
            monitor,
            gates,
            eval,
            tx,
            handovers: vec![Handover::Idle; cfg.virtual_servers.len()],
            attempts: 0,
            fenced,
            fencing: HashSet::new(),
        })
    }

    /// Starts the gates where an adopted data plane is (see `verdict::gates`).
    pub fn set_adopted(&mut self, cfg: &Config, adopted_sorry: &[Option<bool>], now: Instant) {
        self.gates = verdict::gates(cfg, &[], adopted_sorry);
        self.eval = verdict::evaluate(cfg, &self.monitor, &mut self.gates, &self.fenced, now);
    }

    /// After a reload: new checks (the old tasks end when their channel closes), gates kept
    /// for services that keep their name and policy.
    pub fn reload(&mut self, cfg: &Config, tx: mpsc::Sender<Event>, now: Instant) -> Result<()> {
        let monitor = Monitor::new(cfg)?;
        monitor.spawn(tx.clone());
        self.monitor = monitor;
        self.tx = tx;
        self.gates = verdict::gates(cfg, &self.gates, &[]);
        self.handovers = vec![Handover::Idle; cfg.virtual_servers.len()];
        self.eval = verdict::evaluate(cfg, &self.monitor, &mut self.gates, &self.fenced, now);
        Ok(())
    }

    pub fn verdicts(&self) -> &[ServiceVerdict] {
        &self.eval.verdicts
    }

    /// One event; returns the flip (if a check's up/down changed) and whether anything
    /// changed that needs an evaluation.
    pub fn handle(&mut self, event: Event, now: Instant) -> (Option<Flip>, bool) {
        match event {
            Event::Check(r) => match self.monitor.record(r) {
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
                None => (None, false),
            },
            Event::Handover(i, attempt, result) => {
                if self.handovers.get(i) != Some(&Handover::Running(attempt)) {
                    return (None, false);
                }
                self.handovers[i] = match result {
                    Ok(()) => Handover::Ready,
                    Err(e) => {
                        tracing::warn!(service = %self.gates[i].0, error = %e, "handover back from the sorry server failed; the sorry server keeps the writes");
                        Handover::Failed {
                            retry_at: now + HANDOVER_RETRY,
                        }
                    }
                };
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

    /// Evaluates again; returns the previous verdicts when they changed.
    pub fn evaluate(&mut self, cfg: &Config, now: Instant) -> Option<Vec<ServiceVerdict>> {
        let mut next = verdict::evaluate(cfg, &self.monitor, &mut self.gates, &self.fenced, now);
        for (i, vs) in cfg.virtual_servers.iter().map(|v| v.get_ref()).enumerate() {
            // Fence first, and never while a handover runs: a fence landing after the
            // handover would make the writer read-only under the writes.
            let on_sorry = self.eval.verdicts.get(i).is_some_and(|v| v.hold_sorry)
                || next.verdicts[i].hold_sorry;
            let handing_over = matches!(self.handovers[i], Handover::Running(_) | Handover::Ready);
            if vs.fence && on_sorry && !handing_over {
                self.fence_step(vs);
            }
            if vs.graceful || vs.fence {
                self.handover_step(i, vs, &mut next, now);
            }
        }
        let before = std::mem::replace(&mut self.eval, next);
        (before.verdicts != self.eval.verdicts).then_some(before.verdicts)
    }

    /// Holds the sorry server while a handover runs; starts one when the gate wants the writes
    /// back; lets the flip through once it is done.
    fn handover_step(&mut self, i: usize, vs: &VirtualServer, next: &mut Evaluation, now: Instant) {
        let was_sorry = self.eval.verdicts.get(i).is_some_and(|v| v.hold_sorry);
        let wants_pool = !next.verdicts[i].hold_sorry;
        if !wants_pool {
            self.handovers[i] = Handover::Idle;
            return;
        }
        if !was_sorry {
            return;
        }
        match self.handovers[i] {
            Handover::Ready => {
                self.handovers[i] = Handover::Idle;
                // The writer is writable again (the handover lifted its fence).
                for rs in &vs.real_servers {
                    self.fenced.remove(&rs.address);
                }
                if vs.graceful
                    && let Some(t) = self.target(vs, vs.sorry_server.as_ref())
                {
                    // Runs after this evaluation's maps are written: the writes are on the
                    // writer before the sorry server accepts any again.
                    tokio::spawn(async move {
                        if let Err(e) = mysql::set_read_only(&t, false).await {
                            tracing::error!(server = %t.addr, error = %e, "could not make the sorry server writable again after the handover");
                        }
                    });
                }
                tracing::info!(service = %vs.display_name(), "handover done: writes go back to the real servers");
                return;
            }
            // Not while a fence is on its way to one of the writers.
            _ if vs
                .real_servers
                .iter()
                .any(|r| self.fencing.contains(&r.address)) => {}
            Handover::Idle => self.start_handover(i, vs),
            Handover::Failed { retry_at } if now >= retry_at => self.start_handover(i, vs),
            Handover::Running(_) | Handover::Failed { .. } => {}
        }
        let v = &mut next.verdicts[i];
        v.hold_sorry = true;
        let r = &mut next.reports[i];
        r.mode = "sorry".into();
        r.waiting = Some(match self.handovers[i] {
            Handover::Failed { .. } => "handover failed; retrying".into(),
            _ if vs.graceful => {
                "handing over: sorry server read-only until the writer has its writes".into()
            }
            _ => "handing over: lifting the writer's fence".into(),
        });
    }

    fn target(&self, vs: &VirtualServer, rs: Option<&RealServer>) -> Option<Target> {
        self.monitor.mysql_target(self.monitor.check_for(vs, rs?)?)
    }

    fn start_handover(&mut self, i: usize, vs: &VirtualServer) {
        self.attempts += 1;
        let attempt = self.attempts;
        self.handovers[i] = Handover::Running(attempt);
        let sorry = if vs.graceful {
            self.target(vs, vs.sorry_server.as_ref())
        } else {
            None
        };
        let writers: Vec<(Target, bool)> = vs
            .real_servers
            .iter()
            .filter_map(|rs| {
                Some((
                    self.target(vs, Some(rs))?,
                    self.fenced.contains(&rs.address),
                ))
            })
            .collect();
        let tx = self.tx.clone();
        tracing::info!(service = %vs.display_name(), graceful = vs.graceful, "handing the writes back from the sorry server");
        tokio::spawn(async move {
            let result = handover(sorry.as_ref(), &writers).await;
            let _ = tx.send(Event::Handover(i, attempt, result)).await;
        });
    }

    /// Fences every real server that answers and is writable while the sorry server holds
    /// the writes.
    fn fence_step(&mut self, vs: &VirtualServer) {
        for rs in &vs.real_servers {
            let Some(i) = self.monitor.check_for(vs, rs) else {
                continue;
            };
            let c = &self.monitor.checks[i];
            let writable = c.is_up() && c.mysql.as_ref().is_some_and(|m| m.writable());
            if !writable || self.fencing.contains(&rs.address) {
                continue;
            }
            let Some(t) = self.monitor.mysql_target(i) else {
                continue;
            };
            self.fenced.remove(&rs.address);
            self.fencing.insert(rs.address);
            let (tx, addr) = (self.tx.clone(), rs.address);
            tokio::spawn(async move {
                let r = mysql::set_read_only(&t, true).await;
                let _ = tx.send(Event::Fence(addr, r)).await;
            });
        }
    }

    /// The next time a gate or a handover retry wants to be asked again.
    pub fn next_deadline(&self) -> Option<Instant> {
        let retries = self.handovers.iter().filter_map(|h| match h {
            Handover::Failed { retry_at } => Some(*retry_at),
            _ => None,
        });
        self.gates
            .iter()
            .filter_map(|(_, g)| g.poll_timeout())
            .chain(retries)
            .min()
    }

    /// `lb-agent failback SERVICE`.
    pub fn request_failback(&mut self, cfg: &Config, service: &str) -> Result<(), String> {
        let i = self
            .gates
            .iter()
            .position(|(n, _)| n == service)
            .ok_or_else(|| format!("no virtual server named {service:?}"))?;
        let report = &self.eval.reports[i];
        let usable = report.reals.iter().filter(|r| r.usable).count() as u32;
        let quorum = cfg
            .virtual_servers
            .get(i)
            .map_or(1, |vs| vs.get_ref().quorum);
        self.gates[i]
            .1
            .request_failback(crate::balancer::failback::Health {
                usable,
                quorum,
                caught_up: true,
            })
    }
}

/// The handover itself. Graceful: the sorry server read-only, its binary log position read,
/// the writers polled until they have executed it, and again until the position stands still
/// (bounded). Then fenced writers are made writable again. On failure the sorry server is
/// made writable again.
async fn handover(sorry: Option<&Target>, writers: &[(Target, bool)]) -> Result<(), String> {
    let result = async {
        if let Some(s) = sorry {
            mysql::set_read_only(s, true)
                .await
                .map_err(|e| format!("making the sorry server {} read-only: {e}", s.addr))?;
            // read_only stops new writes, but a transaction already open still commits
            // (MariaDB and MySQL let it): wait for the writers to hold the position, then
            // read it again, until it stops moving.
            let deadline = Instant::now() + HANDOVER_WAIT;
            let mut pos = mysql::probe(s, false).await?.binlog_pos;
            loop {
                let want = Gtids::parse(&pos)?;
                for (w, _) in writers {
                    loop {
                        let have = mysql::probe(w, false).await?.executed;
                        if Gtids::parse(&have)?.contains(&want) {
                            break;
                        }
                        if Instant::now() > deadline {
                            return Err(format!(
                                "{} did not reach the sorry server's {pos:?} within {HANDOVER_WAIT:?}",
                                w.addr
                            ));
                        }
                        tokio::time::sleep(Duration::from_millis(20)).await;
                    }
                }
                tokio::time::sleep(SETTLE).await;
                let again = mysql::probe(s, false).await?.binlog_pos;
                if again == pos {
                    break;
                }
                pos = again;
            }
        }
        for (w, fenced) in writers {
            if *fenced {
                mysql::set_read_only(w, false)
                    .await
                    .map_err(|e| format!("lifting the fence of {}: {e}", w.addr))?;
            }
        }
        Ok(())
    }
    .await;
    if result.is_err()
        && let Some(s) = sorry
        && let Err(e) = mysql::set_read_only(s, false).await
    {
        tracing::error!(server = %s.addr, error = %e, "could not make the sorry server writable again");
    }
    result
}
