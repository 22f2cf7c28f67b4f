//! The one owner of the running state: configuration, link, data plane, planner, desired
//! state, health and VRRP, with one method per event. The event loop (`super::serve`) only
//! waits and dispatches.

use std::{collections::HashSet, path::PathBuf, time::Instant};

use anyhow::Result;
use lb_agent::{
    balancer::{
        desired::{DesiredState, Verdicts},
        ids::Planner,
    },
    config::Config,
    control::{self, Reply, Request},
    dataplane::{Dataplane, reconcile},
    health::{
        runner,
        state::{Action, Event as HealthEvent, HealthState},
    },
    notify::Notifier,
    vrrp::{driver::Vrrp, event::Event as VrrpEvent},
};
use tokio::sync::mpsc;

use super::neighbours::{Link, Resolve, resolve};

pub struct Daemon {
    pub config_path: PathBuf,
    pub cfg: Config,
    pub link: Link,
    pub dp: Dataplane,
    /// How the program is attached ("driver", "skb").
    pub attach_mode: String,
    pub planner: Planner,
    /// What the maps hold.
    pub state: DesiredState,
    pub health: HealthState,
    /// Where this configuration's health tasks report (replaced by a reload).
    pub health_tx: mpsc::Sender<HealthEvent>,
    pub vrrp: Vrrp,
    pub notifier: Notifier,
    /// The writer decision shared with the other agent(s) (`[pair]`).
    pub pair: Option<super::pair::PairLink>,
    /// The writer decision kept in etcd (`[quorum]`).
    pub quorum: Option<super::quorum::QuorumLink>,
    /// The self-fence and the deferred writes of `[quorum]`.
    pub fences: super::writer_quorum::Fences,
    /// The operators' maintenance words, shared with the other agent(s).
    pub maintenance: lb_agent::decision::maintenance::Marks,
    /// The verdicts the maps follow (health, with the pair's decisions; see `writer`).
    pub verdicts: Verdicts,
    /// Whether the loop stood still (`super::stall`).
    pub stall: super::stall::StallWatch,
    /// Until when a stop leaves the data plane for the next agent (`lb-agent
    /// prepare-restart`); afterwards a stop is for good again.
    pub restart_prepared_until: Option<Instant>,
}

impl Daemon {
    /// A check result, a handover or a fence ended.
    pub async fn on_health_event(&mut self, event: HealthEvent) -> Result<()> {
        let (flip, changed) = self.health.handle(event, Instant::now());
        if let Some(f) = flip {
            self.notifier.real(&self.cfg, &f);
        }
        if changed {
            self.health_step().await?;
        }
        Ok(())
    }

    /// A failback gate or a handover retry is due.
    pub async fn on_health_deadline(&mut self) -> Result<()> {
        self.health_step().await
    }

    /// An advert or a track-script result.
    pub async fn on_vrrp_event(&mut self, event: VrrpEvent) -> Result<()> {
        self.vrrp.handle_event(Instant::now(), event);
        self.vrrp_step().await
    }

    /// A VRRP timer is due.
    pub async fn on_vrrp_timer(&mut self) -> Result<()> {
        self.vrrp.handle_timeout(Instant::now());
        self.vrrp_step().await
    }

    /// A link, address or neighbour changed (a burst of notifications is one call).
    pub async fn on_netlink_change(&mut self) -> Result<()> {
        self.look_again(Resolve::Look).await
    }

    /// The periodic look at links and neighbours (probing what is unresolved).
    /// Every second: the connection table's clock, then links and neighbours.
    pub async fn on_tick(&mut self) -> Result<()> {
        if let Some(late) = self.stall.tick(Instant::now()) {
            tracing::warn!(
                late = ?late,
                "the agent's loop stood still for longer than an advert interval (stopped, swapped out, paused?): adverts and lease renewals were late, the peer may have taken over"
            );
        }
        self.dp
            .maps()
            .set_clock(lb_agent::dataplane::clock_tick())?;
        self.look_again(Resolve::Probe).await
    }

    /// Tracked links first (VRRP may move), then the neighbours.
    async fn look_again(&mut self, how: Resolve) -> Result<()> {
        self.vrrp
            .refresh_links(&self.link.handle, Instant::now())
            .await;
        self.vrrp_step().await?;
        self.refresh(how).await
    }

