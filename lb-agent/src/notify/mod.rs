//! Notifications, decided in one place: `Notifier` says what fires for a VRRP transition, a
//! real server going up or down, and a service losing or regaining its quorum. Notify
//! scripts (keepalived's `notify_master`, `notify_backup`, `notify_fault`, `notify_up`,
//! `notify_down`, `quorum_up`, `quorum_down`) run through `sh -c` in the background with a
//! timeout; `mail` sends alerts through SMTP. A failing or hanging notifier is logged (and a
//! script killed); it never delays the data path or the VRRP loop.

pub mod mail;

use std::{collections::HashSet, time::Duration};

use crate::{
    config::{Config, Service},
    health::state::Flip,
    vrrp::{driver::Transition, instance::State},
};

/// What fires on which event; one mailer, rebuilt with each configuration.
pub struct Notifier {
    mailer: Option<mail::Mailer>,
    /// Services on their sorry server by an operator's switchover: they did not lose their
    /// quorum, so neither `quorum_down` nor (on the way back) `quorum_up` runs for them.
    switched_over: HashSet<String>,
}

impl Notifier {
    pub fn new(cfg: &Config) -> Notifier {
        Notifier {
            mailer: cfg.mail.as_ref().map(mail::Mailer::new),
            switched_over: HashSet::new(),
        }
    }

    /// A reloaded configuration: its mailer; what was switched over stays known.
    pub fn reload(&mut self, cfg: &Config) {
        self.mailer = cfg.mail.as_ref().map(mail::Mailer::new);
    }

    /// notify_master / notify_backup / notify_fault, and e-mail with `smtp_alert`.
    pub fn vrrp(&self, t: &Transition) {
        let script = match t.to {
            State::Master => t.notify.master.as_ref().map(|c| ("notify_master", c)),
            State::Backup => t.notify.backup.as_ref().map(|c| ("notify_backup", c)),
            State::Fault => t.notify.fault.as_ref().map(|c| ("notify_fault", c)),
            State::Initialize => None,
        };
        if let Some((what, command)) = script {
            spawn_script(what, command.clone());
        }
        if t.smtp_alert
            && t.to != State::Initialize
            && let Some(m) = &self.mailer
        {
            let state = format!("{:?}", t.to).to_uppercase();
            m.send(
                format!(
                    "=> VRRP Instance {} - Entering {state} state <=",
                    t.instance
                ),
                format!(
                    "=> VRRP Instance {} is now {state} (was {}): {} <=",
                    t.instance,
                    format!("{:?}", t.from).to_uppercase(),
                    t.reason
                ),
            );
        }
    }

    /// notify_up / notify_down of every real server entry at the flipped address and port,
    /// and one e-mail when any of their services has `smtp_alert`.
    pub fn real(&self, cfg: &Config, f: &Flip) {
        if f.up {
            tracing::info!(real = %f.addr, port = f.port, "real server up");
        } else {
            tracing::warn!(real = %f.addr, port = f.port, reason = f.reason.as_deref().unwrap_or(""), "real server down");
        }
        let mut mail = false;
        for vs in &cfg.services {
            for (_, rs) in vs.members() {
                if rs.address != f.addr || rs.port != f.port {
                    continue;
                }
                let script = if f.up { &rs.notify_up } else { &rs.notify_down };
                if let Some(command) = script {
                    let what = if f.up { "notify_up" } else { "notify_down" };
                    spawn_script(what, command.clone());
                }
                mail |= vs.smtp_alert;
            }
        }
        if let (true, Some(m)) = (mail, &self.mailer) {
            let state = if f.up { "UP" } else { "DOWN" };
            let reason = f
                .reason
                .as_ref()
                .map(|r| format!(": {r}"))
                .unwrap_or_default();
            m.send(
                format!("=> CHECK on service [{}]:{} {state} <=", f.addr, f.port),
                format!(
                    "=> real server [{}]:{} is {state}{reason} <=",
                    f.addr, f.port
                ),
            );
        }
    }

    /// quorum_down when a service moves to its sorry server, quorum_up when it leaves it;
    /// a move by an operator's switchover (`switched`) and its way back are logged, and
    /// e-mailed with `smtp_alert`, but run neither.
    pub fn quorum(&mut self, vs: &Service, using_sorry: bool, switched: bool) {
        // (script, log text, mail subject); a planned move runs no script.
        let (script, text, subject) = if using_sorry && switched {
            self.switched_over.insert(vs.name.clone());
            (
                None,
                "switched over by an operator: the sorry server takes the traffic",
                "SWITCHED OVER",
            )
        } else if !using_sorry && self.switched_over.remove(&vs.name) {
            (
                None,
                "switched back by an operator: back on its real servers",
                "SWITCHED BACK",
            )
        } else if using_sorry {
            (
                Some(("quorum_down", &vs.quorum_down)),
                "lost its quorum: the sorry server takes the traffic",
                "QUORUM DOWN",
            )
        } else {
            (
                Some(("quorum_up", &vs.quorum_up)),
                "is back on its real servers",
                "QUORUM UP",
            )
        };
        tracing::warn!(service = %vs.name, "{text}");
        if let Some((what, Some(command))) = script {
            spawn_script(what, command.clone());
        }
        if vs.smtp_alert
            && let Some(m) = &self.mailer
        {
            m.send(
                format!("=> {} {subject} <=", vs.name),
                format!("{} {text}", vs.name),
            );
        }
    }
}

