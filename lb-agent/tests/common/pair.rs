//! The recipe's two hosts in namespaces, as the lab and the one-writer scenarios run them:
//! db1 (10.1.1.113) and db2 (10.1.1.75), each with MariaDB (master-master, GTID,
//! semi-synchronous) and lb-agent running `configs/db1.toml` / `configs/db2.toml` (adapted
//! only in what is host-specific here: pin directory, control socket, password and key
//! files, skb XDP mode), set up as DR real servers by `lb-agent realserver up`; two clients
//! (cl 10.1.1.10, cl2 10.1.1.20); a bridge. And what the tests ask of them: where the VIPs
//! are, what `status` says, when two servers took writes at once.

use std::{
    path::PathBuf,
    time::{Duration, Instant},
};

use lb_agent::config::{
    File, XdpModeSetting,
    schema::{Check, CheckRef},
};

use super::{
    Lab, etcd,
    mariadb::{self, CHECK_USER, Db},
    sqlclient::{self, Log},
};

pub const DB1: &str = "10.1.1.113";
pub const DB2: &str = "10.1.1.75";
pub const WRITE_VIP: &str = "10.1.1.176";
pub const READ_VIP: &str = "10.1.1.177";

/// How long a writer that was away may take to get the writes back: it first replicates
/// what the other server took meanwhile, while the clients go on writing there, and its one
/// SQL thread (one fsync per transaction) applies barely faster than the other server's
/// group commits on a slow disk. About 1 s on the development VM; 24 s after the reboot on a
/// CI machine. A bound for a failback that never comes, not a figure: the tables print how
/// long it took, and `failback_waiting` says what it waits for.
pub const CATCH_UP: std::time::Duration = std::time::Duration::from_secs(60);

/// One LB + MariaDB host.
pub struct Host {
    pub name: &'static str,
    pub db: Db,
    pub config: PathBuf,
    pub agent: Option<u32>,
}

impl Host {
    pub fn socket(&self, lab: &Lab) -> String {
        socket_of(lab, self.name)
    }
    pub fn log(&self, lab: &Lab) -> String {
        dir(lab)
            .join(format!("{}-agent.log", self.name))
            .to_string_lossy()
            .into_owned()
    }
}

pub fn dir(lab: &Lab) -> PathBuf {
    std::env::temp_dir().join(&lab.prefix)
}

/// The witness host of `[quorum]` (an etcd member only).
pub const WITNESS: &str = "10.1.1.30";

/// The semi-sync timeout with `[quorum]`: longer than the self-fence (two thirds of the 3 s
/// TTL), so that a writer cut off from the quorum cannot acknowledge, after falling back to
/// asynchronous replication, a write its peer lacks before it is fenced (README: Failure
/// modes).
pub const QUORUM_SEMISYNC_TIMEOUT_MS: u32 = 3_000;

/// Builds the two hosts and both clients, starts MariaDB (replicating both ways, schema
/// created, converged) and both agents.
pub fn set_up(lab: &mut Lab) -> (Host, Host) {
    let (db1, db2, _) = set_up_with(lab, false);
    (db1, db2)
}

/// The same; with `quorum`, the agents keep the writer decision in a three-member etcd
/// cluster (db1, db2 and a witness host `wit`), which is returned not yet started (the
/// agents start without it: "no quorum").
pub fn set_up_with(lab: &mut Lab, quorum: bool) -> (Host, Host, Option<etcd::Cluster>) {
    let (db1, db2, cluster, _) = build(lab, quorum, &[]);
    (db1, db2, cluster)
}

/// Replica hosts of `set_up_with_replicas`: (name, address, server id).
pub const REPLICAS: [(&str, &str, u32); 2] = [("rp1", "10.1.1.121", 3), ("rp2", "10.1.1.122", 4)];

/// The two hosts plus `n` replica hosts (`REPLICAS`): MariaDB read-only replicas of db1 that
/// do not acknowledge semi-sync (only the sorry server's acknowledgement may release a
/// commit), DR real servers of the read VIP, listed in the write service's `replicas` with
/// `[virtual_server.replication]` (user `repl`).
pub fn set_up_with_replicas(lab: &mut Lab, n: usize) -> (Host, Host, Vec<Db>) {
    let (db1, db2, _, replicas) = build(lab, false, &REPLICAS[..n]);
    (db1, db2, replicas)
}