    /// A request on the control socket or the metrics endpoint.
    pub async fn on_control(&mut self, request: Request) -> Result<Reply> {
        Ok(match request {
            Request::Status => match self.status() {
                Ok(s) => Reply::Status(Box::new(s)),
                Err(e) => Reply::Error(format!("{e:#}")),
            },
            Request::Failback { service } => {
                // The name is client input: quoted short, if at all.
                let name = control::limits::short(&service);
                if self.cfg.service(&service).is_none() {
                    return Ok(Reply::Error(format!("no virtual server named {name:?}")));
                }
                match self.health.request_failback(&self.cfg, &service) {
                    Ok(()) => {
                        tracing::info!(service, "failback requested");
                        self.health_step().await?;
                        Reply::Ok(format!("{service}: failback requested"))
                    }
                    Err(e) => Reply::Error(format!("{service}: {e}")),
                }
            }
            Request::Switchover { service, to } => {
                let name = control::limits::short(&service);
                if self.cfg.service(&service).is_none() {
                    return Ok(Reply::Error(format!("no virtual server named {name:?}")));
                }
                match self
                    .health
                    .request_switchover(&self.cfg, &service, to, Instant::now())
                {
                    Ok(said) => {
                        tracing::warn!(service, to = ?to, "{said}");
                        self.health_step().await?;
                        Reply::Ok(said)
                    }
                    Err(e) => {
                        tracing::warn!(service = name, error = %e, "switchover refused");
                        Reply::Error(e)
                    }
                }
            }
            // The event loop takes it (a reload replaces the health channel it owns).
            Request::Reload => Reply::Error("reload: not through this path".into()),
            Request::Maintenance { server, on } => self.on_maintenance_request(server, on).await?,
            Request::PrepareRestart => {
                self.restart_prepared_until = Some(Instant::now() + super::RESTART_WINDOW);
                tracing::info!(
                    window = ?super::RESTART_WINDOW,
                    "restart prepared: the next stop leaves the data plane forwarding"
                );
                Reply::Ok(format!(
                    "a stop within {} s leaves the data plane forwarding for the next agent",
                    super::RESTART_WINDOW.as_secs()
                ))
            }
        })
    }

    pub fn status(&mut self) -> Result<control::status::Status> {
        let sids: Vec<u32> = self.state.services.iter().map(|s| s.id).collect();
        let rids: Vec<u32> = self.state.reals.keys().copied().collect();
        let counters = self.dp.maps().counters(&sids, &rids)?;
        let mut s = control::status::build(&self.cfg, &self.state, &counters, &self.attach_mode);
        s.learned_peers = control::status::peers(&self.dp.maps().learned_peers()?);
        s.vrrp = self.vrrp.status();
        s.loop_stalls = self.stall.stalls;
        s.longest_stall_ms = self.stall.longest.as_millis() as u64;
        control::status::add_health(&mut s, &self.health.eval.reports);
        for svc in &mut s.services {
            svc.decision = self.decision_text(&svc.name);
            svc.replicas = self.replica_status(&svc.name);
            svc.switchover = self.health.switchover_status(&svc.name);
        }
        s.quorum = self.quorum_status();
        Ok(s)
    }

    /// Carries out the VRRP instances' actions and notifies their transitions. The maps do
    /// not change: every load balancer forwards by the same decision whatever its VRRP state,
    /// so VRRP only moves the addresses (and a takeover announces VIPs whose services are
    /// already on).
    pub async fn vrrp_step(&mut self) -> Result<()> {
        if self.vrrp.run_actions(&self.link.handle).await? {
            tracing::info!(masters = ?self.vrrp.masters(), "VRRP ownership changed");
        }
        for t in self.vrrp.take_transitions() {
            self.notifier.vrrp(&t);
        }
        if self.update_leadership(Instant::now()) {
            self.health_step().await?;
        }
        Ok(())
    }

