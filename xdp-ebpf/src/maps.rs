//! Map names, sizes, keys and values: the contract between the XDP program and `lb-agent`.
//!
//! Who writes what:
//! - `lb-agent` writes `LB_CONFIG`, `LB_SERVICES`, `LB_SVC_INFO`, `LB_VIP_FILTER`, `LB_MAGLEV`,
//!   `LB_TARGETS`, `LB_REALS`, `LB_CLOCK`, `LB_LEASE`;
//! - the XDP program writes `LB_CONNS4`, `LB_CONNS6`, `LB_PERSIST`, `LB_FRAGS`, `LB_PEERS` and all the
//!   counters (`LB_SVC_STATS`, `LB_REAL_STATS`, `LB_PASS_STATS`); userspace only reads them
//!   (and may clear connection entries).
//!
//! Map names are at most 15 bytes (the kernel's `BPF_OBJ_NAME_LEN` minus the NUL).

/// The XDP program's name in the object file.
pub const PROGRAM_NAME: &str = "lb_xdp";

pub const MAP_CONFIG: &str = "LB_CONFIG";
pub const MAP_SERVICES: &str = "LB_SERVICES";
pub const MAP_SVC_INFO: &str = "LB_SVC_INFO";
pub const MAP_VIP_FILTER: &str = "LB_VIP_FILTER";
pub const MAP_MAGLEV: &str = "LB_MAGLEV";
pub const MAP_TARGETS: &str = "LB_TARGETS";
pub const MAP_CLOCK: &str = "LB_CLOCK";
pub const MAP_LEASE: &str = "LB_LEASE";
pub const MAP_REALS: &str = "LB_REALS";
pub const MAP_CONNS4: &str = "LB_CONNS4";
pub const MAP_CONNS6: &str = "LB_CONNS6";
pub const MAP_PERSIST: &str = "LB_PERSIST";
pub const MAP_FRAGS: &str = "LB_FRAGS";
pub const MAP_PEERS: &str = "LB_PEERS";
pub const MAP_SVC_STATS: &str = "LB_SVC_STATS";
pub const MAP_REAL_STATS: &str = "LB_REAL_STATS";
pub const MAP_PASS_STATS: &str = "LB_PASS_STATS";

/// A `.rodata` switch of the XDP program for benchmarks only (see its definition).
pub const BENCH_NEXT_FLOW: &str = "LB_BENCH_NEXT_FLOW";

/// Every map, for pinning and inspection.
pub const ALL_MAPS: [&str; 17] = [
    MAP_CONFIG,
    MAP_SERVICES,
    MAP_SVC_INFO,
    MAP_VIP_FILTER,
    MAP_MAGLEV,
    MAP_TARGETS,
    MAP_REALS,
    MAP_CONNS4,
    MAP_CONNS6,
    MAP_PERSIST,
    MAP_FRAGS,
    MAP_PEERS,
    MAP_SVC_STATS,
    MAP_REAL_STATS,
    MAP_PASS_STATS,
    MAP_CLOCK,
    MAP_LEASE,
];

/// Services (VIP, port, protocol) the data plane knows; also the bound of service ids.
pub const MAX_SERVICES: u32 = 1024;
/// Real servers (including sorry servers) over all services; also the bound of real ids.
pub const MAX_REALS: u32 = 4096;
/// Slots of one Maglev table. Prime, as Maglev requires, and large against the pool size
/// (≥ 100 × the servers of a pool keeps the weight error under 1 %).
pub const MAGLEV_RING: u32 = 4093;
/// Two tables per service: the active one and the one userspace is rewriting.
pub const MAGLEV_TABLES: u32 = MAX_SERVICES * 2;
/// Tracked connections per address family (LRU: the oldest idle flows go first).
pub const MAX_CONNS: u32 = 1 << 20;
/// Client-affinity entries for services with a persistence timeout.
pub const MAX_PERSIST: u32 = 1 << 18;
/// Fragmented datagrams in flight.
pub const MAX_FRAGS: u32 = 1 << 14;
/// Slots of the VIP pre-filter, a power of two.
pub const VIP_FILTER_SIZE: u32 = 1 << 16;
/// MAC addresses in each list of `Config`, and learned peers in `Peers`.
pub const MAX_MACS: usize = 8;