/// `set_up_with` plus `n` replicas (`cargo xtask lab --replicas N`).
pub fn set_up_full(
    lab: &mut Lab,
    quorum: bool,
    n: usize,
) -> (Host, Host, Option<etcd::Cluster>, Vec<Db>) {
    build(lab, quorum, &REPLICAS[..n.min(REPLICAS.len())])
}

/// (source host, IO running, SQL running) as a replica itself says (`SHOW SLAVE STATUS`,
/// with the column names `Db::sql` leaves out).
pub fn source_of(db: &Db) -> (String, bool, bool) {
    let out = std::process::Command::new("mariadb")
        .args(["--no-defaults", "-uroot", "-S"])
        .arg(db.socket())
        .args(["-e", "SHOW SLAVE STATUS\\G"])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    let field = |name: &str| {
        text.lines()
            .find_map(|l| l.trim().strip_prefix(&format!("{name}: ")))
            .unwrap_or_default()
            .to_string()
    };
    (
        field("Master_Host"),
        field("Slave_IO_Running") == "Yes",
        field("Slave_SQL_Running") == "Yes",
    )
}

/// Whether `db` replicates from `writer` with both threads running.
pub fn follows(db: &Db, writer: &str) -> bool {
    source_of(db) == (writer.to_string(), true, true)
}

fn build(
    lab: &mut Lab,
    quorum: bool,
    replica_hosts: &[(&'static str, &'static str, u32)],
) -> (Host, Host, Option<etcd::Cluster>, Vec<Db>) {
    std::fs::create_dir_all(dir(lab)).unwrap();
    lab.bridge();
    lab.host("cl", "10.1.1.10/24");
    lab.host("cl2", "10.1.1.20/24");
    lab.host("db1", &format!("{DB1}/24"));
    lab.host("db2", &format!("{DB2}/24"));
    let cluster = quorum.then(|| {
        lab.host("wit", &format!("{WITNESS}/24"));
        etcd::Cluster::new(lab, &[("db1", DB1), ("db2", DB2), ("wit", WITNESS)])
    });
    let replica_addrs: Vec<&str> = replica_hosts.iter().map(|(_, a, _)| *a).collect();
    let timeout = format!("--rpl-semi-sync-master-timeout={QUORUM_SEMISYNC_TIMEOUT_MS}");
    // A replication connection left half-open by a cut is given up after 4 s (heartbeats
    // every 2 s) instead of MariaDB's 60 s default, so the servers converge soon after a
    // heal (README: Quorum).
    let options: Vec<&str> = if quorum {
        vec![&timeout, "--slave-net-timeout=4"]
    } else {
        vec![]
    };
    let mut hosts = Vec::new();
    for (name, addr, id) in [("db1", DB1, 1), ("db2", DB2, 2)] {
        let config = lab_config(
            lab,
            name,
            cluster.as_ref().map(|c| c.endpoints()),
            &replica_addrs,
        );
        // The real-server side, as the lb-agent-realserver unit does at boot.
        agent_in(
            lab,
            name,
            &["realserver", "up", "--config", config.to_str().unwrap()],
        );
        let db = lab.mariadb_with(name, addr, id, &options);
        hosts.push(Host {
            name,
            db,
            config,
            agent: None,
        });
    }
    mariadb::replicate_both_ways(&hosts[0].db, &hosts[1].db);
    let mut replicas = Vec::new();
    for (name, addr, id) in replica_hosts {
        lab.host(name, &format!("{addr}/24"));
        agent_in(lab, name, &["realserver", "up", "--vip", READ_VIP]);
        let db = lab.mariadb_with(
            name,
            addr,
            *id,
            &["--rpl-semi-sync-slave-enabled=OFF", "--read-only=ON"],
        );
        db.sql(&format!(
            "CHANGE MASTER TO MASTER_HOST='{DB1}', MASTER_USER='repl', MASTER_PASSWORD='repl-pw',
             MASTER_USE_GTID=slave_pos, MASTER_CONNECT_RETRY=1; START SLAVE;"
        ));
        replicas.push(db);
    }
    sqlclient::create_schema(&hosts[0].db);
    assert!(mariadb::wait_converged(
        &hosts[0].db,
        &hosts[1].db,
        Duration::from_secs(10)
    ));
    for r in &replicas {
        assert!(mariadb::wait_converged(
            &hosts[0].db,
            r,
            Duration::from_secs(10)
        ));
    }
    let mut db2 = hosts.pop().unwrap();
    let mut db1 = hosts.pop().unwrap();
    start_agent(lab, &mut db1);
    start_agent(lab, &mut db2);
    (db1, db2, cluster, replicas)
}

