//! `cargo xtask package`: the agent as a Debian package, `target/debian/lb-agent_VERSION_ARCH.deb`,
//! laid out as cargo-deb and debhelper would: the stripped binary (the XDP object is embedded
//! in it) in `/usr/sbin`, both units in `/lib/systemd/system`, the example configuration as a
//! conffile `/etc/lb-agent/lb.toml` (0600), the README, the examples and the Grafana dashboard
//! in `/usr/share/doc/lb-agent`, gzipped manual pages, the completions in Debian's directories,
//! and maintainer scripts that do what Debian users expect (see `POSTINST` and friends).
//!
//! Built with `dpkg-deb` from a staged tree, without debhelper: nothing here needs a
//! `debian/` directory, and the package's contents are listed in one place (this file).

use std::{
    io::Write,
    os::unix::fs::PermissionsExt,
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{Context, Result, bail};

use crate::{
    deploy::{self, DocLayout},
    run,
};

pub const NAME: &str = "lb-agent";

/// Debian's places for what `lb-agent generate` writes.
const DEBIAN: DocLayout = DocLayout {
    man8: "usr/share/man/man8",
    man5: "usr/share/man/man5/lb-agent.toml.5",
    bash: "usr/share/bash-completion/completions/lb-agent",
    zsh: "usr/share/zsh/vendor-completions/_lb-agent",
    fish: "usr/share/fish/vendor_completions.d/lb-agent.fish",
};

/// (source in the repository, destination in the package, mode).
const FILES: [(&str, &str, u32); 8] = [
    ("configs/db1.toml", "etc/lb-agent/lb.toml", 0o600),
    ("README.md", "usr/share/doc/lb-agent/README.md", 0o644),
    (
        "configs/db1.toml",
        "usr/share/doc/lb-agent/examples/db1.toml",
        0o644,
    ),
    (
        "configs/db2.toml",
        "usr/share/doc/lb-agent/examples/db2.toml",
        0o644,
    ),
    (
        "configs/master.toml",
        "usr/share/doc/lb-agent/examples/master.toml",
        0o644,
    ),
    (
        "configs/backup.toml",
        "usr/share/doc/lb-agent/examples/backup.toml",
        0o644,
    ),
    (
        "configs/static-dr.toml",
        "usr/share/doc/lb-agent/examples/static-dr.toml",
        0o644,
    ),
    (
        "configs/grafana/lb-agent.json",
        "usr/share/doc/lb-agent/grafana/lb-agent.json",
        0o644,
    ),
];

const UNITS: [&str; 2] = ["lb-agent.service", "lb-agent-realserver.service"];

/// The units name the paths of `cargo xtask deploy` (`/usr/local`); a package owns `/usr`.
const UNIT_PATHS: [(&str, &str); 2] = [
    ("/usr/local/sbin/", "/usr/sbin/"),
    ("/usr/local/share/doc/", "/usr/share/doc/"),
];

/// After unpacking (debhelper's `dh_installsystemd --no-enable --restart-after-upgrade`
/// snippets, written out). A fresh install starts nothing: the shipped lb.toml is the
/// recipe's example, and an agent started on it would take over addresses the operator never
/// chose (the README: edit it, then `systemctl enable --now`). An upgrade restarts an agent
/// that runs — hitless, since the new agent adopts the pinned data plane — and leaves a
/// stopped one stopped.
const POSTINST: &str = r#"#!/bin/sh
set -e
if [ "$1" = configure ] || [ "$1" = abort-upgrade ] || [ "$1" = abort-deconfigure ] || [ "$1" = abort-remove ]; then
    deb-systemd-helper unmask lb-agent.service lb-agent-realserver.service >/dev/null || true
    deb-systemd-helper update-state lb-agent.service lb-agent-realserver.service >/dev/null || true
    if [ -d /run/systemd/system ]; then
        systemctl --system daemon-reload >/dev/null || true
        if [ -n "$2" ]; then
            # A running agent (if any) leaves its data plane to the new one; an agent too old
            # to understand it just gets a cold restart.
            lb-agent prepare-restart --config /etc/lb-agent/lb.toml >/dev/null 2>&1 || true
            deb-systemd-invoke try-restart lb-agent.service >/dev/null || true
        fi
    fi
    if [ "$1" = configure ] && [ -z "$2" ]; then
        echo "lb-agent: edit /etc/lb-agent/lb.toml, then: systemctl enable --now lb-agent-realserver lb-agent"
    fi
fi
exit 0
"#;

/// Before removal: stop the agent (a clean stop resigns from VRRP and detaches the data
/// plane). Not on upgrade: the running agent keeps forwarding until postinst restarts it.
const PRERM: &str = r#"#!/bin/sh
set -e
if [ "$1" = remove ] && [ -d /run/systemd/system ]; then
    deb-systemd-invoke stop lb-agent.service lb-agent-realserver.service >/dev/null || true
fi
exit 0
"#;

/// After removal: systemd forgets the units (masked until purge, as debhelper does, so an
/// enablement left behind starts nothing); purge forgets their state and removes the
/// configuration directory (dpkg removes the conffile; the password and key files an operator
/// put next to it go too) and the control socket's directory.
const POSTRM: &str = r#"#!/bin/sh
set -e
if [ -d /run/systemd/system ]; then
    systemctl --system daemon-reload >/dev/null || true
fi
if [ "$1" = remove ]; then
    deb-systemd-helper mask lb-agent.service lb-agent-realserver.service >/dev/null || true
fi
if [ "$1" = purge ]; then
    deb-systemd-helper purge lb-agent.service lb-agent-realserver.service >/dev/null || true
    deb-systemd-helper unmask lb-agent.service lb-agent-realserver.service >/dev/null || true
    rm -rf /etc/lb-agent /run/lb-agent
fi
exit 0
"#;

/// Lintian's tags this package carries on purpose (`/usr/share/lintian/overrides/lb-agent`),
/// each with the reason.
const LINTIAN_OVERRIDES: &str = "\
# The configuration names the password and key files and the addresses the agent takes
# over (and may carry a VRRP auth_pass): readable by root only.
lb-agent: non-standard-file-perm 0600 != 0644 [etc/lb-agent/lb.toml]
# Rust: the binary calls no C string or memory functions that _FORTIFY_SOURCE would check.
lb-agent: hardening-no-fortify-functions [usr/sbin/lb-agent]
# The agent needs systemd (Type=notify, the watchdog, the bpffs mount); no SysV script.
lb-agent: package-supports-alternative-init-but-no-init.d-script [lib/systemd/system/*]
";

/// The workspace's version of lb-agent (its Cargo.toml), Debian's version of this native
/// package.
pub fn version(repo: &Path) -> Result<String> {
    let manifest = std::fs::read_to_string(repo.join("lb-agent/Cargo.toml"))?;
    manifest
        .lines()
        .find_map(|l| l.strip_prefix("version = \""))
        .and_then(|v| v.strip_suffix('"'))
        .map(str::to_string)
        .context("lb-agent/Cargo.toml has no version line")
}

fn architecture() -> Result<String> {
    let out = Command::new("dpkg")
        .arg("--print-architecture")
        .output()
        .context("running dpkg --print-architecture")?;
    Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
}

/// Stages the package's tree and builds the `.deb` (the release binary must be built).
pub fn build(repo: &Path) -> Result<PathBuf> {
    crate::setup::apt(&[
        ("dpkg-deb", "dpkg"),
        ("dpkg-shlibdeps", "dpkg-dev"),
        ("strip", "binutils"),
    ])?;
    let version = version(repo)?;
    let arch = architecture()?;
    let out_dir = repo.join("target/debian");
    let stage = out_dir.join("stage");
    let _ = std::fs::remove_dir_all(&stage);
    std::fs::create_dir_all(&stage)?;

    let bin = stage.join("usr/sbin/lb-agent");
    install_file(&repo.join("target/release/lb-agent"), &bin, 0o755)?;
    // Symbols off (24 MB → 15); the embedded XDP object is data, not symbols, and stays.
    run(Command::new("strip")
        .args(["--strip-unneeded", "--remove-section=.comment"])
        .arg(&bin))?;
    for unit in UNITS {
        let mut text = std::fs::read_to_string(repo.join("configs/systemd").join(unit))?;
        for (from, to) in UNIT_PATHS {
            text = text.replace(from, to);
        }
        write_file(
            &stage.join("lib/systemd/system").join(unit),
            text.as_bytes(),
            0o644,
        )?;
    }
    for (from, to, mode) in FILES {
        install_file(&repo.join(from), &stage.join(to), mode)?;
    }
    write_file(
        &stage.join("usr/share/lintian/overrides/lb-agent"),
        LINTIAN_OVERRIDES.as_bytes(),
        0o644,
    )?;
    write_file(
        &stage.join("usr/share/doc/lb-agent/copyright"),
        COPYRIGHT.as_bytes(),
        0o644,
    )?;
    write_file(
        &stage.join("usr/share/doc/lb-agent/changelog.gz"),
        &gzip(changelog(repo, &version)?.as_bytes())?,
        0o644,
    )?;
    // Pages and completions from the staged binary itself; pages gzipped as Debian wants.
    let generated = deploy::generate(&bin, &stage, &DEBIAN)?;
    for page in generated.iter().filter(|p| is_man_page(p)) {
        let gz = PathBuf::from(format!("{}.gz", page.display()));
        write_file(&gz, &gzip(&std::fs::read(page)?)?, 0o644)?;
        std::fs::remove_file(page)?;
    }

    let debian = stage.join("DEBIAN");
    let control = control(&stage, &bin, &version, &arch)?;
    write_file(&debian.join("control"), control.as_bytes(), 0o644)?;
    write_file(&debian.join("conffiles"), b"/etc/lb-agent/lb.toml\n", 0o644)?;
    write_file(&debian.join("postinst"), POSTINST.as_bytes(), 0o755)?;
    write_file(&debian.join("prerm"), PRERM.as_bytes(), 0o755)?;
    write_file(&debian.join("postrm"), POSTRM.as_bytes(), 0o755)?;
    write_file(&debian.join("md5sums"), md5sums(&stage)?.as_bytes(), 0o644)?;
    directories_0755(&stage)?;

    let deb = out_dir.join(format!("{NAME}_{version}_{arch}.deb"));
    run(Command::new("dpkg-deb")
        .args(["--root-owner-group", "-Zxz", "--build"])
        .arg(&stage)
        .arg(&deb))?;
    Ok(deb)
}

fn is_man_page(p: &Path) -> bool {
    p.extension().is_some_and(|e| e == "8" || e == "5")
}

/// `DEBIAN/control`: the shared-library dependencies as `dpkg-shlibdeps` finds them.
fn control(stage: &Path, bin: &Path, version: &str, arch: &str) -> Result<String> {
    let depends = shlibdeps(bin)?;
    let installed_kib = du_kib(stage)?;
    Ok(format!(
        "Package: {NAME}\n\
         Version: {version}\n\
         Architecture: {arch}\n\
         Maintainer: xdp-mysql-lb developers <lb-agent@xdp-mysql-lb.invalid>\n\
         Installed-Size: {installed_kib}\n\
         Depends: {depends}\n\
         Recommends: iproute2\n\
         Suggests: bpftool, mariadb-client, etcd-server\n\
         Section: net\n\
         Priority: optional\n\
         Description: XDP direct-routing load balancer for MySQL (lb-agent)\n \
         lb-agent replaces the LVS + keepalived recipe for MySQL high availability: an\n \
         XDP program forwards the packets of virtual IPs to real servers by rewriting\n \
         the destination MAC (LVS-DR style), and one daemon runs VRRP elections with\n \
         its peer (keepalived-compatible), health-checks the MySQL servers, writes the\n \
         BPF maps, and sends the write VIP to a sorry server when the writer fails,\n \
         with a failback that cannot lose writes and an optional etcd quorum.\n"
    ))
}

/// `dpkg-shlibdeps -O BIN`, run in a scratch directory with the `debian/control` it wants.
fn shlibdeps(bin: &Path) -> Result<String> {
    let dir = std::env::temp_dir().join(format!("lb-shlibdeps-{}", std::process::id()));
    std::fs::create_dir_all(dir.join("debian"))?;
    std::fs::write(
        dir.join("debian/control"),
        format!("Source: {NAME}\n\nPackage: {NAME}\nArchitecture: any\n"),
    )?;
    let out = Command::new("dpkg-shlibdeps")
        .arg("-O")
        .arg(bin)
        .current_dir(&dir)
        .output()
        .context("running dpkg-shlibdeps")?;
    let _ = std::fs::remove_dir_all(&dir);
    if !out.status.success() {
        bail!(
            "dpkg-shlibdeps failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .find_map(|l| l.strip_prefix("shlibs:Depends="))
        .map(str::to_string)
        .context("dpkg-shlibdeps printed no shlibs:Depends")
}

fn du_kib(dir: &Path) -> Result<u64> {
    let out = Command::new("du")
        .args(["-sk", "--apparent-size"])
        .arg(dir)
        .output()?;
    String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .next()
        .and_then(|n| n.parse().ok())
        .context("du printed no size")
}

/// `DEBIAN/md5sums`: every file but the control area, paths relative to the root.
fn md5sums(stage: &Path) -> Result<String> {
    let out = Command::new("sh")
        .arg("-c")
        .arg("find . -type f ! -path './DEBIAN/*' -printf '%P\\0' | sort -z | xargs -0 md5sum")
        .current_dir(stage)
        .output()?;
    if !out.status.success() {
        bail!("md5sum failed");
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// A native package's changelog: one entry for this version, dated by the last commit.
fn changelog(repo: &Path, version: &str) -> Result<String> {
    let date = Command::new("git")
        .args(["log", "-1", "--format=%cD"])
        .current_dir(repo)
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .filter(|d| !d.is_empty())
        .unwrap_or_else(|| "Fri, 04 Dec 2026 00:00:00 +0000".to_string());
    Ok(format!(
        "{NAME} ({version}) unstable; urgency=medium\n\n  \
         * Built from the xdp-mysql-lb repository (see README.md for what changed).\n\n \
         -- xdp-mysql-lb developers <lb-agent@xdp-mysql-lb.invalid>  {date}\n"
    ))
}

const COPYRIGHT: &str = "\
Format: https://www.debian.org/doc/packaging-manuals/copyright-format/1.0/
Upstream-Name: xdp-mysql-lb

Files: *
Copyright: 2026 xdp-mysql-lb developers
License: MIT or Apache-2.0

License: MIT
 Permission is hereby granted, free of charge, to any person obtaining a copy
 of this software and associated documentation files (the \"Software\"), to deal
 in the Software without restriction, including without limitation the rights
 to use, copy, modify, merge, publish, distribute, sublicense, and/or sell
 copies of the Software, and to permit persons to whom the Software is
 furnished to do so, subject to the following conditions:
 .
 The above copyright notice and this permission notice shall be included in
 all copies or substantial portions of the Software.
 .
 THE SOFTWARE IS PROVIDED \"AS IS\", WITHOUT WARRANTY OF ANY KIND, EXPRESS OR
 IMPLIED, INCLUDING BUT NOT LIMITED TO THE WARRANTIES OF MERCHANTABILITY,
 FITNESS FOR A PARTICULAR PURPOSE AND NONINFRINGEMENT. IN NO EVENT SHALL THE
 AUTHORS OR COPYRIGHT HOLDERS BE LIABLE FOR ANY CLAIM, DAMAGES OR OTHER
 LIABILITY, WHETHER IN AN ACTION OF CONTRACT, TORT OR OTHERWISE, ARISING FROM,
 OUT OF OR IN CONNECTION WITH THE SOFTWARE OR THE USE OR OTHER DEALINGS IN
 THE SOFTWARE.

License: Apache-2.0
 On Debian systems, the full text of the Apache License, Version 2.0 can be
 found in /usr/share/common-licenses/Apache-2.0.
";

/// `gzip -9n`: no name or time stamp in the header, so the same input gives the same bytes.
fn gzip(data: &[u8]) -> Result<Vec<u8>> {
    let mut child = Command::new("gzip")
        .arg("-9n")
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .context("running gzip")?;
    let mut stdin = child.stdin.take().unwrap();
    let input = data.to_vec();
    let writer = std::thread::spawn(move || stdin.write_all(&input));
    let out = child.wait_with_output()?;
    writer.join().expect("gzip writer")?;
    if !out.status.success() {
        bail!("gzip failed");
    }
    Ok(out.stdout)
}

fn install_file(from: &Path, to: &Path, mode: u32) -> Result<()> {
    let data = std::fs::read(from).with_context(|| format!("{} (build first)", from.display()))?;
    write_file(to, &data, mode)
}

fn write_file(to: &Path, data: &[u8], mode: u32) -> Result<()> {
    std::fs::create_dir_all(to.parent().unwrap())?;
    std::fs::write(to, data).with_context(|| format!("writing {}", to.display()))?;
    std::fs::set_permissions(to, std::fs::Permissions::from_mode(mode))?;
    Ok(())
}

/// dpkg-deb takes directory modes from the tree; the umask must not decide them.
fn directories_0755(dir: &Path) -> Result<()> {
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o755))?;
    for entry in std::fs::read_dir(dir)? {
        let path = entry?.path();
        if path.is_dir() {
            directories_0755(&path)?;
        }
    }
    Ok(())
}

/// `lintian` on the package: fails on any error or warning (the justified ones are overridden
/// in the package itself, `LINTIAN_OVERRIDES`), and prints the rest.
pub fn lint(deb: &Path) -> Result<()> {
    crate::setup::apt(&[("lintian", "lintian")])?;
    let out = Command::new("lintian")
        .args(["--no-tag-display-limit", "--display-info"])
        .arg(deb)
        .output()
        .context("running lintian")?;
    let report = String::from_utf8_lossy(&out.stdout);
    let mut unjustified = Vec::new();
    for line in report.lines() {
        eprintln!("lintian: {line}");
        if line.starts_with("E:") || line.starts_with("W:") {
            unjustified.push(line.to_string());
        }
    }
    if !unjustified.is_empty() {
        bail!("lintian: {}", unjustified.join("\n"));
    }
    Ok(())
}
