//! The lab: the reference recipe end to end, in network namespaces, with real MariaDB.
//!
//! The recipe's two hosts (`common::pair`: db1 10.1.1.113 and db2 10.1.1.75, MariaDB
//! master-master with GTID and semi-sync, lb-agent with `configs/db1.toml` /
//! `configs/db2.toml`) and two clients. Both clients write through the write VIP
//! (10.1.1.176), a row and a counter increment per transaction, and one reads through the
//! read VIP (10.1.1.177) all along, while the recipe's test plan runs — stop MySQL on the
//! master, stop lb-agent on the master, start MySQL again, start lb-agent again, reboot the
//! master — followed by the faults nobody scripted: the master host's link down 5 s, VRRP
//! adverts lost 10 s, the master's agent stalled 6 s. It prints a table — step, what should
//! happen, what happened, how long it took — that ends with the count of acknowledged writes,
//! how many are on both servers, the counter against the rows and the moments in which two
//! servers took writes, and asserts every row.
//!
//! `cargo xtask lab` runs it with its output; `cargo xtask lab --keep` leaves it running
//! (`LB_LAB_KEEP=1`) and `cargo xtask lab down` removes it. `cargo xtask lab --quorum`
//! (`LB_LAB_QUORUM=1`) runs it with `[quorum]` — a three-member etcd cluster, one member on
//! each DB host and one on a witness host — and adds the partitions between the DB hosts:
//! the witness on db2's side (the writes move to db2; db1 fences itself; an errant commit
//! db1 kept is rebuilt away as the README says), on db1's side (nothing moves) and all three
//! apart (nothing moves anywhere). `cargo xtask lab --replicas 2` (`LB_LAB_REPLICAS=2`) adds
//! two MariaDB replicas of the writer behind the read VIP, which follow every writer change
//! (rows "replicas follow …"), and counts the writes on them too.

mod common;

use std::{
    sync::{Arc, atomic::Ordering},
    time::{Duration, Instant},
};

use common::{
    Lab, mariadb,
    pair::{
        CATCH_UP, DB1, DB2, Host, READ_VIP, WRITE_VIP, adverts_lost_for, agent, agent_in,
        agent_stopped_for, counted, decision, dir, failback_waiting, follows, heal, link_down_for,
        partition, readers_since, real_state, replicating, second_writer_moments, set_up_full,
        source_of, start_agent, switchover, until, vip_on, write_service,
    },
    sqlclient::{self, Log, missing_on},
    timeline,
};

/// The prefix of a kept lab (`cargo xtask lab down` removes it).
const KEPT_PREFIX: &str = "lblab";

struct Row {
    step: &'static str,
    expected: &'static str,
    happened: String,
    took: Option<Duration>,
    ok: bool,
}

/// The table's rows, each with when its step began (where the one before ended) and ended
/// (when its row was written down): the timeline's bands.
struct Steps {
    rows: Vec<Row>,
    spans: Vec<(String, Instant, Instant)>,
    last: Instant,
}

impl Steps {
    fn new(start: Instant) -> Steps {
        Steps {
            rows: Vec::new(),
            spans: Vec::new(),
            last: start,
        }
    }

    fn push(&mut self, row: Row) {
        let now = Instant::now();
        self.spans.push((row.step.to_string(), self.last, now));
        self.last = now;
        self.rows.push(row);
    }
}

/// After a fault undone at (about) now and injected at `t`: VIPs and writes back on db1,
/// and no moment since `t` in which both servers took writes; `meanwhile`: what had to hold
/// during the fault (named, and whether it did).
fn back_on_db1(
    lab: &Lab,
    log: &Log,
    t: Instant,
    step: &'static str,
    expected: &'static str,
    meanwhile: Option<(&str, bool)>,
) -> Row {
    let undone = Instant::now();
    let back = until(Duration::from_secs(20), || {
        vip_on(lab, "db1", WRITE_VIP) && !vip_on(lab, "db2", WRITE_VIP)
    })
    .and_then(|_| log.wait_for(1, undone, CATCH_UP));
    let waiting = unless_back(&back, lab, &["db1", "db2"]);
    std::thread::sleep(Duration::from_secs(2));
    let twice = second_writer_moments(log, t);
    let (held, before) = match meanwhile {
        Some((what, held)) => (held, format!("{what}: {held}; ")),
        None => (true, String::new()),
    };
    Row {
        step,
        expected,
        happened: format!(
            "{before}VIPs and writes back on db1: {}{waiting}; second-writer moments: {}",
            back.is_some(),
            twice.len()
        ),
        took: back.map(|_| t.elapsed()),
        ok: held && back.is_some() && twice.is_empty(),
    }
}

