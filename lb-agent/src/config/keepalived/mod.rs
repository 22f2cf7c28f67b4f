//! `lb-agent import-keepalived`: keepalived.conf → this agent's TOML.
//!
//! Every statement is accounted for: it is converted, or reported as a `Finding` with its file
//! and line — either a note (keepalived needs it, we do not, and why) or unsupported (we cannot
//! express it; the caller fails unless `--allow-partial`). Nothing is dropped silently.

mod tree;

use std::{net::IpAddr, path::Path, str::FromStr, time::Duration};

use toml::Spanned;
pub use tree::{Node, Place, SyntaxError};

use super::schema::{
    Algorithm, Check, CheckRef, Dataplane, Failback, File as Config, Forwarding, Global,
    InitialState, RealServer, Role, SyncGroup, Track, VirtualAddress, VirtualServer, VrrpInstance,
    VrrpScript,
};
use super::types::{DurationStr, Protocol, XdpModeSetting};

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Severity {
    /// Converted with no equivalent needed; said so the operator knows.
    Note,
    /// Cannot be expressed: the conversion is partial.
    Unsupported,
}

#[derive(Debug, Clone)]
pub struct Finding {
    pub place: Place,
    pub keyword: String,
    pub severity: Severity,
    pub message: String,
}

impl std::fmt::Display for Finding {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let kind = match self.severity {
            Severity::Note => "note",
            Severity::Unsupported => "not converted",
        };
        write!(
            f,
            "{}: {kind}: `{}`: {}",
            self.place, self.keyword, self.message
        )
    }
}

pub struct Import {
    pub config: Config,
    pub findings: Vec<Finding>,
}

impl Import {
    pub fn is_partial(&self) -> bool {
        self.findings
            .iter()
            .any(|f| f.severity == Severity::Unsupported)
    }
}

/// Reads and converts a keepalived configuration (with its includes).
pub fn import(path: &Path) -> Result<Import, SyntaxError> {
    let nodes = tree::parse_file(path)?;
    Ok(convert(&nodes))
}

struct Converter {
    findings: Vec<Finding>,
}

impl Converter {
    fn note(&mut self, n: &Node, message: impl Into<String>) {
        self.findings.push(Finding {
            place: n.place.clone(),
            keyword: n.keyword.clone(),
            severity: Severity::Note,
            message: message.into(),
        });
    }

    fn unsupported(&mut self, n: &Node, message: impl Into<String>) {
        self.findings.push(Finding {
            place: n.place.clone(),
            keyword: n.keyword.clone(),
            severity: Severity::Unsupported,
            message: message.into(),
        });
    }

    fn unknown(&mut self, n: &Node, within: &str) {
        self.unsupported(n, format!("not supported in {within}"));
    }

    /// The single argument of `n`, parsed; reported when missing or malformed.
    fn arg<T: FromStr>(&mut self, n: &Node) -> Option<T> {
        match n.args.as_slice() {
            [a] => match a.parse() {
                Ok(v) => Some(v),
                Err(_) => {
                    self.unsupported(n, format!("cannot read {a:?}"));
                    None
                }
            },
            _ => {
                self.unsupported(n, format!("expected one value, got {}", n.args.len()));
                None
            }
        }
    }

    /// A keepalived duration: seconds, possibly fractional.
    fn seconds(&mut self, n: &Node) -> Option<DurationStr> {
        let s: f64 = self.arg(n)?;
        if !(0.0..=1e9).contains(&s) {
            self.unsupported(n, format!("{s} is not a duration in seconds"));
            return None;
        }
        Some(DurationStr(Duration::from_millis(
            (s * 1000.0).round() as u64
        )))
    }

    /// Words of a block whose statements are bare values (`notification_email { a b }`).
    fn values(n: &Node) -> Vec<String> {
        n.children()
            .iter()
            .flat_map(|c| std::iter::once(c.keyword.clone()).chain(c.args.iter().cloned()))
            .collect()
    }
}

