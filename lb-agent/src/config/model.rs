//! The resolved configuration: what every other module reads. Built once from the file
//! (`schema::File`) after validation, with every default applied, every named check expanded,
//! every span gone and closed choices as enums. The file format can change without touching
//! the readers, and a reader never guesses a default.

use std::{collections::HashMap, net::IpAddr, path::PathBuf, time::Duration};

use super::schema::{
    self, Algorithm, CheckRef, Dataplane, Failback, File, Global, InitialState, Role,
    VirtualAddress,
};
use super::types::{DurationStr, Protocol, email_address, parse_smtp_server};

/// keepalived's `delay_loop` when a service sets no `check_interval`.
pub const DEFAULT_CHECK_INTERVAL: Duration = Duration::from_secs(1);
/// A TCP check's connect timeout (keepalived's `connect_timeout`).
pub const DEFAULT_TCP_TIMEOUT: Duration = Duration::from_secs(3);
/// Pause between a TCP check's attempts (keepalived's `delay_before_retry`).
pub const DEFAULT_TCP_DELAY_BEFORE_RETRY: Duration = Duration::from_secs(1);
/// An exec check's timeout (keepalived's `misc_timeout`).
pub const DEFAULT_EXEC_TIMEOUT: Duration = Duration::from_secs(5);
/// A whole MySQL check: connect, log in, queries, quit.
pub const DEFAULT_MYSQL_TIMEOUT: Duration = Duration::from_secs(1);
/// How far a replica may lag behind and still serve reads.
pub const DEFAULT_MAX_LAG: Duration = Duration::from_secs(10);
/// keepalived's default `smtp_connect_timeout`.
pub const DEFAULT_SMTP_TIMEOUT: Duration = Duration::from_secs(30);
/// IPVS's connection timeouts (`ipvsadm --set 900 120 300`, and `close` 10 s).
pub const DEFAULT_CONN_TCP: Duration = Duration::from_secs(900);
pub const DEFAULT_CONN_TCP_FIN: Duration = Duration::from_secs(120);
pub const DEFAULT_CONN_TCP_CLOSE: Duration = Duration::from_secs(10);
pub const DEFAULT_CONN_UDP: Duration = Duration::from_secs(300);
/// The longest idle timeout accepted: connection-table ticks are 32 bits of ~1 s, and an
/// entry idle for a week is better gone.
pub const MAX_CONN_TIMEOUT: Duration = Duration::from_secs(7 * 24 * 3600);

#[derive(Debug, Clone, PartialEq)]
pub struct Config {
    pub global: Global,
    /// Where e-mail alerts go; `None` without recipients or without a server.
    pub mail: Option<Mail>,
    /// What is valid but deserves a word at start-up and in `check-config`.
    pub warnings: Vec<String>,
    pub dataplane: Dataplane,
    /// Idle timeouts of connection-table entries, defaults applied.
    pub conn_timeouts: ConnTimeouts,
    pub vrrp_instances: Vec<VrrpInstance>,
    pub vrrp_scripts: Vec<VrrpScript>,
    /// In configuration order (the order of `status`); identity is the name.
    pub services: Vec<Service>,
    /// Where the writer decision is exchanged with the other agent(s).
    pub pair: Option<Pair>,
    /// Where the writer decision is kept under a lease (etcd), instead.
    pub quorum: Option<Quorum>,
    /// Service name → position in `services`.
    index: HashMap<String, usize>,
}

/// E-mail alerts (keepalived's `notification_email`, `smtp_server`, `smtp_connect_timeout`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Mail {
    /// Full addresses (a bare local part gets `@localhost`).
    pub to: Vec<String>,
    pub from: String,
    pub host: String,
    pub port: u16,
    pub timeout: Duration,
    /// The EHLO name and the prefix of subjects: `router_id`, or "lb-agent".
    pub router_id: String,
}

/// The other agents, and the shared key's file (read when the daemon starts or reloads).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pair {
    pub peers: Vec<std::net::SocketAddr>,
    pub port: u16,
    pub key_file: PathBuf,
}

