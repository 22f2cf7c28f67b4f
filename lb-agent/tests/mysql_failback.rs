//! Health checks and failback against real MariaDB: two `mariadbd` in namespaces,
//! master-master with GTID, behind lb-agent's write VIP (db1 the writer, db2 the sorry
//! server), and a client writing through the VIP all along.
//!
//! Each write is one transaction: a row with a unique id, and an increment of one counter row.
//! The client records every acknowledged write and which server took it; whenever writes come
//! back to db1 after db2 took some, it asks db1 directly whether it holds all of them.
//!
//! - `caught_up_failback_loses_no_write`: db1 is SIGKILLed, restarted with its replication
//!   held back for a while, SIGSTOPped and resumed. Writes return to db1 only once it has
//!   replicated what db2 took; at the end every acknowledged write is on both servers and
//!   their checksums are equal.
//! - `immediate_failback_is_dangerous`: the same restart with `immediate` (the recipe's
//!   behaviour). Writes return to db1 while it lacks db2's: the test shows it (and the
//!   counter row then loses increments once replication resumes).
//! - `graceful_fenced_handover`: with `fence`, a db1 that returns without db2's writes is
//!   made read-only (a client connected to it directly cannot write to both sides); with
//!   `graceful`, the handover makes db2 read-only until db1 has all of its writes, flips, and
//!   makes both writable again.
//! - `a_busy_writer_gets_the_writes_back`: db1's SQL thread slowed (a trigger sleeping per
//!   replicated row) catches up under load and gets the writes back, nothing lost.
//! - `a_thousand_checks_leave_aborted_connects_alone`: the check ends its sessions cleanly.

mod common;

use std::{
    net::SocketAddr,
    sync::{Arc, atomic::Ordering},
    time::{Duration, Instant},
};

use common::{
    Lab,
    mariadb::{self, APP_PASSWORD, APP_USER, CHECK_PASSWORD, CHECK_USER, Db},
    sqlclient::{self, Log, missing_on, opts},
};
use mysql_async::prelude::Queryable;

const VIP: &str = "10.96.0.100";
const DB1: &str = "10.96.0.11";
const DB2: &str = "10.96.0.12";

struct Setup {
    lab: Lab,
    db1: Db,
    db2: Db,
    socket: String,
}

/// Client, LB and two MariaDB servers on a bridge; master-master replication; the schema;
/// lb-agent on the LB with the write VIP (`service`: its failback settings).
fn setup(tag: &str, service: &str) -> Setup {
    let mut lab = Lab::new(tag);
    lab.bridge();
    lab.host("cl", "10.96.0.10/24");
    lab.host("lb", "10.96.0.1/24");
    lab.host("db1", &format!("{DB1}/24"));
    lab.host("db2", &format!("{DB2}/24"));
    lab.ip("lb", &["addr", "add", &format!("{VIP}/32"), "dev", "eth0"]);
    for r in ["db1", "db2"] {
        lab.ip(r, &["addr", "add", &format!("{VIP}/32"), "dev", "lo"]);
        for dev in ["all", "eth0"] {
            lab.sysctl(r, &format!("net.ipv4.conf.{dev}.arp_ignore"), "1");
            lab.sysctl(r, &format!("net.ipv4.conf.{dev}.arp_announce"), "2");
        }
    }
    let db1 = lab.mariadb("db1", DB1, 1);
    let db2 = lab.mariadb("db2", DB2, 2);
    mariadb::replicate_both_ways(&db1, &db2);
    sqlclient::create_schema(&db1);
    assert!(
        mariadb::wait_converged(&db1, &db2, Duration::from_secs(10)),
        "replication did not start"
    );

    let dir = std::env::temp_dir().join(&lab.prefix);
    let pw = mariadb::check_password_file(&lab);
    let socket = dir.join("control.sock").to_string_lossy().into_owned();
    let check = format!(
        "check = {{ type = \"mysql\", user = \"{CHECK_USER}\", password_file = \"{}\", interval = \"200ms\", timeout = \"500ms\", rise = 2, fall = 2 }}",
        pw.display()
    );
    // Every notification appends a line to notify.log.
    let notify = dir.join("notify.log").to_string_lossy().into_owned();
    let config = format!(
        "[global]\ncontrol_socket = \"{socket}\"\n\n[dataplane]\ninterface = \"eth0\"\nxdp_mode = \"skb\"\npin_dir = \"{}\"\n\n[[virtual_server]]\nname = \"mysql-write\"\naddress = \"{VIP}\"\nport = 3306\nrole = \"writer\"\nquorum_down = \"echo quorum_down >> {notify}\"\nquorum_up = \"echo quorum_up >> {notify}\"\nnotify_writer_risk = \"echo writer_risk >> {notify}\"\n{service}\n[[virtual_server.real_server]]\naddress = \"{DB1}\"\nnotify_down = \"echo db1_down >> {notify}\"\nnotify_up = \"echo db1_up >> {notify}\"\n{check}\n[virtual_server.sorry_server]\naddress = \"{DB2}\"\n{check}\n",
        lab.pin_dir("lb")
    );
    let path = dir.join("lb.toml");
    std::fs::write(&path, config).unwrap();
    let log = dir.join("lb-agent.log").to_string_lossy().into_owned();
    lab.start_agent("lb", &path, &log);
    Setup {
        lab,
        db1,
        db2,
        socket,
    }
}

