//! Replicas follow the writer (issue 13): the recipe's two hosts (`common::pair`) plus two
//! MariaDB replicas of db1 (rp1, rp2), which serve the read VIP and are the write service's
//! `replicas`. Two clients write through the write VIP (a row and a counter increment per
//! transaction) and one reads through the read VIP, throughout:
//!
//! 1. db1's MariaDB SIGKILLed, rp1's SQL thread stopped (relay log not applied): the writes
//!    go to db2 and both replicas are re-pointed to db2;
//! 2. db1 back: caught-up failback, and the replicas are re-pointed to db1 again; then
//!    maintenance of rp1 (drained, back once caught up) while the writer's is refused; then
//!    a planned switchover to db2 under load (the replicas follow db2), db1's agent
//!    restarted meanwhile (the VRRP master moves: the writes stay switched over), maintenance of db1
//!    while db2 has the writes, and the switch back to db1 (the replicas follow db1);
//! 3. a write of its own on rp2 (errant), then db1 killed again: rp1 follows db2, rp2 cannot
//!    follow (it has what db2 lacks) — out of the read pool, `status` and the metric say why,
//!    nobody touches it;
//! 4. db1 back: rp1 follows db1 again, rp2 stays out;
//! 5. db1 killed again, back with a transaction db2 lacks (an old writer ahead): quarantined
//!    — no writes, no reads, the GTID named — until rebuilt from db2, then the writes and
//!    rp1 come back to it.
//!
//! After each: who replicates from whom (asked of the servers themselves), what `status`
//! says. At the end, with the writers stopped and replication settled: every acknowledged
//! id on every server that can follow, the counter equal to the rows on each, checksums
//! equal, no moment with two writers; each step's outage is printed.

mod common;

use std::{
    sync::{Arc, atomic::Ordering},
    time::{Duration, Instant},
};

use common::{
    Lab,
    mariadb::{self, Db},
    pair::{
        CATCH_UP, DB1, DB2, Host, READ_VIP, WRITE_VIP, counted, follows, maintenance,
        readers_since, real_field, second_writer_moments, set_up_with_replicas, source_of, status,
        switchover, until, vip_on, write_service,
    },
    sqlclient::{self, Log, missing_on},
};

/// The agent's view of a replica: (phase, why).
fn phase(lab: &Lab, h: &Host, replica: &str) -> (String, String) {
    let s = status(lab, h);
    let r = s["services"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|svc| svc["replicas"].as_array().cloned().unwrap_or_default())
        .find(|r| r["address"] == replica)
        .unwrap_or_default();
    (
        r["phase"].as_str().unwrap_or_default().to_string(),
        r["why"].as_str().unwrap_or_default().to_string(),
    )
}

/// The read service's view of a real server: its reason for serving no reads, if any.
fn read_pool_reason(lab: &Lab, h: &Host, addr: &str) -> Option<String> {
    let s = status(lab, h);
    s["services"]
        .as_array()
        .unwrap()
        .iter()
        .find(|svc| svc["name"] == "mysql-read")
        .and_then(|svc| {
            svc["real_servers"]
                .as_array()
                .unwrap()
                .iter()
                .find(|r| r["address"] == addr)
                .and_then(|r| r["reason"].as_str().map(str::to_string))
        })
}

/// The writes' outage around `t`: the longest gap between two acknowledged writes from `t`
/// to now.
fn outage(log: &Log, t: Instant) -> Duration {
    let acked = log.acked.lock().unwrap();
    let mut last = t;
    let mut gap = Duration::ZERO;
    for a in acked.iter().filter(|a| a.at > t) {
        gap = gap.max(a.at - last);
        last = a.at;
    }
    gap
}

