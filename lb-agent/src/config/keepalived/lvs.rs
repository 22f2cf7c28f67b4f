//! keepalived's LVS blocks: `virtual_server`, its real and sorry servers and their checks,
//! and the pass that names checks keepalived repeats.

use std::net::IpAddr;

use toml::Spanned;

use super::{Converter, Node};
use crate::config::schema::{
    Algorithm, Check, CheckRef, Failback, File as Config, Forwarding, RealServer, Role,
    VirtualServer,
};
use crate::config::types::{DurationStr, Protocol};

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

/// One arm per keepalived keyword of the block: a flat table, read (and extended) whole.
pub(super) fn virtual_server(cv: &mut Converter, n: &Node) -> Option<VirtualServer> {
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
        notify_writer_risk: None,
        smtp_alert: false,
        replicas: vec![],
        replication: None,
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
pub(super) fn name_repeated_checks(config: &mut Config) {
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