/// A Maglev slot that points at no real server (the pool is empty).
pub const NO_REAL: u32 = u32::MAX;

/// Index of a service's table (0 or 1) in `LB_MAGLEV`.
#[inline(always)]
pub const fn maglev_index(service_id: u32, table: u32) -> u32 {
    service_id * 2 + (table & 1)
}

/// `LB_MAGLEV` value: one whole Maglev table, so that userspace replaces a table with one
/// map update (not thousands), and the data plane reads a slot with one lookup.
#[repr(C)]
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct MaglevTable {
    /// Real ids; `NO_REAL` where the pool is empty.
    pub slots: [u32; MAGLEV_RING as usize],
}

impl core::fmt::Debug for MaglevTable {
    /// The first slots only: 4093 numbers help nobody reading a log or a failed assertion.
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        write!(f, "MaglevTable {:?}..", &self.slots[..8])
    }
}

impl Default for MaglevTable {
    fn default() -> Self {
        Self {
            slots: [NO_REAL; MAGLEV_RING as usize],
        }
    }
}

/// Words of a `Targets` bitmap: one bit per real id.
pub const TARGET_WORDS: usize = MAX_REALS as usize / 64;

/// `LB_TARGETS` value, beside each Maglev table (same index): the real servers a flow of the
/// service may stay on — the table's pool, including members with weight 0 (drained or
/// quiesced: no new flows, established ones stay, as IPVS keeps them). A connection or
/// persistence entry whose server is not in the live set takes a new decision: after a
/// failback, nothing keeps writing to the sorry server. Written and flipped with its table.
#[repr(C)]
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct Targets {
    pub bits: [u64; TARGET_WORDS],
}

impl Targets {
    pub const EMPTY: Targets = Targets {
        bits: [0; TARGET_WORDS],
    };

    #[inline(always)]
    pub fn contains(&self, real_id: u32) -> bool {
        match self.bits.get((real_id >> 6) as usize) {
            Some(w) => w & (1 << (real_id & 63)) != 0,
            None => false,
        }
    }

    pub fn insert(&mut self, real_id: u32) {
        if let Some(w) = self.bits.get_mut((real_id >> 6) as usize) {
            *w |= 1 << (real_id & 63);
        }
    }
}

impl Default for Targets {
    fn default() -> Self {
        Self::EMPTY
    }
}

impl core::fmt::Debug for Targets {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        let mut l = f.debug_set();
        for id in 0..MAX_REALS {
            if self.contains(id) {
                l.entry(&id);
            }
        }
        l.finish()
    }
}

/// Connection-table time: `CLOCK_MONOTONIC` nanoseconds `>> TICK_SHIFT`, ticks of 2^30 ns
/// (1.07 s), fine enough for timeouts of seconds to minutes. The agent writes the current
/// tick into `LB_CLOCK[0]` every second: the data plane reads it with one inlined array
/// lookup instead of a clock helper call (a tenth of an established flow's cost). Should
/// the agent stop, the clock stops and entries live on (as they did before aging).
pub const TICK_SHIFT: u32 = 30;

/// The current tick, from nanoseconds of `CLOCK_MONOTONIC`.
pub const fn tick_of_ns(ns: u64) -> u32 {
    (ns >> TICK_SHIFT) as u32
}

/// The ticks that cover at least `secs` seconds (0 stays 0: no timeout).
pub const fn ticks_of_secs(secs: u32) -> u32 {
    let ns = secs as u64 * 1_000_000_000;
    ns.div_ceil(1 << TICK_SHIFT) as u32
}

