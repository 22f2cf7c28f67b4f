//! Checks across fields that the schema alone cannot express. Every rule runs: one pass
//! reports every error, each with the table it concerns (a byte offset, turned into the line
//! of the offending key by the caller) and the dotted key.

use std::{collections::HashSet, time::Duration};

use super::schema::{
    Check, CheckRef, Failback, File, RealServer, Role, VirtualServer, VrrpInstance, VrrpScript,
};
use super::types::{DurationStr, email_address, parse_smtp_server};

pub struct ValidationError {
    /// Where the table the key belongs to starts in the file.
    pub at: Option<usize>,
    /// The dotted key (`virtual_server.real_server.check.retry`).
    pub key: String,
    pub message: String,
}

/// The errors of one table: keys are relative to it.
struct Table<'a> {
    out: &'a mut Vec<ValidationError>,
    at: Option<usize>,
    prefix: String,
}

impl Table<'_> {
    fn err(&mut self, key: &str, message: impl Into<String>) {
        self.out.push(ValidationError {
            at: self.at,
            key: if key.is_empty() {
                self.prefix.clone()
            } else {
                format!("{}.{key}", self.prefix)
            },
            message: message.into(),
        });
    }

    fn positive(&mut self, key: &str, d: Option<DurationStr>) {
        if d.is_some_and(|d| d.0.is_zero()) {
            self.err(key, "must be longer than 0");
        }
    }
}

pub fn validate(c: &File) -> Vec<ValidationError> {
    let mut out = Vec::new();
    let mut top = Table {
        out: &mut out,
        at: None,
        prefix: "global".into(),
    };
    if c.dataplane.interface.is_empty() {
        top.prefix = "dataplane".into();
        top.err("interface", "must name an interface");
        top.prefix = "global".into();
    }
    if let Some(p) = &c.pair {
        top.prefix = "pair".into();
        if p.peers.is_empty() {
            top.err("peers", "must name the other agent(s)");
        }
        if p.key_file.as_os_str().is_empty() {
            top.err("key_file", "must name a file");
        }
        if p.port == 0 {
            top.err("port", "must be a port number");
        }
    }
    if let Some(q) = &c.quorum {
        let mut t = Table {
            out: top.out,
            at: Some(q.span().start),
            prefix: "quorum".into(),
        };
        quorum(&mut t, q.get_ref());
        if c.pair.is_some() {
            t.err(
                "",
                "[pair] and [quorum] both decide the writer: keep one ([quorum] is the one \
                 that survives a partition)",
            );
        }
    }
    let t = &c.dataplane.timeouts;
    top.prefix = "dataplane.timeouts".into();
    for (key, d) in [
        ("tcp", t.tcp),
        ("tcp_fin", t.tcp_fin),
        ("tcp_close", t.tcp_close),
        ("udp", t.udp),
    ] {
        if let Some(d) = d
            && (d.0 < Duration::from_secs(1) || d.0 > super::model::MAX_CONN_TIMEOUT)
        {
            top.err(key, "must be between 1s and 7 days");
        }
    }
    top.prefix = "global".into();
    let g = &c.global;
    for a in g
        .notification_email
        .iter()
        .chain(&g.notification_email_from)
    {
        if let Err(m) = email_address(a) {
            let key = if g.notification_email.contains(a) {
                "notification_email"
            } else {
                "notification_email_from"
            };
            top.err(key, m);
        }
    }
    if let Some(Err(m)) = g.smtp_server.as_deref().map(parse_smtp_server) {
        top.err("smtp_server", m);
    }
    vrrp(c, &mut out);
    for (name, check) in &c.checks {
        let mut t = Table {
            out: &mut out,
            at: None,
            prefix: format!("check.{name}"),
        };
        check_fields(&mut t, "", check);
    }
    let mut seen = HashSet::new();
    let mut names = HashSet::new();
    for vs in &c.virtual_servers {
        let at = Some(vs.span().start);
        let vs = vs.get_ref();
        let mut t = Table {
            out: &mut out,
            at,
            prefix: "virtual_server".into(),
        };
        if !seen.insert((vs.address, vs.port, vs.protocol)) {
            t.err("address", format!("{} is defined twice", vs.display_name()));
        } else if !names.insert(vs.display_name()) {
            t.err(
                "name",
                format!("the name {:?} is used twice", vs.display_name()),
            );
        }
        virtual_server(c, vs, &mut t);
    }
    out
}

