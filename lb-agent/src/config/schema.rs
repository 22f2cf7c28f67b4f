//! The configuration schema. Field names follow keepalived's where one exists, so that a
//! keepalived user recognises them; durations are strings (`"1s"`, `"200ms"`).
//!
//! This is the file format only: every table denies unknown keys, and what a key means when
//! it is omitted is applied once, in `model` (the resolved configuration every other module
//! reads).

use std::{collections::BTreeMap, fmt, net::IpAddr, path::PathBuf, time::Duration};

use serde::{Deserialize, Deserializer, Serialize, Serializer};
use toml::Spanned;

use super::types::{DurationStr, Mac, Protocol, XdpModeSetting};

fn is_default<T: Default + PartialEq>(v: &T) -> bool {
    *v == T::default()
}

/// A configuration file as written.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct File {
    #[serde(default, skip_serializing_if = "is_default")]
    pub global: Global,
    pub dataplane: Dataplane,
    /// Named checks (`[check.NAME]`), referenced as `check = "NAME"` by real servers and as
    /// `default_check = "NAME"` by services.
    #[serde(default, rename = "check", skip_serializing_if = "BTreeMap::is_empty")]
    pub checks: BTreeMap<String, Check>,
    #[serde(
        default,
        rename = "vrrp_instance",
        skip_serializing_if = "Vec::is_empty"
    )]
    pub vrrp_instances: Vec<Spanned<VrrpInstance>>,
    #[serde(
        default,
        rename = "vrrp_sync_group",
        skip_serializing_if = "Vec::is_empty"
    )]
    pub sync_groups: Vec<Spanned<SyncGroup>>,
    #[serde(default, rename = "vrrp_script", skip_serializing_if = "Vec::is_empty")]
    pub vrrp_scripts: Vec<Spanned<VrrpScript>>,
    #[serde(
        default,
        rename = "virtual_server",
        skip_serializing_if = "Vec::is_empty"
    )]
    pub virtual_servers: Vec<Spanned<VirtualServer>>,
    /// The other agent(s) of the pair: where the writer decision is exchanged.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pair: Option<Pair>,
    /// The writer decision under a lease in etcd: a third vote for partitions.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub quorum: Option<Spanned<Quorum>>,
}

/// `[quorum]`: the writer decision of every service with a sorry server is an etcd key
/// under the deciding agent's lease (see `decision::quorum`); an agent that cannot renew
/// its lease holds the writes and fences its own server before the lease can expire.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Quorum {
    /// etcd client URLs (`http://10.1.1.113:2379`, `https://...` with TLS) or `host:port`.
    pub endpoints: Vec<String>,
    /// The lease's time to live (default 3 s): a cut-off agent fences itself within two
    /// thirds of it, and another takes the decision only once it has expired.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ttl: Option<DurationStr>,
    /// Where the keys live (default `/lb-agent/`): one prefix per pair of agents.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prefix: Option<String>,
    /// The CA that signed the etcd members' certificates (TLS).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ca_file: Option<PathBuf>,
    /// This agent's client certificate and its key (owner-only), for client authentication.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cert_file: Option<PathBuf>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key_file: Option<PathBuf>,
}

/// `[pair]`: the agents exchange the writer decision of every service with a sorry server
/// (see `decision`), in HMAC-SHA256-authenticated UDP datagrams.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Pair {
    /// The other agents' addresses (datagrams from anywhere else are dropped).
    pub peers: Vec<IpAddr>,
    /// The shared secret (owner-only: not group- or world-readable), the same on every agent.
    pub key_file: PathBuf,
    #[serde(
        default = "default_pair_port",
        skip_serializing_if = "is_default_pair_port"
    )]
    pub port: u16,
}

fn default_pair_port() -> u16 {
    5406
}

fn is_default_pair_port(p: &u16) -> bool {
    *p == default_pair_port()
}