/// The default lease TTL of `[quorum]`.
pub const DEFAULT_QUORUM_TTL: Duration = Duration::from_secs(3);
/// The default key prefix of `[quorum]`.
pub const DEFAULT_QUORUM_PREFIX: &str = "/lb-agent/";

/// The etcd cluster that holds the writer decision (`[quorum]`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Quorum {
    /// Client URLs (`http://host:port`; a bare `host:port` gets `http://`).
    pub endpoints: Vec<String>,
    pub ttl: Duration,
    /// Ends with `/`.
    pub prefix: String,
    pub tls: Option<QuorumTls>,
}

/// TLS towards etcd: the CA, and a client certificate with its key when both are given.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QuorumTls {
    pub ca_file: Option<PathBuf>,
    pub identity: Option<(PathBuf, PathBuf)>,
}

/// How long a connection entry outlives its flow's last frame, by the flow's state.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ConnTimeouts {
    pub tcp: Duration,
    pub tcp_fin: Duration,
    pub tcp_close: Duration,
    pub udp: Duration,
}

/// VRRP version: 2 (RFC 3768) or 3 (RFC 5798).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum VrrpVersion {
    V2,
    V3,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Garp {
    /// Messages per VIP on becoming master.
    pub repeat: u32,
    /// A second burst this long after becoming master; zero = none.
    pub delay: Duration,
    /// While master, a burst every this long; zero = none.
    pub refresh: Duration,
    pub refresh_repeat: u32,
    /// Messages per VIP when, as master, it hears a lower-priority advert; 0 = none.
    pub lower_prio_repeat: u32,
    /// And again this long after; zero = once only.
    pub lower_prio_delay: Duration,
    /// Answer a lower-priority advert with no advert of our own.
    pub lower_prio_no_advert: bool,
    pub higher_prio_send_advert: bool,
}

/// The commands run on a VRRP transition.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct VrrpNotify {
    pub master: Option<String>,
    pub backup: Option<String>,
    pub fault: Option<String>,
}

/// A tracked interface or script with its weight resolved (keepalived's semantics: 0 = Fault
/// while down; > 0 added while up; < 0 added while down).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Tracked {
    pub name: String,
    pub weight: i32,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VrrpInstance {
    pub name: String,
    pub initial: InitialState,
    pub interface: String,
    pub virtual_router_id: u8,
    pub priority: u8,
    pub advert_interval: Duration,
    pub version: VrrpVersion,
    pub auth_pass: Option<String>,
    pub preempt: bool,
    pub preempt_delay: Duration,
    pub unicast_src: Option<IpAddr>,
    pub unicast_peers: Vec<IpAddr>,
    /// Adverts only from these (see `check_unicast_src`, `accept_sources`); `None`: anyone.
    pub accept_sources: Option<Vec<IpAddr>>,
    pub virtual_addresses: Vec<VirtualAddress>,
    pub notify: VrrpNotify,
    pub smtp_alert: bool,
    pub garp: Garp,
    /// Interfaces besides the instance's own (which is always tracked, weight 0).
    pub track_interfaces: Vec<Tracked>,
    pub track_scripts: Vec<Tracked>,
    /// The sync group it belongs to.
    pub sync_group: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VrrpScript {
    pub name: String,
    pub script: String,
    pub interval: Duration,
    pub timeout: Duration,
    pub weight: i32,
    pub rise: u32,
    pub fall: u32,
    pub init_fail: bool,
}

/// A virtual server.
#[derive(Debug, Clone, PartialEq)]
pub struct Service {
    /// Its identity in logs, status, events and `lb-agent failback`: the configured name, or
    /// `address:port/protocol`.
    pub name: String,
    pub address: IpAddr,
    /// 0 = every port of the VIP.
    pub port: u16,
    pub protocol: Protocol,
    pub algorithm: Algorithm,
    /// Client-IP affinity; zero = none.
    pub persistence_timeout: Duration,
    pub quorum: u32,
    pub failback: Failback,
    /// With `Failback::Delay`; zero otherwise.
    pub failback_delay: Duration,
    pub role: Role,
    /// With `Role::Replica`.
    pub max_lag: Duration,
    pub graceful: bool,
    pub fence: bool,
    pub inhibit_on_failure: bool,
    /// Forwards now (VRRP decides for VIPs of an instance).
    pub active: bool,
    pub reals: Vec<Real>,
    pub sorry: Option<Real>,
    pub quorum_up: Option<String>,
    pub quorum_down: Option<String>,
    pub notify_writer_risk: Option<String>,
    pub smtp_alert: bool,
    /// The replicas that follow the writer, and how they log in to it.
    pub replicas: Vec<IpAddr>,
    pub replication: Option<ReplicationSpec>,
}

/// `[virtual_server.replication]` with its defaults.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReplicationSpec {
    pub user: String,
    pub password_file: PathBuf,
    pub port: u16,
    pub timing: crate::health::follow::Timing,
}

