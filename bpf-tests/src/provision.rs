//! One fixed provisioning (VIPs, real servers, MACs) so that expected bytes stay stable, and a
//! harness that loads the real XDP object with fresh, small maps and runs frames through
//! BPF_PROG_TEST_RUN.
//!
//! The maps are written by `lb-agent`'s own code path: the provisioning is a TOML config,
//! turned into the desired state by `balancer::desired::compute` and written by `MapWriter`.

use std::{
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
    path::Path,
};

use aya::programs::{TestRun, TestRunOptions};
use lb_agent::{
    balancer::{
        desired::{self, DesiredState, RealInfo},
        ids::Planner,
    },
    config::Config,
    dataplane::{Counters, Dataplane, LoadOptions, reconcile},
};
use xdp_ebpf::maps::*;

pub const LB_MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 0x01];
pub const VMAC: [u8; 6] = [0x00, 0x00, 0x5e, 0x00, 0x01, 51];
pub const PEER_MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 0x0f];
pub const CLIENT_MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 0xc1];
pub const OTHER_MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 0xee];
pub const ROUTER_MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 0xfe];

pub const CLIENT4: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 10);
pub const CLIENT6: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 0x10);
/// This host's own address: a real server listed with it is local.
pub const LB_ADDR: Ipv4Addr = Ipv4Addr::new(10, 0, 0, 1);

pub const VIP_TCP: Ipv4Addr = Ipv4Addr::new(10, 0, 0, 100);
pub const VIP_ALL_PORTS: Ipv4Addr = Ipv4Addr::new(10, 0, 0, 101);
pub const VIP_INACTIVE: Ipv4Addr = Ipv4Addr::new(10, 0, 0, 102);
pub const VIP_LOCAL: Ipv4Addr = Ipv4Addr::new(10, 0, 0, 103);
pub const VIP_SORRY: Ipv4Addr = Ipv4Addr::new(10, 0, 0, 104);
pub const VIP_PERSIST: Ipv4Addr = Ipv4Addr::new(10, 0, 0, 105);
pub const VIP_EMPTY: Ipv4Addr = Ipv4Addr::new(10, 0, 0, 106);
pub const VIP_WEIGHTED: Ipv4Addr = Ipv4Addr::new(10, 0, 0, 107);
pub const VIP6: Ipv6Addr = Ipv6Addr::new(0xfd00, 0, 0, 0, 0, 0, 0, 0x100);
pub const NOT_A_VIP: Ipv4Addr = Ipv4Addr::new(10, 0, 0, 200);

/// Real server `n`'s MAC: 02:00:00:00:01:0n.
pub const fn real_mac(n: u8) -> [u8; 6] {
    [0x02, 0, 0, 0, 0x01, n]
}

pub const PROVISION: &str = r#"
[dataplane]
interface = "lo"
extra_macs = ["00:00:5e:00:01:33"]
peer_macs = ["02:00:00:00:00:0f"]
vrids = [51]

[[virtual_server]]
name = "tcp"
address = "10.0.0.100"
port = 3306
[[virtual_server.real_server]]
address = "10.0.1.1"
mac = "02:00:00:00:01:01"
[[virtual_server.real_server]]
address = "10.0.1.2"
mac = "02:00:00:00:01:02"

[[virtual_server]]
name = "udp"
address = "10.0.0.100"
port = 53
protocol = "udp"
[[virtual_server.real_server]]
address = "10.0.1.1"
mac = "02:00:00:00:01:01"
[[virtual_server.real_server]]
address = "10.0.1.2"
mac = "02:00:00:00:01:02"

[[virtual_server]]
name = "all-ports"
address = "10.0.0.101"
port = 0
[[virtual_server.real_server]]
address = "10.0.1.3"
mac = "02:00:00:00:01:03"

[[virtual_server]]
name = "inactive"
address = "10.0.0.102"
port = 3306
active = false
[[virtual_server.real_server]]
address = "10.0.1.1"
mac = "02:00:00:00:01:01"

[[virtual_server]]
name = "local"
address = "10.0.0.103"
port = 3306
[[virtual_server.real_server]]
address = "10.0.0.1"

[[virtual_server]]
name = "sorry-only"
address = "10.0.0.104"
port = 3306
[[virtual_server.real_server]]
address = "10.0.1.4"
weight = 0
mac = "02:00:00:00:01:04"
[virtual_server.sorry_server]
address = "10.0.1.9"
mac = "02:00:00:00:01:09"

[[virtual_server]]
name = "persistent"
address = "10.0.0.105"
port = 3306
persistence_timeout = "300s"
[[virtual_server.real_server]]
address = "10.0.1.1"
mac = "02:00:00:00:01:01"
[[virtual_server.real_server]]
address = "10.0.1.2"
mac = "02:00:00:00:01:02"