/// keepalived's `global_defs`, and the agent's own operational endpoints.
#[derive(Debug, Clone, PartialEq, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Global {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub router_id: Option<String>,
    /// Where state-change e-mails go.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub notification_email: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub notification_email_from: Option<String>,
    /// `host` or `host:port` (port 25 when omitted).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub smtp_server: Option<String>,
    /// keepalived's `smtp_connect_timeout`; 30 s when omitted.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub smtp_connect_timeout: Option<DurationStr>,
    /// `address:port` of the Prometheus text endpoint (a bare port: on loopback); none when
    /// omitted.
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        deserialize_with = "port_or_address"
    )]
    pub metrics_listen: Option<std::net::SocketAddr>,
    /// A file whose first line is the bearer token a scrape must present (owner-only, like
    /// the password files); none: the endpoint answers anyone who reaches it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub metrics_token_file: Option<PathBuf>,
    /// The root-only control socket (`lb-agent status` talks to it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub control_socket: Option<PathBuf>,
}

/// Where and how the XDP program runs.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Dataplane {
    /// The interface that receives VIP traffic and reaches the real servers.
    pub interface: String,
    /// `auto` (driver, falling back to skb), `driver` or `skb`.
    #[serde(default, skip_serializing_if = "is_default")]
    pub xdp_mode: XdpModeSetting,
    /// Further destination MACs that mean "this host" (VRRP virtual MACs with `use_vmac`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub extra_macs: Vec<Mac>,
    /// Source MACs of the peer load balancer(s): frames they forwarded are never forwarded
    /// again. Peers are also learned from VRRP adverts of `vrids` and of the VRRP instances.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub peer_macs: Vec<Mac>,
    /// Further VRRP router ids whose adverts identify peer load balancers.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub vrids: Vec<u8>,
    /// bpffs directory for pinned maps (created, and bpffs mounted, if missing).
    #[serde(
        default = "default_pin_dir",
        skip_serializing_if = "is_default_pin_dir"
    )]
    pub pin_dir: PathBuf,
    /// Idle timeouts of connection-table entries, as IPVS has them (`ipvsadm --set`).
    #[serde(default, skip_serializing_if = "is_default")]
    pub timeouts: ConnTimeouts,
}

/// `[dataplane.timeouts]`: how long a connection entry keeps its flow on its real server
/// without a frame. Defaults are IPVS's.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct ConnTimeouts {
    /// A TCP connection that has not ended (IPVS `tcp`, 15 min).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tcp: Option<DurationStr>,
    /// After the client's FIN (IPVS `tcpfin`, 2 min).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tcp_fin: Option<DurationStr>,
    /// After the client's RST (IPVS `close`, 10 s).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tcp_close: Option<DurationStr>,
    /// A UDP flow (IPVS `udp`, 5 min).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub udp: Option<DurationStr>,
}

fn default_pin_dir() -> PathBuf {
    PathBuf::from("/sys/fs/bpf/lb-agent")
}

