//! `cargo xtask`: build, test, demo and benchmark tasks. Each task installs what it needs
//! (apt packages, the nightly `rust-src` component, `bpf-linker`) when it is missing, and says
//! so.

mod compare;
mod deploy;
mod package;
mod setup;

use std::{
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{Context, Result, bail};
use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(about = "Project tasks")]
struct Cli {
    #[command(subcommand)]
    task: Task,
}

#[derive(Subcommand)]
enum Task {
    /// Build the XDP programs (nightly, build-std, bpf-linker) into target/bpf/.
    BuildEbpf,
    /// Build everything (XDP object first, then the host workspace in release mode).
    Build,
    /// Build everything and run every test: fmt, clippy (host and BPF), unit tests, the XDP
    /// fixture table in the kernel, and the namespace end-to-end test.
    Test,
    /// The lab: the recipe's two hosts (MariaDB master-master + lb-agent each) and a client in
    /// network namespaces; runs the recipe's test plan and prints what happened.
    Lab {
        /// Leave the lab running afterwards (remove it with `cargo xtask lab down`).
        #[arg(long)]
        keep: bool,
        /// With `[quorum]`: a three-member etcd cluster (one member per DB host and one on a
        /// witness host) decides the writer; the partitions between the hosts are added.
        #[arg(long)]
        quorum: bool,
        /// MariaDB replicas of the writer behind the read VIP (at most 2), re-pointed at
        /// every writer change: rows "replicas follow …" are added.
        #[arg(long, default_value_t = 0)]
        replicas: usize,
        /// `down`: remove a lab left running by `--keep`.
        #[arg(value_enum)]
        action: Option<LabAction>,
    },
    /// Benchmarks: the data plane (BPF_PROG_TEST_RUN, ns/packet per case), the map
    /// reconciler, VRRP failover against keepalived, MySQL failure detection.
    Bench {
        /// Only the data plane, interleaved against a build of this commit (e.g. `HEAD~1`):
        /// both medians and the change per case.
        #[arg(long)]
        against: Option<String>,
    },
    /// Build the Debian package target/debian/lb-agent_VERSION_ARCH.deb (install it with
    /// `apt install ./target/debian/lb-agent_*.deb`) and check it with lintian.
    Package,
    /// Build and install the agent, a configuration (kept if present), the systemd units and
    /// the README under a root directory.
    Deploy {
        /// Where to install (`/` for this host; a directory for packaging and tests).
        #[arg(long, default_value = "/")]
        root: PathBuf,
    },
}

#[derive(Clone, Copy, clap::ValueEnum)]
enum LabAction {
    Down,
}

/// The XDP binaries built by `build-ebpf`, copied to `target/bpf/<name>.o`.
const BPF_BINS: [&str; 3] = ["lb-xdp", "xdp-floor", "xdp-pass"];

fn main() -> Result<()> {
    let cli = Cli::parse();
    let root = workspace_root();
    std::env::set_current_dir(&root)?;
    match cli.task {
        Task::BuildEbpf => build_ebpf(&root),
        Task::Build => build(&root),
        Task::Test => test(&root),
        Task::Lab {
            action: Some(LabAction::Down),
            ..
        } => lab_down(),
        Task::Lab {
            keep,
            quorum,
            replicas,
            action: None,
        } => lab(&root, keep, quorum, replicas),
        Task::Bench { against: None } => bench(&root),
        Task::Bench { against: Some(rev) } => {
            setup::require_root("the benchmark runs XDP programs in the kernel")?;
            compare::against(&root, &rev)
        }
        Task::Package => {
            build(&root)?;
            let deb = package::build(&root)?;
            package::lint(&deb)?;
            println!("{}", deb.display());
            Ok(())
        }
        Task::Deploy { root: dest } => {
            build(&root)?;
            for line in deploy::install(&root, &dest)? {
                println!("{line}");
            }
            deploy::verify(&dest)?;
            if dest == Path::new("/") {
                println!(
                    "next: edit /etc/lb-agent/lb.toml, then `systemctl daemon-reload && systemctl \
                     enable --now lb-agent-realserver lb-agent`"
                );
            }
            Ok(())
        }
    }
}

fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_path_buf()
}

/// Runs a command, echoing it, and fails when it fails.
pub fn run(cmd: &mut Command) -> Result<()> {
    eprintln!("+ {}", show(cmd));
    let status = cmd
        .status()
        .with_context(|| format!("starting {}", show(cmd)))?;
    if !status.success() {
        bail!("`{}` failed: {status}", show(cmd));
    }
    Ok(())
}

fn show(cmd: &Command) -> String {
    std::iter::once(cmd.get_program())
        .chain(cmd.get_args())
        .map(|s| s.to_string_lossy().into_owned())
        .collect::<Vec<_>>()
        .join(" ")
}

