//! The agent's TOML configuration: schema, parsing and validation.
//!
//! Unknown keys are errors (`deny_unknown_fields`), never ignored. Parse errors carry the
//! file, line, column and key (from `toml`'s spans); validation errors name the file, the line
//! of the offending table and the key.

pub mod keepalived;
mod model;
pub mod schema;
mod types;
mod validate;

use std::{
    fmt,
    net::IpAddr,
    path::{Path, PathBuf},
};

pub use model::*;
pub use schema::{
    Algorithm, Dataplane, Failback, File, Forwarding, Global, InitialState, Role, VirtualAddress,
};
pub use types::{DurationStr, Mac, Protocol, XdpModeSetting};

/// A configuration error with its place.
#[derive(Debug)]
pub struct ConfigError {
    pub file: PathBuf,
    pub line: Option<usize>,
    pub key: String,
    pub message: String,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.line {
            Some(line) => write!(f, "{}:{}: ", self.file.display(), line)?,
            None => write!(f, "{}: ", self.file.display())?,
        }
        if !self.key.is_empty() {
            write!(f, "`{}`: ", self.key)?;
        }
        write!(f, "{}", self.message)
    }
}

impl std::error::Error for ConfigError {}

/// Every error of one file (at least one), in the order of the file's tables.
#[derive(Debug)]
pub struct ConfigErrors(pub Vec<ConfigError>);

impl ConfigErrors {
    pub fn first(&self) -> &ConfigError {
        &self.0[0]
    }

    fn one(e: ConfigError) -> ConfigErrors {
        ConfigErrors(vec![e])
    }
}

impl fmt::Display for ConfigErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, e) in self.0.iter().enumerate() {
            if i > 0 {
                writeln!(f)?;
            }
            write!(f, "{e}")?;
        }
        Ok(())
    }
}

impl std::error::Error for ConfigErrors {}

/// The dotted key defined on the line at `offset`, with the table header above it
/// (`virtual_server.real_server.weight`); empty when the line defines no key.
fn key_at(text: &str, offset: usize) -> String {
    let offset = offset.min(text.len());
    let start = text[..offset].rfind('\n').map_or(0, |i| i + 1);
    let line = text[start..].lines().next().unwrap_or("");
    let Some((key, _)) = line.split_once('=') else {
        return String::new();
    };
    let table = text[..start]
        .lines()
        .rev()
        .map(str::trim)
        .find(|l| l.starts_with('['))
        .map(|l| l.trim_matches(|c| c == '[' || c == ']').trim().to_string());
    match table {
        Some(t) => format!("{t}.{}", key.trim()),
        None => key.trim().to_string(),
    }
}

fn line_of(text: &str, offset: usize) -> usize {
    text.as_bytes()[..offset.min(text.len())]
        .iter()
        .filter(|&&b| b == b'\n')
        .count()
        + 1
}

/// The line that sets `key` (its last dotted part) in the table starting at `at`: searched
/// from the table's first line to the first header that is not one of its sub-tables. The
/// table's own line when no line sets it (a missing key, a value from a default).
fn key_line(text: &str, at: usize, key: &str) -> usize {
    let first = line_of(text, at);
    let leaf = key.rsplit('.').next().unwrap_or(key);
    let header = |l: &str| {
        let l = l.trim();
        l.starts_with('[')
            .then(|| l.trim_matches(|c| c == '[' || c == ']').trim().to_string())
    };
    let mut lines = text.lines().enumerate().skip(first - 1);
    let Some((_, top)) = lines.next() else {
        return first;
    };
    let sets = |l: &str| {
        let l = l.trim_start();
        let found = |s: &str| {
            s.strip_prefix(leaf)
                .is_some_and(|r| r.trim_start().starts_with('='))
        };
        found(l)
            || l.match_indices(['{', ','])
                .any(|(i, _)| found(l[i + 1..].trim_start()))
    };
    if sets(top.split_once('=').map_or("", |(_, v)| v)) || (header(top).is_none() && sets(top)) {
        return first;
    }
    let Some(name) = header(top) else {
        return first;
    };
    for (n, l) in lines {
        if let Some(h) = header(l)
            && !h.starts_with(&format!("{name}."))
        {
            break;
        }
        if sets(l) {
            return n + 1;
        }
    }
    first
}

