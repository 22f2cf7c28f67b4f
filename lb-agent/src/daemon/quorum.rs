//! `[quorum]`: the writer decision kept in etcd under a lease (see
//! `lb_agent::decision::quorum` for the rules). One task owns the etcd client: every period
//! (a third of the TTL), at once when a key under the prefix changes (a watch), and at once
//! on a command from the daemon, it runs a *round* — renew the lease (or grant a new one),
//! take the leader key when nobody holds it, make the leader's pending writes, publish this
//! agent's acknowledgements, read everything back (linearizable) — and hands the result to
//! the daemon's loop. Every request is bounded by the period, so a cut-off etcd makes rounds
//! fail, never hang.
//!
//! Keys, under the prefix: `leader` (the deciding agent's name, under its lease),
//! `decision/<service>` (`decision::quorum::Stored` as JSON, no lease: it outlives its
//! writer), `agents/<name>` (the epochs an agent's data plane follows, under its lease),
//! `maintenance/<name>` (the operators' maintenance words the agent holds, under its lease:
//! see `decision::maintenance`).

use std::{collections::BTreeMap, time::Instant};

use anyhow::{Context, Result};
use etcd_client::{
    Client, Compare, CompareOp, ConnectOptions, GetOptions, LeaseKeepAliveStream, LeaseKeeper,
    PutOptions, Txn, TxnOp, WatchOptions, WatchStream,
};
use lb_agent::{
    config::Quorum as QuorumConfig,
    decision::{
        maintenance::MarkSet,
        quorum::{Committed, Observation, Proposal, Quorum, Round, Stored},
    },
};
use tokio::sync::mpsc;

/// What the daemon asks of the task.
#[derive(Debug)]
pub enum Command {
    /// The leader's write (its result shows in the next round).
    Propose(Proposal),
    /// What this agent's data plane follows now.
    Acknowledge(BTreeMap<String, u64>),
    /// The maintenance words this agent holds now.
    Maintenance(MarkSet),
    /// Shutting down: give the leader key up and revoke the lease, so that the other agent
    /// takes over at once instead of after the TTL.
    Resign(tokio::sync::oneshot::Sender<()>),
}

/// What the task reports.
#[derive(Debug)]
pub enum Report {
    Round(Round),
    /// A proposal that did not commit (the compare failed, or etcd did not answer).
    NotCommitted {
        service: String,
        why: String,
    },
}

pub struct QuorumLink {
    pub state: Quorum,
    commands: mpsc::Sender<Command>,
    task: tokio::task::JoinHandle<()>,
    /// Whether the decisions were current at the last look, to log the changes.
    pub was_current: bool,
    /// The acknowledgements last sent.
    acknowledged: Option<BTreeMap<String, u64>>,
    /// Rounds seen, failed rounds, commits that did not happen: for metrics.
    pub rounds: u64,
    pub failed_rounds: u64,
    /// Failed rounds since the last good one (the log repeats the error every tenth).
    pub failing: u64,
}

impl Drop for QuorumLink {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl QuorumLink {
    /// Starts the task; nothing is awaited here (etcd may be unreachable at start: the
    /// agent starts, holds the shared writes, and says "no quorum").
    pub fn open(
        cfg: &QuorumConfig,
        me: String,
        reports: mpsc::Sender<Report>,
    ) -> Result<QuorumLink> {
        let tls = tls_options(cfg)?;
        let (commands, rx) = mpsc::channel(64);
        let state = Quorum::new(me.clone(), cfg.ttl);
        let task = tokio::spawn(run(cfg.clone(), tls, me, rx, reports, state.period()));
        tracing::info!(endpoints = ?cfg.endpoints, ttl = ?cfg.ttl, prefix = %cfg.prefix, "quorum: the writer decision is kept in etcd");
        Ok(QuorumLink {
            state,
            commands,
            task,
            was_current: false,
            acknowledged: None,
            rounds: 0,
            failed_rounds: 0,
            failing: 0,
        })
    }

    pub fn propose(&self, p: Proposal) {
        // A full queue drops the write; the leader proposes again after a TTL.
        let _ = self.commands.try_send(Command::Propose(p));
    }

    /// Publishes what the data plane now follows, when it changed.
    pub fn acknowledge(&mut self) {
        let acks = self.state.acknowledged();
        if self.acknowledged.as_ref() == Some(&acks) {
            return;
        }
        if self
            .commands
            .try_send(Command::Acknowledge(acks.clone()))
            .is_ok()
        {
            self.acknowledged = Some(acks);
        }
    }

