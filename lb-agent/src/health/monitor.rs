//! The health checks of every checked server: one task per distinct (server, port, check),
//! shared by the services that check the same server the same way. Tasks report raw results;
//! `Monitor::record` runs them through each check's rise/fall tracker.

use std::{
    net::{IpAddr, SocketAddr},
    time::{Duration, Instant},
};

use anyhow::{Result, anyhow};
use tokio::sync::mpsc;

use super::state::Event;
use super::{
    exec,
    mysql::{self, MysqlState},
    tcp,
    tracker::Tracker,
};
use crate::config::{Check, Config, RealServer, VirtualServer};

const DEFAULT_INTERVAL: Duration = Duration::from_secs(1);
const TCP_TIMEOUT: Duration = Duration::from_secs(3);
const TCP_DELAY_BEFORE_RETRY: Duration = Duration::from_secs(1);
const EXEC_TIMEOUT: Duration = Duration::from_secs(5);
const MYSQL_TIMEOUT: Duration = Duration::from_secs(1);

/// What one check run found, before hysteresis.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    Up {
        /// What a MySQL check read.
        mysql: Option<MysqlState>,
        /// A dynamic exec check's weight.
        weight: Option<u32>,
    },
    Down(String),
}

/// A check result, from a check task to the daemon's loop.
#[derive(Debug)]
pub struct Report {
    pub check: usize,
    pub outcome: Outcome,
    /// When the run started (results can arrive out of order: see `Monitor::spawn`).
    pub started: Instant,
    /// When it ended.
    pub at: Instant,
}

/// The kind of check, ready to run (password read, defaults applied).
#[derive(Debug, Clone)]
enum Probe {
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
    async fn run(&self) -> Outcome {
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
                Err(e) => Outcome::Down(e),
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
            },
            Probe::Mysql(t) => match mysql::probe(t, true).await {
                Ok(s) => Outcome::Up {
                    mysql: Some(s),
                    weight: None,
                },
                Err(e) => Outcome::Down(format!("mysql {}: {e}", t.addr)),
            },
        }
    }
}

/// One distinct check and what is known from it.
#[derive(Debug)]
pub struct Checked {
    pub addr: IpAddr,
    pub port: u16,
    pub spec: Check,
    pub interval: Duration,
    probe: Probe,
    tracker: Tracker,
    /// No result yet: counted as up (keepalived's default) until the first one.
    pub seen: bool,
    /// Why the last run failed (kept while down).
    pub reason: Option<String>,
    pub weight: Option<u32>,
    pub mysql: Option<MysqlState>,
    /// When the last successful run ended (for ordering GTID reads of two servers).
    pub up_at: Option<Instant>,
    /// When the last applied run started.
    last_started: Option<Instant>,
}

