//! The desired data-plane state, computed from the configuration and what is known of each
//! real server (its MAC, whether it is this host). Pure: the writer in `dataplane` applies it.

use std::{collections::BTreeMap, net::IpAddr};

use xdp_ebpf::maps::{
    Config as XdpConfig, FAMILY_V4, FAMILY_V6, MAGLEV_RING, MAX_MACS, MAX_REALS, MAX_SERVICES,
    MacAddr, MaglevTable, REAL_LOCAL, REAL_VALID, Real, SERVICE_ACTIVE, ServiceKey,
};

use super::maglev::{self, Backend, backend_key};
use crate::config::{Config, Mac, VirtualServer};

/// What the agent knows of one real server.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RealInfo {
    /// Resolved (or configured) MAC.
    pub mac: Option<[u8; 6]>,
    /// The address is this host's: frames pass to the local stack.
    pub local: bool,
}

impl RealInfo {
    pub fn usable(&self) -> bool {
        self.local || self.mac.is_some()
    }
}

#[derive(Debug, Clone)]
pub struct DesiredService {
    pub name: String,
    pub key: ServiceKey,
    pub id: u32,
    pub flags: u32,
    pub persistence_timeout_s: u32,
    /// Real ids in the table (the sorry server's when `using_sorry`).
    pub members: Vec<u32>,
    pub using_sorry: bool,
    pub table: Box<MaglevTable>,
}

#[derive(Debug, Clone)]
pub struct DesiredState {
    pub config: XdpConfig,
    /// Real id → (address, map value).
    pub reals: BTreeMap<u32, (IpAddr, Real)>,
    pub services: Vec<DesiredService>,
    /// Things an operator should hear about (unresolved MACs, sorry servers in use, ...).
    pub warnings: Vec<String>,
}

/// The `[u32; 4]` network-order form the data plane keeps addresses in.
pub fn addr_words(addr: &IpAddr) -> [u32; 4] {
    match addr {
        IpAddr::V4(a) => [u32::from_ne_bytes(a.octets()), 0, 0, 0],
        IpAddr::V6(a) => {
            let o = a.octets();
            let w = |i: usize| u32::from_ne_bytes([o[i], o[i + 1], o[i + 2], o[i + 3]]);
            [w(0), w(4), w(8), w(12)]
        }
    }
}

pub fn service_key(vs: &VirtualServer) -> ServiceKey {
    ServiceKey {
        addr: addr_words(&vs.address),
        port: vs.port.to_be(),
        proto: vs.protocol.number(),
        family: if vs.address.is_ipv4() {
            FAMILY_V4
        } else {
            FAMILY_V6
        },
    }
}

fn mac_list(macs: impl IntoIterator<Item = [u8; 6]>) -> ([MacAddr; MAX_MACS], u32) {
    let mut list = [MacAddr::default(); MAX_MACS];
    let mut n = 0;
    for m in macs.into_iter().take(MAX_MACS) {
        list[n] = MacAddr::new(m);
        n += 1;
    }
    (list, n as u32)
}

/// The `LB_CONFIG` value for an interface MAC and the configuration.
pub fn xdp_config(cfg: &Config, iface_mac: [u8; 6]) -> Result<XdpConfig, String> {
    let dp = &cfg.dataplane;
    if dp.extra_macs.len() + 1 > MAX_MACS || dp.peer_macs.len() > MAX_MACS {
        return Err(format!(
            "at most {} extra_macs and {MAX_MACS} peer_macs",
            MAX_MACS - 1
        ));
    }
    let (local_macs, n_local_macs) =
        mac_list(std::iter::once(iface_mac).chain(dp.extra_macs.iter().map(|m: &Mac| m.0)));
    let (peer_macs, n_peer_macs) = mac_list(dp.peer_macs.iter().map(|m| m.0));
    let mut c = XdpConfig {
        iface_mac: MacAddr::new(iface_mac),
        local_macs,
        peer_macs,
        n_local_macs,
        n_peer_macs,
        vrid_bitmap: [0; 8],
    };
    for &v in &dp.vrids {
        c.set_vrid(v);
    }
    Ok(c)
}

