//! The lab: the reference recipe end to end, in network namespaces, with real MariaDB.
//!
//! Two hosts, db1 (10.1.1.113) and db2 (10.1.1.75), each running MariaDB (master-master,
//! GTID) and lb-agent with `configs/db1.toml` / `configs/db2.toml` (adapted only in what is
//! host-specific here: pin directory, control socket, password file, skb XDP mode), set up as
//! DR real servers by `lb-agent realserver up`; a client (10.1.1.10); a bridge. The client
//! writes through the write VIP (10.1.1.176) and reads through the read VIP (10.1.1.177) all
//! along, while the recipe's test plan runs: stop MySQL on the master, stop lb-agent on the
//! master, start MySQL again, start lb-agent again, reboot the master. It prints a table —
//! step, what should happen, what happened, how long it took — that ends with the count of
//! acknowledged writes and how many are on both servers, and asserts every row.
//!
//! `cargo xtask lab` runs it with its output; `cargo xtask lab --keep` leaves it running
//! (`LB_LAB_KEEP=1`) and `cargo xtask lab down` removes it.

mod common;

use std::{
    path::PathBuf,
    sync::{Arc, atomic::Ordering},
    time::{Duration, Instant},
};

use common::{
    Lab,
    mariadb::{self, CHECK_USER, Db},
    sqlclient::{self, Log, missing_on},
};
use lb_agent::config::{
    File, XdpModeSetting,
    schema::{Check, CheckRef},
};

const DB1: &str = "10.1.1.113";
const DB2: &str = "10.1.1.75";
const WRITE_VIP: &str = "10.1.1.176";
const READ_VIP: &str = "10.1.1.177";
/// The prefix of a kept lab (`cargo xtask lab down` removes it).
const KEPT_PREFIX: &str = "lblab";

struct Row {
    step: &'static str,
    expected: &'static str,
    happened: String,
    took: Option<Duration>,
    ok: bool,
}

/// One LB + MariaDB host.
struct Host {
    name: &'static str,
    db: Db,
    config: PathBuf,
    agent: Option<u32>,
}

impl Host {
    fn socket(&self, lab: &Lab) -> String {
        dir(lab)
            .join(format!("{}.sock", self.name))
            .to_string_lossy()
            .into_owned()
    }
    fn log(&self, lab: &Lab) -> String {
        dir(lab)
            .join(format!("{}-agent.log", self.name))
            .to_string_lossy()
            .into_owned()
    }
}

fn dir(lab: &Lab) -> PathBuf {
    std::env::temp_dir().join(&lab.prefix)
}

/// `configs/<name>.toml`, adapted to the lab's host-specific paths.
fn lab_config(lab: &Lab, name: &str) -> PathBuf {
    let src = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../configs")
        .join(format!("{name}.toml"));
    let (mut cfg, _) = File::load(&src).unwrap();
    cfg.dataplane.pin_dir = lab.pin_dir(name).into();
    cfg.dataplane.xdp_mode = XdpModeSetting::Skb;
    cfg.global.control_socket = Some(dir(lab).join(format!("{name}.sock")));
    let pw = mariadb::check_password_file(lab);
    // Named checks, and any written inline.
    let mut checks: Vec<&mut Check> = cfg.checks.values_mut().collect();
    for vs in &mut cfg.virtual_servers {
        let vs = vs.get_mut();
        let inline = vs
            .real_servers
            .iter_mut()
            .chain(vs.sorry_server.iter_mut())
            .map(|r| &mut r.get_mut().check)
            .chain(std::iter::once(&mut vs.default_check));
        for c in inline {
            if let Some(CheckRef::Inline(c)) = c {
                checks.push(c);
            }
        }
    }
    for c in checks {
        if let Check::Mysql {
            password_file,
            user,
            ..
        } = c
        {
            *password_file = pw.clone();
            assert_eq!(user, CHECK_USER);
        }
    }
    if let Some(pair) = &mut cfg.pair {
        pair.key_file = pair_key(lab);
    }
    let path = dir(lab).join(format!("{name}.toml"));
    std::fs::write(&path, toml::to_string(&cfg).unwrap()).unwrap();
    path
}

/// The pair's shared key (0600), one for both hosts.
fn pair_key(lab: &Lab) -> PathBuf {
    use std::os::unix::fs::PermissionsExt;
    let path = dir(lab).join("pair.key");
    if !path.exists() {
        std::fs::write(&path, format!("lab-pair-key-{}\n", lab.prefix)).unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
    }
    path
}

fn agent() -> &'static str {
    env!("CARGO_BIN_EXE_lb-agent")
}

/// Runs `lb-agent ARGS` inside `host`'s network namespace and returns its output.
fn agent_in(lab: &Lab, host: &str, args: &[&str]) -> String {
    let out = std::process::Command::new("nsenter")
        .arg(format!("--net=/run/netns/{}", lab.ns(host)))
        .arg("--")
        .arg(agent())
        .args(args)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "lb-agent {args:?} in {host}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn start_agent(lab: &mut Lab, h: &mut Host) {
    let log = h.log(lab);
    h.agent = Some(lab.start_agent(h.name, &h.config.clone(), &log));
}