fn status(socket: &str) -> String {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_lb-agent"))
        .args(["status", "--socket", socket])
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn signal(pid: u32, sig: i32) {
    // SAFETY: a process this test started.
    unsafe { libc::kill(pid as i32, sig) };
}

/// The common start of the scenarios: the client writing through the VIP, its writes on db1;
/// then db1 SIGKILLed and the writes moving to db2 (the sorry server). Returns the writer's
/// thread and how long the move took.
fn write_then_kill_db1(
    lab: &mut Lab,
    db1: &Db,
    log: &Arc<Log>,
) -> (std::thread::JoinHandle<()>, Duration) {
    let writer = sqlclient::start_writer(lab, "cl", VIP, DB1, log.clone(), 1);
    log.wait_for(1, Instant::now(), Duration::from_secs(10))
        .expect("writes reach db1 through the VIP");
    std::thread::sleep(Duration::from_secs(1));
    let killed = Instant::now();
    lab.kill(db1.pid);
    let took = log
        .wait_for(2, killed, Duration::from_secs(5))
        .expect("writes move to db2 after db1 is killed");
    std::thread::sleep(Duration::from_secs(1));
    (writer, took)
}

#[test]
fn caught_up_failback_loses_no_write() {
    caught_up_failback("mfc", false);
}

/// The writer hangs (SIGSTOP) and resumes: the writes go to the sorry server and come back,
/// every acknowledged row is on both servers. A known gap stays (DESIGN §7 I3, issue 11):
/// a transaction the writer had received before it hung may commit when it resumes, on the
/// counter value it read before the sorry server's increments; its row image then
/// overwrites them on both servers. This test shows it rather than hiding it.
#[test]
fn a_hung_writer_that_resumes_keeps_every_row() {
    caught_up_failback("mfh", true);
}

/// db1 killed, restarted with its replication held back (the writes wait on the sorry
/// server until it has caught up), then, with `hang`, SIGSTOPped and SIGCONTed.
fn caught_up_failback(tag: &str, hang: bool) {
    let Setup {
        mut lab,
        mut db1,
        db2,
        socket,
    } = setup(tag, "failback = \"caught-up\"\ngraceful = true");
    let log = Arc::new(Log::default());
    // 1. db1 is killed: writes move to db2 (the sorry server).
    let (writer, took) = write_then_kill_db1(&mut lab, &db1, &log);
    println!("killed db1: writes on db2 after {took:?}");

    // 2. db1 comes back with its replication held back: it answers, it is writable, but it
    //    lacks db2's writes, so the writes stay on db2.
    let restarted = Instant::now();
    lab.mariadb_start(&mut db1, &["--skip-slave-start"]);
    std::thread::sleep(Duration::from_secs(2));
    assert!(
        log.first_on(1, restarted).is_none(),
        "caught-up: writes went back to db1 before it replicated db2's"
    );
    let text = status(&socket);
    assert!(text.contains("waiting for catch-up"), "{text}");
    assert!(text.contains("SORRY SERVER"), "{text}");
    // db2 writes semi-synchronously to db1 again once db1 replicates; before, it fell back.
    assert!(text.contains("semisync "), "{text}");
    println!("{text}");
    // Its replication resumes: writes return once it holds what db2 took.
    let resumed = Instant::now();
    db1.sql("START SLAVE");
    let took = log
        .wait_for(1, resumed, Duration::from_secs(10))
        .expect("writes return to db1 after it caught up");
    println!("db1 replication resumed: writes back on db1 after {took:?}");

    // 3. db1 hangs (SIGSTOP: its kernel still accepts connections): the check's timeout
    //    catches it; resumed, it catches up and takes the writes again.
    std::thread::sleep(Duration::from_secs(1));
    if hang {
        hang_and_resume(&db1, &log);
    }
    finish(&lab, &db1, &db2, &log, writer, hang);
}

/// CI, 2026-12-07: after a reboot the writes stayed on the sorry server 24 s (the lab's
/// budget was 20 s) while the writer replicated what it had missed, under the clients' load,
/// on a slow disk: one SQL thread, one fsync per transaction. Here db1's SQL thread is made
/// that busy on purpose: a trigger on db1 only (run for replicated rows too) sleeps 6 ms per
/// row, with a client committing a row every 10 ms or more. db1 catches up, the writes come
/// back, and nothing is lost on the way; the catch-up time is printed (5.8 s on the
/// development VM; at 12 ms per row db1 falls behind for good and, rightly, never gets them).
#[test]
fn a_busy_writer_gets_the_writes_back() {
    let Setup {
        mut lab,
        mut db1,
        db2,
        socket,
    } = setup("mfb", "failback = \"caught-up\"\ngraceful = true");
    db1.sql(
        "SET sql_log_bin = 0;
         CREATE TRIGGER app.slow BEFORE INSERT ON app.w FOR EACH ROW SET @slept = SLEEP(0.006);",
    );
    let log = Arc::new(Log::default());
    let (writer, took) = write_then_kill_db1(&mut lab, &db1, &log);
    println!("killed db1: writes on db2 after {took:?}");
    std::thread::sleep(Duration::from_secs(2));
    let restarted = Instant::now();
    lab.mariadb_start(&mut db1, &["--slave-run-triggers-for-rbr=YES"]);
    let back = log.wait_for(1, restarted, common::pair::CATCH_UP);
    let busy = db1.sql("SELECT @@slave_run_triggers_for_rbr");
    assert_eq!(
        busy.trim(),
        "YES",
        "the trigger does not run for replicated rows"
    );
    println!("db1 restarted with a busy SQL thread: writes back on db1 after {back:?}");
    assert!(
        back.is_some(),
        "writes never returned:\n{}",
        status(&socket)
    );
    std::thread::sleep(Duration::from_secs(1));
    finish(&lab, &db1, &db2, &log, writer, false);
}

fn hang_and_resume(db1: &Db, log: &Log) {
    let stopped = Instant::now();
    signal(db1.pid, libc::SIGSTOP);
    let took = log
        .wait_for(2, stopped, Duration::from_secs(5))
        .expect("writes move to db2 while db1 hangs");
    println!("SIGSTOPped db1: writes on db2 after {took:?}");
    std::thread::sleep(Duration::from_secs(1));
    let continued = Instant::now();
    signal(db1.pid, libc::SIGCONT);
    let took = log
        .wait_for(1, continued, Duration::from_secs(15))
        .expect("writes return to db1 after SIGCONT");
    println!("SIGCONTed db1: writes back on db1 after {took:?}");
    std::thread::sleep(Duration::from_secs(1));
}

/// Stops the writer and checks what every caught-up run must show.
fn finish(
    lab: &Lab,
    db1: &Db,
    db2: &Db,
    log: &Log,
    writer: std::thread::JoinHandle<()>,
    hung: bool,
) {
    log.stop.store(true, Ordering::Relaxed);
    writer.join().unwrap();
    assert!(
        mariadb::wait_converged(db1, db2, Duration::from_secs(20)),
        "the servers did not converge"
    );
    let acked = log.acked.lock().unwrap().clone();
    let on = |s| acked.iter().filter(|a| a.server == s).count();
    println!(
        "{} acknowledged writes ({} on db1, {} on db2)",
        acked.len(),
        on(1),
        on(2)
    );
    assert!(on(1) > 50 && on(2) > 20, "both servers took writes");
    assert_eq!(
        missing_on(db1, &acked),
        0,
        "acknowledged writes missing on db1"
    );
    assert_eq!(
        missing_on(db2, &acked),
        0,
        "acknowledged writes missing on db2"
    );
    let checksum = |d: &Db| d.sql("CHECKSUM TABLE app.w, app.c");
    assert_eq!(checksum(db1), checksum(db2), "the servers differ");
    for d in [db1, db2] {
        let n: u64 = d
            .sql("SELECT n FROM app.c WHERE k = 1")
            .trim()
            .parse()
            .unwrap();
        let rows: u64 = d.sql("SELECT COUNT(*) FROM app.w").trim().parse().unwrap();
        if hung {
            // The known gap (see `a_hung_writer_that_resumes_keeps_every_row`): shown.
            println!(
                "{}: counter {n} for {rows} rows ({} increments lost)",
                d.host,
                rows - n.min(rows)
            );
            assert!(n <= rows, "{}: more increments than transactions", d.host);
        } else {
            // No increment lost: one per row on both.
            assert_eq!(n, rows, "{}: the counter lost increments", d.host);
        }
    }
    let violations = log.violations.lock().unwrap().clone();
    assert!(violations.is_empty(), "{violations:#?}");
    let notified =
        std::fs::read_to_string(std::env::temp_dir().join(&lab.prefix).join("notify.log"))
            .unwrap_or_default();
    // A killed writer whose commits were semi-synchronous loses nothing: no risk reported.
    // A hung one cannot be fenced and may still commit: reported.
    let risks = notified.lines().filter(|l| *l == "writer_risk").count();
    if hung {
        assert!(
            risks >= 1,
            "a hung writer's failover is at risk:\n{notified}"
        );
    } else {
        assert_eq!(
            risks, 0,
            "semi-synchronous failover reported at risk:\n{notified}"
        );
    }
    // notify_down / notify_up and quorum_down / quorum_up, once each for the kill (and once
    // more for a hang), and one more quorum_up at the start: a fresh `caught-up` service
    // starts on its sorry server until db1 has shown it is caught up.
    let events = 1 + hung as usize;
    for (what, times) in [
        ("db1_down", events),
        ("db1_up", events),
        ("quorum_down", events),
        ("quorum_up", events + 1),
    ] {
        // At least: a check that flaps on a loaded machine adds a pair.
        assert!(
            notified.lines().filter(|l| *l == what).count() >= times,
            "{what} fewer than {times} times in:\n{notified}"
        );
    }
}

#[test]
fn immediate_failback_is_dangerous() {
    let Setup {
        mut lab,
        mut db1,
        db2,
        socket,
    } = setup("mfi", "failback = \"immediate\"");
    let log = Arc::new(Log::default());
    let (writer, _) = write_then_kill_db1(&mut lab, &db1, &log);
    // db1 returns without db2's writes: `immediate` hands it the writes at once.
    let restarted = Instant::now();
    lab.mariadb_start(&mut db1, &["--skip-slave-start"]);
    let took = log
        .wait_for(1, restarted, Duration::from_secs(5))
        .expect("immediate: writes return to db1 as soon as it answers");
    println!("immediate: writes back on db1 {took:?} after its restart, replication not running");
    std::thread::sleep(Duration::from_secs(1));
    log.stop.store(true, Ordering::Relaxed);
    writer.join().unwrap();
    let violations = log.violations.lock().unwrap().clone();
    println!("what immediate failback did: {violations:#?}");
    assert!(
        !violations.is_empty(),
        "immediate failback should have sent writes to a db1 lacking db2's writes"
    );
    // And it said so: the failback is reported as a writer change at risk.
    let text = status(&socket);
    assert!(text.contains("TRANSACTIONS MAY BE LOST"), "{text}");
    let notified =
        std::fs::read_to_string(std::env::temp_dir().join(&lab.prefix).join("notify.log"))
            .unwrap_or_default();
    assert!(notified.lines().any(|l| l == "writer_risk"), "{notified}");
    // What that costs once replication resumes: db2's row images overwrite db1's counter and
    // the other way round (lost increments), or replication stops on a conflict.
    db1.sql("START SLAVE");
    let converged = mariadb::wait_converged(&db1, &db2, Duration::from_secs(10));
    for d in [&db1, &db2] {
        println!(
            "{}: counter {} for {} rows (converged: {converged})",
            d.host,
            d.try_sql("SELECT n FROM app.c WHERE k = 1")
                .unwrap_or_default(),
            d.try_sql("SELECT COUNT(*) FROM app.w").unwrap_or_default()
        );
    }
}

/// A direct write to `addr` (not through the VIP) as the application user.
fn direct_write(lab: &Lab, addr: &'static str) -> Result<(), String> {
    lab.within("cl", move || {
        common::block_on(async {
            let mut c = mysql_async::Conn::new(opts(addr, APP_USER, APP_PASSWORD))
                .await
                .map_err(|e| e.to_string())?;
            let r = c
                .query_drop("INSERT INTO w (id, server) VALUES (999999999, 0)")
                .await
                .map_err(|e| e.to_string());
            let _ = c.disconnect().await;
            r
        })
    })
}

#[test]
fn graceful_fenced_handover() {
    let Setup {
        mut lab,
        mut db1,
        db2,
        socket,
    } = setup(
        "mfg",
        "failback = \"caught-up\"\ngraceful = true\nfence = true",
    );
    let log = Arc::new(Log::default());
    let (writer, _) = write_then_kill_db1(&mut lab, &db1, &log);

    // db1 returns writable but without db2's writes: fenced.
    let restarted = Instant::now();
    lab.mariadb_start(&mut db1, &["--skip-slave-start"]);
    let deadline = Instant::now() + Duration::from_secs(5);
    while db1.sql("SELECT @@global.read_only") != "1" {
        assert!(Instant::now() < deadline, "db1 was not fenced");
        std::thread::sleep(Duration::from_millis(20));
    }
    println!("db1 fenced {:?} after its restart", restarted.elapsed());
    let e = direct_write(&lab, DB1).expect_err("a direct write to the fenced db1");
    assert!(
        e.contains("read-only") || e.contains("READ-ONLY") || e.contains("read_only"),
        "{e}"
    );
    assert!(log.first_on(1, restarted).is_none(), "writes went to db1");
    let text = status(&socket);
    assert!(text.contains("waiting for catch-up"), "{text}");

    // Replication resumes: the graceful handover brings the writes back, and both servers end
    // writable.
    let resumed = Instant::now();
    db1.sql("START SLAVE");
    let took = log
        .wait_for(1, resumed, Duration::from_secs(15))
        .expect("writes return to db1 after the handover");
    println!("handover: writes back on db1 {took:?} after replication resumed");
    std::thread::sleep(Duration::from_secs(1));
    log.stop.store(true, Ordering::Relaxed);
    writer.join().unwrap();
    // Both end writable, the writes on db1 (bounded: a check that flaps on a loaded machine
    // sends the writes to db2 and through another fenced handover).
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let settled = db1.sql("SELECT @@global.read_only") == "0"
            && db2.sql("SELECT @@global.read_only") == "0"
            && !status(&socket).contains("SORRY SERVER");
        if settled {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "not settled: db1 read_only={}, db2 read_only={}\n{}",
            db1.sql("SELECT @@global.read_only"),
            db2.sql("SELECT @@global.read_only"),
            status(&socket)
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(
        mariadb::wait_converged(&db1, &db2, Duration::from_secs(20)),
        "the servers did not converge"
    );
    let acked = log.acked.lock().unwrap().clone();
    assert_eq!(missing_on(&db1, &acked), 0);
    assert_eq!(missing_on(&db2, &acked), 0);
    let checksum = |d: &Db| d.sql("CHECKSUM TABLE app.w, app.c");
    assert_eq!(checksum(&db1), checksum(&db2), "the servers differ");
    let violations = log.violations.lock().unwrap().clone();
    assert!(violations.is_empty(), "{violations:#?}");
}

#[test]
fn a_thousand_checks_leave_aborted_connects_alone() {
    let mut lab = Lab::new("mfa");
    lab.bridge();
    lab.host("lb", "10.96.0.1/24");
    lab.host("db1", &format!("{DB1}/24"));
    let db1 = lab.mariadb("db1", DB1, 1);
    let aborted = || db1.sql("SHOW GLOBAL STATUS LIKE 'Aborted_connects'");
    let before = aborted();
    let target = lb_agent::health::mysql::Target {
        addr: SocketAddr::new(DB1.parse().unwrap(), 3306),
        user: CHECK_USER.into(),
        password: CHECK_PASSWORD.into(),
        timeout: Duration::from_secs(2),
    };
    let started = Instant::now();
    let failures = lab.within("lb", move || {
        common::block_on(async {
            let mut failures = Vec::new();
            for _ in 0..1000 {
                match lb_agent::health::mysql::probe(&target, true).await {
                    Ok(s) => assert!(s.mariadb && !s.read_only, "{s:?}"),
                    Err(e) => failures.push(e),
                }
            }
            failures
        })
    });
    println!("1000 checks in {:?}", started.elapsed());
    assert!(failures.is_empty(), "{failures:?}");
    assert_eq!(aborted(), before, "the checks aborted connections");
    // And a wrong password is a clear failure, not a hang.
    let bad = lb_agent::health::mysql::Target {
        addr: SocketAddr::new(DB1.parse().unwrap(), 3306),
        user: CHECK_USER.into(),
        password: "wrong".into(),
        timeout: Duration::from_secs(2),
    };
    let e = lab.within("lb", move || {
        common::block_on(lb_agent::health::mysql::probe(&bad, false)).unwrap_err()
    });
    assert!(e.to_string().contains("Access denied"), "{e}");
}

/// Whether the agent's write service is on its sorry server (asked over the control socket).
fn on_sorry(socket: &str) -> Option<bool> {
    let v = lb_agent::control::ask(
        std::path::Path::new(socket),
        &lb_agent::control::Request::Status,
    )
    .ok()?;
    v["services"][0]["using_sorry_server"].as_bool()
}

/// Polls (every 2 ms, bounded) until the service's sorry state is `want`; how long it took.
fn until_sorry(socket: &str, want: bool, since: Instant, limit: Duration) -> Option<Duration> {
    while since.elapsed() < limit {
        if on_sorry(socket) == Some(want) {
            return Some(since.elapsed());
        }
        std::thread::sleep(Duration::from_millis(2));
    }
    None
}

/// `cargo xtask bench`: with interval 200 ms, fall 2 and timeout 500 ms, how long after a
/// SIGKILL and after a SIGSTOP of the writer the write VIP's table points at the sorry server,
/// and how long the switch itself (decision → maps written) takes, from the agent's log.
#[test]
#[ignore = "a benchmark: cargo xtask bench"]
fn detection_and_switch_times() {
    const RUNS: usize = 3;
    let Setup {
        mut lab,
        mut db1,
        db2: _,
        socket,
    } = setup("mfb", "failback = \"caught-up\"");
    let median = |mut v: Vec<Duration>| {
        v.sort();
        v[v.len() / 2]
    };
    let mut killed = Vec::new();
    let mut hung = Vec::new();
    for _ in 0..RUNS {
        if until_sorry(&socket, false, Instant::now(), Duration::from_secs(20)).is_none() {
            let log = std::env::temp_dir().join(&lab.prefix).join("lb-agent.log");
            panic!(
                "db1 not in the pool:\n{}\n{}",
                status(&socket),
                std::fs::read_to_string(log).unwrap_or_default()
            );
        }
        let t = Instant::now();
        lab.kill(db1.pid);
        killed.push(until_sorry(&socket, true, t, Duration::from_secs(5)).expect("detected"));
        lab.mariadb_start(&mut db1, &[]);
        until_sorry(&socket, false, Instant::now(), Duration::from_secs(20)).expect("back");
        let t = Instant::now();
        signal(db1.pid, libc::SIGSTOP);
        hung.push(until_sorry(&socket, true, t, Duration::from_secs(5)).expect("detected"));
        signal(db1.pid, libc::SIGCONT);
    }
    let log = std::fs::read_to_string(std::env::temp_dir().join(&lab.prefix).join("lb-agent.log"))
        .unwrap_or_default();
    let mut switches: Vec<u64> = log
        .lines()
        .filter_map(|l| l.split("switch_us=").nth(1))
        .filter_map(|s| s.split_whitespace().next()?.parse().ok())
        .collect();
    switches.sort_unstable();
    println!();
    println!("MySQL failure detection (interval 200 ms, fall 2, timeout 500 ms; median of {RUNS})");
    println!("{:<40} {:>12} {:>12}", "event", "measured", "target");
    println!(
        "{:<40} {:>10.3} s {:>12}",
        "mysqld SIGKILL -> sorry server in table",
        median(killed).as_secs_f64(),
        "<= 0.6 s"
    );
    println!(
        "{:<40} {:>10.3} s {:>12}",
        "mysqld SIGSTOP -> sorry server in table",
        median(hung).as_secs_f64(),
        "<= 0.9 s"
    );
    if let (Some(med), Some(max)) = (switches.get(switches.len() / 2), switches.last()) {
        println!(
            "{:<40} {:>7} µs med {:>5} µs max {:>8}",
            format!("switch: decision -> maps ({} switches)", switches.len()),
            med,
            max,
            "<= 1 ms"
        );
    }
}

/// A client port reused after a failback reaches the writer only. Two clients, each in its
/// own namespace and limited to 32 source ports, so that their ports wrap every second
/// (as they do at any rate eventually): writes go to db1; db1 is killed and the sorry server
/// db2 takes them, so the connection table now sends every one of those ports to db2; db1
/// returns and takes the writes back (caught-up, graceful). From then on every new
/// connection reuses a port that went to db2 — and each must reach db1: a SYN takes a fresh
/// decision, and db2 is no longer a target of the service. Nothing reaches db2 (acknowledged
/// or refused), no acknowledged write is lost, the counter equals the rows on both servers.
#[test]
fn a_client_port_reused_after_the_failback_reaches_only_the_writer() {
    let Setup {
        mut lab,
        mut db1,
        db2,
        socket,
    } = setup("mfp", "failback = \"caught-up\"\ngraceful = true");
    lab.host("cl2", "10.96.0.20/24");
    for h in ["cl", "cl2"] {
        lab.sysctl(h, "net.ipv4.ip_local_port_range", "41000 41031");
        lab.sysctl(h, "net.ipv4.tcp_tw_reuse", "1");
    }
    let log = Arc::new(Log::default());
    let w1 = sqlclient::start_writer(&lab, "cl", VIP, DB1, log.clone(), 1);
    let w2 = sqlclient::start_writer(&lab, "cl2", VIP, DB1, log.clone(), 1_000_000);
    log.wait_for(1, Instant::now(), Duration::from_secs(10))
        .expect("writes reach db1 through the VIP");
    std::thread::sleep(Duration::from_secs(1));
    let killed = Instant::now();
    lab.kill(db1.pid);
    log.wait_for(2, killed, Duration::from_secs(5))
        .expect("writes move to db2 after db1 is killed");
    // Long enough for both clients' 32 ports to wrap: each now has an entry to db2.
    std::thread::sleep(Duration::from_secs(3));
    let restarted = Instant::now();
    lab.mariadb_start(&mut db1, &[]);
    let back = log
        .wait_for(1, restarted, Duration::from_secs(20))
        .unwrap_or_else(|| panic!("writes never returned to db1:\n{}", status(&socket)));
    let failback = restarted + back;
    println!("db1 restarted: writes back on db1 after {back:?}");
    std::thread::sleep(Duration::from_secs(6));
    log.stop.store(true, Ordering::Relaxed);
    w1.join().unwrap();
    w2.join().unwrap();

    // What was in flight at the flip may still land on db2 (a second's grace); after
    // that, nothing may.
    let reached = log.reached.lock().unwrap().clone();
    let after: Vec<_> = reached
        .iter()
        .filter(|(t, _)| *t > failback + Duration::from_secs(1))
        .collect();
    let on_db2: Vec<_> = after.iter().filter(|(_, s)| *s == 2).collect();
    println!(
        "{} connections after the failback, {} of them to db2",
        after.len(),
        on_db2.len()
    );
    assert!(after.len() > 100, "too few connections to reuse every port");
    assert!(
        on_db2.is_empty(),
        "{} connections reached the old sorry server after the failback",
        on_db2.len()
    );
    assert!(
        mariadb::wait_converged(&db1, &db2, Duration::from_secs(20)),
        "the servers did not converge"
    );
    let acked = log.acked.lock().unwrap().clone();
    for d in [&db1, &db2] {
        assert_eq!(
            missing_on(d, &acked),
            0,
            "{}: acknowledged writes missing",
            d.host
        );
        assert_eq!(
            d.sql("SELECT n FROM app.c WHERE k = 1"),
            d.sql("SELECT COUNT(*) FROM app.w"),
            "{}: the counter lost increments",
            d.host
        );
    }
    let checksum = |d: &Db| d.sql("CHECKSUM TABLE app.w, app.c");
    assert_eq!(checksum(&db1), checksum(&db2), "the servers differ");
    let violations = log.violations.lock().unwrap().clone();
    assert!(violations.is_empty(), "{violations:#?}");
}
