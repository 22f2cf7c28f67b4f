//! `lb-agent import-keepalived`: keepalived.conf → this agent's TOML.
//!
//! Every statement is accounted for: it is converted, or reported as a `Finding` with its file
//! and line — either a note (keepalived needs it, we do not, and why) or unsupported (we cannot
//! express it; the caller fails unless `--allow-partial`). Nothing is dropped silently.

mod lvs;
mod tree;
mod vrrp;

use std::{collections::HashSet, path::Path, str::FromStr, time::Duration};

use toml::Spanned;
pub use tree::{Node, Place, SyntaxError};

use super::schema::{Dataplane, File as Config, Global, VrrpInstance};
use super::types::{DurationStr, XdpModeSetting};

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
    let mut defaults = VrrpDefaults::default();
    for n in nodes {
        match n.keyword.as_str() {
            "global_defs" => global_defs(&mut cv, n, &mut global, &mut version, &mut defaults),
            "vrrp_instance" => {
                if let Some(vi) = vrrp::vrrp_instance(&mut cv, n) {
                    instances.push(vi);
                }
            }
            "vrrp_sync_group" => {
                if let Some(g) = vrrp::sync_group(&mut cv, n) {
                    groups.push(g);
                }
            }
            "virtual_server" => {
                if let Some(vs) = lvs::virtual_server(&mut cv, n) {
                    servers.push(vs);
                }
            }
            "vrrp_script" => {
                if let Some(sc) = vrrp::vrrp_script(&mut cv, n) {
                    scripts.push(sc);
                }
            }
            "virtual_server_group" => cv.unsupported(n, "virtual server groups are not supported"),
            _ => cv.unknown(n, "the top level"),
        }
    }
    drop_dangling_references(&mut cv, nodes, &mut instances, &mut groups, &scripts);
    if let Some(v) = version {
        instances.iter_mut().for_each(|vi| vi.version = v);
    }
    for vi in &mut instances {
        defaults.apply(vi);
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
            timeouts: Default::default(),
        },
        vrrp_instances: instances
            .into_iter()
            .map(|v| Spanned::new(0..0, v))
            .collect(),
        sync_groups: groups.into_iter().map(|g| Spanned::new(0..0, g)).collect(),
        vrrp_scripts: scripts.into_iter().map(|s| Spanned::new(0..0, s)).collect(),
        virtual_servers: servers.into_iter().map(|v| Spanned::new(0..0, v)).collect(),
        pair: None,
        quorum: None,
    };
    lvs::name_repeated_checks(&mut config);
    Import {
        config,
        findings: cv.findings,
    }
}

/// `global_defs` settings that are defaults of every `vrrp_instance` (an instance's own
/// setting wins).
#[derive(Default)]
struct VrrpDefaults {
    garp_lower_prio_repeat: Option<u32>,
    garp_lower_prio_delay: Option<DurationStr>,
    lower_prio_no_advert: bool,
    higher_prio_send_advert: Option<bool>,
}

impl VrrpDefaults {
    fn apply(&self, vi: &mut VrrpInstance) {
        vi.garp_lower_prio_repeat = vi.garp_lower_prio_repeat.or(self.garp_lower_prio_repeat);
        vi.garp_lower_prio_delay = vi.garp_lower_prio_delay.or(self.garp_lower_prio_delay);
        vi.lower_prio_no_advert |= self.lower_prio_no_advert;
        if let Some(b) = self.higher_prio_send_advert {
            vi.higher_prio_send_advert &= b;
        }
    }
}

fn global_defs(
    cv: &mut Converter,
    n: &Node,
    g: &mut Global,
    version: &mut Option<u8>,
    defaults: &mut VrrpDefaults,
) {
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
            "vrrp_garp_lower_prio_repeat" => defaults.garp_lower_prio_repeat = cv.arg(c),
            "vrrp_garp_lower_prio_delay" => defaults.garp_lower_prio_delay = cv.seconds(c),
            "vrrp_lower_prio_no_advert" => defaults.lower_prio_no_advert = vrrp::flag(cv, c),
            "vrrp_higher_prio_send_advert" => {
                defaults.higher_prio_send_advert = Some(vrrp::flag(cv, c))
            }
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

/// A `track_script` naming a `vrrp_script` that was not converted, or a sync group member
/// naming an instance that was not, would make the converted file invalid: each is dropped,
/// with a finding at its own line.
fn drop_dangling_references(
    cv: &mut Converter,
    nodes: &[Node],
    instances: &mut [VrrpInstance],
    groups: &mut [super::schema::SyncGroup],
    scripts: &[super::schema::VrrpScript],
) {
    let converted: HashSet<&str> = scripts.iter().map(|s| s.name.as_str()).collect();
    for n in nodes.iter().filter(|n| n.keyword == "vrrp_instance") {
        let Some(vi) = instances.iter_mut().find(|vi| n.args == [vi.name.clone()]) else {
            continue;
        };
        for block in n.children().iter().filter(|c| c.keyword == "track_script") {
            for t in block.children() {
                if !converted.contains(t.keyword.as_str())
                    && vi.track_script.iter().any(|k| k.name == t.keyword)
                {
                    cv.unsupported(t, "dropped: its vrrp_script was not converted (see above)");
                    vi.track_script.retain(|k| k.name != t.keyword);
                }
            }
        }
    }
    let names: HashSet<String> = instances.iter().map(|vi| vi.name.clone()).collect();
    for n in nodes.iter().filter(|n| n.keyword == "vrrp_sync_group") {
        let Some(g) = groups.iter_mut().find(|g| n.args == [g.name.clone()]) else {
            continue;
        };
        for c in n.children().iter().filter(|c| c.keyword == "group") {
            for member in Converter::values(c) {
                if !names.contains(&member) && g.members.contains(&member) {
                    cv.unsupported(
                        c,
                        format!(
                            "{member} dropped from the group: that vrrp_instance was not converted"
                        ),
                    );
                    g.members.retain(|m| *m != member);
                }
            }
        }
    }
}