    /// Publishes the maintenance words this agent holds (after a change).
    pub fn publish_maintenance(&self, marks: &MarkSet) {
        // A full queue drops it: the next change, or the peer's own copy, carries it.
        let _ = self.commands.try_send(Command::Maintenance(marks.clone()));
    }

    /// Bounded: the agent stops even when etcd does not answer.
    pub async fn resign(&self) {
        let (tx, rx) = tokio::sync::oneshot::channel();
        if self.commands.send(Command::Resign(tx)).await.is_ok() {
            let _ = tokio::time::timeout(std::time::Duration::from_secs(1), rx).await;
        }
    }
}

/// TLS from the configured files (the key file under the secret-file rules).
pub fn tls_options(cfg: &QuorumConfig) -> Result<Option<etcd_client::TlsOptions>> {
    let Some(t) = &cfg.tls else {
        return Ok(None);
    };
    let mut tls = etcd_client::TlsOptions::new();
    if let Some(ca) = &t.ca_file {
        let pem = std::fs::read(ca).with_context(|| format!("quorum.ca_file {}", ca.display()))?;
        tls = tls.ca_certificate(etcd_client::Certificate::from_pem(pem));
    }
    if let Some((cert, key)) = &t.identity {
        let cert_pem =
            std::fs::read(cert).with_context(|| format!("quorum.cert_file {}", cert.display()))?;
        let key_pem = lb_agent::secret::read(key, "quorum key file").map_err(anyhow::Error::msg)?;
        tls = tls.identity(etcd_client::Identity::from_pem(cert_pem, key_pem));
    }
    Ok(Some(tls))
}

/// The task's connection state; the streams are dropped (and rebuilt) on errors that may
/// have broken them. One client per endpoint, used one at a time: etcd-client's balanced
/// channel spreads requests over every endpoint, and a member cut off from the others
/// would then fail every third request; a round instead moves to the next endpoint when
/// its member does not answer.
#[derive(Default)]
struct Session {
    clients: Vec<Option<Client>>,
    /// The endpoint rounds go to.
    at: usize,
    lease: Option<i64>,
    keeper: Option<(LeaseKeeper, LeaseKeepAliveStream)>,
    watch: Option<WatchStream>,
    /// Whether the acknowledgements must be written again (a new lease lost the old key).
    acks_written: bool,
    /// The same for the maintenance words.
    marks_written: bool,
}

async fn run(
    cfg: QuorumConfig,
    tls: Option<etcd_client::TlsOptions>,
    me: String,
    mut commands: mpsc::Receiver<Command>,
    reports: mpsc::Sender<Report>,
    period: std::time::Duration,
) {
    let mut s = Session::default();
    let mut acks: BTreeMap<String, u64> = BTreeMap::new();
    let mut marks = MarkSet::new();
    let mut proposals: Vec<Proposal> = Vec::new();
    let mut tick = tokio::time::interval(period);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let keys = Keys::new(&cfg.prefix);
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            c = commands.recv() => match c {
                None => return,
                Some(Command::Propose(p)) => proposals.push(p),
                Some(Command::Acknowledge(a)) => { acks = a; s.acks_written = false; }
                Some(Command::Maintenance(m)) => { marks = m; s.marks_written = false; }
                Some(Command::Resign(done)) => {
                    let _ = tokio::time::timeout(period, resign(&mut s, &keys, &me)).await;
                    let _ = done.send(());
                    return;
                }
            },
            changed = watched(&mut s.watch) => {
                if !changed {
                    s.watch = None;
                }
            }
        }
        // Whatever else is queued goes into this round.
        while let Ok(c) = commands.try_recv() {
            match c {
                Command::Propose(p) => proposals.push(p),
                Command::Acknowledge(a) => {
                    acks = a;
                    s.acks_written = false;
                }
                Command::Maintenance(m) => {
                    marks = m;
                    s.marks_written = false;
                }
                Command::Resign(done) => {
                    let _ = tokio::time::timeout(period, resign(&mut s, &keys, &me)).await;
                    let _ = done.send(());
                    return;
                }
            }
        }
        let sent = Instant::now();
        let mine = std::mem::take(&mut proposals);
        // Each endpoint in turn, within the period, until one answers.
        let mut result = Err(String::new());
        let mut errors = Vec::new();
        for _ in 0..cfg.endpoints.len() {
            let left = period.saturating_sub(sent.elapsed());
            if left.is_zero() {
                break;
            }
            let endpoint = cfg.endpoints[s.at % cfg.endpoints.len()].clone();
            result = tokio::time::timeout(
                left,
                round(
                    &cfg,
                    &tls,
                    &mut s,
                    &keys,
                    &me,
                    (&acks, &marks),
                    &mine,
                    &reports,
                ),
            )
            .await
            .unwrap_or_else(|_| Err(format!("no answer within {left:?}")));
            match &result {
                Ok(_) => break,
                Err(why) => {
                    errors.push(format!("{endpoint}: {why}"));
                    // Its connection and streams may be half-open after a cut (requests
                    // on them would wait for TCP to give up, minutes): the next endpoint,
                    // and a new connection when this one's turn comes again.
                    if let Some(c) = s.clients.get_mut(s.at % cfg.endpoints.len()) {
                        *c = None;
                    }
                    s.at = (s.at + 1) % cfg.endpoints.len();
                    s.keeper = None;
                    s.watch = None;
                }
            }
        }
        let report = match result {
            Ok(seen) => Round::Seen { sent, seen },
            Err(_) => {
                let why = errors.join("; ");
                for p in mine {
                    let _ = reports
                        .send(Report::NotCommitted {
                            service: p.service,
                            why: why.clone(),
                        })
                        .await;
                }
                Round::Failed(format!("etcd: {why}"))
            }
        };
        if reports.send(Report::Round(report)).await.is_err() {
            return;
        }
    }
}

