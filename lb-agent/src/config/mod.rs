//! The agent's TOML configuration: schema, parsing and validation.
//!
//! Unknown keys are errors (`deny_unknown_fields`), never ignored. Parse errors carry the
//! file, line, column and key (from `toml`'s spans); validation errors name the file, the line
//! of the offending table and the key.

mod types;

use std::{
    collections::HashSet,
    fmt,
    net::IpAddr,
    path::{Path, PathBuf},
};

use serde::Deserialize;
use toml::Spanned;

pub use types::{DurationStr, Mac, Protocol, XdpModeSetting};

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    pub dataplane: Dataplane,
    #[serde(default, rename = "virtual_server")]
    pub virtual_servers: Vec<Spanned<VirtualServer>>,
}

/// Where and how the XDP program runs.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Dataplane {
    /// The interface that receives VIP traffic and reaches the real servers.
    pub interface: String,
    /// `auto` (driver, falling back to skb), `driver` or `skb`.
    #[serde(default)]
    pub xdp_mode: XdpModeSetting,
    /// Further destination MACs that mean "this host" (VRRP virtual MACs with `use_vmac`).
    #[serde(default)]
    pub extra_macs: Vec<Mac>,
    /// Source MACs of the peer load balancer(s): frames they forwarded are never forwarded
    /// again. Peers are also learned from VRRP adverts of `vrids`.
    #[serde(default)]
    pub peer_macs: Vec<Mac>,
    /// VRRP router ids whose adverts identify peer load balancers.
    #[serde(default)]
    pub vrids: Vec<u8>,
    /// bpffs directory for pinned maps (created if missing).
    #[serde(default = "default_pin_dir")]
    pub pin_dir: PathBuf,
}

fn default_pin_dir() -> PathBuf {
    PathBuf::from("/sys/fs/bpf/lb-agent")
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VirtualServer {
    /// A name for logs and status; defaults to `address:port/protocol`.
    pub name: Option<String>,
    pub address: IpAddr,
    /// 0 = every port of the VIP (keepalived's fwmark-less "port 0").
    pub port: u16,
    #[serde(default)]
    pub protocol: Protocol,
    /// Client-IP affinity (IPVS `persistence_timeout`); 0 = none.
    #[serde(default)]
    pub persistence_timeout: DurationStr,
    /// Forward for this service now. VRRP drives this later; a static config forwards.
    #[serde(default = "yes")]
    pub active: bool,
    #[serde(default, rename = "real_server")]
    pub real_servers: Vec<RealServer>,
    /// Used when no real server is usable.
    pub sorry_server: Option<RealServer>,
}

fn yes() -> bool {
    true
}

#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct RealServer {
    pub address: IpAddr,
    /// Must equal the service port in DR mode (the data plane rewrites no port); defaults to it.
    pub port: Option<u16>,
    #[serde(default = "one")]
    pub weight: u32,
    /// A fixed MAC; otherwise it is resolved through the kernel's neighbour table.
    pub mac: Option<Mac>,
}

fn one() -> u32 {
    1
}

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
        let err = |span: std::ops::Range<usize>, key: &str, message: String| ConfigError {
            file: path.into(),
            line: Some(line_of(text, span.start)),
            key: key.into(),
            message,
        };
        if self.dataplane.interface.is_empty() {
            return Err(ConfigError {
                file: path.into(),
                line: None,
                key: "dataplane.interface".into(),
                message: "must name an interface".into(),
            });
        }
        let mut seen = HashSet::new();
        for vs in &self.virtual_servers {
            let span = vs.span();
            let vs = vs.get_ref();
            if !seen.insert((vs.address, vs.port, vs.protocol)) {
                return Err(err(
                    span,
                    "virtual_server",
                    format!("{} is defined twice", vs.display_name()),
                ));
            }
            let persistence = vs.persistence_timeout.0;
            if persistence.as_secs() > u32::MAX as u64 || persistence.subsec_nanos() != 0 {
                return Err(err(
                    span,
                    "virtual_server.persistence_timeout",
                    "must be whole seconds".into(),
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
                    "virtual_server.real_server"
                } else {
                    "virtual_server.sorry_server"
                };
                if rs.address.is_ipv4() != vs.address.is_ipv4() {
                    return Err(err(
                        span.clone(),
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
                    return Err(err(
                        span.clone(),
                        &format!("{key}.port"),
                        format!(
                            "{}:{port}: direct routing cannot change the port (service port {})",
                            rs.address, vs.port
                        ),
                    ));
                }
                if i < vs.real_servers.len() && !reals.insert(rs.address) {
                    return Err(err(
                        span.clone(),
                        key,
                        format!("{} is listed twice in {}", rs.address, vs.display_name()),
                    ));
                }
            }
        }
        Ok(())
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
