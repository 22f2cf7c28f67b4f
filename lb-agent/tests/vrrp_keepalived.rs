//! VRRP interoperability with Debian's keepalived (the reference peer), in namespaces: two LB
//! hosts on a bridge, one running lb-agent and one keepalived (`--vrrp`: the kernel has no
//! IPVS). Each variant (v2 with `auth_type PASS` over multicast, v2 without authentication over
//! unicast, v3 over IPv4 multicast, v3 over IPv6 multicast) runs both directions: lb-agent
//! master with keepalived backup (clean stop, kill, preemption), and keepalived master with
//! lb-agent backup (kill). A last test covers `nopreempt` and a track script's weight.

mod common;

use std::time::{Duration, Instant};

use common::Lab;

#[derive(Clone, Copy)]
struct Variant {
    version: u8,
    auth: bool,
    unicast: bool,
    v6: bool,
}

impl Variant {
    fn vip(self) -> &'static str {
        if self.v6 { "fd98::100" } else { "10.98.0.100" }
    }

    /// The VIP with its prefix, as `ip addr` and keepalived take it.
    fn vip_cidr(self) -> String {
        format!("{}/{}", self.vip(), if self.v6 { 128 } else { 32 })
    }
}

fn keepalived_conf(v: Variant, priority: u8, state: &str) -> String {
    let auth = if v.auth {
        "  authentication {\n    auth_type PASS\n    auth_pass 1111\n  }\n"
    } else {
        ""
    };
    let unicast = if v.unicast {
        "  unicast_src_ip 10.98.0.2\n  unicast_peer {\n    10.98.0.1\n  }\n"
    } else {
        ""
    };
    // keepalived labels IPv4 addresses only.
    let label = if v.v6 { "" } else { " label eth0:1" };
    format!(
        "global_defs {{\n  router_id KA\n}}\nvrrp_instance VI_1 {{\n  state {state}\n  interface eth0\n  virtual_router_id 51\n  version {}\n  priority {priority}\n  advert_int 1\n{auth}{unicast}  virtual_ipaddress {{\n    {} dev eth0{label}\n  }}\n}}\n",
        v.version,
        v.vip_cidr()
    )
}

fn agent_conf(lab: &Lab, v: Variant, priority: u8) -> String {
    let auth = if v.auth { "auth_pass = \"1111\"\n" } else { "" };
    let log = notify_log(lab);
    let notify = format!(
        "notify_master = \"echo master >> {log}\"\nnotify_backup = \"echo backup >> {log}\"\n"
    );
    let unicast = if v.unicast {
        "unicast_src = \"10.98.0.1\"\nunicast_peers = [\"10.98.0.2\"]\n"
    } else {
        ""
    };
    format!(
        "[global]\ncontrol_socket = \"{}\"\n[dataplane]\ninterface = \"eth0\"\nxdp_mode = \"skb\"\npin_dir = \"{}\"\n\n[[vrrp_instance]]\nname = \"VI_1\"\ninterface = \"eth0\"\nvirtual_router_id = 51\nversion = {}\npriority = {priority}\nadvert_interval = \"1s\"\n{auth}{unicast}{notify}[[vrrp_instance.virtual_address]]\naddress = \"{}\"\ndevice = \"eth0\"\n{}",
        std::env::temp_dir()
            .join(&lab.prefix)
            .join("control.sock")
            .display(),
        lab.pin_dir("lb1"),
        v.version,
        v.vip(),
        if v.v6 { "" } else { "label = \"eth0:1\"\n" }
    )
}

/// Where the notify scripts write the transitions they were told of.
fn notify_log(lab: &Lab) -> String {
    std::env::temp_dir()
        .join(&lab.prefix)
        .join("notify.log")
        .to_string_lossy()
        .into_owned()
}

