//! Value types of the configuration, each parsed from a string with a clear error.

use std::{fmt, str::FromStr, time::Duration};

use serde::{Deserialize, Deserializer, Serialize, Serializer, de::Error as _};

/// Deserializes any `FromStr` type from a TOML string, reporting its error at the value.
fn from_str<'de, D, T>(d: D) -> Result<T, D::Error>
where
    D: Deserializer<'de>,
    T: FromStr<Err = String>,
{
    let s = String::deserialize(d)?;
    s.parse().map_err(D::Error::custom)
}

/// A duration written as `"1s"`, `"200ms"`, `"1m30s"`, `"50us"` or `"0"`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash)]
pub struct DurationStr(pub Duration);

impl FromStr for DurationStr {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let bad = || format!("invalid duration {s:?}: expected e.g. \"1s\", \"200ms\", \"1m30s\"");
        let s = s.trim();
        if s == "0" {
            return Ok(DurationStr(Duration::ZERO));
        }
        let mut total = Duration::ZERO;
        let mut rest = s;
        if rest.is_empty() {
            return Err(bad());
        }
        while !rest.is_empty() {
            let digits = rest.find(|c: char| !c.is_ascii_digit()).ok_or_else(bad)?;
            if digits == 0 {
                return Err(bad());
            }
            let n: u64 = rest[..digits].parse().map_err(|_| bad())?;
            rest = &rest[digits..];
            let unit_len = rest
                .find(|c: char| c.is_ascii_digit())
                .unwrap_or(rest.len());
            let part = match &rest[..unit_len] {
                "h" => n.checked_mul(3600).map(Duration::from_secs),
                "m" => n.checked_mul(60).map(Duration::from_secs),
                "s" => Some(Duration::from_secs(n)),
                "ms" => Some(Duration::from_millis(n)),
                "us" => Some(Duration::from_micros(n)),
                _ => None,
            }
            .ok_or_else(bad)?;
            total = total.checked_add(part).ok_or_else(bad)?;
            rest = &rest[unit_len..];
        }
        Ok(DurationStr(total))
    }
}

impl fmt::Display for DurationStr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let d = self.0;
        if d.subsec_nanos() == 0 {
            write!(f, "{}s", d.as_secs())
        } else if d.subsec_nanos().is_multiple_of(1_000_000) {
            write!(f, "{}ms", d.as_millis())
        } else {
            write!(f, "{}us", d.as_micros())
        }
    }
}

impl Serialize for DurationStr {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for DurationStr {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        from_str(d)
    }
}

/// An Ethernet address, `"02:00:5e:00:01:33"`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Mac(pub [u8; 6]);

impl FromStr for Mac {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let bad =
            || format!("invalid MAC address {s:?}: expected six hex octets like 02:00:5e:00:01:33");
        let mut out = [0u8; 6];
        let mut parts = s.split([':', '-']);
        for o in &mut out {
            let p = parts.next().ok_or_else(bad)?;
            if p.len() != 2 {
                return Err(bad());
            }
            *o = u8::from_str_radix(p, 16).map_err(|_| bad())?;
        }
        if parts.next().is_some() {
            return Err(bad());
        }
        Ok(Mac(out))
    }
}

impl fmt::Display for Mac {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let o = self.0;
        write!(
            f,
            "{:02x}:{:02x}:{:02x}:{:02x}:{:02x}:{:02x}",
            o[0], o[1], o[2], o[3], o[4], o[5]
        )
    }
}

impl Serialize for Mac {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Mac {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        from_str(d)
    }
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Protocol {
    #[default]
    Tcp,
    Udp,
}

impl Protocol {
    pub fn number(self) -> u8 {
        match self {
            Protocol::Tcp => xdp_ebpf::maps::PROTO_TCP,
            Protocol::Udp => xdp_ebpf::maps::PROTO_UDP,
        }
    }
}

impl fmt::Display for Protocol {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Protocol::Tcp => "tcp",
            Protocol::Udp => "udp",
        })
    }
}

