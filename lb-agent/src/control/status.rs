//! What `lb-agent status` shows: built from the desired state and the counters, sent as JSON
//! over the control socket, printed as a table by the CLI.

use std::{fmt::Write as _, net::IpAddr};

use serde::{Deserialize, Serialize};
use xdp_ebpf::maps::{REAL_LOCAL, REAL_VALID, SERVICE_ACTIVE};

use crate::{
    balancer::desired::DesiredState,
    config::{Config, Member},
    dataplane::Counters,
    health::verdict::CheckHealth,
    vrrp::status::RouterStatus,
};

/// What a real server does in its service now.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum RealState {
    /// In the pool.
    Up,
    /// No MAC resolved.
    Unresolved,
    /// This host: its frames pass to the local stack.
    Local,
    /// The sorry server, in use.
    Sorry,
    /// The sorry server, not in use.
    Standby,
    /// Weight 0.
    Drained,
    /// Fails its check or role.
    Failed,
    /// Healthy, failback not yet due.
    Pending,
}

impl std::fmt::Display for RealState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.pad(match self {
            RealState::Up => "up",
            RealState::Unresolved => "unresolved",
            RealState::Local => "local",
            RealState::Sorry => "sorry",
            RealState::Standby => "standby",
            RealState::Drained => "drained",
            RealState::Failed => "failed",
            RealState::Pending => "pending",
        })
    }
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Status {
    pub interface: String,
    pub attach_mode: String,
    pub services: Vec<ServiceStatus>,
    /// `XDP_PASS` counts by reason, summed over CPUs.
    pub passes: Vec<(String, u64)>,
    /// Peer load balancers learned from VRRP adverts.
    pub learned_peers: Vec<String>,
    /// VRRP instances: state, priority, counters.
    #[serde(default)]
    pub vrrp: Vec<RouterStatus>,
    /// Times the agent's loop stood still longer than an advert interval, and the longest.
    #[serde(default)]
    pub loop_stalls: u64,
    #[serde(default)]
    pub longest_stall_ms: u64,
    /// The writer decision's quorum (`[quorum]`), when configured.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub quorum: Option<QuorumStatus>,
}

/// The agent's standing with the etcd quorum.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Default)]
pub struct QuorumStatus {
    /// A good round with etcd within two thirds of the TTL: the data plane follows the
    /// committed decisions. Otherwise: "no quorum", the shared writes wait.
    pub connected: bool,
    /// The agent holding the leader key.
    pub leader: Option<String>,
    pub this_agent_leads: bool,
    /// Since the last good round was sent.
    pub since_renewal_ms: Option<u64>,
    /// Why the last round failed, while rounds fail.
    pub last_error: Option<String>,
    /// The committed epoch of each shared service.
    pub epochs: Vec<(String, u64)>,
    pub rounds: u64,
    pub failed_rounds: u64,
    /// This host's servers fenced for want of a quorum.
    pub self_fenced: Vec<IpAddr>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct ServiceStatus {
    pub name: String,
    pub address: IpAddr,
    pub port: u16,
    pub protocol: String,
    /// Forwarding here (VRRP master, or a static configuration).
    pub active: bool,
    pub using_sorry_server: bool,
    /// No writer decided yet: its frames are dropped (the writes wait).
    #[serde(default)]
    pub writes_held: bool,
    #[serde(default)]
    pub held: u64,
    pub packets: u64,
    pub bytes: u64,
    pub new_flows: u64,
    pub passed_local: u64,
    pub passed_inactive: u64,
    pub passed_peer: u64,
    pub no_real: u64,
    pub real_servers: Vec<RealStatus>,
    /// The failback policy.
    #[serde(default)]
    pub failback: String,
    /// Why the sorry server keeps the traffic (failback pending), if it does.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub failback_waiting: Option<String>,
    /// The writer decision shared by the pair, for a service it decides.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub decision: Option<String>,
    /// The last writer change that may have lost transactions (when, why).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub writer_risk: Option<String>,
    /// Writer changes that may have lost transactions since the agent started.
    #[serde(default)]
    pub writer_risks: u64,
    /// The replicas that follow this service's writer (`replicas`), as the deciding agent
    /// sees them.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub replicas: Vec<ReplicaStatus>,
    /// A planned switchover (`lb-agent switchover`): `under way: ...`, `switched over`, or
    /// `failed: ...` (the last one, until the next).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub switchover: Option<String>,
}

/// A replica that follows a service's writer (see `health::follow`).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct ReplicaStatus {
    pub address: IpAddr,
    /// following | repointing | waiting | cannot-follow | unknown.
    pub phase: String,
    /// Whom it replicates from, as its check read it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source: Option<String>,
    /// Why it waits or cannot follow.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub why: Option<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct RealStatus {
    pub address: IpAddr,
    pub weight: u32,
    pub state: RealState,
    pub health: CheckHealth,
    /// Why it takes no traffic: its check failed, or it does not fill the service's role.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// What its MySQL check read.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mysql: Option<String>,
    /// Semi-synchronous replication as its MySQL check read it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub semisync: Option<crate::health::mysql::SemiSync>,
    pub mac: Option<String>,
    pub packets: u64,
    pub bytes: u64,
    pub new_flows: u64,
}

