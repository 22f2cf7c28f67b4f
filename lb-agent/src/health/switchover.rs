//! A planned switchover of a service's writes to its sorry server (`lb-agent switchover`),
//! without I/O: what must hold before it starts, and when the flip is safe.
//!
//! The steps (MaxScale's and orchestrator's, with GTIDs): the writer is fenced — its client
//! sessions killed, then `read_only` — so nothing commits there any more; the writes wait in
//! the data plane (new connections are held, not refused); a check of the writer that
//! started after the fence gives its final binary-log position; once a check of the sorry
//! server that started after that read finds every transaction of it executed (relay log
//! applied, both threads running), the gate flips and the sorry server takes the writes —
//! writable all along in the recipe's layout; a read-only one is made writable first. At most the transactions in flight at the fence
//! fail; none acknowledged is lost. Out of time (`TIMEOUT`), the writer's fence is lifted and
//! the writes stay where they were.
//!
//! The way back (`--to WRITER`) is the graceful handover of `state` (the sorry server
//! read-only first, then the writer takes over once it has everything).

use std::time::{Duration, Instant};

use super::monitor::Checked;

/// How long a switchover may take from the request to the flip.
pub const TIMEOUT: Duration = Duration::from_secs(10);

/// A switchover under way.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Switch {
    pub since: Instant,
    /// When the writer's fence was confirmed.
    pub fenced_at: Option<Instant>,
    /// The fence was sent and not yet confirmed.
    pub fencing: bool,
    /// A step failed: the switchover ends, the writer's fence is lifted.
    pub failed: Option<String>,
    /// What it waits for now, for `status`.
    pub waiting: String,
    /// The sorry server read read-only when everything else was ready: lifted once (the
    /// target must take the writes; `read_only` would refuse them).
    pub lifting: bool,
    /// The two reads the flip waits for were asked for at once (not left to the checks'
    /// schedule, an interval each): the writer's after the fence, the sorry server's after
    /// that.
    pub asked_writer: bool,
    pub asked_sorry: bool,
}

impl Switch {
    pub fn new(now: Instant) -> Switch {
        Switch {
            since: now,
            fenced_at: None,
            fencing: false,
            failed: None,
            waiting: "fencing the writer".into(),
            lifting: false,
            asked_writer: false,
            asked_sorry: false,
        }
    }

    pub fn timed_out(&self, now: Instant) -> bool {
        now >= self.since + TIMEOUT
    }
}

/// Why the sorry server cannot take the writes by a switchover now; `None`: it can. The
/// writer must answer; the sorry server must answer, replicate from the writer with both
/// threads running, hold nothing the writer lacks (errant transactions would replace newer
/// rows on the way back) and not lag.
pub fn refusal(
    writer: Option<&Checked>,
    sorry: Option<&Checked>,
    writer_addr: std::net::IpAddr,
) -> Option<String> {
    let Some(w) = writer.and_then(Checked::answering) else {
        return Some(format!(
            "the writer {writer_addr} does not answer its check (a failover, not a switchover)"
        ));
    };
    let Some(s) = sorry.and_then(Checked::answering) else {
        return Some("the sorry server does not answer its MySQL check".into());
    };
    let Some(r) = s.replica.as_ref() else {
        return Some("the sorry server replicates from nobody".into());
    };
    if r.source_host.parse::<std::net::IpAddr>().ok() != Some(writer_addr) {
        return Some(format!(
            "the sorry server replicates from {}, not from the writer {writer_addr}",
            r.source_host
        ));
    }
    if let Err(why) = s.replica_within(Duration::ZERO) {
        return Some(format!("the sorry server is not caught up: {why}"));
    }
    // The errant question of a returning writer, asked the other way round.
    match s.errant_part(w) {
        Ok(errant) if errant.is_empty() => None,
        Ok(errant) => Some(format!(
            "the sorry server has {errant} that the writer lacks (errant transactions)"
        )),
        Err(e) => Some(format!("unreadable GTID position: {e}")),
    }
}

/// Whether the flip is safe now: the writer read after its fence (read-only, its final
/// position), the sorry server read after that and holding all of it. `Err`: what it
/// waits for.
pub fn ready(sw: &Switch, writer: Option<&Checked>, sorry: Option<&Checked>) -> Result<(), String> {
    let fenced_at = sw.fenced_at.ok_or("fencing the writer")?;
    let w = writer.ok_or("the writer is not checked")?;
    let (Some(w_state), true) = (
        w.answering(),
        w.read_started().is_some_and(|t| t >= fenced_at),
    ) else {
        return Err("waiting for a check of the writer after its fence".into());
    };
    if w_state.writable() {
        return Err("the writer still reads writable".into());
    }
    let s = sorry.ok_or("the sorry server is not checked")?;
    // After the writer's read ended (the same run that read its final position).
    let (Some(s_state), true) = (
        s.answering(),
        s.read_started()
            .is_some_and(|t| w.up_at.is_some_and(|w_end| t >= w_end)),
    ) else {
        return Err("waiting for a check of the sorry server after the writer's".into());
    };
    s_state
        .caught_up_with(&w_state.binlog_pos)
        .map_err(|e| format!("the sorry server: {e}"))?;
    if !s_state.writable() {
        return Err(NOT_WRITABLE.into());
    }
    Ok(())
}

/// What `ready` says when only the sorry server's `read_only` stands in the way: the
/// caller lifts it (once) and waits for a check that reads it writable.
pub const NOT_WRITABLE: &str = "the sorry server has everything but reads read-only: lifting it";

