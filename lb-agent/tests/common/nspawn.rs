//! A minimal Debian 12 booted under its own systemd in `systemd-nspawn`, inside one of a
//! lab's network namespaces: the package's real environment.
//!
//! The root is built once with `mmdebstrap --variant=minbase` and cached as a tarball under
//! `target/nspawn/`; each test unpacks a fresh copy. What nspawn needs here (DESIGN.md):
//! `--register=no --keep-unit` (no systemd on the host), `bpf` and `perf_event_open` allowed
//! by its system-call filter (else every map creation fails with EPERM), all capabilities,
//! the host's bpffs bound in (so pins outlive the service, as on a real host), and a tmpfs on
//! `/run/systemd/nspawn` — mounted in a mount namespace of nspawn's own, so the host's
//! mounts are not touched.

use std::{
    path::{Path, PathBuf},
    process::{Command, Output},
    time::{Duration, Instant},
};

use super::{Lab, sh};

/// What the root holds besides minbase: an init, D-Bus for systemctl, ip for debugging.
const INCLUDE: &str = "systemd,systemd-sysv,dbus,iproute2";

/// The cached root: built when missing (about 20 s and 60 MB of downloads), then reused.
pub fn cached_root() -> PathBuf {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/nspawn");
    let tar = dir.join(format!("bookworm-{}.tar", INCLUDE.replace(',', "+")));
    if tar.exists() {
        return tar;
    }
    std::fs::create_dir_all(&dir).unwrap();
    // mmdebstrap picks the format from the name: a tarball.
    let partial = tar.with_extension("partial.tar");
    eprintln!("building the container root {} (once)", tar.display());
    sh(&[
        "mmdebstrap",
        "--quiet",
        "--variant=minbase",
        &format!("--include={INCLUDE}"),
        "bookworm",
        partial.to_str().unwrap(),
    ]);
    std::fs::rename(&partial, &tar).unwrap();
    tar
}

/// `systemd-nspawn ARGS` in a mount namespace of its own with a tmpfs on
/// `/run/systemd/nspawn` (nspawn refuses to clean up under a /run that is not one).
fn nspawn_command(args: &[&str]) -> Vec<String> {
    std::fs::create_dir_all("/run/systemd/nspawn").unwrap();
    let quoted: Vec<String> = args.iter().map(|a| format!("'{a}'")).collect();
    vec![
        "unshare".into(),
        "--mount".into(),
        "--propagation=private".into(),
        "sh".into(),
        "-c".into(),
        format!(
            "mount -t tmpfs tmpfs /run/systemd/nspawn && exec systemd-nspawn {}",
            quoted.join(" ")
        ),
    ]
}

pub struct Container {
    /// The unpacked root (removed on drop).
    pub root: PathBuf,
    /// The container's PID 1 as the host sees it (set once booted).
    leader: Option<u32>,
    /// `systemd-nspawn`'s PID (a child of the lab).
    nspawn: Option<u32>,
    /// Where a failing test leaves the container's journal (`<lab dir>/journal.log`).
    journal_log: PathBuf,
}

impl Container {
    /// A fresh copy of the cached root at `/tmp/<lab prefix>-root`.
    pub fn unpack(lab: &Lab) -> Container {
        let tar = cached_root();
        let root = std::env::temp_dir().join(format!("{}-root", lab.prefix));
        let _ = std::fs::remove_dir_all(&root);
        std::fs::create_dir_all(&root).unwrap();
        sh(&[
            "tar",
            "-C",
            root.to_str().unwrap(),
            "-xf",
            tar.to_str().unwrap(),
        ]);
        let dir = std::env::temp_dir().join(&lab.prefix);
        std::fs::create_dir_all(&dir).unwrap();
        Container {
            root,
            leader: None,
            nspawn: None,
            journal_log: dir.join("journal.log"),
        }
    }

    /// Runs one command in the root without booting it (`systemd-nspawn --pipe CMD`).
    pub fn run_unbooted(&self, cmd: &[&str]) -> Output {
        let mut args = vec![
            "-q",
            "--register=no",
            "--keep-unit",
            "--pipe",
            "-D",
            self.root.to_str().unwrap(),
        ];
        args.extend_from_slice(cmd);
        let argv = nspawn_command(&args);
        Command::new(&argv[0]).args(&argv[1..]).output().unwrap()
    }

