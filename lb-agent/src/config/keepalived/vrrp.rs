//! keepalived's VRRP blocks: `vrrp_instance`, its addresses and tracking, `vrrp_script`,
//! `vrrp_sync_group`.

use std::{net::IpAddr, time::Duration};

use super::{Converter, Node};
use crate::config::schema::{
    InitialState, SyncGroup, Track, VirtualAddress, VrrpInstance, VrrpScript,
};
use crate::config::types::DurationStr;

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

pub(super) fn vrrp_script(cv: &mut Converter, n: &Node) -> Option<VrrpScript> {
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

/// One arm per keepalived keyword of the block: a flat table, read (and extended) whole.
pub(super) fn vrrp_instance(cv: &mut Converter, n: &Node) -> Option<VrrpInstance> {
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
        check_unicast_src: false,
        accept_sources: vec![],
        virtual_addresses: vec![],
        notify_master: None,
        notify_backup: None,
        notify_fault: None,
        smtp_alert: false,
        garp_master_repeat: 5,
        garp_master_delay: DurationStr(Duration::from_secs(5)),
        garp_master_refresh: DurationStr::default(),
        garp_master_refresh_repeat: 1,
        garp_lower_prio_repeat: None,
        garp_lower_prio_delay: None,
        lower_prio_no_advert: false,
        // Ours is on by default (keepalived's is off): see the schema.
        higher_prio_send_advert: true,
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
            "garp_lower_prio_repeat" => vi.garp_lower_prio_repeat = cv.arg(c),
            "garp_lower_prio_delay" => vi.garp_lower_prio_delay = cv.seconds(c),
            "lower_prio_no_advert" => vi.lower_prio_no_advert = flag(cv, c),
            "higher_prio_send_advert" => vi.higher_prio_send_advert = flag(cv, c),
            "check_unicast_src" => vi.check_unicast_src = flag(cv, c),
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

pub(super) fn sync_group(cv: &mut Converter, n: &Node) -> Option<SyncGroup> {
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

/// A keepalived boolean: bare (`lower_prio_no_advert`) means true; `true`/`false` (or
/// `on`/`off`, `yes`/`no`) as written.
pub(super) fn flag(cv: &mut Converter, n: &Node) -> bool {
    match n.args.first().map(|a| a.to_ascii_lowercase()).as_deref() {
        None | Some("true" | "on" | "yes") => true,
        Some("false" | "off" | "no") => false,
        Some(other) => {
            cv.unsupported(n, format!("expected true or false, not {other:?}"));
            false
        }
    }
}
