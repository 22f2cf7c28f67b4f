//! Checks across fields that the schema alone cannot express. Each error carries the span of
//! the table it concerns (turned into a line by the caller) and the key.

use std::{collections::HashSet, ops::Range, time::Duration};

use super::{Check, Config, Failback, Role, VirtualServer, VrrpInstance, VrrpScript};

pub struct ValidationError {
    pub span: Option<Range<usize>>,
    pub key: String,
    pub message: String,
}

fn err(span: &Range<usize>, key: &str, message: impl Into<String>) -> ValidationError {
    ValidationError {
        span: Some(span.clone()),
        key: key.into(),
        message: message.into(),
    }
}

pub fn validate(c: &Config) -> Result<(), ValidationError> {
    if c.dataplane.interface.is_empty() {
        return Err(ValidationError {
            span: None,
            key: "dataplane.interface".into(),
            message: "must name an interface".into(),
        });
    }
    crate::notify::mail::check(&c.global).map_err(|(key, message)| ValidationError {
        span: None,
        key: format!("global.{key}"),
        message,
    })?;
    let mut names = HashSet::new();
    let mut vrids = HashSet::new();
    for vi in &c.vrrp_instances {
        let span = vi.span();
        let vi = vi.get_ref();
        if !names.insert(vi.name.as_str()) {
            return Err(err(
                &span,
                "vrrp_instance.name",
                format!("instance {:?} is defined twice", vi.name),
            ));
        }
        if !vrids.insert((vi.interface.as_str(), vi.virtual_router_id)) {
            return Err(err(
                &span,
                "vrrp_instance.virtual_router_id",
                format!(
                    "router id {} is used twice on {}",
                    vi.virtual_router_id, vi.interface
                ),
            ));
        }
        vrrp_instance(vi).map_err(|(key, m)| err(&span, &format!("vrrp_instance.{key}"), m))?;
    }
    let mut scripts = HashSet::new();
    for sc in &c.vrrp_scripts {
        let span = sc.span();
        let sc = sc.get_ref();
        if !scripts.insert(sc.name.as_str()) {
            return Err(err(
                &span,
                "vrrp_script.name",
                format!("script {:?} is defined twice", sc.name),
            ));
        }
        vrrp_script(sc).map_err(|(key, m)| err(&span, &format!("vrrp_script.{key}"), m))?;
    }
    for vi in &c.vrrp_instances {
        let span = vi.span();
        for t in &vi.get_ref().track_script {
            if !scripts.contains(t.name.as_str()) {
                return Err(err(
                    &span,
                    "vrrp_instance.track_script",
                    format!("no vrrp_script named {:?}", t.name),
                ));
            }
        }
    }
    let mut grouped = HashSet::new();
    for g in &c.sync_groups {
        let span = g.span();
        for m in &g.get_ref().members {
            if !names.contains(m.as_str()) {
                return Err(err(
                    &span,
                    "vrrp_sync_group.members",
                    format!("no vrrp_instance named {m:?}"),
                ));
            }
            if !grouped.insert(m.as_str()) {
                return Err(err(
                    &span,
                    "vrrp_sync_group.members",
                    format!("{m:?} is in two sync groups"),
                ));
            }
        }
    }
    let mut seen = HashSet::new();
    for vs in &c.virtual_servers {
        let span = vs.span();
        let vs = vs.get_ref();
        if !seen.insert((vs.address, vs.port, vs.protocol)) {
            return Err(err(
                &span,
                "virtual_server",
                format!("{} is defined twice", vs.display_name()),
            ));
        }
        virtual_server(vs).map_err(|(key, m)| err(&span, &format!("virtual_server.{key}"), m))?;
    }
    Ok(())
}

type FieldError = (String, String);

fn field(key: &str, message: impl Into<String>) -> FieldError {
    (key.into(), message.into())
}

/// keepalived's bounds: a weight moves a priority within 1–254.
const MAX_WEIGHT: i32 = 253;

fn vrrp_script(sc: &VrrpScript) -> Result<(), FieldError> {
    if sc.script.trim().is_empty() {
        return Err(field("script", "must name a command"));
    }
    if sc.interval.0.is_zero() {
        return Err(field("interval", "must be longer than 0s"));
    }
    if sc.timeout.is_some_and(|t| t.0.is_zero()) {
        return Err(field("timeout", "must be longer than 0s"));
    }
    if sc.weight.abs() > MAX_WEIGHT {
        return Err(field("weight", "must be -253..=253"));
    }
    if sc.rise == 0 || sc.fall == 0 {
        return Err(field("rise", "rise and fall must be at least 1"));
    }
    Ok(())
}

