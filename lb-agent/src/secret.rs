//! Files that hold secrets (the MySQL check's password, the pair's key): read only when
//! owned by root or by the user the agent runs as, and readable by nobody else — the rule
//! ssh and keepalived's script security apply. A refusal says the mode, the owner and the
//! fix, never the content.

use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::Path;

/// Reads the secret file `path` (`what` names it in errors: "password file", "key file").
pub fn read(path: &Path, what: &str) -> Result<Vec<u8>, String> {
    let meta = std::fs::metadata(path).map_err(|e| format!("{what} {}: {e}", path.display()))?;
    check(path, what, meta.permissions().mode(), meta.uid())?;
    std::fs::read(path).map_err(|e| format!("{what} {}: {e}", path.display()))
}

/// The rule, on a file's mode and owner.
fn check(path: &Path, what: &str, mode: u32, owner: u32) -> Result<(), String> {
    // SAFETY: no arguments, never fails.
    let me = unsafe { libc::geteuid() };
    if owner != 0 && owner != me {
        return Err(format!(
            "{what} {} is owned by uid {owner}: it must belong to root (or the agent's user): \
             chown root {} (refused)",
            path.display(),
            path.display()
        ));
    }
    if mode & 0o077 != 0 {
        return Err(format!(
            "{what} {} has mode {:04o}: it must not be readable by group or others: chmod 600 {} \
             (refused)",
            path.display(),
            mode & 0o7777,
            path.display()
        ));
    }
    Ok(())
}

/// Configuration keys whose values are secrets: errors about them never show the value.
pub const CONFIG_KEYS: &[&str] = &["auth_pass", "password"];

/// `message` with every backtick-quoted part replaced (serde quotes the offending value so:
/// "invalid type: integer `31415926`, expected a string").
pub fn redact(message: &str) -> String {
    let mut out = String::new();
    let mut parts = message.split('`');
    if let Some(first) = parts.next() {
        out.push_str(first);
    }
    for (i, part) in parts.enumerate() {
        if i % 2 == 0 {
            out.push_str("`(value not shown)`");
        } else {
            out.push_str(part);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_owner_only_files_of_root_or_ours_are_read() {
        let dir = std::env::temp_dir().join(format!("lbt{}-secret", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let p = dir.join("pw");
        std::fs::write(&p, "s3cret\n").unwrap();
        for (mode, ok) in [(0o600, true), (0o400, true), (0o640, false), (0o604, false)] {
            std::fs::set_permissions(&p, std::fs::Permissions::from_mode(mode)).unwrap();
            let r = read(&p, "password file");
            assert_eq!(r.is_ok(), ok, "mode {mode:o}: {r:?}");
            if let Err(e) = r {
                assert!(
                    e.contains(&format!("{mode:04o}")) && e.contains("chmod 600"),
                    "{e}"
                );
                assert!(!e.contains("s3cret"));
            }
        }
        // Owned by someone else (nobody), even with the right mode.
        let e = check(&p, "key file", 0o600, 65534).unwrap_err();
        assert!(
            e.contains("owned by uid 65534") && e.contains("chown root"),
            "{e}"
        );
        assert!(read(&dir.join("missing"), "key file").is_err());
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn quoted_values_are_redacted() {
        assert_eq!(
            redact("invalid type: integer `31415926`, expected a string"),
            "invalid type: integer `(value not shown)`, expected a string"
        );
        assert_eq!(redact("no quotes"), "no quotes");
        assert_eq!(
            redact("a `b` c `d`"),
            "a `(value not shown)` c `(value not shown)`"
        );
    }
}
