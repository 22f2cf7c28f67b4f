//! The Debian package under a real systemd 252: `cargo xtask package`'s `.deb` installed with
//! `dpkg -i` into a minimal Debian 12 root, booted with `systemd-nspawn -b` as the LB host of
//! the DR topology (client → LB → two real servers), while a client connects through the VIP
//! every 10 ms from the moment the agent is up to the end:
//!
//! - a fresh install starts nothing (the shipped lb.toml is only the example);
//! - `systemctl start` returns, and the unit is active, only once the agent said READY=1
//!   (its data plane attached, its control socket answering);
//! - `systemctl reload` applies a change, and fails loudly on a bad file, which changes
//!   nothing;
//! - a SIGSTOPped agent is restarted by the watchdog and the new one adopts the pinned data
//!   plane; so is the agent an upgrade (`dpkg -i` again) restarts — not one failed connection;
//! - the hardening holds: the agent's view of the file system is read-only outside its
//!   runtime directory and the bpffs, no new privileges, no capability beyond the unit's;
//! - `systemctl stop` detaches and unpins; `dpkg --purge` removes the configuration.
//!
//! Needs the package: `cargo xtask test` builds it first (`cargo xtask package` by hand).

mod common;

use std::{
    net::SocketAddr,
    path::PathBuf,
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicUsize, Ordering},
    },
    time::{Duration, Instant},
};

use common::{
    Lab,
    dr::{VIP, topology},
    nspawn::Container,
};

const UNIT: &str = "lb-agent.service";

/// The newest `target/debian/lb-agent_*.deb`.
fn package() -> PathBuf {
    let dir = PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/../target/debian"));
    std::fs::read_dir(&dir)
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| e.path())
        .filter(|p| {
            let name = p.file_name().unwrap().to_string_lossy();
            name.starts_with("lb-agent_") && name.ends_with(".deb")
        })
        .max_by_key(|p| p.metadata().and_then(|m| m.modified()).ok())
        .unwrap_or_else(|| {
            panic!(
                "no lb-agent_*.deb in {}: run `cargo xtask package` first",
                dir.display()
            )
        })
}

/// The operator's configuration: the read VIP over both real servers (or only r1), pinned
/// under the lab's prefix in the host's bpffs (bound into the container).
fn config(lab: &Lab, reals: &[&str]) -> String {
    let mut t = format!(
        "[dataplane]\ninterface = \"eth0\"\nxdp_mode = \"driver\"\npin_dir = \"{}\"\n\n\
         [[virtual_server]]\nname = \"mysql-read\"\naddress = \"{VIP}\"\nport = 3306\n",
        lab.pin_dir("lb")
    );
    for r in reals {
        t += &format!("[[virtual_server.real_server]]\naddress = \"{r}\"\n");
    }
    t
}

fn write_config(c: &Container, text: &str) {
    use std::os::unix::fs::PermissionsExt;
    let path = c.root.join("etc/lb-agent/lb.toml");
    std::fs::write(&path, text).unwrap();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
}

