//! What the checks, the service roles and the failback gates make of each service, without
//! I/O: which real servers may take traffic (and why not), dynamic weights, whether the sorry
//! server holds the traffic — and the same in words for `status`.

use std::{
    collections::{HashMap, HashSet},
    net::IpAddr,
    time::{Duration, Instant},
};

use serde::{Deserialize, Serialize};

use super::{
    monitor::{Checked, Monitor},
    mysql::{MysqlState, SemiSync},
    risk,
};
use crate::{
    balancer::{
        desired::{ServiceVerdict, Verdicts},
        failback::{Gate, Health, Mode},
    },
    config::{Config, Failback, Real, Role, Service},
};

/// A real server's check, as `status` shows it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum CheckHealth {
    Up,
    Down,
    /// No check configured.
    Unchecked,
}

impl std::fmt::Display for CheckHealth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.pad(match self {
            CheckHealth::Up => "up",
            CheckHealth::Down => "down",
            CheckHealth::Unchecked => "unchecked",
        })
    }
}

/// Where a service's traffic goes, as far as health decides.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ServiceMode {
    /// Its real servers.
    Pool,
    /// Its sorry server.
    Sorry,
}

/// What keeps a server out besides its check and role.
#[derive(Debug, Clone, Default)]
pub struct Held {
    /// Replicas that cannot follow the writer (see `follow`), with why.
    pub cannot_follow: HashMap<IpAddr, String>,
    /// Servers an operator put in maintenance (`lb-agent maintenance`).
    pub maintenance: HashMap<IpAddr, Maintenance>,
    /// Old writers back with errant transactions (see `errant_writers`), with why: out of
    /// every read pool until rebuilt (their writer services keep them out by the failback's
    /// own errant check).
    pub quarantined: HashMap<IpAddr, String>,
}

/// A writer whose binary log holds transactions its sorry server lacks (see
/// `MysqlState::errant_against`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ErrantWriter {
    pub service: String,
    pub addr: IpAddr,
    /// The errant GTIDs, in the server's format.
    pub gtids: String,
    pub why: String,
}

/// The writers of services on their sorry server (`on_sorry`) that came back with
/// transactions the sorry server lacks, judged only once the sorry server no longer
/// replicates from them (while it does, "ahead" is only replication lag).
pub fn errant_writers(
    cfg: &Config,
    m: &Monitor,
    on_sorry: &dyn Fn(&str) -> bool,
) -> Vec<ErrantWriter> {
    let mut out = Vec::new();
    for vs in cfg.services.iter().filter(|vs| on_sorry(&vs.name)) {
        let Some(sorry_state) = vs.sorry.as_ref().and_then(|s| m.answering(s)) else {
            continue;
        };
        let replicates = sorry_state
            .replica
            .as_ref()
            .is_some_and(|r| !r.io_stopped || r.sql_running);
        if replicates {
            continue;
        }
        for rs in &vs.reals {
            let Some(st) = m.answering(rs) else {
                continue;
            };
            let Err(why) = st.errant_against(sorry_state) else {
                continue;
            };
            out.push(ErrantWriter {
                service: vs.name.clone(),
                addr: rs.address,
                gtids: st.errant_part(sorry_state).unwrap_or_default(),
                why,
            });
        }
    }
    out
}

/// A server's maintenance, as `lb-agent maintenance SERVER on|off` set it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Maintenance {
    /// Drained: no new connections in read pools (established ones go on), out of writer
    /// pools.
    On,
    /// Ended: back once it replicates with both threads running and no lag (or at once
    /// when it replicates from nobody).
    Returning,
}

impl Maintenance {
    /// Whether a server ending its maintenance may take traffic again.
    pub fn caught_up(state: Option<&MysqlState>) -> bool {
        match state {
            Some(s) if s.replica.is_some() => s.replica_within(Duration::ZERO).is_ok(),
            // Replicates from nobody (a writer) or no MySQL check: nothing to catch up.
            Some(_) | None => true,
        }
    }
}

