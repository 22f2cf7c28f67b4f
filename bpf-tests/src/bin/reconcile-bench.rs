//! `cargo xtask bench` (control plane): the map reconciler on 1,000 services × 10 real
//! servers, against the real maps in the kernel: from scratch, and for a one-server change.

use std::{net::IpAddr, path::Path, time::Instant};

use lb_agent::{
    balancer::{
        desired::{RealInfo, ServiceVerdict, Verdicts, compute},
        ids::Planner,
    },
    config::Config,
    dataplane::{Dataplane, LoadOptions, reconcile},
};

const SERVICES: usize = 1000;
const REALS_PER_SERVICE: usize = 10;
const REAL_POOL: usize = 2000;
const ROUNDS: usize = 5;

fn config(skip: Option<(usize, usize)>) -> String {
    let mut t = String::from("[dataplane]\ninterface = \"eth0\"\n");
    for s in 0..SERVICES {
        t += &format!(
            "[[virtual_server]]\naddress = \"10.200.{}.{}\"\nport = 3306\n",
            s / 250,
            s % 250 + 1
        );
        for r in 0..REALS_PER_SERVICE {
            if skip == Some((s, r)) {
                continue;
            }
            let n = (s * 7 + r * 13) % REAL_POOL;
            t += &format!(
                "[[virtual_server.real_server]]\naddress = \"10.{}.{}.{}\"\nweight = {}\n",
                100 + n / 65536,
                n / 256 % 256,
                n % 256,
                1 + r % 3
            );
        }
    }
    t
}

fn info(_: &IpAddr) -> RealInfo {
    RealInfo {
        mac: Some([2, 0, 0, 0, 1, 1]),
        local: false,
    }
}

fn ms(t: Instant) -> f64 {
    t.elapsed().as_secs_f64() * 1e3
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.partial_cmp(b).unwrap());
    v[v.len() / 2]
}

/// The real server whose health flips in the incremental case.
const FLIPPED: &str = "10.100.0.7";

fn main() -> anyhow::Result<()> {
    let full = Config::parse(Path::new("bench.toml"), &config(None))
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    let less = Config::parse(Path::new("bench.toml"), &config(Some((500, 3))))
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    let flipped: IpAddr = FLIPPED.parse()?;
    let down = |a: &IpAddr| {
        if *a == flipped {
            RealInfo::default()
        } else {
            info(a)
        }
    };

    // What the health evaluation says once the flipped server fails its check.
    let verdicts_down: Verdicts = full
        .services
        .iter()
        .filter(|vs| vs.reals.iter().any(|r| r.address == flipped))
        .map(|vs| {
            let v = ServiceVerdict {
                failing: vec![(flipped, "connection refused".into())],
                ..ServiceVerdict::default()
            };
            (vs.name.clone(), v)
        })
        .collect();

    let mut t_scratch = Timings::default();
    let mut t_health = Timings::default();
    let mut t_reload = Timings::default();
    let (mut health_ops, mut reload_ops, mut affected) = (0, 0, 0);
    for _ in 0..ROUNDS {
        let mut dp = Dataplane::load(&LoadOptions::default())?;
        let mut planner = Planner::default();

        let t = Instant::now();
        let mut state = compute(&full, MAC, info, &mut planner).map_err(anyhow::Error::msg)?;
        let ops = t_scratch.step(t, |_| reconcile::plan(None, &mut state));
        t_scratch.write(|| dp.maps().execute(&ops))?;

        // A health check marks one real server down: the services that use it change. This
        // is the daemon's path: the health verdicts change, `apply_health` recomputes the
        // services whose verdict differs.
        let t = Instant::now();
        let mut next = state.clone();
        next.apply_health(&full, &verdicts_down, &Verdicts::new(), &mut planner);
        let ops = t_health.step(t, |_| reconcile::plan(Some(&state), &mut next));
        t_health.write(|| dp.maps().execute(&ops))?;
        health_ops = ops.len();
        affected = ops
            .iter()
            .filter(|o| matches!(o, reconcile::MapOp::Table { .. }))
            .count();
        state = next;

        // A reload without one real server of one service: the whole config is compared.
        let t = Instant::now();
        let mut next = compute(&less, MAC, down, &mut planner).map_err(anyhow::Error::msg)?;
        let ops = t_reload.step(t, |_| reconcile::plan(Some(&state), &mut next));
        t_reload.write(|| dp.maps().execute(&ops))?;
        reload_ops = ops.len();
    }
    println!();
    println!(
        "map reconciler, {SERVICES} services x {REALS_PER_SERVICE} real servers (median of {ROUNDS})"
    );
    println!("{:<58} {:>9} {:>8}", "case", "ms", "target");
    let row = |name: &str, v: f64, target: &str| println!("{name:<58} {v:>9.3} {target:>8}");
    row(
        "from scratch: desired state + plan + map writes",
        t_scratch.total(),
        "<= 100",
    );
    row(
        "  desired state (1000 Maglev tables) + plan",
        t_scratch.compute(),
        "",
    );
    row("  map writes", t_scratch.writes(), "");
    row(
        &format!("one server down (health): total, {affected} pools, {health_ops} writes"),
        t_health.total(),
        "<= 1",
    );
    row(
        "  desired state of affected services + plan",
        t_health.compute(),
        "",
    );
    row("  map writes (decision -> flip)", t_health.writes(), "");
    row(
        &format!("reload without one server: total, {reload_ops} writes"),
        t_reload.total(),
        "",
    );
    row(
        "  desired state of the whole config + plan",
        t_reload.compute(),
        "",
    );
    Ok(())
}

const MAC: [u8; 6] = [2, 0, 0, 0, 0, 1];

/// Per-round timings of one case: computing (desired state and plan) and writing.
#[derive(Default)]
struct Timings {
    compute: Vec<f64>,
    writes: Vec<f64>,
}

impl Timings {
    /// Runs the planning step and records the time since `start`.
    fn step<T>(&mut self, start: Instant, f: impl FnOnce(()) -> T) -> T {
        let out = f(());
        self.compute.push(ms(start));
        out
    }

    fn write(&mut self, f: impl FnOnce() -> anyhow::Result<()>) -> anyhow::Result<()> {
        let t = Instant::now();
        f()?;
        self.writes.push(ms(t));
        Ok(())
    }

    fn compute(&self) -> f64 {
        median(self.compute.clone())
    }

    fn writes(&self) -> f64 {
        median(self.writes.clone())
    }

    fn total(&self) -> f64 {
        median(
            self.compute
                .iter()
                .zip(&self.writes)
                .map(|(c, w)| c + w)
                .collect(),
        )
    }
}
