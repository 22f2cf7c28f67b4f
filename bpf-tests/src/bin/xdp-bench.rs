//! `cargo xtask bench` (data plane): ns/packet of the XDP program under BPF_PROG_TEST_RUN,
//! next to the in-tree floor (`xdp-floor`: parse + MAC rewrite + XDP_TX) measured in the same
//! run.
//!
//! Method:
//! - `repeat` runs the program over one buffer without resetting it, so a forwarded frame's
//!   rewritten MACs would be seen by the next iteration. The benchmark provisioning gives the
//!   real servers this host's own MAC, so every iteration takes the same path.
//! - A new flow needs a fresh 5-tuple per packet, which `repeat` cannot give: it is measured
//!   as many single runs (one flow each), minus the same single-run measurement of the floor
//!   program (the syscall's fixed cost), plus the floor's per-packet cost at full repeat.

use std::net::Ipv4Addr;

use aya::{
    Ebpf,
    programs::{TestRun, TestRunOptions, Xdp},
};
use bpf_tests::{builder::*, fixtures::frames::*, provision::*};
use lb_agent::dataplane::{Dataplane, LoadOptions};

const REPEAT: u32 = 1_000_000;
const SINGLE_RUNS: u32 = 20_000;
const ROUNDS: usize = 5;
/// New flows per rotating round: ROUNDS × this stays below one CPU's share of the LRU
/// (MAX_CONNS / CPUs), so no round measures evictions.
const ROTATING_FLOWS: u32 = 100_000;
/// A connection table that fits in the CPU caches.
const SMALL_CONNS: u32 = 4096;

/// The standard provisioning with every real server's MAC set to the LB's own (see above).
fn bench_provisioning() -> String {
    let mut text = PROVISION.to_string();
    for n in 1..=9 {
        text = text.replace(&format!("02:00:00:00:01:0{n}"), "02:00:00:00:00:01");
    }
    text
}

/// A small in-tree program loaded beside `lb_xdp`.
struct Floor {
    ebpf: Ebpf,
}

impl Floor {
    fn load(object: &str, name: &str) -> anyhow::Result<Floor> {
        let path = format!("{}/../target/bpf/{object}", env!("CARGO_MANIFEST_DIR"));
        let mut ebpf = Ebpf::load_file(&path)?;
        let prog: &mut Xdp = ebpf.program_mut(name).unwrap().try_into()?;
        prog.load()?;
        Ok(Floor { ebpf })
    }

    fn program(&self, name: &str) -> &Xdp {
        self.ebpf.program(name).unwrap().try_into().unwrap()
    }
}

fn run_ns(prog: &Xdp, frame: &[u8], repeat: u32) -> (u32, f64) {
    let mut out = vec![0u8; frame.len() + 256];
    let input = frame.to_vec();
    let r = prog
        .test_run(TestRunOptions {
            data_in: Some(&input),
            data_out: Some(&mut out),
            repeat,
            ..Default::default()
        })
        .expect("BPF_PROG_TEST_RUN");
    (r.return_value, r.duration.as_nanos() as f64)
}

/// The median of `ROUNDS` measurements.
fn median(mut f: impl FnMut() -> f64) -> f64 {
    let mut v: Vec<f64> = (0..ROUNDS).map(|_| f()).collect();
    v.sort_by(|a, b| a.partial_cmp(b).unwrap());
    v[ROUNDS / 2]
}