    /// Boots the root with systemd as PID 1 in namespace `host` of `lab`, and waits (bounded:
    /// 60 s) until its systemd has finished starting up.
    pub fn boot(&mut self, lab: &mut Lab, host: &str) {
        let netns = format!("--network-namespace-path=/run/netns/{}", lab.ns(host));
        let root = self.root.to_str().unwrap().to_string();
        let args = [
            "-b",
            "-D",
            &root,
            "--register=no",
            "--keep-unit",
            "--capability=all",
            "--system-call-filter=bpf perf_event_open",
            "--bind=/sys/fs/bpf",
            &netns,
            "--console=pipe",
        ];
        let argv = nspawn_command(&args);
        let argv: Vec<&str> = argv.iter().map(String::as_str).collect();
        let log = std::env::temp_dir()
            .join(&lab.prefix)
            .join("nspawn.log")
            .to_string_lossy()
            .into_owned();
        let pid = lab.spawn_host(&argv, &log);
        self.nspawn = Some(pid);
        // nspawn (after `exec`, the PID we started) forks the container's init.
        let deadline = Instant::now() + Duration::from_secs(60);
        while self.leader.is_none() {
            assert!(
                Instant::now() < deadline,
                "the container did not start: {}",
                std::fs::read_to_string(&log).unwrap_or_default()
            );
            self.leader = children(pid).into_iter().find(|c| {
                std::fs::read_to_string(format!("/proc/{c}/comm"))
                    .is_ok_and(|n| n.trim() == "systemd")
            });
            std::thread::sleep(Duration::from_millis(50));
        }
        loop {
            let state = self.exec(&["systemctl", "is-system-running"]);
            let state = String::from_utf8_lossy(&state.stdout).trim().to_string();
            if state == "running" || state == "degraded" {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "the container's systemd did not finish starting: {state}"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Runs a command inside the booted container (all its namespaces: `nsenter -a`).
    pub fn exec(&self, cmd: &[&str]) -> Output {
        let leader = self
            .leader
            .expect("the container is not booted")
            .to_string();
        Command::new("nsenter")
            .args(["-t", &leader, "-a", "--"])
            .args(cmd)
            .output()
            .unwrap()
    }

    /// `exec` that panics with the output when the command fails; returns its stdout.
    pub fn sh(&self, cmd: &[&str]) -> String {
        let out = self.exec(cmd);
        assert!(
            out.status.success(),
            "{cmd:?} in the container failed: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// A unit's property (`systemctl show -p NAME --value UNIT`).
    pub fn property(&self, unit: &str, name: &str) -> String {
        self.sh(&["systemctl", "show", "-p", name, "--value", unit])
            .trim()
            .to_string()
    }

    /// The unit's journal, messages only.
    pub fn journal(&self, unit: &str) -> String {
        let out = self.exec(&["journalctl", "-u", unit, "--no-pager", "-o", "cat"]);
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// Waits (bounded) until `done` holds; panics with the unit's journal otherwise.
    pub fn wait_for(&self, unit: &str, what: &str, limit: Duration, done: impl Fn(&Self) -> bool) {
        let deadline = Instant::now() + limit;
        while !done(self) {
            assert!(
                Instant::now() < deadline,
                "{what}: not within {limit:?}; {unit}'s journal:\n{}",
                self.journal(unit)
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Shuts the container down (SIGTERM to nspawn: a clean poweroff), bounded.
    pub fn poweroff(&mut self, lab: &mut Lab) {
        if let Some(pid) = self.nspawn.take() {
            lab.stop(pid);
        }
        self.kill_leader();
    }

    /// SIGKILL to the container's PID 1 ends every process of its PID namespace.
    fn kill_leader(&mut self) {
        if let Some(leader) = self.leader.take() {
            unsafe { libc::kill(leader as i32, libc::SIGKILL) };
        }
    }
}

impl Drop for Container {
    fn drop(&mut self) {
        if std::thread::panicking() && self.leader.is_some() {
            let out = self.exec(&[
                "journalctl",
                "--no-pager",
                "-o",
                "short-precise",
                "-n",
                "300",
            ]);
            let _ = std::fs::write(&self.journal_log, &out.stdout);
        }
        self.kill_leader();
        let _ = std::fs::remove_dir_all(&self.root);
    }
}

/// The PIDs whose parent is `pid`.
fn children(pid: u32) -> Vec<u32> {
    let mut found = Vec::new();
    for task in std::fs::read_dir(format!("/proc/{pid}/task"))
        .into_iter()
        .flatten()
        .flatten()
    {
        let text = std::fs::read_to_string(task.path().join("children")).unwrap_or_default();
        found.extend(
            text.split_whitespace()
                .filter_map(|p| p.parse::<u32>().ok()),
        );
    }
    found
}
