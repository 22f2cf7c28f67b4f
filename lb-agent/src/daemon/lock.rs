//! One agent per pinned data plane and per control socket: exclusive `flock`s, taken before
//! anything is touched and held for the agent's lifetime (the kernel drops them when it
//! exits, however it exits). A second agent started with the same `pin_dir` or
//! `control_socket` fails at once, naming the running agent's PID, and leaves the first one
//! alone — without this it adopted the first one's pins, swapped its program in, rewrote the
//! maps, took the socket and, on its own SIGTERM, detached everything under the first.
//! `run --cleanup` takes the same locks, so it refuses while an agent runs.
//!
//! The data plane's lock is on the pin directory itself (bpffs holds no regular files); its
//! holder is found in `/proc/locks` by the directory's inode. The socket's lock is a file
//! beside it (`<socket>.lock`) holding the PID.

use std::{
    fs::File,
    io::Write,
    os::{fd::AsRawFd, unix::fs::MetadataExt},
    path::{Path, PathBuf},
};

use anyhow::{Context, Result, bail};

/// The locks of a running agent; dropping them (or exiting) releases them.
pub struct Locks {
    _pins: File,
    _socket: File,
}

/// Takes both locks, or says which agent holds one.
pub fn take(pin_dir: &Path, socket: &Path) -> Result<Locks> {
    lb_agent::dataplane::ensure_bpffs(pin_dir)?;
    let pins = File::open(pin_dir).with_context(|| format!("opening {}", pin_dir.display()))?;
    if !try_flock(&pins)? {
        let holder = flock_holder(pin_dir)
            .map(|pid| format!(" (PID {pid})"))
            .unwrap_or_default();
        bail!(
            "another lb-agent{holder} runs the data plane pinned under {}: stop it first \
             (nothing of it was touched)",
            pin_dir.display()
        );
    }
    let path = lock_path(socket);
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    let mut file = File::options()
        .create(true)
        .truncate(false)
        .read(true)
        .write(true)
        .open(&path)
        .with_context(|| format!("opening {}", path.display()))?;
    if !try_flock(&file)? {
        let holder = std::fs::read_to_string(&path)
            .ok()
            .and_then(|s| s.trim().parse::<u32>().ok())
            .map(|pid| format!(" (PID {pid})"))
            .unwrap_or_default();
        bail!(
            "another lb-agent{holder} owns the control socket {}: stop it first (nothing of \
             it was touched)",
            socket.display()
        );
    }
    file.set_len(0)?;
    writeln!(file, "{}", std::process::id())?;
    Ok(Locks {
        _pins: pins,
        _socket: file,
    })
}

/// `<socket>.lock`.
fn lock_path(socket: &Path) -> PathBuf {
    let mut name = socket.file_name().unwrap_or_default().to_os_string();
    name.push(".lock");
    socket.with_file_name(name)
}

/// An exclusive, non-blocking `flock`: false when someone else holds it.
fn try_flock(f: &File) -> Result<bool> {
    // SAFETY: a valid descriptor we own.
    if unsafe { libc::flock(f.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } == 0 {
        return Ok(true);
    }
    let e = std::io::Error::last_os_error();
    if e.raw_os_error() == Some(libc::EWOULDBLOCK) {
        Ok(false)
    } else {
        Err(e).context("flock")
    }
}

/// The PID holding a `flock` on `path`, from `/proc/locks`
/// (`1: FLOCK  ADVISORY  WRITE 4242 00:1f:3093 0 EOF`: device in hex, inode in decimal).
fn flock_holder(path: &Path) -> Option<u32> {
    let ino = std::fs::metadata(path).ok()?.ino();
    let locks = std::fs::read_to_string("/proc/locks").ok()?;
    holder_in(&locks, ino)
}

fn holder_in(locks: &str, ino: u64) -> Option<u32> {
    locks.lines().find_map(|l| {
        let f: Vec<&str> = l.split_whitespace().collect();
        let (kind, pid, id) = (f.get(1)?, f.get(4)?, f.get(5)?);
        (*kind == "FLOCK" && id.rsplit(':').next()?.parse::<u64>().ok()? == ino)
            .then(|| pid.parse().ok())
            .flatten()
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_second_taker_is_refused_and_the_first_keeps_its_locks() {
        let dir = std::env::temp_dir().join(format!("lbt{}-lock", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(dir.join("pins")).unwrap();
        // Not bpffs: ensure_bpffs would mount one on the parent; take the parts directly.
        let pins = File::open(dir.join("pins")).unwrap();
        assert!(try_flock(&pins).unwrap());
        let again = File::open(dir.join("pins")).unwrap();
        assert!(!try_flock(&again).unwrap(), "one data plane, one agent");
        let holder = flock_holder(&dir.join("pins"));
        assert_eq!(holder, Some(std::process::id()));
        drop(pins);
        assert!(try_flock(&again).unwrap(), "released with its holder");
        assert_eq!(
            lock_path(Path::new("/run/lb-agent/control.sock")),
            PathBuf::from("/run/lb-agent/control.sock.lock")
        );
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn proc_locks_lines_name_the_holder_by_inode() {
        let text = "1: POSIX  ADVISORY  WRITE 11 00:1a:77 0 EOF\n\
                    2: FLOCK  ADVISORY  WRITE 4242 00:1f:3093 0 EOF\n";
        assert_eq!(holder_in(text, 3093), Some(4242));
        assert_eq!(holder_in(text, 77), None, "POSIX locks are not ours");
        assert_eq!(holder_in(text, 1), None);
    }
}
