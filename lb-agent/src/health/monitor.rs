//! The table of health checks: one entry per distinct (server, port, check), shared by the
//! services that check the same server the same way. Without I/O: the runner (`runner`)
//! runs the probes and reports raw results; `Monitor::record` runs them through each check's
//! rise/fall tracker.

use std::{
    net::{IpAddr, SocketAddr},
    time::{Duration, Instant},
};

use anyhow::{Result, anyhow};

use super::{
    exec,
    failure::CheckError,
    mysql::{self, MysqlState},
    tcp,
    tracker::Tracker,
};
use crate::config::{CheckKind, CheckSpec, Config, Real};

/// What one check run found, before hysteresis.
// Short-lived (one per run, moved into the check's table at once), and it crosses the
// channel boxed inside `state::Event::Check`: boxing the MySQL state as well would only add
// an allocation per run.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    Up {
        /// What a MySQL check read.
        mysql: Option<MysqlState>,
        /// A dynamic exec check's weight.
        weight: Option<u32>,
    },
    Down(String),
    /// The agent could not run the check (its own resources, see `failure`): no verdict.
    Local(String),
}

/// A check result, from a check task to the daemon's loop.
#[derive(Debug)]
pub struct Report {
    /// The check's position in the `Monitor` that started its task (a reload starts new
    /// tasks on a new channel, so a report never reaches another table).
    pub check: usize,
    pub outcome: Outcome,
    /// When the run started (results can arrive out of order: see `Monitor::spawn`).
    pub started: Instant,
    /// When it ended.
    pub at: Instant,
}

/// The kind of check, ready to run (password read, defaults applied).
#[derive(Debug, Clone)]
pub enum Probe {
    Tcp {
        addr: SocketAddr,
        timeout: Duration,
        retry: u32,
        delay: Duration,
    },
    Exec {
        command: String,
        timeout: Duration,
        dynamic: bool,
    },
    Mysql(mysql::Target),
}

impl Probe {
    pub async fn run(&self) -> Outcome {
        match self {
            Probe::Tcp {
                addr,
                timeout,
                retry,
                delay,
            } => match tcp::check(*addr, *timeout, *retry, *delay).await {
                Ok(()) => Outcome::Up {
                    mysql: None,
                    weight: None,
                },
                Err(CheckError::Local(e)) => Outcome::Local(e),
                Err(CheckError::Server(e)) => Outcome::Down(e),
            },
            Probe::Exec {
                command,
                timeout,
                dynamic,
            } => match exec::run(command, *timeout, *dynamic).await {
                exec::Outcome::Healthy => Outcome::Up {
                    mysql: None,
                    weight: None,
                },
                exec::Outcome::Weight(w) => Outcome::Up {
                    mysql: None,
                    weight: Some(w),
                },
                exec::Outcome::Unhealthy(why) => Outcome::Down(format!("check command {why}")),
                exec::Outcome::Local(why) => Outcome::Local(format!("check command {why}")),
            },
            Probe::Mysql(t) => match mysql::probe(t, true).await {
                Ok(s) => Outcome::Up {
                    mysql: Some(s),
                    weight: None,
                },
                Err(CheckError::Local(e)) => Outcome::Local(format!("mysql {}: {e}", t.addr)),
                Err(CheckError::Server(e)) => Outcome::Down(format!("mysql {}: {e}", t.addr)),
            },
        }
    }
}

/// One distinct check and what is known from it.
#[derive(Debug)]
pub struct Checked {
    pub addr: IpAddr,
    pub port: u16,
    pub spec: CheckSpec,
    pub probe: Probe,
    tracker: Tracker,
    /// No result yet: counted as up (keepalived's default) until the first one.
    pub seen: bool,
    /// Why the last run failed (kept while down).
    pub reason: Option<String>,
    pub weight: Option<u32>,
    pub mysql: Option<MysqlState>,
    /// When the last successful run ended (for ordering GTID reads of two servers).
    pub up_at: Option<Instant>,
    /// When the last applied run started (older results are stale).
    last_started: Option<Instant>,
    /// When the run that read `mysql` started.
    read_started: Option<Instant>,
    /// The agent could not run the last attempt (see `failure`), and why; cleared by the
    /// next result.
    pub local_error: Option<String>,
}

impl Checked {
    pub fn is_up(&self) -> bool {
        self.tracker.is_up()
    }

    /// The MySQL state the latest run read, while the check passes.
    pub fn answering(&self) -> Option<&MysqlState> {
        self.mysql.as_ref().filter(|_| self.is_up())
    }

    /// When the run that read `mysql` started: what it read is at least that recent. Not the
    /// latest run's start: a failed run (still up, within `fall`) keeps the older state, and
    /// dating that state by the failed run would make it look newer than it is.
    pub fn read_started(&self) -> Option<Instant> {
        self.read_started
    }
}