/// `Conn::state`, and the index of its idle timeout in `Config::conn_timeout`, as IPVS
/// times its entries (in DR mode it sees the client's half of a connection only).
/// A TCP flow that has not ended (SYN seen, or established).
pub const CONN_TCP_OPEN: u32 = 0;
/// The client sent FIN: the connection is closing (IPVS `fin_wait`).
pub const CONN_TCP_FIN: u32 = 1;
/// The client sent RST (IPVS `close`).
pub const CONN_TCP_RST: u32 = 2;
/// A UDP flow (IPVS `udp`).
pub const CONN_UDP: u32 = 3;
pub const CONN_STATES: usize = 4;

/// An Ethernet address, padded to 8 bytes and 8-aligned so that the data plane compares it as
/// one `u64` (octets in memory order, i.e. little-endian, with the padding zero).
#[repr(C, align(8))]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct MacAddr {
    pub octets: [u8; 6],
    pub _pad: [u8; 2],
}

impl MacAddr {
    pub const fn new(octets: [u8; 6]) -> Self {
        Self {
            octets,
            _pad: [0; 2],
        }
    }
    pub const fn is_zero(&self) -> bool {
        self.as_u64() == 0
    }
    /// The address as the data plane compares it: octets in memory order, little-endian.
    /// One aligned 8-byte load: this is on the data plane's hot path.
    #[inline(always)]
    pub const fn as_u64(&self) -> u64 {
        // SAFETY: `MacAddr` is 8 bytes, 8-aligned, and any bit pattern is a valid u64.
        let word = unsafe { *(self as *const Self as *const u64) };
        u64::from_le(word) & 0xffff_ffff_ffff
    }
}

/// `LB_CONFIG[0]`: per-interface settings, written once by the agent at attach time (and on
/// VRRP or config changes).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Config {
    /// Source MAC of forwarded frames: the interface's own address.
    pub iface_mac: MacAddr,
    /// Destination MACs that mean "this host": the interface MAC and VRRP virtual MACs.
    /// Frames to any other MAC (flooded, or for a neighbour) pass untouched.
    pub local_macs: [MacAddr; MAX_MACS],
    /// Source MACs of peer load balancers (configured). A frame they sent was already
    /// balanced: it is delivered locally and never forwarded again.
    pub peer_macs: [MacAddr; MAX_MACS],
    pub n_local_macs: u32,
    pub n_peer_macs: u32,
    /// Bitmap of our VRRP router ids: the source MAC of an advert for one of them is a peer
    /// load balancer, learned into `LB_PEERS`. Adverts of other routers teach nothing.
    pub vrid_bitmap: [u32; 8],
    /// Idle timeout of a connection entry by `Conn::state`, in ticks (`ticks_of_secs`); an
    /// entry idle for longer is gone (0: never, until the LRU evicts it).
    pub conn_timeout: [u32; CONN_STATES],
}

impl Config {
    pub const fn has_vrid(&self, vrid: u8) -> bool {
        self.vrid_bitmap[(vrid >> 5) as usize] & (1 << (vrid & 31)) != 0
    }
    pub fn set_vrid(&mut self, vrid: u8) {
        self.vrid_bitmap[(vrid >> 5) as usize] |= 1 << (vrid & 31);
    }
}

/// `LB_PEERS[0]`: peer load balancers learned from VRRP adverts (written by the XDP program).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct Peers {
    pub macs: [MacAddr; MAX_MACS],
}

pub const FAMILY_V4: u8 = 4;
pub const FAMILY_V6: u8 = 6;
pub const PROTO_TCP: u8 = 6;
pub const PROTO_UDP: u8 = 17;

/// `LB_SERVICES` key: a virtual service. `port` 0 means every port of the VIP.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct ServiceKey {
    /// VIP, network byte order; IPv4 in word 0.
    pub addr: [u32; 4],
    /// Network byte order.
    pub port: u16,
    pub proto: u8,
    pub family: u8,
}

