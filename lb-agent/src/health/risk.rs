//! Whether a change of a write service's writer may lose transactions, from what the checks
//! last read, without I/O. Such a change is reported loudly (log, `status`, metric, the
//! service's `notify_writer_risk` command, e-mail with `smtp_alert`), never silently.
//!
//! Failing over to the sorry server loses nothing the old writer acknowledged when the sorry
//! server had received it before the acknowledgement — semi-synchronous replication in effect
//! (with `AFTER_SYNC`, before the commit was visible to anyone) — and it applies all it
//! received before it takes writes (the gate waits for its relay log to drain). It may lose
//! transactions when:
//! - the old writer's replication was asynchronous at its last check (semi-sync off, not
//!   available, or fallen back after a timeout): what it committed since may never reach the
//!   sorry server;
//! - the old writer does not answer (hung or unreachable, not refusing connections): if it
//!   still runs it may go on committing for clients that reach it, and nobody can fence it;
//! - one of the service's replicas acknowledges semi-synchronous commits: the writer waits
//!   for one acknowledgement, from any replica (MariaDB and MySQL cannot name which), so a
//!   commit acknowledged by that replica alone may be missing on the sorry server.
//!
//! Failing back without `caught-up` hands the writes to a server that may lack the sorry
//! server's.

use super::{monitor::Monitor, mysql::NO_ANSWER};
use crate::config::{Failback, Role, Service};

/// Why failing over from `vs`'s real servers to its sorry server may lose transactions.
/// `quorum`: the writer decision is kept in etcd (`[quorum]`), so an old writer that does not
/// answer — cut off — has fenced itself before the change could commit: not a risk.
pub fn failover(m: &Monitor, vs: &Service, quorum: bool) -> Option<String> {
    if vs.role != Role::Writer {
        return None;
    }
    let mut why = Vec::new();
    for rs in &vs.reals {
        let Some(c) = m.checked(rs) else {
            why.push(format!("{} is not checked", rs.address));
            continue;
        };
        if !quorum && c.reason.as_deref().is_some_and(|r| r.contains(NO_ANSWER)) {
            why.push(format!(
                "{} does not answer (hung or unreachable): it cannot be fenced and may still commit",
                rs.address
            ));
        }
        match c.mysql.as_ref().map(|s| s.semisync.as_ref()) {
            None => why.push(format!(
                "{}: replication mode unknown (no MySQL state read)",
                rs.address
            )),
            Some(Some(ss)) if ss.enabled && ss.active && ss.clients > 0 => {}
            Some(Some(ss)) if ss.enabled => why.push(format!(
                "{}: semi-synchronous replication had fallen back to asynchronous",
                rs.address
            )),
            Some(_) => why.push(format!(
                "{}: replication is asynchronous (semi-sync off)",
                rs.address
            )),
        }
    }
    for replica in &vs.replicas {
        let acks = m
            .checks
            .iter()
            .filter(|c| c.addr == *replica)
            .filter_map(|c| c.answering())
            .any(|s| s.semisync.as_ref().is_some_and(|ss| ss.replica_enabled));
        if acks {
            why.push(format!(
                "replica {replica} acknowledges semi-synchronous commits \
                 (rpl_semi_sync_slave_enabled=ON): a commit it alone acknowledged may be \
                 missing on the sorry server"
            ));
        }
    }
    (!why.is_empty()).then(|| {
        format!(
            "{}: writes moved to the sorry server; transactions may be lost: {}",
            vs.name,
            why.join("; ")
        )
    })
}

/// Why failing `vs` back to its real servers may lose transactions.
pub fn failback(vs: &Service) -> Option<String> {
    (vs.role == Role::Writer && vs.sorry.is_some() && vs.failback != Failback::CaughtUp).then(|| {
        format!(
            "{}: writes moved back to the real servers with failback `{}`, which does not check \
             they have the sorry server's transactions",
            vs.name,
            vs.failback.name()
        )
    })
}

#[cfg(test)]
mod tests {
    use std::time::Instant;

    use super::*;
    use crate::health::{
        monitor::{Outcome, Report},
        mysql::SemiSync,
        verdict::tests::{mysql, setup},
    };

