//! The desired data-plane state, computed from the configuration and what is known of each
//! real server (its MAC, whether it is this host). Pure: the writer in `dataplane` applies it.

use std::{
    collections::{BTreeMap, HashMap, HashSet},
    net::IpAddr,
    sync::Arc,
};

use xdp_ebpf::maps::{
    CONN_STATES, CONN_TCP_FIN, CONN_TCP_OPEN, CONN_TCP_RST, CONN_UDP, Config as XdpConfig,
    FAMILY_V4, FAMILY_V6, MAX_MACS, MacAddr, MaglevTable, REAL_LOCAL, REAL_VALID, Real,
    SERVICE_ACTIVE, SERVICE_HOLD, SERVICE_LEASED, ServiceKey, Targets, ticks_of_secs,
};

use super::{
    ids::Planner,
    maglev::{Backend, backend_key},
};
use crate::config::{Config, Mac, Service};

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

/// What health checks say of each service, by service name; a missing entry is the default.
pub type Verdicts = HashMap<String, ServiceVerdict>;

/// What health checks say of one service's members (see `health::verdict`); the default
/// (nothing checked) leaves every resolved real server in.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ServiceVerdict {
    /// Real servers that fail their check or role, with why: out of the pool (or, with
    /// `inhibit_on_failure`, in it with weight 0).
    pub failing: Vec<(IpAddr, String)>,
    /// Weights set by dynamic exec checks.
    pub weights: Vec<(IpAddr, u32)>,
    /// The failback policy keeps the traffic on the sorry server.
    pub hold_sorry: bool,
    /// The shared writer decision says the real servers have the writes (see
    /// `crate::decision`): they stay in the pool whatever this agent's own checks say.
    pub force_primary: bool,
    /// No writer is decided yet: the service's frames are dropped (`SERVICE_HOLD`).
    pub hold_writes: bool,
    /// The service follows the shared writer decision: its frames are forwarded only while
    /// the agent's lease on the data plane holds (`SERVICE_LEASED`).
    pub leased: bool,
}

#[derive(Debug, Clone)]
pub struct DesiredService {
    pub name: String,
    pub key: ServiceKey,
    pub id: u32,
    pub generation: u32,
    pub flags: u32,
    pub persistence_timeout_s: u32,
    /// Real ids in the table (the sorry server's when `using_sorry`).
    pub members: Vec<u32>,
    /// The servers an established flow may stay on: the pool, weight 0 included (see
    /// `xdp_ebpf::maps::Targets`); written and flipped with the table.
    pub targets: Arc<Targets>,
    pub using_sorry: bool,
    /// What an operator should hear about this service (sorry server in use, empty pool).
    pub warning: Option<String>,
    pub table: Arc<MaglevTable>,
    /// Which of the service's two tables holds `table` in the data plane; set by the
    /// reconciler when it writes the state.
    pub active_table: u32,
}

#[derive(Debug, Clone)]
pub struct DesiredState {
    pub config: XdpConfig,
    /// Real id → (address, map value).
    pub reals: BTreeMap<u32, (IpAddr, Real)>,
    /// Address → (real id, what was known of it).
    pub known: HashMap<IpAddr, (u32, RealInfo)>,
    /// In configuration order.
    pub services: Vec<DesiredService>,
}

impl DesiredState {
    fn set_real(&mut self, id: u32, generation: u32, addr: IpAddr, ri: RealInfo) {
        let mut real = Real {
            generation,
            addr: addr_words(&addr),
            family: if addr.is_ipv4() {
                FAMILY_V4 as u32
            } else {
                FAMILY_V6 as u32
            },
            ..Real::default()
        };
        if ri.local {
            real.flags = REAL_VALID | REAL_LOCAL;
        } else if let Some(mac) = ri.mac {
            real.mac = MacAddr::new(mac);
            real.flags = REAL_VALID;
        }
        self.reals.insert(id, (addr, real));
        self.known.insert(addr, (id, ri));
    }

