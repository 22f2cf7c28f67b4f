//! Installing what a fresh machine lacks, idempotently: each check is cheap, and an install
//! runs only when its check fails.

use std::process::Command;

use anyhow::{Result, bail};

use crate::run;

/// The bpf-linker release that works with the installed toolchains (it loads rustc's own
/// LLVM; newer releases want a system LLVM that Debian 12 lacks).
const BPF_LINKER_VERSION: &str = "0.10.4";

fn output(cmd: &mut Command) -> Option<String> {
    let out = cmd.output().ok()?;
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).into_owned())
}

pub fn require_root(why: &str) -> Result<()> {
    let uid = output(Command::new("id").arg("-u")).unwrap_or_default();
    if uid.trim() != "0" {
        bail!("run this as root: {why}");
    }
    Ok(())
}

pub fn rust_src() -> Result<()> {
    let installed = output(Command::new("rustup").args([
        "component",
        "list",
        "--installed",
        "--toolchain",
        "nightly",
    ]))
    .unwrap_or_default();
    if installed.lines().any(|l| l.starts_with("rust-src")) {
        return Ok(());
    }
    eprintln!(
        "installing the rust-src component of the nightly toolchain (needed for -Z build-std)"
    );
    run(Command::new("rustup").args(["component", "add", "rust-src", "--toolchain", "nightly"]))
}

pub fn bpf_linker() -> Result<()> {
    let version = output(Command::new("bpf-linker").arg("--version")).unwrap_or_default();
    if version.contains(BPF_LINKER_VERSION) {
        return Ok(());
    }
    eprintln!("installing bpf-linker {BPF_LINKER_VERSION} (takes about 2 minutes)");
    run(Command::new("cargo").args([
        "install",
        "bpf-linker",
        "--version",
        BPF_LINKER_VERSION,
        "--locked",
        "--force",
    ]))
}

/// Installs the Debian packages whose commands are missing: `(command, package)` pairs; a
/// "command" that is an absolute path is a file the package installs (for packages without a
/// command, such as headers and data).
pub fn apt(needs: &[(&str, &str)]) -> Result<()> {
    let missing: Vec<&str> = needs
        .iter()
        .filter(|(cmd, _)| {
            if cmd.starts_with('/') {
                return !std::path::Path::new(cmd).exists();
            }
            !Command::new("sh")
                .args(["-c", &format!("command -v {cmd} >/dev/null")])
                .status()
                .is_ok_and(|s| s.success())
        })
        .map(|(_, pkg)| *pkg)
        .collect();
    if missing.is_empty() {
        return Ok(());
    }
    eprintln!("installing Debian packages: {}", missing.join(" "));
    run(Command::new("apt-get").arg("update").arg("-q"))?;
    run(Command::new("apt-get")
        .args(["install", "-y", "-q", "--no-install-recommends"])
        .args(&missing)
        .env("DEBIAN_FRONTEND", "noninteractive"))
}