/// Where the `[check.NAME]` table of a `check.NAME.…` key starts.
fn named_check_at(text: &str, key: &str) -> Option<usize> {
    let name = key.strip_prefix("check.")?.split('.').next()?;
    text.find(&format!("[check.{name}]"))
}

impl File {
    /// Reads and parses a config file, without validating it (see `Config::load`).
    pub fn load(path: &Path) -> Result<(File, String), ConfigErrors> {
        let text = std::fs::read_to_string(path).map_err(|e| {
            ConfigErrors::one(ConfigError {
                file: path.into(),
                line: None,
                key: String::new(),
                message: format!("cannot read: {e}"),
            })
        })?;
        let file = Self::parse(path, &text)?;
        Ok((file, text))
    }

    /// Parses `text`, naming `path` in errors.
    pub fn parse(path: &Path, text: &str) -> Result<File, ConfigErrors> {
        toml::from_str(text).map_err(|e| {
            let key = e.span().map(|s| key_at(text, s.start)).unwrap_or_default();
            let message = e.message().trim_end();
            // A secret's value never appears in an error.
            let secret = crate::secret::CONFIG_KEYS
                .iter()
                .any(|k| key.rsplit('.').next() == Some(k));
            ConfigErrors::one(ConfigError {
                file: path.into(),
                line: e.span().map(|s| line_of(text, s.start)),
                key,
                message: if secret {
                    crate::secret::redact(message)
                } else {
                    message.to_string()
                },
            })
        })
    }

    /// Every rule across fields; all errors at once.
    pub fn validate(&self, path: &Path, text: &str) -> Result<(), ConfigErrors> {
        let errors: Vec<ConfigError> = validate::validate(self)
            .into_iter()
            .map(|e| ConfigError {
                file: path.into(),
                line: e
                    .at
                    .or_else(|| named_check_at(text, &e.key))
                    .map(|at| key_line(text, at, &e.key)),
                key: e.key,
                message: e.message,
            })
            .collect();
        if errors.is_empty() {
            Ok(())
        } else {
            Err(ConfigErrors(errors))
        }
    }

    /// Serializes back to TOML (used by `import-keepalived`).
    pub fn to_toml(&self) -> String {
        toml::to_string(self).expect("every config value serializes")
    }
}

impl Config {
    /// Reads, parses, validates and resolves a config file.
    pub fn load(path: &Path) -> Result<Config, ConfigErrors> {
        let (file, text) = File::load(path)?;
        file.validate(path, &text)?;
        Ok(model::resolve(&file))
    }

    /// Parses, validates and resolves `text`, naming `path` in errors.
    pub fn parse(path: &Path, text: &str) -> Result<Config, ConfigErrors> {
        let file = File::parse(path, text)?;
        file.validate(path, text)?;
        Ok(model::resolve(&file))
    }
}