/// `configs/<name>.toml`, adapted to the lab's host-specific paths; with `quorum` (etcd
/// endpoints), `[quorum]` in place of `[pair]`.
fn lab_config(lab: &Lab, name: &str, quorum: Option<Vec<String>>, replicas: &[&str]) -> PathBuf {
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
    // Replicas: the write service's followers, the read service's real servers.
    if !replicas.is_empty() {
        let addrs: Vec<std::net::IpAddr> = replicas.iter().map(|a| a.parse().unwrap()).collect();
        for vs in &mut cfg.virtual_servers {
            let vs = vs.get_mut();
            if vs.sorry_server.is_some() {
                vs.replicas = addrs.clone();
                vs.replication = Some(lb_agent::config::schema::Replication {
                    user: "repl".into(),
                    password_file: repl_password_file(lab),
                    port: None,
                    start_timeout: None,
                    block: Some(lb_agent::config::DurationStr(Duration::from_secs(2))),
                });
            } else {
                let template = vs.real_servers[0].get_ref().clone();
                for a in &addrs {
                    let mut r = template.clone();
                    r.address = *a;
                    vs.real_servers.push(toml::Spanned::new(0..0, r));
                }
            }
        }
    }
    if let Some(endpoints) = quorum {
        cfg.pair = None;
        cfg.quorum = Some(toml::Spanned::new(
            0..0,
            lb_agent::config::schema::Quorum {
                endpoints,
                ttl: None,
                prefix: Some(format!("/{}/", lab.prefix)),
                ca_file: None,
                cert_file: None,
                key_file: None,
            },
        ));
    }
    let path = dir(lab).join(format!("{name}.toml"));
    std::fs::write(&path, toml::to_string(&cfg).unwrap()).unwrap();
    path
}

/// The replication user's password (0600), as `mariadb_with` creates the user.
fn repl_password_file(lab: &Lab) -> PathBuf {
    use std::os::unix::fs::PermissionsExt;
    let path = dir(lab).join("repl.pw");
    if !path.exists() {
        std::fs::write(&path, "repl-pw\n").unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
    }
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

pub fn agent() -> &'static str {
    env!("CARGO_BIN_EXE_lb-agent")
}