[[virtual_server]]
name = "empty"
address = "10.0.0.106"
port = 3306
[[virtual_server.real_server]]
address = "10.0.1.8"

[[virtual_server]]
name = "weighted"
address = "10.0.0.107"
port = 3306
[[virtual_server.real_server]]
address = "10.0.1.1"
weight = 1
mac = "02:00:00:00:01:01"
[[virtual_server.real_server]]
address = "10.0.1.2"
weight = 2
mac = "02:00:00:00:01:02"
[[virtual_server.real_server]]
address = "10.0.1.3"
weight = 3
mac = "02:00:00:00:01:03"

[[virtual_server]]
name = "tcp6"
address = "fd00::100"
port = 3306
[[virtual_server.real_server]]
address = "fd00::1:1"
mac = "02:00:00:00:01:01"
[[virtual_server.real_server]]
address = "fd00::1:2"
mac = "02:00:00:00:01:02"

[[virtual_server]]
name = "udp6"
address = "fd00::100"
port = 53
protocol = "udp"
[[virtual_server.real_server]]
address = "fd00::1:1"
mac = "02:00:00:00:01:01"
"#;

/// The desired state of a provisioning config.
pub fn desired_state(text: &str) -> DesiredState {
    desired_state_with(text, &mut test_planner())
}

/// A planner with the test maps' limits.
pub fn test_planner() -> Planner {
    Planner::with_limits(TEST_REALS, TEST_SERVICES)
}

/// The desired state of a provisioning, with ids from `planner` (stable across reloads).
pub fn desired_state_with(text: &str, planner: &mut Planner) -> DesiredState {
    let cfg = Config::parse(Path::new("provision.toml"), text).expect("provisioning parses");
    let macs: std::collections::HashMap<IpAddr, [u8; 6]> = cfg
        .services
        .iter()
        .flat_map(|vs| {
            vs.members()
                .filter_map(|(_, r)| r.mac.map(|m| (r.address, m)))
        })
        .collect();
    desired::compute(
        &cfg,
        LB_MAC,
        |a| RealInfo {
            mac: macs.get(a).copied(),
            local: *a == IpAddr::V4(LB_ADDR),
        },
        planner,
    )
    .expect("provisioning computes")
}

const TEST_SERVICES: u32 = 32;
const TEST_REALS: u32 = 64;

/// Small maps: a fixture needs a handful of entries, and each case loads its own.
pub fn test_sizes() -> LoadOptions {
    LoadOptions {
        max_entries: vec![
            (MAP_MAGLEV, 2 * TEST_SERVICES),
            (MAP_SERVICES, TEST_SERVICES),
            (MAP_SVC_INFO, TEST_SERVICES),
            (MAP_REALS, TEST_REALS),
            (MAP_CONNS4, 1 << 16),
            (MAP_CONNS6, 1 << 12),
            (MAP_PERSIST, 1024),
            (MAP_FRAGS, 1024),
            (MAP_SVC_STATS, TEST_SERVICES),
            (MAP_REAL_STATS, TEST_REALS),
        ],
        bench_next_flow: false,
    }
}

/// The XDP action numbers.
pub const XDP_DROP: u32 = 1;
pub const XDP_PASS: u32 = 2;
pub const XDP_TX: u32 = 3;

/// The real XDP program, loaded with fresh maps holding one provisioning.
pub struct Harness {
    pub dp: Dataplane,
    pub state: DesiredState,
    pub planner: Planner,
}

impl Harness {
    /// The standard provisioning.
    pub fn new() -> Harness {
        Self::with(PROVISION)
    }

    pub fn with(text: &str) -> Harness {
        let mut planner = test_planner();
        let mut state = desired_state_with(text, &mut planner);
        let mut dp = Dataplane::load(&test_sizes())
            .expect("loading the XDP object (run as root after `cargo xtask build-ebpf`)");
        dp.maps().apply(&mut state).expect("writing the maps");
        Harness { dp, state, planner }
    }

    /// Runs one frame: (action, output bytes).
    pub fn run(&self, frame: &[u8]) -> (u32, Vec<u8>) {
        let mut out = vec![0u8; frame.len() + 256];
        let r = self
            .dp
            .program()
            .test_run(TestRunOptions {
                data_in: Some(frame),
                data_out: Some(&mut out),
                ..Default::default()
            })
            .expect("BPF_PROG_TEST_RUN");
        out.truncate(r.data_size_out as usize);
        (r.return_value, out)
    }

    /// Runs a frame `repeat` times in the kernel; returns the kernel's mean ns per run.
    pub fn time(&self, frame: &[u8], repeat: u32) -> f64 {
        let mut out = vec![0u8; frame.len() + 256];
        let r = self
            .dp
            .program()
            .test_run(TestRunOptions {
                data_in: Some(frame),
                data_out: Some(&mut out),
                repeat,
                ..Default::default()
            })
            .expect("BPF_PROG_TEST_RUN");
        r.duration.as_nanos() as f64
    }