/// For a step whose writes did not come back to db1 (`back` is None): " (waiting: ...)",
/// what the agents of `names` say their failback waits for; nothing otherwise.
fn unless_back<T>(back: &Option<T>, lab: &Lab, names: &[&str]) -> String {
    match back {
        Some(_) => String::new(),
        None => format!(" (waiting: {})", failback_waiting(lab, names)),
    }
}

/// A step in which nothing moves the writes: none acknowledged by db2 since `t`. (An agent
/// that became leader once gave its follower-time view of a healed link-down as a decision
/// and moved the writes to db2 for a second at "VRRP adverts lost", losing an increment.)
fn db1_all_along(mut row: Row, log: &Log, t: Instant) -> Row {
    let on_db2 = log
        .acked
        .lock()
        .unwrap()
        .iter()
        .filter(|a| a.at > t && a.server == 2)
        .count();
    row.happened = format!("{}; acks by db2: {on_db2}", row.happened);
    row.ok &= on_db2 == 0;
    row
}

/// With `[quorum]`: the partitions between the DB hosts, the clients reaching both.
fn partitions(rows: &mut Steps, lab: &Lab, log: &Log, db1: &Host, db2: &Host) {
    // db1 | db2 + witness: the majority (db2's side) takes the writes, db1 fences itself.
    std::thread::sleep(Duration::from_secs(2));
    let t = Instant::now();
    partition(lab, &["db1"], &["db2", "wit"]);
    let moved = log.wait_for(2, t, Duration::from_secs(15));
    std::thread::sleep(Duration::from_secs(15).saturating_sub(t.elapsed()));
    heal(lab);
    let repaired = repair_errant(lab, db1, db2);
    let mut row = back_on_db1(
        lab,
        log,
        t,
        "partition db1 | db2 + witness 15 s",
        "db2 takes the writes, db1 fenced; errant commit rebuilt; back on db1",
        Some(("writes on db2", moved.is_some())),
    );
    row.happened = format!(
        "writes on db2 after {}; {repaired}; {}",
        moved.map_or("-".into(), |d| format!("{:.2} s", d.as_secs_f64())),
        row.happened
    );
    rows.push(row);
    // db1 + witness | db2: the writer keeps its majority; nothing moves.
    std::thread::sleep(Duration::from_secs(2));
    let t = Instant::now();
    partition(lab, &["db1", "wit"], &["db2"]);
    std::thread::sleep(Duration::from_secs(15));
    let on_db2 = log.first_on(2, t).is_some();
    heal(lab);
    rows.push(back_on_db1(
        lab,
        log,
        t,
        "partition db1 + witness | db2 15 s",
        "db1 keeps the writes (majority); db2 fenced, takes none",
        Some(("no write on db2", !on_db2)),
    ));
    // All three apart: no majority anywhere, nothing moves.
    std::thread::sleep(Duration::from_secs(2));
    let t = Instant::now();
    partition(lab, &["db1"], &["db2", "wit"]);
    partition_more(lab, "db2", "wit");
    std::thread::sleep(Duration::from_secs(10));
    let on_db2 = log.first_on(2, t).is_some();
    heal(lab);
    rows.push(back_on_db1(
        lab,
        log,
        t,
        "db1 | db2 | witness 10 s",
        "no majority: writes wait everywhere, none on db2",
        Some(("no write on db2", !on_db2)),
    ));
}

/// Also cuts `a` from `b` (on top of `partition`).
fn partition_more(lab: &Lab, a: &str, b: &str) {
    for (from, to) in [(a, b), (b, a)] {
        lab.exec(
            "br",
            &[
                "nft",
                &format!(
                    "add rule bridge cut forward iifname \"p-{from}\" oifname \"p-{to}\" drop"
                ),
            ],
        );
    }
}