fn cargo() -> Command {
    Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()))
}

/// `cargo +nightly ...` through the rustup proxy (the `CARGO` that runs xtask is the stable
/// toolchain's own binary, which does not understand `+toolchain`).
fn nightly_cargo() -> Command {
    let mut c = Command::new("cargo");
    c.arg("+nightly")
        .env_remove("RUSTUP_TOOLCHAIN")
        .env_remove("RUSTC");
    c
}

fn build_ebpf(root: &Path) -> Result<()> {
    setup::rust_src()?;
    setup::bpf_linker()?;
    let mut cmd = nightly_cargo();
    cmd.current_dir(root)
        .args(["build", "--locked", "--release", "-p", "xdp-ebpf"])
        .args(["--features", "bpf-program", "-Z", "build-std=core"])
        .args(["--target", "bpfel-unknown-none"])
        // BTF for typed `bpftool map dump` output and for the kernel's map checks.
        .env("RUSTFLAGS", "-C debuginfo=2 -C link-arg=--btf")
        // Host-side settings must not leak into the BPF build.
        .env_remove("RUSTC_WRAPPER")
        .env_remove("CARGO_ENCODED_RUSTFLAGS");
    for bin in BPF_BINS {
        cmd.args(["--bin", bin]);
    }
    run(&mut cmd)?;
    let out = root.join("target/bpf");
    std::fs::create_dir_all(&out)?;
    for bin in BPF_BINS {
        let from = root.join("target/bpfel-unknown-none/release").join(bin);
        let to = out.join(format!("{bin}.o"));
        // Only when the bytes differ: lb-agent's build script watches this file, and a copy
        // that only touches it would rebuild the agent (1.5 minutes here) every time.
        let bytes = std::fs::read(&from).with_context(|| format!("reading {}", from.display()))?;
        if std::fs::read(&to).ok().as_deref() != Some(&bytes[..]) {
            std::fs::write(&to, &bytes).with_context(|| format!("writing {}", to.display()))?;
            eprintln!("built {}", to.display());
        }
    }
    Ok(())
}

fn build(root: &Path) -> Result<()> {
    // etcd-client's build script compiles etcd's protobuf definitions with protoc, which
    // imports Google's well-known types (`descriptor.proto`, ...) from libprotobuf-dev: a
    // recommendation of protobuf-compiler that `--no-install-recommends` leaves out.
    setup::apt(&[
        ("protoc", "protobuf-compiler"),
        (
            "/usr/include/google/protobuf/descriptor.proto",
            "libprotobuf-dev",
        ),
    ])?;
    build_ebpf(root)?;
    run(cargo().args([
        "build",
        "--locked",
        "--release",
        "--workspace",
        "--all-targets",
    ]))
}

fn test(root: &Path) -> Result<()> {
    setup::require_root("the tests load XDP programs and create network namespaces")?;
    setup::apt(&[
        ("ip", "iproute2"),
        ("ethtool", "ethtool"),
        ("bpftool", "bpftool"),
        ("keepalived", "keepalived"),
        ("mariadbd", "mariadb-server"),
        ("mariadb", "mariadb-client"),
        ("etcd", "etcd-server"),
        ("nft", "nftables"),
        // The package (dpkg-shlibdeps, lintian) and its boot under a real systemd.
        ("dpkg-shlibdeps", "dpkg-dev"),
        ("lintian", "lintian"),
        ("mmdebstrap", "mmdebstrap"),
        ("systemd-nspawn", "systemd-container"),
    ])?;
    run(cargo().args(["fmt", "--all", "--", "--check"]))?;
    build(root)?;
    run(cargo()
        .args([
            "clippy",
            "--locked",
            "--release",
            "--workspace",
            "--all-targets",
        ])
        .args(["--", "-D", "warnings"]))?;
    run(nightly_cargo()
        .args(["clippy", "--locked", "--release", "-p", "xdp-ebpf"])
        .args(["--features", "bpf-program", "-Z", "build-std=core"])
        .args(["--target", "bpfel-unknown-none", "--", "-D", "warnings"])
        .env_remove("RUSTFLAGS"))?;
    // The package that tests/systemd_boot.rs installs and boots.
    let deb = package::build(root)?;
    package::lint(&deb)?;
    // Namespace tests share the host's bridge-less network state: run them one at a time.
    // Every test file runs even after one fails: a CI run reports all its failures.
    run(cargo()
        .args([
            "test",
            "--locked",
            "--release",
            "--workspace",
            "--no-fail-fast",
        ])
        .args(["--", "--test-threads=1"]))?;
    // The deployment: units that systemd accepts, a binary that accepts its configuration.
    deploy::check(root)?;
    eprintln!("all tests passed");
    Ok(())
}

