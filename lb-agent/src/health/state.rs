//! The daemon's view of health: the checks (`Monitor`), one failback gate per service, and
//! their latest evaluation. The daemon feeds it check reports and time; it answers whether
//! the services' verdicts changed, and what to tell operators.

use std::time::Instant;

use anyhow::Result;
use tokio::sync::mpsc;

use super::{
    monitor::{Change, Monitor, Report},
    verdict::{self, Evaluation},
};
use crate::{
    balancer::{desired::ServiceVerdict, failback::Gate},
    config::Config,
};

pub struct HealthState {
    pub monitor: Monitor,
    gates: Vec<(String, Gate)>,
    pub eval: Evaluation,
}

/// A real server whose check flipped: for notify_up / notify_down.
#[derive(Debug, Clone)]
pub struct Flip {
    pub addr: std::net::IpAddr,
    pub port: u16,
    pub up: bool,
    pub reason: Option<String>,
}

impl HealthState {
    /// Reads the checks of `cfg` (password files included) and starts their tasks.
    pub fn start(cfg: &Config, tx: mpsc::Sender<Report>, now: Instant) -> Result<HealthState> {
        let monitor = Monitor::new(cfg)?;
        monitor.spawn(tx);
        let mut gates = verdict::gates(cfg, &[]);
        let eval = verdict::evaluate(cfg, &monitor, &mut gates, now);
        Ok(HealthState {
            monitor,
            gates,
            eval,
        })
    }

    /// After a reload: new checks (the old tasks end when their channel closes), gates kept
    /// for services that keep their name and policy.
    pub fn reload(&mut self, cfg: &Config, tx: mpsc::Sender<Report>, now: Instant) -> Result<()> {
        let monitor = Monitor::new(cfg)?;
        monitor.spawn(tx);
        self.monitor = monitor;
        self.gates = verdict::gates(cfg, &self.gates);
        self.eval = verdict::evaluate(cfg, &self.monitor, &mut self.gates, now);
        Ok(())
    }

    pub fn verdicts(&self) -> &[ServiceVerdict] {
        &self.eval.verdicts
    }

    /// One check result; returns the flip (if the check's up/down changed) and whether it
    /// changed anything at all.
    pub fn record(&mut self, r: Report) -> (Option<Flip>, bool) {
        match self.monitor.record(r) {
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
        }
    }

    /// Evaluates again; returns the previous verdicts when they changed.
    pub fn evaluate(&mut self, cfg: &Config, now: Instant) -> Option<Vec<ServiceVerdict>> {
        let next = verdict::evaluate(cfg, &self.monitor, &mut self.gates, now);
        let before = std::mem::replace(&mut self.eval, next);
        (before.verdicts != self.eval.verdicts).then_some(before.verdicts)
    }

    /// The next time a gate wants to be asked again (a failback delay ending).
    pub fn next_deadline(&self) -> Option<Instant> {
        self.gates
            .iter()
            .filter_map(|(_, g)| g.poll_timeout())
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
