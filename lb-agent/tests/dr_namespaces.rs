//! End to end in network namespaces: client → LB (lb-agent, native XDP on veth) → two real
//! servers holding the VIP on `lo` (arp_ignore=1, arp_announce=2). TCP connections through
//! the VIP reach both servers, replies go straight back to the client, and the LB detaches
//! cleanly on SIGTERM.

mod common;

use std::{
    net::SocketAddr,
    sync::Arc,
    time::{Duration, Instant},
};

use common::{
    Lab, ask,
    dr::{VIP, topology as dr_topology},
};

/// The DR topology with line-echo servers on both real servers and an agent balancing over
/// them: (lab, agent pid, config path, log path).
fn echo_lab(tag: &str) -> (Lab, u32, std::path::PathBuf, String) {
    let mut lab = Lab::new(tag);
    dr_topology(&mut lab);
    lab.serve_echo("r1", "0.0.0.0:3306".parse().unwrap(), "r1");
    lab.serve_echo("r2", "0.0.0.0:3306".parse().unwrap(), "r2");
    let config = read_vip_config(&lab, &["10.99.0.11", "10.99.0.12"], "");
    let (pid, path, log) = start_agent(&mut lab, &config);
    (lab, pid, path, log)
}

/// The read VIP over the given real servers (plus `extra` TOML), pinned in the lab's place.
fn read_vip_config(lab: &Lab, reals: &[&str], extra: &str) -> String {
    let pin_dir = lab.pin_dir("lb");
    let socket = control_socket(lab);
    let mut t = format!(
        "[global]\ncontrol_socket = \"{socket}\"\nmetrics_listen = \"127.0.0.1:9100\"\n\n[dataplane]\ninterface = \"eth0\"\nxdp_mode = \"driver\"\npin_dir = \"{pin_dir}\"\n\n[[virtual_server]]\nname = \"mysql-read\"\naddress = \"{VIP}\"\nport = 3306\n"
    );
    for r in reals {
        t += &format!("[[virtual_server.real_server]]\naddress = \"{r}\"\n");
    }
    t + extra
}

fn control_socket(lab: &Lab) -> String {
    std::env::temp_dir()
        .join(&lab.prefix)
        .join("control.sock")
        .to_string_lossy()
        .into_owned()
}

/// `lb-agent status` (`--json` when `json`) against the lab's agent.
fn status(lab: &Lab, json: bool) -> std::process::Output {
    let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_lb-agent"));
    cmd.args(["status", "--socket", &control_socket(lab)]);
    if json {
        cmd.arg("--json");
    }
    cmd.output().unwrap()
}

/// Starts lb-agent in the LB namespace with `config`; returns (pid, config path, log path).
fn start_agent(lab: &mut Lab, config: &str) -> (u32, std::path::PathBuf, String) {
    start_agent_in(lab, "lb", config)
}

/// Starts lb-agent in `host` with `config` and waits until its data plane is attached;
/// returns (pid, config path, log path).
fn start_agent_in(lab: &mut Lab, host: &str, config: &str) -> (u32, std::path::PathBuf, String) {
    let dir = std::env::temp_dir().join(&lab.prefix);
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("lb.toml");
    std::fs::write(&path, config).unwrap();
    let log = dir.join("lb-agent.log").to_string_lossy().into_owned();
    let pid = lab.start_agent(host, &path, &log);
    (pid, path, log)
}