/// The VIP is on `host`'s eth0 (VRRP master there), not only on its lo.
fn vip_on(lab: &Lab, host: &str, vip: &str) -> bool {
    lab.ip(host, &["-o", "addr", "show", "dev", "eth0"])
        .contains(&format!("inet {vip}/"))
}

fn status(lab: &Lab, h: &Host) -> serde_json::Value {
    lb_agent::control::ask(
        std::path::Path::new(&h.socket(lab)),
        &lb_agent::control::Request::Status,
    )
    .unwrap_or_default()
}

/// The state `status` gives real server `addr` in service `service` of host `h`.
fn real_state(lab: &Lab, h: &Host, service: &str, addr: &str) -> String {
    let s = status(lab, h);
    s["services"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|svc| svc["name"] == service)
        .flat_map(|svc| svc["real_servers"].as_array().cloned().unwrap_or_default())
        .find(|r| r["address"] == addr)
        .map(|r| r["state"].as_str().unwrap_or("").to_string())
        .unwrap_or_default()
}

/// What `status` of host `h` says of the write service's shared writer decision.
fn decision(lab: &Lab, h: &Host) -> String {
    let s = status(lab, h);
    s["services"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|svc| svc["name"] == "mysql-write")
        .and_then(|svc| svc["decision"].as_str().map(str::to_string))
        .unwrap_or_default()
}

/// Two servers acknowledging writes at once: in the acknowledgements ordered by time, a run
/// of fewer than 5 from one server between two runs of the other (with two clients writing
/// every 10 ms that is a few milliseconds of traffic: both servers taking writes in the same
/// moment). A failover and its failback are runs of hundreds.
fn second_writer_moments(log: &Log) -> Vec<String> {
    let mut acked = log.acked.lock().unwrap().clone();
    acked.sort_by_key(|a| a.at);
    let mut runs: Vec<(u32, usize, Instant)> = Vec::new();
    for a in &acked {
        match runs.last_mut() {
            Some((server, n, _)) if *server == a.server => *n += 1,
            _ => runs.push((a.server, 1, a.at)),
        }
    }
    runs.windows(3)
        .filter(|w| w[0].0 == w[2].0 && w[1].1 < 5)
        .map(|w| {
            format!(
                "{} ack(s) by db{} amid db{}'s at +{:.2} s",
                w[1].1,
                w[1].0,
                w[0].0,
                w[1].2.duration_since(acked[0].at).as_secs_f64()
            )
        })
        .collect()
}