/// The service is forwarded. Every load balancer forwards by the same decision whatever its
/// VRRP state (a backup that receives VIP frames — stale ARP, two masters — sends them where
/// the master would); clear only for a service configured `active = false`, whose frames
/// pass to the local stack.
pub const SERVICE_ACTIVE: u32 = 1;

/// The service's writes wait: its frames are dropped (the client retransmits). Set while the
/// agents have not agreed on the writer yet (an agent that starts, or returns, before it has
/// heard its peer's decision), so that no frame reaches a server the decision may not name.
pub const SERVICE_HOLD: u32 = 2;

/// The service's writes follow the agents' shared writer decision only while the agent's
/// lease holds: `CLOCK_MONOTONIC` before `LB_LEASE[0]` (nanoseconds), which the agent renews
/// every second while its decisions are current. A stalled agent stops renewing, and once
/// the lease runs out its data plane holds the writes (as `SERVICE_HOLD`) instead of
/// forwarding them by a decision its peer may since have moved: the lease is shorter than
/// the time the peer needs to take over and decide, so the stalled side stops before the
/// other side acts. The data plane's own clock (`bpf_ktime_get_coarse_ns`), not the agent's
/// tick, which stops with the agent.
pub const SERVICE_LEASED: u32 = 4;

/// How long the agent's lease on its data plane lasts (see `SERVICE_LEASED`): three renewals
/// may be missed (a busy machine) before it runs out, and it runs out well before the peer
/// can take the master role (about 3 advert intervals) and decide (3 s more).
pub const LEASE_NS: u64 = 3_000_000_000;

/// `LB_SVC_INFO[id]` (`LB_SERVICES` maps a `ServiceKey` to the id). An array, so that an
/// established flow, which finds its service id in the connection table, reads its service
/// without a hash lookup, and so that flipping `active_table` is one aligned word.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Service {
    /// Index of the service's tables and counters, `< MAX_SERVICES`.
    pub id: u32,
    pub flags: u32,
    /// Which of the two Maglev tables is live (0 or 1). Userspace writes the other one, then
    /// flips this: an atomic swap of the whole pool.
    pub active_table: u32,
    /// IPVS `persistence_timeout` in seconds; 0 = no client affinity.
    pub persistence_timeout_s: u32,
    /// Incremented each time userspace gives this id to another service, so that connection
    /// entries of a removed service never route traffic of the next one (see `Conn`).
    pub generation: u32,
    pub _pad: u32,
}

/// `LB_VIP_FILTER` bits: a cheap pre-filter before the service hash lookup, so that traffic to
/// non-VIP addresses costs one inlined array read. Slot = `vip_filter_slot(addr)`.
pub const VIP_FILTER_ANY: u32 = 1;
/// Some service in this slot has port 0 (all ports): look it up after an exact-port miss.
pub const VIP_FILTER_ALL_PORTS: u32 = 2;

/// The real server can be forwarded to: its MAC is resolved.
pub const REAL_VALID: u32 = 1;
/// The real server is this host: frames for it pass to the local stack.
pub const REAL_LOCAL: u32 = 2;

/// `LB_REALS[real_id]`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Real {
    pub mac: MacAddr,
    pub flags: u32,
    /// Incremented each time userspace gives this id to another address, so that connection
    /// and persistence entries of a removed server never reach the next one (see `real_ref`).
    pub generation: u32,
    /// The server's address (network order, IPv4 in word 0), for userspace and bpftool: a
    /// restarted agent finds its ids here.
    pub addr: [u32; 4],
    /// `FAMILY_V4` or `FAMILY_V6`; 0 for an unused entry.
    pub family: u32,
    pub _pad: u32,
}