/// After a partition that moved the writes away from db1: a commit in its semi-sync wait at
/// the cut may have stayed in db1's binary log, never acknowledged (an errant transaction).
/// The agents keep db1 out of the writes and say so; the operator rebuilds db1 from db2
/// (README: "Errant transactions"), as done here.
fn repair_errant(lab: &Lab, db1: &Host, db2: &Host) -> String {
    let errant = until(Duration::from_secs(20), || {
        let e = mariadb::errant(&db1.db, &db2.db);
        // Still replicating from db1: db2 may yet catch up.
        e.is_empty() || !replicating(&db2.db)
    })
    .map(|_| mariadb::errant(&db1.db, &db2.db))
    .unwrap_or_default();
    if errant.is_empty() {
        return "no errant transaction".into();
    }
    let said = until(Duration::from_secs(20), || {
        [db1, db2].iter().any(|h| {
            write_service(lab, h, "failback_waiting")
                .as_str()
                .is_some_and(|w| w.contains("ERRANT"))
        })
    });
    mariadb::rebuild_from(&db1.db, &db2.db);
    let n: u64 = errant.iter().map(|(_, mine, theirs)| mine - theirs).sum();
    format!(
        "{n} errant commit(s) on db1, status said ERRANT: {}, rebuilt from db2",
        said.is_some()
    )
}

/// A row: every replica replicates from `writer` with both threads running (bounded: 25 s;
/// the block period of the lab's replicas is 2 s); "took" counts from `since`, the step's
/// fault.
fn replicas_follow(
    replicas: &[mariadb::Db],
    writer: &str,
    since: Instant,
    step: &'static str,
    expected: &'static str,
) -> Row {
    let took = until(Duration::from_secs(25), || {
        replicas.iter().all(|r| follows(r, writer))
    })
    .map(|_| since.elapsed());
    let sources: Vec<String> = replicas
        .iter()
        .map(|r| {
            let (source, io, sql) = source_of(r);
            format!("{} from {source} (IO {io}, SQL {sql})", r.host)
        })
        .collect();
    Row {
        step,
        expected,
        happened: sources.join("; "),
        took,
        ok: took.is_some(),
    }
}

/// The run as a picture, `target/lab/timeline.svg` (`timeline-quorum.svg` with `--quorum`,
/// `timeline-replicas.svg` with `--replicas`):
/// which server acknowledged writes and answered reads each second, who held the write VIP,
/// the steps as bands. Checked: both servers appear in the write lanes (the plan moves the
/// writes to db2 and back), and every step has its band.
fn write_timeline(
    log: &Log,
    vip: Vec<(Instant, u8)>,
    steps: &Steps,
    name: &str,
) -> std::path::PathBuf {
    let t = timeline::Timeline {
        start: steps.spans.first().map_or_else(Instant::now, |s| s.1),
        end: Instant::now(),
        writes: log
            .acked
            .lock()
            .unwrap()
            .iter()
            .map(|a| (a.at, a.server))
            .collect(),
        reads: log.reads.lock().unwrap().clone(),
        vip,
        steps: steps.spans.clone(),
    };
    let svg = timeline::render(&t);
    assert_eq!(svg.matches("class=\"step\"").count(), steps.spans.len());
    for colour in [timeline::DB1, timeline::DB2] {
        assert!(
            svg.contains(&format!("fill=\"{colour}\"/>")),
            "no cell of {colour} in the timeline"
        );
    }
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/lab");
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join(name);
    std::fs::write(&path, svg).unwrap();
    path
}

fn print_table(rows: &[Row]) {
    println!();
    println!(
        "{:<38} {:<58} {:<58} {:>8}  result",
        "step", "should happen", "happened", "took"
    );
    for r in rows {
        println!(
            "{:<38} {:<58} {:<58} {:>8}  {}",
            r.step,
            r.expected,
            r.happened,
            r.took
                .map(|d| format!("{:.2} s", d.as_secs_f64()))
                .unwrap_or_else(|| "-".into()),
            if r.ok { "ok" } else { "FAILED" }
        );
    }
}