impl schema::VirtualServer {
    pub fn display_name(&self) -> String {
        match &self.name {
            Some(n) => n.clone(),
            None => match self.address {
                IpAddr::V4(a) => format!("{a}:{}/{}", self.port, self.protocol),
                IpAddr::V6(a) => format!("[{a}]:{}/{}", self.port, self.protocol),
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = r#"
[dataplane]
interface = "eth0"
peer_macs = ["02:00:00:00:00:02"]

[[virtual_server]]
name = "write"
address = "10.1.1.176"
port = 3306
persistence_timeout = "50s"
[[virtual_server.real_server]]
address = "10.1.1.161"
weight = 3
[virtual_server.sorry_server]
address = "10.1.1.162"
"#;

    fn parse(text: &str) -> Result<Config, ConfigError> {
        Config::parse(Path::new("test.toml"), text).map_err(|mut e| e.0.remove(0))
    }

    #[test]
    fn check_unicast_src_accepts_the_unicast_peers_only() {
        let text = |extra: &str| {
            format!(
                "[dataplane]\ninterface = \"eth0\"\n[[vrrp_instance]]\nname = \"v\"\n\
                 interface = \"eth0\"\nvirtual_router_id = 1\npriority = 100\n\
                 check_unicast_src = true\n{extra}\
                 [[vrrp_instance.virtual_address]]\naddress = \"10.0.0.100\"\n"
            )
        };
        let e = parse(&text("")).unwrap_err().to_string();
        assert!(
            e.contains("check_unicast_src") && e.contains("unicast_peer"),
            "{e}"
        );
        let c = parse(&text(
            "unicast_peers = [\"10.0.0.2\"]\naccept_sources = [\"10.0.0.3\"]\n",
        ))
        .unwrap();
        assert_eq!(
            c.vrrp_instances[0].accept_sources,
            Some(vec![
                "10.0.0.3".parse().unwrap(),
                "10.0.0.2".parse().unwrap()
            ])
        );
    }

    #[test]
    fn deeply_nested_values_are_an_error_not_a_stack_overflow() {
        let deep = format!("x = {}{}", "[".repeat(100_000), "]".repeat(100_000));
        let e = parse(&deep).unwrap_err().to_string();
        assert!(e.contains("recursion limit"), "{e}");
    }

    #[test]
    fn a_secrets_value_never_appears_in_an_error() {
        let e = parse(
            "[dataplane]\ninterface = \"eth0\"\n[[vrrp_instance]]\nname = \"v\"\ninterface = \"eth0\"\n\
             virtual_router_id = 1\npriority = 100\nauth_pass = 31415926\n",
        )
        .unwrap_err();
        let text = e.to_string();
        assert!(text.contains("auth_pass"), "{text}");
        assert!(!text.contains("31415926"), "{text}");
        assert!(text.contains("value not shown"), "{text}");
    }

    #[test]
    fn parses_a_good_config() {
        let c = parse(GOOD).unwrap();
        let vs = c.service("write").unwrap();
        assert_eq!(vs.port, 3306);
        assert_eq!(vs.protocol, Protocol::Tcp);
        assert_eq!(vs.persistence_timeout.as_secs(), 50);
        assert_eq!(vs.reals[0].weight, 3);
        assert_eq!(vs.reals[0].port, 3306, "the service port, resolved");
        assert!(vs.sorry.is_some());
        assert_eq!(c.dataplane.peer_macs[0].0, [2, 0, 0, 0, 0, 2]);
    }

    #[test]
    fn metrics_listen_takes_an_address_or_a_port_for_loopback() {
        for (value, want) in [
            ("\"10.0.0.5:9100\"", "10.0.0.5:9100"),
            ("\"9100\"", "127.0.0.1:9100"),
            ("\":9100\"", "127.0.0.1:9100"),
            ("\"[::1]:9100\"", "[::1]:9100"),
        ] {
            let c = parse(&format!("[global]\nmetrics_listen = {value}\n{GOOD}")).unwrap();
            assert_eq!(
                c.global.metrics_listen.map(|a| a.to_string()).as_deref(),
                Some(want),
                "{value}"
            );
        }
        let e = parse(&format!(
            "[global]\nmetrics_listen = \"localhost:x\"\n{GOOD}"
        ))
        .unwrap_err();
        assert!(e.to_string().contains("not address:port"), "{e}");
        assert_eq!(e.line, Some(2), "{e}");
    }

    #[test]
    fn unknown_key_is_an_error_with_line() {
        let text = GOOD.replace("weight = 3", "wieght = 3");
        let e = parse(&text).unwrap_err();
        assert_eq!(e.line, Some(13), "{e}");
        assert!(e.to_string().contains("wieght"), "{e}");
        assert!(e.to_string().starts_with("test.toml:13:"), "{e}");
    }

    #[test]
    fn bad_values_name_line_and_key() {
        for (from, to, line, needle) in [
            (
                "\"50s\"",
                "\"fifty\"",
                10,
                "`virtual_server.persistence_timeout`: invalid duration",
            ),
            (
                "02:00:00:00:00:02",
                "02:00:00:00:02",
                4,
                "`dataplane.peer_macs`: invalid MAC",
            ),
            (
                "\"10.1.1.161\"",
                "\"10.1.1\"",
                12,
                "`virtual_server.real_server.address`",
            ),
            ("port = 3306", "port = 70000", 9, "`virtual_server.port`"),
        ] {
            let e = parse(&GOOD.replace(from, to)).unwrap_err();
            assert_eq!(e.line, Some(line), "{from}->{to}: {e}");
            assert!(
                e.to_string()
                    .to_lowercase()
                    .contains(&needle.to_lowercase()),
                "{e}"
            );
        }
    }

    #[test]
    fn dr_port_change_and_duplicates_are_rejected() {
        let text = GOOD.replace("weight = 3", "weight = 3\nport = 3307");
        let e = parse(&text).unwrap_err();
        assert!(e.to_string().contains("cannot change the port"), "{e}");
        assert_eq!(e.line, Some(14), "the line of the offending key: {e}");

        let twice = format!("{GOOD}\n[[virtual_server]]\naddress = \"10.1.1.176\"\nport = 3306\n");
        let e = parse(&twice).unwrap_err();
        assert!(e.to_string().contains("defined twice"), "{e}");
    }

    #[test]
    fn family_mismatch_is_rejected() {
        let text = GOOD.replace("\"10.1.1.162\"", "\"fd00::2\"");
        assert!(
            parse(&text)
                .unwrap_err()
                .to_string()
                .contains("address family")
        );
    }
}

#[cfg(test)]
mod named_checks_and_errors {
    use super::*;

    const NAMED: &str = r#"
[dataplane]
interface = "eth0"

[check.tcp3]
type = "tcp"
connect_timeout = "3s"
rise = 2

[[virtual_server]]
name = "write"
address = "10.1.1.176"
port = 3306
default_check = "tcp3"
[[virtual_server.real_server]]
address = "10.1.1.113"
[[virtual_server.real_server]]
address = "10.1.1.114"
check = { type = "tcp", connect_timeout = "1s" }
[virtual_server.sorry_server]
address = "10.1.1.75"
"#;

    #[test]
    fn a_named_check_is_written_once_and_used_by_default() {
        let c = Config::parse(Path::new("t.toml"), NAMED).unwrap();
        let vs = c.service("write").unwrap();
        let rise = |r: &Real| r.check.as_ref().map(|c| c.rise);
        assert_eq!(rise(&vs.reals[0]), Some(2), "the default check");
        assert_eq!(rise(&vs.reals[1]), Some(1), "its own inline check");
        assert_eq!(rise(vs.sorry.as_ref().unwrap()), Some(2));
        let f = File::parse(Path::new("t.toml"), NAMED).unwrap();
        assert_eq!(File::parse(Path::new("t.toml"), &f.to_toml()).unwrap(), f);
    }

    #[test]
    fn every_error_is_reported_at_its_own_line() {
        let text = NAMED
            .replace(
                "default_check = \"tcp3\"",
                "default_check = \"tcp4\"\nquorum = 0",
            )
            .replace("connect_timeout = \"1s\"", "connect_timeout = \"0s\"")
            .replace("rise = 2", "rise = 0");
        let e = Config::parse(Path::new("t.toml"), &text).unwrap_err();
        let got: Vec<(Option<usize>, &str)> =
            e.0.iter().map(|e| (e.line, e.key.as_str())).collect();
        assert_eq!(
            got,
            vec![
                (Some(8), "check.tcp3.rise"),
                (Some(15), "virtual_server.quorum"),
                (Some(14), "virtual_server.default_check"),
                (Some(20), "virtual_server.real_server.check.connect_timeout"),
            ],
            "{e}"
        );
        assert!(
            e.to_string()
                .contains("no [check.tcp4] (named checks: tcp3)"),
            "{e}"
        );
    }

    #[test]
    fn a_bare_local_part_is_an_address_and_mail_without_a_server_is_a_warning() {
        let text = format!(
            "[global]\nnotification_email = [\"acassen\"]\n{}",
            NAMED.trim_start()
        );
        let c = Config::parse(Path::new("t.toml"), &text).unwrap();
        assert!(c.mail.is_none());
        assert!(
            c.warnings[0].contains("without global.smtp_server"),
            "{:?}",
            c.warnings
        );
        let text = text.replace("[global]\n", "[global]\nsmtp_server = \"127.0.0.1\"\n");
        let c = Config::parse(Path::new("t.toml"), &text).unwrap();
        assert_eq!(c.mail.unwrap().to, vec!["acassen@localhost".to_string()]);
    }
}

#[cfg(test)]
mod example_configs {
    use super::*;

    #[test]
    fn every_example_in_configs_is_valid() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../configs");
        let mut n = 0;
        for entry in std::fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            if path.extension().is_some_and(|e| e == "toml") {
                Config::load(&path).unwrap_or_else(|e| panic!("{e}"));
                n += 1;
            }
        }
        assert!(n >= 1, "no example configs in {}", dir.display());
    }
}

#[cfg(test)]
mod vrrp_and_checks {
    use super::*;

