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
        CATCH_UP, DB1, Host, WRITE_VIP, counted, failback_waiting, real_field, replicating,
        second_writer_moments, start_agent, until, vip_on, write_service,
    },
    sqlclient::{self, Log, missing_on},
};

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
    /// Errant transactions of db1 removed by rebuilding it from db2, so far.
    pub rebuilt: u64,
    /// The next scenario cuts the writer off for longer than the takeover: a transaction in
    /// commit at that moment may commit there after the semi-sync timeout, never
    /// acknowledged to its client — an errant transaction, absent on db2 which took the
    /// writes. The agents must keep the writes and db2's replication away from db1 and say
    /// why (its row images would set db2's newer rows back); the operator then rebuilds db1
    /// from db2 (`repair_errant`). Such a writer change is reported at risk.
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
            rebuilt: 0,
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
            "counter {n} for {rows} rows ({} errant transaction(s) of a cut-off writer removed by rebuilding it); run time {:.0} s",
            self.rebuilt,
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
        let mut failed = Vec::new();
        if self.cut_off
            && let Err(e) = self.repair_errant()
        {
            failed.push(e);
        }
        let undone = Instant::now();
        // db1 may first replicate what db2 took meanwhile, under both clients' load.
        let back = until(CATCH_UP, || {
            vip_on(&self.lab, "db1", WRITE_VIP)
                && !vip_on(&self.lab, "db2", WRITE_VIP)
                && self.acked_on_db1_since(undone, false)
                && self.acked_on_db1_since(undone, true)
        });
        if back.is_none() {
            failed.push(format!(
                "writes of both clients not back on db1 within {CATCH_UP:?} (waiting: {})",
                failback_waiting(&self.lab, &["db1", "db2"])
            ));
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

    /// After a cut-off writer (db1) is back: if it holds errant transactions (its binary log
    /// has transactions db2, which took the writes and stopped replicating from it, has
    /// not), an agent must say so in `status` while the writes stay on db2; then db1 is
    /// rebuilt from db2 as the README says and the failback may go on. Without errant
    /// transactions (nothing was in commit at the cut, or db2 never took the writes and
    /// replicates them), nothing to do.
    pub fn repair_errant(&mut self) -> Result<(), String> {
        let (d1, d2) = (&self.db1.db, &self.db2.db);
        let errant = poll(Duration::from_secs(20), || {
            let e = mariadb::errant(d1, d2);
            // Still replicating from db1: it may yet catch up.
            (e.is_empty() || !replicating(d2)).then_some(e)
        })
        .ok_or_else(|| {
            format!(
                "db1 ahead of db2 ({:?}) while db2 still replicates from it after 20 s",
                mariadb::errant(d1, d2)
            )
        })?;
        if errant.is_empty() {
            return Ok(());
        }
        let said = poll(Duration::from_secs(20), || {
            [&self.db1, &self.db2].iter().find_map(|h| {
                let w = write_service(&self.lab, h, "failback_waiting");
                w.as_str()
                    .filter(|w| w.contains("ERRANT"))
                    .map(str::to_string)
            })
        })
        .ok_or_else(|| format!("db1 has errant transactions {errant:?}; no agent said so"))?;
        // Quarantined: no reads either (issue 13), with the GTIDs named.
        let quarantined = poll(Duration::from_secs(10), || {
            [&self.db1, &self.db2].iter().find_map(|h| {
                let why = real_field(&self.lab, h, "mysql-read", DB1, "reason");
                why.contains("quarantined: errant transactions")
                    .then_some(why)
            })
        })
        .ok_or_else(|| {
            format!(
                "db1 has errant transactions {errant:?}; still in the read pool: {:?} / {:?}",
                real_field(&self.lab, &self.db1, "mysql-read", DB1, "reason"),
                real_field(&self.lab, &self.db2, "mysql-read", DB1, "reason")
            )
        })?;
        let n: u64 = errant.iter().map(|(_, mine, theirs)| mine - theirs).sum();
        println!(
            "db1: {n} errant transaction(s) {errant:?}; the agents: {said:?}; read pool: {quarantined:?}; rebuilding db1 from db2"
        );
        mariadb::rebuild_from(d1, d2);
        self.rebuilt += n;
        Ok(())
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
        for d in [d1, d2] {
            let missing = missing_on(d, &acked);
            if missing > 0 {
                failed.push(format!(
                    "{missing} acknowledged writes missing on {}",
                    d.host
                ));
            }
            let (n, rows) = counted(d);
            if n != rows {
                failed.push(format!(
                    "{}: counter {n} for {rows} rows (gtid binlog {}, slave {})",
                    d.host,
                    d.sql("SELECT @@gtid_binlog_pos"),
                    d.sql("SELECT @@gtid_slave_pos")
                ));
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
        self.log.resume_writers();
        failed
    }
}

/// The first `Some` that `f` returns within `limit` (polled every 200 ms).
fn poll<T>(limit: Duration, mut f: impl FnMut() -> Option<T>) -> Option<T> {
    let deadline = Instant::now() + limit;
    loop {
        if let Some(v) = f() {
            return Some(v);
        }
        if Instant::now() > deadline {
            return None;
        }
        std::thread::sleep(Duration::from_millis(200));
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