fn is_default_pin_dir(p: &PathBuf) -> bool {
    *p == default_pin_dir()
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum InitialState {
    Master,
    #[default]
    Backup,
}

/// One VRRP router (keepalived's `vrrp_instance`).
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct VrrpInstance {
    pub name: String,
    /// keepalived's `state`: the state to start in (a higher priority still wins).
    #[serde(default, skip_serializing_if = "is_default")]
    pub state: InitialState,
    pub interface: String,
    pub virtual_router_id: u8,
    /// 1–254; 255 only for the owner of every virtual address.
    #[serde(default = "default_priority")]
    pub priority: u8,
    /// keepalived's `advert_int`. VRRPv2: whole seconds; v3: a multiple of 10 ms.
    #[serde(default = "default_advert")]
    pub advert_interval: DurationStr,
    /// 2 (RFC 3768) or 3 (RFC 5798).
    #[serde(default = "default_version")]
    pub version: u8,
    /// `auth_type PASS` with this password (VRRPv2 only; at most 8 bytes).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub auth_pass: Option<String>,
    /// `false` = keepalived's `nopreempt`.
    #[serde(default = "yes", skip_serializing_if = "is_true")]
    pub preempt: bool,
    #[serde(default, skip_serializing_if = "is_default")]
    pub preempt_delay: DurationStr,
    /// Source address for unicast adverts (`unicast_src_ip`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub unicast_src: Option<IpAddr>,
    /// Unicast peers (`unicast_peer`); multicast when empty.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub unicast_peers: Vec<IpAddr>,
    /// Accept adverts from the unicast peers only (keepalived's `check_unicast_src`); others
    /// are discarded and counted (`unknown_source`).
    #[serde(default, skip_serializing_if = "is_default")]
    pub check_unicast_src: bool,
    /// Accept adverts only from these addresses (with multicast too; added to the unicast
    /// peers with `check_unicast_src`). Empty: from anyone on the segment.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub accept_sources: Vec<IpAddr>,
    #[serde(
        default,
        rename = "virtual_address",
        skip_serializing_if = "Vec::is_empty"
    )]
    pub virtual_addresses: Vec<VirtualAddress>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub notify_master: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub notify_backup: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub notify_fault: Option<String>,
    /// E-mail every state change to `global.notification_email` (keepalived's `smtp_alert`).
    #[serde(default, skip_serializing_if = "is_default")]
    pub smtp_alert: bool,
    /// Gratuitous ARPs (unsolicited NAs for IPv6) per VIP sent at once on becoming master.
    #[serde(default = "five", skip_serializing_if = "is_five")]
    pub garp_master_repeat: u32,
    /// A second burst this long after becoming master (switches that missed the first);
    /// "0s" = none.
    #[serde(default = "five_seconds", skip_serializing_if = "is_five_seconds")]
    pub garp_master_delay: DurationStr,
    /// While master, a burst every this long; "0s" (the default) = none.
    #[serde(default, skip_serializing_if = "is_default")]
    pub garp_master_refresh: DurationStr,
    /// Messages per VIP in each refresh burst.
    #[serde(default = "one", skip_serializing_if = "is_one")]
    pub garp_master_refresh_repeat: u32,
    /// Gratuitous ARPs per VIP when, as master, it hears a lower-priority advert (two
    /// masters: the other one's announcements may have moved clients); default
    /// `garp_master_repeat`, 0 = none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub garp_lower_prio_repeat: Option<u32>,
    /// And again this long after; default `garp_master_delay`, "0s" = once only.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub garp_lower_prio_delay: Option<DurationStr>,
    /// Do not answer a lower-priority advert with an advert of our own (RFC behaviour;
    /// keepalived answers by default).
    #[serde(default, skip_serializing_if = "is_default")]
    pub lower_prio_no_advert: bool,
    /// Send one more advert on hearing a higher-priority one, before becoming backup: the
    /// higher master then hears of the other one (and re-announces) whichever advert
    /// crossed first after two masters. On by default (keepalived: off).
    #[serde(default = "yes", skip_serializing_if = "is_true")]
    pub higher_prio_send_advert: bool,
    /// Interfaces whose state moves the priority (or, with weight 0, faults the instance).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub track_interface: Vec<Track>,
    /// `vrrp_script`s whose result moves the priority (or, with weight 0, faults the instance).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub track_script: Vec<Track>,
}

/// A tracked interface or script, with keepalived's weight semantics: 0 = Fault while it is
/// down; > 0 = added to the priority while it is up; < 0 = added while it is down.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Track {
    pub name: String,
    /// For a script: its own `weight` when omitted; for an interface: 0.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub weight: Option<i32>,
}

/// keepalived's `vrrp_script`: a command run every `interval`; exit 0 = up.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct VrrpScript {
    pub name: String,
    pub script: String,
    #[serde(default = "default_advert")]
    pub interval: DurationStr,
    /// Killed (and counted as a failure) after this long; `interval` when omitted.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout: Option<DurationStr>,
    /// -253..=253; see `Track`.
    #[serde(default, skip_serializing_if = "is_default")]
    pub weight: i32,
    /// Successes in a row before a failed script counts as up again.
    #[serde(default = "one", skip_serializing_if = "is_one")]
    pub rise: u32,
    /// Failures in a row before it counts as down.
    #[serde(default = "one", skip_serializing_if = "is_one")]
    pub fall: u32,
    /// Start as down until `rise` successes (keepalived's `init_fail`).
    #[serde(default, skip_serializing_if = "is_default")]
    pub init_fail: bool,
}