/// `cargo test --release -p PKG --test FILE -- ARGS`.
fn test_file(pkg: &str, file: &str, args: &[&str]) -> Command {
    let mut c = cargo();
    c.args([
        "test",
        "--locked",
        "--release",
        "-p",
        pkg,
        "--test",
        file,
        "--",
    ])
    .args(args);
    c
}

/// `cargo run --release -p PKG --bin BIN`.
fn run_bin(pkg: &str, bin: &str) -> Command {
    let mut c = cargo();
    c.args(["run", "--locked", "--release", "-p", pkg, "--bin", bin]);
    c
}

fn lab(root: &Path, keep: bool, quorum: bool, replicas: usize) -> Result<()> {
    if replicas > 2 {
        bail!("--replicas: at most 2 (the lab's replica hosts rp1, rp2)");
    }
    setup::require_root("the lab creates network namespaces and attaches XDP")?;
    setup::apt(&[
        ("ip", "iproute2"),
        ("mariadbd", "mariadb-server"),
        ("mariadb", "mariadb-client"),
    ])?;
    if quorum {
        setup::apt(&[("etcd", "etcd-server"), ("nft", "nftables")])?;
    }
    build(root)?;
    let mut cmd = test_file("lb-agent", "lab", &["--nocapture", "--test-threads=1"]);
    if keep {
        cmd.env("LB_LAB_KEEP", "1");
    }
    if quorum {
        cmd.env("LB_LAB_QUORUM", "1");
    }
    if replicas > 0 {
        cmd.env("LB_LAB_REPLICAS", replicas.to_string());
    }
    run(&mut cmd)
}

/// Removes a lab left by `lab --keep`: its processes, namespaces, files and pins (the
/// `lblab` prefix of `lb-agent/tests/lab.rs`).
fn lab_down() -> Result<()> {
    setup::require_root("removing the lab's network namespaces")?;
    const PREFIX: &str = "lblab";
    let list = Command::new("ip").args(["netns", "list"]).output()?;
    let mut removed = 0;
    for ns in String::from_utf8_lossy(&list.stdout)
        .lines()
        .filter_map(|l| l.split_whitespace().next())
        .filter(|n| n.starts_with(&format!("{PREFIX}-")))
    {
        let pids = Command::new("ip").args(["netns", "pids", ns]).output()?;
        for pid in String::from_utf8_lossy(&pids.stdout).split_whitespace() {
            let _ = Command::new("kill").args(["-9", pid]).status();
        }
        run(Command::new("ip").args(["netns", "del", ns]))?;
        removed += 1;
    }
    let _ = std::fs::remove_dir_all(std::env::temp_dir().join(PREFIX));
    if let Ok(entries) = std::fs::read_dir("/sys/fs/bpf") {
        for e in entries.flatten() {
            if e.file_name()
                .to_string_lossy()
                .starts_with(&format!("{PREFIX}-"))
            {
                let _ = std::fs::remove_dir_all(e.path());
            }
        }
    }
    println!("removed the lab ({removed} namespaces)");
    Ok(())
}

fn bench(root: &Path) -> Result<()> {
    setup::require_root("the benchmarks run XDP programs in the kernel and namespaces")?;
    setup::apt(&[
        ("ip", "iproute2"),
        ("keepalived", "keepalived"),
        ("mariadbd", "mariadb-server"),
        ("mariadb", "mariadb-client"),
        ("etcd", "etcd-server"),
        ("nft", "nftables"),
    ])?;
    build_ebpf(root)?;
    run(&mut run_bin("bpf-tests", "xdp-bench"))?;
    run(&mut run_bin("bpf-tests", "reconcile-bench"))?;
    // VRRP failover of lb-agent and keepalived, measured in namespaces in the same run.
    run(&mut test_file(
        "lb-agent",
        "failover_bench",
        &["--ignored", "--nocapture"],
    ))?;
    // MySQL failure detection and the switch to the sorry server, with real MariaDB.
    run(&mut test_file(
        "lb-agent",
        "mysql_failback",
        &["--ignored", "--nocapture", "detection_and_switch_times"],
    ))?;
    // The outage of every one-writer fault (DESIGN §7), two clients, real MariaDB: with
    // `[pair]` ("(d) writer's MariaDB killed"), then with `[quorum]` and etcd ("(b3)", and
    // the partitions).
    run(&mut test_file("lb-agent", "one_writer", &["--nocapture"]))?;
    run(&mut test_file(
        "lb-agent",
        "quorum",
        &["--nocapture", "--test-threads=1", "every_fault_with_quorum"],
    ))
}