/// The failback gate of each service, by name.
pub type Gates = HashMap<String, Gate>;

/// One real server (or sorry server) of a service, as `status` shows it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RealHealth {
    pub address: IpAddr,
    pub health: CheckHealth,
    /// Takes traffic as far as checks and role go.
    pub usable: bool,
    /// Why not (a failed check, or a role it does not fill).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// What a MySQL check read, in short.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mysql: Option<String>,
    /// Semi-synchronous replication as its MySQL check last read it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub semisync: Option<SemiSync>,
}

/// A service's health, as `status` shows it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ServiceHealth {
    pub name: String,
    /// The configured policy.
    pub failback: String,
    pub mode: ServiceMode,
    /// Why it stays on the sorry server.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub waiting: Option<String>,
    pub reals: Vec<RealHealth>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sorry: Option<RealHealth>,
    /// The last writer change that may have lost transactions (see `health::risk`), when.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub writer_risk: Option<String>,
    /// How many writer changes may have lost transactions since the agent started.
    #[serde(default)]
    pub writer_risks: u64,
}

#[derive(Debug, Clone, Default)]
pub struct Evaluation {
    pub verdicts: Verdicts,
    /// In configuration order.
    pub reports: Vec<ServiceHealth>,
    /// Writer changes in this evaluation that may lose transactions: (service, why).
    pub risks: Vec<(String, String)>,
}

impl Evaluation {
    pub fn report_mut(&mut self, service: &str) -> Option<&mut ServiceHealth> {
        self.reports.iter_mut().find(|r| r.name == service)
    }

    pub fn holds_sorry(&self, service: &str) -> bool {
        self.verdicts.get(service).is_some_and(|v| v.hold_sorry)
    }
}

/// Whether an adopted data plane has a service on its sorry server, by name (a service it
/// does not know is missing).
pub type AdoptedSorry = HashMap<String, bool>;

/// A gate per virtual server, keeping the state of services that keep their name and policy
/// across a reload. A new gate starts where the data plane is: on the sorry server when an
/// adopted table holds only it; with no adopted table, a `caught-up` service starts held on
/// its sorry server until its writer proves it has caught up (after a reboot it may well not
/// have).
pub fn gates(cfg: &Config, old: &Gates, adopted_sorry: &AdoptedSorry) -> Gates {
    cfg.services
        .iter()
        .map(|vs| {
            let held = vs.sorry.is_some()
                && match adopted_sorry.get(&vs.name) {
                    Some(on_sorry) => *on_sorry,
                    None => vs.failback == Failback::CaughtUp,
                };
            let gate = match old.get(&vs.name) {
                Some(g) if g.policy() == vs.failback => g.clone(),
                _ if held => Gate::held(vs.failback, vs.failback_delay),
                _ => Gate::new(vs.failback, vs.failback_delay),
            };
            (vs.name.clone(), gate)
        })
        .collect()
}

fn mysql_summary(c: &Checked) -> Option<String> {
    let s = c.mysql.as_ref()?;
    let mut out = format!(
        "read_only={} gtid={:?}",
        u8::from(s.read_only || s.super_read_only),
        s.executed
    );
    if let Some(r) = &s.replica {
        out.push_str(&format!(
            " replica of {} (IO {}, SQL {}, behind {})",
            r.source_host,
            if r.io_running { "yes" } else { "no" },
            if r.sql_running { "yes" } else { "no" },
            r.seconds_behind
                .map_or("unknown".to_string(), |s| format!("{s} s"))
        ));
    }
    if let Some(ss) = &s.semisync {
        out.push_str(&format!(" semisync {}", ss.describe()));
    }
    Some(out)
}

/// One real server against its check and the service's role.
/// Servers lb-agent itself set read-only (fencing): their `read_only=1` is ours, not a
/// reason to keep them from the writes (the handover lifts it).
pub type Fenced = HashSet<IpAddr>;