/// The shortest lease TTL accepted: etcd's own minimum with its default election timeout
/// (1 s) is 1.5 s, and the agent fences itself a third of the TTL before it runs out.
const MIN_QUORUM_TTL: Duration = Duration::from_secs(2);
const MAX_QUORUM_TTL: Duration = Duration::from_secs(60);

fn quorum(t: &mut Table, q: &super::schema::Quorum) {
    if q.endpoints.is_empty() {
        t.err("endpoints", "must name the etcd members' client URLs");
    }
    let tls = q.ca_file.is_some() || q.cert_file.is_some();
    for e in &q.endpoints {
        if let Err(m) = etcd_endpoint(e, tls) {
            t.err("endpoints", format!("{e:?}: {m}"));
        }
    }
    if let Some(ttl) = q.ttl
        && !(MIN_QUORUM_TTL..=MAX_QUORUM_TTL).contains(&ttl.0)
    {
        t.err("ttl", "must be between 2s and 60s");
    }
    if let Some(p) = &q.prefix
        && (!p.starts_with('/') || p.len() < 2)
    {
        t.err(
            "prefix",
            "must start with / and name something (\"/lb-agent/\")",
        );
    }
    match (&q.cert_file, &q.key_file) {
        (Some(_), None) => t.err("key_file", "cert_file needs its key_file"),
        (None, Some(_)) => t.err("cert_file", "key_file needs its cert_file"),
        _ => {}
    }
    if q.cert_file.is_some() && q.ca_file.is_none() {
        t.err(
            "ca_file",
            "TLS needs the CA of the etcd members' certificates",
        );
    }
}

/// `http://host:port`, `https://host:port` (with TLS only) or `host:port`.
fn etcd_endpoint(e: &str, tls: bool) -> Result<(), String> {
    let rest = match e.split_once("://") {
        Some(("https", rest)) if tls => rest,
        Some(("https", _)) => return Err("https needs ca_file".into()),
        Some(("http", _)) if tls => return Err("with TLS the endpoints must be https".into()),
        Some(("http", rest)) => rest,
        Some((scheme, _)) => return Err(format!("unknown scheme {scheme:?} (http or https)")),
        None => e,
    };
    let rest = rest.strip_suffix('/').unwrap_or(rest);
    let (host, port) = rest
        .rsplit_once(':')
        .ok_or("expected host:port (\"10.1.1.113:2379\")")?;
    if host.is_empty() || rest.contains('/') {
        return Err("expected host:port (\"10.1.1.113:2379\")".into());
    }
    match port.parse::<u16>() {
        Ok(p) if p > 0 => Ok(()),
        _ => Err(format!("{port:?} is not a port number")),
    }
}

/// keepalived's bounds: a weight moves a priority within 1–254.
const MAX_WEIGHT: i32 = 253;

fn vrrp(c: &File, out: &mut Vec<ValidationError>) {
    let mut names = HashSet::new();
    let mut vrids = HashSet::new();
    let scripts: HashSet<&str> = c
        .vrrp_scripts
        .iter()
        .map(|s| s.get_ref().name.as_str())
        .collect();
    let mut script_names = HashSet::new();
    for sc in &c.vrrp_scripts {
        let mut t = Table {
            out,
            at: Some(sc.span().start),
            prefix: "vrrp_script".into(),
        };
        let sc = sc.get_ref();
        if !script_names.insert(sc.name.as_str()) {
            t.err("name", format!("script {:?} is defined twice", sc.name));
        }
        vrrp_script(sc, &mut t);
    }
    for vi in &c.vrrp_instances {
        let mut t = Table {
            out,
            at: Some(vi.span().start),
            prefix: "vrrp_instance".into(),
        };
        let vi = vi.get_ref();
        if !names.insert(vi.name.as_str()) {
            t.err("name", format!("instance {:?} is defined twice", vi.name));
        }
        if !vrids.insert((vi.interface.as_str(), vi.virtual_router_id)) {
            t.err(
                "virtual_router_id",
                format!(
                    "router id {} is used twice on {}",
                    vi.virtual_router_id, vi.interface
                ),
            );
        }
        for s in &vi.track_script {
            if !scripts.contains(s.name.as_str()) {
                t.err("track_script", format!("no vrrp_script named {:?}", s.name));
            }
        }
        vrrp_instance(vi, &mut t);
    }
    let mut grouped = HashSet::new();
    for g in &c.sync_groups {
        let mut t = Table {
            out,
            at: Some(g.span().start),
            prefix: "vrrp_sync_group".into(),
        };
        for m in &g.get_ref().members {
            if !names.contains(m.as_str()) {
                t.err("members", format!("no vrrp_instance named {m:?}"));
            } else if !grouped.insert(m.as_str()) {
                t.err("members", format!("{m:?} is in two sync groups"));
            }
        }
    }
}