    fn with_semisync(active: bool, clients: u64) -> Outcome {
        let mut o = mysql("0-1-10", false, true);
        if let Outcome::Up { mysql: Some(s), .. } = &mut o {
            s.semisync = Some(SemiSync {
                enabled: true,
                active,
                clients,
                wait_point: "AFTER_SYNC".into(),
                replica_enabled: true,
            });
        }
        o
    }

    #[test]
    fn only_a_semi_synchronous_writer_that_refuses_connections_fails_over_safely() {
        let (cfg, mut m, _) = setup("caught-up");
        let vs = &cfg.services[0];
        let feed = |m: &mut Monitor, outcomes: &[Outcome]| {
            for o in outcomes {
                let at = Instant::now();
                m.record(Report {
                    check: 0,
                    outcome: o.clone(),
                    started: at,
                    at,
                });
            }
        };
        let refused = Outcome::Down("mysql 10.0.0.1:3306: Connection refused".into());
        let hung = Outcome::Down(format!("{NO_ANSWER} 1s"));
        feed(
            &mut m,
            &[with_semisync(true, 1), refused.clone(), refused.clone()],
        );
        assert_eq!(failover(&m, vs, false), None);
        feed(&mut m, &[with_semisync(true, 1), hung.clone(), hung]);
        assert!(failover(&m, vs, false).unwrap().contains("does not answer"));
        assert_eq!(
            failover(&m, vs, true),
            None,
            "with a quorum it fenced itself"
        );
        feed(
            &mut m,
            &[with_semisync(false, 0), refused.clone(), refused.clone()],
        );
        assert!(failover(&m, vs, false).unwrap().contains("fallen back"));
        feed(
            &mut m,
            &[mysql("0-1-10", false, true), refused.clone(), refused],
        );
        assert!(failover(&m, vs, false).unwrap().contains("asynchronous"));
        assert_eq!(failback(vs), None, "caught-up checks");
        let (cfg, _, _) = setup("immediate");
        assert!(failback(&cfg.services[0]).unwrap().contains("immediate"));
    }

    /// A replica that acknowledges semi-sync commits makes every failover a risk: the
    /// writer's one awaited acknowledgement may have been its.
    #[test]
    fn a_replica_that_acknowledges_semi_sync_commits_is_a_risk() {
        let pw = crate::health::verdict::tests::password_file("risk");
        let check = format!(
            "check = {{ type = \"mysql\", user = \"lb\", password_file = \"{}\" }}",
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
replicas = ["10.0.0.3"]
[[virtual_server.real_server]]
address = "10.0.0.1"
{check}
[virtual_server.sorry_server]
address = "10.0.0.2"
{check}
[virtual_server.replication]
user = "repl"
password_file = "{pw}"
[[virtual_server]]
name = "read"
address = "10.0.0.101"
port = 3306
[[virtual_server.real_server]]
address = "10.0.0.3"
{check}
"#,
            pw = pw.display()
        );
        let cfg = crate::config::Config::parse(std::path::Path::new("t.toml"), &text).unwrap();
        let mut m = Monitor::new(&cfg).unwrap();
        let replica = m
            .checks
            .iter()
            .position(|c| c.addr.to_string() == "10.0.0.3")
            .unwrap();
        let feed = |m: &mut Monitor, check, o: Outcome| {
            let at = Instant::now();
            m.record(Report {
                check,
                outcome: o,
                started: at,
                at,
            });
        };
        feed(&mut m, 0, with_semisync(true, 2));
        let mut acking = with_semisync(false, 0);
        if let Outcome::Up { mysql: Some(s), .. } = &mut acking {
            s.semisync.as_mut().unwrap().enabled = false;
        }
        feed(&mut m, replica, acking.clone());
        let vs = cfg.service("write").unwrap();
        let why = failover(&m, vs, false).unwrap();
        assert!(
            why.contains("replica 10.0.0.3 acknowledges") && !why.contains("10.0.0.1"),
            "{why}"
        );
        if let Outcome::Up { mysql: Some(s), .. } = &mut acking {
            s.semisync.as_mut().unwrap().replica_enabled = false;
        }
        feed(&mut m, replica, acking);
        assert_eq!(failover(&m, vs, false), None);
        let _ = std::fs::remove_dir_all(pw.parent().unwrap());
    }
}
