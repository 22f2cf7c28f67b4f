//! The agent's TOML configuration: schema, parsing and validation.
//!
//! Unknown keys are errors (`deny_unknown_fields`), never ignored. Parse errors carry the
//! file, line, column and key (from `toml`'s spans); validation errors name the file, the line
//! of the offending table and the key.

pub mod keepalived;
mod schema;
mod types;
mod validate;

use std::{
    fmt,
    net::IpAddr,
    path::{Path, PathBuf},
};

pub use schema::*;
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

impl Config {
    /// Reads, parses and validates a config file.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|e| ConfigError {
            file: path.into(),
            line: None,
            key: String::new(),
            message: format!("cannot read: {e}"),
        })?;
        Self::parse(path, &text)
    }

    /// Parses and validates `text`, naming `path` in errors.
    pub fn parse(path: &Path, text: &str) -> Result<Config, ConfigError> {
        let config: Config = toml::from_str(text).map_err(|e| ConfigError {
            file: path.into(),
            line: e.span().map(|s| line_of(text, s.start)),
            key: e.span().map(|s| key_at(text, s.start)).unwrap_or_default(),
            message: e.message().trim_end().to_string(),
        })?;
        config.validate(path, text)?;
        Ok(config)
    }

    fn validate(&self, path: &Path, text: &str) -> Result<(), ConfigError> {
        validate::validate(self).map_err(|e| ConfigError {
            file: path.into(),
            line: e.span.map(|s| line_of(text, s.start)),
            key: e.key,
            message: e.message,
        })
    }

    /// Serializes back to TOML (used by `import-keepalived`).
    pub fn to_toml(&self) -> String {
        toml::to_string(self).expect("every config value serializes")
    }
}

impl VirtualServer {
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
        Config::parse(Path::new("test.toml"), text)
    }

    #[test]
    fn parses_a_good_config() {
        let c = parse(GOOD).unwrap();
        let vs = c.virtual_servers[0].get_ref();
        assert_eq!(vs.port, 3306);
        assert_eq!(vs.protocol, Protocol::Tcp);
        assert_eq!(vs.persistence_timeout.0.as_secs(), 50);
        assert_eq!(vs.real_servers[0].weight, 3);
        assert!(vs.sorry_server.is_some());
        assert_eq!(c.dataplane.peer_macs[0].0, [2, 0, 0, 0, 0, 2]);
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
        assert_eq!(e.line, Some(6));

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
        Config::parse(Path::new("t.toml"), text)
    }

    #[test]
    fn the_full_schema_parses_and_round_trips() {
        let c = parse(BASE).unwrap();
        let vi = c.vrrp_instances[0].get_ref();
        assert_eq!(
            (vi.virtual_router_id, vi.priority, vi.version),
            (51, 180, 2)
        );
        assert_eq!(vi.advert_interval.0.as_secs(), 1);
        assert!(vi.preempt);
        assert_eq!(vi.virtual_addresses[0].label.as_deref(), Some("eth0:1"));
        let rs = &c.virtual_servers[0].get_ref().real_servers[0];
        assert!(matches!(rs.check, Some(Check::Tcp { retry: Some(3), .. })));
        let again = parse(&c.to_toml()).unwrap();
        assert_eq!(c, again, "serialized:\n{}", c.to_toml());
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