fn vrrp_instance(vi: &VrrpInstance) -> Result<(), FieldError> {
    for t in vi.track_interface.iter().chain(&vi.track_script) {
        if t.weight.is_some_and(|w| w.abs() > MAX_WEIGHT) {
            return Err(field(
                "track",
                format!("{}: weight must be -253..=253", t.name),
            ));
        }
    }
    if vi.priority == 255
        && vi
            .track_interface
            .iter()
            .chain(&vi.track_script)
            .any(|t| t.weight.is_some_and(|w| w != 0))
    {
        return Err(field(
            "track",
            "an address owner (priority 255) keeps its priority: tracking weights do not apply",
        ));
    }
    if vi.virtual_router_id == 0 {
        return Err(field("virtual_router_id", "must be 1–255"));
    }
    if vi.priority == 0 {
        return Err(field(
            "priority",
            "must be 1–255 (0 is reserved for a master that resigns)",
        ));
    }
    let adv = vi.advert_interval.0;
    match vi.version {
        2 => {
            if adv.subsec_nanos() != 0 || adv.as_secs() == 0 || adv.as_secs() > 255 {
                return Err(field(
                    "advert_interval",
                    "VRRPv2 adverts are whole seconds, 1s–255s",
                ));
            }
        }
        3 => {
            let cs = adv.as_millis() / 10;
            if !adv.as_nanos().is_multiple_of(10_000_000) || cs == 0 || cs > 4095 {
                return Err(field(
                    "advert_interval",
                    "VRRPv3 adverts are multiples of 10ms, 10ms–40.95s",
                ));
            }
            if vi.auth_pass.is_some() {
                return Err(field(
                    "auth_pass",
                    "VRRPv3 has no authentication (RFC 5798 removed it)",
                ));
            }
        }
        v => {
            return Err(field(
                "version",
                format!("VRRP version {v}: expected 2 or 3"),
            ));
        }
    }
    if let Some(p) = &vi.auth_pass
        && (p.is_empty() || p.len() > 8)
    {
        return Err(field(
            "auth_pass",
            "must be 1–8 bytes (RFC 3768 section 5.3.10)",
        ));
    }
    if vi.virtual_addresses.is_empty() {
        return Err(field(
            "virtual_address",
            "an instance needs at least one virtual address",
        ));
    }
    let v6 = vi.virtual_addresses[0].address.is_ipv6();
    if vi
        .virtual_addresses
        .iter()
        .any(|va| va.address.is_ipv6() != v6)
        || vi.unicast_peers.iter().any(|p| p.is_ipv6() != v6)
        || vi.unicast_src.is_some_and(|a| a.is_ipv6() != v6)
    {
        return Err(field(
            "virtual_address",
            "an instance is either IPv4 or IPv6: its virtual addresses, unicast_src and \
             unicast_peers must all be of one family (use two instances for both)",
        ));
    }
    if v6 && vi.version != 3 {
        return Err(field("version", "VRRP over IPv6 needs version 3"));
    }
    for va in &vi.virtual_addresses {
        let max = if va.address.is_ipv4() { 32 } else { 128 };
        if va.prefix.is_some_and(|p| p > max) {
            return Err(field(
                "virtual_address.prefix",
                format!("{}/{} is not a prefix", va.address, va.prefix.unwrap_or(0)),
            ));
        }
    }
    if let Some(src) = vi.unicast_src
        && let Some(p) = vi
            .unicast_peers
            .iter()
            .find(|p| p.is_ipv4() != src.is_ipv4())
    {
        return Err(field(
            "unicast_peers",
            format!("{p} is not of the family of unicast_src {src}"),
        ));
    }
    Ok(())
}

fn positive(key: &str, d: Option<super::DurationStr>) -> Result<(), FieldError> {
    match d {
        Some(d) if d.0 == Duration::ZERO => Err(field(key, "must be longer than 0")),
        _ => Ok(()),
    }
}