impl Checked {
    pub fn is_up(&self) -> bool {
        self.tracker.is_up()
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
    /// or world-readable one stops the start with the reason.
    pub fn new(cfg: &Config) -> Result<Monitor> {
        let mut m = Monitor::default();
        for vs in &cfg.virtual_servers {
            let vs = vs.get_ref();
            let service_interval = vs.check_interval.map(|d| d.0).unwrap_or(DEFAULT_INTERVAL);
            for rs in vs.real_servers.iter().chain(vs.sorry_server.iter()) {
                let Some(spec) = &rs.check else { continue };
                let port = rs.port.unwrap_or(vs.port);
                if m.find(rs.address, port, spec).is_some() {
                    continue;
                }
                let (interval, rise, fall) = spec.timing(service_interval);
                let probe = probe(rs.address, port, spec).map_err(|e| {
                    anyhow!("check of {} in {}: {e}", rs.address, vs.display_name())
                })?;
                m.checks.push(Checked {
                    addr: rs.address,
                    port,
                    spec: spec.clone(),
                    interval,
                    probe,
                    tracker: Tracker::new(rise, fall, true),
                    seen: false,
                    reason: None,
                    weight: None,
                    mysql: None,
                    up_at: None,
                    last_started: None,
                });
            }
        }
        Ok(m)
    }

    /// The check of real server `rs` of `vs` (none when it has no check).
    pub fn check_for(&self, vs: &VirtualServer, rs: &RealServer) -> Option<usize> {
        self.find(rs.address, rs.port.unwrap_or(vs.port), rs.check.as_ref()?)
    }

    /// Where and as whom the MySQL check of check `i` logs in.
    pub fn mysql_target(&self, i: usize) -> Option<mysql::Target> {
        match &self.checks.get(i)?.probe {
            Probe::Mysql(t) => Some(t.clone()),
            _ => None,
        }
    }

    /// The check of server `addr` on `port` with `spec`.
    pub fn find(&self, addr: IpAddr, port: u16, spec: &Check) -> Option<usize> {
        self.checks
            .iter()
            .position(|c| c.addr == addr && c.port == port && c.spec == *spec)
    }

    /// Starts one task per check; results arrive on `tx`. A run starts every interval even
    /// while earlier ones still wait for a hung server (each ends by its own timeout, so at
    /// most timeout / interval + 1 are in flight): a hang is then detected within
    /// interval × fall + timeout, not fall × timeout. The tasks end when the receiver is
    /// dropped.
    pub fn spawn(&self, tx: mpsc::Sender<Event>) {
        for (i, c) in self.checks.iter().enumerate() {
            let (probe, interval, tx) = (c.probe.clone(), c.interval, tx.clone());
            tokio::spawn(async move {
                let mut tick = tokio::time::interval(interval);
                tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
                loop {
                    tick.tick().await;
                    if tx.is_closed() {
                        return;
                    }
                    let (probe, tx) = (probe.clone(), tx.clone());
                    tokio::spawn(async move {
                        let started = Instant::now();
                        let outcome = probe.run().await;
                        let _ = tx
                            .send(Event::Check(Report {
                                check: i,
                                outcome,
                                started,
                                at: Instant::now(),
                            }))
                            .await;
                    });
                }
            });
        }
    }

    /// Applies one result; returns what changed, if anything. A result that started before
    /// the last one applied is stale (a slow run overtaken by a faster, newer one): ignored.
    pub fn record(&mut self, r: Report) -> Option<Change> {
        let c = self.checks.get_mut(r.check)?;
        if c.last_started.is_some_and(|t| r.started < t) {
            return None;
        }
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
            }
            Outcome::Down(why) => {
                changed |= c.reason.as_ref() != Some(&why) && !c.tracker.is_up();
                c.reason = Some(why);
            }
        }
        changed.then_some(Change {
            check: r.check,
            up: flipped,
        })
    }
}

fn probe(addr: IpAddr, port: u16, spec: &Check) -> Result<Probe, String> {
    Ok(match spec {
        Check::Tcp {
            connect_port,
            connect_timeout,
            retry,
            delay_before_retry,
            ..
        } => Probe::Tcp {
            addr: SocketAddr::new(addr, connect_port.unwrap_or(port)),
            timeout: connect_timeout.map(|d| d.0).unwrap_or(TCP_TIMEOUT),
            retry: retry.unwrap_or(1),
            delay: delay_before_retry
                .map(|d| d.0)
                .unwrap_or(TCP_DELAY_BEFORE_RETRY),
        },
        Check::Exec {
            command,
            timeout,
            dynamic,
            ..
        } => Probe::Exec {
            command: command.clone(),
            timeout: timeout.map(|d| d.0).unwrap_or(EXEC_TIMEOUT),
            dynamic: *dynamic,
        },
        Check::Mysql {
            port: check_port,
            user,
            password_file,
            timeout,
            ..
        } => Probe::Mysql(mysql::Target {
            addr: SocketAddr::new(addr, check_port.unwrap_or(port)),
            user: user.clone(),
            password: mysql::read_password(password_file)?,
            timeout: timeout.map(|d| d.0).unwrap_or(MYSQL_TIMEOUT),
        }),
    })
}