fn convert(nodes: &[Node]) -> Import {
    let mut cv = Converter { findings: vec![] };
    let mut global = Global::default();
    let mut instances = Vec::new();
    let mut groups = Vec::new();
    let mut servers = Vec::new();
    let mut scripts = Vec::new();
    let mut version = None;
    for n in nodes {
        match n.keyword.as_str() {
            "global_defs" => global_defs(&mut cv, n, &mut global, &mut version),
            "vrrp_instance" => {
                if let Some(vi) = vrrp_instance(&mut cv, n) {
                    instances.push(vi);
                }
            }
            "vrrp_sync_group" => {
                if let Some(g) = sync_group(&mut cv, n) {
                    groups.push(g);
                }
            }
            "virtual_server" => {
                if let Some(vs) = virtual_server(&mut cv, n) {
                    servers.push(vs);
                }
            }
            "vrrp_script" => {
                if let Some(sc) = vrrp_script(&mut cv, n) {
                    scripts.push(sc);
                }
            }
            "virtual_server_group" => cv.unsupported(n, "virtual server groups are not supported"),
            _ => cv.unknown(n, "the top level"),
        }
    }
    if let Some(v) = version {
        instances.iter_mut().for_each(|vi| vi.version = v);
    }
    let interface = instances
        .first()
        .map(|vi| vi.interface.clone())
        .unwrap_or_else(|| "eth0".into());
    let mut config = Config {
        global,
        checks: Default::default(),
        dataplane: Dataplane {
            interface,
            xdp_mode: XdpModeSetting::Auto,
            extra_macs: vec![],
            peer_macs: vec![],
            vrids: vec![],
            pin_dir: "/sys/fs/bpf/lb-agent".into(),
        },
        vrrp_instances: instances
            .into_iter()
            .map(|v| Spanned::new(0..0, v))
            .collect(),
        sync_groups: groups.into_iter().map(|g| Spanned::new(0..0, g)).collect(),
        vrrp_scripts: scripts.into_iter().map(|s| Spanned::new(0..0, s)).collect(),
        virtual_servers: servers.into_iter().map(|v| Spanned::new(0..0, v)).collect(),
    };
    name_repeated_checks(&mut config);
    Import {
        config,
        findings: cv.findings,
    }
}

/// `track_interface { eth0  eth1 weight -20 }` and `track_script { ... }`.
fn tracks(cv: &mut Converter, n: &Node) -> Vec<Track> {
    let mut out = Vec::new();
    for c in n.children() {
        match c.args.as_slice() {
            [] => out.push(Track {
                name: c.keyword.clone(),
                weight: None,
            }),
            [w, v] if w == "weight" => match v.parse() {
                Ok(weight) => out.push(Track {
                    name: c.keyword.clone(),
                    weight: Some(weight),
                }),
                Err(_) => cv.unsupported(c, format!("cannot read weight {v:?}")),
            },
            _ => cv.unsupported(c, "expected `NAME [weight N]`"),
        }
    }
    out
}

fn vrrp_script(cv: &mut Converter, n: &Node) -> Option<VrrpScript> {
    let [name] = n.args.as_slice() else {
        cv.unsupported(n, "expected `vrrp_script NAME { ... }`");
        return None;
    };
    let mut sc = VrrpScript {
        name: name.clone(),
        script: String::new(),
        interval: DurationStr(Duration::from_secs(1)),
        timeout: None,
        weight: 0,
        rise: 1,
        fall: 1,
        init_fail: false,
    };
    for c in n.children() {
        match c.keyword.as_str() {
            "script" => sc.script = c.args.join(" "),
            "interval" => {
                if let Some(d) = cv.seconds(c) {
                    sc.interval = d;
                }
            }
            "timeout" => sc.timeout = cv.seconds(c),
            "weight" => match c.args.as_slice() {
                [w] => match w.parse() {
                    Ok(w) => sc.weight = w,
                    Err(_) => cv.unsupported(c, format!("cannot read {w:?}")),
                },
                _ => cv.unsupported(c, "expected `weight N` (`reverse` is not supported)"),
            },
            "rise" => sc.rise = cv.arg(c).unwrap_or(1),
            "fall" => sc.fall = cv.arg(c).unwrap_or(1),
            "init_fail" => sc.init_fail = true,
            "user" => cv.note(c, "the script runs as the agent's user"),
            _ => cv.unknown(c, "vrrp_script"),
        }
    }
    if sc.script.is_empty() {
        cv.unsupported(n, "a vrrp_script needs a `script`");
        return None;
    }
    Some(sc)
}