/// A real server or the sorry server of a service.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Real {
    pub address: IpAddr,
    /// The service port (direct routing rewrites no port).
    pub port: u16,
    pub weight: u32,
    pub mac: Option<[u8; 6]>,
    pub check: Option<CheckSpec>,
    pub notify_up: Option<String>,
    pub notify_down: Option<String>,
}

/// A health check, every default applied. Two equal specs of one server are one check.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct CheckSpec {
    pub kind: CheckKind,
    pub interval: Duration,
    pub rise: u32,
    pub fall: u32,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum CheckKind {
    Tcp {
        port: u16,
        timeout: Duration,
        retry: u32,
        delay_before_retry: Duration,
    },
    Exec {
        command: String,
        timeout: Duration,
        dynamic: bool,
    },
    Mysql {
        port: u16,
        user: String,
        password_file: PathBuf,
        timeout: Duration,
    },
}

impl CheckSpec {
    pub fn is_mysql(&self) -> bool {
        matches!(self.kind, CheckKind::Mysql { .. })
    }
}

/// Which part of a service a server plays.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Member {
    Real,
    Sorry,
}

impl Service {
    /// The real servers, then the sorry server.
    pub fn members(&self) -> impl Iterator<Item = (Member, &Real)> {
        self.reals
            .iter()
            .map(|r| (Member::Real, r))
            .chain(self.sorry.iter().map(|r| (Member::Sorry, r)))
    }

    /// Whether every real server (and the sorry server, with `sorry`) has a MySQL check.
    pub fn mysql_checked(&self, sorry: bool) -> bool {
        let checked = |r: &Real| r.check.as_ref().is_some_and(CheckSpec::is_mysql);
        self.reals.iter().all(checked) && (!sorry || self.sorry.as_ref().is_some_and(checked))
    }
}

impl Config {
    /// Every real or sorry server entry at `addr`, over all services (one server may be in
    /// several, with different checks).
    pub fn servers_at(&self, addr: IpAddr) -> impl Iterator<Item = &Real> {
        self.services
            .iter()
            .flat_map(|vs| vs.members().map(|(_, r)| r))
            .filter(move |r| r.address == addr)
    }

    pub fn service(&self, name: &str) -> Option<&Service> {
        self.services.get(*self.index.get(name)?)
    }

    /// Every VIP that a VRRP instance holds.
    pub fn vrrp_addresses(&self) -> impl Iterator<Item = IpAddr> + '_ {
        self.vrrp_instances
            .iter()
            .flat_map(|vi| vi.virtual_addresses.iter().map(|v| v.address))
    }

    /// Services whose writer a pair of agents must decide together: a sorry server behind a
    /// VRRP address (see `crate::decision`).
    pub fn writer_services(&self) -> Vec<&Service> {
        let vrrp: Vec<IpAddr> = self.vrrp_addresses().collect();
        self.services
            .iter()
            .filter(|vs| vs.sorry.is_some() && vrrp.contains(&vs.address))
            .collect()
    }

    /// Writer services decided by two hosts alone (no `[quorum]`): a partition between them
    /// can split the writes, which the operator must hear about.
    fn no_quorum_warning(&self) -> Option<String> {
        let shared = self.writer_services().into_iter().next()?;
        self.quorum.is_none().then(|| {
            format!(
                "{}: a sorry server behind a VRRP address without [quorum]: two hosts cannot \
                 tell \"the other is dead\" from \"I cannot reach it\", so a partition between \
                 them (each still reached by clients) can split the writes and lose \
                 acknowledged updates; add [quorum] with a third etcd member (README: Failure \
                 modes)",
                shared.name
            )
        })
    }

    /// Such services without `[pair]`: each agent keeps its own writer decision, which the
    /// operator must hear about.
    fn unshared_writer_warning(&self) -> Option<String> {
        let shared = self.writer_services().into_iter().next()?;
        (self.pair.is_none() && self.quorum.is_none()).then(|| {
            format!(
                "{}: a sorry server behind a VRRP address without [pair]: each agent keeps its \
                 own writer decision, so an agent that takes the address back (after a link \
                 flap, a stalled agent) may send writes to a writer that lacks the sorry \
                 server's",
                shared.name
            )
        })
    }
}

