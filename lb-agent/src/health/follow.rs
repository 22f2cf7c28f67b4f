//! Replicas follow the writer: after every writer change (the sorry server takes the writes,
//! they fail back, a switchover), each replica of the service is re-pointed to the server
//! that has the writes — only when that is safe, and watched until it replicates.
//!
//! Sans-IO: `Followers::step` takes what the checks read and the time, and returns the
//! re-pointings to run; `repointed` takes their results. The rules are MaxScale's and
//! orchestrator's:
//!
//! - **no re-pointing without a last-known position**: the new writer's GTID position must
//!   have been read *after* the replica's (else a replica can look ahead of a writer that is
//!   still applying what the old one sent);
//! - **never to a server that lacks what the replica has**: the writer's executed set must
//!   contain the replica's (MariaDB: not ahead in any domain; MySQL: `GTID_SUBSET`). A
//!   replica ahead of the new writer (it received the old writer's last transactions that
//!   the new one never did, or it took a write of its own) cannot follow: it leaves the read
//!   pool with the GTIDs it has beyond the writer, and nobody touches it;
//! - **bounded**: a re-pointed replica must run both threads within `start_timeout`;
//! - **automation stops after a failed step** and says so: a replica that could not follow
//!   stays out until it is seen replicating from the writer again (the operator's fix);
//! - **a block period** after each re-pointing of a replica before the next one.

use std::{collections::BTreeMap, net::IpAddr, time::Duration, time::Instant};

use super::{gtid::Gtids, mysql::MysqlState};

/// The timing rules.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Timing {
    /// Both threads running within this after a re-pointing.
    pub start_timeout: Duration,
    /// No second re-pointing of one replica within this.
    pub block: Duration,
    /// No re-pointing until the writes have stayed on one server this long (a start-up
    /// that holds them on the sorry server for a moment, a flip back and forth, moves no
    /// replica).
    pub settle: Duration,
}

impl Default for Timing {
    fn default() -> Timing {
        Timing {
            start_timeout: Duration::from_secs(10),
            block: Duration::from_secs(10),
            settle: Duration::from_secs(10),
        }
    }
}

/// Where a replica stands.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Phase {
    /// Not seen yet, or its server does not answer.
    Unknown,
    /// Replicates from the server that has the writes, both threads running.
    Following,
    /// Re-pointed to `source` at `since`; its threads must run by `since + start_timeout`.
    Repointing { source: IpAddr, since: Instant },
    /// Should follow but may not yet (why): the writer's position not read after the
    /// replica's, the block period.
    Waiting(String),
    /// Cannot follow (why): out of the read pool, automation stopped for it.
    CannotFollow(String),
}

impl Phase {
    /// A short word for `status` and the metric.
    pub fn word(&self) -> &'static str {
        match self {
            Phase::Unknown => "unknown",
            Phase::Following => "following",
            Phase::Repointing { .. } => "repointing",
            Phase::Waiting(_) => "waiting",
            Phase::CannotFollow(_) => "cannot-follow",
        }
    }
}

/// What a check read of a server, and when.
#[derive(Debug, Clone, Copy)]
pub struct Seen<'a> {
    pub state: &'a MysqlState,
    pub read_at: Instant,
}

/// Re-point `replica` to replicate from `source`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Repoint {
    pub replica: IpAddr,
    pub source: IpAddr,
}

/// The replicas of one service.
#[derive(Debug, Default, Clone)]
pub struct Followers {
    phases: BTreeMap<IpAddr, Phase>,
    last_repoint: BTreeMap<IpAddr, Instant>,
    /// The server with the writes, and since when.
    writer: Option<(IpAddr, Instant)>,
}

impl Followers {
    pub fn phase(&self, replica: IpAddr) -> &Phase {
        self.phases.get(&replica).unwrap_or(&Phase::Unknown)
    }

    /// The replicas that cannot follow, with why: out of the read pool.
    pub fn cannot_follow(&self) -> impl Iterator<Item = (IpAddr, &str)> {
        self.phases.iter().filter_map(|(a, p)| match p {
            Phase::CannotFollow(why) => Some((*a, why.as_str())),
            _ => None,
        })
    }