#[cfg(test)]
mod tests {
    use super::*;
    use crate::health::{
        monitor::{Monitor, Outcome, Report},
        mysql::{MysqlState, Replica},
        verdict::tests::setup,
    };

    const DB1: usize = 0;
    const DB2: usize = 1;

    /// A MySQL state: executed = binary log = `gtids`; `replicating` from db1 with zero lag.
    fn state(gtids: &str, read_only: bool, replicating: bool) -> Outcome {
        Outcome::Up {
            mysql: Some(MysqlState {
                mariadb: true,
                read_only,
                executed: gtids.into(),
                binlog_pos: gtids.into(),
                origin: if replicating { "2" } else { "1" }.into(),
                replica: replicating.then(|| Replica {
                    source_host: "10.0.0.1".into(),
                    io_running: true,
                    sql_running: true,
                    seconds_behind: Some(0),
                    received: gtids.into(),
                    ..Replica::default()
                }),
                ..MysqlState::default()
            }),
            weight: None,
        }
    }

    fn feed(m: &mut Monitor, t0: Instant, check: usize, started_ms: u64, outcome: Outcome) {
        let started = t0 + Duration::from_millis(started_ms);
        m.record(Report {
            check,
            outcome,
            started,
            at: started + Duration::from_millis(20),
        });
    }

    #[test]
    fn refused_unless_the_sorry_server_follows_the_writer_closely_and_cleanly() {
        let (cfg, mut m, _) = setup("caught-up");
        let t0 = Instant::now();
        let vs = &cfg.services[0];
        let (w, s) = (&vs.reals[0], vs.sorry.as_ref().unwrap());
        let ask = |m: &Monitor| refusal(m.checked(w), m.checked(s), w.address);
        feed(&mut m, t0, DB1, 0, state("0-1-10", false, false));
        feed(&mut m, t0, DB2, 0, state("0-1-10", false, false));
        assert!(ask(&m).unwrap().contains("replicates from nobody"));
        // Lagging.
        let mut lagging = state("0-1-9", false, true);
        if let Outcome::Up {
            mysql: Some(st), ..
        } = &mut lagging
        {
            st.replica.as_mut().unwrap().seconds_behind = Some(4);
        }
        feed(&mut m, t0, DB2, 100, lagging);
        assert!(ask(&m).unwrap().contains("not caught up"), "{:?}", ask(&m));
        // A write of its own (domain 0, server 2's, beyond what db1 has).
        feed(&mut m, t0, DB2, 200, state("0-2-11", false, true));
        assert!(ask(&m).unwrap().contains("errant"), "{:?}", ask(&m));
        // Following, caught up, clean: accepted.
        feed(&mut m, t0, DB2, 300, state("0-1-10", false, true));
        assert_eq!(ask(&m), None);
        // The writer down: a failover's business.
        for ms in [400, 500] {
            feed(&mut m, t0, DB1, ms, Outcome::Down("refused".into()));
        }
        assert!(ask(&m).unwrap().contains("does not answer"));
    }

    /// The flip waits for the fence, then a check of the writer after it (read-only: its
    /// final position), then a check of the sorry server after that one holding all of it.
    #[test]
    fn ready_only_once_the_sorry_server_holds_the_fenced_writers_last_position() {
        let (cfg, mut m, _) = setup("caught-up");
        let t0 = Instant::now();
        let at = |ms| t0 + Duration::from_millis(ms);
        let vs = &cfg.services[0];
        let (w, s) = (&vs.reals[0], vs.sorry.as_ref().unwrap());
        feed(&mut m, t0, DB1, 0, state("0-1-10", false, false));
        feed(&mut m, t0, DB2, 0, state("0-1-10", false, true));
        let mut sw = Switch::new(at(50));
        let ask = |m: &Monitor, sw: &Switch| ready(sw, m.checked(w), m.checked(s));
        assert!(ask(&m, &sw).unwrap_err().contains("fencing"));
        sw.fenced_at = Some(at(100));
        // The writer's last read is from before the fence.
        assert!(ask(&m, &sw).unwrap_err().contains("after its fence"));
        // Read after the fence: two more commits made it in before it.
        feed(&mut m, t0, DB1, 150, state("0-1-12", true, false));
        assert!(ask(&m, &sw).unwrap_err().contains("sorry server after"));
        // The sorry server read after the writer, not there yet.
        let mut behind = state("0-1-11", false, true);
        if let Outcome::Up {
            mysql: Some(st), ..
        } = &mut behind
        {
            st.replica.as_mut().unwrap().received = "0-1-12".into();
        }
        feed(&mut m, t0, DB2, 200, behind);
        assert!(ask(&m, &sw).unwrap_err().contains("relay log"));
        // Everything there, but read-only: the caller lifts it and waits for a read.
        feed(&mut m, t0, DB2, 250, state("0-1-12", true, true));
        assert_eq!(ask(&m, &sw), Err(NOT_WRITABLE.to_string()));
        feed(&mut m, t0, DB2, 300, state("0-1-12", false, true));
        assert_eq!(ask(&m, &sw), Ok(()));
        // A writer that reads writable after the fence (lifted by someone): not ready.
        feed(&mut m, t0, DB1, 400, state("0-1-12", false, false));
        assert!(ask(&m, &sw).unwrap_err().contains("writable"));
        assert!(!sw.timed_out(at(50) + TIMEOUT - Duration::from_millis(1)));
        assert!(sw.timed_out(at(50) + TIMEOUT));
    }
}