/// Computes the whole desired state. Real ids are given to distinct real addresses in sorted
/// order; service ids follow the configuration order.
pub fn compute(
    cfg: &Config,
    iface_mac: [u8; 6],
    info: impl Fn(&IpAddr) -> RealInfo,
) -> Result<DesiredState, String> {
    let config = xdp_config(cfg, iface_mac)?;
    if cfg.virtual_servers.len() > MAX_SERVICES as usize {
        return Err(format!("at most {MAX_SERVICES} virtual servers"));
    }
    let mut addrs: Vec<IpAddr> = cfg
        .virtual_servers
        .iter()
        .flat_map(|vs| {
            let vs = vs.get_ref();
            vs.real_servers
                .iter()
                .chain(vs.sorry_server.iter())
                .map(|r| r.address)
        })
        .collect();
    addrs.sort();
    addrs.dedup();
    if addrs.len() > MAX_REALS as usize {
        return Err(format!("at most {MAX_REALS} distinct real servers"));
    }
    let mut warnings = Vec::new();
    let mut reals = BTreeMap::new();
    let mut id_of = BTreeMap::new();
    for (id, addr) in addrs.iter().enumerate() {
        let id = id as u32;
        let ri = info(addr);
        let mut real = Real::default();
        if ri.local {
            real.flags = REAL_VALID | REAL_LOCAL;
        } else if let Some(mac) = ri.mac {
            real.mac = MacAddr::new(mac);
            real.flags = REAL_VALID;
        } else {
            warnings.push(format!(
                "real server {addr}: MAC unresolved, left out of its pools"
            ));
        }
        reals.insert(id, (*addr, real));
        id_of.insert(*addr, (id, ri));
    }

    let mut services = Vec::new();
    for (sid, vs) in cfg.virtual_servers.iter().enumerate() {
        let vs = vs.get_ref();
        let backend = |r: &crate::config::RealServer| {
            let (id, ri) = id_of[&r.address];
            ri.usable().then_some(Backend {
                id,
                key: backend_key(&r.address, vs.port),
                weight: r.weight,
            })
        };
        let mut pool: Vec<Backend> = vs.real_servers.iter().filter_map(backend).collect();
        let mut using_sorry = false;
        if pool.iter().all(|b| b.weight == 0)
            && let Some(sorry) = &vs.sorry_server
        {
            pool = backend(sorry)
                .map(|b| Backend { weight: 1, ..b })
                .into_iter()
                .collect();
            using_sorry = true;
            warnings.push(format!(
                "{}: no usable real server, using the sorry server {}",
                vs.display_name(),
                sorry.address
            ));
        }
        if pool.iter().all(|b| b.weight == 0) {
            warnings.push(format!(
                "{}: empty pool, its traffic passes to the local stack",
                vs.display_name()
            ));
        }
        let mut table = Box::<MaglevTable>::default();
        table
            .slots
            .copy_from_slice(&maglev::build(&pool, MAGLEV_RING));
        services.push(DesiredService {
            name: vs.display_name(),
            key: service_key(vs),
            id: sid as u32,
            flags: if vs.active { SERVICE_ACTIVE } else { 0 },
            persistence_timeout_s: vs.persistence_timeout.0.as_secs() as u32,
            members: pool.iter().filter(|b| b.weight > 0).map(|b| b.id).collect(),
            using_sorry,
            table,
        });
    }
    Ok(DesiredState {
        config,
        reals,
        services,
        warnings,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;
    use xdp_ebpf::maps::NO_REAL;

    fn cfg(text: &str) -> Config {
        Config::parse(Path::new("t.toml"), text).unwrap()
    }

    const TWO: &str = r#"
[dataplane]
interface = "eth0"
vrids = [51]
[[virtual_server]]
address = "10.1.1.176"
port = 3306
[[virtual_server.real_server]]
address = "10.1.1.161"
[virtual_server.sorry_server]
address = "10.1.1.162"
[[virtual_server]]
address = "10.1.1.177"
port = 3306
active = false
[[virtual_server.real_server]]
address = "10.1.1.161"
[[virtual_server.real_server]]
address = "10.1.1.162"
"#;

    fn known(a: &IpAddr) -> RealInfo {
        let last = match a {
            IpAddr::V4(a) => a.octets()[3],
            IpAddr::V6(_) => 0,
        };
        RealInfo {
            mac: Some([2, 0, 0, 0, 0, last]),
            local: last == 162,
        }
    }

    #[test]
    fn ids_flags_and_tables() {
        let s = compute(&cfg(TWO), [2, 0, 0, 0, 0, 1], known).unwrap();
        assert_eq!(s.reals.len(), 2);
        assert_eq!(s.reals[&0].1.flags, REAL_VALID);
        assert_eq!(s.reals[&1].1.flags, REAL_VALID | REAL_LOCAL);
        assert_eq!(s.services[0].flags, SERVICE_ACTIVE);
        assert_eq!(s.services[1].flags, 0);
        assert!(s.services[0].table.slots.iter().all(|&r| r == 0));
        assert_eq!(s.services[1].members, vec![0, 1]);
        assert!(s.config.has_vrid(51));
        assert_eq!(s.services[0].key.port, 3306u16.to_be());
        assert_eq!(
            s.services[0].key.addr[0],
            u32::from_ne_bytes([10, 1, 1, 176])
        );
    }

    #[test]
    fn unresolved_real_falls_back_to_sorry_server_with_warning() {
        let s = compute(&cfg(TWO), [2; 6], |a| {
            if a.to_string() == "10.1.1.161" {
                RealInfo::default()
            } else {
                known(a)
            }
        })
        .unwrap();
        assert!(s.services[0].using_sorry);
        assert!(s.services[0].table.slots.iter().all(|&r| r == 1));
        assert_eq!(s.services[1].members, vec![1]);
        assert!(s.warnings.iter().any(|w| w.contains("MAC unresolved")));
        assert!(s.warnings.iter().any(|w| w.contains("sorry server")));
    }

    #[test]
    fn nothing_usable_means_empty_table() {
        let s = compute(&cfg(TWO), [2; 6], |_| RealInfo::default()).unwrap();
        assert!(s.services[0].table.slots.iter().all(|&r| r == NO_REAL));
    }
}
