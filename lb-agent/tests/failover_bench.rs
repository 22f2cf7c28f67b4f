//! `cargo xtask bench` (failover): how long a client looping through a VIP goes unserved when
//! the VRRP master is killed or stopped cleanly — for a pair of lb-agents and, in the same run
//! and with the same settings, for a pair of keepalived. Both LB hosts answer on the VIP
//! themselves (a TCP server on each), so the figure is the VRRP takeover, nothing else.
//! Ignored by `cargo test`; prints figures, asserts nothing about time.

mod common;

use std::{
    net::SocketAddr,
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, Ordering},
    },
    time::{Duration, Instant},
};

use common::Lab;

const VIP: &str = "10.97.0.100";
/// Runs per figure: a kill lands at a random phase of the advert interval.
const RUNS: usize = 3;

#[derive(Clone, Copy, PartialEq)]
enum Peer {
    LbAgent,
    Keepalived,
}

#[derive(Clone, Copy)]
struct Setting {
    version: u8,
    interval_ms: u64,
}

fn keepalived_conf(s: Setting, priority: u8) -> String {
    format!(
        "global_defs {{\n  router_id KA\n}}\nvrrp_instance VI_1 {{\n  state BACKUP\n  interface eth0\n  virtual_router_id 52\n  version {}\n  priority {priority}\n  advert_int {}\n  virtual_ipaddress {{\n    {VIP}/32 dev eth0\n  }}\n}}\n",
        s.version,
        s.interval_ms as f64 / 1000.0
    )
}

fn agent_conf(lab: &Lab, host: &str, s: Setting, priority: u8) -> String {
    format!(
        "[global]\ncontrol_socket = \"{}\"\n[dataplane]\ninterface = \"eth0\"\nxdp_mode = \"skb\"\npin_dir = \"{}\"\n\n[[vrrp_instance]]\nname = \"VI_1\"\ninterface = \"eth0\"\nvirtual_router_id = 52\nversion = {}\npriority = {priority}\nadvert_interval = \"{}ms\"\n[[vrrp_instance.virtual_address]]\naddress = \"{VIP}\"\n",
        std::env::temp_dir()
            .join(&lab.prefix)
            .join(format!("{host}.sock"))
            .display(),
        lab.pin_dir(host),
        s.version,
        s.interval_ms
    )
}

fn start(lab: &mut Lab, peer: Peer, host: &str, s: Setting, priority: u8) -> u32 {
    let dir = std::env::temp_dir().join(&lab.prefix);
    std::fs::create_dir_all(&dir).unwrap();
    let log = dir
        .join(format!("{host}.log"))
        .to_string_lossy()
        .into_owned();
    match peer {
        Peer::LbAgent => {
            let cfg = dir.join(format!("{host}.toml"));
            std::fs::write(&cfg, agent_conf(lab, host, s, priority)).unwrap();
            lab.spawn(
                host,
                &[
                    env!("CARGO_BIN_EXE_lb-agent"),
                    "run",
                    "--config",
                    cfg.to_str().unwrap(),
                ],
                &log,
            )
        }
        Peer::Keepalived => {
            let cfg = dir.join(format!("{host}.conf"));
            std::fs::write(&cfg, keepalived_conf(s, priority)).unwrap();
            let ns = format!("--namespace={}", lab.ns(host));
            lab.spawn_host(
                &[
                    "keepalived",
                    &ns,
                    "-n",
                    "-l",
                    "--vrrp",
                    "-f",
                    cfg.to_str().unwrap(),
                ],
                &log,
            )
        }
    }
}