fn mac_string(o: [u8; 6]) -> String {
    crate::config::Mac(o).to_string()
}

/// Builds the status of `state` (computed from `cfg`) with `counters`.
pub fn build(cfg: &Config, state: &DesiredState, counters: &Counters, attach_mode: &str) -> Status {
    let svc_counters = |id: u32| {
        counters
            .services
            .iter()
            .find(|(i, _)| *i == id)
            .map(|(_, s)| *s)
            .unwrap_or_default()
    };
    let real_counters = |id: u32| {
        counters
            .reals
            .iter()
            .find(|(i, _)| *i == id)
            .map(|(_, s)| *s)
            .unwrap_or_default()
    };
    let mut services = Vec::new();
    for ds in &state.services {
        let Some(vs) = cfg.service(&ds.name) else {
            continue;
        };
        let c = svc_counters(ds.id);
        let mut reals = Vec::new();
        for (member, rs) in vs.members() {
            let is_sorry = member == Member::Sorry;
            let Some(&(id, _)) = state.known.get(&rs.address) else {
                continue;
            };
            let real = state.reals.get(&id).map(|(_, r)| *r).unwrap_or_default();
            let in_pool = ds.members.contains(&id);
            let st = match (is_sorry, in_pool) {
                (true, true) => RealState::Sorry,
                (true, false) => RealState::Standby,
                _ if real.flags & REAL_VALID == 0 => RealState::Unresolved,
                _ if rs.weight == 0 => RealState::Drained,
                _ if real.flags & REAL_LOCAL != 0 => RealState::Local,
                _ => RealState::Up,
            };
            let rc = real_counters(id);
            reals.push(RealStatus {
                address: rs.address,
                weight: rs.weight,
                state: st,
                health: CheckHealth::Unchecked,
                reason: None,
                mysql: None,
                semisync: None,
                mac: (real.flags & REAL_VALID != 0 && real.flags & REAL_LOCAL == 0)
                    .then(|| mac_string(real.mac.octets)),
                packets: rc.packets,
                bytes: rc.bytes,
                new_flows: rc.new_flows,
            });
        }
        services.push(ServiceStatus {
            name: ds.name.clone(),
            address: vs.address,
            port: vs.port,
            protocol: vs.protocol.to_string(),
            active: ds.flags & SERVICE_ACTIVE != 0,
            using_sorry_server: ds.using_sorry,
            writes_held: ds.flags & xdp_ebpf::maps::SERVICE_HOLD != 0,
            held: c.held,
            packets: c.packets,
            bytes: c.bytes,
            new_flows: c.new_flows,
            passed_local: c.passed_local,
            passed_inactive: c.passed_inactive,
            passed_peer: c.passed_peer,
            no_real: c.no_real,
            real_servers: reals,
            failback: vs.failback.name().into(),
            failback_waiting: None,
            decision: None,
            writer_risk: None,
            writer_risks: 0,
            replicas: vec![],
            switchover: None,
        });
    }
    Status {
        interface: cfg.dataplane.interface.clone(),
        attach_mode: attach_mode.into(),
        services,
        passes: counters
            .passes
            .iter()
            .map(|(r, n)| (r.name().to_string(), *n))
            .collect(),
        learned_peers: vec![],
        vrrp: vec![],
        loop_stalls: 0,
        longest_stall_ms: 0,
        quorum: None,
    }
}

/// Adds what the health checks say, service by service.
pub fn add_health(s: &mut Status, health: &[crate::health::verdict::ServiceHealth]) {
    for svc in &mut s.services {
        let Some(h) = health.iter().find(|h| h.name == svc.name) else {
            continue;
        };
        svc.failback_waiting = h.waiting.clone();
        svc.writer_risk = h.writer_risk.clone();
        svc.writer_risks = h.writer_risks;
        let using_sorry = svc.using_sorry_server;
        for r in &mut svc.real_servers {
            let Some(rh) = h
                .reals
                .iter()
                .chain(h.sorry.iter())
                .find(|x| x.address == r.address)
            else {
                continue;
            };
            r.health = rh.health;
            r.reason = rh.reason.clone();
            r.mysql = rh.mysql.clone();
            r.semisync = rh.semisync.clone();
            let in_service = matches!(r.state, RealState::Up | RealState::Local);
            if !rh.usable && in_service {
                r.state = RealState::Failed;
            } else if using_sorry && in_service {
                // Healthy, but the failback policy has not handed the traffic back yet.
                r.state = RealState::Pending;
            }
        }
    }
}