/// A reference to a real server that dies with its id: id in the low 16 bits, generation in
/// the high 16 (`Conn::real`, `Persist::real`).
#[inline(always)]
pub const fn real_ref(id: u32, generation: u32) -> u32 {
    (id & 0xffff) | (generation << 16)
}

// Real ids must fit `real_ref`'s 16 bits.
const _: () = assert!(MAX_REALS <= 0x1_0000);

/// A flow as the client sends it, in the family-neutral form the data plane hashes; the
/// `LB_CONNS6` key. IPv4 flows are stored under the smaller `FlowKey4`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct FlowKey {
    pub src: [u32; 4],
    pub dst: [u32; 4],
    /// Network byte order.
    pub sport: u16,
    /// Network byte order.
    pub dport: u16,
    pub proto: u8,
    /// `FAMILY_V4` or `FAMILY_V6`.
    pub family: u8,
    pub _pad: [u8; 2],
}

impl FlowKey {
    #[inline(always)]
    pub const fn is_v4(&self) -> bool {
        self.family == FAMILY_V4
    }

    /// An IPv4 flow; ports in host order (converted here).
    pub const fn v4(src: [u8; 4], dst: [u8; 4], sport: u16, dport: u16, proto: u8) -> Self {
        Self {
            src: [u32::from_ne_bytes(src), 0, 0, 0],
            dst: [u32::from_ne_bytes(dst), 0, 0, 0],
            sport: sport.to_be(),
            dport: dport.to_be(),
            proto,
            family: FAMILY_V4,
            _pad: [0; 2],
        }
    }
}

/// `LB_CONNS4` / `LB_CONNS6` value: the flow's real server and its service (for the activity
/// check and the counters), and what ages it out.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Conn {
    /// `real_ref(id, generation)`.
    pub real: u32,
    /// `conn_service(id, generation)`: valid only while the service's generation matches.
    pub service: u32,
    /// The tick (see `TICK_SHIFT`) of the flow's last frame.
    pub last_seen: u32,
    /// `CONN_*`: which idle timeout applies.
    pub state: u32,
}

// Service ids must fit `conn_service`'s 16 bits.
const _: () = assert!(MAX_SERVICES <= 0x1_0000);

/// The `Conn::service` word: service id in the low 16 bits, generation in the high 16.
#[inline(always)]
pub const fn conn_service(id: u32, generation: u32) -> u32 {
    (id & 0xffff) | (generation << 16)
}

/// `LB_CONNS4` key: an IPv4 flow in 16 bytes (the kernel hashes and compares fewer words
/// than for the 40-byte `FlowKey`, on every packet).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct FlowKey4 {
    pub src: u32,
    pub dst: u32,
    pub sport: u16,
    pub dport: u16,
    pub proto: u8,
    pub _pad: [u8; 3],
}

impl FlowKey4 {
    #[inline(always)]
    pub const fn from_flow(f: &FlowKey) -> Self {
        Self {
            src: f.src[0],
            dst: f.dst[0],
            sport: f.sport,
            dport: f.dport,
            proto: f.proto,
            _pad: [0; 3],
        }
    }
}

/// `LB_PERSIST` key: client-IP affinity per service.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct PersistKey {
    pub service: u32,
    pub client: [u32; 4],
}

/// `LB_PERSIST` value.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Persist {
    /// `real_ref(id, generation)`.
    pub real: u32,
    pub _pad: u32,
    /// `bpf_ktime_get_ns` of the last connection start (refreshed at most once a second).
    pub last_seen_ns: u64,
}

/// `LB_FRAGS` key: one fragmented datagram.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct FragKey {
    pub src: [u32; 4],
    pub dst: [u32; 4],
    /// IPv4 identification (16 bits, network order) or IPv6 fragment identification.
    pub id: u32,
    pub proto: u32,
}

/// `LB_FRAGS` value: where the first fragment went, so that the others follow it.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Frag {
    pub service: u32,
    pub real: u32,
}