fn global_defs(cv: &mut Converter, n: &Node, g: &mut Global, version: &mut Option<u8>) {
    for c in n.children() {
        match c.keyword.as_str() {
            "notification_email" => g.notification_email = Converter::values(c),
            "notification_email_from" => g.notification_email_from = cv.arg(c),
            "smtp_server" => match c.args.as_slice() {
                [host] => g.smtp_server = Some(host.clone()),
                [host, port] => g.smtp_server = Some(format!("{host}:{port}")),
                _ => cv.unsupported(c, "expected `smtp_server HOST [PORT]`"),
            },
            "smtp_connect_timeout" => g.smtp_connect_timeout = cv.seconds(c),
            "router_id" => g.router_id = cv.arg(c),
            "vrrp_version" => *version = cv.arg(c),
            "vrrp_skip_check_adv_addr"
            | "vrrp_strict"
            | "vrrp_garp_interval"
            | "vrrp_gna_interval" => cv.unsupported(
                c,
                "not supported yet (VRRP details come with the VRRP implementation)",
            ),
            "enable_script_security" | "script_user" => cv.note(
                c,
                "scripts run as the agent's user, from the configuration only",
            ),
            _ => cv.unknown(c, "global_defs"),
        }
    }
}

fn vrrp_instance(cv: &mut Converter, n: &Node) -> Option<VrrpInstance> {
    let [name] = n.args.as_slice() else {
        cv.unsupported(n, "expected `vrrp_instance NAME { ... }`");
        return None;
    };
    let mut vi = VrrpInstance {
        name: name.clone(),
        state: InitialState::Backup,
        interface: String::new(),
        virtual_router_id: 0,
        priority: 100,
        advert_interval: DurationStr(Duration::from_secs(1)),
        version: 2,
        auth_pass: None,
        preempt: true,
        preempt_delay: DurationStr::default(),
        unicast_src: None,
        unicast_peers: vec![],
        virtual_addresses: vec![],
        notify_master: None,
        notify_backup: None,
        notify_fault: None,
        smtp_alert: false,
        garp_master_repeat: 5,
        garp_master_delay: DurationStr(Duration::from_secs(5)),
        garp_master_refresh: DurationStr::default(),
        garp_master_refresh_repeat: 1,
        track_interface: vec![],
        track_script: vec![],
    };
    for c in n.children() {
        match c.keyword.as_str() {
            "state" => match c.args.first().map(|s| s.to_ascii_uppercase()).as_deref() {
                Some("MASTER") => vi.state = InitialState::Master,
                Some("BACKUP") => vi.state = InitialState::Backup,
                _ => cv.unsupported(c, "expected MASTER or BACKUP"),
            },
            "interface" => vi.interface = cv.arg(c).unwrap_or_default(),
            "virtual_router_id" => vi.virtual_router_id = cv.arg(c).unwrap_or(0),
            "priority" => vi.priority = cv.arg(c).unwrap_or(100),
            "advert_int" => {
                if let Some(d) = cv.seconds(c) {
                    vi.advert_interval = d;
                }
            }
            "version" => vi.version = cv.arg(c).unwrap_or(2),
            "nopreempt" => vi.preempt = false,
            "preempt" => vi.preempt = true,
            "preempt_delay" => vi.preempt_delay = cv.seconds(c).unwrap_or_default(),
            "unicast_src_ip" => vi.unicast_src = cv.arg(c),
            "unicast_peer" => {
                for p in Converter::values(c) {
                    match p.parse() {
                        Ok(a) => vi.unicast_peers.push(a),
                        Err(_) => cv.unsupported(c, format!("peer {p:?} is not an address")),
                    }
                }
            }
            "authentication" => {
                for a in c.children() {
                    match (a.keyword.as_str(), a.args.first().map(String::as_str)) {
                        ("auth_type", Some("PASS")) => {}
                        ("auth_type", _) => {
                            cv.unsupported(a, "only auth_type PASS is supported (AH is not)")
                        }
                        ("auth_pass", Some(p)) => vi.auth_pass = Some(p.to_string()),
                        _ => cv.unknown(a, "authentication"),
                    }
                }
            }
            "virtual_ipaddress" => {
                for v in c.children() {
                    if let Some(va) = virtual_address(cv, v) {
                        vi.virtual_addresses.push(va);
                    }
                }
            }
            "notify_master" => vi.notify_master = Some(c.args.join(" ")),
            "notify_backup" => vi.notify_backup = Some(c.args.join(" ")),
            "notify_fault" => vi.notify_fault = Some(c.args.join(" ")),
            "smtp_alert" => vi.smtp_alert = true,
            "garp_master_repeat" => vi.garp_master_repeat = cv.arg(c).unwrap_or(5),
            "garp_master_delay" => {
                if let Some(d) = cv.seconds(c) {
                    vi.garp_master_delay = d;
                }
            }
            "garp_master_refresh" => vi.garp_master_refresh = cv.seconds(c).unwrap_or_default(),
            "garp_master_refresh_repeat" => vi.garp_master_refresh_repeat = cv.arg(c).unwrap_or(1),
            "track_interface" => vi.track_interface = tracks(cv, c),
            "track_script" => vi.track_script = tracks(cv, c),
            // The recipe spells it `inteface`; keepalived accepts both.
            "lvs_sync_daemon_interface" | "lvs_sync_daemon_inteface" => cv.note(
                c,
                "no connection sync daemon is needed: both load balancers build the same Maglev \
                 table from the same pool, so a flow keeps its real server after a failover",
            ),
            _ => cv.unknown(c, "vrrp_instance"),
        }
    }
    if vi.interface.is_empty() {
        cv.unsupported(n, format!("vrrp_instance {name} has no interface"));
        return None;
    }
    Some(vi)
}