fn judge(m: &Monitor, vs: &Service, rs: &Real, fenced: &Fenced) -> (RealHealth, Option<u32>) {
    let Some(c) = m.checked(rs) else {
        return (
            RealHealth {
                address: rs.address,
                health: CheckHealth::Unchecked,
                usable: true,
                reason: None,
                mysql: None,
                semisync: None,
            },
            None,
        );
    };
    let mut h = RealHealth {
        address: rs.address,
        health: if c.is_up() {
            CheckHealth::Up
        } else {
            CheckHealth::Down
        },
        usable: c.is_up(),
        reason: if c.is_up() { None } else { c.reason.clone() },
        mysql: mysql_summary(c),
        semisync: c.mysql.as_ref().and_then(|s| s.semisync.clone()),
    };
    if c.is_up() && c.seen {
        let role = match (vs.role, &c.mysql) {
            (Role::Any, _) => Ok(()),
            (_, None) => Err("no MySQL state read".to_string()),
            (Role::Writer, Some(s)) if s.writable() || fenced.contains(&rs.address) => Ok(()),
            (Role::Writer, Some(_)) => Err("read_only=1: not writable".to_string()),
            (Role::Replica, Some(s)) => s.replica_within(vs.max_lag),
        };
        if let Err(why) = role {
            h.usable = false;
            h.reason = Some(why);
        }
    }
    (h, c.weight)
}

/// `caught-up`: every usable real server replicates with zero lag and, in a check that ran
/// after the sorry server's last one, had executed everything in the sorry server's binary
/// log as that check read it, and has no errant transaction (nothing in its binary log that
/// the sorry server has not executed).
///
/// A sorry server that does not answer (`sorry_answers` false) is judged by the state it was
/// last seen with: the writers need no running replication from it (it cannot run), but
/// must have applied what they received, hold its last position and nothing errant — a
/// stall of a few seconds must not open the way back to a writer that lacks its writes or
/// holds what it never had. Never seen with a state: nothing to wait for (a dead sorry
/// server at start-up does not keep the writes from the writer).
fn caught_up(
    m: &Monitor,
    vs: &Service,
    usable: &[&Real],
    sorry_answers: bool,
) -> Result<(), String> {
    let sorry = vs.sorry.as_ref().ok_or("no sorry server")?;
    let s = m.checked(sorry).ok_or("the sorry server is not checked")?;
    let last = s.mysql.as_ref().zip(s.up_at);
    let Some((sorry_state, read_at)) = last else {
        if !sorry_answers {
            return Ok(());
        }
        return Err(format!(
            "the sorry server {}'s binary log position is unknown",
            sorry.address
        ));
    };
    for rs in usable {
        let c = m.checked(rs).ok_or("a real server is not checked")?;
        let st = c.mysql.as_ref().ok_or("no MySQL state read")?;
        let has_it = if sorry_answers {
            st.caught_up_with(&sorry_state.binlog_pos)
        } else {
            st.drained()
                .and_then(|()| st.holds(&sorry_state.binlog_pos))
        };
        has_it
            .and_then(|()| st.errant_against(sorry_state))
            .map_err(|e| format!("{}: {e}", rs.address))?;
        if c.up_at.is_none_or(|t| t <= read_at) {
            return Err(format!(
                "{}: waiting for a check after the sorry server's",
                rs.address
            ));
        }
    }
    Ok(())
}

/// The sorry server's relay log, for the way to the sorry server (see `failback`): whether
/// it has one to drain, when the latest check that found it drained started, and why not.
fn sorry_drain(m: &Monitor, vs: &Service) -> (bool, Option<Instant>, Option<String>) {
    let Some(c) = vs.sorry.as_ref().and_then(|s| m.checked(s)) else {
        return (false, None, None);
    };
    let Some(st) = c.mysql.as_ref().filter(|_| c.is_up() && c.seen) else {
        return (false, None, None);
    };
    if st.replica.is_none() {
        return (false, None, None);
    }
    match st.drained() {
        Ok(()) => (true, c.read_started(), None),
        Err(why) => (true, None, Some(why)),
    }
}