/// `LB_SVC_STATS[service_id]`, per CPU.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ServiceStats {
    /// Frames forwarded to a real server (XDP_TX) or passed to the local real server.
    pub packets: u64,
    pub bytes: u64,
    /// Flows that took a new Maglev (or persistence) decision.
    pub new_flows: u64,
    /// Frames of this service passed to the local stack because the chosen real is local.
    pub passed_local: u64,
    /// Frames passed because the service is inactive (this host is VRRP backup).
    pub passed_inactive: u64,
    /// Frames passed because a peer load balancer already forwarded them.
    pub passed_peer: u64,
    /// Frames passed because the pool is empty or the chosen real is unresolved.
    pub no_real: u64,
    /// ICMP "fragmentation needed" / ICMPv6 "packet too big" forwarded to a flow's owner.
    pub icmp_too_big: u64,
    /// Fragments forwarded (first and later ones).
    pub fragments: u64,
    /// Frames dropped while the service's writes wait (`SERVICE_HOLD`).
    pub held: u64,
}

impl ServiceStats {
    pub fn add(&mut self, o: &Self) {
        self.packets += o.packets;
        self.bytes += o.bytes;
        self.new_flows += o.new_flows;
        self.passed_local += o.passed_local;
        self.passed_inactive += o.passed_inactive;
        self.passed_peer += o.passed_peer;
        self.no_real += o.no_real;
        self.icmp_too_big += o.icmp_too_big;
        self.fragments += o.fragments;
        self.held += o.held;
    }
}

/// `LB_REAL_STATS[real_id]`, per CPU.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RealStats {
    pub packets: u64,
    pub bytes: u64,
    pub new_flows: u64,
}

impl RealStats {
    pub fn add(&mut self, o: &Self) {
        self.packets += o.packets;
        self.bytes += o.bytes;
        self.new_flows += o.new_flows;
    }
}

/// Why a frame got `XDP_PASS`: the index into `LB_PASS_STATS` (per CPU, `u64`).
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PassReason {
    /// Destination MAC is neither ours nor a VRRP virtual MAC.
    NotOurMac = 0,
    /// Not IPv4/IPv6 (ARP, LLDP, ...), or more than one VLAN tag.
    NotIp = 1,
    /// Truncated or inconsistent headers.
    Malformed = 2,
    /// Destination is not a configured service.
    NoService = 3,
    /// The service is inactive (VRRP backup).
    Inactive = 4,
    /// Sent by a peer load balancer: delivered locally, never forwarded twice.
    FromPeer = 5,
    /// The chosen real server is this host.
    LocalReal = 6,
    /// Empty pool, or the chosen real server's MAC is unresolved.
    NoReal = 7,
    /// A later fragment whose first fragment was not seen.
    FragUnknown = 8,
    /// A protocol or ICMP type the data plane does not balance.
    Unsupported = 9,
}

pub const PASS_REASONS: u32 = 10;

impl PassReason {
    pub const ALL: [PassReason; PASS_REASONS as usize] = [
        PassReason::NotOurMac,
        PassReason::NotIp,
        PassReason::Malformed,
        PassReason::NoService,
        PassReason::Inactive,
        PassReason::FromPeer,
        PassReason::LocalReal,
        PassReason::NoReal,
        PassReason::FragUnknown,
        PassReason::Unsupported,
    ];

    pub const fn name(self) -> &'static str {
        match self {
            PassReason::NotOurMac => "not_our_mac",
            PassReason::NotIp => "not_ip",
            PassReason::Malformed => "malformed",
            PassReason::NoService => "no_service",
            PassReason::Inactive => "inactive",
            PassReason::FromPeer => "from_peer",
            PassReason::LocalReal => "local_real",
            PassReason::NoReal => "no_real",
            PassReason::FragUnknown => "frag_unknown",
            PassReason::Unsupported => "unsupported",
        }
    }
}