    /// One look: `writer` has the writes (`writer_seen`: its last passing check), each
    /// replica as its last passing check read it (`None`: it does not answer). Returns the
    /// re-pointings to run now, and the replicas that just found they cannot follow (to
    /// log and alert once).
    pub fn step(
        &mut self,
        now: Instant,
        timing: Timing,
        writer: IpAddr,
        writer_seen: Option<Seen>,
        replicas: &[(IpAddr, Option<Seen>)],
    ) -> (Vec<Repoint>, Vec<(IpAddr, String)>) {
        if self.writer.is_none_or(|(w, _)| w != writer) {
            self.writer = Some((writer, now));
        }
        let mut repoint = Vec::new();
        let mut failed = Vec::new();
        for (addr, seen) in replicas {
            let before = self.phase(*addr).clone();
            let next = self.judge(now, timing, writer, writer_seen, *addr, *seen, &before);
            let starts = matches!(next, Phase::Repointing { since, .. } if since == now)
                && !matches!(before, Phase::Repointing { source, .. } if source == writer);
            if starts {
                self.last_repoint.insert(*addr, now);
                repoint.push(Repoint {
                    replica: *addr,
                    source: writer,
                });
            }
            if let Phase::CannotFollow(why) = &next
                && !matches!(before, Phase::CannotFollow(_))
            {
                failed.push((*addr, why.clone()));
            }
            self.phases.insert(*addr, next);
        }
        (repoint, failed)
    }

    /// A re-pointing ended: an error is a failed step (automation stops for that replica).
    pub fn repointed(&mut self, replica: IpAddr, result: Result<(), String>) -> Option<String> {
        let Err(e) = result else { return None };
        let why = format!("re-pointing failed: {e}");
        self.phases
            .insert(replica, Phase::CannotFollow(why.clone()));
        Some(why)
    }

    #[allow(clippy::too_many_arguments)]
    fn judge(
        &self,
        now: Instant,
        timing: Timing,
        writer: IpAddr,
        writer_seen: Option<Seen>,
        addr: IpAddr,
        seen: Option<Seen>,
        before: &Phase,
    ) -> Phase {
        // A replica that does not answer keeps its phase (its check keeps it out of the
        // pool meanwhile); a re-pointing still runs out of time.
        let Some(seen) = seen else {
            return match before {
                Phase::Repointing { since, .. } if now >= *since + timing.start_timeout => {
                    Phase::CannotFollow(format!(
                        "does not answer {:.0?} after it was re-pointed to {writer}",
                        timing.start_timeout
                    ))
                }
                Phase::Following => Phase::Unknown,
                other => other.clone(),
            };
        };
        let replication = seen.state.replica.as_ref();
        let from_writer = replication.is_some_and(|r| {
            r.source_host
                .parse::<IpAddr>()
                .is_ok_and(|source| source == writer)
        });
        let running = replication.is_some_and(|r| r.io_running && r.sql_running);
        if from_writer && running {
            // Following, but holding what the writer lacks (read after it): a write of its
            // own (errant) — out until rebuilt.
            return match beyond_writer(seen, writer_seen) {
                Some(Err(beyond)) => Phase::CannotFollow(format!(
                    "has {beyond} that the writer {writer} lacks (errant transactions)"
                )),
                Some(Ok(())) => Phase::Following,
                // No proof either way: one kept out stays out until a newer read of the
                // writer shows it holds nothing the writer lacks.
                None if matches!(before, Phase::CannotFollow(_)) => before.clone(),
                None => Phase::Following,
            };
        }
        if from_writer {
            return match before {
                Phase::Repointing { since, .. } if now < *since + timing.start_timeout => {
                    before.clone()
                }
                Phase::Repointing { .. } => Phase::CannotFollow(format!(
                    "re-pointed to {writer}, but its replication is not running {:.0?} later \
                     (IO {}, SQL {})",
                    timing.start_timeout,
                    yes_no(replication.is_some_and(|r| r.io_running)),
                    yes_no(replication.is_some_and(|r| r.sql_running)),
                )),
                Phase::CannotFollow(_) => before.clone(),
                // Stopped by someone else (an operator's STOP SLAVE): theirs to start; the
                // read pool's role check judges its lag.
                _ => Phase::Waiting(format!(
                    "replicates from {writer}, but its threads are stopped"
                )),
            };
        }
        // It replicates from another server (or none): it should follow the writer.
        if let Phase::CannotFollow(_) = before {
            return before.clone();
        }
        let Some(w) = writer_seen else {
            return Phase::Waiting(format!("the writer {writer}'s GTID position is unknown"));
        };
        if w.read_at < seen.read_at {
            return Phase::Waiting(format!(
                "waiting for a read of the writer {writer} newer than the replica's"
            ));
        }
        let (mine, theirs) = match (
            Gtids::parse(&seen.state.executed),
            Gtids::parse(&w.state.executed),
        ) {
            (Ok(m), Ok(t)) => (m, t),
            (Err(e), _) | (_, Err(e)) => {
                return Phase::Waiting(format!("unreadable GTID position: {e}"));
            }
        };
        if !theirs.contains(&mine) {
            return Phase::CannotFollow(format!(
                "ahead of the writer {writer}: has {} that the writer lacks",
                mine.beyond(&theirs)
            ));
        }
        // MySQL: what the writer purged from its binary logs must be on the replica already,
        // or it could never fetch it (the IO thread would stop on error 1236).
        if !w.state.purged.is_empty() {
            match Gtids::parse(&w.state.purged) {
                Ok(purged) if !mine.contains(&purged) => {
                    return Phase::CannotFollow(format!(
                        "the writer {writer} has purged {} from its binary logs, which the \
                         replica lacks: rebuild it from a backup of the writer",
                        purged.beyond(&mine)
                    ));
                }
                Ok(_) => {}
                Err(e) => {
                    return Phase::Waiting(format!("unreadable purged GTID set: {e}"));
                }
            }
        }
        let repointing_now =
            matches!(before, Phase::Repointing { source, .. } if *source == writer);
        if self
            .last_repoint
            .get(&addr)
            .is_some_and(|t| now < *t + timing.block)
            && !repointing_now
        {
            return Phase::Waiting("re-pointed moments ago (block period)".into());
        }
        if self
            .writer
            .is_some_and(|(_, since)| now < since + timing.settle)
            && !repointing_now
        {
            return Phase::Waiting(format!(
                "the writes moved to {writer} moments ago (settling for {:.0?})",
                timing.settle
            ));
        }
        match before {
            Phase::Repointing { source, since } if *source == writer => {
                if now < *since + timing.start_timeout {
                    before.clone()
                } else {
                    Phase::CannotFollow(format!(
                        "re-pointed to {writer}, but it still replicates from {} {:.0?} later",
                        replication.map_or("nobody", |r| r.source_host.as_str()),
                        timing.start_timeout
                    ))
                }
            }
            _ => Phase::Repointing {
                source: writer,
                since: now,
            },
        }
    }
}