/// Starts keepalived's VRRP in `host`'s namespace (`--vrrp`: the kernel has no IPVS) with
/// `conf`, logging to `log`; returns its pid.
fn start_keepalived(lab: &mut Lab, host: &str, conf: &std::path::Path, log: &str) -> u32 {
    let ns = format!("--namespace={}", lab.ns(host));
    lab.spawn_host(
        &[
            "keepalived",
            &ns,
            "-n",
            "-l",
            "-D",
            "--vrrp",
            "-f",
            conf.to_str().unwrap(),
        ],
        log,
    )
}

/// SIGKILLs the children of a process this test started (keepalived's VRRP child).
fn kill_children(pid: u32) {
    let children =
        std::fs::read_to_string(format!("/proc/{pid}/task/{pid}/children")).unwrap_or_default();
    for child in children
        .split_whitespace()
        .filter_map(|c| c.parse::<i32>().ok())
    {
        unsafe { libc::kill(child, libc::SIGKILL) };
    }
}

const AGENT: &str = env!("CARGO_BIN_EXE_lb-agent");

/// Two LB hosts on a bridge — lb1 (10.98.0.1) runs lb-agent, lb2 (10.98.0.2) keepalived —
/// and where their files go.
struct Pair {
    lab: Lab,
    dir: std::path::PathBuf,
    agent_log: String,
    ka_log: String,
    ka_conf: std::path::PathBuf,
    agent_cfg: std::path::PathBuf,
}

impl Pair {
    fn new(tag: &str) -> Pair {
        let mut lab = Lab::new(tag);
        lab.bridge();
        lab.host("lb1", "10.98.0.1/24");
        lab.host("lb2", "10.98.0.2/24");
        let dir = std::env::temp_dir().join(&lab.prefix);
        std::fs::create_dir_all(&dir).unwrap();
        let file = |name: &str| dir.join(name);
        Pair {
            agent_log: file("lb-agent.log").to_string_lossy().into_owned(),
            ka_log: file("keepalived.log").to_string_lossy().into_owned(),
            ka_conf: file("keepalived.conf"),
            agent_cfg: file("lb.toml"),
            lab,
            dir,
        }
    }
}