    const BASE: &str = r#"
[dataplane]
interface = "eth0"

[[vrrp_instance]]
name = "VI_1"
interface = "eth0"
virtual_router_id = 51
priority = 180
auth_pass = "1111"
[[vrrp_instance.virtual_address]]
address = "10.1.1.176"
device = "eth0"
label = "eth0:1"

[[vrrp_sync_group]]
name = "G"
members = ["VI_1"]

[[virtual_server]]
address = "10.1.1.176"
port = 3306
failback = "delay"
failback_delay = "30s"
[[virtual_server.real_server]]
address = "10.1.1.113"
[virtual_server.real_server.check]
type = "tcp"
connect_timeout = "3s"
retry = 3
[virtual_server.sorry_server]
address = "10.1.1.75"
"#;

    fn parse(text: &str) -> Result<Config, ConfigError> {
        Config::parse(Path::new("t.toml"), text).map_err(|mut e| e.0.remove(0))
    }

    fn file(text: &str) -> File {
        File::parse(Path::new("t.toml"), text).unwrap()
    }

    #[test]
    fn the_full_schema_parses_and_round_trips() {
        let c = parse(BASE).unwrap();
        let vi = &c.vrrp_instances[0];
        assert_eq!(
            (vi.virtual_router_id, vi.priority, vi.version),
            (51, 180, VrrpVersion::V2)
        );
        assert_eq!(vi.advert_interval.as_secs(), 1);
        assert!(vi.preempt);
        assert_eq!(vi.sync_group.as_deref(), Some("G"));
        assert_eq!(vi.virtual_addresses[0].label.as_deref(), Some("eth0:1"));
        let rs = &c.services[0].reals[0];
        let check = rs.check.as_ref().unwrap();
        assert!(matches!(
            check.kind,
            CheckKind::Tcp {
                retry: 3,
                port: 3306,
                ..
            }
        ));
        assert_eq!(
            (check.interval.as_secs(), check.rise, check.fall),
            (1, 1, 1)
        );
        let f = file(BASE);
        let again = file(&f.to_toml());
        assert_eq!(f, again, "serialized:\n{}", f.to_toml());
    }