/// Polls `cond` (bounded); how long until it held.
fn until(limit: Duration, mut cond: impl FnMut() -> bool) -> Option<Duration> {
    let start = Instant::now();
    while start.elapsed() < limit {
        if cond() {
            return Some(start.elapsed());
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    None
}

/// Servers that answered reads since `since`.
fn readers_since(log: &Log, since: Instant) -> Vec<u32> {
    let mut s: Vec<u32> = log
        .reads
        .lock()
        .unwrap()
        .iter()
        .filter(|(at, _)| *at > since)
        .map(|(_, s)| *s)
        .collect();
    s.sort_unstable();
    s.dedup();
    s
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
    std::fs::create_dir_all(dir(&lab)).unwrap();
    lab.bridge();
    lab.host("cl", "10.1.1.10/24");
    lab.host("cl2", "10.1.1.20/24");
    lab.host("db1", &format!("{DB1}/24"));
    lab.host("db2", &format!("{DB2}/24"));
    let mut hosts = Vec::new();
    for (name, addr, id) in [("db1", DB1, 1), ("db2", DB2, 2)] {
        let config = lab_config(&lab, name);
        // The real-server side, as the lb-agent-realserver unit does at boot.
        agent_in(
            &lab,
            name,
            &["realserver", "up", "--config", config.to_str().unwrap()],
        );
        let db = lab.mariadb(name, addr, id);
        hosts.push(Host {
            name,
            db,
            config,
            agent: None,
        });
    }
    mariadb::replicate_both_ways(&hosts[0].db, &hosts[1].db);
    sqlclient::create_schema(&hosts[0].db);
    assert!(mariadb::wait_converged(
        &hosts[0].db,
        &hosts[1].db,
        Duration::from_secs(10)
    ));
    let [mut db1, mut db2]: [Host; 2] = hosts.try_into().ok().unwrap();
    start_agent(&mut lab, &mut db1);
    start_agent(&mut lab, &mut db2);
    let mut rows = Vec::new();

    // 0. Up: db1 is master, the client's writes land on db1 and reads on both.
    let log = Arc::new(Log::default());
    let writer = sqlclient::start_writer(&lab, "cl", WRITE_VIP, DB1, log.clone(), 1);
    // A second client, writing from its own host all along.
    let writer2 = sqlclient::start_writer(&lab, "cl2", WRITE_VIP, DB1, log.clone(), 1_000_000);
    let reader = sqlclient::start_reader(&lab, "cl", READ_VIP, log.clone());
    let t = Instant::now();
    let took = log.wait_for(1, t, Duration::from_secs(15));
    let both_read = until(Duration::from_secs(10), || readers_since(&log, t) == [1, 2]);
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
            && until(Duration::from_secs(5), || {
                decision(&lab, &db1).contains("this agent decides")
                    && decision(&lab, &db2).contains("this agent follows")
            })
            .is_some(),
    });

    // 1. Stop MySQL on the master.
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
        ok: took.is_some() && dropped.is_some() && reads == [2],
    });

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
    let took = log.wait_for(1, t, Duration::from_secs(20));
    let violations = log.violations.lock().unwrap().len();
    rows.push(Row {
        step: "start MySQL on the master",
        expected: "writes return to db1 once it has db2's (caught-up)",
        happened: format!("writes on db1; returned early {violations} time(s)"),
        took,
        ok: took.is_some() && violations == 0,
    });

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
    let returned = until(Duration::from_secs(15), || vip_on(&lab, "db1", WRITE_VIP))
        .and_then(|_| log.wait_for(1, t_boot, Duration::from_secs(20)));
    let violations = log.violations.lock().unwrap().len();
    rows.push(Row {
        step: "reboot the master",
        expected: "db2 takes over; after the boot VIPs and writes return",
        happened: format!(
            "db2 served writes after {}, VIPs on db2: {on_db2}; back on db1: {}",
            took_over.map_or("-".into(), |d| format!("{:.2} s", d.as_secs_f64())),
            returned.is_some()
        ),
        took: returned.map(|_| t.elapsed()),
        ok: took_over.is_some() && on_db2 && returned.is_some() && violations == 0,
    });

    // The master host's link down for 5 s, then up: db2 takes over VRRP but cannot tell a
    // dead db1 from an unreachable one, and db1's agent never sees its writer fail. The
    // shared decision keeps one writer: db2 decides nothing until it has waited db1 out, and
    // db1, back, follows db2's decision (and its gate) before it decides again.
    std::thread::sleep(Duration::from_secs(2));
    let t = Instant::now();
    lab.ip("db1", &["link", "set", "eth0", "down"]);
    std::thread::sleep(Duration::from_secs(5));
    lab.ip("db1", &["link", "set", "eth0", "up"]);
    let t_up = Instant::now();
    let back = until(Duration::from_secs(20), || vip_on(&lab, "db1", WRITE_VIP))
        .and_then(|_| log.wait_for(1, t_up, Duration::from_secs(20)));
    std::thread::sleep(Duration::from_secs(2));
    let twice = second_writer_moments(&log);
    rows.push(Row {
        step: "master host's link down 5 s",
        expected: "one writer at a time; writes back on db1 after the link returns",
        happened: format!(
            "writes back on db1: {}; second-writer moments: {}",
            back.is_some(),
            twice.len()
        ),
        took: back.map(|_| t.elapsed()),
        ok: back.is_some() && twice.is_empty(),
    });

    // The end: stop the clients, let replication settle, count.
    std::thread::sleep(Duration::from_secs(1));
    log.stop.store(true, Ordering::Relaxed);
    writer.join().unwrap();
    writer2.join().unwrap();
    reader.join().unwrap();
    let converged = mariadb::wait_converged(&db1.db, &db2.db, Duration::from_secs(40));
    let acked = log.acked.lock().unwrap().clone();
    let on_both = acked.len() - missing_on(&db1.db, &acked).max(missing_on(&db2.db, &acked));
    let same =
        db1.db.sql("CHECKSUM TABLE app.w, app.c") == db2.db.sql("CHECKSUM TABLE app.w, app.c");
    // Every transaction inserted a row and incremented the counter: a lost update shows
    // here even when every row and both checksums agree.
    let counted = |d: &Db| {
        (
            d.sql("SELECT n FROM app.c WHERE k = 1"),
            d.sql("SELECT COUNT(*) FROM app.w"),
        )
    };
    let (c1, c2) = (counted(&db1.db), counted(&db2.db));
    let twice = second_writer_moments(&log);
    rows.push(Row {
        step: "acknowledged writes",
        expected: "all on both servers, identical tables, counter = rows, one writer at a time",
        happened: format!(
            "{} acknowledged, {on_both} on both servers, checksums {}, counter {} for {} rows, {} second-writer moment(s)",
            acked.len(),
            if same { "equal" } else { "DIFFER" },
            c1.0,
            c1.1,
            twice.len()
        ),
        took: None,
        ok: converged
            && on_both == acked.len()
            && same
            && acked.len() > 100
            && c1.0 == c1.1
            && c2.0 == c2.1
            && twice.is_empty(),
    });
    if !twice.is_empty() {
        println!("second-writer moments: {twice:#?}");
    }
    print_table(&rows);
    if !rows.iter().all(|r| r.ok) {
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
    let failed: Vec<&str> = rows.iter().filter(|r| !r.ok).map(|r| r.step).collect();
    assert!(
        failed.is_empty(),
        "steps failed: {failed:?} (agent logs under {})",
        dir(&lab).display()
    );
    let _ = &db2;
}