#[test]
fn tcp_through_the_vip_reaches_both_servers_and_replies_bypass_the_lb() {
    let mut lab = Lab::new("dr");
    dr_topology(&mut lab);
    lab.serve("r1", "0.0.0.0:3306".parse().unwrap(), "r1\n");
    lab.serve("r2", "0.0.0.0:3306".parse().unwrap(), "r2\n");
    let config = read_vip_config(&lab, &["10.99.0.11", "10.99.0.12"], "");
    let (pid, _, log) = start_agent(&mut lab, &config);
    let dir = std::env::temp_dir().join(&lab.prefix);
    let attached = lab.ip("lb", &["link", "show", "eth0"]);
    assert!(
        attached.contains("xdp"),
        "no XDP program on the LB's eth0:\n{attached}"
    );
    println!(
        "lb-agent attached: {}",
        attached
            .lines()
            .find(|l| l.contains("prog/xdp"))
            .unwrap_or("")
            .trim()
    );

    let into_lb_before = lab.counter("br", "p-lb", "tx_packets");
    let from_lb_before = lab.counter("br", "p-lb", "rx_packets");
    let client_tx_before = lab.counter("cl", "eth0", "tx_packets");
    let client_rx_before = lab.counter("cl", "eth0", "rx_packets");

    const CONNECTIONS: usize = 40;
    let replies = lab.within("cl", || {
        let vip: SocketAddr = format!("{VIP}:3306").parse().unwrap();
        // Bounded: stop at the third failure rather than wait out every timeout.
        let mut out = Vec::new();
        for _ in 0..CONNECTIONS {
            out.push(ask(vip).map(|r| r.trim().to_string()));
            if out.iter().filter(|r| r.is_err()).count() >= 3 {
                break;
            }
        }
        out
    });
    std::thread::sleep(Duration::from_millis(200));

    let into_lb = lab.counter("br", "p-lb", "tx_packets") - into_lb_before;
    let from_lb = lab.counter("br", "p-lb", "rx_packets") - from_lb_before;
    let client_tx = lab.counter("cl", "eth0", "tx_packets") - client_tx_before;
    let client_rx = lab.counter("cl", "eth0", "rx_packets") - client_rx_before;

    let ok: Vec<&String> = replies.iter().filter_map(|r| r.as_ref().ok()).collect();
    let r1 = ok.iter().filter(|r| r.as_str() == "r1").count();
    let r2 = ok.iter().filter(|r| r.as_str() == "r2").count();
    println!("connections through {VIP}:3306: {CONNECTIONS}, answered by r1: {r1}, by r2: {r2}");
    println!("client sent {client_tx} frames and received {client_rx}");
    println!("the LB received {into_lb} frames and transmitted {from_lb} (XDP_TX)");
    let errors: Vec<String> = replies
        .iter()
        .filter_map(|r| r.as_ref().err().map(|e| e.to_string()))
        .collect();
    assert!(errors.is_empty(), "connections failed: {errors:?}");
    assert!(
        r1 >= 5 && r2 >= 5,
        "both servers must serve: r1 {r1}, r2 {r2}"
    );
    // Everything the client sent passed through the LB and was forwarded by it ...
    assert!(
        into_lb + 5 >= client_tx && into_lb <= client_tx + 10,
        "LB received {into_lb}, client sent {client_tx}"
    );
    assert!(
        from_lb + 5 >= client_tx,
        "LB transmitted {from_lb} of the client's {client_tx}"
    );
    // ... while the replies (at least SYN-ACK + data + FIN per connection) never touched it.
    assert!(
        client_rx >= 3 * CONNECTIONS as u64,
        "client received only {client_rx}"
    );
    assert!(
        from_lb <= client_tx + 10,
        "the LB transmitted more than the client sent: replies went through it"
    );

    // `lb-agent status`: a table for people, JSON for tools, root only.
    let out = status(&lab, false);
    let table = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    println!("lb-agent status:\n{table}");
    assert!(
        table.contains("mysql-read 10.99.0.100:3306/tcp active"),
        "{table}"
    );
    let out = status(&lab, true);
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("status --json is JSON");
    let svc = &v["services"][0];
    assert!(svc["packets"].as_u64().unwrap() >= client_tx - 5, "{v}");
    for r in svc["real_servers"].as_array().unwrap() {
        assert_eq!(r["state"], "up", "{v}");
        assert!(r["mac"].as_str().is_some_and(|m| m.len() == 17), "{v}");
        assert!(r["packets"].as_u64().unwrap() > 0, "{v}");
    }
    // Prometheus: the same figures under conventional names (inside the LB's namespace).
    let metrics = lab.within("lb", || {
        use std::io::{Read, Write};
        let mut s = std::net::TcpStream::connect("127.0.0.1:9100").expect("metrics endpoint");
        s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        s.write_all(b"GET /metrics HTTP/1.1\r\nHost: lb\r\n\r\n")
            .unwrap();
        let mut out = String::new();
        s.read_to_string(&mut out).unwrap();
        out
    });
    assert!(metrics.starts_with("HTTP/1.1 200 OK"), "{metrics}");
    let packets_line = metrics
        .lines()
        .find(|l| {
            l.starts_with("lb_service_packets_total{") && l.contains("service=\"mysql-read\"")
        })
        .unwrap_or_else(|| panic!("no lb_service_packets_total:\n{metrics}"));
    let n: u64 = packets_line.rsplit(' ').next().unwrap().parse().unwrap();
    assert!(n >= client_tx - 5, "{packets_line}");
    assert!(
        metrics.contains("lb_real_server_up{service=\"mysql-read\",real=\"10.99.0.11\"} 1"),
        "{metrics}"
    );
    assert!(metrics.contains("# EOF"), "{metrics}");

    let denied = std::process::Command::new("setpriv")
        .args([
            "--reuid=65534",
            "--regid=65534",
            "--clear-groups",
            env!("CARGO_BIN_EXE_lb-agent"),
            "status",
            "--socket",
        ])
        .arg(control_socket(&lab))
        .output()
        .unwrap();
    assert!(
        !denied.status.success(),
        "a non-root user read the control socket"
    );

    // The maps carry BTF: bpftool prints the counters as typed fields.
    let prog_id = attached
        .split_whitespace()
        .skip_while(|w| *w != "prog/xdp")
        .nth(2)
        .expect("prog/xdp id N")
        .to_string();
    let stats = svc_stats_via_bpftool(&prog_id);
    println!("bpftool map lookup LB_SVC_STATS key 0 (per CPU):\n{stats}");
    assert!(
        stats.contains("\"packets\"") && stats.contains("\"new_flows\""),
        "no typed fields:\n{stats}"
    );

    // Every bpftool command of the README's inspection section works on the pinned data
    // plane, and the services maps print typed fields, not hex.
    let pins = lab.pin_dir("lb");
    let readme =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../README.md")).unwrap();
    let section = readme
        .split("## Inspecting the data plane with bpftool")
        .nth(1)
        .and_then(|s| s.split("```sh").nth(1))
        .and_then(|s| s.split("```").next())
        .expect("the README's bpftool section");
    let mut ran = 0;
    for line in section.lines().filter(|l| l.starts_with("bpftool")) {
        let cmd = line
            .split('#')
            .next()
            .unwrap()
            .replace("/sys/fs/bpf/lb-agent", &pins);
        let args: Vec<&str> = cmd.split_whitespace().collect();
        // `net show` looks at the caller's namespace: run it in the LB's.
        let out = if args[1] == "net" {
            lab.exec("lb", &args)
        } else {
            common::sh(&args)
        };
        if cmd.contains("LB_SVC_INFO") {
            assert!(
                out.contains("\"active_table\"") && out.contains("\"flags\""),
                "LB_SVC_INFO not typed:\n{out}"
            );
        }
        if cmd.contains("LB_SERVICES") {
            assert!(
                out.contains("\"port\"") && out.contains("\"proto\""),
                "LB_SERVICES not typed:\n{out}"
            );
        }
        if args[1] == "net" {
            assert!(
                out.contains("eth0") && out.contains("driver id"),
                "bpftool net show:\n{out}"
            );
        }
        ran += 1;
    }
    assert!(ran >= 8, "only {ran} bpftool commands in the README");

    let status = lab.stop(pid).expect("lb-agent was running");
    let log_text = std::fs::read_to_string(&log).unwrap();
    assert!(
        status.success(),
        "lb-agent exited with {status}:\n{log_text}"
    );
    let detached = lab.ip("lb", &["link", "show", "eth0"]);
    assert!(
        !detached.contains("prog/xdp"),
        "XDP still attached after SIGTERM:\n{detached}"
    );
    println!("lb-agent stopped on SIGTERM and detached; log:\n{log_text}");
    let _ = std::fs::remove_dir_all(&dir);
}

/// `bpftool map lookup` of service 0's counters in the program's LB_SVC_STATS map.
fn svc_stats_via_bpftool(prog_id: &str) -> String {
    let prog = common::sh(&["bpftool", "-j", "prog", "show", "id", prog_id]);
    let ids: Vec<String> = prog
        .split("\"map_ids\":[")
        .nth(1)
        .and_then(|r| r.split(']').next())
        .expect("map_ids in bpftool output")
        .split(',')
        .map(|s| s.trim().to_string())
        .collect();
    for id in ids {
        let show = common::sh(&["bpftool", "map", "show", "id", &id]);
        if show.contains("name LB_SVC_STATS") {
            return common::sh(&[
                "bpftool", "map", "lookup", "id", &id, "key", "0", "0", "0", "0",
            ]);
        }
    }
    panic!("LB_SVC_STATS not among the program's maps");
}