/// Whether the writer holds everything the replica has (`Err`: what it lacks), judged only
/// from a read of the writer after the replica's; `None` without one, or when either
/// position cannot be read.
fn beyond_writer(replica: Seen, writer: Option<Seen>) -> Option<Result<(), String>> {
    let w = writer.filter(|w| w.read_at >= replica.read_at)?;
    let mine = Gtids::parse(&replica.state.executed).ok()?;
    let theirs = Gtids::parse(&w.state.executed).ok()?;
    Some(if theirs.contains(&mine) {
        Ok(())
    } else {
        Err(mine.beyond(&theirs))
    })
}

fn yes_no(b: bool) -> &'static str {
    if b { "yes" } else { "no" }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::health::mysql::Replica;

    const W1: &str = "10.0.0.1";
    const W2: &str = "10.0.0.2";
    const R: &str = "10.0.0.5";

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    fn state(executed: &str, source: Option<(&str, bool)>) -> MysqlState {
        MysqlState {
            mariadb: true,
            read_only: true,
            executed: executed.into(),
            replica: source.map(|(host, running)| Replica {
                source_host: host.into(),
                io_running: running,
                sql_running: running,
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    struct Run {
        f: Followers,
        t0: Instant,
        timing: Timing,
    }

    impl Run {
        fn new() -> Run {
            Run {
                f: Followers::default(),
                t0: Instant::now(),
                // The settling has a test of its own.
                timing: Timing {
                    settle: Duration::ZERO,
                    ..Timing::default()
                },
            }
        }

        /// One step at `secs`: the writer read at `secs` (after the replica, read 0.1 s
        /// earlier) unless `writer` is None.
        fn step(
            &mut self,
            secs: f64,
            writer: &str,
            writer_state: Option<&MysqlState>,
            replica: Option<&MysqlState>,
        ) -> (Vec<Repoint>, Vec<(IpAddr, String)>) {
            self.step_read(secs, writer, writer_state, 0, replica)
        }

        /// The same with the writer read 0.3 s before `secs`, before the replica: a read
        /// of the writer that proves nothing about the replica's.
        fn step_stale(
            &mut self,
            secs: f64,
            writer: &str,
            writer_state: &MysqlState,
            replica: &MysqlState,
        ) -> (Vec<Repoint>, Vec<(IpAddr, String)>) {
            self.step_read(secs, writer, Some(writer_state), 300, Some(replica))
        }

        fn step_read(
            &mut self,
            secs: f64,
            writer: &str,
            writer_state: Option<&MysqlState>,
            writer_ago_ms: u64,
            replica: Option<&MysqlState>,
        ) -> (Vec<Repoint>, Vec<(IpAddr, String)>) {
            let now = self.t0 + Duration::from_secs_f64(secs);
            let w = writer_state.map(|state| Seen {
                state,
                read_at: now - Duration::from_millis(writer_ago_ms),
            });
            let r = replica.map(|state| Seen {
                state,
                read_at: now - Duration::from_millis(100),
            });
            self.f.step(now, self.timing, ip(writer), w, &[(ip(R), r)])
        }
    }

    #[test]
    fn a_replica_of_the_old_writer_is_repointed_once_and_then_follows() {
        let mut run = Run::new();
        let writer = state("1-1-100,2-2-50", Some((W1, false)));
        // It had everything of db1 up to 100; db2 (the sorry server, new writer) too.
        let old = state("1-1-100,2-2-40", Some((W1, false)));
        let (repoint, failed) = run.step(0.0, W2, Some(&writer), Some(&old));
        assert_eq!(
            repoint,
            [Repoint {
                replica: ip(R),
                source: ip(W2)
            }]
        );
        assert!(failed.is_empty());
        // The next looks, before the check sees the change: no second re-pointing.
        let (repoint, _) = run.step(0.5, W2, Some(&writer), Some(&old));
        assert!(repoint.is_empty());
        assert_eq!(run.f.phase(ip(R)).word(), "repointing");
        let following = state("1-1-100,2-2-50", Some((W2, true)));
        run.step(1.0, W2, Some(&writer), Some(&following));
        assert_eq!(*run.f.phase(ip(R)), Phase::Following);
        assert_eq!(run.f.cannot_follow().count(), 0);
    }

    #[test]
    fn a_replica_ahead_of_the_new_writer_cannot_follow_and_is_never_touched() {
        let mut run = Run::new();
        // The old writer's 101 reached the replica, not the sorry server.
        let writer = state("1-1-100,2-2-50", None);
        let ahead = state("1-1-101,2-2-50", Some((W1, false)));
        let (repoint, failed) = run.step(0.0, W2, Some(&writer), Some(&ahead));
        assert!(repoint.is_empty());
        assert_eq!(failed.len(), 1);
        assert!(failed[0].1.contains("1-1-101"), "{failed:?}");
        let out: Vec<_> = run.f.cannot_follow().collect();
        assert_eq!(out.len(), 1);
        // Reported once; still out and untouched later, even when the writer catches up.
        let writer_later = state("1-1-101,2-2-60", None);
        let (repoint, failed) = run.step(30.0, W2, Some(&writer_later), Some(&ahead));
        assert!(repoint.is_empty() && failed.is_empty());
        assert_eq!(run.f.phase(ip(R)).word(), "cannot-follow");
        // The operator re-points it by hand: seen following, it is back.
        let fixed = state("1-1-101,2-2-60", Some((W2, true)));
        run.step(31.0, W2, Some(&writer_later), Some(&fixed));
        assert_eq!(*run.f.phase(ip(R)), Phase::Following);
    }

    /// MySQL: a replica that lacks what the new writer purged from its binary logs cannot
    /// fetch it: never re-pointed, out with the reason; one that has it is re-pointed.
    #[test]
    fn a_writer_that_purged_what_the_replica_lacks_is_not_followed() {
        let a = "3e11fa47-71ca-11e1-9e33-c80aa9429562";
        let b = "4f22ab58-82db-22f2-8f44-d91bb0530673";
        let mysql = |executed: &str, purged: &str, source: Option<(&str, bool)>| MysqlState {
            mariadb: false,
            purged: purged.into(),
            ..state(executed, source)
        };
        // The new writer (W2) has everything, but purged a:1-50 and b:1-20.
        let writer = mysql(
            &format!("{a}:1-100,{b}:1-30"),
            &format!("{a}:1-50,{b}:1-20"),
            None,
        );
        let behind = mysql(&format!("{a}:1-40"), "", Some((W1, false)));
        let mut run = Run::new();
        let (repoint, failed) = run.step(0.0, W2, Some(&writer), Some(&behind));
        assert!(repoint.is_empty());
        assert_eq!(failed.len(), 1, "{failed:?}");
        assert!(
            failed[0].1.contains("purged") && failed[0].1.contains(b),
            "{failed:?}"
        );
        // One that has all the purged transactions is re-pointed.
        let mut run = Run::new();
        let along = mysql(&format!("{a}:1-90,{b}:1-25"), "", Some((W1, false)));
        let (repoint, failed) = run.step(0.0, W2, Some(&writer), Some(&along));
        assert_eq!(repoint.len(), 1, "{failed:?}");
    }

    #[test]
    fn an_errant_write_on_the_replica_keeps_it_out() {
        let mut run = Run::new();
        let writer = state("1-1-100", None);
        // A write of its own, in its own domain.
        let errant = state("1-1-100,0-5-1", Some((W1, true)));
        let (repoint, failed) = run.step(0.0, W2, Some(&writer), Some(&errant));
        assert!(repoint.is_empty());
        assert!(failed[0].1.contains("0-5-1"), "{failed:?}");
    }

    #[test]
    fn an_errant_write_on_a_following_replica_quarantines_it_at_once() {
        let mut run = Run::new();
        let writer = state("1-1-100", None);
        let following = state("1-1-100", Some((W1, true)));
        run.step(0.0, W1, Some(&writer), Some(&following));
        assert_eq!(*run.f.phase(ip(R)), Phase::Following);
        // A replica merely behind the writer is fine; one with a GTID of its own is not.
        let behind = state("1-1-90", Some((W1, true)));
        run.step(1.0, W1, Some(&writer), Some(&behind));
        assert_eq!(*run.f.phase(ip(R)), Phase::Following);
        let errant = state("1-1-100,0-5-1", Some((W1, true)));
        let (repoint, failed) = run.step(2.0, W1, Some(&writer), Some(&errant));
        assert!(repoint.is_empty());
        assert!(failed[0].1.contains("0-5-1") && failed[0].1.contains("errant"));
        // Still following, the writer's next read older than the replica's: it stays out.
        run.step_stale(3.0, W1, &writer, &errant);
        assert_eq!(run.f.phase(ip(R)).word(), "cannot-follow");
        // A writer read older than the replica's proves nothing either way.
        let mut fresh = Run::new();
        fresh.step_stale(1.0, W1, &writer, &state("1-1-101", Some((W1, true))));
        assert_eq!(*fresh.f.phase(ip(R)), Phase::Following);
    }

    #[test]
    fn no_repointing_without_a_newer_position_of_the_writer() {
        let mut run = Run::new();
        let old = state("1-1-100", Some((W1, false)));
        let (repoint, _) = run.step(0.0, W2, None, Some(&old));
        assert!(repoint.is_empty());
        assert!(matches!(run.f.phase(ip(R)), Phase::Waiting(w) if w.contains("unknown")));
        // A writer read older than the replica's read: wait for a newer one, even when the
        // replica looks ahead of it (the writer may be applying the same transactions).
        let writer = state("1-1-99", None);
        let (repoint, failed) = run.step_stale(1.0, W2, &writer, &old);
        assert!(repoint.is_empty() && failed.is_empty());
        assert!(matches!(run.f.phase(ip(R)), Phase::Waiting(w) if w.contains("newer")));
    }

    #[test]
    fn a_repointed_replica_that_does_not_start_in_time_stops_the_automation() {
        let mut run = Run::new();
        let writer = state("1-1-100", None);
        let old = state("1-1-100", Some((W1, false)));
        assert_eq!(run.step(0.0, W2, Some(&writer), Some(&old)).0.len(), 1);
        // Pointed at the writer, but the IO thread fails (e.g. wrong credentials).
        let broken = state("1-1-100", Some((W2, false)));
        assert!(run.step(5.0, W2, Some(&writer), Some(&broken)).1.is_empty());
        let (repoint, failed) = run.step(10.5, W2, Some(&writer), Some(&broken));
        assert!(repoint.is_empty());
        assert!(failed[0].1.contains("not running"), "{failed:?}");
        // Stopped for good: no retry, whatever comes.
        let (repoint, failed) = run.step(60.0, W2, Some(&writer), Some(&old));
        assert!(repoint.is_empty() && failed.is_empty());
    }

    #[test]
    fn a_failed_statement_stops_the_automation_too() {
        let mut run = Run::new();
        let writer = state("1-1-100", None);
        let old = state("1-1-100", Some((W1, false)));
        run.step(0.0, W2, Some(&writer), Some(&old));
        let why = run.f.repointed(ip(R), Err("Access denied".into())).unwrap();
        assert!(why.contains("Access denied"));
        let (repoint, _) = run.step(20.0, W2, Some(&writer), Some(&old));
        assert!(repoint.is_empty());
        assert!(run.f.repointed(ip(R), Ok(())).is_none());
    }

    #[test]
    fn writer_changes_back_and_forth_respect_the_block_period() {
        let mut run = Run::new();
        let w1 = state("1-1-100,2-2-50", None);
        let w2 = state("1-1-100,2-2-50", None);
        let on_w1 = state("1-1-100,2-2-50", Some((W1, true)));
        // Writes go to W2: re-pointed.
        assert_eq!(run.step(0.0, W2, Some(&w2), Some(&on_w1)).0.len(), 1);
        let on_w2 = state("1-1-100,2-2-50", Some((W2, true)));
        run.step(1.0, W2, Some(&w2), Some(&on_w2));
        // Back to W1 two seconds later: blocked until ten seconds after the last change.
        let (repoint, _) = run.step(2.0, W1, Some(&w1), Some(&on_w2));
        assert!(repoint.is_empty());
        assert!(matches!(run.f.phase(ip(R)), Phase::Waiting(w) if w.contains("block")));
        assert_eq!(run.step(10.5, W1, Some(&w1), Some(&on_w2)).0.len(), 1);
    }

    #[test]
    fn a_replica_that_stops_answering_while_repointed_runs_out_of_time() {
        let mut run = Run::new();
        let writer = state("1-1-100", None);
        let old = state("1-1-100", Some((W1, false)));
        run.step(0.0, W2, Some(&writer), Some(&old));
        assert!(run.step(5.0, W2, Some(&writer), None).1.is_empty());
        let (_, failed) = run.step(11.0, W2, Some(&writer), None);
        assert!(failed[0].1.contains("does not answer"), "{failed:?}");
    }

    #[test]
    fn no_repointing_until_the_writes_have_settled() {
        let mut run = Run::new();
        run.timing.settle = Duration::from_secs(5);
        let writer = state("1-1-100", None);
        let on_w1 = state("1-1-100", Some((W1, true)));
        // A start-up holding the writes on the sorry server for a moment moves nobody.
        let (repoint, _) = run.step(0.0, W2, Some(&writer), Some(&on_w1));
        assert!(repoint.is_empty());
        assert!(matches!(run.f.phase(ip(R)), Phase::Waiting(w) if w.contains("settling")));
        run.step(0.5, W1, Some(&writer), Some(&on_w1));
        assert_eq!(*run.f.phase(ip(R)), Phase::Following);
        // A failover that stays: re-pointed once the writes stayed on W2 for 5 s.
        assert!(run.step(10.0, W2, Some(&writer), Some(&on_w1)).0.is_empty());
        assert!(run.step(14.0, W2, Some(&writer), Some(&on_w1)).0.is_empty());
        assert_eq!(run.step(15.0, W2, Some(&writer), Some(&on_w1)).0.len(), 1);
    }

    #[test]
    fn a_replica_stopped_by_the_operator_is_left_alone() {
        let mut run = Run::new();
        let writer = state("1-1-100", None);
        let stopped = state("1-1-100", Some((W2, false)));
        let (repoint, failed) = run.step(0.0, W2, Some(&writer), Some(&stopped));
        assert!(repoint.is_empty() && failed.is_empty());
        assert!(matches!(run.f.phase(ip(R)), Phase::Waiting(w) if w.contains("stopped")));
    }
}