fn virtual_server(vs: &VirtualServer) -> Result<(), FieldError> {
    let persistence = vs.persistence_timeout.0;
    if persistence.as_secs() > u32::MAX as u64 || persistence.subsec_nanos() != 0 {
        return Err(field("persistence_timeout", "must be whole seconds"));
    }
    if vs.quorum == 0 {
        return Err(field("quorum", "must be at least 1"));
    }
    positive("check_interval", vs.check_interval)?;
    match (vs.failback, vs.failback_delay) {
        (Failback::Delay, None) => {
            return Err(field(
                "failback_delay",
                "`failback = \"delay\"` needs a failback_delay",
            ));
        }
        (Failback::Delay, Some(d)) => positive("failback_delay", Some(d))?,
        (_, Some(_)) => {
            return Err(field(
                "failback_delay",
                "only meaningful with `failback = \"delay\"`",
            ));
        }
        _ => {}
    }
    if vs.failback != Failback::Immediate && vs.sorry_server.is_none() {
        return Err(field(
            "failback",
            "a failback policy needs a sorry_server to fail back from",
        ));
    }
    let mut reals = HashSet::new();
    for (i, rs) in vs
        .real_servers
        .iter()
        .chain(vs.sorry_server.iter())
        .enumerate()
    {
        let key = if i < vs.real_servers.len() {
            "real_server"
        } else {
            "sorry_server"
        };
        if rs.address.is_ipv4() != vs.address.is_ipv4() {
            return Err(field(
                key,
                format!(
                    "{} is not of the address family of VIP {}",
                    rs.address, vs.address
                ),
            ));
        }
        if let Some(port) = rs.port
            && port != vs.port
        {
            return Err(field(
                &format!("{key}.port"),
                format!(
                    "{}:{port}: direct routing cannot change the port (service port {})",
                    rs.address, vs.port
                ),
            ));
        }
        if i < vs.real_servers.len() && !reals.insert(rs.address) {
            return Err(field(
                key,
                format!("{} is listed twice in {}", rs.address, vs.display_name()),
            ));
        }
        match &rs.check {
            Some(Check::Tcp {
                connect_timeout,
                delay_before_retry,
                retry,
                ..
            }) => {
                positive(&format!("{key}.check.connect_timeout"), *connect_timeout)?;
                let _ = delay_before_retry;
                if *retry == Some(0) {
                    return Err(field(&format!("{key}.check.retry"), "must be at least 1"));
                }
            }
            Some(Check::Exec {
                command, timeout, ..
            }) => {
                if command.trim().is_empty() {
                    return Err(field(&format!("{key}.check.command"), "must not be empty"));
                }
                positive(&format!("{key}.check.timeout"), *timeout)?;
            }
            Some(Check::Mysql {
                user,
                timeout,
                password_file,
                ..
            }) => {
                if user.is_empty() {
                    return Err(field(&format!("{key}.check.user"), "must not be empty"));
                }
                if password_file.as_os_str().is_empty() {
                    return Err(field(
                        &format!("{key}.check.password_file"),
                        "must name a file",
                    ));
                }
                positive(&format!("{key}.check.timeout"), *timeout)?;
            }
            None => {}
        }
        if let Some(c) = &rs.check {
            let interval = c.timing(Duration::from_secs(1)).0;
            if interval.is_zero() {
                return Err(field(
                    &format!("{key}.check.interval"),
                    "must be longer than 0s",
                ));
            }
        }
    }
    let mysql_checked = |rs: &super::RealServer| matches!(rs.check, Some(Check::Mysql { .. }));
    if vs.role != Role::Any && !vs.real_servers.iter().all(mysql_checked) {
        return Err(field(
            "role",
            "a writer or replica role needs a `mysql` check on every real server",
        ));
    }
    if (vs.graceful || vs.fence)
        && !(vs.role == Role::Writer && vs.sorry_server.as_ref().is_some_and(mysql_checked))
    {
        return Err(field(
            if vs.graceful { "graceful" } else { "fence" },
            "needs `role = \"writer\"`, a sorry_server, and `mysql` checks on all of them",
        ));
    }
    if vs.max_lag.is_some() && vs.role != Role::Replica {
        return Err(field(
            "max_lag",
            "only meaningful with `role = \"replica\"`",
        ));
    }
    if vs.failback == Failback::CaughtUp
        && !(vs.real_servers.iter().all(mysql_checked)
            && vs.sorry_server.as_ref().is_some_and(mysql_checked))
    {
        return Err(field(
            "failback",
            "`caught-up` compares GTIDs: the real servers and the sorry server need `mysql` checks",
        ));
    }
    Ok(())
}