#[test]
fn the_recipe_test_plan() {
    let started = Instant::now();
    let keep = std::env::var_os("LB_LAB_KEEP").is_some();
    let mut lab = if keep {
        Lab::named(KEPT_PREFIX)
    } else {
        Lab::new("lab")
    };
    let quorum = std::env::var_os("LB_LAB_QUORUM").is_some();
    // `--replicas N`: MariaDB replicas of the writer behind the read VIP, following it.
    let n_replicas: usize = std::env::var("LB_LAB_REPLICAS")
        .ok()
        .and_then(|n| n.parse().ok())
        .unwrap_or(0);
    let (mut db1, db2, mut etcd, replicas) = set_up_full(&mut lab, quorum, n_replicas);
    let replica_ids: Vec<u32> = replicas.iter().map(|r| r.server_id).collect();
    // Who answers reads: both hosts and the replicas.
    let all_readers: Vec<u32> = [1, 2].into_iter().chain(replica_ids.clone()).collect();
    if let Some(cluster) = etcd.as_mut() {
        cluster.start_all(&mut lab);
        assert!(
            cluster.wait_healthy(&lab, "wit", Duration::from_secs(20)),
            "etcd did not become healthy"
        );
    }
    let mut rows = Steps::new(Instant::now());

    // 0. Up: db1 is master, the client's writes land on db1 and reads on both.
    let log = Arc::new(Log::default());
    let writer = sqlclient::start_writer(&lab, "cl", WRITE_VIP, DB1, log.clone(), 1);
    // A second client, writing from its own host all along.
    let writer2 = sqlclient::start_writer(&lab, "cl2", WRITE_VIP, DB1, log.clone(), 1_000_000);
    let reader = sqlclient::start_reader(&lab, "cl", READ_VIP, log.clone());
    let vip_samples = timeline::sample_vip(lab.ns("db1"), lab.ns("db2"), WRITE_VIP, log.clone());
    let t = Instant::now();
    let took = log.wait_for(1, t, Duration::from_secs(15));
    let both_read = until(Duration::from_secs(10), || {
        readers_since(&log, t) == all_readers
    });
    rows.push(Row {
        step: "start both hosts",
        expected: "db1 master: VIPs on db1, writes on db1, reads on both",
        happened: format!(
            "VIPs on {}, writes on db{}, reads from {:?}",
            if vip_on(&lab, "db1", WRITE_VIP) {
                "db1"
            } else {
                "?"
            },
            log.acked.lock().unwrap().last().map_or(0, |a| a.server),
            readers_since(&log, t)
        ),
        took,
        ok: took.is_some()
            && both_read.is_some()
            && vip_on(&lab, "db1", READ_VIP)
            && until(Duration::from_secs(10), || {
                let (d1, d2) = (decision(&lab, &db1), decision(&lab, &db2));
                if quorum {
                    // Whoever took the leader key first decides; the other names it.
                    (d1.contains("this agent decides") || d2.contains("this agent decides"))
                        && d1.contains("decides")
                        && d2.contains("decides")
                } else {
                    d1.contains("this agent decides") && d2.contains("this agent follows")
                }
            })
            .is_some(),
    });

    // 1. Stop MySQL on the master. With replicas, the first one's SQL thread is stopped a
    //    second before (a long query holds it): its relay log holds writes it has not
    //    applied, which it fetches again from db2 once re-pointed.
    if let Some(r) = replicas.first() {
        r.sql("STOP SLAVE SQL_THREAD");
    }
    std::thread::sleep(Duration::from_secs(1));
    let t = Instant::now();
    lab.stop(db1.db.pid);
    let took = log.wait_for(2, t, Duration::from_secs(10));
    let dropped = until(Duration::from_secs(5), || {
        real_state(&lab, &db1, "mysql-read", DB1) == "failed"
    });
    std::thread::sleep(Duration::from_millis(500));
    let t_reads = Instant::now();
    std::thread::sleep(Duration::from_secs(1));
    let reads = readers_since(&log, t_reads);
    rows.push(Row {
        step: "stop MySQL on the master",
        expected: "write VIP -> sorry server db2; read VIP drops db1",
        happened: format!("writes on db2, reads from {reads:?}, db1 in read VIP: failed"),
        took,
        ok: took.is_some()
            && dropped.is_some()
            && reads.contains(&2)
            && !reads.contains(&1)
            && reads.iter().all(|s| *s == 2 || replica_ids.contains(s)),
    });
    if !replicas.is_empty() {
        rows.push(replicas_follow(
            &replicas,
            DB2,
            t,
            "replicas follow the sorry server",
            "every replica re-pointed to db2, the first one's SQL thread stopped at the writer's \
             stop (took: from the MySQL stop)",
        ));
    }

    // 2. Stop lb-agent on the master.
    let t = Instant::now();
    lab.stop(db1.agent.take().unwrap());
    let moved = until(Duration::from_secs(10), || {
        vip_on(&lab, "db2", WRITE_VIP)
            && vip_on(&lab, "db2", READ_VIP)
            && !vip_on(&lab, "db1", WRITE_VIP)
            && !vip_on(&lab, "db1", READ_VIP)
    });
    let t_after = Instant::now();
    let served = log.wait_for(2, t_after, Duration::from_secs(10));
    rows.push(Row {
        step: "stop lb-agent on the master",
        expected: "both VIPs move to db2, writes go on (db2)",
        happened: format!(
            "VIPs on db2: {}, writes on db2: {}",
            moved.is_some(),
            served.is_some()
        ),
        took: moved,
        ok: moved.is_some() && served.is_some(),
    });
    let _ = t;

    // 3. Start MySQL on the master again: it replicates what db2 took, then gets the writes.
    let t = Instant::now();
    lab.mariadb_start(&mut db1.db, &[]);
    let took = log.wait_for(1, t, CATCH_UP);
    let violations = log.violations.lock().unwrap().len();
    rows.push(Row {
        step: "start MySQL on the master",
        expected: "writes return to db1 once it has db2's (caught-up)",
        // db1's agent is stopped: db2's decides.
        happened: format!(
            "{}{}; returned early {violations} time(s)",
            if took.is_some() {
                "writes on db1"
            } else {
                "no writes on db1"
            },
            unless_back(&took, &lab, &["db2"])
        ),
        took,
        ok: took.is_some() && violations == 0,
    });
    if !replicas.is_empty() {
        rows.push(replicas_follow(
            &replicas,
            DB1,
            t,
            "replicas follow the writer again",
            "every replica re-pointed to db1 (took: from the MySQL start)",
        ));
    }

    // 4. Start lb-agent on the master again: it takes the VIPs back (priority 180 > 150).
    let t = Instant::now();
    start_agent(&mut lab, &mut db1);
    let back = until(Duration::from_secs(15), || {
        vip_on(&lab, "db1", WRITE_VIP)
            && vip_on(&lab, "db1", READ_VIP)
            && !vip_on(&lab, "db2", WRITE_VIP)
    });
    let writes = log.wait_for(1, Instant::now(), Duration::from_secs(10));
    rows.push(Row {
        step: "start lb-agent on the master",
        expected: "both VIPs return to db1, writes on db1",
        happened: format!(
            "VIPs on db1: {}, writes on db1: {}",
            back.is_some(),
            writes.is_some()
        ),
        took: back.map(|_| t.elapsed()),
        ok: back.is_some() && writes.is_some(),
    });

    // 4b. With replicas: a planned switchover to the sorry server under load, and back.
    if !replicas.is_empty() {
        std::thread::sleep(Duration::from_secs(1));
        let t = Instant::now();
        let (ok, said) = switchover(&db1, &db2, None);
        let took = log.wait_for(2, t, Duration::from_secs(15));
        rows.push(Row {
            step: "switchover to the sorry server",
            expected: "db1 fenced, writes on db2 once it has all of db1's",
            happened: format!(
                "{}; writes on db2: {}",
                said.lines()
                    .rev()
                    .find(|l| !l.trim().is_empty())
                    .unwrap_or(""),
                took.is_some()
            ),
            took,
            ok: ok && took.is_some(),
        });
        rows.push(replicas_follow(
            &replicas,
            DB2,
            t,
            "replicas follow the switchover",
            "every replica re-pointed to db2 (took: from the request)",
        ));
        let t = Instant::now();
        let asked = until(Duration::from_secs(15), || {
            switchover(&db1, &db2, Some(DB1)).0
        });
        let took = log.wait_for(1, t, Duration::from_secs(20));
        let violations = log.violations.lock().unwrap().len();
        rows.push(Row {
            step: "switch back to the writer",
            expected: "writes return to db1 once it has db2's",
            happened: format!(
                "switch back accepted: {}; writes on db1; returned early {violations} time(s)",
                asked.is_some()
            ),
            took,
            ok: asked.is_some() && took.is_some() && violations == 0,
        });
        rows.push(replicas_follow(
            &replicas,
            DB1,
            t,
            "replicas follow the switch back",
            "every replica re-pointed to db1 (took: from the request)",
        ));
    }

    // 5. Reboot the master: everything in it dies at once; it comes back as it boots.
    std::thread::sleep(Duration::from_secs(1));
    let t = Instant::now();
    lab.kill(db1.agent.take().unwrap());
    lab.kill(db1.db.pid);
    // What a reboot clears: the pinned data plane, the VIPs, the sysctls.
    agent_in(
        &lab,
        "db1",
        &["run", "--cleanup", "--config", db1.config.to_str().unwrap()],
    );
    for vip in [WRITE_VIP, READ_VIP] {
        let _ = std::process::Command::new("ip")
            .args(["netns", "exec", &lab.ns("db1"), "ip", "addr", "del"])
            .arg(format!("{vip}/32"))
            .args(["dev", "eth0"])
            .output();
    }
    agent_in(
        &lab,
        "db1",
        &[
            "realserver",
            "down",
            "--config",
            db1.config.to_str().unwrap(),
        ],
    );
    let took_over = log.wait_for(2, t, Duration::from_secs(15));
    let on_db2 = vip_on(&lab, "db2", WRITE_VIP);
    // Boot: realserver unit, MariaDB, lb-agent.
    agent_in(
        &lab,
        "db1",
        &["realserver", "up", "--config", db1.config.to_str().unwrap()],
    );
    lab.mariadb_start(&mut db1.db, &[]);
    start_agent(&mut lab, &mut db1);
    let t_boot = Instant::now();
    // The booted writer replicates what db2 took while it was down before it gets the
    // writes back (caught-up).
    let returned = until(Duration::from_secs(15), || vip_on(&lab, "db1", WRITE_VIP))
        .and_then(|_| log.wait_for(1, t_boot, CATCH_UP));
    let violations = log.violations.lock().unwrap().len();
    rows.push(Row {
        step: "reboot the master",
        expected: "db2 takes over; after the boot VIPs and writes return",
        happened: format!(
            "db2 served writes after {}, VIPs on db2: {on_db2}; back on db1: {}{}",
            took_over.map_or("-".into(), |d| format!("{:.2} s", d.as_secs_f64())),
            returned.is_some(),
            unless_back(&returned, &lab, &["db1", "db2"])
        ),
        took: returned.map(|_| t.elapsed()),
        ok: took_over.is_some() && on_db2 && returned.is_some() && violations == 0,
    });

    // The master host's link down for 5 s, then up: db2 takes over VRRP but cannot tell a
    // dead db1 from an unreachable one, and db1's agent never sees its writer fail. The
    // shared decision keeps one writer: db2 decides nothing until it has waited db1 out, and
    // db1, back, follows db2's decision (and its gate) before it decides again. When db2 took
    // the writes, a commit in db1's semi-sync wait at the cut may stay in db1's binary log
    // after the wait times out, never acknowledged (without `[quorum]` nothing fences db1
    // before that): the agents then keep db1 out of the writes and say ERRANT, and it is
    // rebuilt as the README says — only then (db1 behind or ahead while db2's replication
    // reconnects is lag, and db1 may have the writes).
    std::thread::sleep(Duration::from_secs(2));
    let t = Instant::now();
    link_down_for(&lab, &db1, Duration::from_secs(5));
    const STEP: &str = "master host's link down 5 s";
    const EXPECTED: &str = "one writer at a time; writes back on db1 after the link returns (an errant commit rebuilt)";
    let mut row = back_on_db1(&lab, &log, t, STEP, EXPECTED, None);
    let errant_said = [&db1, &db2].iter().any(|h| {
        write_service(&lab, h, "failback_waiting")
            .as_str()
            .is_some_and(|w| w.contains("ERRANT"))
    });
    if !row.ok && errant_said {
        let repaired = repair_errant(&lab, &db1, &db2);
        row = back_on_db1(&lab, &log, t, STEP, EXPECTED, None);
        row.happened = format!("{repaired}; {}", row.happened);
    }
    rows.push(row);

    // VRRP adverts lost between the hosts for 10 s: both hosts are master and the clients'
    // ARP entries move to db2; every LB forwards by the same decision, so db1 keeps the
    // writes; when the adverts return db2 steps back and db1 announces itself again.
    std::thread::sleep(Duration::from_secs(2));
    let t = Instant::now();
    let both = adverts_lost_for(&lab, Duration::from_secs(10));
    rows.push(db1_all_along(
        back_on_db1(
            &lab,
            &log,
            t,
            "VRRP adverts lost 10 s",
            "both hosts master meanwhile; one writer (db1) all along",
            Some(("both master", both)),
        ),
        &log,
        t,
    ));

    // The master's agent stalled for 6 s (SIGSTOP), then continued: db2 becomes master;
    // db1's data plane holds the writes once the agent's lease has run out (3 s), and the
    // continued agent takes its role back.
    std::thread::sleep(Duration::from_secs(2));
    let t = Instant::now();
    let db2_master = agent_stopped_for(&lab, &db1, &db2, Duration::from_secs(6));
    rows.push(db1_all_along(
        back_on_db1(
            &lab,
            &log,
            t,
            "master's agent stopped 6 s",
            "db2 master meanwhile; one writer (db1) all along",
            Some(("db2 master", db2_master)),
        ),
        &log,
        t,
    ));

    if quorum {
        partitions(&mut rows, &lab, &log, &db1, &db2);
    }

    // The end: stop the clients, let replication settle, count.
    std::thread::sleep(Duration::from_secs(1));
    log.stop.store(true, Ordering::Relaxed);
    writer.join().unwrap();
    writer2.join().unwrap();
    reader.join().unwrap();
    let name = match (quorum, replicas.is_empty()) {
        (true, _) => "timeline-quorum.svg",
        (false, false) => "timeline-replicas.svg",
        (false, true) => "timeline.svg",
    };
    let svg = write_timeline(&log, vip_samples.join().unwrap(), &rows, name);
    let converged = mariadb::wait_converged(&db1.db, &db2.db, Duration::from_secs(40))
        && replicas
            .iter()
            .all(|r| mariadb::wait_converged(&db1.db, r, Duration::from_secs(40)));
    let acked = log.acked.lock().unwrap().clone();
    let servers: Vec<&mariadb::Db> = [&db1.db, &db2.db].into_iter().chain(&replicas).collect();
    let on_both = acked.len()
        - servers
            .iter()
            .map(|d| missing_on(d, &acked))
            .max()
            .unwrap_or(0);
    let sum = |d: &mariadb::Db| d.sql("CHECKSUM TABLE app.w, app.c");
    let same = servers.iter().all(|d| sum(d) == sum(&db1.db));
    let counters_ok = replicas.iter().all(|r| {
        let (c, n) = counted(r);
        c == n
    });
    // Every transaction inserted a row and incremented the counter: a lost update shows
    // here even when every row and both checksums agree.
    let (c1, c2) = (counted(&db1.db), counted(&db2.db));
    let replication = servers.iter().all(|d| replicating(d));
    let twice = second_writer_moments(&log, started);
    rows.push(Row {
        step: "acknowledged writes",
        expected: "all on both servers, identical tables, counter = rows, one writer at a time, replication running",
        happened: format!(
            "{} acknowledged, {on_both} on {}, checksums {}, counter {} for {} rows, {} second-writer moment(s), replication {}",
            acked.len(),
            if servers.len() == 2 {
                "both servers".to_string()
            } else {
                format!("all {} servers", servers.len())
            },
            if same { "equal" } else { "DIFFER" },
            c1.0,
            c1.1,
            twice.len(),
            if replication { "running" } else { "STOPPED" }
        ),
        took: None,
        ok: converged
            && on_both == acked.len()
            && same
            && acked.len() > 100
            && c1.0 == c1.1
            && c2.0 == c2.1
            && counters_ok
            && twice.is_empty()
            && replication,
    });
    if !twice.is_empty() {
        println!("second-writer moments: {twice:#?}");
    }
    print_table(&rows.rows);
    println!("\ntimeline: {}", svg.display());
    if !rows.rows.iter().all(|r| r.ok) {
        for d in [&db1.db, &db2.db] {
            println!(
                "{}: gtid_current_pos {:?}, rows {:?}, replication: {:?}",
                d.host,
                d.try_sql("SELECT @@gtid_current_pos"),
                d.try_sql("SELECT COUNT(*), MAX(id) FROM app.w"),
                d.try_sql("SHOW SLAVE STATUS\\G")
                    .unwrap_or_default()
                    .lines()
                    .filter(
                        |l| l.contains("Running:") || l.contains("Last_") && l.contains("Error:")
                    )
                    .collect::<Vec<_>>()
            );
        }
        let missing: Vec<u64> = acked
            .iter()
            .filter(|a| {
                !db2.db
                    .sql(&format!("SELECT COUNT(*) FROM app.w WHERE id = {}", a.id))
                    .starts_with('1')
            })
            .take(5)
            .map(|a| a.id)
            .collect();
        println!("first acknowledged ids missing on db2: {missing:?}");
        for id in &missing {
            if let Some(a) = acked.iter().find(|a| a.id == *id) {
                println!(
                    "  id {id}: acknowledged by server {} at +{:.2} s",
                    a.server,
                    a.at.duration_since(started).as_secs_f64()
                );
            }
        }
    }
    println!("\nlab run time: {:.1} s", started.elapsed().as_secs_f64());
    if keep {
        lab.keep();
        println!(
            "\nThe lab keeps running (namespaces {}-*):\n  ip netns exec {} mariadb -h {WRITE_VIP} -u app -papp-pw app   # writes\n  ip netns exec {} mariadb -h {READ_VIP} -u app -papp-pw app    # reads\n  {} status --socket {}\nRemove it with: cargo xtask lab down",
            lab.prefix,
            lab.ns("cl"),
            lab.ns("cl"),
            agent(),
            db1.socket(&lab)
        );
    }
    let failed: Vec<&str> = rows.rows.iter().filter(|r| !r.ok).map(|r| r.step).collect();
    assert!(
        failed.is_empty(),
        "steps failed: {failed:?} (agent logs under {})",
        dir(&lab).display()
    );
    let _ = &db2;
}