/// Waits for the next watch event; false when the watch broke (or there is none: then it
/// never returns, and the next round makes one).
async fn watched(w: &mut Option<WatchStream>) -> bool {
    match w {
        Some(w) => matches!(w.message().await, Ok(Some(_))),
        None => std::future::pending().await,
    }
}

struct Keys {
    prefix: String,
    leader: String,
}

impl Keys {
    fn new(prefix: &str) -> Keys {
        Keys {
            prefix: prefix.to_string(),
            leader: format!("{prefix}leader"),
        }
    }
    fn decision(&self, service: &str) -> String {
        format!("{}decision/{service}", self.prefix)
    }
    fn agent(&self, name: &str) -> String {
        format!("{}agents/{name}", self.prefix)
    }
    fn maintenance(&self, name: &str) -> String {
        format!("{}maintenance/{name}", self.prefix)
    }
}

#[allow(clippy::too_many_arguments)]
async fn round(
    cfg: &QuorumConfig,
    tls: &Option<etcd_client::TlsOptions>,
    s: &mut Session,
    keys: &Keys,
    me: &str,
    (acks, marks): (&BTreeMap<String, u64>, &MarkSet),
    proposals: &[Proposal],
    reports: &mpsc::Sender<Report>,
) -> Result<Observation, String> {
    let e = |what: &str, err: etcd_client::Error| format!("{what}: {err}");
    if s.clients.len() != cfg.endpoints.len() {
        s.clients = cfg.endpoints.iter().map(|_| None).collect();
    }
    let at = s.at % cfg.endpoints.len();
    if s.clients[at].is_none() {
        // A third of the period per request: a member that does not answer leaves time
        // for the next one within the round.
        let limit = cfg.ttl / 9;
        let mut opts = ConnectOptions::new()
            .with_timeout(limit)
            .with_connect_timeout(limit)
            .with_require_leader(true);
        if let Some(t) = tls {
            opts = opts.with_tls(t.clone());
        }
        s.clients[at] = Some(
            Client::connect([&cfg.endpoints[at]], Some(opts))
                .await
                .map_err(|err| e("connecting", err))?,
        );
    }
    let client = s.clients[at].as_mut().expect("connected above");
    // 1. The lease: renewed, or granted anew (first round, expired, etcd lost its data).
    let lease = match s.lease {
        Some(id) => {
            if s.keeper.is_none() {
                match client.lease_keep_alive(id).await {
                    Ok(keeper) => s.keeper = Some(keeper),
                    Err(err) if err.to_string().contains("lease not found") => {
                        s.lease = None;
                        return Err("the lease expired (a new one is granted next round)".into());
                    }
                    Err(err) => return Err(e("renewing the lease", err)),
                }
            }
            let (keeper, stream) = s.keeper.as_mut().expect("set above");
            keeper
                .keep_alive()
                .await
                .map_err(|err| e("renewing the lease", err))?;
            // etcd answers an expired lease with ttl 0, or (3.4, after a cut) with the
            // error "lease not found": either way, a new one.
            let alive = match stream.message().await {
                Ok(r) => r.is_some_and(|r| r.ttl() > 0),
                Err(err) if err.to_string().contains("lease not found") => false,
                Err(err) => return Err(e("renewing the lease", err)),
            };
            if !alive {
                s.lease = None;
                s.keeper = None;
                return Err("the lease expired (a new one is granted next round)".into());
            }
            id
        }
        None => {
            let secs = cfg.ttl.as_secs_f64().ceil() as i64;
            let id = client
                .lease_grant(secs, None)
                .await
                .map_err(|err| e("granting a lease", err))?
                .id();
            s.lease = Some(id);
            s.acks_written = false;
            s.marks_written = false;
            id
        }
    };
    // 2. The watch, so that changes start a round at once.
    if s.watch.is_none() {
        s.watch = client
            .watch(keys.prefix.clone(), Some(WatchOptions::new().with_prefix()))
            .await
            .ok();
    }
    // 3. This agent's acknowledgements.
    if !s.acks_written {
        let value = serde_json::to_vec(acks).unwrap_or_default();
        client
            .put(
                keys.agent(me),
                value,
                Some(PutOptions::new().with_lease(lease)),
            )
            .await
            .map_err(|err| e("publishing the acknowledgements", err))?;
        s.acks_written = true;
    }
    // 3b. Its maintenance words (none said: no key).
    if !s.marks_written {
        if !marks.is_empty() {
            let value = serde_json::to_vec(marks).unwrap_or_default();
            client
                .put(
                    keys.maintenance(me),
                    value,
                    Some(PutOptions::new().with_lease(lease)),
                )
                .await
                .map_err(|err| e("publishing the maintenance words", err))?;
        }
        s.marks_written = true;
    }
    // 4. The leader key, when nobody holds it.
    client
        .txn(
            Txn::new()
                .when([Compare::create_revision(
                    keys.leader.clone(),
                    CompareOp::Equal,
                    0,
                )])
                .and_then([TxnOp::put(
                    keys.leader.clone(),
                    me,
                    Some(PutOptions::new().with_lease(lease)),
                )]),
        )
        .await
        .map_err(|err| e("campaigning", err))?;
    // 5. The leader's writes: only while this agent holds the leader key under this lease,
    //    and only over the revision it decided from.
    for p in proposals {
        let key = keys.decision(&p.service);
        let value = serde_json::to_vec(&p.stored).unwrap_or_default();
        let r = client
            .txn(
                Txn::new()
                    .when([
                        Compare::value(keys.leader.clone(), CompareOp::Equal, me),
                        Compare::lease(keys.leader.clone(), CompareOp::Equal, lease),
                        Compare::mod_revision(key.clone(), CompareOp::Equal, p.mod_revision),
                    ])
                    .and_then([TxnOp::put(key, value, None)]),
            )
            .await
            .map_err(|err| e("writing a decision", err))?;
        if !r.succeeded() {
            let _ = reports
                .send(Report::NotCommitted {
                    service: p.service.clone(),
                    why: "the compare failed (no longer leader, or the decision moved)".into(),
                })
                .await;
        }
    }
    // 6. Everything, read back.
    let all = client
        .get(keys.prefix.clone(), Some(GetOptions::new().with_prefix()))
        .await
        .map_err(|err| e("reading the decisions", err))?;
    Ok(observe(keys, all.kvs()))
}

