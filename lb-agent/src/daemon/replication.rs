//! The sorry server's replication kept in step with where the writes go (README: Errant
//! transactions), in every mode: stopped when the sorry server takes the writes, started
//! again once they are back; and, meanwhile, client sessions cut off mid-transaction on the
//! old writer ended, since their row locks would stall replication into it.

use std::{net::IpAddr, time::Instant};

use lb_agent::health::{
    follow::{Phase, Seen},
    state::Action,
};

use super::{core::Daemon, writer::shared_services, writer_quorum::RETRY_WRITABLE};

impl Daemon {
    /// This agent decides the writer: the lease holder, the pair's leader, or (alone) the
    /// VRRP master.
    fn decides_writer(&self, now: Instant) -> bool {
        match (&self.quorum, &self.pair) {
            (Some(q), _) => q.state.leading(now),
            (None, Some(p)) => p.shared.is_leader(),
            (None, None) => self.leading(),
        }
    }

    /// Whether this agent's data plane sends `service`'s writes to its sorry server.
    fn uses_sorry(&self, service: &str) -> bool {
        self.state
            .services
            .iter()
            .any(|s| s.name == service && s.using_sorry)
    }

    /// The deciding agent keeps the sorry server's replication from the writer in step with
    /// where the writes go (DESIGN §7, errant transactions; any mode). Writes on the sorry
    /// server: its replication from the writer stops once its relay log is applied, so
    /// that what the replaced writer committed unacknowledged (a commit in its semi-sync
    /// wait when it was cut off) never reaches it at the heal — its row images would set
    /// newer rows back. Writes back on the writer (failback lets them go only without
    /// errant transactions): started again, also when its IO thread failed. Both threads
    /// stopped is what a stop looks like; a failed SQL thread is left to the operator. Tried
    /// again every few seconds while the check reads the other state.
    pub(super) fn ensure_replication(&mut self, now: Instant, actions: &mut Vec<Action>) {
        if !self.decides_writer(now) {
            return;
        }
        for vs in shared_services(&self.cfg) {
            let Some(sorry) = vs.sorry.as_ref() else {
                continue;
            };
            // Where this agent's data plane sends the writes (it follows the shared
            // decision; the local checks' view can differ, e.g. on a new leader whose
            // writer has not caught up yet).
            let holds_sorry = self.uses_sorry(&vs.name);
            // Only on a decision this agent's data plane follows: with `[quorum]` the
            // committed one; with `[pair]` the pair's, once current. A leader that has not
            // heard its peer yet (just started, or back) knows neither: its start-up view
            // ("held on the sorry server until the writer proves itself") is not where the
            // writes are, and stopping the sorry server's replication on it would leave the
            // writer committing with no semi-sync replica (seen: 149 acknowledged writes on
            // db1 alone when it died 4 s later).
            let epoch = match (&self.quorum, &self.pair) {
                (Some(q), _) => match q.state.followed(now, &vs.name) {
                    Some(d) if d.sorry == holds_sorry => d.epoch,
                    _ => continue,
                },
                (None, Some(p)) => match p.shared.decision(&vs.name) {
                    Some(d) if p.shared.current(now) && d.epoch > 0 && d.sorry == holds_sorry => {
                        d.epoch
                    }
                    _ => continue,
                },
                (None, None) => 0,
            };
            // Writers that answer while the sorry server has the writes: sessions cut off
            // mid-transaction would block replication into them (every 3 s).
            if holds_sorry
                && !self.health.handing_over(&vs.name)
                && self
                    .fences
                    .orphans_checked
                    .get(&vs.name)
                    .is_none_or(|t| now.duration_since(*t) >= RETRY_WRITABLE)
            {
                self.fences.orphans_checked.insert(vs.name.clone(), now);
                for rs in &vs.reals {
                    let up = self.health.monitor.checked(rs).is_some_and(|c| c.is_up());
                    if let (true, Some(target)) = (up, self.health.monitor.mysql_target(rs)) {
                        actions.push(Action::KillOrphans { target });
                    }
                }
            }
            let Some(replica) = self
                .health
                .monitor
                .answering(sorry)
                .and_then(|m| m.replica.clone())
            else {
                continue;
            };
            let from_writer = replica
                .source_host
                .parse::<IpAddr>()
                .is_ok_and(|a| vs.reals.iter().any(|r| r.address == a));
            if !from_writer
                || self
                    .fences
                    .replication_changed
                    .get(&vs.name)
                    .is_some_and(|t| now.duration_since(*t) < RETRY_WRITABLE)
            {
                continue;
            }
            let stopped = replica.io_stopped && !replica.sql_running;
            // A graceful handover starts the sorry server's replication itself, once the
            // writer holds all of its position (`runner::handover`); here, after any flip
            // back, and again after an IO thread that failed (e.g. started too early).
            let handing_over = self.health.handing_over(&vs.name);
            // A handover that just finished started the replication itself; until the
            // data plane follows (a proposal in flight), it still reads "sorry".
            let flipping_back = !self.health.eval.holds_sorry(&vs.name);
            let on = if holds_sorry && !handing_over && !flipping_back && !stopped {
                tracing::warn!(service = %vs.name, server = %sorry.address, epoch, "the sorry server has the writes: stopping its replication from the writer");
                false
            } else if !holds_sorry && !handing_over && replica.io_stopped {
                tracing::info!(service = %vs.name, server = %sorry.address, epoch, "the writes are back on the writer: the sorry server replicates from it again");
                true
            } else {
                continue;
            };
            let Some(target) = self.health.monitor.mysql_target(sorry) else {
                continue;
            };
            self.fences.replication_changed.insert(vs.name.clone(), now);
            actions.push(Action::SetReplicating { target, on });
        }
    }

