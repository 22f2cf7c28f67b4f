//! SIGHUP: build everything the new file needs — configuration, health checks (password
//! files), desired state, VRRP sockets — and commit only when every part succeeded. A reload
//! that fails at any stage changes nothing and says why.

use std::time::Instant;

use anyhow::{Result, bail};
use lb_agent::{
    config::Config,
    health::{runner, state::Event as HealthEvent, state::HealthState},
};
use tokio::sync::mpsc;

use super::{
    core::Daemon,
    neighbours::{Resolve, resolve},
};

impl Daemon {
    /// Reloads the configuration file. `Ok(Some(rx))`: committed, health reports now arrive
    /// on `rx`; `Ok(None)`: refused (logged), the running state is untouched.
    pub async fn on_reload(&mut self) -> Result<Reloaded> {
        let now = Instant::now();
        let built = match self.build(now).await {
            Ok(b) => b,
            Err(e) => {
                let why = format!("{e:#}");
                tracing::error!(error = %why, "reload refused, the running configuration stays");
                return Ok(Reloaded::Refused(why));
            }
        };
        let Built {
            cfg,
            health,
            verdicts,
            planner,
            next,
            vrrp,
        } = built;
        // Commit: nothing below can be refused.
        let (tx, rx) = mpsc::channel::<HealthEvent>(256);
        runner::spawn_checks(&health.monitor, &tx);
        self.health = health;
        self.verdicts = verdicts;
        self.health_tx = tx;
        self.planner = planner;
        self.notifier.reload(&cfg);
        for w in &cfg.warnings {
            tracing::warn!("{w}");
        }
        self.cfg = cfg;
        self.vrrp.commit(vrrp, &self.link.handle, now).await;
        self.vrrp.run_actions(&self.link.handle).await?;
        for t in self.vrrp.take_transitions() {
            self.notifier.vrrp(&t);
        }
        let writes = self.apply(next)?;
        tracing::info!(
            writes,
            services = self.state.services.len(),
            vrrp_instances = self.cfg.vrrp_instances.len(),
            "configuration reloaded"
        );
        let summary = format!(
            "configuration reloaded: {} service(s), {} VRRP instance(s), {writes} map write(s)",
            self.state.services.len(),
            self.cfg.vrrp_instances.len()
        );
        Ok(Reloaded::Applied {
            health: rx,
            summary,
        })
    }

    /// Every part of the new configuration, built beside the running one.
    async fn build(&self, now: Instant) -> Result<Built> {
        let cfg = Config::load(&self.config_path)?;
        let (a, b) = (&self.cfg.dataplane, &cfg.dataplane);
        if (&a.interface, a.xdp_mode, &a.pin_dir) != (&b.interface, b.xdp_mode, &b.pin_dir) {
            bail!("dataplane.interface, xdp_mode and pin_dir need a restart");
        }
        if self.cfg.pair != cfg.pair {
            bail!("[pair] needs a restart");
        }
        if self.cfg.quorum != cfg.quorum {
            bail!("[quorum] needs a restart");
        }
        let health = HealthState::reloaded(&self.health, &cfg, now)?;
        // The pair's decisions stay on top of the new checks' verdicts from the first write.
        let verdicts = self.with_decisions(&cfg, health.verdicts());
        let mut planner = self.planner.clone();
        let next = resolve(
            &cfg,
            &self.link,
            Resolve::ProbeAndWait,
            &mut planner,
            &verdicts,
        )
        .await?;
        let vrrp = self.vrrp.prepare(&cfg, &self.link.handle).await?;
        Ok(Built {
            cfg,
            health,
            verdicts,
            planner,
            next,
            vrrp,
        })
    }
}

/// How a reload ended: applied (the new checks report on `health`), or refused with the
/// reason, the running configuration untouched.
pub enum Reloaded {
    Applied {
        health: mpsc::Receiver<HealthEvent>,
        summary: String,
    },
    Refused(String),
}

struct Built {
    cfg: Config,
    health: HealthState,
    verdicts: lb_agent::balancer::desired::Verdicts,
    planner: lb_agent::balancer::ids::Planner,
    next: lb_agent::balancer::desired::DesiredState,
    vrrp: lb_agent::vrrp::driver::Prepared,
}