fn quorum(q: &schema::Quorum) -> Quorum {
    let tls = (q.ca_file.is_some() || q.cert_file.is_some()).then(|| QuorumTls {
        ca_file: q.ca_file.clone(),
        identity: q.cert_file.clone().zip(q.key_file.clone()),
    });
    let mut prefix = q
        .prefix
        .clone()
        .unwrap_or_else(|| DEFAULT_QUORUM_PREFIX.into());
    if !prefix.ends_with('/') {
        prefix.push('/');
    }
    Quorum {
        endpoints: q
            .endpoints
            .iter()
            .map(|e| endpoint_url(e, tls.is_some()))
            .collect(),
        ttl: q.ttl.map_or(DEFAULT_QUORUM_TTL, |d| d.0),
        prefix,
        tls,
    }
}

/// An etcd endpoint as a URL: `host:port` gets `https://` with TLS, `http://` without.
pub fn endpoint_url(e: &str, tls: bool) -> String {
    if e.contains("://") {
        e.to_string()
    } else if tls {
        format!("https://{e}")
    } else {
        format!("http://{e}")
    }
}

fn mail(g: &Global) -> (Option<Mail>, Option<String>) {
    let to: Vec<String> = g
        .notification_email
        .iter()
        .filter_map(|a| email_address(a).ok())
        .collect();
    let server = g
        .smtp_server
        .as_deref()
        .and_then(|s| parse_smtp_server(s).ok());
    let Some((host, port)) = server else {
        let warning = (!to.is_empty()).then(|| {
            "global.notification_email without global.smtp_server: no e-mail alert is sent"
                .to_string()
        });
        return (None, warning);
    };
    if to.is_empty() {
        return (None, None);
    }
    let router_id = g.router_id.clone().unwrap_or_else(|| "lb-agent".into());
    let from = g
        .notification_email_from
        .as_deref()
        .and_then(|f| email_address(f).ok())
        .unwrap_or_else(|| format!("lb-agent@{router_id}"));
    let mail = Mail {
        to,
        from,
        host,
        port,
        timeout: g.smtp_connect_timeout.map_or(DEFAULT_SMTP_TIMEOUT, |d| d.0),
        router_id,
    };
    (Some(mail), None)
}