#[cfg(feature = "user")]
mod pod {
    // SAFETY: all of these are `#[repr(C)]`, contain only integers and byte arrays, and have
    // no implicit padding (explicit `_pad` fields fill every gap).
    unsafe impl aya::Pod for super::MacAddr {}
    unsafe impl aya::Pod for super::MaglevTable {}
    unsafe impl aya::Pod for super::Targets {}
    unsafe impl aya::Pod for super::Config {}
    unsafe impl aya::Pod for super::Peers {}
    unsafe impl aya::Pod for super::ServiceKey {}
    unsafe impl aya::Pod for super::Service {}
    unsafe impl aya::Pod for super::Real {}
    unsafe impl aya::Pod for super::FlowKey {}
    unsafe impl aya::Pod for super::FlowKey4 {}
    unsafe impl aya::Pod for super::Conn {}
    unsafe impl aya::Pod for super::PersistKey {}
    unsafe impl aya::Pod for super::Persist {}
    unsafe impl aya::Pod for super::FragKey {}
    unsafe impl aya::Pod for super::Frag {}
    unsafe impl aya::Pod for super::ServiceStats {}
    unsafe impl aya::Pod for super::RealStats {}
}

#[cfg(test)]
mod tests {
    use super::*;
    use core::mem::size_of;

    #[test]
    fn layouts_have_no_implicit_padding() {
        assert_eq!(size_of::<MacAddr>(), 8);
        assert_eq!(size_of::<Config>(), 8 + 8 * 8 * 2 + 4 + 4 + 32 + 16);
        assert_eq!(size_of::<Conn>(), 16);
        assert_eq!(size_of::<Targets>(), MAX_REALS as usize / 8);
        assert_eq!(size_of::<ServiceKey>(), 20);
        assert_eq!(size_of::<Service>(), 24);
        assert_eq!(size_of::<Real>(), 40);
        assert_eq!(size_of::<FlowKey>(), 40);
        assert_eq!(size_of::<FlowKey4>(), 16);
        assert_eq!(size_of::<PersistKey>(), 20);
        assert_eq!(size_of::<Persist>(), 16);
        assert_eq!(size_of::<FragKey>(), 40);
        assert_eq!(size_of::<ServiceStats>(), 10 * 8);
    }

    #[test]
    fn maglev_index_stays_in_the_map() {
        assert_eq!(maglev_index(0, 0), 0);
        assert_eq!(maglev_index(0, 1), 1);
        assert_eq!(maglev_index(0, 3), 1);
        assert_eq!(maglev_index(MAX_SERVICES - 1, 1), MAGLEV_TABLES - 1);
    }

    #[test]
    fn ticks_cover_at_least_the_seconds() {
        assert_eq!(ticks_of_secs(0), 0);
        assert_eq!(ticks_of_secs(1), 1);
        // 900 s = 838.2 ticks of 1.074 s: rounded up.
        assert_eq!(ticks_of_secs(900), 839);
        assert!(ticks_of_secs(u32::MAX) > 0);
    }

    #[test]
    fn targets_hold_any_real_id() {
        let mut t = Targets::EMPTY;
        for id in [0, 63, 64, MAX_REALS - 1] {
            assert!(!t.contains(id));
            t.insert(id);
            assert!(t.contains(id));
        }
        assert!(!t.contains(1) && !t.contains(MAX_REALS));
        t.insert(MAX_REALS);
        let mut n = 0;
        for id in 0..MAX_REALS {
            n += t.contains(id) as u32;
        }
        assert_eq!(n, 4, "MAX_REALS is out of range: not inserted");
    }

    #[test]
    fn vrid_bitmap() {
        let mut c = Config::default();
        c.set_vrid(51);
        c.set_vrid(255);
        assert!(c.has_vrid(51) && c.has_vrid(255) && !c.has_vrid(50) && !c.has_vrid(0));
    }
}