#[test]
fn replicas_follow_every_writer_change_and_an_errant_one_is_kept_out() {
    let started = Instant::now();
    let mut lab = Lab::new("rep");
    let (mut db1, db2, replicas) = set_up_with_replicas(&mut lab, 2);
    let (rp1, rp2) = (&replicas[0], &replicas[1]);
    // When each step began, for the second-writer check's message.
    let mut marks = vec![("set up", Instant::now())];
    let log = Arc::new(Log::default());
    let writer = sqlclient::start_writer(&lab, "cl", WRITE_VIP, DB1, log.clone(), 1);
    let writer2 = sqlclient::start_writer(&lab, "cl2", WRITE_VIP, DB1, log.clone(), 1_000_000);
    let reader = sqlclient::start_reader(&lab, "cl", READ_VIP, log.clone());
    let mut figures = Vec::new();

    // 0. Up: writes on db1, reads from all four, both replicas following db1.
    let t = Instant::now();
    assert!(
        log.wait_for(1, t, Duration::from_secs(15)).is_some(),
        "no write on db1"
    );
    assert!(
        until(Duration::from_secs(15), || readers_since(&log, t)
            == [1, 2, 3, 4])
        .is_some(),
        "reads from {:?}",
        readers_since(&log, t)
    );
    // (A start-up that held the writes on db2 for longer than the lab's 2 s settling time
    // has re-pointed the replicas to db2, and back to db1 since.)
    assert!(
        until(Duration::from_secs(20), || {
            follows(rp1, DB1)
                && follows(rp2, DB1)
                && phase(&lab, &db1, rp1.addr.as_str()).0 == "following"
                && phase(&lab, &db1, rp2.addr.as_str()).0 == "following"
        })
        .is_some(),
        "the replicas are not seen following db1: rp1 {:?} {:?}, rp2 {:?} {:?}",
        source_of(rp1),
        phase(&lab, &db1, rp1.addr.as_str()),
        source_of(rp2),
        phase(&lab, &db1, rp2.addr.as_str())
    );

    // 1. The writer's MariaDB killed: writes on db2, replicas re-pointed to db2. rp1's SQL
    //    thread was stopped 2 s before (a long query or an operator holds it): its relay log
    //    holds db1's writes it has not applied. Re-pointed, it discards that relay log
    //    (CHANGE MASTER) and fetches what it lacks from db2, which has every acknowledged
    //    write (semi-sync): nothing is lost, nothing applied twice.
    rp1.sql("STOP SLAVE SQL_THREAD");
    std::thread::sleep(Duration::from_secs(2));
    let applied = mariadb::seqs(&rp1.sql("SELECT @@gtid_slave_pos"));
    let written = mariadb::seqs(&db1.db.sql("SELECT @@gtid_binlog_pos"));
    let behind = written.get(&1).copied().unwrap_or(0) - applied.get(&1).copied().unwrap_or(0);
    assert!(
        behind > 0 && source_of(rp1) == (DB1.to_string(), true, false),
        "rp1 is not behind with its SQL thread stopped: {applied:?} vs db1 {written:?}, {:?}",
        source_of(rp1)
    );
    let t = Instant::now();
    marks.push(("db1 killed", t));
    lab.kill(db1.db.pid);
    assert!(
        log.wait_for(2, t, Duration::from_secs(15)).is_some(),
        "no write on db2"
    );
    let moved = until(Duration::from_secs(20), || {
        follows(rp1, DB2) && follows(rp2, DB2)
    });
    assert!(
        moved.is_some(),
        "replicas after the failover: rp1 {:?} ({:?}), rp2 {:?} ({:?})",
        source_of(rp1),
        phase(&lab, &db1, rp1.addr.as_str()),
        source_of(rp2),
        phase(&lab, &db1, rp2.addr.as_str())
    );
    figures.push(format!(
        "writer killed (rp1's SQL thread stopped, {behind} transactions behind): replicas \
         follow db2 {:.2} s after the writes moved; writes' outage {:.2} s",
        moved.unwrap().as_secs_f64(),
        outage(&log, t).as_secs_f64()
    ));

    // 2. db1 back: it catches up, gets the writes back, the replicas follow it again.
    let t = Instant::now();
    marks.push(("db1 started", t));
    lab.mariadb_start(&mut db1.db, &[]);
    assert!(
        log.wait_for(1, t, CATCH_UP).is_some(),
        "the writes did not come back to db1"
    );
    let back = until(Duration::from_secs(25), || {
        follows(rp1, DB1) && follows(rp2, DB1)
    });
    assert!(
        back.is_some(),
        "replicas after the failback: rp1 {:?}, rp2 {:?} ({:?})",
        source_of(rp1),
        source_of(rp2),
        phase(&lab, &db1, rp2.addr.as_str())
    );
    figures.push(format!(
        "failback: replicas follow db1 {:.2} s after the writes came back",
        back.unwrap().as_secs_f64()
    ));

    // 2b. Maintenance (the recipe's "change a big table on one server at a time"): rp1
    //     drained — said to db1's agent, held by both — its replication stopped as a long
    //     ALTER would hold it, started again, maintenance off — said to db2's agent — back
    //     only once it has caught up. The writer's maintenance is refused.
    marks.push(("maintenance", Instant::now()));
    let refused = maintenance(&db1, "10.1.1.113", "on");
    assert!(
        !refused.status.success()
            && String::from_utf8_lossy(&refused.stderr).contains("has the writes"),
        "maintenance of the writer: {refused:?}"
    );
    let on = maintenance(&db1, rp1.addr.as_str(), "on");
    assert!(on.status.success(), "{on:?}");
    let shared = until(Duration::from_secs(5), || {
        read_pool_reason(&lab, &db2, rp1.addr.as_str()).is_some_and(|r| r.contains("maintenance"))
    });
    assert!(
        shared.is_some(),
        "db2's agent does not hold rp1's maintenance: {:?}",
        read_pool_reason(&lab, &db2, rp1.addr.as_str())
    );
    std::thread::sleep(Duration::from_millis(500));
    let t_drained = Instant::now();
    rp1.sql("STOP SLAVE SQL_THREAD");
    std::thread::sleep(Duration::from_secs(3));
    assert!(
        !readers_since(&log, t_drained).contains(&3),
        "rp1 serves reads in maintenance: {:?}",
        readers_since(&log, t_drained)
    );
    assert!(
        read_pool_reason(&lab, &db1, rp1.addr.as_str()).is_some_and(|r| r.contains("maintenance"))
    );
    rp1.sql("START SLAVE SQL_THREAD");
    let t_off = Instant::now();
    let off = maintenance(&db2, rp1.addr.as_str(), "off");
    assert!(off.status.success(), "{off:?}");
    let back_in = until(Duration::from_secs(15), || {
        readers_since(&log, t_off).contains(&3)
    });
    assert!(
        back_in.is_some(),
        "rp1 did not come back after its maintenance"
    );
    assert!(
        follows(rp1, DB1),
        "rp1 was re-pointed during its maintenance"
    );
    assert!(
        until(Duration::from_secs(5), || read_pool_reason(
            &lab,
            &db1,
            rp1.addr.as_str()
        )
        .is_none())
        .is_some(),
        "db1's agent still holds rp1 out: {:?}",
        read_pool_reason(&lab, &db1, rp1.addr.as_str())
    );
    figures.push(format!(
        "maintenance of rp1 (on said to db1's agent, held by db2's after {:.2} s; off said to \
         db2's): no read from it for 3 s; back {:.2} s after `off`",
        shared.unwrap().as_secs_f64(),
        back_in.unwrap().as_secs_f64()
    ));

    // 2c. A planned switchover to db2 under load: db1 fenced, the flip once db2 has all of
    //     db1's writes, the replicas follow db2. db1 may then go into maintenance (it has no
    //     writes); back, the switch back hands the writes to db1 once it has db2's.
    let t = Instant::now();
    marks.push(("switchover", t));
    let (ok, said) = switchover(&db1, &db2, None);
    assert!(ok, "switchover: {said}");
    assert!(
        log.wait_for(2, t, Duration::from_secs(5)).is_some(),
        "no write on db2 after the switchover: {said}"
    );
    let switched_out = outage(&log, t);
    assert!(
        until(Duration::from_secs(20), || follows(rp1, DB2)
            && follows(rp2, DB2))
        .is_some(),
        "replicas after the switchover: rp1 {:?}, rp2 {:?}",
        source_of(rp1),
        source_of(rp2)
    );
    // The switchover is part of the shared decision: db2's agent, which would decide if
    // db1's went away, holds the writes as switched over too (not as a failure its
    // caught-up policy would end).
    assert!(
        until(Duration::from_secs(5), || write_service(
            &lab,
            &db2,
            "failback_waiting"
        )
        .as_str()
        .is_some_and(|w| w.contains("switched over")))
        .is_some(),
        "db2's agent: {}",
        write_service(&lab, &db2, "failback_waiting")
    );
    let refused = switchover(&db1, &db2, None);
    assert!(
        !refused.0 && refused.1.contains("on the sorry server already"),
        "a second switchover: {}",
        refused.1
    );
    // The VRRP master moves while switched over: db1's agent stopped (db2's decides), then
    //    started again (it preempts and decides again). The writes stay on db2 throughout:
    //    neither agent's caught-up policy hands them back to db1.
    let t_moved = Instant::now();
    marks.push(("db1's agent restarted", t_moved));
    lab.stop(db1.agent.take().expect("db1's agent runs"));
    assert!(
        until(Duration::from_secs(10), || vip_on(&lab, "db2", WRITE_VIP)).is_some(),
        "db2 did not take the write VIP"
    );
    std::thread::sleep(Duration::from_secs(3));
    assert!(
        write_service(&lab, &db2, "failback_waiting")
            .as_str()
            .is_some_and(|w| w.contains("switched over")),
        "db2's agent, deciding: {}",
        write_service(&lab, &db2, "failback_waiting")
    );
    common::pair::start_agent(&mut lab, &mut db1);
    assert!(
        until(Duration::from_secs(20), || vip_on(&lab, "db1", WRITE_VIP)
            && write_service(&lab, &db1, "failback_waiting")
                .as_str()
                .is_some_and(|w| w.contains("switched over")))
        .is_some(),
        "db1's agent back: VIP on db1 {}, {}",
        vip_on(&lab, "db1", WRITE_VIP),
        write_service(&lab, &db1, "failback_waiting")
    );
    std::thread::sleep(Duration::from_secs(3));
    let on_db1 = log
        .acked
        .lock()
        .unwrap()
        .iter()
        .filter(|a| a.at > t_moved && a.server == 1)
        .count();
    assert_eq!(on_db1, 0, "writes on db1 while switched over");
    assert!(
        log.wait_for(2, Instant::now(), Duration::from_secs(5))
            .is_some(),
        "no writes on db2 after the VRRP master moved back"
    );
    figures.push(format!(
        "switched over, db1's agent restarted (VRRP master to db2 and back): writes stayed \
         on db2 ({:.1} s)",
        t_moved.elapsed().as_secs_f64()
    ));
    // db1's maintenance, said to db2's agent: db1's (which decides) holds it too.
    let on = maintenance(&db2, DB1, "on");
    assert!(
        on.status.success(),
        "maintenance of db1 after the switchover: {on:?}"
    );
    assert!(
        until(Duration::from_secs(5), || real_field(
            &lab,
            &db1,
            "mysql-write",
            DB1,
            "reason"
        )
        .contains("maintenance"))
        .is_some(),
        "db1's agent does not hold db1's maintenance: {:?}",
        real_field(&lab, &db1, "mysql-write", DB1, "reason")
    );
    std::thread::sleep(Duration::from_secs(1));
    let off = maintenance(&db1, DB1, "off");
    assert!(off.status.success(), "{off:?}");
    let t = Instant::now();
    marks.push(("switch back", t));
    let back = until(Duration::from_secs(15), || {
        switchover(&db1, &db2, Some(DB1)).0
    });
    assert!(
        back.is_some(),
        "switch back: {}",
        switchover(&db1, &db2, Some(DB1)).1
    );
    assert!(
        log.wait_for(1, t, Duration::from_secs(15)).is_some(),
        "no write on db1 after the switch back"
    );
    let switched_back = outage(&log, t);
    assert!(
        until(Duration::from_secs(20), || follows(rp1, DB1)
            && follows(rp2, DB1))
        .is_some(),
        "replicas after the switch back: rp1 {:?}, rp2 {:?}",
        source_of(rp1),
        source_of(rp2)
    );
    figures.push(format!(
        "switchover to db2 under load: writes' outage {:.2} s; back to db1: {:.2} s",
        switched_out.as_secs_f64(),
        switched_back.as_secs_f64()
    ));

    // 3. An errant write on rp2 (a write of its own, as an operator's or a misrouted
    //    client's would be), then the writer killed again.
    rp2.sql(
        "SET GLOBAL read_only = 0; INSERT INTO app.w (id, server) VALUES (999999999, 4); \
         SET GLOBAL read_only = 1;",
    );
    let quarantined = until(Duration::from_secs(10), || {
        phase(&lab, &db1, rp2.addr.as_str()).0 == "cannot-follow"
    });
    assert!(
        quarantined.is_some(),
        "an errant replica still serves: {:?}",
        phase(&lab, &db1, rp2.addr.as_str())
    );
    figures.push(format!(
        "errant write on rp2: out of the read pool after {:.2} s",
        quarantined.unwrap().as_secs_f64()
    ));
    let t = Instant::now();
    marks.push(("db1 killed again", t));
    lab.kill(db1.db.pid);
    assert!(
        log.wait_for(2, t, Duration::from_secs(15)).is_some(),
        "no write on db2"
    );
    assert!(
        until(Duration::from_secs(20), || follows(rp1, DB2)).is_some(),
        "rp1 does not follow db2: {:?}",
        source_of(rp1)
    );
    let kept_out = until(Duration::from_secs(10), || {
        phase(&lab, &db1, rp2.addr.as_str()).0 == "cannot-follow"
            && read_pool_reason(&lab, &db1, rp2.addr.as_str()).is_some()
    });
    let (word, why) = phase(&lab, &db1, rp2.addr.as_str());
    assert!(kept_out.is_some(), "rp2: {word} {why}");
    assert!(why.contains("4-4-1"), "the errant GTID is not named: {why}");
    assert_eq!(source_of(rp2).0, DB1, "rp2 was touched");
    let t_reads = Instant::now();
    std::thread::sleep(Duration::from_secs(2));
    assert!(
        !readers_since(&log, t_reads).contains(&4),
        "rp2 still serves reads"
    );
    figures.push(format!("errant replica: kept out ({why})"));

    // 4. db1 back: rp1 follows it, rp2 stays out, untouched.
    let t = Instant::now();
    marks.push(("db1 started again", t));
    lab.mariadb_start(&mut db1.db, &[]);
    assert!(log.wait_for(1, t, CATCH_UP).is_some());
    assert!(
        until(Duration::from_secs(25), || follows(rp1, DB1)).is_some(),
        "rp1 after the second failback: {:?}",
        source_of(rp1)
    );
    assert_eq!(phase(&lab, &db1, rp2.addr.as_str()).0, "cannot-follow");

    // 5. An old writer that comes back ahead: db1 killed a third time commits a transaction
    //    of its own while nobody can reach it (as the unacknowledged tail a writer commits
    //    after its replica is gone would be) and returns. Quarantined: no writes back, no
    //    reads, the GTID named; rp1 stays on db2. Then the operator's repair (README: Errant
    //    transactions, a rebuild from db2): the writes come back once it has caught up.
    let t = Instant::now();
    marks.push(("db1 killed a third time", t));
    lab.kill(db1.db.pid);
    assert!(
        log.wait_for(2, t, Duration::from_secs(15)).is_some(),
        "no write on db2"
    );
    assert!(
        until(Duration::from_secs(20), || follows(rp1, DB2)).is_some(),
        "rp1 does not follow db2: {:?}",
        source_of(rp1)
    );
    lab.mariadb_start(&mut db1.db, &["--skip-networking", "--skip-slave-start"]);
    db1.db
        .sql("INSERT INTO app.w (id, server) VALUES (999999998, 1)");
    let ahead = mariadb::errant(&db1.db, &db2.db);
    assert!(!ahead.is_empty(), "db1 is not ahead of db2");
    let errant_gtid = format!("1-1-{}", ahead[0].1);
    lab.stop(db1.db.pid);
    let t = Instant::now();
    marks.push(("db1 back ahead", t));
    lab.mariadb_start(&mut db1.db, &[]);
    let said = until(Duration::from_secs(20), || {
        write_service(&lab, &db1, "failback_waiting")
            .as_str()
            .is_some_and(|w| w.contains("ERRANT"))
            && read_pool_reason(&lab, &db1, DB1)
                .is_some_and(|r| r.contains("quarantined: errant transactions"))
    });
    let why = read_pool_reason(&lab, &db1, DB1).unwrap_or_default();
    assert!(
        said.is_some(),
        "db1 back ahead ({ahead:?}): failback {}, read pool {why:?}",
        write_service(&lab, &db1, "failback_waiting")
    );
    assert!(why.contains(&errant_gtid), "{errant_gtid} not named: {why}");
    let t_q = Instant::now();
    std::thread::sleep(Duration::from_secs(3));
    let acked_on_db1 = log
        .acked
        .lock()
        .unwrap()
        .iter()
        .any(|a| a.at > t_q && a.server == 1);
    assert!(!acked_on_db1, "writes on the quarantined db1");
    assert!(
        !readers_since(&log, t_q).contains(&1),
        "the quarantined db1 serves reads"
    );
    assert!(follows(rp1, DB2), "rp1 left db2: {:?}", source_of(rp1));
    figures.push(format!(
        "old writer back ahead ({errant_gtid}): quarantined {:.2} s after its start, no \
         writes or reads for 3 s",
        said.unwrap().as_secs_f64()
    ));
    mariadb::rebuild_from(&db1.db, &db2.db);
    let t = Instant::now();
    marks.push(("db1 rebuilt", t));
    let back = log.wait_for(1, t, CATCH_UP);
    assert!(
        back.is_some(),
        "the writes did not come back to the rebuilt db1: {}",
        write_service(&lab, &db1, "failback_waiting")
    );
    assert!(
        until(Duration::from_secs(25), || follows(rp1, DB1)).is_some(),
        "rp1 after the rebuilt db1's failback: {:?}",
        source_of(rp1)
    );
    figures.push(format!(
        "db1 rebuilt: the writes back on it {:.2} s later, rp1 follows it",
        t.elapsed().as_secs_f64()
    ));

    // The end: every acknowledged write on db1, db2 and rp1; counter = rows; checksums.
    log.stop.store(true, Ordering::Relaxed);
    writer.join().unwrap();
    writer2.join().unwrap();
    reader.join().unwrap();
    assert!(mariadb::wait_converged(
        &db1.db,
        &db2.db,
        Duration::from_secs(30)
    ));
    assert!(mariadb::wait_converged(
        &db1.db,
        rp1,
        Duration::from_secs(30)
    ));
    let acked = log.acked.lock().unwrap().clone();
    assert!(
        acked.len() > 100,
        "only {} writes acknowledged",
        acked.len()
    );
    for db in [&db1.db, &db2.db, rp1] {
        assert_eq!(
            missing_on(db, &acked),
            0,
            "acknowledged writes missing on {}",
            db.host
        );
        let (counter, rows) = counted(db);
        assert_eq!(counter, rows, "counter != rows on {}", db.host);
    }
    let sum = |d: &Db| d.sql("CHECKSUM TABLE app.w, app.c");
    assert_eq!(sum(&db1.db), sum(&db2.db));
    assert_eq!(sum(&db1.db), sum(rp1));
    let twice = second_writer_moments(&log, started);
    let marks: Vec<String> = marks
        .iter()
        .map(|(what, at)| format!("{what} +{:.3} s", at.duration_since(started).as_secs_f64()))
        .collect();
    assert!(
        twice.is_empty(),
        "second-writer moments: {twice:?}; steps: {marks:?}"
    );
    println!("steps: {marks:?}");
    for f in &figures {
        println!("{f}");
    }
    println!(
        "{} writes acknowledged, all on db1, db2 and rp1; rp2 quarantined; {:.1} s in all",
        acked.len(),
        started.elapsed().as_secs_f64()
    );
}