    /// The real server id of an address.
    pub fn real_id(&self, addr: &str) -> u32 {
        let a: IpAddr = addr.parse().unwrap();
        *self
            .state
            .reals
            .iter()
            .find(|(_, (ra, _))| *ra == a)
            .expect("a provisioned real")
            .0
    }

    /// The service of a name.
    pub fn service(&self, name: &str) -> &desired::DesiredService {
        self.state
            .services
            .iter()
            .find(|s| s.name == name)
            .expect("a provisioned service")
    }

    /// Which real server (by MAC) a forwarded frame went to.
    pub fn real_of_mac(&self, mac: &[u8]) -> Option<u32> {
        self.state
            .reals
            .iter()
            .find(|(_, (_, r))| r.flags & REAL_VALID != 0 && r.mac.octets == mac[..6])
            .map(|(id, _)| *id)
    }

    pub fn counters(&mut self) -> Counters {
        let sids: Vec<u32> = self.state.services.iter().map(|s| s.id).collect();
        let rids: Vec<u32> = self.state.reals.keys().copied().collect();
        self.dp
            .maps()
            .counters(&sids, &rids)
            .expect("reading counters")
    }

    pub fn pass_count(&mut self, reason: PassReason) -> u64 {
        self.counters()
            .passes
            .iter()
            .find(|(r, _)| *r == reason)
            .map(|(_, n)| *n)
            .unwrap_or(0)
    }

    /// Applies another provisioning the way a reload does: the difference only.
    pub fn reload(&mut self, text: &str) -> usize {
        let mut next = desired_state_with(text, &mut self.planner);
        let ops = reconcile::plan(Some(&self.state), &mut next);
        self.dp.maps().execute(&ops).expect("reloading");
        self.state = next;
        ops.len()
    }

    /// Replaces a service's pool with `members` (address, weight), through the agent's atomic
    /// table flip. Returns the new table.
    /// Sets the connection table's clock (ticks, see `xdp_ebpf::maps::TICK_SHIFT`): time is
    /// injected here, as the agent publishes it.
    pub fn set_clock(&mut self, tick: u32) {
        self.dp.maps().set_clock(tick).expect("writing the clock");
    }

    /// Sets the agent's lease on the shared writer decisions (`CLOCK_MONOTONIC` ns).
    pub fn set_lease(&mut self, until_ns: u64) {
        self.dp
            .maps()
            .set_lease(until_ns)
            .expect("writing the lease");
    }

    /// Gives a service other flags (`SERVICE_*`), as the agent's reconciler writes them.
    pub fn set_flags(&mut self, service: &str, flags: u32) {
        let mut next = self.state.clone();
        next.services
            .iter_mut()
            .find(|s| s.name == service)
            .expect("a provisioned service")
            .flags = flags;
        let ops = reconcile::plan(Some(&self.state), &mut next);
        self.dp.maps().execute(&ops).expect("writing the flags");
        self.state = next;
    }

    pub fn set_pool(
        &mut self,
        service: &str,
        members: &[(&str, u32)],
    ) -> std::sync::Arc<MaglevTable> {
        use lb_agent::balancer::maglev::{self, Backend, backend_key};
        let backends: Vec<Backend> = members
            .iter()
            .map(|(a, w)| Backend {
                id: self.real_id(a),
                key: backend_key(
                    &a.parse().unwrap(),
                    u16::from_be(self.service(service).key.port),
                ),
                weight: *w,
            })
            .collect();
        let mut table = Box::<MaglevTable>::default();
        table
            .slots
            .copy_from_slice(&maglev::build(&backends, MAGLEV_RING));
        let table: std::sync::Arc<MaglevTable> = table.into();
        let mut next = self.state.clone();
        let entry = next
            .services
            .iter_mut()
            .find(|x| x.name == service)
            .unwrap();
        entry.table = table.clone();
        entry.targets = desired::targets_of(&backends).into();
        entry.members = backends
            .iter()
            .filter(|b| b.weight > 0)
            .map(|b| b.id)
            .collect();
        let ops = reconcile::plan(Some(&self.state), &mut next);
        self.dp.maps().execute(&ops).expect("replacing the pool");
        self.state = next;
        table
    }

    /// The real id that Maglev gives a hash in a service's live table (the userspace model of
    /// the data plane's choice).
    pub fn predicted(&self, service: &str, hash: u32) -> u32 {
        self.service(service).table.slots[(hash % MAGLEV_RING) as usize]
    }
}

impl Default for Harness {
    fn default() -> Self {
        Self::new()
    }
}