/// One measurement: the unserved time after the master (lbA) is killed or stopped.
fn measure(peer: Peer, s: Setting, kill: bool) -> Duration {
    // A fresh name per run: keepalived keeps pid files per namespace name.
    static RUN: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
    let n = RUN.fetch_add(1, Ordering::Relaxed);
    let mut lab = Lab::new(&format!(
        "{}{n}",
        match peer {
            Peer::LbAgent => "fa",
            Peer::Keepalived => "fk",
        }
    ));
    lab.bridge();
    lab.host("cl", "10.97.0.10/24");
    lab.host("lbA", "10.97.0.1/24");
    lab.host("lbB", "10.97.0.2/24");
    lab.serve_echo("lbA", "0.0.0.0:3306".parse().unwrap(), "A");
    lab.serve_echo("lbB", "0.0.0.0:3306".parse().unwrap(), "B");
    let a = start(&mut lab, peer, "lbA", s, 200);
    let deadline = Instant::now() + Duration::from_secs(15);
    while !lab.has_address("lbA", VIP) {
        if Instant::now() > deadline {
            let log = std::env::temp_dir().join(&lab.prefix).join("lbA.log");
            panic!(
                "lbA never became master:\n{}",
                std::fs::read_to_string(log).unwrap_or_default()
            );
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let _b = start(&mut lab, peer, "lbB", s, 100);
    std::thread::sleep(Duration::from_secs(3));

    // The client: a new connection and one round trip every 5 ms (30 ms connect timeout).
    let vip: SocketAddr = format!("{VIP}:3306").parse().unwrap();
    let served_by_b: Arc<Mutex<Option<Instant>>> = Arc::default();
    let stop = Arc::new(AtomicBool::new(false));
    let client = {
        let (served_by_b, stop, ns) = (served_by_b.clone(), stop.clone(), lab.ns("cl"));
        std::thread::spawn(move || {
            common::enter(&ns);
            for i in 0..5000 {
                if stop.load(Ordering::Relaxed) {
                    return;
                }
                let r = std::net::TcpStream::connect_timeout(&vip, Duration::from_millis(100))
                    .and_then(|mut c| {
                        c.set_read_timeout(Some(Duration::from_millis(200)))?;
                        common::round_trip(&mut c, &format!("p{i}"))
                    });
                if let Ok(reply) = r
                    && reply.starts_with("B:")
                {
                    served_by_b.lock().unwrap().get_or_insert_with(Instant::now);
                    return;
                }
                std::thread::sleep(Duration::from_millis(5));
            }
        })
    };
    std::thread::sleep(Duration::from_millis(500));
    let t0 = Instant::now();
    if kill {
        // keepalived's VRRP runs in a child: kill it too, or the parent stops it cleanly.
        if peer == Peer::Keepalived {
            let children =
                std::fs::read_to_string(format!("/proc/{a}/task/{a}/children")).unwrap_or_default();
            for c in children
                .split_whitespace()
                .filter_map(|c| c.parse::<i32>().ok())
            {
                unsafe { libc::kill(c, libc::SIGKILL) };
            }
        }
        lab.kill(a);
    } else {
        lab.stop(a);
    }
    // The killed master's VIP stays on lbA (nobody removes it): the client would keep reaching
    // lbA's stack through its ARP cache; the gratuitous ARP from B is what moves it.
    let _ = client.join();
    stop.store(true, Ordering::Relaxed);
    let served = served_by_b.lock().unwrap().unwrap_or_else(Instant::now);
    served.saturating_duration_since(t0)
}

#[test]
#[ignore = "a benchmark: cargo xtask bench"]
fn failover_times() {
    let settings = [
        Setting {
            version: 2,
            interval_ms: 1000,
        },
        Setting {
            version: 3,
            interval_ms: 100,
        },
    ];
    println!();
    println!(
        "VRRP failover: time until a looping client is served by the backup (median of {RUNS})"
    );
    println!(
        "{:<28} {:>12} {:>12} {:>12}",
        "setting / event", "lb-agent", "keepalived", "target"
    );
    for s in settings {
        for kill in [true, false] {
            let median = |peer| {
                let mut v: Vec<Duration> = (0..RUNS).map(|_| measure(peer, s, kill)).collect();
                v.sort();
                v[RUNS / 2]
            };
            let ours = median(Peer::LbAgent);
            let theirs = median(Peer::Keepalived);
            let target = match (s.interval_ms, kill) {
                (1000, true) => "<= keepalived",
                (100, true) => "<= 0.5 s",
                _ => "<= 0.1 s",
            };
            println!(
                "{:<28} {:>10.3} s {:>10.3} s {:>12}",
                format!(
                    "v{} {} ms, {}",
                    s.version,
                    s.interval_ms,
                    if kill { "SIGKILL" } else { "clean stop" }
                ),
                ours.as_secs_f64(),
                theirs.as_secs_f64(),
                target
            );
        }
    }
}