fn five() -> u32 {
    5
}
fn is_five(v: &u32) -> bool {
    *v == 5
}
fn five_seconds() -> DurationStr {
    DurationStr(Duration::from_secs(5))
}
fn is_five_seconds(v: &DurationStr) -> bool {
    v.0 == Duration::from_secs(5)
}

fn default_priority() -> u8 {
    100
}
fn default_advert() -> DurationStr {
    DurationStr(Duration::from_secs(1))
}
fn default_version() -> u8 {
    2
}
fn yes() -> bool {
    true
}
fn is_true(b: &bool) -> bool {
    *b
}

/// A VIP held by a VRRP instance: `10.1.1.176 dev eth0 label eth0:1` in keepalived.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct VirtualAddress {
    pub address: IpAddr,
    /// Prefix length; /32 or /128 when omitted.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prefix: Option<u8>,
    /// The device; the instance's interface when omitted.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub device: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub label: Option<String>,
}

/// Instances that change state together (keepalived's `vrrp_sync_group`).
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct SyncGroup {
    pub name: String,
    pub members: Vec<String>,
}

/// How a new flow picks its real server. All are served by the weighted Maglev table:
/// `rr` and `wrr` spread flows by weight as IPVS does on average (without its per-LB
/// counters, which two LBs could never share), `sh` is what Maglev is (a hash of the flow).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Algorithm {
    #[default]
    Maglev,
    Rr,
    Wrr,
    Sh,
}

/// Forwarding method: direct routing only (`lb_kind DR`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Forwarding {
    #[default]
    Dr,
}

/// When a recovered real server gets its traffic back from the sorry server.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Failback {
    /// As soon as it is healthy (keepalived's behaviour).
    #[default]
    Immediate,
    /// Only on `lb-agent failback SERVICE`.
    Manual,
    /// After `failback_delay` of uninterrupted health.
    Delay,
    /// When its replication from the sorry server has caught up (MySQL).
    CaughtUp,
}