/// `ADDR[/PREFIX] [dev DEV] [label LABEL]`.
fn virtual_address(cv: &mut Converter, n: &Node) -> Option<VirtualAddress> {
    let (addr, prefix) = match n.keyword.split_once('/') {
        Some((a, p)) => (a, p.parse::<u8>().ok()),
        None => (n.keyword.as_str(), None),
    };
    let Ok(address) = addr.parse::<IpAddr>() else {
        cv.unsupported(n, "not an address");
        return None;
    };
    let mut va = VirtualAddress {
        address,
        prefix,
        device: None,
        label: None,
    };
    let mut words = n.args.iter();
    while let Some(w) = words.next() {
        match (w.as_str(), words.next()) {
            ("dev", Some(d)) => va.device = Some(d.clone()),
            ("label", Some(l)) => va.label = Some(l.clone()),
            (other, _) => cv.unsupported(
                n,
                format!("virtual address option {other:?} is not supported"),
            ),
        }
    }
    Some(va)
}

fn sync_group(cv: &mut Converter, n: &Node) -> Option<SyncGroup> {
    let [name] = n.args.as_slice() else {
        cv.unsupported(n, "expected `vrrp_sync_group NAME { ... }`");
        return None;
    };
    let mut g = SyncGroup {
        name: name.clone(),
        members: vec![],
    };
    for c in n.children() {
        match c.keyword.as_str() {
            "group" => g.members = Converter::values(c),
            "smtp_alert" => cv.note(
                c,
                "e-mail goes to global.notification_email on every state change",
            ),
            _ => cv.unknown(c, "vrrp_sync_group"),
        }
    }
    Some(g)
}

/// `IP PORT` of a virtual, real or sorry server.
fn endpoint(cv: &mut Converter, n: &Node) -> Option<(IpAddr, u16)> {
    match n.args.as_slice() {
        [ip, port] => match (ip.parse(), port.parse()) {
            (Ok(a), Ok(p)) => Some((a, p)),
            _ => {
                cv.unsupported(n, format!("{ip} {port} is not an address and port"));
                None
            }
        },
        [_] if n.keyword == "virtual_server" => {
            cv.unsupported(n, "fwmark virtual servers are not supported");
            None
        }
        _ => {
            cv.unsupported(n, "expected an address and a port");
            None
        }
    }
}