    /// Evaluates the services' health again, lets the leader decide, and, when what the maps
    /// follow changed (a server failed or came back, a failback became due, the pair's
    /// decision moved), writes the affected services: the decision-to-map-flip time is logged
    /// as `switch_us`. Side effects (fencing, handovers) start after the maps are written.
    pub async fn health_step(&mut self) -> Result<()> {
        let decided = Instant::now();
        self.pause_side_effects(decided);
        let actions = self.health.evaluate(&self.cfg, decided);
        self.decide(decided);
        let verdicts = self.effective_verdicts();
        if verdicts != self.verdicts {
            let mut next = self.state.clone();
            next.apply_health(&self.cfg, &verdicts, &self.verdicts, &mut self.planner);
            self.verdicts = verdicts;
            let sorry_before: HashSet<(String, bool)> = self
                .state
                .services
                .iter()
                .map(|s| (s.name.clone(), s.using_sorry))
                .collect();
            let writes = self.apply(next)?;
            let switch_us = decided.elapsed().as_micros() as u64;
            tracing::info!(writes, switch_us, "health verdicts changed, maps updated");
            for svc in &self.state.services {
                if sorry_before.contains(&(svc.name.clone(), svc.using_sorry)) {
                    continue;
                }
                if let Some(vs) = self.cfg.service(&svc.name) {
                    let switched = self.health.switched(&svc.name);
                    self.notifier.quorum(vs, svc.using_sorry, switched);
                }
            }
        }
        for (service, why) in self.health.take_risks() {
            if let Some(vs) = self.cfg.service(&service) {
                self.notifier.writer_risk(vs, &why);
            }
        }
        let mut actions = actions;
        self.ensure_replication(decided, &mut actions);
        self.follow_writer(decided, &mut actions);
        self.end_dumps_to_lost_replicas(decided, &mut actions);
        self.report_errant(decided);
        self.run(actions);
        self.send_pair(decided)?;
        Ok(())
    }

    /// Starts the health side effects; their results come back as health events.
    pub fn run(&mut self, actions: Vec<Action>) {
        for a in self.defer_writable(actions) {
            runner::spawn(a, &self.health_tx);
        }
    }

    /// Looks at the neighbours again and writes what changed.
    async fn refresh(&mut self, how: Resolve) -> Result<()> {
        match resolve(
            &self.cfg,
            &self.link,
            how,
            &mut self.planner,
            &self.verdicts,
        )
        .await
        {
            Ok(next) => {
                let writes = self.apply(next)?;
                if writes > 0 {
                    tracing::info!(writes, "real servers changed, maps updated");
                }
            }
            Err(e) => tracing::warn!(error = %format!("{e:#}"), "reading neighbours"),
        }
        Ok(())
    }

    /// Writes the difference from the current state to `next` and makes `next` the state;
    /// returns how many map writes that took (0: nothing changed, nothing reported).
    pub fn apply(&mut self, next: DesiredState) -> Result<usize> {
        apply(&mut self.dp, &mut self.state, next)
    }

    /// Whether this stop is a prepared restart (`lb-agent prepare-restart`, in time).
    pub fn restart_prepared(&self, now: Instant) -> bool {
        self.restart_prepared_until.is_some_and(|until| now < until)
    }

    /// A prepared restart's exit: what a killed agent leaves — the program attached and
    /// pinned, the maps, the VIPs, the leases running out on their own — for the next agent
    /// to adopt. Nothing is dropped: dropping the data plane's handles could detach links
    /// they own, and the process ends right after.
    pub fn exit_for_restart(self) {
        tracing::info!("stopping for a restart: the data plane stays pinned and forwarding");
        let socket = control::socket_path(self.cfg.global.control_socket.as_deref());
        let _ = std::fs::remove_file(&socket);
        std::mem::forget(self);
    }

    /// Resigns from VRRP (priority 0: the peer takes over after skew time; we keep
    /// forwarding until it has), then detaches and unpins.
    pub async fn shutdown(mut self, vrrp_events: &mut mpsc::Receiver<VrrpEvent>) -> Result<()> {
        self.vrrp.shutdown(&self.link.handle, vrrp_events).await?;
        tracing::info!("stopping: detaching the data plane");
        let socket = control::socket_path(self.cfg.global.control_socket.as_deref());
        let _ = std::fs::remove_file(&socket);
        self.dp.shutdown()?;
        // Only now (nothing forwards by our decisions any more): the leader key and our
        // acknowledgements go, and the other agent decides at once.
        if let Some(q) = &self.quorum {
            q.resign().await;
        }
        Ok(())
    }
}

/// Writes the difference from `state` to `next` and makes `next` the state.
pub fn apply(
    dp: &mut Dataplane,
    state: &mut DesiredState,
    mut next: DesiredState,
) -> Result<usize> {
    let ops = reconcile::plan(Some(state), &mut next);
    if !ops.is_empty() {
        dp.maps().execute(&ops)?;
        report(&next);
    }
    *state = next;
    Ok(ops.len())
}

pub fn report(state: &DesiredState) {
    for w in state.warnings() {
        tracing::warn!("{w}");
    }
}