/// The real servers the running agent balances the read VIP over (its status, asked inside
/// the container over the default control socket).
fn reals(c: &Container) -> Vec<String> {
    let v: serde_json::Value =
        serde_json::from_str(&c.sh(&["lb-agent", "status", "--json"])).unwrap();
    v["services"][0]["real_servers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["address"].as_str().unwrap().to_string())
        .collect()
}

fn xdp_attached(lab: &Lab) -> bool {
    lab.ip("lb", &["link", "show", "eth0"]).contains("prog/xdp")
}

/// A client connecting through the VIP every 10 ms (bounded: 120 s) until told to stop;
/// counts connections served and failed, and remembers when each failure happened.
struct Looper {
    stop: Arc<AtomicBool>,
    ok: Arc<AtomicUsize>,
    failed: Arc<std::sync::Mutex<Vec<String>>>,
    thread: std::thread::JoinHandle<()>,
}

impl Looper {
    fn start(lab: &Lab) -> Looper {
        let vip: SocketAddr = format!("{VIP}:3306").parse().unwrap();
        let client = lab.ns("cl");
        let stop = Arc::new(AtomicBool::new(false));
        let ok = Arc::new(AtomicUsize::new(0));
        let failed = Arc::new(std::sync::Mutex::new(Vec::new()));
        let thread = {
            let (stop, ok, failed) = (stop.clone(), ok.clone(), failed.clone());
            std::thread::spawn(move || {
                common::enter(&client);
                let start = Instant::now();
                let mut i = 0u64;
                while !stop.load(Ordering::Relaxed) && start.elapsed() < Duration::from_secs(120) {
                    i += 1;
                    let attempt =
                        std::net::TcpStream::connect_timeout(&vip, Duration::from_secs(2))
                            .and_then(|mut s| {
                                s.set_read_timeout(Some(Duration::from_secs(2)))?;
                                common::round_trip(&mut s, &format!("loop{i}"))
                            });
                    match attempt {
                        Ok(r) if r.ends_with(&format!(":loop{i}")) => {
                            ok.fetch_add(1, Ordering::Relaxed);
                        }
                        other => failed
                            .lock()
                            .unwrap()
                            .push(format!("{:.2} s: {other:?}", start.elapsed().as_secs_f64())),
                    }
                    std::thread::sleep(Duration::from_millis(10));
                }
            })
        };
        Looper {
            stop,
            ok,
            failed,
            thread,
        }
    }

    fn served(&self) -> usize {
        self.ok.load(Ordering::Relaxed)
    }

    fn failures(&self) -> Vec<String> {
        self.failed.lock().unwrap().clone()
    }

    fn finish(self) -> (usize, Vec<String>) {
        self.stop.store(true, Ordering::Relaxed);
        self.thread.join().unwrap();
        (
            self.ok.load(Ordering::Relaxed),
            self.failed.lock().unwrap().clone(),
        )
    }
}

/// Waits until the client got `more` connections served beyond `since`.
fn client_keeps_going(l: &Looper, since: usize, more: usize, phase: &str) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while l.served() < since + more {
        assert!(
            Instant::now() < deadline,
            "{phase}: the client got only {} connections served",
            l.served() - since
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(
        l.failures().is_empty(),
        "{phase}: failed connections: {:?}",
        l.failures()
    );
}

#[test]
fn the_package_boots_reloads_restarts_hitless_and_stays_confined_under_systemd() {
    let started = Instant::now();
    let deb = package();
    let mut lab = Lab::new("sd");
    topology(&mut lab);
    lab.serve_echo("r1", "0.0.0.0:3306".parse().unwrap(), "r1");
    lab.serve_echo("r2", "0.0.0.0:3306".parse().unwrap(), "r2");
    let mut c = Container::unpack(&lab);

    // Install: the configuration is a 0600 conffile, nothing is enabled or started.
    std::fs::copy(&deb, c.root.join("var/tmp/lb-agent.deb")).unwrap();
    let out = c.run_unbooted(&["dpkg", "-i", "/var/tmp/lb-agent.deb"]);
    let said =
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "dpkg -i failed:\n{said}");
    assert!(said.contains("edit /etc/lb-agent/lb.toml"), "{said}");
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(c.root.join("etc/lb-agent/lb.toml"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600, "the configuration's mode");
    }
    assert!(
        !c.root
            .join("etc/systemd/system/multi-user.target.wants/lb-agent.service")
            .exists(),
        "a fresh install enabled the agent"
    );
    write_config(&c, &config(&lab, &["10.99.0.11", "10.99.0.12"]));

    c.boot(&mut lab, "lb");
    let booted = started.elapsed();
    assert_eq!(
        String::from_utf8_lossy(&c.exec(&["systemctl", "is-active", UNIT]).stdout).trim(),
        "inactive",
        "the agent runs before the operator started it"
    );

    // Start: active only once READY=1 came, i.e. with the data plane attached and the
    // control socket answering. Polled while it starts: every "active" seen must hold both.
    c.sh(&["systemctl", "start", "--no-block", UNIT]);
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut activating_seen = 0;
    loop {
        let state = c.exec(&["systemctl", "is-active", UNIT]);
        match String::from_utf8_lossy(&state.stdout).trim() {
            "active" => break,
            "activating" => activating_seen += 1,
            _ => {}
        }
        assert!(
            Instant::now() < deadline,
            "the agent did not become active:\n{}",
            c.journal(UNIT)
        );
        std::thread::sleep(Duration::from_millis(10));
    }
    assert!(
        xdp_attached(&lab),
        "active before the data plane was attached"
    );
    assert_eq!(reals(&c), ["10.99.0.11", "10.99.0.12"]);
    let journal = c.journal(UNIT);
    let (ready_line, attached) = (
        journal.find("Started lb-agent.service"),
        journal.find("data plane attached"),
    );
    assert!(
        attached.is_some() && (ready_line.is_none() || attached < ready_line),
        "{journal}"
    );
    println!(
        "booted in {booted:.1?}; the unit was 'activating' for {activating_seen} polls of 10 ms"
    );

    let looper = Looper::start(&lab);
    client_keeps_going(&looper, 0, 50, "after start");

    // Reload: a change applies; a bad file is refused loudly and changes nothing.
    let pid = c.property(UNIT, "MainPID");
    write_config(&c, &config(&lab, &["10.99.0.11"]));
    c.sh(&["systemctl", "reload", UNIT]);
    assert_eq!(reals(&c), ["10.99.0.11"], "reload did not apply");
    write_config(&c, &(config(&lab, &["10.99.0.12"]) + "bogus = [\n"));
    let refused = c.exec(&["systemctl", "reload", UNIT]);
    assert!(!refused.status.success(), "a bad file reloaded");
    assert_eq!(
        reals(&c),
        ["10.99.0.11"],
        "a refused reload changed the agent"
    );
    assert_eq!(
        c.property(UNIT, "MainPID"),
        pid,
        "a refused reload restarted the agent"
    );
    assert_eq!(c.property(UNIT, "ActiveState"), "active");
    assert!(
        c.journal(UNIT).contains("Reload failed"),
        "systemd did not see the refusal"
    );
    write_config(&c, &config(&lab, &["10.99.0.11", "10.99.0.12"]));
    c.sh(&["systemctl", "reload", UNIT]);
    assert_eq!(reals(&c), ["10.99.0.11", "10.99.0.12"]);
    let served = looper.served();
    client_keeps_going(&looper, served, 50, "reloads");

    // A stalled agent: the watchdog (10 s) restarts it; the new one adopts the data plane.
    let stalled_at = Instant::now();
    c.sh(&["systemctl", "kill", "-s", "SIGSTOP", UNIT]);
    c.wait_for(UNIT, "a watchdog restart", Duration::from_secs(30), |c| {
        c.property(UNIT, "NRestarts") == "1" && c.property(UNIT, "ActiveState") == "active"
    });
    let restarted_after = stalled_at.elapsed();
    let journal = c.journal(UNIT);
    assert!(journal.contains("Watchdog timeout"), "{journal}");
    assert_eq!(journal.matches("mode=Adopted").count(), 1, "{journal}");
    let served = looper.served();
    client_keeps_going(&looper, served, 50, "the watchdog restart");

    // An upgrade (the same package again): postinst prepares a restart and restarts; the new
    // agent adopts the data plane too.
    let pid = c.property(UNIT, "MainPID");
    let upgrade = c.exec(&["dpkg", "-i", "/var/tmp/lb-agent.deb"]);
    assert!(
        upgrade.status.success(),
        "dpkg -i over the installed package failed: {}",
        String::from_utf8_lossy(&upgrade.stderr)
    );
    c.wait_for(
        UNIT,
        "the upgrade's restart",
        Duration::from_secs(30),
        |c| c.property(UNIT, "MainPID") != pid && c.property(UNIT, "ActiveState") == "active",
    );
    let journal = c.journal(UNIT);
    assert!(journal.contains("stopping for a restart"), "{journal}");
    assert_eq!(journal.matches("mode=Adopted").count(), 2, "{journal}");
    assert!(!journal.contains("detaching the data plane"), "{journal}");
    let served = looper.served();
    client_keeps_going(&looper, served, 50, "the upgrade");

    // The hardening, seen from inside the agent's own mount namespace.
    let pid = c.property(UNIT, "MainPID");
    for (path, writable) in [
        ("/usr/lib/lb-agent-probe", false),
        ("/etc/lb-agent/probe", false),
        ("/var/lib/lb-agent-probe", false),
        ("/root/lb-agent-probe", false),
        ("/run/lb-agent/probe", true),
    ] {
        let probe = c.exec(&[
            "nsenter",
            "-t",
            &pid,
            "-m",
            "--",
            "sh",
            "-c",
            &format!("touch {path} && rm {path}"),
        ]);
        assert_eq!(
            probe.status.success(),
            writable,
            "the agent {} write {path}: {}",
            if writable { "cannot" } else { "can" },
            String::from_utf8_lossy(&probe.stderr)
        );
    }
    let proc_status = c.sh(&["cat", &format!("/proc/{pid}/status")]);
    let field = |name: &str| {
        proc_status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .map(|v| v.trim().to_string())
            .unwrap_or_default()
    };
    assert_eq!(field("NoNewPrivs:"), "1");
    // CAP_NET_ADMIN 12, CAP_NET_RAW 13, CAP_SYS_ADMIN 21, CAP_SYS_RESOURCE 24, CAP_PERFMON 38,
    // CAP_BPF 39: the unit's CapabilityBoundingSet.
    let allowed: u64 = [12, 13, 21, 24, 38, 39].iter().map(|b| 1u64 << b).sum();
    let bounding = u64::from_str_radix(&field("CapBnd:"), 16).unwrap();
    assert_eq!(
        bounding & !allowed,
        0,
        "capabilities beyond the unit's: {bounding:x}"
    );

    // Stop for good: resign, detach, unpin.
    let (served, failed) = looper.finish();
    c.sh(&["systemctl", "stop", UNIT]);
    assert!(
        !xdp_attached(&lab),
        "the data plane is still attached after a stop"
    );
    assert!(
        !std::path::Path::new(&lab.pin_dir("lb")).exists(),
        "pins left after a stop"
    );
    assert!(c.journal(UNIT).contains("detaching the data plane"));

    // Purge: the configuration goes with the package.
    c.sh(&["dpkg", "--purge", "lb-agent"]);
    assert!(
        !c.root.join("etc/lb-agent").exists(),
        "purge left /etc/lb-agent"
    );
    assert!(!c.root.join("usr/sbin/lb-agent").exists());

    println!(
        "client through the VIP: {served} connections served, {} failed; watchdog restart \
         after {restarted_after:.1?} of stall; whole test {:.1?}",
        failed.len(),
        started.elapsed()
    );
    assert!(failed.is_empty(), "failed connections: {failed:?}");
    c.poweroff(&mut lab);
}
