//! bpffs: making sure it is mounted, and removing pins.

use std::path::Path;

use anyhow::{Context, Result, bail};

const BPF_FS_MAGIC: i64 = 0xcafe4a11;

fn is_bpffs(path: &Path) -> bool {
    let Ok(c) = std::ffi::CString::new(path.as_os_str().as_encoded_bytes()) else {
        return false;
    };
    let mut st: libc::statfs = unsafe { std::mem::zeroed() };
    // SAFETY: a valid C string and a zeroed out-parameter.
    unsafe { libc::statfs(c.as_ptr(), &mut st) == 0 && st.f_type as i64 == BPF_FS_MAGIC }
}

/// Whether this process's mount namespace is one of its own, in which a bpffs it mounted
/// would die with it: a different namespace than PID 1's (when PID 1's can be read — a
/// sandbox may hide it), or a root mount that is a slave (`master:N` in mountinfo), which is
/// what systemd gives a unit with `PrivateTmp`/`ProtectSystem` and `ip netns exec` gives its
/// command. The host's own root is never a slave.
fn own_mount_namespace() -> bool {
    let mine = std::fs::read_link("/proc/self/ns/mnt").ok();
    let init = std::fs::read_link("/proc/1/ns/mnt").ok();
    if let (Some(m), Some(i)) = (mine, init) {
        return m != i;
    }
    std::fs::read_to_string("/proc/self/mountinfo").is_ok_and(|m| root_is_slave(&m))
}

/// Whether the mount on `/` (the last one listed: the one on top) is a slave: it receives
/// propagation from a master and sends none back (whether or not it has peers of its own).
fn root_is_slave(mountinfo: &str) -> bool {
    mountinfo
        .lines()
        .filter_map(|l| {
            let (before, _) = l.split_once(" - ")?;
            let fields: Vec<&str> = before.split(' ').collect();
            (fields.get(4) == Some(&"/")).then(|| fields[6..].to_vec())
        })
        .next_back()
        .is_some_and(|optional| optional.iter().any(|f| f.starts_with("master:")))
}

/// Creates `dir`, mounting bpffs on its parent first when the parent is not on bpffs.
///
/// Refused when this process has a mount namespace of its own (a systemd unit with
/// `PrivateTmp`/`ProtectSystem`, `ip netns exec`, `unshare -m`): a bpffs mounted there
/// vanishes with the process, and every pin with it — no restart could adopt the data
/// plane, and nothing would say so. The host must mount it (systemd does at boot).
pub fn ensure_bpffs(dir: &Path) -> Result<()> {
    let parent = dir.parent().unwrap_or(Path::new("/"));
    if !is_bpffs(parent) {
        if own_mount_namespace() {
            bail!(
                "{} is not on bpffs in this process's mount namespace, which is not the host's: \
                 a bpffs mounted here would be private to this agent, and its pinned data plane \
                 would vanish with it (no hitless restart). Mount bpffs on the host \
                 (`mount -t bpf bpffs {}`; systemd mounts /sys/fs/bpf at boot) and start the agent \
                 after it (the unit has RequiresMountsFor=/sys/fs/bpf)",
                parent.display(),
                parent.display()
            );
        }
        std::fs::create_dir_all(parent)
            .with_context(|| format!("creating {}", parent.display()))?;
        let target = std::ffi::CString::new(parent.as_os_str().as_encoded_bytes())?;
        // SAFETY: valid C strings; mounting is what this function is for.
        let rc = unsafe {
            libc::mount(
                c"bpffs".as_ptr(),
                target.as_ptr(),
                c"bpf".as_ptr(),
                0,
                std::ptr::null(),
            )
        };
        if rc != 0 {
            bail!(
                "{} is not on bpffs and mounting bpffs there failed: {}",
                parent.display(),
                std::io::Error::last_os_error()
            );
        }
    }
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))
}

pub fn unpin_maps(dir: &Path, names: &[&str]) -> Result<()> {
    for name in names {
        match std::fs::remove_file(dir.join(name)) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(e).with_context(|| format!("unpinning {name}")),
        }
    }
    let _ = std::fs::remove_dir(dir);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::root_is_slave;

    #[test]
    fn a_slave_root_is_a_namespace_of_its_own() {
        let host = "27 1 254:0 / / rw,relatime shared:1 - ext4 /dev/vda rw\n\
                    52 23 0:40 / /sys/fs/bpf rw,relatime shared:9 - bpf bpffs rw\n";
        let unit = "301 280 254:0 / / ro,relatime master:1 - ext4 /dev/vda rw\n";
        let private_host = "27 1 254:0 / / rw,relatime - ext4 /dev/vda rw\n";
        // Shared and slave at once (systemd re-shares a unit's namespace for its children):
        // still nothing goes back to the master.
        let both = "40 1 254:0 / / rw shared:5 master:1 - ext4 /dev/vda rw\n";
        // Stacked: the last mount on / is the one that counts.
        let stacked = "27 1 254:0 / / rw shared:1 - ext4 /dev/vda rw\n\
                       90 27 0:50 / / rw master:1 - overlay overlay rw\n";
        for (text, slave) in [
            (host, false),
            (unit, true),
            (private_host, false),
            (both, true),
            (stacked, true),
            ("", false),
            ("garbage\n", false),
        ] {
            assert_eq!(root_is_slave(text), slave, "{text}");
        }
    }
}
