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

/// Creates `dir`, mounting bpffs on its parent first when the parent is not on bpffs.
/// (`ip netns exec` gives each namespace a fresh /sys without bpffs.)
pub fn ensure_bpffs(dir: &Path) -> Result<()> {
    let parent = dir.parent().unwrap_or(Path::new("/"));
    if !is_bpffs(parent) {
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