/// The picture's logic on a made-up run: a write acknowledged by db1 in second 0 and by db2
/// in second 2, a second in which both hosts held the VIP, two steps.
#[test]
fn the_timeline_colours_each_second_by_server() {
    let t0 = Instant::now();
    let at = |ms: u64| t0 + Duration::from_millis(ms);
    let t = timeline::Timeline {
        start: t0,
        end: at(3_500),
        writes: vec![(at(100), 1), (at(2_100), 2), (at(2_200), 2)],
        reads: vec![(at(1_100), 1)],
        vip: vec![
            (at(0), 1),
            (at(1_000), 1),
            (at(1_250), 3),
            (at(1_500), 1),
            (at(2_000), 2),
        ],
        steps: vec![
            ("up <fast>".into(), t0, at(1_000)),
            ("move".into(), at(1_000), at(3_000)),
        ],
    };
    let svg = timeline::render(&t);
    assert!(svg.starts_with("<svg ") && svg.trim_end().ends_with("</svg>"));
    let cells: Vec<&str> = svg
        .lines()
        .filter(|l| l.contains("class=\"cell\""))
        .collect();
    // Writes: db1 in second 0, db2 in second 2 (two writes, one cell); a read in second 1;
    // the VIP on db1 in 0, both in 1 (the split wins over the samples around it), db2 in 2.
    assert_eq!(cells.len(), 6, "{cells:#?}");
    let fill = |c: &str| {
        cells
            .iter()
            .filter(|l| l.contains(&format!("fill=\"{c}\"")))
            .count()
    };
    assert_eq!(
        (
            fill(timeline::DB1),
            fill(timeline::DB2),
            fill(timeline::BOTH)
        ),
        (3, 2, 1)
    );
    assert_eq!(svg.matches("class=\"step\"").count(), 2);
    assert!(svg.contains("1. up &lt;fast&gt; (0–1 s)"), "{svg}");
}
