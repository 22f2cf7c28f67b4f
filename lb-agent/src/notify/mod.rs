//! Notifications. Notify scripts (keepalived's `notify_master`, `notify_backup`,
//! `notify_fault`, `notify_up`, `notify_down`) run through `sh -c` in the background with a
//! timeout; `mail` sends alerts through SMTP. A failing or hanging notifier is logged (and a
//! script killed); it never delays the data path or the VRRP loop.

pub mod mail;

use std::time::Duration;

/// How long a notify script may run before it is killed.
pub const SCRIPT_TIMEOUT: Duration = Duration::from_secs(10);

/// Runs `command` in the background (on the current tokio runtime).
pub fn spawn_script(what: &'static str, command: String) {
    tokio::spawn(async move {
        let child = tokio::process::Command::new("sh")
            .arg("-c")
            .arg(&command)
            .stdin(std::process::Stdio::null())
            .kill_on_drop(true)
            .spawn();
        let mut child = match child {
            Ok(c) => c,
            Err(e) => {
                tracing::warn!(what, command, error = %e, "notify script did not start");
                return;
            }
        };
        match tokio::time::timeout(SCRIPT_TIMEOUT, child.wait()).await {
            Ok(Ok(status)) if status.success() => {
                tracing::info!(what, command, "notify script ran")
            }
            Ok(Ok(status)) => tracing::warn!(what, command, %status, "notify script failed"),
            Ok(Err(e)) => tracing::warn!(what, command, error = %e, "notify script"),
            Err(_) => {
                let _ = child.kill().await;
                tracing::warn!(what, command, timeout = ?SCRIPT_TIMEOUT, "notify script killed after its timeout");
            }
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_script_runs_and_a_failing_one_does_not_hurt() {
        let dir = std::env::temp_dir().join(format!("lbt{}-notify", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let mark = dir.join("ran");
        spawn_script("test", format!("echo master > {}", mark.display()));
        spawn_script("test", "exit 3".into());
        spawn_script("test", "/nonexistent/script".into());
        for _ in 0..100 {
            if mark.exists() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        assert_eq!(std::fs::read_to_string(&mark).unwrap().trim(), "master");
        let _ = std::fs::remove_dir_all(&dir);
    }
}