/// Runs `lb-agent ARGS` inside `host`'s network namespace and returns its output.
pub fn agent_in(lab: &Lab, host: &str, args: &[&str]) -> String {
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

pub fn start_agent(lab: &mut Lab, h: &mut Host) {
    let log = h.log(lab);
    h.agent = Some(lab.start_agent(h.name, &h.config.clone(), &log));
}

/// The VIP is on `host`'s eth0 (VRRP master there), not only on its lo.
pub fn vip_on(lab: &Lab, host: &str, vip: &str) -> bool {
    lab.ip(host, &["-o", "addr", "show", "dev", "eth0"])
        .contains(&format!("inet {vip}/"))
}

/// The control socket of the agent of host `name`.
pub fn socket_of(lab: &Lab, name: &str) -> String {
    dir(lab)
        .join(format!("{name}.sock"))
        .to_string_lossy()
        .into_owned()
}

pub fn status(lab: &Lab, h: &Host) -> serde_json::Value {
    status_of(lab, h.name)
}

fn status_of(lab: &Lab, name: &str) -> serde_json::Value {
    lb_agent::control::ask(
        std::path::Path::new(&socket_of(lab, name)),
        &lb_agent::control::Request::Status,
    )
    .unwrap_or_default()
}

/// What the agents of hosts `names` say the write service waits for before the writes go
/// back (`failback_waiting`), for a step whose writes did not come back: "db1: ...; db2: ...".
pub fn failback_waiting(lab: &Lab, names: &[&str]) -> String {
    names
        .iter()
        .map(|name| {
            format!(
                "{name}: {}",
                write_service_of(lab, name, "failback_waiting")
            )
        })
        .collect::<Vec<_>>()
        .join("; ")
}

/// The state `status` gives real server `addr` in service `service` of host `h`.
pub fn real_state(lab: &Lab, h: &Host, service: &str, addr: &str) -> String {
    real_field(lab, h, service, addr, "state")
}

/// Field `field` (`state`, `reason`, ...) of real server `addr` in service `service`, as
/// `status` of host `h` says it (empty when absent).
pub fn real_field(lab: &Lab, h: &Host, service: &str, addr: &str, field: &str) -> String {
    let s = status(lab, h);
    s["services"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|svc| svc["name"] == service)
        .flat_map(|svc| svc["real_servers"].as_array().cloned().unwrap_or_default())
        .find(|r| r["address"] == addr)
        .map(|r| r[field].as_str().unwrap_or("").to_string())
        .unwrap_or_default()
}

/// What `status` of host `h` says of the write service: field `field` (`decision`,
/// `writer_risks`, ...).
pub fn write_service(lab: &Lab, h: &Host, field: &str) -> serde_json::Value {
    write_service_of(lab, h.name, field)
}

fn write_service_of(lab: &Lab, name: &str, field: &str) -> serde_json::Value {
    let s = status_of(lab, name);
    s["services"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|svc| svc["name"] == "mysql-write")
        .map(|svc| svc[field].clone())
        .unwrap_or_default()
}

/// What `status` of host `h` says of the write service's shared writer decision.
pub fn decision(lab: &Lab, h: &Host) -> String {
    write_service(lab, h, "decision")
        .as_str()
        .unwrap_or_default()
        .to_string()
}

/// Two servers acknowledging writes at once: in the acknowledgements since `since` ordered
/// by time, a run of fewer than 5 from one server between two runs of the other (with two
/// clients writing every 10 ms that is a few milliseconds of traffic: both servers taking
/// writes in the same moment). A failover and its failback are runs of hundreds.
pub fn second_writer_moments(log: &Log, since: Instant) -> Vec<String> {
    let mut acked: Vec<_> = log
        .acked
        .lock()
        .unwrap()
        .iter()
        .filter(|a| a.at >= since)
        .copied()
        .collect();
    acked.sort_by_key(|a| a.at);
    // (server, acks, first, last, ids of the first few)
    let mut runs: Vec<(u32, usize, Instant, Instant, Vec<u64>)> = Vec::new();
    for a in &acked {
        match runs.last_mut() {
            Some((server, n, _, last, ids)) if *server == a.server => {
                *n += 1;
                *last = a.at;
                if ids.len() < 4 {
                    ids.push(a.id);
                }
            }
            _ => runs.push((a.server, 1, a.at, a.at, vec![a.id])),
        }
    }
    let secs = |t: Instant| t.duration_since(since).as_secs_f64();
    runs.windows(3)
        .filter(|w| w[0].0 == w[2].0 && w[1].1 < 5)
        .map(|w| {
            format!(
                "{} ack(s) by db{} (ids {:?}, +{:.3}..+{:.3} s) amid db{}'s ({} up to +{:.3} s, {} from +{:.3} s)",
                w[1].1,
                w[1].0,
                w[1].4,
                secs(w[1].2),
                secs(w[1].3),
                w[0].0,
                w[0].1,
                secs(w[0].3),
                w[2].1,
                secs(w[2].2),
            )
        })
        .collect()
}

/// `lb-agent switchover mysql-write [--to SERVER]` on the agent that decides the writer
/// (either may; the other refuses and says so).
pub fn switchover(db1: &Host, db2: &Host, to: Option<&str>) -> (bool, String) {
    let mut said = String::new();
    for h in [db1, db2] {
        let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_lb-agent"));
        cmd.args(["switchover", "mysql-write", "--config"])
            .arg(&h.config);
        if let Some(to) = to {
            cmd.args(["--to", to]);
        }
        let out = cmd.output().unwrap();
        said += &format!(
            "{}: {}{}",
            h.name,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        if out.status.success() {
            return (true, said);
        }
        if !String::from_utf8_lossy(&out.stderr).contains("does not decide") {
            return (false, said);
        }
    }
    (false, said)
}

/// `lb-agent maintenance SERVER on|off` against host `h`'s agent.
pub fn maintenance(h: &Host, server: &str, state: &str) -> std::process::Output {
    std::process::Command::new(env!("CARGO_BIN_EXE_lb-agent"))
        .args(["maintenance", server, state, "--config"])
        .arg(&h.config)
        .output()
        .unwrap()
}

/// Polls `cond` (bounded); how long until it held.
pub fn until(limit: Duration, mut cond: impl FnMut() -> bool) -> Option<Duration> {
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
pub fn readers_since(log: &Log, since: Instant) -> Vec<u32> {
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

/// Both replication threads of `db` run (MariaDB's `Slave_running` is ON only then).
pub fn replicating(db: &Db) -> bool {
    db.try_sql("SHOW GLOBAL STATUS LIKE 'Slave_running'")
        .is_ok_and(|s| s.ends_with("ON"))
}

/// (counter, rows) on `db`: every transaction inserts a row and increments the counter, so a
/// lost update shows here even when every row and both checksums agree.
pub fn counted(db: &Db) -> (u64, u64) {
    let number = |q: &str| {
        let v = db.sql(q);
        v.parse()
            .unwrap_or_else(|_| panic!("{q} on {}: {v:?}", db.host))
    };
    (
        number("SELECT n FROM app.c WHERE k = 1"),
        number("SELECT COUNT(*) FROM app.w"),
    )
}

/// VRRP adverts between the hosts lost (`lose`) or delivered again: the bridge stops
/// flooding multicast to both hosts' ports. Adverts go to 224.0.0.18; everything else
/// between the hosts (ARP broadcasts, the pair's unicast datagrams, replication, DR frames)
/// passes.
pub fn lose_adverts(lab: &Lab, lose: bool) {
    for port in ["p-db1", "p-db2"] {
        lab.exec(
            "br",
            &[
                "bridge",
                "link",
                "set",
                "dev",
                port,
                "mcast_flood",
                if lose { "off" } else { "on" },
            ],
        );
    }
}

/// Sends `sig` to a process the test started.
pub fn signal(pid: u32, sig: i32) {
    // SAFETY: a process this test started, by PID.
    unsafe { libc::kill(pid as i32, sig) };
}

/// The faults both the lab and the one-writer scenarios inject, each for `held`, then
/// undone. Adverts lost: returns whether both hosts were master meanwhile.
pub fn adverts_lost_for(lab: &Lab, held: Duration) -> bool {
    let t = Instant::now();
    lose_adverts(lab, true);
    let both =
        until(held, || vip_on(lab, "db2", WRITE_VIP)).is_some() && vip_on(lab, "db1", WRITE_VIP);
    std::thread::sleep(held.saturating_sub(t.elapsed()));
    lose_adverts(lab, false);
    both
}

/// `h`'s agent stopped (SIGSTOP) for `held`, then continued: returns whether `other` took
/// the write VIP meanwhile.
pub fn agent_stopped_for(lab: &Lab, h: &Host, other: &Host, held: Duration) -> bool {
    let t = Instant::now();
    let pid = h.agent.expect("the agent runs");
    signal(pid, libc::SIGSTOP);
    let took = until(held, || vip_on(lab, other.name, WRITE_VIP)).is_some();
    std::thread::sleep(held.saturating_sub(t.elapsed()));
    signal(pid, libc::SIGCONT);
    took
}

pub fn link_down_for(lab: &Lab, h: &Host, held: Duration) {
    lab.ip(h.name, &["link", "set", "eth0", "down"]);
    std::thread::sleep(held);
    lab.ip(h.name, &["link", "set", "eth0", "up"]);
}

/// A partition on the bridge: frames between any host of `a` and any host of `b` are
/// dropped (both ways, flooded ones too); hosts in neither (the clients) still reach both
/// sides. `heal` lifts it. The bridge's own nftables table, so that frames an XDP program
/// sent with `XDP_TX` are cut as well (nftables in a host does not see those).
pub fn partition(lab: &Lab, a: &[&str], b: &[&str]) {
    heal(lab);
    lab.exec("br", &["nft", "add", "table", "bridge", "cut"]);
    lab.exec(
        "br",
        &[
            "nft",
            "add chain bridge cut forward { type filter hook forward priority 0; }",
        ],
    );
    for x in a {
        for y in b {
            for (from, to) in [(x, y), (y, x)] {
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
    }
}

/// No partition any more.
pub fn heal(lab: &Lab) {
    let _ = std::process::Command::new("ip")
        .args([
            "netns",
            "exec",
            &lab.ns("br"),
            "nft",
            "delete",
            "table",
            "bridge",
            "cut",
        ])
        .output();
}