/// Builds the model from a validated file: validation guarantees every reference resolves.
pub(super) fn resolve(f: &File) -> Config {
    let (mail, mail_warning) = mail(&f.global);
    let mut cfg = Config {
        global: f.global.clone(),
        mail,
        warnings: mail_warning.into_iter().collect(),
        dataplane: f.dataplane.clone(),
        conn_timeouts: {
            let t = &f.dataplane.timeouts;
            let or = |d: Option<DurationStr>, default| d.map_or(default, |d| d.0);
            ConnTimeouts {
                tcp: or(t.tcp, DEFAULT_CONN_TCP),
                tcp_fin: or(t.tcp_fin, DEFAULT_CONN_TCP_FIN),
                tcp_close: or(t.tcp_close, DEFAULT_CONN_TCP_CLOSE),
                udp: or(t.udp, DEFAULT_CONN_UDP),
            }
        },
        vrrp_instances: f
            .vrrp_instances
            .iter()
            .map(|vi| vrrp_instance(f, vi.get_ref()))
            .collect(),
        vrrp_scripts: f
            .vrrp_scripts
            .iter()
            .map(|s| {
                let s = s.get_ref();
                VrrpScript {
                    name: s.name.clone(),
                    script: s.script.clone(),
                    interval: s.interval.0,
                    timeout: s.timeout.map_or(s.interval.0, |t| t.0),
                    weight: s.weight,
                    rise: s.rise,
                    fall: s.fall,
                    init_fail: s.init_fail,
                }
            })
            .collect(),
        index: f
            .virtual_servers
            .iter()
            .enumerate()
            .map(|(i, vs)| (vs.get_ref().display_name(), i))
            .collect(),
        services: f
            .virtual_servers
            .iter()
            .map(|vs| service(f, vs.get_ref()))
            .collect(),
        pair: f.pair.as_ref().map(|p| Pair {
            peers: p
                .peers
                .iter()
                .map(|a| std::net::SocketAddr::new(*a, p.port))
                .collect(),
            port: p.port,
            key_file: p.key_file.clone(),
        }),
        quorum: f.quorum.as_ref().map(|q| quorum(q.get_ref())),
    };
    cfg.warnings.extend(cfg.unshared_writer_warning());
    cfg.warnings.extend(cfg.no_quorum_warning());
    cfg
}

fn vrrp_instance(f: &File, vi: &schema::VrrpInstance) -> VrrpInstance {
    let group_of = |name: &str| {
        f.sync_groups
            .iter()
            .find(|g| g.get_ref().members.iter().any(|m| m == name))
            .map(|g| g.get_ref().name.clone())
    };
    let script_weight = |name: &str| {
        f.vrrp_scripts
            .iter()
            .find(|s| s.get_ref().name == name)
            .map_or(0, |s| s.get_ref().weight)
    };
    VrrpInstance {
        name: vi.name.clone(),
        initial: vi.state,
        interface: vi.interface.clone(),
        virtual_router_id: vi.virtual_router_id,
        priority: vi.priority,
        advert_interval: vi.advert_interval.0,
        version: if vi.version == 3 {
            VrrpVersion::V3
        } else {
            VrrpVersion::V2
        },
        auth_pass: vi.auth_pass.clone(),
        preempt: vi.preempt,
        preempt_delay: vi.preempt_delay.0,
        unicast_src: vi.unicast_src,
        unicast_peers: vi.unicast_peers.clone(),
        accept_sources: {
            let mut ok = vi.accept_sources.clone();
            if vi.check_unicast_src {
                ok.extend(vi.unicast_peers.iter().copied());
            }
            (!ok.is_empty()).then_some(ok)
        },
        virtual_addresses: vi.virtual_addresses.clone(),
        notify: VrrpNotify {
            master: vi.notify_master.clone(),
            backup: vi.notify_backup.clone(),
            fault: vi.notify_fault.clone(),
        },
        smtp_alert: vi.smtp_alert,
        garp: Garp {
            repeat: vi.garp_master_repeat,
            delay: vi.garp_master_delay.0,
            refresh: vi.garp_master_refresh.0,
            refresh_repeat: vi.garp_master_refresh_repeat,
            lower_prio_repeat: vi.garp_lower_prio_repeat.unwrap_or(vi.garp_master_repeat),
            lower_prio_delay: vi
                .garp_lower_prio_delay
                .map_or(vi.garp_master_delay.0, |d| d.0),
            lower_prio_no_advert: vi.lower_prio_no_advert,
            higher_prio_send_advert: vi.higher_prio_send_advert,
        },
        track_interfaces: vi
            .track_interface
            .iter()
            .map(|t| Tracked {
                name: t.name.clone(),
                weight: t.weight.unwrap_or(0),
            })
            .collect(),
        track_scripts: vi
            .track_script
            .iter()
            .map(|t| Tracked {
                name: t.name.clone(),
                weight: t.weight.unwrap_or_else(|| script_weight(&t.name)),
            })
            .collect(),
        sync_group: group_of(&vi.name),
    }
}

