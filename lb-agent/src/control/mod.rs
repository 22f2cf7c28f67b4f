//! Status and control: a root-only unix socket speaking one JSON request and one JSON reply
//! per connection; `lb-agent status` is its client. The agent's main loop answers, so every
//! answer reflects one consistent state.

pub mod limits;
pub mod metrics;
pub mod status;

use std::{
    io::{BufRead, BufReader, Write},
    os::unix::fs::DirBuilderExt,
    path::{Path, PathBuf},
    time::Duration,
};

use anyhow::{Context, Result, bail};
use serde::{Deserialize, Serialize};
use tokio::{
    io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt},
    net::UnixListener,
    sync::{mpsc, oneshot},
};

/// Where the socket is when the configuration does not say.
pub const DEFAULT_SOCKET: &str = "/run/lb-agent/control.sock";

pub fn socket_path(configured: Option<&Path>) -> PathBuf {
    configured
        .map(Path::to_path_buf)
        .unwrap_or_else(|| PathBuf::from(DEFAULT_SOCKET))
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(tag = "command", rename_all = "kebab-case")]
pub enum Request {
    Status,
    /// Hand a service's traffic back from its sorry server (`failback = "manual"`).
    Failback {
        service: String,
    },
    /// Read the configuration file again and apply it (what SIGHUP does), answering whether
    /// it was applied or refused and why (`lb-agent reload`, the unit's `ExecReload`).
    Reload,
    /// Let the next stop (within `daemon::RESTART_WINDOW`) leave the data plane forwarding,
    /// the VIPs in place and the leases to expire, as a killed agent would, for the agent
    /// that starts next to adopt: a hitless `systemctl restart` (the package's upgrade).
    PrepareRestart,
    /// Move a service's writes to its sorry server by plan, or back to its writer (`to`)
    /// (`lb-agent switchover`).
    Switchover {
        service: String,
        #[serde(default)]
        to: Option<std::net::IpAddr>,
    },
    /// Drain a server (`on`) or bring it back once caught up (`lb-agent maintenance`).
    Maintenance {
        server: std::net::IpAddr,
        on: bool,
    },
}

/// The main loop's answer, typed: the socket sends it as JSON, the metrics endpoint reads the
/// status directly.
#[derive(Debug)]
pub enum Reply {
    Status(Box<status::Status>),
    Ok(String),
    Error(String),
}

impl Reply {
    pub fn to_json(&self) -> String {
        match self {
            Reply::Status(s) => {
                serde_json::to_string(s).unwrap_or_else(|e| error_json(&e.to_string()))
            }
            Reply::Ok(m) => serde_json::json!({ "ok": m }).to_string(),
            Reply::Error(m) => error_json(m),
        }
    }
}

/// A request waiting for the main loop's answer.
pub type Pending = (Request, oneshot::Sender<Reply>);

/// Binds the socket (replacing a stale one), readable and writable by root only, and serves
/// it: each request goes to `tx`, each answer back to its client.
pub fn serve(path: &Path, tx: mpsc::Sender<Pending>) -> Result<()> {
    if let Some(dir) = path.parent()
        && !dir.exists()
    {
        // Root's alone (an existing directory is the operator's: left as it is).
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)
            .with_context(|| format!("creating {}", dir.display()))?;
    }
    match std::fs::remove_file(path) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(e).with_context(|| format!("removing the stale {}", path.display())),
    }
    // Created with its final mode (0600): never reachable by others, not even for the
    // moment a chmod after the bind would leave. (Start-up runs on one thread: the process
    // umask is ours for this moment.)
    // SAFETY: umask has no failure mode.
    let umask = unsafe { libc::umask(0o177) };
    let bound = UnixListener::bind(path);
    // SAFETY: as above.
    unsafe { libc::umask(umask) };
    let listener = bound.with_context(|| format!("binding {}", path.display()))?;
    let waiting = limits::Waiting::new(&limits::EVICTED_CONTROL);
    tokio::spawn(async move {
        loop {
            let stream = match listener.accept().await {
                Ok((stream, _)) => stream,
                Err(e) => {
                    tracing::warn!(error = %e, "control socket: accept failed; pausing");
                    tokio::time::sleep(limits::ACCEPT_BACKOFF).await;
                    continue;
                }
            };
            let tx = tx.clone();
            let (id, queue) = (waiting.next_id(), waiting.clone());
            let task = tokio::spawn(async move {
                let (r, mut w) = stream.into_split();
                let mut line = String::new();
                let read = tokio::time::timeout(
                    Duration::from_secs(5),
                    tokio::io::BufReader::new(r.take(limits::MAX_REQUEST)).read_line(&mut line),
                )
                .await;
                queue.received(id);
                let reply = match read {
                    Ok(Ok(_))
                        if !line.ends_with('\n') && line.len() as u64 >= limits::MAX_REQUEST =>
                    {
                        error_json(&format!(
                            "request longer than {} bytes",
                            limits::MAX_REQUEST
                        ))
                    }
                    Ok(Ok(_)) => match serde_json::from_str::<Request>(&line) {
                        Ok(req) => {
                            let (otx, orx) = oneshot::channel();
                            if tx.send((req, otx)).await.is_err() {
                                return;
                            }
                            orx.await
                                .map(|r| r.to_json())
                                .unwrap_or_else(|_| error_json("the agent is stopping"))
                        }
                        Err(e) => {
                            error_json(&format!("bad request: {}", limits::short(&e.to_string())))
                        }
                    },
                    _ => error_json("no request within 5 s"),
                };
                let _ = w.write_all(reply.as_bytes()).await;
                let _ = w.write_all(b"\n").await;
            });
            // Before the task first runs (one thread): it cannot have finished yet.
            waiting.admit(id, task.abort_handle()).await;
        }
    });
    Ok(())
}

pub fn error_json(message: &str) -> String {
    serde_json::json!({ "error": message }).to_string()
}

/// Sends one request and returns the JSON reply (the client side).
pub fn ask(path: &Path, req: &Request) -> Result<serde_json::Value> {
    let mut s = std::os::unix::net::UnixStream::connect(path).with_context(|| {
        format!(
            "connecting to {} (is lb-agent running? are you root?)",
            path.display()
        )
    })?;
    s.set_read_timeout(Some(Duration::from_secs(10)))?;
    s.write_all(serde_json::to_string(req)?.as_bytes())?;
    s.write_all(b"\n")?;
    let mut line = String::new();
    BufReader::new(s).read_line(&mut line)?;
    let v: serde_json::Value = serde_json::from_str(&line).context("reading the agent's reply")?;
    if let Some(e) = v.get("error").and_then(|e| e.as_str()) {
        bail!("lb-agent: {e}");
    }
    Ok(v)
}