    #[test]
    fn vrrp_and_service_rules() {
        for (from, to, needle) in [
            ("priority = 180", "priority = 0", "vrrp_instance.priority"),
            (
                "auth_pass = \"1111\"",
                "auth_pass = \"123456789\"",
                "1–8 bytes",
            ),
            (
                "priority = 180",
                "priority = 180\nversion = 3",
                "VRRPv3 has no authentication",
            ),
            (
                "priority = 180",
                "priority = 180\nadvert_interval = \"1500ms\"",
                "whole seconds",
            ),
            (
                "priority = 180",
                "priority = 180\nversion = 4",
                "expected 2 or 3",
            ),
            (
                "members = [\"VI_1\"]",
                "members = [\"VI_2\"]",
                "no vrrp_instance named",
            ),
            ("failback_delay = \"30s\"", "", "needs a failback_delay"),
            ("retry = 3", "retry = 0", "check.retry"),
            (
                "type = \"tcp\"",
                "type = \"http\"",
                "unknown variant `http`",
            ),
            (
                "connect_timeout = \"3s\"",
                "connect_timeout = \"3s\"\nbogus = 1",
                "unknown field `bogus`",
            ),
        ] {
            let text = BASE.replacen(from, to, 1);
            let e = parse(&text).expect_err(to);
            assert!(e.to_string().contains(needle), "{to}: {e}");
            assert!(e.line.is_some(), "{to}: no line in {e}");
        }
    }
}

#[cfg(test)]
mod quorum_section {
    use super::*;
    use std::time::Duration;

    /// A writer service on a VRRP address with a sorry server, and `extra` appended.
    fn text(extra: &str) -> String {
        format!(
            "[dataplane]\ninterface = \"eth0\"\n\
             [[vrrp_instance]]\nname = \"v\"\ninterface = \"eth0\"\nvirtual_router_id = 1\n\
             priority = 100\n[[vrrp_instance.virtual_address]]\naddress = \"10.1.1.176\"\n\
             [[virtual_server]]\nname = \"write\"\naddress = \"10.1.1.176\"\nport = 3306\n\
             [[virtual_server.real_server]]\naddress = \"10.1.1.113\"\n\
             [virtual_server.sorry_server]\naddress = \"10.1.1.75\"\n{extra}"
        )
    }