fn vrrp_script(sc: &VrrpScript, t: &mut Table) {
    if sc.script.trim().is_empty() {
        t.err("script", "must name a command");
    }
    if sc.interval.0.is_zero() {
        t.err("interval", "must be longer than 0s");
    }
    t.positive("timeout", sc.timeout);
    if sc.weight.abs() > MAX_WEIGHT {
        t.err("weight", "must be -253..=253");
    }
    if sc.rise == 0 {
        t.err("rise", "must be at least 1");
    }
    if sc.fall == 0 {
        t.err("fall", "must be at least 1");
    }
}

/// Every rule of a `[[vrrp_instance]]`, one after the other in the order of its keys (long
/// because the block has many keys; each rule is a line or two and independent).
fn vrrp_instance(vi: &VrrpInstance, t: &mut Table) {
    for (key, tracks) in [
        ("track_interface", &vi.track_interface),
        ("track_script", &vi.track_script),
    ] {
        for tr in tracks {
            if tr.weight.is_some_and(|w| w.abs() > MAX_WEIGHT) {
                t.err(key, format!("{}: weight must be -253..=253", tr.name));
            }
        }
        if vi.priority == 255 && tracks.iter().any(|t| t.weight.is_some_and(|w| w != 0)) {
            t.err(
                key,
                "an address owner (priority 255) keeps its priority: tracking weights do not apply",
            );
        }
    }
    if vi.virtual_router_id == 0 {
        t.err("virtual_router_id", "must be 1–255");
    }
    if vi.priority == 0 {
        t.err(
            "priority",
            "must be 1–255 (0 is reserved for a master that resigns)",
        );
    }
    let adv = vi.advert_interval.0;
    match vi.version {
        2 => {
            if adv.subsec_nanos() != 0 || adv.as_secs() == 0 || adv.as_secs() > 255 {
                t.err(
                    "advert_interval",
                    "VRRPv2 adverts are whole seconds, 1s–255s",
                );
            }
        }
        3 => {
            let cs = adv.as_millis() / 10;
            if !adv.as_nanos().is_multiple_of(10_000_000) || cs == 0 || cs > 4095 {
                t.err(
                    "advert_interval",
                    "VRRPv3 adverts are multiples of 10ms, 10ms–40.95s",
                );
            }
            if vi.auth_pass.is_some() {
                t.err(
                    "auth_pass",
                    "VRRPv3 has no authentication (RFC 5798 removed it)",
                );
            }
        }
        v => t.err("version", format!("VRRP version {v}: expected 2 or 3")),
    }
    if let Some(p) = &vi.auth_pass
        && (p.is_empty() || p.len() > 8)
    {
        t.err("auth_pass", "must be 1–8 bytes (RFC 3768 section 5.3.10)");
    }
    let Some(first) = vi.virtual_addresses.first() else {
        t.err(
            "virtual_address",
            "an instance needs at least one virtual address",
        );
        return;
    };
    let v6 = first.address.is_ipv6();
    if vi
        .virtual_addresses
        .iter()
        .any(|va| va.address.is_ipv6() != v6)
        || vi.unicast_peers.iter().any(|p| p.is_ipv6() != v6)
        || vi.unicast_src.is_some_and(|a| a.is_ipv6() != v6)
    {
        t.err(
            "virtual_address",
            "an instance is either IPv4 or IPv6: its virtual addresses, unicast_src and \
             unicast_peers must all be of one family (use two instances for both)",
        );
    }
    if v6 && vi.version != 3 {
        t.err("version", "VRRP over IPv6 needs version 3");
    }
    if vi.check_unicast_src && vi.unicast_peers.is_empty() {
        t.err(
            "check_unicast_src",
            "needs unicast_peer: it accepts adverts from the unicast peers only (use \
             accept_sources with multicast)",
        );
    }
    for va in &vi.virtual_addresses {
        let max = if va.address.is_ipv4() { 32 } else { 128 };
        if let Some(p) = va.prefix.filter(|&p| p > max) {
            t.err(
                "virtual_address.prefix",
                format!("{}/{p} is not a prefix", va.address),
            );
        }
    }
}