fn service(f: &File, vs: &schema::VirtualServer) -> Service {
    let interval = vs.check_interval.map_or(DEFAULT_CHECK_INTERVAL, |d| d.0);
    let real = |rs: &schema::RealServer| {
        let port = rs.port.unwrap_or(vs.port);
        let check = rs
            .check
            .as_ref()
            .or(vs.default_check.as_ref())
            .and_then(|c| f.check_of(c))
            .map(|c| check_spec(c, port, interval));
        Real {
            address: rs.address,
            port,
            weight: rs.weight,
            mac: rs.mac.map(|m| m.0),
            check,
            notify_up: rs.notify_up.clone(),
            notify_down: rs.notify_down.clone(),
        }
    };
    Service {
        name: vs.display_name(),
        address: vs.address,
        port: vs.port,
        protocol: vs.protocol,
        algorithm: vs.algorithm,
        persistence_timeout: vs.persistence_timeout.0,
        quorum: vs.quorum,
        failback: vs.failback,
        failback_delay: vs.failback_delay.map(|d| d.0).unwrap_or_default(),
        role: vs.role,
        max_lag: vs.max_lag.map_or(DEFAULT_MAX_LAG, |d| d.0),
        graceful: vs.graceful,
        fence: vs.fence,
        inhibit_on_failure: vs.inhibit_on_failure,
        active: vs.active,
        reals: vs.real_servers.iter().map(|r| real(r.get_ref())).collect(),
        sorry: vs.sorry_server.as_ref().map(|r| real(r.get_ref())),
        quorum_up: vs.quorum_up.clone(),
        quorum_down: vs.quorum_down.clone(),
        notify_writer_risk: vs.notify_writer_risk.clone(),
        smtp_alert: vs.smtp_alert,
        replicas: vs.replicas.clone(),
        replication: vs.replication.as_ref().map(|r| {
            let defaults = crate::health::follow::Timing::default();
            ReplicationSpec {
                user: r.user.clone(),
                password_file: r.password_file.clone(),
                port: r.port.unwrap_or(vs.port),
                timing: crate::health::follow::Timing {
                    start_timeout: r.start_timeout.map_or(defaults.start_timeout, |d| d.0),
                    block: r.block.map_or(defaults.block, |d| d.0),
                    settle: r.block.map_or(defaults.settle, |d| d.0),
                },
            }
        }),
    }
}

/// The check with its defaults: the service's interval, the server's port, keepalived's
/// rise/fall of 1.
fn check_spec(c: &schema::Check, port: u16, service_interval: Duration) -> CheckSpec {
    let (interval, rise, fall) = c.timing();
    let kind = match c {
        schema::Check::Tcp {
            connect_port,
            connect_timeout,
            retry,
            delay_before_retry,
            ..
        } => CheckKind::Tcp {
            port: connect_port.unwrap_or(port),
            timeout: connect_timeout.map_or(DEFAULT_TCP_TIMEOUT, |d| d.0),
            retry: retry.unwrap_or(1),
            delay_before_retry: delay_before_retry.map_or(DEFAULT_TCP_DELAY_BEFORE_RETRY, |d| d.0),
        },
        schema::Check::Exec {
            command,
            timeout,
            dynamic,
            ..
        } => CheckKind::Exec {
            command: command.clone(),
            timeout: timeout.map_or(DEFAULT_EXEC_TIMEOUT, |d| d.0),
            dynamic: *dynamic,
        },
        schema::Check::Mysql {
            port: check_port,
            user,
            password_file,
            timeout,
            ..
        } => CheckKind::Mysql {
            port: check_port.unwrap_or(port),
            user: user.clone(),
            password_file: password_file.clone(),
            timeout: timeout.map_or(DEFAULT_MYSQL_TIMEOUT, |d| d.0),
        },
    };
    CheckSpec {
        kind,
        interval: interval.unwrap_or(service_interval),
        rise: rise.unwrap_or(1).max(1),
        fall: fall.unwrap_or(1).max(1),
    }
}

impl File {
    /// The check a reference stands for (`None` for an unknown name: validation reports it).
    pub fn check_of<'a>(&'a self, r: &'a CheckRef) -> Option<&'a schema::Check> {
        match r {
            CheckRef::Inline(c) => Some(c),
            CheckRef::Named(n) => self.checks.get(n),
        }
    }
}
