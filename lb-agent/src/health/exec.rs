//! A check command (keepalived's `MISC_CHECK`, `vrrp_script`): `sh -c COMMAND` in a process
//! group of its own, killed with the whole group when it outlives its timeout, so that a hung
//! check cannot pile up processes.

use std::{os::unix::process::ExitStatusExt, process::Stdio, time::Duration};

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// Exit 0.
    Healthy,
    /// With `dynamic`: exit 2–255, a new weight of (code − 2).
    Weight(u32),
    /// Anything else, with why.
    Unhealthy(String),
    /// The command could not be started for want of the agent's own resources (see
    /// `failure`): no verdict.
    Local(String),
}

impl Outcome {
    pub fn ok(&self) -> bool {
        !matches!(self, Outcome::Unhealthy(_) | Outcome::Local(_))
    }
}

pub async fn run(command: &str, timeout: Duration, dynamic: bool) -> Outcome {
    let child = tokio::process::Command::new("sh")
        .arg("-c")
        .arg(command)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .process_group(0)
        .kill_on_drop(true)
        .spawn();
    let mut child = match child {
        Ok(c) => c,
        Err(e) if super::failure::is_local(&e) || e.raw_os_error() == Some(libc::EAGAIN) => {
            return Outcome::Local(format!("could not start: {e}"));
        }
        Err(e) => return Outcome::Unhealthy(format!("could not start: {e}")),
    };
    let pid = child.id();
    match tokio::time::timeout(timeout, child.wait()).await {
        Ok(Ok(status)) => match (status.code(), status.signal()) {
            (Some(0), _) => Outcome::Healthy,
            (Some(code @ 2..=255), _) if dynamic => Outcome::Weight(code as u32 - 2),
            (Some(code), _) => Outcome::Unhealthy(format!("exited with {code}")),
            (None, Some(sig)) => Outcome::Unhealthy(format!("killed by signal {sig}")),
            (None, None) => Outcome::Unhealthy("ended without a status".into()),
        },
        Ok(Err(e)) => Outcome::Unhealthy(format!("waiting for it: {e}")),
        Err(_) => {
            if let Some(pid) = pid {
                // SAFETY: signals the process group we created for this child only.
                unsafe { libc::kill(-(pid as i32), libc::SIGKILL) };
            }
            let _ = child.wait().await;
            Outcome::Unhealthy(format!("timed out after {timeout:?}"))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn exit_codes_timeouts_and_missing_commands() {
        let t = Duration::from_secs(5);
        assert_eq!(run("exit 0", t, false).await, Outcome::Healthy);
        assert_eq!(
            run("exit 1", t, true).await,
            Outcome::Unhealthy("exited with 1".into())
        );
        assert_eq!(run("exit 12", t, true).await, Outcome::Weight(10));
        assert!(!run("exit 12", t, false).await.ok());
        assert!(!run("/nonexistent/check", t, false).await.ok());
        assert!(!run("kill -9 $$", t, false).await.ok());
        let started = std::time::Instant::now();
        // The group kill also ends the grandchild `sleep`.
        let out = run("sleep 30 & sleep 30", Duration::from_millis(200), false).await;
        assert!(matches!(out, Outcome::Unhealthy(ref m) if m.starts_with("timed out")));
        assert!(started.elapsed() < Duration::from_secs(5));
    }
}