/// The fields of one check; `key` is where it sits (empty for a `[check.NAME]` table).
fn check_fields(t: &mut Table, key: &str, c: &Check) {
    let k = |leaf: &str| {
        if key.is_empty() {
            leaf.to_string()
        } else {
            format!("{key}.{leaf}")
        }
    };
    match c {
        Check::Tcp {
            connect_timeout,
            retry,
            ..
        } => {
            t.positive(&k("connect_timeout"), *connect_timeout);
            if *retry == Some(0) {
                t.err(&k("retry"), "must be at least 1");
            }
        }
        Check::Exec {
            command, timeout, ..
        } => {
            if command.trim().is_empty() {
                t.err(&k("command"), "must not be empty");
            }
            t.positive(&k("timeout"), *timeout);
        }
        Check::Mysql {
            user,
            timeout,
            password_file,
            ..
        } => {
            if user.is_empty() {
                t.err(&k("user"), "must not be empty");
            }
            if password_file.as_os_str().is_empty() {
                t.err(&k("password_file"), "must name a file");
            }
            t.positive(&k("timeout"), *timeout);
        }
    }
    let (interval, rise, fall) = c.timing();
    if interval.is_some_and(|d| d.is_zero()) {
        t.err(&k("interval"), "must be longer than 0s");
    }
    if rise == Some(0) {
        t.err(&k("rise"), "must be at least 1");
    }
    if fall == Some(0) {
        t.err(&k("fall"), "must be at least 1");
    }
}

/// The check `r` names, reporting a name with no `[check.NAME]`.
fn referenced<'a>(c: &'a File, r: &'a CheckRef, t: &mut Table, key: &str) -> Option<&'a Check> {
    let found = c.check_of(r);
    if let (None, CheckRef::Named(n)) = (found, r) {
        let known: Vec<&str> = c.checks.keys().map(String::as_str).collect();
        t.err(
            key,
            format!("no [check.{n}] (named checks: {})", known.join(", ")),
        );
    }
    found
}

/// Every rule of a `[[virtual_server]]` and its servers, in the order of its keys (long for
/// the same reason as `vrrp_instance`).
fn virtual_server(c: &File, vs: &VirtualServer, t: &mut Table) {
    let persistence = vs.persistence_timeout.0;
    if persistence.as_secs() > u32::MAX as u64 || persistence.subsec_nanos() != 0 {
        t.err("persistence_timeout", "must be whole seconds");
    }
    if vs.quorum == 0 {
        t.err("quorum", "must be at least 1");
    }
    t.positive("check_interval", vs.check_interval);
    match (vs.failback, vs.failback_delay) {
        (Failback::Delay, None) => t.err(
            "failback_delay",
            "`failback = \"delay\"` needs a failback_delay",
        ),
        (Failback::Delay, Some(d)) => t.positive("failback_delay", Some(d)),
        (_, Some(_)) => t.err(
            "failback_delay",
            "only meaningful with `failback = \"delay\"`",
        ),
        _ => {}
    }
    if vs.failback != Failback::Immediate && vs.sorry_server.is_none() {
        t.err(
            "failback",
            "a failback policy needs a sorry_server to fail back from",
        );
    }
    let default = vs
        .default_check
        .as_ref()
        .and_then(|r| referenced(c, r, t, "default_check"));
    if let (Some(CheckRef::Inline(ch)), Some(_)) = (&vs.default_check, default) {
        check_fields(t, "default_check", ch);
    }
    let mut reals = HashSet::new();
    let mut mysql = Vec::new();
    let members = vs
        .real_servers
        .iter()
        .map(|r| ("real_server", r))
        .chain(vs.sorry_server.iter().map(|r| ("sorry_server", r)));
    for (key, spanned) in members {
        let rs = spanned.get_ref();
        let mut rt = Table {
            out: &mut *t.out,
            at: Some(spanned.span().start),
            prefix: format!("virtual_server.{key}"),
        };
        real_server(vs, rs, key, &mut rt);
        if key == "real_server" && !reals.insert(rs.address) {
            rt.err(
                "address",
                format!("{} is listed twice in {}", rs.address, vs.display_name()),
            );
        }
        let check = match &rs.check {
            Some(r) => {
                let found = referenced(c, r, &mut rt, "check");
                if let (CheckRef::Inline(ch), Some(_)) = (r, found) {
                    check_fields(&mut rt, "check", ch);
                }
                found
            }
            None => default,
        };
        mysql.push((key, matches!(check, Some(Check::Mysql { .. }))));
    }
    let reals_mysql = mysql.iter().all(|(k, m)| *m || *k == "sorry_server");
    let sorry_mysql = mysql.iter().any(|(k, m)| *m && *k == "sorry_server");
    let all_mysql = |with_sorry: bool| reals_mysql && (!with_sorry || sorry_mysql);
    if vs.role != Role::Any && !all_mysql(false) {
        t.err(
            "role",
            "a writer or replica role needs a `mysql` check on every real server",
        );
    }
    if (vs.graceful || vs.fence) && !(vs.role == Role::Writer && all_mysql(true)) {
        t.err(
            if vs.graceful { "graceful" } else { "fence" },
            "needs `role = \"writer\"`, a sorry_server, and `mysql` checks on all of them",
        );
    }
    if vs.max_lag.is_some() && vs.role != Role::Replica {
        t.err("max_lag", "only meaningful with `role = \"replica\"`");
    }
    replicas(c, vs, t);
    if vs.failback == Failback::CaughtUp && !all_mysql(true) {
        t.err(
            "failback",
            "`caught-up` compares GTIDs: the real servers and the sorry server need `mysql` checks",
        );
    }
}

