//! What every fault scenario of the one-writer tests checks (DESIGN §7): two clients
//! writing through the write VIP (a row and a counter increment per transaction), a fault
//! injected and undone, the writes back on db1, then — with the writers paused and
//! replication settled — no moment with two servers acknowledging writes, every
//! acknowledged id on both servers, the counter equal to the rows, checksums equal,
//! replication running both ways; and each fault's outage per client. Shared by
//! `one_writer.rs` (two hosts) and `quorum.rs` (two hosts and an etcd witness).

use std::{
    sync::{Arc, atomic::Ordering},
    thread::JoinHandle,
    time::{Duration, Instant},
};

use super::{
    Lab, mariadb,
    pair::{
        DB1, Host, WRITE_VIP, counted, replicating, second_writer_moments, start_agent, until,
        vip_on, write_service,
    },
    sqlclient::{self, Log, missing_on},
};

/// The clients writing through the write VIP (`cl`, `cl2`).
const CLIENTS: u64 = 2;

/// The second client's ids start here (the first's at 1).
pub const CL2_IDS: u64 = 1_000_000;

/// What one fault did.
pub struct Outcome {
    pub fault: &'static str,
    pub outage_cl: Duration,
    pub outage_cl2: Duration,
    pub acked: usize,
    /// Writer changes the agents reported as possibly losing transactions, during the fault.
    pub risks: u64,
    /// What went wrong (empty: every check held).
    pub failed: Vec<String>,
}

pub struct Run {
    pub lab: Lab,
    pub db1: Host,
    pub db2: Host,
    pub log: Arc<Log>,
    /// Rows whose counter increment is gone so far (rows − counter): transactions a cut-off
    /// writer committed without acknowledging them (see `cut_off`).
    pub unacked_lost: u64,
    /// The next scenario cuts the writer off for longer than the takeover: a transaction in
    /// commit at that moment may commit there after the semi-sync timeout, never
    /// acknowledged to its client; its row survives, its increment is overwritten. Such a
    /// writer change is reported at risk; the scenario must show the report and lose no
    /// acknowledged write, and may leave rows − counter higher.
    pub cut_off: bool,
    pub started: Instant,
}

impl Run {
    /// Both clients writing through the write VIP — `cl2` with its ARP entry for it stuck on
    /// db2, the backup, all along — until both are seen on db1.
    pub fn start(lab: Lab, db1: Host, db2: Host) -> (Run, Vec<JoinHandle<()>>) {
        let db2_mac = lab.mac("db2", "eth0");
        lab.ip(
            "cl2",
            &[
                "neigh",
                "replace",
                WRITE_VIP,
                "lladdr",
                &db2_mac,
                "dev",
                "eth0",
                "nud",
                "permanent",
            ],
        );
        let log = Arc::new(Log::default());
        let writers = vec![
            sqlclient::start_writer(&lab, "cl", WRITE_VIP, DB1, log.clone(), 1),
            sqlclient::start_writer(&lab, "cl2", WRITE_VIP, DB1, log.clone(), CL2_IDS),
        ];
        let run = Run {
            lab,
            db1,
            db2,
            log,
            unacked_lost: 0,
            cut_off: false,
            started: Instant::now(),
        };
        assert!(
            until(Duration::from_secs(30), || {
                let now = Instant::now() - Duration::from_secs(1);
                run.acked_on_db1_since(now, false) && run.acked_on_db1_since(now, true)
            })
            .is_some(),
            "both clients write to db1 through the write VIP (cl2 by way of db2)"
        );
        (run, writers)
    }

    /// Stops the clients, prints the table and fails with every failed check.
    pub fn finish(self, writers: Vec<JoinHandle<()>>, outcomes: &[Outcome]) {
        self.log.stop.store(true, Ordering::Relaxed);
        for w in writers {
            w.join().unwrap();
        }
        println!(
            "\n{:<46} {:>10} {:>10} {:>8} {:>8}  result",
            "fault", "outage cl", "cl2", "acked", "at risk"
        );
        for o in outcomes {
            println!(
                "{:<46} {:>8.2} s {:>8.2} s {:>8} {:>8}  {}",
                o.fault,
                o.outage_cl.as_secs_f64(),
                o.outage_cl2.as_secs_f64(),
                o.acked,
                o.risks,
                if o.failed.is_empty() { "ok" } else { "FAILED" }
            );
        }
        let (n, rows) = counted(&self.db1.db);
        println!(
            "counter {n} for {rows} rows ({} unacknowledged transaction(s) of the cut-off writer); run time {:.0} s",
            self.unacked_lost,
            self.started.elapsed().as_secs_f64()
        );
        let failed: Vec<String> = outcomes
            .iter()
            .flat_map(|o| o.failed.iter().map(move |f| format!("{}: {f}", o.fault)))
            .collect();
        assert!(failed.is_empty(), "{failed:#?}");
    }

    /// Risk reports so far, both agents together.
    pub fn risks(&self) -> u64 {
        [&self.db1, &self.db2]
            .iter()
            .map(|h| {
                write_service(&self.lab, h, "writer_risks")
                    .as_u64()
                    .unwrap_or(0)
            })
            .sum()
    }