impl Failback {
    /// As the configuration spells it.
    pub fn name(self) -> &'static str {
        match self {
            Failback::Immediate => "immediate",
            Failback::Manual => "manual",
            Failback::Delay => "delay",
            Failback::CaughtUp => "caught-up",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct VirtualServer {
    /// A name for logs, status and `lb-agent failback`; defaults to `address:port/protocol`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    pub address: IpAddr,
    /// 0 = every port of the VIP.
    pub port: u16,
    #[serde(default, skip_serializing_if = "is_default")]
    pub protocol: Protocol,
    #[serde(default, skip_serializing_if = "is_default")]
    pub algorithm: Algorithm,
    #[serde(default, skip_serializing_if = "is_default")]
    pub forwarding: Forwarding,
    /// Client-IP affinity (IPVS `persistence_timeout`); 0 = none.
    #[serde(default, skip_serializing_if = "is_default")]
    pub persistence_timeout: DurationStr,
    /// The check of every real server and the sorry server that names none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub default_check: Option<CheckRef>,
    /// How often each real server is checked (keepalived's `delay_loop`); 1 s when omitted.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub check_interval: Option<DurationStr>,
    /// Fewer healthy real servers than this: the sorry server takes the traffic.
    #[serde(default = "one", skip_serializing_if = "is_one")]
    pub quorum: u32,
    #[serde(default, skip_serializing_if = "is_default")]
    pub failback: Failback,
    /// With `failback = "delay"`: how long the server must stay healthy.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub failback_delay: Option<DurationStr>,
    /// What the real servers must be (MySQL checks): writable, or replicas within `max_lag`.
    #[serde(default, skip_serializing_if = "is_default")]
    pub role: Role,
    /// With `role = "replica"`: the most a real server may lag; 10 s when omitted.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_lag: Option<DurationStr>,
    /// Before writes go back from the sorry server, make it read-only until the recovered
    /// writer has executed everything in its binary log, then flip and make it writable again:
    /// not one write lands on the wrong side (the check user needs `READ_ONLY ADMIN` or
    /// `SUPER`). Needs `role = "writer"` and `mysql` checks.
    #[serde(default, skip_serializing_if = "is_default")]
    pub graceful: bool,
    /// When writes move to the sorry server and the old writer still answers, set it
    /// `read_only=1` so that no client connected to it directly writes to both sides; the
    /// handover back makes it writable again. Needs `role = "writer"` and `mysql` checks.
    #[serde(default, skip_serializing_if = "is_default")]
    pub fence: bool,
    /// A failed real server keeps its slot with weight 0 (no new flows) instead of leaving.
    #[serde(default, skip_serializing_if = "is_default")]
    pub inhibit_on_failure: bool,
    /// Forward for this service now. VRRP drives this once configured; a static config
    /// forwards.
    #[serde(default = "yes", skip_serializing_if = "is_true")]
    pub active: bool,
    #[serde(default, rename = "real_server", skip_serializing_if = "Vec::is_empty")]
    pub real_servers: Vec<Spanned<RealServer>>,
    /// Used when fewer than `quorum` real servers are usable.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sorry_server: Option<Spanned<RealServer>>,
    /// Run when the quorum is regained / lost (keepalived's `quorum_up` / `quorum_down`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub quorum_up: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub quorum_down: Option<String>,
    /// Run when a writer change may have lost transactions (asynchronous replication, an old
    /// writer that does not answer, a failback without `caught-up`); the service name and the
    /// reason are in `LB_SERVICE` and `LB_REASON`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub notify_writer_risk: Option<String>,
    /// E-mail real-server and quorum changes to `global.notification_email`.
    #[serde(default, skip_serializing_if = "is_default")]
    pub smtp_alert: bool,
    /// Replicas that follow whichever server has this service's writes: re-pointed to it
    /// after every writer change, when it has everything they have (see README: Replicas).
    /// Each must be a real server of some service with a `mysql` check (its state is read
    /// there); needs a sorry server and `[virtual_server.replication]`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub replicas: Vec<IpAddr>,
    /// How the replicas log in to the writer when re-pointed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub replication: Option<Replication>,
}

/// `[virtual_server.replication]`: the replicas' login to the writer
/// (`CHANGE MASTER TO MASTER_USER=…`) and the re-pointing's time rules.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Replication {
    pub user: String,
    /// A file holding the password: owned by root (or the agent's user), mode 0600 or 0400.
    pub password_file: PathBuf,
    /// The writer's MySQL port; the service port when omitted.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub port: Option<u16>,
    /// A re-pointed replica must run both replication threads within this; 10 s when
    /// omitted. Otherwise it leaves the read pool and automation stops for it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub start_timeout: Option<DurationStr>,
    /// The block period: no re-pointing until the writes have stayed on one server this
    /// long, and no second re-pointing of one replica within it; 10 s when omitted.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub block: Option<DurationStr>,
}

fn one() -> u32 {
    1
}
fn is_one(v: &u32) -> bool {
    *v == 1
}

#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct RealServer {
    pub address: IpAddr,
    /// Must equal the service port in DR mode (the data plane rewrites no port).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub port: Option<u16>,
    #[serde(default = "one", skip_serializing_if = "is_one")]
    pub weight: u32,
    /// A fixed MAC; otherwise it is resolved through the kernel's neighbour table.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mac: Option<Mac>,
    /// A check inline, or the name of a `[check.NAME]`; the service's `default_check` when
    /// omitted.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub check: Option<CheckRef>,
    /// Run when the server comes up / goes down (keepalived's `notify_up` / `notify_down`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub notify_up: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub notify_down: Option<String>,
}