/// `replicas` and `[virtual_server.replication]`: both or neither, on a service with a sorry
/// server; every replica a real server with a `mysql` check somewhere (its state is read
/// there), neither this service's writer nor its sorry server, listed once.
fn replicas(c: &File, vs: &VirtualServer, t: &mut Table) {
    match (vs.replicas.is_empty(), &vs.replication) {
        (true, Some(_)) => t.err("replication", "only meaningful with `replicas`"),
        (false, None) => t.err(
            "replicas",
            "needs [virtual_server.replication] (the replicas' user and password_file)",
        ),
        _ => {}
    }
    if let Some(r) = &vs.replication {
        if r.user.is_empty() || r.user.len() > 80 {
            t.err("replication.user", "must be 1 to 80 characters");
        }
        if r.password_file.as_os_str().is_empty() {
            t.err("replication.password_file", "must name a file");
        }
        if r.port == Some(0) {
            t.err("replication.port", "must be 1 to 65535");
        }
        t.positive("replication.start_timeout", r.start_timeout);
        t.positive("replication.block", r.block);
    }
    if vs.replicas.is_empty() {
        return;
    }
    if vs.sorry_server.is_none() || vs.real_servers.len() != 1 {
        t.err(
            "replicas",
            "replicas follow the writer: the service needs one real_server (the writer) and a \
             sorry_server",
        );
    }
    let mut seen = HashSet::new();
    for addr in &vs.replicas {
        if !seen.insert(*addr) {
            t.err("replicas", format!("{addr} is listed twice"));
        }
        let own = vs
            .real_servers
            .iter()
            .chain(vs.sorry_server.iter())
            .any(|r| r.get_ref().address == *addr);
        if own {
            t.err(
                "replicas",
                format!("{addr} is this service's real or sorry server, not a replica"),
            );
            continue;
        }
        let checked = c.virtual_servers.iter().any(|other| {
            let other = other.get_ref();
            other.real_servers.iter().any(|r| {
                let r = r.get_ref();
                r.address == *addr
                    && matches!(
                        r.check
                            .as_ref()
                            .or(other.default_check.as_ref())
                            .and_then(|ch| c.check_of(ch)),
                        Some(Check::Mysql { .. })
                    )
            })
        });
        if !checked {
            t.err(
                "replicas",
                format!(
                    "{addr} is no real server with a `mysql` check in any virtual_server \
                     (list it in the read VIP's, whose check reads its replication)"
                ),
            );
        }
    }
}

fn real_server(vs: &VirtualServer, rs: &RealServer, key: &str, t: &mut Table) {
    if rs.address.is_ipv4() != vs.address.is_ipv4() {
        t.err(
            "address",
            format!(
                "{} is not of the address family of VIP {} ({key})",
                rs.address, vs.address
            ),
        );
    }
    if let Some(port) = rs.port
        && port != vs.port
    {
        t.err(
            "port",
            format!(
                "{}:{port}: direct routing cannot change the port (service port {})",
                rs.address, vs.port
            ),
        );
    }
}
