//! A planned switchover of a service's writes to its sorry server (`lb-agent switchover`),
//! without I/O: what must hold before it starts, and when the flip is safe.
//!
//! The steps (MaxScale's and orchestrator's, with GTIDs): the writer is fenced — its client
//! sessions killed, then `read_only` — so nothing commits there any more; the writes wait in
//! the data plane (new connections are held, not refused); a check of the writer that
//! started after the fence gives its final binary-log position; once a check of the sorry
//! server that started after that read finds every transaction of it executed (relay log
//! applied, both threads running), the gate flips and the sorry server, writable all along
//! in the recipe's layout, takes the writes. At most the transactions in flight at the fence
//! fail; none acknowledged is lost. Out of time (`TIMEOUT`), the writer's fence is lifted and
//! the writes stay where they were.
//!
//! The way back (`--to WRITER`) is the graceful handover of `state` (the sorry server
//! read-only first, then the writer takes over once it has everything).

use std::time::{Duration, Instant};

use super::{gtid::Gtids, monitor::Checked, mysql::MysqlState};

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
}

impl Switch {
    pub fn new(now: Instant) -> Switch {
        Switch {
            since: now,
            fenced_at: None,
            fencing: false,
            failed: None,
            waiting: "fencing the writer".into(),
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
    let Some(w) = answering(writer) else {
        return Some(format!(
            "the writer {writer_addr} does not answer its check (a failover, not a switchover)"
        ));
    };
    let Some(s) = answering(sorry) else {
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
    match (Gtids::parse(&s.binlog_pos), Gtids::parse(&w.executed)) {
        (Ok(mine), Ok(theirs)) => {
            let mine = mine.without_origin(&w.origin);
            if !theirs.contains(&mine) {
                return Some(format!(
                    "the sorry server has {} that the writer lacks (errant transactions)",
                    mine.beyond(&theirs)
                ));
            }
        }
        (Err(e), _) | (_, Err(e)) => return Some(format!("unreadable GTID position: {e}")),
    }
    None
}

/// Whether the flip is safe now: the writer read after its fence (read-only, its final
/// position), the sorry server read after that and holding all of it. `Err`: what it
/// waits for.
pub fn ready(sw: &Switch, writer: Option<&Checked>, sorry: Option<&Checked>) -> Result<(), String> {
    let fenced_at = sw.fenced_at.ok_or("fencing the writer")?;
    let w = writer.ok_or("the writer is not checked")?;
    let (Some(w_state), Some(w_read)) = (
        answering(Some(w)),
        w.read_started().filter(|t| *t >= fenced_at),
    ) else {
        return Err("waiting for a check of the writer after its fence".into());
    };
    if w_state.writable() {
        return Err("the writer still reads writable".into());
    }
    let s = sorry.ok_or("the sorry server is not checked")?;
    let (Some(s_state), true) = (
        answering(Some(s)),
        s.read_started()
            .is_some_and(|t| w.up_at.is_some_and(|w_end| t >= w_end) && t >= w_read),
    ) else {
        return Err("waiting for a check of the sorry server after the writer's".into());
    };
    s_state
        .caught_up_with(&w_state.binlog_pos)
        .map_err(|e| format!("the sorry server: {e}"))
}

fn answering(c: Option<&Checked>) -> Option<&MysqlState> {
    c.filter(|c| c.is_up()).and_then(|c| c.mysql.as_ref())
}
