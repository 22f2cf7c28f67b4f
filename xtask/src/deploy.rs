//! `cargo xtask deploy [--root DIR]`: installs what an operator needs on a load-balancer host
//! (the agent binary with its XDP object embedded, a configuration, the systemd units, the
//! README) into a root directory, and says what it installed. An existing configuration is
//! never overwritten.

use std::{os::unix::fs::PermissionsExt, path::Path, process::Command};

use anyhow::{Context, Result, bail};

use crate::run;

/// (source in the repository, destination under the root, mode, replace an existing file).
const FILES: [(&str, &str, u32, bool); 5] = [
    (
        "target/release/lb-agent",
        "usr/local/sbin/lb-agent",
        0o755,
        true,
    ),
    ("configs/db1.toml", "etc/lb-agent/lb.toml", 0o600, false),
    (
        "configs/systemd/lb-agent.service",
        "etc/systemd/system/lb-agent.service",
        0o644,
        true,
    ),
    (
        "configs/systemd/lb-agent-realserver.service",
        "etc/systemd/system/lb-agent-realserver.service",
        0o644,
        true,
    ),
    (
        "README.md",
        "usr/local/share/doc/lb-agent/README.md",
        0o644,
        true,
    ),
];

/// Copies the files (the binary must be built) into `root`; returns what it did.
pub fn install(repo: &Path, root: &Path) -> Result<Vec<String>> {
    let mut done = Vec::new();
    for (from, to, mode, replace) in FILES {
        let src = repo.join(from);
        let dst = root.join(to);
        if !src.exists() {
            bail!("{} is missing (build first)", src.display());
        }
        if dst.exists() && !replace {
            done.push(format!("kept     {} (exists)", dst.display()));
            continue;
        }
        std::fs::create_dir_all(dst.parent().unwrap())
            .with_context(|| format!("creating {}", dst.parent().unwrap().display()))?;
        // Write next to it and rename: a running binary is replaced, not overwritten.
        let tmp = dst.with_extension("deploy-tmp");
        std::fs::copy(&src, &tmp).with_context(|| format!("copying {}", src.display()))?;
        std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(mode))?;
        std::fs::rename(&tmp, &dst).with_context(|| format!("installing {}", dst.display()))?;
        done.push(format!("installed {} ({mode:o})", dst.display()));
    }
    Ok(done)
}

/// `systemd-analyze verify` of the installed units. Below a root other than `/` the units
/// are verified as copies whose paths point into that root (`verify --root` would look for
/// systemd's own units and `/bin/kill` there too).
pub fn verify(root: &Path) -> Result<()> {
    crate::setup::apt(&[("systemd-analyze", "systemd")])?;
    let installed = root.join("etc/systemd/system");
    let dir = if root == Path::new("/") {
        installed.clone()
    } else {
        let dir = root.join("verify");
        std::fs::create_dir_all(&dir)?;
        let prefix = root.to_string_lossy();
        for unit in UNITS {
            let text = std::fs::read_to_string(installed.join(unit))?
                .replace("/usr/local/sbin/", &format!("{prefix}/usr/local/sbin/"))
                .replace("/etc/lb-agent/", &format!("{prefix}/etc/lb-agent/"));
            std::fs::write(dir.join(unit), text)?;
        }
        dir
    };
    let mut cmd = Command::new("systemd-analyze");
    cmd.arg("verify");
    cmd.args(UNITS.iter().map(|u| dir.join(u)));
    // verify prints warnings on stderr and fails on errors.
    let result = run(&mut cmd);
    if dir != installed {
        let _ = std::fs::remove_dir_all(&dir);
    }
    result
}

const UNITS: [&str; 2] = ["lb-agent.service", "lb-agent-realserver.service"];

/// Deploy into a temporary root, verify the units, and run the installed binary's
/// `check-config` on the installed configuration: part of `cargo xtask test`.
pub fn check(repo: &Path) -> Result<()> {
    let root = std::env::temp_dir().join(format!("lb-deploy-test-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&root);
    let result = (|| {
        for line in install(repo, &root)? {
            eprintln!("{line}");
        }
        verify(&root)?;
        run(Command::new(root.join("usr/local/sbin/lb-agent"))
            .arg("check-config")
            .arg(root.join("etc/lb-agent/lb.toml")))?;
        // A second deploy keeps the configuration an operator may have edited.
        let again = install(repo, &root)?;
        if !again
            .iter()
            .any(|l| l.starts_with("kept") && l.contains("lb.toml"))
        {
            bail!("a second deploy replaced the configuration: {again:?}");
        }
        Ok(())
    })();
    let _ = std::fs::remove_dir_all(&root);
    result
}