/// A check's state changed: up/down, or (for MySQL) what it read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Change {
    pub check: usize,
    /// `Some` when up/down flipped.
    pub up: Option<bool>,
}

#[derive(Debug, Default)]
pub struct Monitor {
    pub checks: Vec<Checked>,
}

impl Monitor {
    /// Collects the distinct checks of `cfg`. Reads MySQL password files now: an unreadable
    /// one, or one others may read (see `crate::secret`), stops the start (or the reload)
    /// with the reason.
    pub fn new(cfg: &Config) -> Result<Monitor> {
        let mut m = Monitor::default();
        for vs in &cfg.services {
            for (_, rs) in vs.members() {
                let Some(spec) = &rs.check else { continue };
                if m.find(rs.address, rs.port, spec).is_some() {
                    continue;
                }
                let probe = probe(rs.address, spec)
                    .map_err(|e| anyhow!("check of {} in {}: {e}", rs.address, vs.name))?;
                m.checks.push(Checked {
                    addr: rs.address,
                    port: rs.port,
                    spec: spec.clone(),
                    probe,
                    tracker: Tracker::new(spec.rise, spec.fall, true),
                    seen: false,
                    reason: None,
                    weight: None,
                    mysql: None,
                    up_at: None,
                    last_started: None,
                    read_started: None,
                    local_error: None,
                });
            }
        }
        Ok(m)
    }

    /// The check of real server `rs` (none when it has no check).
    pub fn check_for(&self, rs: &Real) -> Option<usize> {
        self.find(rs.address, rs.port, rs.check.as_ref()?)
    }

    /// The check of `rs` and what it knows.
    pub fn checked(&self, rs: &Real) -> Option<&Checked> {
        self.checks.get(self.check_for(rs)?)
    }

    /// The MySQL state of `rs` as its latest check read it, when that check passed.
    pub fn answering(&self, rs: &Real) -> Option<&MysqlState> {
        self.checked(rs)?.answering()
    }

    /// Where and as whom the MySQL check of `rs` logs in.
    pub fn mysql_target(&self, rs: &Real) -> Option<mysql::Target> {
        match &self.checked(rs)?.probe {
            Probe::Mysql(t) => Some(t.clone()),
            _ => None,
        }
    }

    /// The check of server `addr` on `port` with `spec`.
    pub fn find(&self, addr: IpAddr, port: u16, spec: &CheckSpec) -> Option<usize> {
        self.checks
            .iter()
            .position(|c| c.addr == addr && c.port == port && c.spec == *spec)
    }

    /// Applies one result; returns what changed, if anything. A result that started before
    /// the last one applied is stale (a slow run overtaken by a faster, newer one): ignored.
    pub fn record(&mut self, r: Report) -> Option<Change> {
        let c = self.checks.get_mut(r.check)?;
        if c.last_started.is_some_and(|t| r.started < t) {
            return None;
        }
        // The agent's own failure: the verdict stands, nothing else changes.
        if let Outcome::Local(why) = r.outcome {
            c.local_error = Some(why);
            return None;
        }
        c.local_error = None;
        c.last_started = Some(r.started);
        let first = !c.seen;
        c.seen = true;
        let ok = matches!(r.outcome, Outcome::Up { .. });
        // The first result decides at once: no hysteresis against an unknown past.
        let flipped = if first {
            c.tracker.force(ok)
        } else {
            c.tracker.record(ok)
        };
        let mut changed = flipped.is_some();
        match r.outcome {
            Outcome::Up { mysql, weight } => {
                if c.tracker.is_up() {
                    c.reason = None;
                }
                changed |= c.mysql != mysql || c.weight != weight;
                c.mysql = mysql;
                c.weight = weight;
                c.up_at = Some(r.at);
                c.read_started = Some(r.started);
            }
            Outcome::Down(why) => {
                changed |= c.reason.as_ref() != Some(&why) && !c.tracker.is_up();
                c.reason = Some(why);
            }
            // Returned above.
            Outcome::Local(_) => {}
        }
        changed.then_some(Change {
            check: r.check,
            up: flipped,
        })
    }
}

fn probe(addr: IpAddr, spec: &CheckSpec) -> Result<Probe, String> {
    Ok(match &spec.kind {
        CheckKind::Tcp {
            port,
            timeout,
            retry,
            delay_before_retry,
        } => Probe::Tcp {
            addr: SocketAddr::new(addr, *port),
            timeout: *timeout,
            retry: *retry,
            delay: *delay_before_retry,
        },
        CheckKind::Exec {
            command,
            timeout,
            dynamic,
        } => Probe::Exec {
            command: command.clone(),
            timeout: *timeout,
            dynamic: *dynamic,
        },
        CheckKind::Mysql {
            port,
            user,
            password_file,
            timeout,
        } => Probe::Mysql(mysql::Target {
            addr: SocketAddr::new(addr, *port),
            user: user.clone(),
            password: mysql::read_password(password_file)?,
            timeout: *timeout,
        }),
    })
}