    /// The deciding agent re-points each service's replicas to the server that has its
    /// writes (see `health::follow` for when it may): the sorry server while this data plane
    /// sends the writes there, the writer otherwise. The writer's position counts only from
    /// a check that started after the replica's last one ended.
    pub(super) fn follow_writer(&mut self, now: Instant, actions: &mut Vec<Action>) {
        if !self.decides_writer(now) {
            return;
        }
        for vs in self
            .cfg
            .services
            .iter()
            .filter(|vs| !vs.replicas.is_empty())
        {
            let (Some(spec), Some(login)) = (&vs.replication, self.health.logins.get(&vs.name))
            else {
                continue;
            };
            // One writer (validation asks for exactly one real server).
            let writer = match (self.uses_sorry(&vs.name), &vs.sorry, vs.reals.first()) {
                (true, Some(sorry), _) => sorry,
                (false, _, Some(real)) => real,
                _ => continue,
            };
            let monitor = &self.health.monitor;
            let writer_seen = monitor
                .checked(writer)
                .filter(|c| c.is_up())
                .and_then(|c| c.mysql.as_ref().zip(c.read_started()))
                .map(|(state, read_at)| Seen { state, read_at });
            // A replica in maintenance is left alone (the operator may have stopped its
            // replication on purpose); it is judged again once back.
            let replicas: Vec<(IpAddr, Option<Seen>)> = vs
                .replicas
                .iter()
                .filter(|addr| !self.health.in_maintenance(**addr))
                .map(|addr| {
                    let seen = self
                        .cfg
                        .servers_at(*addr)
                        .filter_map(|r| monitor.checked(r))
                        .find(|c| c.is_up() && c.mysql.is_some())
                        .and_then(|c| c.mysql.as_ref().zip(c.up_at))
                        .map(|(state, read_at)| Seen { state, read_at });
                    (*addr, seen)
                })
                .collect();
            let followers = self.health.followers.entry(vs.name.clone()).or_default();
            let (repoint, failed) =
                followers.step(now, spec.timing, writer.address, writer_seen, &replicas);
            for (replica, why) in failed {
                self.health
                    .new_follow_failures
                    .push((vs.name.clone(), format!("replica {replica}: {why}")));
            }
            for r in repoint {
                let target = self
                    .cfg
                    .servers_at(r.replica)
                    .find_map(|rs| self.health.monitor.mysql_target(rs));
                let Some(target) = target else { continue };
                actions.push(Action::Repoint {
                    service: vs.name.clone(),
                    target,
                    source: std::net::SocketAddr::new(r.source, spec.port),
                    login: login.clone(),
                });
            }
        }
        for (service, why) in self.health.take_follow_failures() {
            if let Some(vs) = self.cfg.service(&service) {
                self.notifier.replica_cannot_follow(vs, &why);
            }
        }
    }