    /// Recomputes the services whose health verdict differs from `before` (a missing entry
    /// is the default, so `before` is empty after `compute`).
    pub fn apply_health(
        &mut self,
        cfg: &Config,
        verdicts: &Verdicts,
        before: &Verdicts,
        planner: &mut Planner,
    ) {
        let none = ServiceVerdict::default();
        for i in 0..self.services.len() {
            let old = &self.services[i];
            let Some(vs) = cfg.service(&old.name) else {
                continue;
            };
            let v = verdicts.get(&vs.name).unwrap_or(&none);
            if v == before.get(&vs.name).unwrap_or(&none) {
                continue;
            }
            let (key, id, generation) = (old.key, old.id, old.generation);
            self.services[i] = service_state(vs, key, id, generation, &self.known, v, planner);
        }
    }

    /// Things an operator should hear about: unresolved MACs, sorry servers in use, empty
    /// pools.
    pub fn warnings(&self) -> Vec<String> {
        let mut w: Vec<String> = self
            .reals
            .values()
            .filter(|(_, r)| r.flags == 0)
            .map(|(a, _)| format!("real server {a}: MAC unresolved, left out of its pools"))
            .collect();
        w.extend(self.services.iter().filter_map(|s| s.warning.clone()));
        w
    }
}

/// The address of a data-plane `[u32; 4]` and family.
pub fn addr_from_words(words: &[u32; 4], family: u32) -> IpAddr {
    if family == FAMILY_V4 as u32 {
        IpAddr::V4(words[0].to_ne_bytes().into())
    } else {
        let mut o = [0u8; 16];
        for (i, w) in words.iter().enumerate() {
            o[i * 4..i * 4 + 4].copy_from_slice(&w.to_ne_bytes());
        }
        IpAddr::V6(o.into())
    }
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

pub fn service_key(vs: &Service) -> ServiceKey {
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
    let t = &cfg.conn_timeouts;
    let ticks = |d: std::time::Duration| ticks_of_secs(d.as_secs().min(u32::MAX as u64) as u32);
    let mut conn_timeout = [0; CONN_STATES];
    conn_timeout[CONN_TCP_OPEN as usize] = ticks(t.tcp);
    conn_timeout[CONN_TCP_FIN as usize] = ticks(t.tcp_fin);
    conn_timeout[CONN_TCP_RST as usize] = ticks(t.tcp_close);
    conn_timeout[CONN_UDP as usize] = ticks(t.udp);
    let mut c = XdpConfig {
        iface_mac: MacAddr::new(iface_mac),
        local_macs,
        peer_macs,
        n_local_macs,
        n_peer_macs,
        vrid_bitmap: [0; 8],
        conn_timeout,
    };
    for &v in &dp.vrids {
        c.set_vrid(v);
    }
    Ok(c)
}

/// Computes the whole desired state. Ids come from `planner`, so they stay stable from one
/// computation to the next; so do the Maglev tables of unchanged pools.
pub fn compute(
    cfg: &Config,
    iface_mac: [u8; 6],
    info: impl Fn(&IpAddr) -> RealInfo,
    planner: &mut Planner,
) -> Result<DesiredState, String> {
    let mut config = xdp_config(cfg, iface_mac)?;
    for vi in &cfg.vrrp_instances {
        config.set_vrid(vi.virtual_router_id);
    }
    let mut state = DesiredState {
        config,
        reals: BTreeMap::new(),
        known: HashMap::new(),
        services: vec![],
    };
    for vs in &cfg.services {
        for (_, r) in vs.members() {
            if state.known.contains_key(&r.address) {
                continue;
            }
            let (id, generation) = planner.real_id(&r.address).ok_or_else(|| {
                format!(
                    "more real servers than the data plane holds ({})",
                    r.address
                )
            })?;
            state.set_real(id, generation, r.address, info(&r.address));
        }
    }
    let mut live_services = HashSet::new();
    for vs in &cfg.services {
        let key = service_key(vs);
        live_services.insert(key);
        let (id, generation) = planner.service_id(&key).ok_or_else(|| {
            format!(
                "more virtual servers than the data plane holds ({})",
                vs.name
            )
        })?;
        let svc = service_state(
            vs,
            key,
            id,
            generation,
            &state.known,
            &ServiceVerdict::default(),
            planner,
        );
        state.services.push(svc);
    }
    let live_reals: HashSet<IpAddr> = state.known.keys().copied().collect();
    planner.finish(&live_reals, &live_services);
    Ok(state)
}

/// The target set of a pool (see `DesiredService::targets`).
pub fn targets_of(pool: &[Backend]) -> Targets {
    let mut t = Targets::EMPTY;
    for b in pool {
        t.insert(b.id);
    }
    t
}

/// One service: its pool (or the sorry server below quorum) and its table.
fn service_state(
    vs: &Service,
    key: ServiceKey,
    id: u32,
    generation: u32,
    known: &HashMap<IpAddr, (u32, RealInfo)>,
    verdict: &ServiceVerdict,
    planner: &mut Planner,
) -> DesiredService {
    let backend = |r: &crate::config::Real| {
        let (id, ri) = known[&r.address];
        ri.usable().then_some(Backend {
            id,
            key: backend_key(&r.address, vs.port),
            weight: r.weight,
        })
    };
    let judged = |r: &crate::config::Real| {
        let mut b = backend(r)?;
        if let Some((_, w)) = verdict.weights.iter().find(|(a, _)| *a == r.address) {
            b.weight = *w;
        }
        if !verdict.force_primary && verdict.failing.iter().any(|(a, _)| *a == r.address) {
            // A failed server leaves, or stays with weight 0 (no new flows, keeps its
            // place in the table) with inhibit_on_failure.
            if !vs.inhibit_on_failure {
                return None;
            }
            b.weight = 0;
        }
        Some(b)
    };
    let mut pool: Vec<Backend> = vs.reals.iter().filter_map(judged).collect();
    let mut using_sorry = false;
    let mut warning = None;
    let healthy = pool.iter().filter(|b| b.weight > 0).count() as u32;
    let below_quorum = healthy < vs.quorum && !(verdict.force_primary && healthy > 0);
    if (below_quorum || verdict.hold_sorry)
        && let Some(sorry) = &vs.sorry
    {
        pool = backend(sorry)
            .map(|b| Backend { weight: 1, ..b })
            .into_iter()
            .collect();
        using_sorry = true;
        warning = Some(if healthy < vs.quorum {
            format!(
                "{}: {healthy} usable real server(s), quorum {}: using the sorry server {}",
                vs.name, vs.quorum, sorry.address
            )
        } else {
            format!(
                "{}: the sorry server {} keeps the traffic until the failback policy ({:?}) \
                 allows",
                vs.name,
                sorry.address,
                vs.failback.name()
            )
        });
    }
    if pool.iter().all(|b| b.weight == 0) {
        warning = Some(format!(
            "{}: empty pool, its traffic passes to the local stack",
            vs.name
        ));
    }
    DesiredService {
        name: vs.name.clone(),
        key,
        id,
        generation,
        flags: if vs.active { SERVICE_ACTIVE } else { 0 }
            | if verdict.hold_writes { SERVICE_HOLD } else { 0 }
            | if verdict.leased { SERVICE_LEASED } else { 0 },
        persistence_timeout_s: vs.persistence_timeout.as_secs() as u32,
        members: pool.iter().filter(|b| b.weight > 0).map(|b| b.id).collect(),
        targets: Arc::new(targets_of(&pool)),
        using_sorry,
        warning,
        table: planner.table(&pool),
        active_table: 0,
    }
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
        let s = compute(
            &cfg(TWO),
            [2, 0, 0, 0, 0, 1],
            known,
            &mut Planner::default(),
        )
        .unwrap();
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
        let unresolved_161 = |a: &IpAddr| {
            if a.to_string() == "10.1.1.161" {
                RealInfo::default()
            } else {
                known(a)
            }
        };
        let s = compute(&cfg(TWO), [2; 6], unresolved_161, &mut Planner::default()).unwrap();
        assert!(s.services[0].using_sorry);
        assert!(s.services[0].table.slots.iter().all(|&r| r == 1));
        assert_eq!(s.services[1].members, vec![1]);
        assert!(s.warnings().iter().any(|w| w.contains("MAC unresolved")));
        assert!(s.warnings().iter().any(|w| w.contains("sorry server")));
    }

    #[test]
    fn nothing_usable_means_empty_table() {
        let s = compute(
            &cfg(TWO),
            [2; 6],
            |_| RealInfo::default(),
            &mut Planner::default(),
        )
        .unwrap();
        assert!(s.services[0].table.slots.iter().all(|&r| r == NO_REAL));
    }
}