    /// Runs `fault` (it undoes itself), waits until the writes of both clients are back on
    /// db1 with the VIP on db1 only, and checks what one writer means.
    pub fn scenario(&mut self, fault: &'static str, inject: impl FnOnce(&mut Run)) -> Outcome {
        let t = Instant::now();
        let risks_before = self.risks();
        inject(self);
        let undone = Instant::now();
        let mut failed = Vec::new();
        let back = until(Duration::from_secs(30), || {
            vip_on(&self.lab, "db1", WRITE_VIP)
                && !vip_on(&self.lab, "db2", WRITE_VIP)
                && self.acked_on_db1_since(undone, false)
                && self.acked_on_db1_since(undone, true)
        });
        if back.is_none() {
            failed.push("writes of both clients not back on db1 within 30 s".into());
        }
        std::thread::sleep(Duration::from_secs(1));
        failed.extend(self.one_writer_held(t));
        self.cut_off = false;
        let acked: Vec<_> = self
            .log
            .acked
            .lock()
            .unwrap()
            .iter()
            .filter(|a| a.at >= t)
            .copied()
            .collect();
        let outage = |cl2: bool| {
            let mut at: Vec<Instant> = acked
                .iter()
                .filter(|a| (a.id >= CL2_IDS) == cl2)
                .map(|a| a.at)
                .collect();
            at.sort();
            std::iter::once(t)
                .chain(at)
                .collect::<Vec<_>>()
                .windows(2)
                .map(|w| w[1].duration_since(w[0]))
                .max()
                .unwrap_or_default()
        };
        let o = Outcome {
            fault,
            outage_cl: outage(false),
            outage_cl2: outage(true),
            acked: acked.len(),
            risks: self.risks().saturating_sub(risks_before),
            failed,
        };
        println!(
            "{fault}: outage cl {:.2} s, cl2 {:.2} s, {} acknowledged, {} at risk{}",
            o.outage_cl.as_secs_f64(),
            o.outage_cl2.as_secs_f64(),
            o.acked,
            o.risks,
            if o.failed.is_empty() {
                String::new()
            } else {
                format!(", FAILED: {:?}", o.failed)
            }
        );
        o
    }

    pub fn acked_on_db1_since(&self, since: Instant, cl2: bool) -> bool {
        self.log
            .acked
            .lock()
            .unwrap()
            .iter()
            .any(|a| a.at > since && a.server == 1 && (a.id >= CL2_IDS) == cl2)
    }

    /// With the writers paused and replication settled: what one writer must leave behind.
    pub fn one_writer_held(&mut self, since: Instant) -> Vec<String> {
        let mut failed = Vec::new();
        if !self.log.pause_writers(2) {
            failed.push("the writers did not pause".into());
        }
        let (d1, d2) = (&self.db1.db, &self.db2.db);
        if !mariadb::wait_converged(d1, d2, Duration::from_secs(30)) {
            failed.push("the servers did not converge within 30 s".into());
        }
        let twice = second_writer_moments(&self.log, since);
        if !twice.is_empty() {
            failed.push(format!("second-writer moments: {twice:?}"));
        }
        let acked = self.log.acked.lock().unwrap().clone();
        let mut lost_now = self.unacked_lost;
        for d in [d1, d2] {
            let missing = missing_on(d, &acked);
            if missing > 0 {
                failed.push(format!(
                    "{missing} acknowledged writes missing on {}",
                    d.host
                ));
            }
            let (n, rows) = counted(d);
            let lost = rows.saturating_sub(n);
            lost_now = lost;
            // A cut-off writer may commit at most the transactions in flight at the cut:
            // one per client.
            let allowed = if self.cut_off { CLIENTS } else { 0 };
            if n > rows || lost < self.unacked_lost || lost - self.unacked_lost > allowed {
                failed.push(format!(
                    "{}: counter {n} for {rows} rows ({} lost before; gtid binlog {}, slave {})",
                    d.host,
                    self.unacked_lost,
                    d.sql("SELECT @@gtid_binlog_pos"),
                    d.sql("SELECT @@gtid_slave_pos")
                ));
            } else if lost > self.unacked_lost {
                println!(
                    "{}: {} unacknowledged transaction(s) the cut-off writer committed lost their increment",
                    d.host,
                    lost - self.unacked_lost
                );
            }
            if !replicating(d) {
                failed.push(format!("{}: replication not running", d.host));
            }
        }
        let checksum = |d: &mariadb::Db| d.sql("CHECKSUM TABLE app.w, app.c");
        if checksum(d1) != checksum(d2) {
            failed.push("checksums differ".into());
        }
        let violations = self.log.violations.lock().unwrap().clone();
        if !violations.is_empty() {
            failed.push(format!(
                "writes back on db1 before it had db2's: {violations:?}"
            ));
        }
        // (Both servers' counts agree: their checksums are compared above.)
        if self.cut_off {
            self.unacked_lost = lost_now;
        }
        self.log.resume_writers();
        failed
    }
}

/// (d): db1's MariaDB SIGKILLed while both clients write; the writes move to db2 (the sorry
/// server); with `kill_agent` db1's agent — the one deciding — is SIGKILLed then too and
/// restarted (db2's agent takes the decision and its gate, and hands them back); db1's
/// MariaDB restarts, catches up, and the writes fail back.
pub fn kill_writer_then_restart(r: &mut Run, kill_agent: bool) {
    let killed = Instant::now();
    r.lab.kill(r.db1.db.pid);
    assert!(
        r.log.wait_for(2, killed, Duration::from_secs(15)).is_some(),
        "the writes moved to db2"
    );
    if kill_agent {
        r.lab.kill(r.db1.agent.take().unwrap());
        assert!(
            until(Duration::from_secs(10), || vip_on(&r.lab, "db2", WRITE_VIP)).is_some(),
            "db2 took the VIP"
        );
        std::thread::sleep(Duration::from_secs(2));
        start_agent(&mut r.lab, &mut r.db1);
    }
    std::thread::sleep(Duration::from_secs(2));
    r.lab.mariadb_start(&mut r.db1.db, &[]);
}