/// An agent in a mount namespace of its own, where the host's bpffs is not mounted (a unit
/// with PrivateTmp and no bpffs on the host; here a slave namespace as systemd makes one,
/// and an unmount): a bpffs it
/// mounted would be private and its pins would vanish with it, so it refuses to start and
/// names the path. Nothing of the host's bpffs is touched (the unmount is the namespace's).
#[test]
fn a_bpffs_private_to_the_agent_is_refused() {
    let agent = env!("CARGO_BIN_EXE_lb-agent");
    let dir = std::env::temp_dir().join(format!("lbt{}-privbpf", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("lb.toml");
    std::fs::write(
        &path,
        format!(
            "[global]\ncontrol_socket = \"{}\"\n[dataplane]\ninterface = \"lo\"\npin_dir = \"/sys/fs/bpf/lbt{}-privbpf\"\n",
            dir.join("control.sock").display(),
            std::process::id()
        ),
    )
    .unwrap();
    // As systemd builds a unit's namespace: a slave of a shared root (made shared first in
    // a namespace of the test's own, so the host's mounts are left as they are). The outer
    // shell stays (no `exec`): it keeps the master's namespace, hence the slave, alive.
    // A fresh host may have no bpffs mounted yet (the first agent mounts it): then there is
    // nothing to unmount.
    let inner = format!(
        "{{ ! mountpoint -q /sys/fs/bpf || umount /sys/fs/bpf; }} && exec {agent} run --config {}",
        path.display()
    );
    let script =
        format!("mount --make-rshared / && unshare --mount --propagation slave sh -c '{inner}'");
    let out = std::process::Command::new("unshare")
        .args(["--mount", "--propagation", "private", "sh", "-c", &script])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(
        err.contains("/sys/fs/bpf is not on bpffs in this process's mount namespace"),
        "{err}"
    );
    assert!(
        std::fs::metadata("/sys/fs/bpf").is_ok()
            && !std::path::Path::new(&format!("/sys/fs/bpf/lbt{}-privbpf", std::process::id()))
                .exists(),
        "the host's bpffs untouched"
    );
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn bad_interface_and_bad_config_give_clear_errors() {
    let agent = env!("CARGO_BIN_EXE_lb-agent");
    let dir = std::env::temp_dir().join(format!("lbt{}-errors", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let cases = [
        (
            "[dataplane]\ninterface = \"nosuch0\"\n",
            "interface nosuch0 does not exist",
        ),
        (
            "[dataplane]\ninterface = \"lo\"\nbogus = 1\n",
            "lb.toml:3: `dataplane.bogus`: unknown field `bogus`",
        ),
    ];
    // A pair key others may read stops the start before the data plane is touched.
    let key = dir.join("pair.key");
    std::fs::write(&key, "a-key-of-more-than-sixteen-bytes\n").unwrap();
    std::fs::set_permissions(&key, std::os::unix::fs::PermissionsExt::from_mode(0o644)).unwrap();
    let pair = format!(
        "[global]\ncontrol_socket = \"{}\"\n[dataplane]\ninterface = \"lo\"\npin_dir = \"/sys/fs/bpf/lbt{}-errors\"\n\
         [pair]\npeers = [\"127.0.0.2\"]\nkey_file = \"{}\"\n",
        dir.join("control.sock").display(),
        std::process::id(),
        key.display()
    );
    let cases = cases
        .into_iter()
        .map(|(t, w)| (t.to_string(), w))
        .chain([(pair, "has mode 0644")])
        .collect::<Vec<_>>();
    for (text, want) in cases {
        let text = text.as_str();
        let path = dir.join("lb.toml");
        std::fs::write(&path, text).unwrap();
        let out = std::process::Command::new(agent)
            .args(["run", "--config"])
            .arg(&path)
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{err}");
        assert!(err.contains(want), "want {want:?} in:\n{err}");
        assert!(
            !err.contains("data plane attached"),
            "attached first:\n{err}"
        );
        let check = std::process::Command::new(agent)
            .arg("check-config")
            .arg(&path)
            .output()
            .unwrap();
        let expect_ok = !want.contains("unknown field");
        assert_eq!(
            check.status.success(),
            expect_ok,
            "check-config on {text:?}"
        );
    }
    let _ = std::fs::remove_dir(format!("/sys/fs/bpf/lbt{}-errors", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn not_root_is_refused_clearly() {
    let agent = env!("CARGO_BIN_EXE_lb-agent");
    let dir = std::env::temp_dir().join(format!("lbt{}-noroot", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("lb.toml");
    std::fs::write(&path, "[dataplane]\ninterface = \"lo\"\n").unwrap();
    let out = std::process::Command::new("setpriv")
        .args([
            "--reuid=65534",
            "--regid=65534",
            "--clear-groups",
            agent,
            "run",
            "--config",
        ])
        .arg(&path)
        .output()
        .expect("setpriv (util-linux)");
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(err.contains("must be started as root"), "{err}");
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn auto_mode_falls_back_to_skb_with_a_log_line() {
    // `lo` has no driver-mode XDP: `xdp_mode = "auto"` must fall back to generic XDP.
    let mut lab = Lab::new("skb");
    lab.add_ns("h");
    let pin_dir = lab.pin_dir("h");
    let text = format!(
        r#"
[dataplane]
interface = "lo"
pin_dir = "{pin_dir}"
[[virtual_server]]
address = "127.0.0.100"
port = 3306
[[virtual_server.real_server]]
address = "127.0.0.2"
mac = "02:00:00:00:00:02"
"#
    );
    let (pid, _, log) = start_agent_in(&mut lab, "h", &text);
    let text = std::fs::read_to_string(&log).unwrap();
    assert!(
        text.contains("falling back to skb mode") && text.contains("mode=Skb"),
        "{text}"
    );
    assert!(lab.ip("h", &["link", "show", "lo"]).contains("xdpgeneric"));
    assert!(lab.stop(pid).unwrap().success());
    assert!(
        !lab.ip("h", &["link", "show", "lo"]).contains("xdp"),
        "still attached after SIGTERM"
    );
}

#[test]
fn sighup_applies_the_difference_and_keeps_established_flows() {
    let (mut lab, pid, path, log) = echo_lab("hup");
    let vip: SocketAddr = format!("{VIP}:3306").parse().unwrap();
    let client = lab.ns("cl");

    // Long-lived connections, spread over both servers.
    let mut conns: Vec<_> = (0..12)
        .map(|_| common::connect_from(&client, vip))
        .collect();
    let owners: Vec<String> = conns
        .iter_mut()
        .enumerate()
        .map(|(i, c)| {
            let reply = common::round_trip(c, &format!("a{i}")).expect("first round trip");
            reply.split(':').next().unwrap().to_string()
        })
        .collect();
    assert!(
        owners.iter().any(|o| o == "r2"),
        "no connection on r2: {owners:?}"
    );

    // r2 is drained (weight 0): established connections stay where they are (IPVS keeps
    // them on a quiesced server), new ones all go to r1.
    let drained = read_vip_config(
        &lab,
        &["10.99.0.11"],
        "[[virtual_server.real_server]]\naddress = \"10.99.0.12\"\nweight = 0\n",
    );
    reload(pid, &path, &log, &drained, "configuration reloaded");
    for (i, c) in conns.iter_mut().enumerate() {
        let reply = common::round_trip(c, &format!("b{i}")).expect("round trip after reload");
        assert_eq!(
            reply,
            format!("{}:b{i}", owners[i]),
            "connection {i} moved or broke"
        );
    }
    for i in 0..10 {
        let mut c = common::connect_from(&client, vip);
        assert_eq!(
            common::round_trip(&mut c, &format!("n{i}")).unwrap(),
            format!("r1:n{i}")
        );
    }
    let text = std::fs::read_to_string(&log).unwrap();
    let writes: usize = text
        .lines()
        .find(|l| l.contains("configuration reloaded"))
        .and_then(|l| l.split("writes=").nth(1))
        .and_then(|w| w.split_whitespace().next())
        .and_then(|w| w.parse().ok())
        .expect("writes= in the reload line");
    assert_eq!(
        writes, 2,
        "a one-server pool change is one table and one flip:\n{text}"
    );

    // r2 leaves the configuration: it is no longer a target of the service, so its
    // connections take a new decision (r1, which resets them: it never had them); r1's stay.
    let only_r1 = read_vip_config(&lab, &["10.99.0.11"], "");
    reload(pid, &path, &log, &only_r1, "configuration reloaded");
    for (i, c) in conns.iter_mut().enumerate() {
        let reply = common::round_trip(c, &format!("c{i}"));
        if owners[i] == "r1" {
            assert_eq!(
                reply.unwrap(),
                format!("r1:c{i}"),
                "connection {i} on r1 broke"
            );
        } else {
            assert!(
                reply.is_err(),
                "connection {i} stayed on the removed server: {reply:?}"
            );
        }
    }

    // An invalid file is refused and changes nothing.
    reload(
        pid,
        &path,
        &log,
        "[dataplane]\ninterface = \"eth0\"\nbogus = 1\n",
        "reload refused",
    );
    let mut c = common::connect_from(&client, vip);
    assert_eq!(
        common::round_trip(&mut c, "after-bad").unwrap(),
        "r1:after-bad"
    );
    assert!(lab.stop(pid).unwrap().success());
    let _ = std::fs::remove_dir_all(std::env::temp_dir().join(&lab.prefix));
}

#[test]
fn a_killed_agent_is_replaced_without_a_failed_connection() {
    use std::sync::{
        Arc,
        atomic::{AtomicBool, AtomicUsize, Ordering},
    };
    let (mut lab, pid, path, log) = echo_lab("kill");
    let vip: SocketAddr = format!("{VIP}:3306").parse().unwrap();
    let client = lab.ns("cl");

    // Established connections, and a client that keeps opening new ones throughout.
    let mut conns: Vec<_> = (0..8).map(|_| common::connect_from(&client, vip)).collect();
    let owners: Vec<String> = conns
        .iter_mut()
        .enumerate()
        .map(|(i, c)| {
            common::round_trip(c, &format!("a{i}"))
                .unwrap()
                .split(':')
                .next()
                .unwrap()
                .to_string()
        })
        .collect();
    let (stop, ok, failed) = (
        Arc::new(AtomicBool::new(false)),
        Arc::new(AtomicUsize::new(0)),
        Arc::new(AtomicUsize::new(0)),
    );
    let looper = {
        let (stop, ok, failed, client) = (stop.clone(), ok.clone(), failed.clone(), client.clone());
        std::thread::spawn(move || {
            common::enter(&client);
            // Bounded: at most 20 s of 10 ms iterations.
            for i in 0..2000 {
                if stop.load(Ordering::Relaxed) {
                    break;
                }
                let attempt = std::net::TcpStream::connect_timeout(&vip, Duration::from_secs(2))
                    .and_then(|mut s| {
                        s.set_read_timeout(Some(Duration::from_secs(2)))?;
                        common::round_trip(&mut s, &format!("loop{i}"))
                    });
                match attempt {
                    Ok(r) if r.ends_with(&format!(":loop{i}")) => {
                        ok.fetch_add(1, Ordering::Relaxed)
                    }
                    _ => failed.fetch_add(1, Ordering::Relaxed),
                };
                std::thread::sleep(Duration::from_millis(10));
            }
        })
    };
    std::thread::sleep(Duration::from_millis(300));

    // SIGKILL: no cleanup runs; the pinned data plane keeps forwarding on its own.
    lab.kill(pid);
    std::thread::sleep(Duration::from_millis(500));
    assert!(
        lab.ip("lb", &["link", "show", "eth0"]).contains("prog/xdp"),
        "the data plane died with the agent"
    );
    let during = ok.load(Ordering::Relaxed);

    // A new agent adopts it: same maps, its program swapped into the pinned link.
    let agent = env!("CARGO_BIN_EXE_lb-agent");
    let pid = lab.spawn(
        "lb",
        &[agent, "run", "--config", path.to_str().unwrap()],
        &log,
    );
    let deadline = Instant::now() + Duration::from_secs(15);
    while !std::fs::read_to_string(&log)
        .unwrap()
        .contains("mode=Adopted")
    {
        assert!(
            Instant::now() < deadline,
            "no adoption:\n{}",
            std::fs::read_to_string(&log).unwrap()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    std::thread::sleep(Duration::from_millis(300));
    stop.store(true, Ordering::Relaxed);
    looper.join().unwrap();

    let (ok, failed) = (ok.load(Ordering::Relaxed), failed.load(Ordering::Relaxed));
    println!(
        "looping client: {ok} connections served, {failed} failed ({during} before the restart)"
    );
    assert_eq!(failed, 0, "connections failed across the kill and restart");
    assert!(
        ok > during && during > 10,
        "the client did not keep going: {ok} ok, {during} before"
    );
    for (i, c) in conns.iter_mut().enumerate() {
        let reply =
            common::round_trip(c, &format!("b{i}")).expect("an established connection broke");
        assert_eq!(reply, format!("{}:b{i}", owners[i]), "connection {i} moved");
    }
    let text = std::fs::read_to_string(&log).unwrap();
    assert!(text.contains("adopting the pinned data plane"), "{text}");

    assert!(
        std::path::Path::new(&lab.pin_dir("lb"))
            .join("prog")
            .exists(),
        "the running program is not pinned"
    );

    // A clean stop detaches and unpins for good.
    assert!(lab.stop(pid).unwrap().success());
    assert!(!lab.ip("lb", &["link", "show", "eth0"]).contains("prog/xdp"));
    assert!(
        !std::path::Path::new(&lab.pin_dir("lb")).exists(),
        "pins left after a clean stop"
    );
}

#[test]
fn cleanup_removes_what_a_killed_agent_left() {
    let mut lab = Lab::new("clean");
    lab.add_ns("h");
    let pin_dir = lab.pin_dir("h");
    let text =
        format!("[dataplane]\ninterface = \"lo\"\nxdp_mode = \"skb\"\npin_dir = \"{pin_dir}\"\n");
    let (pid, config, _) = start_agent_in(&mut lab, "h", &text);
    let agent = env!("CARGO_BIN_EXE_lb-agent");
    lab.kill(pid);
    assert!(
        lab.ip("h", &["link", "show", "lo"]).contains("xdpgeneric"),
        "gone with the agent"
    );
    assert!(std::path::Path::new(&pin_dir).join("link").exists());
    let out = std::process::Command::new("nsenter")
        .arg(format!("--net=/run/netns/{}", lab.ns("h")))
        .args(["--", agent, "run", "--cleanup", "--config"])
        .arg(&config)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        !lab.ip("h", &["link", "show", "lo"]).contains("xdp"),
        "still attached after --cleanup"
    );
    assert!(
        !std::path::Path::new(&pin_dir).exists(),
        "pins left after --cleanup"
    );
}

#[test]
fn a_real_server_mac_change_reaches_the_map_within_a_second() {
    let (mut lab, pid, _, _log) = echo_lab("mac");
    let vip: SocketAddr = format!("{VIP}:3306").parse().unwrap();
    let client = lab.ns("cl");
    let mac_of_r1 = |lab: &Lab| -> String {
        let v: serde_json::Value = serde_json::from_slice(&status(lab, true).stdout).unwrap();
        v["services"][0]["real_servers"]
            .as_array()
            .unwrap()
            .iter()
            .find(|r| r["address"] == "10.99.0.11")
            .and_then(|r| r["mac"].as_str().map(String::from))
            .unwrap_or_default()
    };
    assert_eq!(mac_of_r1(&lab), lab.mac("r1", "eth0"));

    // r1 gets a new MAC; it announces it (arp_notify), and the LB's kernel takes it (set
    // here explicitly, so the test does not depend on ARP lock times).
    let new_mac = "02:99:00:00:00:11";
    lab.sysctl("r1", "net.ipv4.conf.eth0.arp_notify", "1");
    lab.ip("r1", &["link", "set", "dev", "eth0", "address", new_mac]);
    let changed = Instant::now();
    lab.ip(
        "lb",
        &[
            "neigh",
            "replace",
            "10.99.0.11",
            "lladdr",
            new_mac,
            "dev",
            "eth0",
            "nud",
            "reachable",
        ],
    );
    while mac_of_r1(&lab) != new_mac {
        assert!(
            changed.elapsed() < Duration::from_secs(1),
            "the new MAC is not in the map after 1 s"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
    println!("MAC change reached the map after {:?}", changed.elapsed());
    // New connections reach r1 at its new MAC.
    let mut r1 = 0;
    for i in 0..20 {
        let mut c = common::connect_from(&client, vip);
        let reply = common::round_trip(&mut c, &format!("m{i}"))
            .expect("a connection after the MAC change");
        r1 += reply.starts_with("r1:") as u32;
    }
    assert!(r1 > 0, "no connection reached r1 after its MAC changed");
    assert!(lab.stop(pid).unwrap().success());
}

#[test]
fn rss_stays_under_30_mb_with_100_services_of_10_real_servers() {
    let mut lab = Lab::new("rss");
    lab.add_ns("h");
    let dir = std::env::temp_dir().join(&lab.prefix);
    std::fs::create_dir_all(&dir).unwrap();
    let pin_dir = lab.pin_dir("h");
    let socket = dir.join("control.sock");
    let mut text = format!(
        "[global]\ncontrol_socket = \"{}\"\n[dataplane]\ninterface = \"lo\"\nxdp_mode = \"skb\"\npin_dir = \"{pin_dir}\"\n",
        socket.display()
    );
    for s in 0..100 {
        text += &format!(
            "[[virtual_server]]\naddress = \"10.200.0.{}\"\nport = 3306\n",
            s + 1
        );
        for r in 0..10 {
            text += &format!(
                "[[virtual_server.real_server]]\naddress = \"10.201.{s}.{}\"\nmac = \"02:00:00:00:{s:02x}:{r:02x}\"\n",
                r + 1
            );
        }
    }
    let (pid, _, _) = start_agent_in(&mut lab, "h", &text);
    let agent = env!("CARGO_BIN_EXE_lb-agent");
    // A status request walks every service and counter once more.
    let out = std::process::Command::new(agent)
        .args(["status", "--json", "--socket"])
        .arg(&socket)
        .output()
        .unwrap();
    assert!(out.status.success());
    let rss_kb: u64 = std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap()
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .unwrap();
    println!(
        "lb-agent RSS with 100 services x 10 real servers: {:.1} MB",
        rss_kb as f64 / 1024.0
    );
    assert!(rss_kb <= 30 * 1024, "RSS {rss_kb} kB over 30 MB");
    assert!(lab.stop(pid).unwrap().success());
    let _ = std::fs::remove_dir_all(&dir);
}

/// The systemd protocol (`Type=notify`, `WatchdogSec`), spoken to a socket the test holds as
/// systemd would: READY=1 once the data plane is attached, WATCHDOG=1 at half the watchdog
/// interval from the main loop, STOPPING=1 on SIGTERM.
#[test]
fn systemd_notify_ready_watchdog_and_stopping() {
    let mut lab = Lab::new("sdn");
    lab.bridge();
    lab.host("lb", "10.99.0.1/24");
    let dir = std::env::temp_dir().join(&lab.prefix);
    std::fs::create_dir_all(&dir).unwrap();
    let sock_path = dir.join("notify.sock");
    let sock = std::os::unix::net::UnixDatagram::bind(&sock_path).unwrap();
    sock.set_read_timeout(Some(Duration::from_secs(15)))
        .unwrap();
    let config = read_vip_config(&lab, &["10.99.0.11"], "").replace("driver", "skb");
    let path = dir.join("lb.toml");
    std::fs::write(&path, config).unwrap();
    let log = dir.join("lb-agent.log").to_string_lossy().into_owned();
    // As systemd sets it: WATCHDOG_PID is the service's main process (the shell execs the
    // agent, which keeps its pid).
    let script = format!(
        "NOTIFY_SOCKET={} WATCHDOG_USEC=200000 WATCHDOG_PID=$$ exec {} run --config {}",
        sock_path.display(),
        env!("CARGO_BIN_EXE_lb-agent"),
        path.display()
    );
    let pid = lab.spawn("lb", &["sh", "-c", &script], &log);
    let mut buf = [0u8; 512];
    let mut next = || -> String {
        let n = sock.recv(&mut buf).unwrap_or_else(|e| {
            panic!(
                "no notification: {e}\n{}",
                std::fs::read_to_string(&log).unwrap_or_default()
            )
        });
        String::from_utf8_lossy(&buf[..n]).into_owned()
    };
    let first = next();
    assert!(first.contains("READY=1"), "{first}");
    assert!(
        std::fs::read_to_string(&log)
            .unwrap()
            .contains("data plane attached"),
        "READY before the data plane was attached"
    );
    let t = Instant::now();
    let mut pings = 0;
    while t.elapsed() < Duration::from_secs(1) {
        if next().contains("WATCHDOG=1") {
            pings += 1;
        }
    }
    // Every 100 ms: about 10 in a second.
    assert!(pings >= 5, "{pings} watchdog pings in 1 s");
    lab.stop(pid);
    let mut stopping = false;
    for _ in 0..50 {
        sock.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
        match sock.recv(&mut buf) {
            Ok(n) if String::from_utf8_lossy(&buf[..n]).contains("STOPPING=1") => {
                stopping = true;
                break;
            }
            Ok(_) => {}
            Err(_) => break,
        }
    }
    assert!(stopping, "no STOPPING=1 after SIGTERM");
}

/// `status --json` without the traffic counters (packets the lab's own ARP and IPv6 chatter
/// may add between two reads).
fn status_without_counters(lab: &Lab) -> serde_json::Value {
    fn strip(v: &mut serde_json::Value) {
        match v {
            serde_json::Value::Object(m) => {
                for k in [
                    "packets",
                    "bytes",
                    "new_flows",
                    "passed_local",
                    "passed_inactive",
                    "passed_peer",
                    "no_real",
                    "held",
                    "passes",
                ] {
                    m.remove(k);
                }
                m.values_mut().for_each(strip);
            }
            serde_json::Value::Array(a) => a.iter_mut().for_each(strip),
            _ => {}
        }
    }
    let out = status(lab, true);
    assert!(out.status.success(), "{out:?}");
    let mut v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    strip(&mut v);
    v
}

/// `lb-agent reload` against the lab's agent.
fn reload_cli(lab: &Lab) -> std::process::Output {
    std::process::Command::new(env!("CARGO_BIN_EXE_lb-agent"))
        .args(["reload", "--socket", &control_socket(lab)])
        .output()
        .unwrap()
}

/// Writes `text` to the agent's file, sends SIGHUP and waits (bounded) until the log has one
/// more line containing `needle`; returns that line.
fn reload(pid: u32, path: &std::path::Path, log: &str, text: &str, needle: &str) -> String {
    std::fs::write(path, text).unwrap();
    let count = || {
        std::fs::read_to_string(log)
            .unwrap()
            .lines()
            .filter(|l| l.contains(needle))
            .count()
    };
    let before = count();
    unsafe { libc::kill(pid as i32, libc::SIGHUP) };
    let deadline = Instant::now() + Duration::from_secs(15);
    while count() == before {
        assert!(
            Instant::now() < deadline,
            "no `{needle}` after SIGHUP:\n{}",
            std::fs::read_to_string(log).unwrap()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    std::fs::read_to_string(log)
        .unwrap()
        .lines()
        .filter(|l| l.contains(needle))
        .nth(before)
        .unwrap()
        .to_string()
}

#[test]
fn a_reload_refused_at_any_stage_leaves_the_running_state_identical() {
    let (mut lab, pid, path, log) = echo_lab("rfail");
    let vip: SocketAddr = format!("{VIP}:3306").parse().unwrap();
    let client = lab.ns("cl");
    let dir = std::env::temp_dir().join(&lab.prefix);
    let before = status_without_counters(&lab);

    // A password file the agent must refuse: readable by others.
    let pw = dir.join("check.pw");
    std::fs::write(&pw, "secret\n").unwrap();
    std::fs::set_permissions(&pw, std::os::unix::fs::PermissionsExt::from_mode(0o644)).unwrap();
    let mysql_check = format!(
        "[[virtual_server]]\nname = \"mysql-write\"\naddress = \"10.99.0.101\"\nport = 3306\n\
         [[virtual_server.real_server]]\naddress = \"10.99.0.11\"\n\
         check = {{ type = \"mysql\", user = \"lb\", password_file = \"{}\" }}\n",
        pw.display()
    );
    let missing_interface = "[[vrrp_instance]]\nname = \"VI_9\"\ninterface = \"nosuch9\"\n\
         virtual_router_id = 9\npriority = 100\n\
         [[vrrp_instance.virtual_address]]\naddress = \"10.99.0.109\"\ndevice = \"nosuch9\"\n";
    let mut too_many = String::new();
    for i in 0..1100u32 {
        too_many += &format!(
            "[[virtual_server]]\nname = \"s{i}\"\naddress = \"10.98.{}.{}\"\nport = 3306\n\
             [[virtual_server.real_server]]\naddress = \"10.99.0.11\"\n",
            i / 250,
            i % 250 + 1
        );
    }
    let reals = ["10.99.0.11", "10.99.0.12"];
    let stages = [
        (
            "parse",
            "[dataplane]\ninterface = \"eth0\"\nbogus = 1\n".to_string(),
            "bogus",
        ),
        (
            "validation",
            read_vip_config(
                &lab,
                &reals,
                "[[virtual_server.real_server]]\naddress = \"10.99.0.11\"\nweight = 7\n",
            ),
            "10.99.0.11",
        ),
        (
            "password file",
            read_vip_config(&lab, &reals, &mysql_check),
            "check.pw",
        ),
        (
            "VRRP socket",
            read_vip_config(&lab, &reals, missing_interface),
            "nosuch9",
        ),
        (
            "data plane capacity",
            read_vip_config(&lab, &reals, &too_many),
            "more virtual servers than the data plane holds",
        ),
    ];
    for (stage, text, why) in stages {
        let line = reload(pid, &path, &log, &text, "reload refused");
        assert!(line.contains(why), "{stage}: the refusal says why: {line}");
        // `lb-agent reload` (the unit's ExecReload) fails with the same reason.
        let cli = reload_cli(&lab);
        let said = String::from_utf8_lossy(&cli.stderr);
        assert!(
            !cli.status.success() && said.contains("reload refused") && said.contains(why),
            "{stage}: lb-agent reload: {said}"
        );
        assert_eq!(
            status_without_counters(&lab),
            before,
            "{stage}: a refused reload changed the running state ({line})"
        );
        let mut c = common::connect_from(&client, vip);
        let reply = common::round_trip(&mut c, stage).unwrap();
        assert!(reply.ends_with(stage), "{stage}: {reply}");
    }
    assert!(
        !lab.ip("lb", &["addr", "show"]).contains("10.99.0.109"),
        "the refused VRRP instance added its address"
    );

    // The same agent still takes a good file.
    let line = reload(
        pid,
        &path,
        &log,
        &read_vip_config(&lab, &["10.99.0.11"], ""),
        "configuration reloaded",
    );
    assert_ne!(status_without_counters(&lab), before, "{line}");
    // And through the control socket: applied, with a summary, exit 0.
    std::fs::write(
        &path,
        read_vip_config(&lab, &["10.99.0.11", "10.99.0.12"], ""),
    )
    .unwrap();
    let cli = reload_cli(&lab);
    let said = String::from_utf8_lossy(&cli.stdout);
    assert!(
        cli.status.success() && said.contains("configuration reloaded"),
        "lb-agent reload: {said} {}",
        String::from_utf8_lossy(&cli.stderr)
    );
    assert!(lab.stop(pid).unwrap().success());
    let _ = std::fs::remove_dir_all(&dir);
}

/// Frames the pinned data plane in `pin_dir` held (dropped while writes wait), all services
/// and CPUs: read with bpftool, since the agent may be stopped.
fn held_via_bpftool(pin_dir: &str) -> u64 {
    fn sum(v: &serde_json::Value) -> u64 {
        match v {
            serde_json::Value::Object(m) => m
                .iter()
                .map(|(k, v)| match (k.as_str(), v.as_u64()) {
                    ("held", Some(n)) => n,
                    _ => sum(v),
                })
                .sum(),
            serde_json::Value::Array(a) => a.iter().map(sum).sum(),
            _ => 0,
        }
    }
    let out = common::sh(&[
        "bpftool",
        "-j",
        "map",
        "dump",
        "pinned",
        &format!("{pin_dir}/LB_SVC_STATS"),
    ]);
    sum(&serde_json::from_str(&out).expect("bpftool's JSON"))
}

/// A stalled agent (SIGSTOP) cannot renew its lease on the data plane: a service that follows
/// the shared writer decision stops forwarding once the lease (3 s) has run out — before a
/// peer could take the master role and decide (its master-down interval and 3 s of silence)
/// — and forwards again once the agent continues. (Without the lease the kernel would go on
/// forwarding by the stalled agent's last decision, which its peer may have moved.) The agent
/// is alone here: its `[pair]` peer never answers, so it leads and decides after waiting it
/// out.
#[test]
fn a_stalled_agent_stops_forwarding_the_writes_within_its_lease() {
    use std::sync::{Arc, Mutex};
    let mut lab = Lab::new("lease");
    dr_topology(&mut lab);
    // VRRP owns the VIP here.
    lab.ip("lb", &["addr", "del", &format!("{VIP}/32"), "dev", "eth0"]);
    lab.serve_echo("r1", "0.0.0.0:3306".parse().unwrap(), "r1");
    lab.serve_echo("r2", "0.0.0.0:3306".parse().unwrap(), "r2");
    let dir = std::env::temp_dir().join(&lab.prefix);
    std::fs::create_dir_all(&dir).unwrap();
    let key = dir.join("pair.key");
    std::fs::write(&key, "lease-test-key-of-enough-bytes\n").unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o600)).unwrap();
    let pin_dir = lab.pin_dir("lb");
    let config = format!(
        "[global]\ncontrol_socket = \"{}\"\n\n[dataplane]\ninterface = \"eth0\"\nxdp_mode = \"driver\"\npin_dir = \"{pin_dir}\"\n\n[pair]\npeers = [\"10.99.0.2\"]\nkey_file = \"{}\"\n\n[[vrrp_instance]]\nname = \"vi\"\nstate = \"master\"\ninterface = \"eth0\"\nvirtual_router_id = 61\npriority = 150\nadvert_interval = \"1s\"\n\n[[vrrp_instance.virtual_address]]\naddress = \"{VIP}\"\ndevice = \"eth0\"\n\n[[virtual_server]]\nname = \"mysql-write\"\naddress = \"{VIP}\"\nport = 3306\n\n[[virtual_server.real_server]]\naddress = \"10.99.0.11\"\n\n[virtual_server.sorry_server]\naddress = \"10.99.0.12\"\n",
        control_socket(&lab),
        key.display()
    );
    let (pid, _, log) = start_agent(&mut lab, &config);
    let vip: SocketAddr = format!("{VIP}:3306").parse().unwrap();
    let client = lab.ns("cl");
    // (when it started, answered) for every attempt, 100 ms apart, short timeouts.
    let attempts: Arc<Mutex<Vec<(Instant, bool)>>> = Arc::default();
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let looper = {
        let (attempts, stop) = (attempts.clone(), stop.clone());
        std::thread::spawn(move || {
            common::enter(&client);
            for i in 0..600 {
                if stop.load(std::sync::atomic::Ordering::Relaxed) {
                    break;
                }
                let at = Instant::now();
                let ok = std::net::TcpStream::connect_timeout(&vip, Duration::from_millis(300))
                    .and_then(|mut s| {
                        s.set_read_timeout(Some(Duration::from_millis(300)))?;
                        common::round_trip(&mut s, &format!("w{i}"))
                    })
                    .is_ok_and(|r| r.ends_with(&format!(":w{i}")));
                attempts.lock().unwrap().push((at, ok));
                std::thread::sleep(Duration::from_millis(100));
            }
        })
    };
    let answered_since = |t: Instant| {
        attempts
            .lock()
            .unwrap()
            .iter()
            .any(|(at, ok)| *at >= t && *ok)
    };
    // Alone, the agent leads and decides after 3 s of silence from its peer.
    let t = Instant::now();
    let mut served = false;
    while t.elapsed() < Duration::from_secs(20) && !served {
        std::thread::sleep(Duration::from_millis(100));
        served = answered_since(t);
    }
    let text = std::fs::read_to_string(&log).unwrap_or_default();
    assert!(served, "the write VIP never answered:\n{text}");
    std::thread::sleep(Duration::from_secs(1));
    let held_before = held_via_bpftool(&pin_dir);

    // Stalled for 6 s.
    let stopped = Instant::now();
    unsafe { libc::kill(pid as i32, libc::SIGSTOP) };
    std::thread::sleep(Duration::from_secs(6));
    let held_stalled = held_via_bpftool(&pin_dir);
    unsafe { libc::kill(pid as i32, libc::SIGCONT) };
    let continued = Instant::now();
    let mut back = None;
    while continued.elapsed() < Duration::from_secs(5) && back.is_none() {
        std::thread::sleep(Duration::from_millis(50));
        back = answered_since(continued).then(|| continued.elapsed());
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    looper.join().unwrap();
    let attempts = attempts.lock().unwrap().clone();
    let during: Vec<(f64, bool)> = attempts
        .iter()
        .filter(|(at, _)| *at >= stopped && *at < continued)
        .map(|(at, ok)| (at.duration_since(stopped).as_secs_f64(), *ok))
        .collect();
    let last_ok = during
        .iter()
        .filter(|(_, ok)| *ok)
        .map(|(t, _)| *t)
        .fold(0.0, f64::max);
    println!(
        "stalled: last answer {last_ok:.2} s after SIGSTOP; held {} frames meanwhile; back {back:?} after SIGCONT",
        held_stalled - held_before
    );
    assert!(
        last_ok < 3.2,
        "the stalled agent's data plane forwarded {last_ok:.2} s after SIGSTOP (lease 3 s): {during:?}"
    );
    assert!(
        during.iter().any(|(_, ok)| *ok),
        "it forwarded within the lease"
    );
    assert!(held_stalled > held_before, "frames held while stalled");
    assert!(back.is_some(), "forwarding again after SIGCONT");
    // And the agent says it stood still (log, status).
    std::thread::sleep(Duration::from_millis(500));
    let text = std::fs::read_to_string(&log).unwrap_or_default();
    assert!(text.contains("stood still"), "no stall reported:\n{text}");
    let s: serde_json::Value = serde_json::from_slice(&status(&lab, true).stdout).unwrap();
    assert!(s["loop_stalls"].as_u64() >= Some(1), "{s}");
    assert!(s["longest_stall_ms"].as_u64() >= Some(4_000), "{s}");
}

/// A second agent started with the same configuration (same `pin_dir`, same control
/// socket) fails at once, naming the running agent's PID, and touches nothing of it: the
/// first keeps forwarding, keeps its pins, its VIP and its control socket; `run --cleanup`
/// refuses too while it runs.
#[test]
fn a_second_agent_on_the_same_data_plane_is_refused_and_touches_nothing() {
    let (lab, pid, path, _log) = echo_lab("second");
    let vip: SocketAddr = format!("{VIP}:3306").parse().unwrap();
    let client = lab.ns("cl");
    let mut before = common::connect_from(&client, vip);
    assert!(common::round_trip(&mut before, "x").is_ok());
    let pins = |lab: &Lab| {
        let mut v: Vec<String> = std::fs::read_dir(lab.pin_dir("lb"))
            .unwrap()
            .flatten()
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .collect();
        v.sort();
        v
    };
    let pinned = pins(&lab);
    for args in [vec!["run"], vec!["run", "--cleanup"]] {
        let t = Instant::now();
        let out = std::process::Command::new("ip")
            .args([
                "netns",
                "exec",
                &lab.ns("lb"),
                env!("CARGO_BIN_EXE_lb-agent"),
            ])
            .args(&args)
            .args(["--config", path.to_str().unwrap()])
            .stdin(std::process::Stdio::null())
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(
            !out.status.success(),
            "{args:?} started beside a running agent"
        );
        assert!(
            err.contains("another lb-agent") && err.contains(&format!("PID {pid}")),
            "{args:?}: {err}"
        );
        assert!(t.elapsed() < Duration::from_secs(5), "refused at once");
    }
    // The first one is whole: pins, VIP, socket, forwarding (the open connection too).
    assert_eq!(pins(&lab), pinned);
    assert!(lab.has_address("lb", VIP));
    assert!(
        status(&lab, false).status.success(),
        "its control socket answers"
    );
    assert!(common::round_trip(&mut before, "y").is_ok());
    let mut after = common::connect_from(&client, vip);
    assert!(common::round_trip(&mut after, "z").is_ok());
}

/// The control socket: created 0600 (never chmod'ed after the bind), a request without an
/// end is cut at 64 KiB and answered with an error, client input is quoted short in errors,
/// and the agent answers `status` afterwards.
#[test]
fn the_control_socket_bounds_what_it_reads_and_echoes() {
    use std::{
        io::{Read, Write},
        os::unix::{fs::PermissionsExt, net::UnixStream},
    };
    let (lab, _pid, _path, _log) = echo_lab("ctl");
    let sock = control_socket(&lab);
    let mode = std::fs::metadata(&sock).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600, "socket mode {mode:o}");
    let ask_raw = |payload: Vec<u8>| -> String {
        let mut s = UnixStream::connect(&sock).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        let mut w = s.try_clone().unwrap();
        // The agent stops reading early: the rest of the write may fail, on its own thread.
        let writer = std::thread::spawn(move || {
            let _ = w.write_all(&payload);
        });
        let mut reply = String::new();
        let _ = s.read_to_string(&mut reply);
        drop(s);
        let _ = writer.join();
        reply
    };
    let t = Instant::now();
    let endless = ask_raw(vec![b'x'; 10 << 20]);
    assert!(endless.contains("longer than 65536 bytes"), "{endless}");
    assert!(t.elapsed() < Duration::from_secs(5));
    let name = "n".repeat(60_000);
    let failback =
        ask_raw(format!("{{\"command\":\"failback\",\"service\":\"{name}\"}}\n").into_bytes());
    assert!(failback.contains("no virtual server named"), "{failback}");
    assert!(failback.len() < 300, "{} bytes echoed", failback.len());
    let bad = ask_raw(format!("{{\"command\":\"{name}\"}}\n").into_bytes());
    assert!(
        bad.contains("bad request") && bad.len() < 300,
        "{} bytes",
        bad.len()
    );
    assert!(
        status(&lab, false).status.success(),
        "status after all that"
    );
}

/// A flood of idle connections on both management listeners, with the agent under a
/// 256-descriptor limit: the listeners keep at most 64 waiting connections each (new ones
/// push out the oldest), so the agent's descriptors stay bounded, its TCP checks keep their
/// verdicts, forwarding never stops, its VRRP instance stays master, its systemd watchdog
/// pings keep their interval, and `status` and a scrape still answer.
#[test]
fn a_flood_on_the_management_ports_changes_nothing_that_matters() {
    use std::{
        io::{Read, Write},
        sync::Mutex,
    };

    use common::pair::until;
    // The flood itself needs descriptors: raise this process's soft limit to its hard one.
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) };
    lim.rlim_cur = lim.rlim_max.min(20_000);
    unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &lim) };
    let mut lab = Lab::new("flood");
    dr_topology(&mut lab);
    lab.serve_echo("r1", "0.0.0.0:3306".parse().unwrap(), "r1");
    lab.serve_echo("r2", "0.0.0.0:3306".parse().unwrap(), "r2");
    let check = "check = { type = \"tcp\", interval = \"200ms\", connect_timeout = \"500ms\" }\n";
    let config = read_vip_config(&lab, &[], "")
        + &format!(
            "[[virtual_server.real_server]]\naddress = \"10.99.0.11\"\n{check}\
             [[virtual_server.real_server]]\naddress = \"10.99.0.12\"\n{check}"
        )
        + "[[vrrp_instance]]\nname = \"vi\"\nstate = \"master\"\ninterface = \"eth0\"\n\
           virtual_router_id = 62\npriority = 150\nadvert_interval = \"1s\"\n\
           [[vrrp_instance.virtual_address]]\naddress = \"10.99.0.200\"\ndevice = \"eth0\"\n";
    let dir = std::env::temp_dir().join(&lab.prefix);
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("lb.toml");
    std::fs::write(&path, &config).unwrap();
    let log = dir.join("lb-agent.log").to_string_lossy().into_owned();
    // systemd's side of the watchdog (WatchdogSec=1s: a ping every 500 ms), as in
    // `systemd_notify_ready_watchdog_and_stopping`; the times of the pings are kept.
    let notify_path = dir.join("notify.sock");
    let notify = std::os::unix::net::UnixDatagram::bind(&notify_path).unwrap();
    notify
        .set_read_timeout(Some(Duration::from_millis(200)))
        .unwrap();
    let pings: Arc<Mutex<Vec<Instant>>> = Arc::default();
    let listening = Arc::new(std::sync::atomic::AtomicBool::new(true));
    let watchdog = {
        let (pings, listening) = (pings.clone(), listening.clone());
        std::thread::spawn(move || {
            let mut buf = [0u8; 512];
            while listening.load(std::sync::atomic::Ordering::Relaxed) {
                if let Ok(n) = notify.recv(&mut buf)
                    && String::from_utf8_lossy(&buf[..n]).contains("WATCHDOG=1")
                {
                    pings.lock().unwrap().push(Instant::now());
                }
            }
        })
    };
    let script = format!(
        "NOTIFY_SOCKET={} WATCHDOG_USEC=1000000 WATCHDOG_PID=$$ exec prlimit --nofile=256:256 -- {} run --config {}",
        notify_path.display(),
        env!("CARGO_BIN_EXE_lb-agent"),
        path.display()
    );
    let pid = lab.spawn("lb", &["sh", "-c", &script], &log);
    lab.wait_for_log(&log, "data plane attached", pid);
    let vip: SocketAddr = format!("{VIP}:3306").parse().unwrap();
    let client = lab.ns("cl");
    std::thread::sleep(Duration::from_secs(1));
    let healthy = |lab: &Lab| {
        let s: serde_json::Value =
            serde_json::from_slice(&status(lab, true).stdout).unwrap_or_default();
        s["services"]
            .as_array()
            .into_iter()
            .flatten()
            .flat_map(|svc| svc["real_servers"].as_array().cloned().unwrap_or_default())
            .filter(|r| r["health"] == "up")
            .count()
    };
    assert_eq!(healthy(&lab), 2, "both real servers checked up");

    // The client loops through the VIP all along.
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let failed = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let looper = {
        let (stop, failed, client) = (stop.clone(), failed.clone(), client.clone());
        std::thread::spawn(move || {
            common::enter(&client);
            for i in 0..1_000 {
                if stop.load(std::sync::atomic::Ordering::Relaxed) {
                    break;
                }
                let ok = std::net::TcpStream::connect_timeout(&vip, Duration::from_secs(2))
                    .and_then(|mut s| {
                        s.set_read_timeout(Some(Duration::from_secs(2)))?;
                        common::round_trip(&mut s, &format!("f{i}"))
                    })
                    .is_ok();
                if !ok {
                    failed.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                }
                std::thread::sleep(Duration::from_millis(20));
            }
        })
    };
    let vrrp_state = |lab: &Lab| {
        let s: serde_json::Value =
            serde_json::from_slice(&status(lab, true).stdout).unwrap_or_default();
        s["vrrp"][0]["state"]
            .as_str()
            .unwrap_or_default()
            .to_string()
    };
    assert!(
        until(Duration::from_secs(10), || vrrp_state(&lab) == "master").is_some(),
        "the VRRP instance became master"
    );
    let transitions = |log: &str| {
        std::fs::read_to_string(log)
            .unwrap_or_default()
            .matches("VRRP transition")
            .count()
    };
    let transitions_before = transitions(&log);

    // The flood: 2,000 idle connections to each listener, held open.
    let flood_started = Instant::now();
    let ns = lab.ns("lb");
    let sock = control_socket(&lab);
    let flood = std::thread::spawn(move || {
        common::enter(&ns);
        let mut held: Vec<Box<dyn std::any::Any + Send>> = Vec::new();
        for _ in 0..2_000 {
            if let Ok(s) = std::net::TcpStream::connect("127.0.0.1:9100") {
                held.push(Box::new(s));
            }
            if let Ok(s) = std::os::unix::net::UnixStream::connect(&sock) {
                held.push(Box::new(s));
            }
        }
        held
    });
    let held = flood.join().unwrap();
    // While it is held: status, a scrape, the checks, the descriptors.
    let t = Instant::now();
    let answered = status(&lab, true);
    let status_took = t.elapsed();
    assert!(answered.status.success(), "status during the flood");
    let ns = lab.ns("lb");
    let (scrape, scrape_took) = std::thread::spawn(move || {
        common::enter(&ns);
        let t = Instant::now();
        let mut s = std::net::TcpStream::connect("127.0.0.1:9100").unwrap();
        s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        s.write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n")
            .unwrap();
        let mut out = String::new();
        let _ = s.read_to_string(&mut out);
        (out, t.elapsed())
    })
    .join()
    .unwrap();
    assert!(
        scrape.starts_with("HTTP/1.1 200"),
        "{}",
        &scrape[..scrape.len().min(200)]
    );
    let fds = std::fs::read_dir(format!("/proc/{pid}/fd"))
        .unwrap()
        .count();
    let rss_kb: u64 = std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap()
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches(" kB").trim().parse().ok())
        .unwrap_or(0);
    std::thread::sleep(Duration::from_secs(1));
    let still_healthy = healthy(&lab);
    println!(
        "flood of {} connections: status {status_took:?}, scrape {scrape_took:?}, agent fds {fds}, RSS {rss_kb} kB",
        held.len()
    );
    let master_meanwhile = vrrp_state(&lab);
    drop(held);
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    looper.join().unwrap();
    let ended = Instant::now();
    listening.store(false, std::sync::atomic::Ordering::Relaxed);
    watchdog.join().unwrap();
    // The longest wait for a watchdog ping from the flood's start to now (systemd kills at
    // 1 s).
    let pings = pings.lock().unwrap().clone();
    let during: Vec<Instant> = pings
        .iter()
        .copied()
        .filter(|t| *t >= flood_started && *t <= ended)
        .collect();
    let longest = std::iter::once(flood_started)
        .chain(during.iter().copied())
        .chain(std::iter::once(ended))
        .collect::<Vec<_>>()
        .windows(2)
        .map(|w| w[1].duration_since(w[0]))
        .max()
        .unwrap_or_default();
    println!(
        "watchdog: {} pings during and after the flood, longest gap {longest:?}; VRRP {master_meanwhile}",
        during.len()
    );
    assert!(
        longest < Duration::from_secs(1),
        "a watchdog gap of {longest:?}"
    );
    assert_eq!(master_meanwhile, "master", "VRRP state under the flood");
    assert_eq!(
        transitions(&log),
        transitions_before,
        "a VRRP transition under the flood"
    );
    // Generous bounds (the figures are printed above): answers, not timeouts.
    assert!(
        status_took < Duration::from_secs(1),
        "status took {status_took:?}"
    );
    assert!(
        scrape_took < Duration::from_secs(1),
        "a scrape took {scrape_took:?}"
    );
    assert_eq!(still_healthy, 2, "a check verdict changed under the flood");
    assert!(fds < 256, "{fds} descriptors");
    assert!(scrape.contains("lb_management_connections_evicted_total{listener=\"metrics\"}"));
    assert_eq!(
        failed.load(std::sync::atomic::Ordering::Relaxed),
        0,
        "forwarding stopped"
    );
    let text = std::fs::read_to_string(&log).unwrap_or_default();
    assert!(
        !text.contains("real server down"),
        "a check failed under the flood:\n{text}"
    );
}