/// A health check of a real server. Every kind takes `interval` (the service's
/// `check_interval` when omitted), `rise` and `fall` (1 when omitted: keepalived's behaviour).
#[derive(Debug, Clone, PartialEq, Eq, Hash, Deserialize, Serialize)]
#[serde(tag = "type", rename_all = "lowercase", deny_unknown_fields)]
pub enum Check {
    /// keepalived's `TCP_CHECK`: a TCP connect.
    Tcp {
        #[serde(default, skip_serializing_if = "Option::is_none")]
        connect_port: Option<u16>,
        /// 3 s when omitted.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        connect_timeout: Option<DurationStr>,
        /// Attempts before the server counts as failed (`retry` / `nb_get_retry`); 1 when
        /// omitted.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        retry: Option<u32>,
        /// Pause between attempts; 1 s when omitted.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        delay_before_retry: Option<DurationStr>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        interval: Option<DurationStr>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        rise: Option<u32>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        fall: Option<u32>,
    },
    /// keepalived's `MISC_CHECK`: exit 0 healthy, 1 unhealthy, 2–255 (with `dynamic`) a new
    /// weight of exit code − 2.
    Exec {
        command: String,
        /// 5 s when omitted.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        timeout: Option<DurationStr>,
        #[serde(default, skip_serializing_if = "is_default")]
        dynamic: bool,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        interval: Option<DurationStr>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        rise: Option<u32>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        fall: Option<u32>,
    },
    /// Log in to MySQL/MariaDB, read `read_only`, GTIDs and replication state, COM_QUIT.
    Mysql {
        /// The real server's port when omitted.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        port: Option<u16>,
        user: String,
        /// A file holding the password: owned by root (or the agent's user), mode 0600 or 0400.
        password_file: PathBuf,
        /// For the whole check (connect, log in, queries, quit); 1 s when omitted.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        timeout: Option<DurationStr>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        interval: Option<DurationStr>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        rise: Option<u32>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        fall: Option<u32>,
    },
}

impl Check {
    /// (interval, rise, fall) as written.
    pub fn timing(&self) -> (Option<Duration>, Option<u32>, Option<u32>) {
        let (interval, rise, fall) = match self {
            Check::Tcp {
                interval,
                rise,
                fall,
                ..
            }
            | Check::Exec {
                interval,
                rise,
                fall,
                ..
            }
            | Check::Mysql {
                interval,
                rise,
                fall,
                ..
            } => (interval, rise, fall),
        };
        (interval.map(|d| d.0), *rise, *fall)
    }
}

/// A real server's check: written inline (`check = { type = "tcp" }` or a
/// `[virtual_server.real_server.check]` table), or the name of a `[check.NAME]`.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum CheckRef {
    Named(String),
    Inline(Check),
}

impl Serialize for CheckRef {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self {
            CheckRef::Named(n) => s.serialize_str(n),
            CheckRef::Inline(c) => c.serialize(s),
        }
    }
}

/// By hand rather than `untagged`: an inline check keeps the errors of `Check` itself
/// ("unknown variant `http`", "unknown field `bogus`").
impl<'de> Deserialize<'de> for CheckRef {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> serde::de::Visitor<'de> for V {
            type Value = CheckRef;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a check table, or the name of a [check.NAME]")
            }
            fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<CheckRef, E> {
                Ok(CheckRef::Named(v.to_string()))
            }
            fn visit_map<A: serde::de::MapAccess<'de>>(self, map: A) -> Result<CheckRef, A::Error> {
                Check::deserialize(serde::de::value::MapAccessDeserializer::new(map))
                    .map(CheckRef::Inline)
            }
        }
        d.deserialize_any(V)
    }
}

/// What a service demands of its MySQL real servers beyond answering.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// Answering its check is enough.
    #[default]
    Any,
    /// Writable (`read_only=0`, `super_read_only=0`): the write VIP.
    Writer,
    /// Replicating with both threads running and at most `max_lag` behind: the read VIP.
    Replica,
}

/// `metrics_listen`: `address:port`, or a bare port (`9100`, `":9100"`) for loopback — the
/// safe default for an endpoint without authentication.
fn port_or_address<'de, D>(d: D) -> Result<Option<std::net::SocketAddr>, D::Error>
where
    D: serde::Deserializer<'de>,
{
    use serde::de::Error;
    let text = String::deserialize(d)?;
    let port = text.strip_prefix(':').unwrap_or(&text);
    if let Ok(p) = port.parse::<u16>() {
        return Ok(Some(std::net::SocketAddr::from(([127, 0, 0, 1], p))));
    }
    text.parse().map(Some).map_err(|_| {
        D::Error::custom(format!(
            "{text:?} is not address:port (e.g. \"127.0.0.1:9100\") or a port"
        ))
    })
}