impl Notifier {
    /// A writer change that may have lost transactions (see `health::risk`): a warning in
    /// the log, the service's `notify_writer_risk` (with `LB_SERVICE`, `LB_REASON`), and an
    /// e-mail with `smtp_alert`.
    pub fn writer_risk(&self, vs: &Service, why: &str) {
        tracing::error!(service = %vs.name, "TRANSACTIONS MAY BE LOST: {why}");
        self.alert_operator(
            vs,
            why.to_string(),
            "WRITER CHANGE: TRANSACTIONS MAY BE LOST",
            why,
        );
    }

    /// A replica of `vs` cannot follow its writer (see `health::follow`): out of the read
    /// pool, automation stopped for it. Logged, and through the same hooks as a writer
    /// change at risk: an operator must look.
    pub fn replica_cannot_follow(&self, vs: &Service, why: &str) {
        tracing::error!(service = %vs.name, "REPLICA CANNOT FOLLOW THE WRITER: {why}");
        self.alert_operator(
            vs,
            format!("replica cannot follow: {why}"),
            "REPLICA CANNOT FOLLOW THE WRITER",
            why,
        );
    }

    /// The service's `notify_writer_risk` (`LB_SERVICE`, `LB_REASON` = `reason`) and, with
    /// `smtp_alert`, an e-mail "=> SERVICE SUBJECT <=" with `body`.
    fn alert_operator(&self, vs: &Service, reason: String, subject: &str, body: &str) {
        if let Some(command) = &vs.notify_writer_risk {
            spawn_script_with(
                "notify_writer_risk",
                command.clone(),
                vec![
                    ("LB_SERVICE".into(), vs.name.clone()),
                    ("LB_REASON".into(), reason),
                ],
            );
        }
        if vs.smtp_alert
            && let Some(m) = &self.mailer
        {
            m.send(format!("=> {} {subject} <=", vs.name), body.to_string());
        }
    }
}

/// How long a notify script may run before it is killed.
pub const SCRIPT_TIMEOUT: Duration = Duration::from_secs(10);

/// Runs `command` in the background (on the current tokio runtime).
pub fn spawn_script(what: &'static str, command: String) {
    spawn_script_with(what, command, vec![]);
}

/// `spawn_script` with variables added to its environment.
pub fn spawn_script_with(what: &'static str, command: String, env: Vec<(String, String)>) {
    tokio::spawn(async move {
        let child = tokio::process::Command::new("sh")
            .arg("-c")
            .arg(&command)
            .envs(env)
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

    /// A switchover is not a lost quorum: neither it nor its way back runs `quorum_down` /
    /// `quorum_up`; a failover afterwards does.
    #[tokio::test]
    async fn a_switchover_runs_no_quorum_script() {
        let dir = std::env::temp_dir().join(format!("lbt{}-notify-q", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let log = dir.join("ran");
        let text = format!(
            r#"
[dataplane]
interface = "eth0"
[[virtual_server]]
name = "write"
address = "10.0.0.100"
port = 3306
quorum_down = "echo down >> {log}"
quorum_up = "echo up >> {log}"
[[virtual_server.real_server]]
address = "10.0.0.1"
[virtual_server.sorry_server]
address = "10.0.0.2"
"#,
            log = log.display()
        );
        let cfg = Config::parse(std::path::Path::new("t.toml"), &text).unwrap();
        let vs = cfg.service("write").unwrap();
        let mut n = Notifier::new(&cfg);
        n.quorum(vs, true, true);
        n.quorum(vs, false, false);
        n.quorum(vs, true, false);
        let ran = async || {
            for _ in 0..100 {
                let text = std::fs::read_to_string(&log).unwrap_or_default();
                if !text.is_empty() {
                    // Any other script would have run by now too.
                    tokio::time::sleep(Duration::from_millis(300)).await;
                    return std::fs::read_to_string(&log).unwrap_or_default();
                }
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            String::new()
        };
        assert_eq!(ran().await.trim(), "down", "only the failover's");
        let _ = std::fs::remove_dir_all(&dir);
    }
}