fn virtual_server(cv: &mut Converter, n: &Node) -> Option<VirtualServer> {
    let (address, port) = endpoint(cv, n)?;
    let mut vs = VirtualServer {
        name: None,
        address,
        port,
        protocol: Protocol::Tcp,
        algorithm: Algorithm::Maglev,
        forwarding: Forwarding::Dr,
        persistence_timeout: DurationStr::default(),
        default_check: None,
        check_interval: None,
        quorum: 1,
        failback: Failback::Immediate,
        failback_delay: None,
        role: Role::Any,
        max_lag: None,
        graceful: false,
        fence: false,
        inhibit_on_failure: false,
        active: true,
        real_servers: vec![],
        sorry_server: None,
        quorum_up: None,
        quorum_down: None,
        smtp_alert: false,
    };
    for c in n.children() {
        match c.keyword.as_str() {
            "delay_loop" => vs.check_interval = cv.seconds(c),
            "lb_algo" | "lvs_sched" => match c.args.first().map(String::as_str) {
                Some("rr") => vs.algorithm = Algorithm::Rr,
                Some("wrr") => vs.algorithm = Algorithm::Wrr,
                Some("sh") | Some("mh") => vs.algorithm = Algorithm::Sh,
                Some(other) => cv.unsupported(
                    c,
                    format!("scheduler {other:?} needs per-LB connection counts; only rr, wrr, sh and mh (Maglev) are supported"),
                ),
                None => cv.unsupported(c, "missing scheduler"),
            },
            "lb_kind" | "lvs_method" => match c.args.first().map(|s| s.to_ascii_uppercase()).as_deref() {
                Some("DR") => {}
                _ => cv.unsupported(c, "only direct routing (DR) is supported; NAT and TUN are not"),
            },
            "persistence_timeout" => vs.persistence_timeout = cv.seconds(c).unwrap_or_default(),
            "protocol" => match c.args.first().map(|s| s.to_ascii_uppercase()).as_deref() {
                Some("TCP") => vs.protocol = Protocol::Tcp,
                Some("UDP") => vs.protocol = Protocol::Udp,
                _ => cv.unsupported(c, "only TCP and UDP are supported"),
            },
            "sorry_server" => {
                if let Some((a, p)) = endpoint(cv, c) {
                    vs.sorry_server = Some(Spanned::new(0..0, plain_real(a, p, port)));
                }
            }
            "quorum" => vs.quorum = cv.arg(c).unwrap_or(1),
            "quorum_up" => vs.quorum_up = Some(c.args.join(" ")),
            "quorum_down" => vs.quorum_down = Some(c.args.join(" ")),
            "smtp_alert" => vs.smtp_alert = true,
            "inhibit_on_failure" => vs.inhibit_on_failure = true,
            "real_server" => {
                if let Some(rs) = real_server(cv, c, port, &mut vs.inhibit_on_failure) {
                    vs.real_servers.push(Spanned::new(0..0, rs));
                }
            }
            _ => cv.unknown(c, "virtual_server"),
        }
    }
    for rs in vs.real_servers.iter().map(|r| r.get_ref()) {
        if rs.port.is_some_and(|p| p != port) {
            cv.unsupported(
                n,
                format!(
                    "real server {} uses another port: direct routing cannot translate ports",
                    rs.address
                ),
            );
            return None;
        }
    }
    Some(vs)
}

/// keepalived repeats a check block in every real server; a check written more than once
/// becomes a named `[check.NAME]` (its type, numbered when types repeat), and a service whose
/// servers all use the same one gets it as its `default_check`.
fn name_repeated_checks(config: &mut Config) {
    let mut counts: Vec<(Check, usize)> = Vec::new();
    let inline = |rs: &RealServer| match &rs.check {
        Some(CheckRef::Inline(c)) => Some(c.clone()),
        _ => None,
    };
    for vs in &config.virtual_servers {
        let vs = vs.get_ref();
        for rs in vs.real_servers.iter().chain(vs.sorry_server.iter()) {
            if let Some(c) = inline(rs.get_ref()) {
                match counts.iter_mut().find(|(k, _)| *k == c) {
                    Some((_, n)) => *n += 1,
                    None => counts.push((c, 1)),
                }
            }
        }
    }
    let mut names: Vec<(Check, String)> = Vec::new();
    for (c, _) in counts.into_iter().filter(|(_, n)| *n > 1) {
        let kind = match c {
            Check::Tcp { .. } => "tcp",
            Check::Exec { .. } => "exec",
            Check::Mysql { .. } => "mysql",
        };
        let mut name = kind.to_string();
        let mut i = 1;
        while config.checks.contains_key(&name) {
            i += 1;
            name = format!("{kind}_{i}");
        }
        config.checks.insert(name.clone(), c.clone());
        names.push((c, name));
    }
    for vs in &mut config.virtual_servers {
        let vs = vs.get_mut();
        for rs in vs.real_servers.iter_mut().chain(vs.sorry_server.iter_mut()) {
            let rs = rs.get_mut();
            if let Some(c) = inline(rs)
                && let Some((_, name)) = names.iter().find(|(k, _)| *k == c)
            {
                rs.check = Some(CheckRef::Named(name.clone()));
            }
        }
        let refs: Vec<Option<CheckRef>> = vs
            .real_servers
            .iter()
            .chain(vs.sorry_server.iter())
            .map(|r| r.get_ref().check.clone())
            .collect();
        if let Some(Some(first @ CheckRef::Named(_))) = refs.first()
            && refs.iter().all(|r| r.as_ref() == Some(first))
        {
            vs.default_check = Some(first.clone());
            for rs in vs.real_servers.iter_mut().chain(vs.sorry_server.iter_mut()) {
                rs.get_mut().check = None;
            }
        }
    }
}