pub fn evaluate(
    cfg: &Config,
    m: &Monitor,
    gates: &mut Gates,
    fenced: &Fenced,
    held: &Held,
    now: Instant,
) -> Evaluation {
    let mut out = Evaluation::default();
    for vs in &cfg.services {
        let Some(gate) = gates.get_mut(&vs.name) else {
            continue;
        };
        let mut verdict = ServiceVerdict::default();
        let mut reals = Vec::new();
        let mut usable = Vec::new();
        for rs in &vs.reals {
            let (mut h, mut weight) = judge(m, vs, rs, fenced);
            // A replica that cannot follow the writer (see `follow`) serves no reads.
            if let Some(why) = held.cannot_follow.get(&rs.address) {
                h.usable = false;
                h.reason = Some(format!("cannot follow the writer: {why}"));
            }
            // An old writer back with errant transactions serves no reads either.
            if let Some(why) = held.quarantined.get(&rs.address)
                && vs.sorry.is_none()
            {
                h.usable = false;
                h.reason = Some(format!("quarantined: {why}"));
            }
            // Maintenance: out of a writer service (its writes must not come back to it),
            // drained in the others (weight 0: established connections go on).
            if let Some(mt) = held.maintenance.get(&rs.address) {
                let why = match mt {
                    Maintenance::On => "maintenance".to_string(),
                    Maintenance::Returning => {
                        "maintenance ended: back once it replicates with no lag".to_string()
                    }
                };
                if vs.sorry.is_some() {
                    h.usable = false;
                } else {
                    weight = Some(0);
                }
                h.reason = Some(h.reason.map_or(why.clone(), |r| format!("{why}; {r}")));
            }
            if h.usable {
                usable.push(rs);
            } else {
                verdict.failing.push((
                    rs.address,
                    h.reason.clone().unwrap_or_else(|| "down".into()),
                ));
            }
            if let Some(w) = weight {
                verdict.weights.push((rs.address, w));
            }
            reals.push(h);
        }
        let sorry_down = vs
            .sorry
            .as_ref()
            .and_then(|s| m.checked(s))
            .is_some_and(|c| c.seen && !c.is_up());
        let catch_up =
            (vs.failback == Failback::CaughtUp).then(|| caught_up(m, vs, &usable, !sorry_down));
        let (drain_needed, sorry_drained, not_drained) = sorry_drain(m, vs);
        let health = Health {
            usable: usable.len() as u32,
            quorum: vs.quorum,
            caught_up: matches!(catch_up, Some(Ok(()))),
            sorry_drained,
            drain_needed,
        };
        let before = gate.mode();
        let mode = gate.step(now, health);
        let sorry = vs.sorry.as_ref().map(|s| judge(m, vs, s, fenced).0);
        verdict.hold_sorry = mode == Mode::Sorry && sorry.is_some();
        // Neither the old writer nor the sorry server while the sorry server drains.
        verdict.hold_writes = gate.draining();
        let change = match (before, mode) {
            (Mode::Pool, Mode::Sorry) if sorry.is_some() => risk::failover(m, vs, false),
            (Mode::Sorry, Mode::Pool) => risk::failback(vs),
            _ => None,
        };
        if let Some(why) = change {
            out.risks.push((vs.name.clone(), why));
        }
        let mut waiting = gate.waiting().map(str::to_string);
        if let (true, Some(why)) = (gate.draining(), not_drained) {
            waiting = Some(format!("writes wait: the sorry server's {why}"));
        }
        if let (true, Some(Err(why))) = (
            verdict.hold_sorry && health.usable >= health.quorum,
            &catch_up,
        ) {
            waiting = Some(format!("waiting for catch-up: {why}"));
        }
        out.reports.push(ServiceHealth {
            name: vs.name.clone(),
            failback: vs.failback.name().into(),
            mode: if verdict.hold_sorry {
                ServiceMode::Sorry
            } else {
                ServiceMode::Pool
            },
            waiting: if verdict.hold_sorry || verdict.hold_writes {
                waiting
            } else {
                None
            },
            reals,
            sorry,
            writer_risk: None,
            writer_risks: 0,
        });
        out.verdicts.insert(vs.name.clone(), verdict);
    }
    out
}

