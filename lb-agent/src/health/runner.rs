//! The I/O side of health: the check tasks of a `Monitor`, and the MySQL side effects the
//! state asks for (`Action`), each in its own task, reporting back as an `Event`.

use std::time::{Duration, Instant};

use tokio::sync::mpsc;

use super::{
    gtid::Gtids,
    monitor::{Monitor, Report},
    mysql::{self, Target},
    state::{Action, Event},
};

/// How long a graceful handover waits for the writer to execute the sorry server's binary log.
const HANDOVER_WAIT: Duration = Duration::from_secs(5);
/// How long the sorry server's position must stand still (read-only) before the flip.
const SETTLE: Duration = Duration::from_millis(50);

/// Starts one task per check; results arrive on `tx`. A run starts every interval even
/// while earlier ones still wait for a hung server (each ends by its own timeout, so at
/// most timeout / interval + 1 are in flight): a hang is then detected within
/// interval × fall + timeout, not fall × timeout. The tasks end when the receiver is
/// dropped.
pub fn spawn_checks(m: &Monitor, tx: &mpsc::Sender<Event>) {
    for (i, c) in m.checks.iter().enumerate() {
        let (probe, interval, tx) = (c.probe.clone(), c.spec.interval, tx.clone());
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(interval);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tick.tick().await;
                if tx.is_closed() {
                    return;
                }
                tokio::spawn(check_once(i, probe.clone(), tx.clone()));
            }
        });
    }
}

/// One run of check `check`; its report arrives on `tx`, a scheduled run's or one asked for
/// (`Action::CheckNow`) alike (the monitor orders runs by their start, so an extra run is
/// never taken for a newer one than it is).
async fn check_once(check: usize, probe: super::monitor::Probe, tx: mpsc::Sender<Event>) {
    let started = Instant::now();
    let outcome = probe.run().await;
    let _ = tx
        .send(Event::Check(Box::new(Report {
            check,
            outcome,
            started,
            at: Instant::now(),
        })))
        .await;
}

/// Runs `action` in the background; its result (if it has one) comes back on `tx`.
pub fn spawn(action: Action, tx: &mpsc::Sender<Event>) {
    let tx = tx.clone();
    tokio::spawn(async move {
        match action {
            Action::CheckNow { check, probe } => check_once(check, probe, tx).await,
            Action::Fence { target } => {
                let r = mysql::set_read_only(&target, true).await;
                let _ = tx.send(Event::Fence(target.addr.ip(), r)).await;
            }
            Action::Handover {
                service,
                attempt,
                sorry,
                writers,
            } => {
                let result = handover(sorry.as_ref(), &writers).await;
                let _ = tx.send(Event::Handover(service, attempt, result)).await;
            }
            Action::SelfFence { target } => match mysql::self_fence(&target).await {
                Ok(killed) => {
                    tracing::warn!(server = %target.addr, killed, "self-fenced: no quorum, so this host's server is read-only and its clients were disconnected")
                }
                Err(e) => {
                    tracing::error!(server = %target.addr, error = %e, "could not fence this host's server after losing the quorum (the data plane holds its writes)")
                }
            },
            Action::SwitchFence { service, target } => {
                let r = mysql::self_fence(&target).await;
                let _ = tx.send(Event::SwitchFenced(service, r)).await;
            }
            Action::SetReplicating { target, on } => {
                match mysql::set_replicating(&target, on).await {
                    Ok(()) if on => {
                        tracing::info!(server = %target.addr, "replication from the writer started again")
                    }
                    Ok(()) => {
                        tracing::warn!(server = %target.addr, "replication from the replaced writer stopped (its relay log applied): nothing it committed unacknowledged can reach this server")
                    }
                    Err(e) => {
                        tracing::error!(server = %target.addr, start = on, error = %e, "could not change replication (retrying)")
                    }
                }
            }
            Action::KillOrphans { target } => match mysql::kill_orphans(&target).await {
                Ok(0) => {}
                Ok(killed) => {
                    tracing::warn!(server = %target.addr, killed, "ended client sessions holding row locks on a server without the writes (cut off mid-transaction)")
                }
                Err(e) => {
                    tracing::debug!(server = %target.addr, error = %e, "could not look for orphaned transactions")
                }
            },
            Action::EndDumps { target, to } => match mysql::end_dumps_to(&target, &to).await {
                Ok(0) => {}
                Ok(ended) => {
                    tracing::warn!(server = %target.addr, ended, replicas = ?to, "ended the binary-log dumps to replicas this host cannot reach: their half-open connections would stall the server when the replicas come back")
                }
                Err(e) => {
                    tracing::debug!(server = %target.addr, error = %e, "could not look for binary-log dumps to unreachable replicas")
                }
            },
            Action::Repoint {
                service,
                target,
                source,
                login,
            } => {
                tracing::warn!(service, replica = %target.addr, source = %source, "re-pointing the replica to the server that has the writes");
                let result = mysql::repoint(&target, source, &login).await;
                let _ = tx
                    .send(Event::Repointed(service, target.addr.ip(), result))
                    .await;
            }
            Action::MakeWritable { target } => match mysql::set_read_only(&target, false).await {
                Ok(()) => tracing::info!(server = %target.addr, "writable again (read_only=0)"),
                Err(e) => {
                    tracing::error!(server = %target.addr, error = %e, "could not make the server writable again")
                }
            },
        }
    });
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
            // No client writes reach the writers until the flip: a session there holding row
            // locks was cut off mid-transaction, and would stall the replication that is to
            // bring them the sorry server's writes (error 1205 after
            // innodb_lock_wait_timeout).
            for (w, _) in writers {
                match mysql::kill_orphans(w).await {
                    Ok(0) => {}
                    Ok(killed) => {
                        tracing::warn!(server = %w.addr, killed, "handover: ended client sessions holding row locks on the writer (cut off mid-transaction)")
                    }
                    Err(e) => return Err(format!("{}: ending orphaned sessions: {e}", w.addr)),
                }
            }
            // read_only stops new writes, but a transaction already open still commits
            // (MariaDB and MySQL let it): wait for the writers to hold the position, then
            // read it again, until it stops moving.
            let deadline = Instant::now() + HANDOVER_WAIT;
            let mut at = mysql::probe(s, false).await?;
            loop {
                let (pos, want) = (&at.binlog_pos, Gtids::parse(&at.binlog_pos)?);
                for (w, _) in writers {
                    loop {
                        let have = mysql::probe(w, false).await?;
                        // The last word on errant transactions: the gate let the handover
                        // start on checks that may be old (or with the sorry server down).
                        have.errant_against(&at)
                            .map_err(|e| format!("{}: {e}", w.addr))?;
                        if Gtids::parse(&have.executed)?.contains(&want) {
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
                let again = mysql::probe(s, false).await?;
                if again.binlog_pos == *pos {
                    break;
                }
                at = again;
            }
            // The writers hold everything the sorry server wrote: it may replicate from them
            // again (its replication was stopped when it took the writes), before they take
            // any, so that their first commits find a semi-sync replica.
            let replica = mysql::probe(s, true).await?.replica;
            if replica.is_some_and(|r| r.io_stopped && !r.sql_running) {
                mysql::set_replicating(s, true)
                    .await
                    .map_err(|e| format!("starting the sorry server's replication: {e}"))?;
                tracing::info!(server = %s.addr, "the sorry server replicates from the writer again");
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