fn main() -> anyhow::Result<()> {
    let floor = Floor::load("xdp-floor.o", "xdp_floor")?;
    let fprog = floor.program("xdp_floor");
    let pass = Floor::load("xdp-pass.o", "xdp_pass")?;
    let pprog = pass.program("xdp_pass");

    let mut state = desired_state(&bench_provisioning());
    let mut dp = Dataplane::load(&LoadOptions::default())?;
    dp.maps().apply(&mut state)?;
    let prog = dp.program();
    let mut rotating = Dataplane::load(&LoadOptions {
        bench_next_flow: true,
        ..Default::default()
    })?;
    rotating.maps().apply(&mut state)?;
    let rprog = rotating.program();
    // The same with a connection table small enough to stay in cache (every insert evicts).
    let mut small = Dataplane::load(&LoadOptions {
        bench_next_flow: true,
        max_entries: vec![(xdp_ebpf::maps::MAP_CONNS4, SMALL_CONNS)],
    })?;
    small.maps().apply(&mut state)?;
    let sprog = small.program();
    // Every service leased (see `SERVICE_LEASED`), the lease an hour away.
    let mut leased_dp = Dataplane::load(&LoadOptions::default())?;
    let mut leased = state.clone();
    for s in &mut leased.services {
        s.flags |= xdp_ebpf::maps::SERVICE_LEASED;
    }
    leased_dp.maps().apply(&mut leased)?;
    leased_dp
        .maps()
        .set_lease(lb_agent::dataplane::monotonic_ns() + 3_600_000_000_000)?;
    let lprog = leased_dp.program();

    let syn = tcp4(CLIENT4, VIP_TCP, 40000, 3306).bytes();
    // An established connection's frames are ACKs (a SYN always takes a new decision).
    let ack = |client: Ipv4Addr, sport: u16| {
        tcp4_with(V4::new(client, VIP_TCP, 6), sport, 3306, TCP_ACK).bytes()
    };
    let est = ack(CLIENT4, 40000);
    let miss = tcp4(CLIENT4, NOT_A_VIP, 40000, 3306).bytes();
    let other_mac = Frame {
        dst: OTHER_MAC,
        ..tcp4(CLIENT4, VIP_TCP, 40000, 3306)
    }
    .bytes();

    // Sanity: each case takes the path it claims.
    assert_eq!(run_ns(fprog, &syn, 1).0, XDP_TX);
    assert_eq!(run_ns(prog, &syn, 1).0, XDP_TX, "the connection opens");
    assert_eq!(
        run_ns(prog, &est, 1).0,
        XDP_TX,
        "established case must forward"
    );
    assert_eq!(run_ns(prog, &miss, 1).0, XDP_PASS);
    assert_eq!(run_ns(prog, &other_mac, 1).0, XDP_PASS);

    let pass_ns = median(|| run_ns(pprog, &syn, REPEAT).1);
    let floor_ns = median(|| run_ns(fprog, &syn, REPEAT).1);
    let miss_ns = median(|| run_ns(prog, &miss, REPEAT).1);
    let other_ns = median(|| run_ns(prog, &other_mac, REPEAT).1);
    let est_ns = median(|| run_ns(prog, &est, REPEAT).1);
    // The same established flow on a service that follows a pair's shared writer decision:
    // the agent's lease is checked with one clock helper call per frame.
    assert_eq!(
        run_ns(lprog, &syn, 1).0,
        XDP_TX,
        "a leased connection opens"
    );
    assert_eq!(run_ns(lprog, &est, 1).0, XDP_TX, "a leased flow forwards");
    let leased_ns = median(|| run_ns(lprog, &est, REPEAT).1);

    // New flows: one fresh 5-tuple per single run; then the same flows again, now
    // established (a conn-table hit on as many distinct entries, so with the same cold cache
    // lines a real mix of flows would touch).
    let mut next = 0u32;
    let mut rounds_new = Vec::new();
    let mut rounds_many = Vec::new();
    for _ in 0..ROUNDS {
        let flows: Vec<(Ipv4Addr, u16)> = (0..SINGLE_RUNS)
            .map(|_| {
                next += 1;
                let client =
                    Ipv4Addr::from(u32::from(Ipv4Addr::new(100, 64, 0, 0)) + next / 50_000);
                (client, 10_000 + (next % 50_000) as u16)
            })
            .collect();
        let syns: Vec<Vec<u8>> = flows
            .iter()
            .map(|&(c, p)| tcp4(c, VIP_TCP, p, 3306).bytes())
            .collect();
        let acks: Vec<Vec<u8>> = flows.iter().map(|&(c, p)| ack(c, p)).collect();
        let mean = |frames: &[Vec<u8>]| {
            frames
                .iter()
                .map(|f| {
                    let (action, ns) = run_ns(prog, f, 1);
                    assert_eq!(action, XDP_TX);
                    ns
                })
                .sum::<f64>()
                / frames.len() as f64
        };
        rounds_new.push(mean(&syns));
        rounds_many.push(mean(&acks));
    }
    let mid = |mut v: Vec<f64>| {
        v.sort_by(|a, b| a.partial_cmp(b).unwrap());
        v[v.len() / 2]
    };
    let new_single = mid(rounds_new);
    let many_single = mid(rounds_many);
    let floor_single = median(|| {
        (0..SINGLE_RUNS)
            .map(|_| run_ns(fprog, &syn, 1).1)
            .sum::<f64>()
            / SINGLE_RUNS as f64
    });
    let est_single = median(|| {
        (0..SINGLE_RUNS)
            .map(|_| run_ns(prog, &est, 1).1)
            .sum::<f64>()
            / SINGLE_RUNS as f64
    });
    let new_ns = new_single - floor_single + floor_ns;

    // New flows with `repeat`: the program advances the source port after every run, so each
    // of ROTATING_FLOWS runs is a new flow; the same sequence again is as many distinct
    // established flows. Every round starts from its own client address.
    let (mut rot_new, mut rot_est) = (Vec::new(), Vec::new());
    for round in 0..ROUNDS as u8 {
        let client = Ipv4Addr::new(100, 65, round, 0);
        let f = tcp4(client, VIP_TCP, 1024, 3306).bytes();
        let (action, ns) = run_ns(rprog, &f, ROTATING_FLOWS);
        assert_eq!(action, XDP_TX);
        rot_new.push(ns);
        rot_est.push(run_ns(rprog, &ack(client, 1024), ROTATING_FLOWS).1);
    }
    let rot_new_ns = mid(rot_new);
    let small_new_ns = median(|| {
        let f = tcp4(Ipv4Addr::new(100, 66, 0, 0), VIP_TCP, 1024, 3306).bytes();
        run_ns(sprog, &f, ROTATING_FLOWS).1
    });
    let rot_est_ns = mid(rot_est);
    let est_check = est_single - floor_single + floor_ns;
    let many_ns = many_single - floor_single + floor_ns;

    println!();
    println!("XDP data plane, BPF_PROG_TEST_RUN (median of {ROUNDS} rounds)");
    println!(
        "{:<44} {:>9} {:>9} {:>9}",
        "case", "ns/pkt", "x floor", "target"
    );
    let row = |name: &str, ns: f64, target: Option<f64>| {
        let t = target
            .map(|t| format!("<= {t:.0}"))
            .unwrap_or_else(|| "-".into());
        let verdict = match target {
            Some(t) if ns > t => "  MISSED",
            _ => "",
        };
        println!(
            "{name:<44} {ns:>9.1} {:>9.2} {t:>9}{verdict}",
            ns / floor_ns
        );
    };
    row("harness: XDP_PASS and nothing else (repeat)", pass_ns, None);
    row(
        "floor: parse + MAC rewrite + XDP_TX (repeat)",
        floor_ns,
        None,
    );
    row("miss: our MAC, not a VIP (repeat)", miss_ns, Some(25.0));
    row("not our MAC (repeat)", other_ns, None);
    row(
        "established flow, conn-table hit (repeat)",
        est_ns,
        Some(70.0),
    );
    row(
        "established flow, leased write service (repeat)",
        leased_ns,
        None,
    );
    row(
        "new flow (repeat, next 5-tuple every run)",
        rot_new_ns,
        Some(160.0),
    );
    row(
        "established, 100,000 distinct flows (repeat)",
        rot_est_ns,
        None,
    );
    row(
        "new flow, 4096-entry conn table in cache (repeat)",
        small_new_ns,
        None,
    );
    row(
        "new flow (single runs, floor-corrected)",
        new_ns,
        Some(160.0),
    );
    row(
        "established, same single-run method (check)",
        est_check,
        None,
    );
    row(
        "established, 20,000 distinct flows (single runs)",
        many_ns,
        None,
    );
    println!(
        "single-run raw means: new flow {new_single:.1} ns, established {est_single:.1} ns, \
         20,000 established {many_single:.1} ns, floor {floor_single:.1} ns ({SINGLE_RUNS} runs)"
    );
    Ok(())
}