#[cfg(test)]
pub(crate) mod tests {
    use std::{os::unix::fs::PermissionsExt, path::Path, time::Duration};

    use super::*;
    use crate::health::{
        monitor::{Outcome, Report},
        mysql::{MysqlState, Replica},
    };

    /// A server ending its maintenance is back only once it replicates with no lag; one
    /// that replicates from nobody (or has no MySQL check) is back at once.
    #[test]
    fn maintenance_ends_once_caught_up() {
        let replica = |io, sql, behind| MysqlState {
            replica: Some(Replica {
                source_host: "10.1.1.113".into(),
                io_running: io,
                sql_running: sql,
                seconds_behind: behind,
                ..Default::default()
            }),
            ..Default::default()
        };
        assert!(Maintenance::caught_up(Some(&replica(true, true, Some(0)))));
        assert!(!Maintenance::caught_up(Some(&replica(true, true, Some(3)))));
        assert!(!Maintenance::caught_up(Some(&replica(true, false, None))));
        assert!(Maintenance::caught_up(Some(&MysqlState::default())));
        assert!(Maintenance::caught_up(None));
    }

    /// A password file the checks accept (owner-only), under `lbt<pid>-<name>`.
    pub(crate) fn password_file(name: &str) -> std::path::PathBuf {
        let dir = std::env::temp_dir().join(format!("lbt{}-{name}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let pw = dir.join("pw");
        std::fs::write(&pw, "x").unwrap();
        std::fs::set_permissions(&pw, std::fs::Permissions::from_mode(0o600)).unwrap();
        pw
    }

    /// A write VIP as the recipe has it: db1 the writer, db2 the sorry server, both checked
    /// with MySQL, failback `caught-up`, fall 2 and rise 2.
    pub(crate) fn setup(failback: &str) -> (Config, Monitor, Gates) {
        let pw = password_file("verdict");
        let check = format!(
            "check = {{ type = \"mysql\", user = \"lb\", password_file = \"{}\", rise = 2, fall = 2 }}",
            pw.display()
        );
        let text = format!(
            r#"
[dataplane]
interface = "eth0"
[[virtual_server]]
name = "write"
address = "10.0.0.100"
port = 3306
role = "writer"
failback = "{failback}"
[[virtual_server.real_server]]
address = "10.0.0.1"
{check}
[virtual_server.sorry_server]
address = "10.0.0.2"
{check}
"#
        );
        let cfg = Config::parse(Path::new("t.toml"), &text).unwrap();
        let m = Monitor::new(&cfg).unwrap();
        let gates = gates(
            &cfg,
            &Gates::new(),
            &[("write".to_string(), false)].into_iter().collect(),
        );
        (cfg, m, gates)
    }

    pub(crate) fn mysql(executed: &str, read_only: bool, replica: bool) -> Outcome {
        Outcome::Up {
            mysql: Some(MysqlState {
                mariadb: true,
                read_only,
                executed: executed.into(),
                binlog_pos: executed.into(),
                replica: replica.then(|| Replica {
                    source_host: "10.0.0.2".into(),
                    io_running: true,
                    sql_running: true,
                    seconds_behind: Some(0),
                    ..Replica::default()
                }),
                ..MysqlState::default()
            }),
            weight: None,
        }
    }

    struct Run {
        cfg: Config,
        m: Monitor,
        gates: Gates,
        t0: Instant,
    }

    impl Run {
        /// Feeds `outcome` for check `check` at `ms` and evaluates.
        fn feed(&mut self, ms: u64, check: usize, outcome: Outcome) -> Evaluation {
            let at = self.t0 + Duration::from_millis(ms);
            self.m.record(Report {
                check,
                outcome,
                started: at,
                at,
            });
            evaluate(
                &self.cfg,
                &self.m,
                &mut self.gates,
                &Fenced::new(),
                &Held::default(),
                at,
            )
        }
    }

    fn run(failback: &str) -> Run {
        let (cfg, m, gates) = setup(failback);
        Run {
            cfg,
            m,
            gates,
            t0: Instant::now(),
        }
    }

    const DB1: usize = 0;
    const DB2: usize = 1;

    /// A failed run within `fall` leaves the check up with the state the last good run read;
    /// that state stays dated by the good run (a GTID position read before a kill must not
    /// pass for one read after it: a replica would look ahead of its writer).
    #[test]
    fn a_failed_run_does_not_redate_the_state_it_keeps() {
        let mut r = run("caught-up");
        r.feed(0, DB1, mysql("0-1-10", false, false));
        r.feed(300, DB1, Outcome::Down("connection refused".into()));
        let db1 = &r.cfg.services[0].reals[0].clone();
        let c = r.m.checked(db1).unwrap();
        assert!(c.is_up(), "one failure of two (fall 2)");
        assert_eq!(c.mysql.as_ref().unwrap().executed, "0-1-10");
        assert_eq!(
            c.read_started(),
            Some(r.t0),
            "dated by the run that read it"
        );
        r.feed(500, DB1, mysql("0-1-12", false, false));
        let c = r.m.checked(db1).unwrap();
        assert_eq!(c.read_started(), Some(r.t0 + Duration::from_millis(500)));
    }

    /// An old writer back with what its sorry server lacks is errant once the sorry server
    /// no longer replicates from it (before, "ahead" is only lag), and only while the
    /// service is on the sorry server.
    #[test]
    fn an_old_writer_back_ahead_of_the_sorry_server_is_errant() {
        let mut r = run("caught-up");
        r.feed(0, DB1, mysql("0-1-12", true, false));
        // db2 still replicates from db1 (both threads): lag, not errant.
        r.feed(10, DB2, mysql("0-1-10", false, true));
        assert!(errant_writers(&r.cfg, &r.m, &|_| true).is_empty());
        // db2 stopped replicating (it took the writes): 0-1-11 and 0-1-12 are errant.
        r.feed(20, DB2, mysql("0-1-10", false, false));
        let e = errant_writers(&r.cfg, &r.m, &|_| true);
        assert_eq!(e.len(), 1, "{e:?}");
        assert_eq!(e[0].addr.to_string(), "10.0.0.1");
        assert_eq!(e[0].gtids, "0-1-12");
        assert!(e[0].why.contains("ERRANT"));
        // Not on the sorry server: nothing to judge.
        assert!(errant_writers(&r.cfg, &r.m, &|_| false).is_empty());
    }

    #[test]
    fn caught_up_failback_waits_for_the_sorry_servers_position() {
        let mut r = run("caught-up");
        let e = evaluate(
            &r.cfg,
            &r.m,
            &mut r.gates,
            &Fenced::new(),
            &Held::default(),
            r.t0,
        );
        assert!(
            !e.verdicts["write"].hold_sorry,
            "unchecked servers start up"
        );
        r.feed(0, DB2, mysql("0-2-10", false, true));
        let e = r.feed(10, DB1, mysql("0-1-10", false, true));
        assert!(!e.verdicts["write"].hold_sorry);
        // db1 dies: the first failure of a seen check is not enough (fall 2), the second is.
        let down = || Outcome::Down("connection refused".into());
        assert!(!r.feed(200, DB1, down()).verdicts["write"].hold_sorry);
        let e = r.feed(400, DB1, down());
        // The sorry server was last read before that: the writes wait for a check of it
        // that finds everything it received applied.
        assert!(!e.verdicts["write"].hold_sorry);
        assert!(e.verdicts["write"].hold_writes);
        assert!(
            e.reports[0]
                .waiting
                .as_deref()
                .unwrap()
                .contains("relay log")
        );
        let mut behind = mysql("0-2-10", false, true);
        if let Outcome::Up { mysql: Some(s), .. } = &mut behind {
            s.replica.as_mut().unwrap().received = "0-1-12".into();
        }
        let e = r.feed(420, DB2, behind);
        assert!(e.verdicts["write"].hold_writes);
        assert!(
            e.reports[0]
                .waiting
                .as_deref()
                .unwrap()
                .contains("received"),
            "{:?}",
            e.reports[0].waiting
        );
        let e = r.feed(450, DB2, mysql("0-2-10", false, true));
        assert!(e.verdicts["write"].hold_sorry);
        assert!(!e.verdicts["write"].hold_writes);
        assert_eq!(e.reports[0].mode, ServiceMode::Sorry);
        // Replication was asynchronous (the test's servers read no semi-sync): reported.
        assert_eq!(e.risks.len(), 1, "{:?}", e.risks);
        assert!(e.risks[0].1.contains("asynchronous"), "{:?}", e.risks);
        assert_eq!(
            e.reports[0].reals[0].reason.as_deref(),
            Some("connection refused")
        );
        // Writes land on db2 meanwhile.
        r.feed(500, DB2, mysql("0-2-50", false, true));
        // db1 returns (rise 2) but has not replicated them: it stays out of the writes.
        r.feed(600, DB1, mysql("0-2-40", false, true));
        let e = r.feed(800, DB1, mysql("0-2-40", false, true));
        assert!(e.verdicts["write"].hold_sorry);
        assert!(
            e.reports[0]
                .waiting
                .as_deref()
                .unwrap()
                .starts_with("waiting for catch-up"),
            "{:?}",
            e.reports[0].waiting
        );
        // A newer sorry-server position, then db1 holding an older one: still not.
        r.feed(900, DB2, mysql("0-2-60", false, true));
        let e = r.feed(1000, DB1, mysql("0-2-50", false, true));
        assert!(e.verdicts["write"].hold_sorry);
        // db1 has it all, in a check that ran after the sorry server's: writes go back.
        let e = r.feed(1200, DB1, mysql("0-2-60", false, true));
        assert!(!e.verdicts["write"].hold_sorry, "{:?}", e.reports[0]);
        assert_eq!(e.reports[0].mode, ServiceMode::Pool);
    }

    /// CI, 2026-12-04: after a partition the old writer came back with one errant
    /// transaction; then the sorry server stalled for 10 s (semi-sync's reconnect), and "a
    /// dead sorry server has no position to wait for" let the gate fail back to it.
    #[test]
    fn an_errant_writer_stays_out_while_the_sorry_server_stalls() {
        let mut r = run("caught-up");
        r.feed(0, DB2, mysql("1-1-15,2-2-10", false, true));
        r.feed(10, DB1, mysql("1-1-15", false, true));
        let down = || Outcome::Down("no answer within 1s".into());
        r.feed(200, DB1, down());
        r.feed(400, DB1, down());
        let e = r.feed(450, DB2, mysql("1-1-15,2-2-10", false, true));
        assert!(e.verdicts["write"].hold_sorry);
        // db1 returns with db2's writes and 1-1-16, which db2 never executed.
        r.feed(600, DB1, mysql("1-1-16,2-2-10", false, true));
        let e = r.feed(800, DB1, mysql("1-1-16,2-2-10", false, true));
        assert!(e.verdicts["write"].hold_sorry);
        // The sorry server stops answering (fall 2): still no way back to db1.
        r.feed(900, DB2, down());
        let e = r.feed(1100, DB2, down());
        assert!(e.verdicts["write"].hold_sorry, "{:?}", e.reports[0]);
        let waiting = e.reports[0].waiting.as_deref().unwrap();
        assert!(waiting.contains("ERRANT: 1-1-16"), "{waiting}");
        // Rebuilt, and holding all the sorry server had when last seen: back to db1 (the
        // dead sorry server takes no writes), without its replication running.
        let mut rebuilt = mysql("1-1-15,2-2-10", false, true);
        if let Outcome::Up { mysql: Some(s), .. } = &mut rebuilt {
            s.replica.as_mut().unwrap().io_running = false;
        }
        let e = r.feed(1200, DB1, rebuilt);
        assert!(!e.verdicts["write"].hold_sorry, "{:?}", e.reports[0]);
    }

    /// "Too many open files" in the agent is not the server's failure: however often a check
    /// cannot run, the verdict stands; the next real result counts as usual.
    #[test]
    fn a_check_the_agent_could_not_run_changes_no_verdict() {
        let mut r = run("caught-up");
        r.feed(0, DB2, mysql("0-2-10", false, true));
        r.feed(10, DB1, mysql("0-1-10", false, true));
        let local =
            || Outcome::Local("mysql 10.0.0.1:3306: Too many open files (os error 24)".into());
        for ms in [200, 400, 600, 800] {
            let e = r.feed(ms, DB1, local());
            assert!(!e.verdicts["write"].hold_sorry, "at {ms} ms");
            assert!(e.reports[0].reals[0].usable);
            assert_eq!(e.reports[0].reals[0].reason, None);
        }
        assert!(r.m.checks[DB1].local_error.is_some());
        r.feed(1000, DB1, mysql("0-1-10", false, true));
        assert!(r.m.checks[DB1].local_error.is_none());
        // A real failure still counts (fall 2).
        r.feed(1200, DB1, Outcome::Down("refused".into()));
        let e = r.feed(1400, DB1, Outcome::Down("refused".into()));
        assert!(e.verdicts["write"].hold_writes || e.verdicts["write"].hold_sorry);
    }

    #[test]
    fn immediate_failback_returns_on_health_alone() {
        let mut r = run("immediate");
        r.feed(0, DB2, mysql("0-2-10", false, true));
        r.feed(0, DB1, Outcome::Down("refused".into()));
        r.feed(100, DB2, mysql("0-2-50", false, true));
        r.feed(200, DB1, mysql("0-1-10", false, false));
        let e = r.feed(400, DB1, mysql("0-1-10", false, false));
        assert!(
            !e.verdicts["write"].hold_sorry,
            "the dangerous policy: back without the writes"
        );
    }

    #[test]
    fn a_read_only_writer_is_unusable_with_its_reason() {
        let mut r = run("immediate");
        let e = r.feed(0, DB1, mysql("0-1-1", true, false));
        assert_eq!(
            e.verdicts["write"].failing,
            vec![(
                "10.0.0.1".parse().unwrap(),
                "read_only=1: not writable".into()
            )]
        );
        assert!(e.verdicts["write"].hold_sorry);
        assert_eq!(e.reports[0].reals[0].health, CheckHealth::Up);
        assert!(!e.reports[0].reals[0].usable);
    }

    #[test]
    fn manual_failback_needs_the_request() {
        let mut r = run("manual");
        r.feed(0, DB1, Outcome::Down("refused".into()));
        r.feed(200, DB1, mysql("0-1-1", false, false));
        let e = r.feed(400, DB1, mysql("0-1-1", false, false));
        assert!(e.verdicts["write"].hold_sorry);
        assert_eq!(
            e.reports[0].waiting.as_deref(),
            Some("waiting for `lb-agent failback`")
        );
        r.gates
            .get_mut("write")
            .unwrap()
            .request_failback(crate::balancer::failback::Health::new(1, 1, true))
            .unwrap();
        let e = r.feed(600, DB1, mysql("0-1-1", false, false));
        assert!(!e.verdicts["write"].hold_sorry);
    }
}