    fn parse(extra: &str) -> Result<Config, String> {
        Config::parse(Path::new("t.toml"), &text(extra)).map_err(|e| e.to_string())
    }

    #[test]
    fn defaults_and_bare_endpoints() {
        let c = parse("[quorum]\nendpoints = [\"10.1.1.113:2379\", \"http://10.1.1.30:2379\"]\n")
            .unwrap();
        let q = c.quorum.as_ref().unwrap();
        assert_eq!(
            q.endpoints,
            vec!["http://10.1.1.113:2379", "http://10.1.1.30:2379"]
        );
        assert_eq!(q.ttl, Duration::from_secs(3));
        assert_eq!(q.prefix, "/lb-agent/");
        assert!(q.tls.is_none());
        assert!(
            !c.warnings.iter().any(|w| w.contains("split the writes")),
            "{:?}",
            c.warnings
        );
    }

    #[test]
    fn without_quorum_check_config_warns_that_a_partition_can_split_the_writes() {
        let c = parse("").unwrap();
        assert!(
            c.warnings
                .iter()
                .any(|w| w.starts_with("write:") && w.contains("split the writes")),
            "{:?}",
            c.warnings
        );
    }

    #[test]
    fn bad_values_are_errors_naming_the_key() {
        for (extra, key, says) in [
            ("endpoints = []", "quorum.endpoints", "client URLs"),
            (
                "endpoints = [\"10.1.1.113\"]",
                "quorum.endpoints",
                "host:port",
            ),
            (
                "endpoints = [\"ftp://a:1\"]",
                "quorum.endpoints",
                "unknown scheme",
            ),
            ("endpoints = [\"a:0\"]", "quorum.endpoints", "not a port"),
            (
                "endpoints = [\"https://a:1\"]",
                "quorum.endpoints",
                "https needs ca_file",
            ),
            (
                "endpoints = [\"a:1\"]\nttl = \"1s\"",
                "quorum.ttl",
                "between 2s and 60s",
            ),
            (
                "endpoints = [\"a:1\"]\nttl = \"61s\"",
                "quorum.ttl",
                "between 2s and 60s",
            ),
            (
                "endpoints = [\"a:1\"]\nprefix = \"lb\"",
                "quorum.prefix",
                "start with /",
            ),
            (
                "endpoints = [\"http://a:1\"]\nca_file = \"/ca.pem\"",
                "quorum.endpoints",
                "must be https",
            ),
            (
                "endpoints = [\"https://a:1\"]\nca_file = \"/ca.pem\"\ncert_file = \"/c.pem\"",
                "quorum.key_file",
                "needs its key_file",
            ),
            (
                "endpoints = [\"https://a:1\"]\ncert_file = \"/c.pem\"\nkey_file = \"/k.pem\"",
                "quorum.ca_file",
                "CA",
            ),
        ] {
            let e = parse(&format!("[quorum]\n{extra}\n")).unwrap_err();
            assert!(e.contains(key) && e.contains(says), "{extra}: {e}");
        }
    }

    #[test]
    fn pair_and_quorum_together_are_refused() {
        let e = parse(
            "[pair]\npeers = [\"10.1.1.75\"]\nkey_file = \"/etc/lb-agent/pair.key\"\n\
             [quorum]\nendpoints = [\"a:1\"]\n",
        )
        .unwrap_err();
        assert!(e.contains("[pair] and [quorum]"), "{e}");
    }