fn plain_real(address: IpAddr, port: u16, service_port: u16) -> RealServer {
    RealServer {
        address,
        port: (port != service_port).then_some(port),
        weight: 1,
        mac: None,
        check: None,
        notify_up: None,
        notify_down: None,
    }
}

fn real_server(
    cv: &mut Converter,
    n: &Node,
    service_port: u16,
    inhibit: &mut bool,
) -> Option<RealServer> {
    let (address, port) = endpoint(cv, n)?;
    let mut rs = plain_real(address, port, service_port);
    for c in n.children() {
        match c.keyword.as_str() {
            "weight" => rs.weight = cv.arg(c).unwrap_or(1),
            "inhibit_on_failure" => *inhibit = true,
            "notify_up" => rs.notify_up = Some(c.args.join(" ")),
            "notify_down" => rs.notify_down = Some(c.args.join(" ")),
            "TCP_CHECK" => rs.check = Some(CheckRef::Inline(tcp_check(cv, c))),
            "MISC_CHECK" => rs.check = misc_check(cv, c).map(CheckRef::Inline),
            "HTTP_GET" | "SSL_GET" | "SMTP_CHECK" | "DNS_CHECK" | "BFD_CHECK" | "UDP_CHECK"
            | "PING_CHECK" | "FILE_CHECK" => cv.unsupported(
                c,
                "this check type is not supported; tcp, mysql and exec are",
            ),
            _ => cv.unknown(c, "real_server"),
        }
    }
    Some(rs)
}

fn tcp_check(cv: &mut Converter, n: &Node) -> Check {
    let (mut connect_port, mut connect_timeout, mut retry, mut delay_before_retry) =
        (None, None, None, None);
    for c in n.children() {
        match c.keyword.as_str() {
            "connect_port" => connect_port = cv.arg(c),
            "connect_timeout" => connect_timeout = cv.seconds(c),
            "nb_get_retry" | "retry" => retry = cv.arg(c),
            "delay_before_retry" => delay_before_retry = cv.seconds(c),
            _ => cv.unknown(c, "TCP_CHECK"),
        }
    }
    Check::Tcp {
        connect_port,
        connect_timeout,
        retry,
        delay_before_retry,
        interval: None,
        rise: None,
        fall: None,
    }
}

fn misc_check(cv: &mut Converter, n: &Node) -> Option<Check> {
    let (mut command, mut timeout, mut dynamic) = (None, None, false);
    for c in n.children() {
        match c.keyword.as_str() {
            "misc_path" => command = Some(c.args.join(" ")),
            "misc_timeout" => timeout = cv.seconds(c),
            "misc_dynamic" => dynamic = true,
            "user" => cv.note(c, "the check runs as the agent's user"),
            _ => cv.unknown(c, "MISC_CHECK"),
        }
    }
    match command {
        Some(command) => Some(Check::Exec {
            command,
            timeout,
            dynamic,
            interval: None,
            rise: None,
            fall: None,
        }),
        None => {
            cv.unsupported(n, "MISC_CHECK without misc_path");
            None
        }
    }
}