/// The human form of a status.
pub fn render(s: &Status) -> String {
    let mut out = String::new();
    let _ = writeln!(out, "interface {} (XDP {})", s.interface, s.attach_mode);
    for r in &s.vrrp {
        render_vrrp(&mut out, r);
    }
    for svc in &s.services {
        render_service(&mut out, svc);
    }
    let passes: Vec<String> = s
        .passes
        .iter()
        .filter(|(_, n)| *n > 0)
        .map(|(r, n)| format!("{r} {n}"))
        .collect();
    let _ = writeln!(
        out,
        "\npassed to the kernel: {}",
        if passes.is_empty() {
            "none".into()
        } else {
            passes.join(", ")
        }
    );
    if !s.learned_peers.is_empty() {
        let _ = writeln!(
            out,
            "peer load balancers learned: {}",
            s.learned_peers.join(", ")
        );
    }
    out
}

/// Addresses of learned peers, for the status.
pub fn peers(macs: &[xdp_ebpf::maps::MacAddr]) -> Vec<String> {
    macs.iter().map(|m| mac_string(m.octets)).collect()
}

/// One line per VRRP instance.
fn render_vrrp(out: &mut String, r: &RouterStatus) {
    let discards: Vec<String> = r.discards.iter().map(|(d, n)| format!("{d} {n}")).collect();
    let _ = writeln!(
        out,
        "vrrp {}: {} (priority {}, master {}, addresses {}), adverts sent {} received {}, became master {} time(s){}",
        r.name,
        r.state,
        r.priority,
        r.master.map_or("unknown".to_string(), |m| m.to_string()),
        if r.addresses.is_empty() {
            "none".to_string()
        } else {
            r.addresses
                .iter()
                .map(|a| a.to_string())
                .collect::<Vec<_>>()
                .join(" ")
        },
        r.adverts_sent,
        r.adverts_received,
        r.became_master,
        if discards.is_empty() {
            String::new()
        } else {
            format!(", discarded: {}", discards.join(", "))
        }
    );
}

/// A service's line and its real servers' table.
fn render_service(out: &mut String, svc: &ServiceStatus) {
    let addr = match svc.address {
        IpAddr::V4(a) => format!("{a}:{}", svc.port),
        IpAddr::V6(a) => format!("[{a}]:{}", svc.port),
    };
    let _ = writeln!(
        out,
        "\n{} {}/{} {}{}  packets {}  bytes {}  new flows {}",
        svc.name,
        addr,
        svc.protocol,
        if svc.active { "active" } else { "inactive" },
        if svc.using_sorry_server {
            ", SORRY SERVER"
        } else {
            ""
        },
        svc.packets,
        svc.bytes,
        svc.new_flows
    );
    let _ = writeln!(
        out,
        "  {:<40} {:>6} {:<11} {:<10} {:<17} {:>10} {:>12} {:>9}",
        "real server", "weight", "state", "health", "mac", "packets", "bytes", "new flows"
    );
    for r in &svc.real_servers {
        let _ = writeln!(
            out,
            "  {:<40} {:>6} {:<11} {:<10} {:<17} {:>10} {:>12} {:>9}",
            r.address.to_string(),
            r.weight,
            r.state,
            r.health,
            r.mac.as_deref().unwrap_or("-"),
            r.packets,
            r.bytes,
            r.new_flows
        );
        if let Some(why) = &r.reason {
            let _ = writeln!(out, "    reason: {why}");
        }
        if let Some(m) = &r.mysql {
            let _ = writeln!(out, "    mysql: {m}");
        }
    }
    let _ = writeln!(
        out,
        "  failback: {}{}",
        svc.failback,
        svc.failback_waiting
            .as_ref()
            .map(|w| format!(" — {w}"))
            .unwrap_or_default()
    );
    if let Some(d) = &svc.decision {
        let _ = writeln!(out, "  writer decision: {d}");
    }
    if let Some(r) = &svc.writer_risk {
        let _ = writeln!(
            out,
            "  TRANSACTIONS MAY BE LOST ({} writer change(s) at risk), last: {r}",
            svc.writer_risks
        );
    }
    for r in &svc.replicas {
        let _ = writeln!(
            out,
            "  replica {}: {}{}{}",
            r.address,
            r.phase,
            r.source
                .as_ref()
                .map(|s| format!(", replicates from {s}"))
                .unwrap_or_default(),
            r.why
                .as_ref()
                .map(|w| format!(" — {w}"))
                .unwrap_or_default()
        );
    }
}