/// How to attach the XDP program.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum XdpModeSetting {
    /// Driver (native) mode, falling back to skb (generic) mode with a log line.
    #[default]
    Auto,
    Driver,
    Skb,
}

/// `host` or `host:port` (25 when omitted); `[v6]:port` for an IPv6 literal with a port.
pub fn parse_smtp_server(s: &str) -> Result<(String, u16), String> {
    let bad = || format!("smtp_server {s:?}: expected HOST or HOST:PORT");
    if let Some(rest) = s.strip_prefix('[') {
        let (host, port) = rest.split_once("]:").ok_or_else(bad)?;
        return Ok((host.to_string(), port.parse().map_err(|_| bad())?));
    }
    match s.rsplit_once(':') {
        // More than one ':' is a bare IPv6 literal.
        Some((host, port)) if !host.contains(':') => {
            Ok((host.to_string(), port.parse().map_err(|_| bad())?))
        }
        _ if s.is_empty() => Err(bad()),
        _ => Ok((s.to_string(), 25)),
    }
}

/// An e-mail address as keepalived takes it: `user@domain`, or a bare local part (`acassen`)
/// that the mail server delivers locally, sent as `acassen@localhost`.
pub fn email_address(s: &str) -> Result<String, String> {
    let full = if s.contains('@') {
        s.to_string()
    } else {
        format!("{s}@localhost")
    };
    full.parse::<lettre::Address>()
        .map(|_| full.clone())
        .map_err(|e| format!("{s:?} is not an e-mail address: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        for (s, ms) in [
            ("1s", 1000),
            ("200ms", 200),
            ("1m30s", 90_000),
            ("0", 0),
            ("2h", 7_200_000),
        ] {
            assert_eq!(
                s.parse::<DurationStr>().unwrap().0,
                Duration::from_millis(ms),
                "{s}"
            );
        }
        for s in ["", "s", "1", "1x", "-1s", "1.5s", "99999999999999999999h"] {
            assert!(s.parse::<DurationStr>().is_err(), "{s:?} should fail");
        }
    }

    #[test]
    fn macs() {
        assert_eq!(
            "02:00:5e:00:01:33".parse::<Mac>().unwrap().0,
            [2, 0, 0x5e, 0, 1, 0x33]
        );
        assert_eq!(
            "02-00-5E-00-01-33".parse::<Mac>().unwrap().0,
            [2, 0, 0x5e, 0, 1, 0x33]
        );
        for s in [
            "",
            "02:00:5e:00:01",
            "02:00:5e:00:01:33:44",
            "0g:00:00:00:00:00",
            "2:0:0:0:0:0",
        ] {
            assert!(s.parse::<Mac>().is_err(), "{s:?} should fail");
        }
        assert_eq!(
            Mac([2, 0, 0x5e, 0, 1, 0x33]).to_string(),
            "02:00:5e:00:01:33"
        );
    }

    #[test]
    fn smtp_server_forms() {
        assert_eq!(parse_smtp_server("mail"), Ok(("mail".into(), 25)));
        assert_eq!(
            parse_smtp_server("10.0.0.1:2525"),
            Ok(("10.0.0.1".into(), 2525))
        );
        assert_eq!(parse_smtp_server("[::1]:2525"), Ok(("::1".into(), 2525)));
        assert_eq!(parse_smtp_server("::1"), Ok(("::1".into(), 25)));
        assert!(parse_smtp_server("mail:x").is_err());
        assert!(parse_smtp_server("").is_err());
    }

    #[test]
    fn email_addresses_as_keepalived_takes_them() {
        assert_eq!(email_address("dba@example.com").unwrap(), "dba@example.com");
        assert_eq!(email_address("acassen").unwrap(), "acassen@localhost");
        assert!(email_address("not an address").is_err());
        assert!(email_address("").is_err());
    }

    #[test]
    fn durations_print_as_they_parse() {
        for s in ["6s", "200ms", "0s", "150us", "90s"] {
            assert_eq!(s.parse::<DurationStr>().unwrap().to_string(), s);
        }
    }
}
