//! `cargo xtask bench --against REV`: the data-plane benchmark of this tree against a build of
//! `REV`, interleaved in one run (base, this, base, this, ...) so that both see the same
//! machine, and the median of each case over the rounds side by side.
//!
//! The base is built in its own worktree (`target/bench-base/<commit>`), with its own XDP
//! object and its own provisioning code: a change of map layout cannot make one binary
//! measure the other's program.

use std::{collections::BTreeMap, path::Path, process::Command};

use anyhow::{Context, Result, bail};

use crate::{build_ebpf, cargo, run};

/// Rounds of each binary (each round is itself the median of xdp-bench's own rounds).
const ROUNDS: usize = 5;
/// A change beyond this is flagged.
const TOLERANCE: f64 = 0.10;

pub fn against(root: &Path, rev: &str) -> Result<()> {
    let commit = git(
        root,
        &["rev-parse", "--verify", &format!("{rev}^{{commit}}")],
    )?;
    let base = root.join("target/bench-base").join(&commit[..12]);
    if !base.join("Cargo.toml").exists() {
        let _ = std::fs::remove_dir_all(&base);
        git(root, &["worktree", "prune"])?;
        git(
            root,
            &[
                "worktree",
                "add",
                "--detach",
                base.to_str().context("a UTF-8 path")?,
                &commit,
            ],
        )?;
    }
    eprintln!("building the base {} in {}", &commit[..12], base.display());
    build_bench(&base)?;
    build_bench(root)?;

    let mut figures: BTreeMap<String, (Vec<f64>, Vec<f64>)> = BTreeMap::new();
    let mut order: Vec<String> = Vec::new();
    for round in 0..ROUNDS {
        for (which, tree) in [(0, base.as_path()), (1, root)] {
            eprintln!(
                "round {}: {}",
                round + 1,
                if which == 0 { "base" } else { "this tree" }
            );
            for (case, ns) in measure(tree)? {
                if !order.contains(&case) {
                    order.push(case.clone());
                }
                let e = figures.entry(case).or_default();
                if which == 0 { &mut e.0 } else { &mut e.1 }.push(ns);
            }
        }
    }
    println!();
    println!(
        "XDP data plane: {} (base) against this tree, interleaved, median of {ROUNDS} rounds",
        &commit[..12]
    );
    println!(
        "{:<52} {:>9} {:>9} {:>8}",
        "case", "base ns", "this ns", "change"
    );
    for case in order {
        let (b, t) = &figures[&case];
        if b.is_empty() || t.is_empty() {
            println!("{case:<52} (measured by one side only)");
            continue;
        }
        let (b, t) = (median(b.clone()), median(t.clone()));
        let change = (t - b) / b;
        println!(
            "{case:<52} {b:>9.1} {t:>9.1} {:>+7.1}%{}",
            change * 100.0,
            if change > TOLERANCE { "  SLOWER" } else { "" }
        );
    }
    Ok(())
}

/// The XDP objects and the xdp-bench binary of `tree`, in its own target directory.
fn build_bench(tree: &Path) -> Result<()> {
    build_ebpf(tree)?;
    run(cargo()
        .current_dir(tree)
        .env_remove("CARGO_TARGET_DIR")
        .args([
            "build",
            "--locked",
            "--release",
            "-p",
            "bpf-tests",
            "--bin",
            "xdp-bench",
        ]))
}

/// One run of `tree`'s xdp-bench: (case, ns/packet) per line of its table.
fn measure(tree: &Path) -> Result<Vec<(String, f64)>> {
    let bin = tree.join("target/release/xdp-bench");
    let out = Command::new(&bin)
        .current_dir(tree)
        .output()
        .with_context(|| format!("running {}", bin.display()))?;
    if !out.status.success() {
        bail!(
            "{} failed:\n{}",
            bin.display(),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(parse(&String::from_utf8_lossy(&out.stdout)))
}

/// The rows of xdp-bench's table: a case name, then its ns/packet as the first number.
fn parse(text: &str) -> Vec<(String, f64)> {
    text.lines()
        .filter_map(|l| {
            let words: Vec<&str> = l.split_whitespace().collect();
            let i = words.iter().position(|w| w.parse::<f64>().is_ok())?;
            let name = words[..i].join(" ");
            // A table row: ns/packet, then its multiple of the floor.
            let row =
                !name.is_empty() && words.get(i + 1).is_some_and(|w| w.parse::<f64>().is_ok());
            row.then(|| (name, words[i].parse().unwrap()))
        })
        .collect()
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v[v.len() / 2]
}

fn git(root: &Path, args: &[&str]) -> Result<String> {
    let out = Command::new("git")
        .current_dir(root)
        .args(args)
        .output()
        .context("running git")?;
    if !out.status.success() {
        bail!(
            "git {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
}

#[cfg(test)]
mod tests {
    #[test]
    fn reads_the_bench_table() {
        let rows = super::parse(
            "case   ns/pkt   x floor    target\n\
             established flow, conn-table hit (repeat)   91.0   4.14   <= 70  MISSED\n\
             single-run raw means: new flow 658.7 ns\n",
        );
        assert_eq!(
            rows,
            vec![(
                "established flow, conn-table hit (repeat)".to_string(),
                91.0
            )]
        );
    }
}