fn observe(keys: &Keys, kvs: &[etcd_client::KeyValue]) -> Observation {
    let mut seen = Observation::default();
    for kv in kvs {
        let Ok(key) = kv.key_str() else { continue };
        if key == keys.leader {
            seen.leader = kv.value_str().ok().map(str::to_string);
        } else if let Some(service) = key.strip_prefix(&format!("{}decision/", keys.prefix)) {
            // A value this agent cannot read is nobody's decision (and shows in status as
            // none); a leader writes it again.
            if let Ok(stored) = serde_json::from_slice::<Stored>(kv.value()) {
                seen.decisions.insert(
                    service.to_string(),
                    Committed {
                        stored,
                        mod_revision: kv.mod_revision(),
                    },
                );
            }
        } else if let Some(agent) = key.strip_prefix(&format!("{}agents/", keys.prefix)) {
            let acks = serde_json::from_slice(kv.value()).unwrap_or_default();
            seen.agents.insert(agent.to_string(), acks);
        } else if let Some(agent) = key.strip_prefix(&format!("{}maintenance/", keys.prefix)) {
            // Unreadable: nobody's words (the agent writes them again with its next change).
            if let Ok(marks) = serde_json::from_slice(kv.value()) {
                seen.maintenance.insert(agent.to_string(), marks);
            }
        }
    }
    seen
}

async fn resign(s: &mut Session, keys: &Keys, me: &str) {
    let at = s.at;
    let (Some(Some(client)), Some(lease)) = (s.clients.get_mut(at), s.lease) else {
        return;
    };
    let _ = client
        .txn(
            Txn::new()
                .when([Compare::value(keys.leader.clone(), CompareOp::Equal, me)])
                .and_then([TxnOp::delete(keys.leader.clone(), None)]),
        )
        .await;
    let _ = client.lease_revoke(lease).await;
}