/// `lb-agent status` of the agent whose files are in `dir`.
fn agent_status(dir: &std::path::Path) -> String {
    let out = std::process::Command::new(AGENT)
        .args(["status", "--socket"])
        .arg(dir.join("control.sock"))
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Waits (bounded) until `cond` holds; returns how long that took.
fn wait(what: &str, limit: Duration, mut cond: impl FnMut() -> bool) -> Duration {
    let start = Instant::now();
    while !cond() {
        assert!(start.elapsed() < limit, "{what}: not within {limit:?}");
        std::thread::sleep(Duration::from_millis(20));
    }
    start.elapsed()
}

#[test]
fn v2_auth_pass_multicast() {
    interop(
        "ka2p",
        Variant {
            version: 2,
            auth: true,
            unicast: false,
            v6: false,
        },
    );
}

#[test]
fn v2_no_auth_unicast() {
    interop(
        "ka2u",
        Variant {
            version: 2,
            auth: false,
            unicast: true,
            v6: false,
        },
    );
}

#[test]
fn v3_multicast() {
    interop(
        "ka3m",
        Variant {
            version: 3,
            auth: false,
            unicast: false,
            v6: false,
        },
    );
}

#[test]
fn v3_ipv6_multicast() {
    interop(
        "ka6m",
        Variant {
            version: 3,
            auth: false,
            unicast: false,
            v6: true,
        },
    );
}

fn interop(tag: &str, v: Variant) {
    let vip = v.vip();
    let Pair {
        mut lab,
        dir,
        agent_log,
        ka_log,
        ka_conf,
        agent_cfg,
    } = Pair::new(tag);
    let agent = AGENT;

    // 1. lb-agent (180) master, keepalived (150) backup.
    std::fs::write(&agent_cfg, agent_conf(&lab, v, 180)).unwrap();
    std::fs::write(&ka_conf, keepalived_conf(v, 150, "BACKUP")).unwrap();
    let a = lab.spawn(
        "lb1",
        &[agent, "run", "--config", agent_cfg.to_str().unwrap()],
        &agent_log,
    );
    let took = wait(
        "lb-agent master with the VIP",
        Duration::from_secs(8),
        || lab.has_address("lb1", vip),
    );
    println!("lb-agent became master after {took:?}");
    // keepalived joins as backup and must stay there.
    let ka = start_keepalived(&mut lab, "lb2", &ka_conf, &ka_log);
    std::thread::sleep(Duration::from_secs(5));
    assert!(
        lab.has_address("lb1", vip) && !lab.has_address("lb2", vip),
        "the VIP must be on exactly one host"
    );
    let ka_text = std::fs::read_to_string(&ka_log).unwrap_or_default();
    assert!(
        !ka_text.contains("Entering MASTER STATE"),
        "keepalived became master against a higher priority:\n{ka_text}"
    );

    // lb-agent stops cleanly: it resigns (priority 0), keepalived takes over within skew time.
    assert!(lab.stop(a).unwrap().success());
    let took = wait(
        "keepalived takes over after a clean stop",
        Duration::from_secs(3),
        || lab.has_address("lb2", vip),
    );
    println!("keepalived took over {took:?} after lb-agent stopped cleanly");
    assert!(!lab.has_address("lb1", vip), "lb-agent left its VIP behind");

    // lb-agent returns with the higher priority: it preempts.
    let a = lab.spawn(
        "lb1",
        &[agent, "run", "--config", agent_cfg.to_str().unwrap()],
        &agent_log,
    );
    wait(
        "lb-agent preempts keepalived",
        Duration::from_secs(8),
        || lab.has_address("lb1", vip) && !lab.has_address("lb2", vip),
    );

    // lb-agent is killed: keepalived takes over after its master-down interval (~3.4 s).
    lab.kill(a);
    let took = wait(
        "keepalived takes over after a kill",
        Duration::from_secs(6),
        || lab.has_address("lb2", vip),
    );
    println!("keepalived took over {took:?} after lb-agent was killed");
    // The killed agent's VIP is still configured on lb1 (nobody removed it); the next start
    // cleans it.
    let status = std::process::Command::new(agent)
        .args(["run", "--cleanup", "--config"])
        .arg(&agent_cfg)
        .output()
        .unwrap();
    assert!(status.status.success());
    lab.ip("lb1", &["addr", "del", &v.vip_cidr(), "dev", "eth0"]);
    lab.stop(ka);

    // 2. The reverse: keepalived (200) master, lb-agent (100) backup, then keepalived killed.
    std::fs::write(&agent_cfg, agent_conf(&lab, v, 100)).unwrap();
    std::fs::write(&ka_conf, keepalived_conf(v, 200, "MASTER")).unwrap();
    let ka = start_keepalived(&mut lab, "lb2", &ka_conf, &ka_log);
    wait("keepalived master", Duration::from_secs(8), || {
        lab.has_address("lb2", vip)
    });
    std::fs::write(notify_log(&lab), "").unwrap();
    let a = lab.spawn(
        "lb1",
        &[agent, "run", "--config", agent_cfg.to_str().unwrap()],
        &agent_log,
    );
    std::thread::sleep(Duration::from_secs(5));
    assert!(
        !lab.has_address("lb1", vip),
        "lb-agent (100) took the VIP from keepalived (200)"
    );
    // SIGKILL keepalived's VRRP child first (a crash: no resignation), then its parent (which
    // would otherwise stop the child cleanly).
    kill_children(ka);
    lab.kill(ka);
    let took = wait(
        "lb-agent takes over from a killed keepalived",
        Duration::from_secs(6),
        || lab.has_address("lb1", vip),
    );
    println!("lb-agent took over {took:?} after keepalived was killed");
    // notify_backup at start, notify_master on takeover (run in the background).
    let log = notify_log(&lab);
    wait("the notify scripts", Duration::from_secs(5), || {
        std::fs::read_to_string(&log)
            .unwrap_or_default()
            .lines()
            .collect::<Vec<_>>()
            == ["backup", "master"]
    });
    let text = agent_status(&dir);
    assert!(
        text.contains("vrrp VI_1: master (priority 100, master "),
        "{text}"
    );
    assert!(lab.stop(a).unwrap().success());
    assert!(
        !lab.has_address("lb1", vip),
        "lb-agent kept the VIP after a clean stop"
    );
    let _ = std::fs::remove_dir_all(&dir);
}

/// `nopreempt` and a track script, against keepalived: lb-agent (180, nopreempt) joins a
/// keepalived master (150) and stays backup; takes over when keepalived is killed; a failing
/// track script (weight -60: 120) hands the master role to keepalived, and recovering it does
/// not take it back (nopreempt).
#[test]
fn nopreempt_and_track_script() {
    let v = Variant {
        version: 2,
        auth: false,
        unicast: false,
        v6: false,
    };
    let vip = v.vip();
    let Pair {
        mut lab,
        dir,
        agent_log,
        ka_log,
        ka_conf,
        agent_cfg,
    } = Pair::new("kanp");
    let agent = AGENT;
    let fail = dir.join("fail");
    let conf = agent_conf(&lab, v, 180).replace(
        "[[vrrp_instance.virtual_address]]",
        "preempt = false\ntrack_script = [{ name = \"chk\" }]\n[[vrrp_instance.virtual_address]]",
    );
    let conf = format!(
        "{conf}\n[[vrrp_script]]\nname = \"chk\"\nscript = \"test ! -e {}\"\ninterval = \"200ms\"\nweight = -60\nfall = 2\nrise = 2\n",
        fail.display()
    );
    std::fs::write(&agent_cfg, conf).unwrap();
    std::fs::write(&ka_conf, keepalived_conf(v, 150, "MASTER")).unwrap();
    let status = || agent_status(&dir);

    let ka = start_keepalived(&mut lab, "lb2", &ka_conf, &ka_log);
    wait("keepalived master", Duration::from_secs(8), || {
        lab.has_address("lb2", vip)
    });
    let a = lab.spawn(
        "lb1",
        &[agent, "run", "--config", agent_cfg.to_str().unwrap()],
        &agent_log,
    );
    std::thread::sleep(Duration::from_secs(5));
    assert!(
        lab.has_address("lb2", vip) && !lab.has_address("lb1", vip),
        "nopreempt: lb-agent (180) must not take the VIP from keepalived (150)"
    );
    let text = status();
    assert!(
        text.contains("vrrp VI_1: backup (priority 180, master 10.98.0.2, addresses 10.98.0.100)"),
        "{text}"
    );

    kill_children(ka);
    lab.kill(ka);
    wait(
        "lb-agent takes over from a killed keepalived",
        Duration::from_secs(6),
        || lab.has_address("lb1", vip),
    );
    let ka = start_keepalived(&mut lab, "lb2", &ka_conf, &ka_log);
    std::thread::sleep(Duration::from_secs(4));
    assert!(
        lab.has_address("lb1", vip) && !lab.has_address("lb2", vip),
        "keepalived (150) took the VIP from lb-agent (180)"
    );

    // The track script fails: 180 - 60 = 120 < 150, and keepalived preempts.
    std::fs::write(&fail, "").unwrap();
    let took = wait(
        "keepalived preempts after lb-agent's track script failed",
        Duration::from_secs(6),
        || lab.has_address("lb2", vip) && !lab.has_address("lb1", vip),
    );
    println!("keepalived took over {took:?} after the track script failed");
    let text = status();
    assert!(text.contains("vrrp VI_1: backup (priority 120,"), "{text}");

    // It recovers: priority 180 again, but nopreempt keeps lb-agent backup.
    std::fs::remove_file(&fail).unwrap();
    wait("priority back to 180", Duration::from_secs(3), || {
        status().contains("vrrp VI_1: backup (priority 180,")
    });
    std::thread::sleep(Duration::from_secs(3));
    assert!(
        lab.has_address("lb2", vip) && !lab.has_address("lb1", vip),
        "nopreempt: lb-agent took the VIP back"
    );
    assert!(lab.stop(a).unwrap().success());
    lab.stop(ka);
    let _ = std::fs::remove_dir_all(&dir);
}

/// Reloads against keepalived, as its users change a pair: a raised priority preempts, an
/// added VIP goes out in the adverts (keepalived, reloaded with the same VIPs, accepts them
/// and stays backup), a removed instance resigns (keepalived takes over within skew time),
/// and an instance added back starts and preempts again. Each step is visible in `status`.
#[test]
fn reloads_apply_vrrp_changes_as_keepalived_sees_them() {
    let v = Variant {
        version: 2,
        auth: false,
        unicast: false,
        v6: false,
    };
    let (vip, second) = (v.vip(), "10.98.0.101");
    let Pair {
        mut lab,
        dir,
        agent_log,
        ka_log,
        ka_conf,
        agent_cfg,
    } = Pair::new("kahup");
    let agent = AGENT;
    let status = || agent_status(&dir);
    let with_second = |conf: String| {
        conf.replace(
            "[[vrrp_instance.virtual_address]]",
            &format!(
                "[[vrrp_instance.virtual_address]]\naddress = \"{second}\"\ndevice = \"eth0\"\n[[vrrp_instance.virtual_address]]"
            ),
        )
    };
    let log_lines = |path: &str, needle: &str| {
        std::fs::read_to_string(path)
            .unwrap_or_default()
            .matches(needle)
            .count()
    };
    let reload_agent = |pid: u32, text: String| {
        std::fs::write(&agent_cfg, text).unwrap();
        let before = log_lines(&agent_log, "configuration reloaded");
        unsafe { libc::kill(pid as i32, libc::SIGHUP) };
        wait("the reload", Duration::from_secs(5), || {
            log_lines(&agent_log, "configuration reloaded") > before
        });
    };

    // keepalived (150) master, lb-agent (100) backup.
    std::fs::write(&ka_conf, keepalived_conf(v, 150, "MASTER")).unwrap();
    let ka = start_keepalived(&mut lab, "lb2", &ka_conf, &ka_log);
    wait("keepalived master", Duration::from_secs(8), || {
        lab.has_address("lb2", vip)
    });
    std::fs::write(&agent_cfg, agent_conf(&lab, v, 100)).unwrap();
    let a = lab.spawn(
        "lb1",
        &[agent, "run", "--config", agent_cfg.to_str().unwrap()],
        &agent_log,
    );
    wait("lb-agent backup", Duration::from_secs(8), || {
        status().contains("vrrp VI_1: backup (priority 100, master 10.98.0.2,")
    });

    // 1. Priority 100 → 200: lb-agent preempts, keepalived steps down.
    reload_agent(a, agent_conf(&lab, v, 200));
    let took = wait(
        "lb-agent preempts after the reload",
        Duration::from_secs(5),
        || lab.has_address("lb1", vip) && !lab.has_address("lb2", vip),
    );
    println!("lb-agent preempted {took:?} after its priority was raised by a reload");
    wait("keepalived backup", Duration::from_secs(3), || {
        log_lines(&ka_log, "Entering BACKUP STATE") > 0
    });
    assert!(
        status().contains("vrrp VI_1: master (priority 200,"),
        "{}",
        status()
    );

    // 2. A second VIP on both sides (keepalived first: it checks the adverts' address list).
    std::fs::write(
        &ka_conf,
        keepalived_conf(v, 150, "BACKUP").replace(
            "dev eth0 label eth0:1\n",
            &format!("dev eth0 label eth0:1\n    {second}/32 dev eth0\n"),
        ),
    )
    .unwrap();
    unsafe { libc::kill(ka as i32, libc::SIGHUP) };
    std::thread::sleep(Duration::from_millis(500));
    reload_agent(a, with_second(agent_conf(&lab, v, 200)));
    wait("the second VIP on lb-agent", Duration::from_secs(3), || {
        lab.has_address("lb1", second)
    });
    assert!(
        status().contains(&format!("addresses {second} {vip})"))
            || status().contains(&format!("addresses {vip} {second})")),
        "{}",
        status()
    );
    let mastered = log_lines(&ka_log, "Entering MASTER STATE");
    // Longer than keepalived's master-down interval: it accepts the new adverts.
    std::thread::sleep(Duration::from_secs(5));
    let ka_text = std::fs::read_to_string(&ka_log).unwrap_or_default();
    assert_eq!(
        log_lines(&ka_log, "Entering MASTER STATE"),
        mastered,
        "keepalived rejected the reloaded adverts:\n{ka_text}"
    );
    assert!(!lab.has_address("lb2", vip) && !lab.has_address("lb2", second));

    // 3. The instance removed: lb-agent resigns, keepalived takes over within skew time.
    let no_vrrp = agent_conf(&lab, v, 200);
    let no_vrrp = no_vrrp[..no_vrrp.find("[[vrrp_instance]]").unwrap()].to_string();
    reload_agent(a, no_vrrp);
    let took = wait(
        "keepalived takes over a resigned instance",
        Duration::from_secs(3),
        || lab.has_address("lb2", vip) && lab.has_address("lb2", second),
    );
    println!("keepalived took over {took:?} after the reload removed lb-agent's instance");
    assert!(!lab.has_address("lb1", vip) && !lab.has_address("lb1", second));
    assert!(!status().contains("vrrp VI_1"), "{}", status());

    // 4. Added back: it starts as backup and preempts.
    reload_agent(a, with_second(agent_conf(&lab, v, 200)));
    wait("lb-agent preempts again", Duration::from_secs(8), || {
        lab.has_address("lb1", vip) && !lab.has_address("lb2", vip)
    });
    assert!(
        status().contains("vrrp VI_1: master (priority 200,"),
        "{}",
        status()
    );
    assert!(lab.stop(a).unwrap().success());
    lab.stop(ka);
    let _ = std::fs::remove_dir_all(&dir);
}

/// Loses (or delivers again) the unicast VRRP adverts `host` sends to `peer`: a permanent
/// neighbour entry with a MAC nobody has sends them nowhere (the bridge floods them, every
/// host drops them as not its own), as a lossy path would, while the client still reaches
/// both hosts. (This machine has no nftables and no tc actions; routes do not apply to a
/// socket bound to its device; and nftables would not see XDP_TX frames anyway.)
fn lose_adverts(lab: &Lab, host: &str, peer: &str, lose: bool) {
    if lose {
        lab.ip(
            host,
            &[
                "neigh",
                "replace",
                peer,
                "lladdr",
                "02:00:00:00:00:99",
                "dev",
                "eth0",
                "nud",
                "permanent",
            ],
        );
    } else {
        lab.ip(host, &["neigh", "del", peer, "dev", "eth0"]);
    }
}

/// The MAC `host`'s neighbour table holds for `addr`, if any.
fn neighbour_mac(lab: &Lab, host: &str, addr: &str) -> Option<String> {
    let out = lab.ip(host, &["neigh", "show", addr, "dev", "eth0"]);
    let words: Vec<&str> = out.split_whitespace().collect();
    let i = words.iter().position(|w| *w == "lladdr")?;
    words.get(i + 1).map(|m| m.to_string())
}

/// Two masters, healed: VRRP adverts are lost between lb-agent (180) and keepalived (150),
/// so keepalived becomes master too and its gratuitous ARPs move a client's ARP entry for the
/// VIP to it. When the adverts return, lb-agent hears keepalived's lower priority (its
/// regular advert, or the one `higher_prio_send_advert` sends as it steps down), and
/// re-announces the VIP: the client's entry is back on lb-agent within the next advert
/// interval, not after the client's own neighbour timeouts (4 s here without it, traffic
/// meanwhile going to a host that no longer holds the VIP).
#[test]
fn two_masters_heal_and_the_client_follows_the_master_back() {
    let v = Variant {
        version: 2,
        auth: false,
        unicast: true,
        v6: false,
    };
    let vip = v.vip();
    let Pair {
        mut lab,
        dir,
        agent_log,
        ka_log,
        ka_conf,
        agent_cfg,
    } = Pair::new("ka2m");
    lab.host("cl", "10.98.0.10/24");
    let (lb1_mac, lb2_mac) = (lab.mac("lb1", "eth0"), lab.mac("lb2", "eth0"));
    std::fs::write(&agent_cfg, agent_conf(&lab, v, 180)).unwrap();
    // keepalived as lb-agent's own default has it: a master that steps down sends one more
    // advert, so the higher master hears of the other one whichever advert crosses first.
    std::fs::write(
        &ka_conf,
        keepalived_conf(v, 150, "BACKUP").replace(
            "  advert_int 1\n",
            "  advert_int 1\n  higher_prio_send_advert true\n",
        ),
    )
    .unwrap();
    let a = lab.spawn(
        "lb1",
        &[AGENT, "run", "--config", agent_cfg.to_str().unwrap()],
        &agent_log,
    );
    wait("lb-agent master", Duration::from_secs(8), || {
        lab.has_address("lb1", vip)
    });
    let ka = start_keepalived(&mut lab, "lb2", &ka_conf, &ka_log);
    std::thread::sleep(Duration::from_secs(2));

    // A client that keeps sending to the VIP (its traffic keeps its ARP entry in use).
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let sender = {
        let (stop, ns, vip) = (stop.clone(), lab.ns("cl"), vip.to_string());
        std::thread::spawn(move || {
            common::enter(&ns);
            let s = std::net::UdpSocket::bind("0.0.0.0:0").unwrap();
            for _ in 0..600 {
                if stop.load(std::sync::atomic::Ordering::Relaxed) {
                    break;
                }
                let _ = s.send_to(b"x", (vip.as_str(), 9));
                std::thread::sleep(Duration::from_millis(100));
            }
        })
    };
    wait(
        "the client resolves the VIP to lb-agent",
        Duration::from_secs(5),
        || neighbour_mac(&lab, "cl", vip).as_deref() == Some(lb1_mac.as_str()),
    );

    // Adverts lost both ways: keepalived takes over as well, and the client follows its
    // gratuitous ARPs.
    lose_adverts(&lab, "lb1", "10.98.0.2", true);
    lose_adverts(&lab, "lb2", "10.98.0.1", true);
    wait("keepalived master too", Duration::from_secs(8), || {
        lab.has_address("lb2", vip)
    });
    wait(
        "the client follows keepalived",
        Duration::from_secs(3),
        || neighbour_mac(&lab, "cl", vip).as_deref() == Some(lb2_mac.as_str()),
    );
    assert!(lab.has_address("lb1", vip), "two masters expected");
    std::thread::sleep(Duration::from_secs(4));

    // The heal.
    lose_adverts(&lab, "lb1", "10.98.0.2", false);
    lose_adverts(&lab, "lb2", "10.98.0.1", false);
    let took = wait(
        "the client back on lb-agent",
        Duration::from_millis(2500),
        || neighbour_mac(&lab, "cl", vip).as_deref() == Some(lb1_mac.as_str()),
    );
    println!("after the heal the client's ARP entry was back on lb-agent in {took:?}");
    wait("keepalived backs down", Duration::from_secs(3), || {
        !lab.has_address("lb2", vip)
    });
    assert!(lab.has_address("lb1", vip));
    let status = agent_status(&dir);
    assert!(
        status.contains("vrrp VI_1: master (priority 180,"),
        "{status}"
    );
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    sender.join().unwrap();
    assert!(lab.stop(a).unwrap().success());
    lab.stop(ka);
    let _ = std::fs::remove_dir_all(&dir);
}