    #[test]
    fn tls_with_a_client_certificate() {
        let c = parse(
            "[quorum]\nendpoints = [\"https://a:2379\"]\nca_file = \"/etc/lb-agent/ca.pem\"\n\
             cert_file = \"/etc/lb-agent/c.pem\"\nkey_file = \"/etc/lb-agent/k.pem\"\n\
             ttl = \"5s\"\nprefix = \"/lab/\"\n",
        )
        .unwrap();
        let q = c.quorum.unwrap();
        let tls = q.tls.unwrap();
        assert_eq!(tls.ca_file.unwrap(), Path::new("/etc/lb-agent/ca.pem"));
        assert_eq!(
            tls.identity.unwrap(),
            (
                PathBuf::from("/etc/lb-agent/c.pem"),
                PathBuf::from("/etc/lb-agent/k.pem")
            )
        );
        assert_eq!(q.ttl, Duration::from_secs(5));
        assert_eq!(q.prefix, "/lab/");
    }
}

#[cfg(test)]
mod replicas_section {
    use std::time::Duration;

    use super::*;

    /// The recipe's write and read services with two replicas serving reads.
    fn text(write_extra: &str, replication: &str, read_reals: &[&str]) -> String {
        let mut t = format!(
            r#"
[dataplane]
interface = "eth0"

[check.mysql]
type = "mysql"
user = "lbcheck"
password_file = "/etc/lb-agent/mysql-check.pw"

[[virtual_server]]
name = "mysql-write"
address = "10.1.1.176"
port = 3306
default_check = "mysql"
{write_extra}
[[virtual_server.real_server]]
address = "10.1.1.113"
[virtual_server.sorry_server]
address = "10.1.1.75"
{replication}

[[virtual_server]]
name = "mysql-read"
address = "10.1.1.177"
port = 3306
default_check = "mysql"
"#
        );
        for r in read_reals {
            t += &format!("[[virtual_server.real_server]]\naddress = \"{r}\"\n");
        }
        t
    }

    const REPLICATION: &str = "[virtual_server.replication]\nuser = \"repl\"\n\
                               password_file = \"/etc/lb-agent/repl.pw\"\nblock = \"5s\"\n";

    fn parse(text: &str) -> Result<Config, String> {
        Config::parse(Path::new("test.toml"), text).map_err(|e| {
            e.0.iter()
                .map(|e| e.to_string())
                .collect::<Vec<_>>()
                .join("\n")
        })
    }

    #[test]
    fn replicas_with_their_login_and_time_rules() {
        let c = parse(&text(
            "replicas = [\"10.1.1.121\", \"10.1.1.122\"]",
            REPLICATION,
            &["10.1.1.113", "10.1.1.75", "10.1.1.121", "10.1.1.122"],
        ))
        .unwrap();
        let vs = c.service("mysql-write").unwrap();
        assert_eq!(vs.replicas.len(), 2);
        let r = vs.replication.as_ref().unwrap();
        assert_eq!((r.user.as_str(), r.port), ("repl", 3306));
        assert_eq!(r.timing.block, Duration::from_secs(5));
        assert_eq!(r.timing.settle, Duration::from_secs(5));
        assert_eq!(r.timing.start_timeout, Duration::from_secs(10));
    }

    #[test]
    fn every_rule_is_an_error_naming_the_key() {
        let reads = ["10.1.1.113", "10.1.1.75", "10.1.1.121"];
        for (extra, replication, reals, says) in [
            (
                "replicas = [\"10.1.1.121\"]",
                "",
                &reads[..],
                "needs [virtual_server.replication]",
            ),
            (
                "",
                REPLICATION,
                &reads[..],
                "only meaningful with `replicas`",
            ),
            (
                "replicas = [\"10.1.1.121\"]",
                REPLICATION,
                &reads[..2],
                "no real server with a `mysql` check",
            ),
            (
                "replicas = [\"10.1.1.75\"]",
                REPLICATION,
                &reads[..],
                "this service's real or sorry server",
            ),
            (
                "replicas = [\"10.1.1.121\", \"10.1.1.121\"]",
                REPLICATION,
                &reads[..],
                "listed twice",
            ),
            (
                "replicas = [\"10.1.1.121\"]",
                "[virtual_server.replication]\nuser = \"\"\npassword_file = \"/p\"\n",
                &reads[..],
                "1 to 80 characters",
            ),
            (
                "replicas = [\"10.1.1.121\"]",
                "[virtual_server.replication]\nuser = \"r\"\npassword_file = \"/p\"\n\
                 start_timeout = \"0s\"\n",
                &reads[..],
                "replication.start_timeout",
            ),
        ] {
            let e = parse(&text(extra, replication, reals)).unwrap_err();
            assert!(e.contains(says), "{extra} / {replication}: {e}");
        }
    }
}