    /// `status`'s view of `service`'s replicas.
    pub(super) fn replica_status(
        &self,
        service: &str,
    ) -> Vec<lb_agent::control::status::ReplicaStatus> {
        let Some(vs) = self.cfg.service(service) else {
            return vec![];
        };
        let followers = self.health.followers.get(service);
        vs.replicas
            .iter()
            .map(|addr| {
                let phase = followers.map_or(&Phase::Unknown, |f| f.phase(*addr));
                let source = self
                    .cfg
                    .servers_at(*addr)
                    .find_map(|r| self.health.monitor.answering(r))
                    .and_then(|m| m.replica.as_ref())
                    .map(|r| {
                        format!(
                            "{} (IO {}, SQL {})",
                            r.source_host,
                            if r.io_running { "yes" } else { "no" },
                            if r.sql_running { "yes" } else { "no" }
                        )
                    });
                let why = match phase {
                    Phase::Waiting(w) | Phase::CannotFollow(w) => Some(w.clone()),
                    _ => None,
                };
                lb_agent::control::status::ReplicaStatus {
                    address: *addr,
                    phase: phase.word().into(),
                    source,
                    why,
                }
            })
            .collect()
    }

    /// Every agent, for the servers on its own host: binary-log dumps to configured servers
    /// whose checks fail are ended every few seconds (see `mysql::end_dumps_to`: MariaDB
    /// stalls at the heal otherwise). Only this host's servers, whose view of the network
    /// is this agent's; a replica that is only down (refused) loses nothing either way.
    pub(super) fn end_dumps_to_lost_replicas(&mut self, now: Instant, actions: &mut Vec<Action>) {
        let servers: Vec<&lb_agent::config::Real> = self
            .cfg
            .services
            .iter()
            .flat_map(|vs| vs.reals.iter().chain(vs.sorry.iter()))
            .collect();
        let mut lost: Vec<IpAddr> = servers
            .iter()
            .filter(|r| {
                self.health
                    .monitor
                    .checked(r)
                    .is_some_and(|c| c.seen && !c.is_up())
            })
            .map(|r| r.address)
            .collect();
        lost.sort();
        lost.dedup();
        if lost.is_empty() {
            return;
        }
        for rs in &servers {
            let local = self
                .state
                .known
                .get(&rs.address)
                .is_some_and(|(_, info)| info.local);
            let up = self.health.monitor.checked(rs).is_some_and(|c| c.is_up());
            if !local
                || !up
                || self
                    .fences
                    .dumps_ended
                    .get(&rs.address)
                    .is_some_and(|t| now.duration_since(*t) < RETRY_WRITABLE)
            {
                continue;
            }
            if let Some(target) = self.health.monitor.mysql_target(rs) {
                self.fences.dumps_ended.insert(rs.address, now);
                actions.push(Action::EndDumps {
                    target,
                    to: lost.clone(),
                });
            }
        }
    }

    /// Says once, loudly (log, `notify_writer_risk`, e-mail with `smtp_alert`), that a
    /// writer holds errant transactions while the sorry server has the writes and no longer
    /// replicates from it: the failback waits for an operator's rebuild (README: Errant
    /// transactions), and rebuilding discards them. Only the deciding agent reports.
    pub(super) fn report_errant(&mut self, now: Instant) {
        if !self.decides_writer(now) {
            return;
        }
        let shared: Vec<String> = shared_services(&self.cfg)
            .iter()
            .map(|vs| vs.name.clone())
            .collect();
        let errant =
            lb_agent::health::verdict::errant_writers(&self.cfg, &self.health.monitor, &|s| {
                shared.iter().any(|n| n == s) && self.uses_sorry(s)
            });
        let mut reports = Vec::new();
        for e in errant {
            // Once per errant set: the server goes on replicating the sorry server's
            // writes, so its whole position changes every round.
            if self.fences.errant_reported.insert((e.addr, e.gtids)) {
                reports.push((e.service, format!("{}: {}", e.addr, e.why)));
            }
        }
        for (service, why) in reports {
            if let Some(vs) = self.cfg.service(&service) {
                self.notifier.writer_risk(vs, &why);
            }
        }
    }
}
