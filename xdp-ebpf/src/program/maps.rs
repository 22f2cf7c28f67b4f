//! The BPF maps. Types, names and sizes come from `xdp_ebpf::maps`, which documents who writes
//! each map. All maps are BTF maps, so `bpftool map dump` prints typed fields.

use aya_ebpf::{
    bindings::BPF_F_NO_COMMON_LRU,
    btf_maps::{Array, HashMap, LruHashMap, PerCpuArray},
    macros::btf_map,
};
use xdp_ebpf::maps::*;

/// Interface settings (index 0): our MACs, peer LB MACs, our VRRP router ids.
#[btf_map]
pub static LB_CONFIG: Array<Config, 1> = Array::new();

/// Peer load balancers learned from VRRP adverts (index 0), written by this program.
#[btf_map]
pub static LB_PEERS: Array<Peers, 1> = Array::new();

/// (VIP, port, protocol) → service id.
#[btf_map]
pub static LB_SERVICES: HashMap<ServiceKey, u32, { MAX_SERVICES as usize }> = HashMap::new();

/// Service id → flags, live table, persistence timeout.
#[btf_map]
pub static LB_SVC_INFO: Array<Service, { MAX_SERVICES as usize }> = Array::new();

/// Pre-filter of VIP addresses (see `VIP_FILTER_*`), indexed by `vip_filter_slot`.
#[btf_map]
pub static LB_VIP_FILTER: Array<u32, { VIP_FILTER_SIZE as usize }> = Array::new();

/// Two Maglev tables per service, indexed by `maglev_index`.
#[btf_map]
pub static LB_MAGLEV: Array<MaglevTable, { MAGLEV_TABLES as usize }> = Array::new();

/// The real servers a flow may stay on, beside each Maglev table (same index).
#[btf_map]
pub static LB_TARGETS: Array<Targets, { MAGLEV_TABLES as usize }> = Array::new();

/// The agent's clock in connection-table ticks (index 0), written every second.
#[btf_map]
pub static LB_CLOCK: Array<u32, 1> = Array::new();

/// The agent's lease on the shared writer decisions: `CLOCK_MONOTONIC` ns (index 0; see
/// `SERVICE_LEASED`).
#[btf_map]
pub static LB_LEASE: Array<u64, 1> = Array::new();

/// Real servers by id: MAC and flags.
#[btf_map]
pub static LB_REALS: Array<Real, { MAX_REALS as usize }> = Array::new();

/// Connection tables: flow → real server, so a flow survives pool changes; one per address
/// family so that IPv4 keys stay small. Per-CPU LRU lists (RSS keeps a flow on one CPU)
/// avoid a global lock on insert.
#[btf_map]
pub static LB_CONNS4: LruHashMap<
    FlowKey4,
    Conn,
    { MAX_CONNS as usize },
    { BPF_F_NO_COMMON_LRU as usize },
> = LruHashMap::new();

#[btf_map]
pub static LB_CONNS6: LruHashMap<
    FlowKey,
    Conn,
    { MAX_CONNS as usize },
    { BPF_F_NO_COMMON_LRU as usize },
> = LruHashMap::new();

/// Client-IP affinity for services with a persistence timeout.
#[btf_map]
pub static LB_PERSIST: LruHashMap<PersistKey, Persist, { MAX_PERSIST as usize }> =
    LruHashMap::new();

/// Fragmented datagrams: where the first fragment went.
#[btf_map]
pub static LB_FRAGS: LruHashMap<FragKey, Frag, { MAX_FRAGS as usize }> = LruHashMap::new();

/// Per-service counters (per CPU).
#[btf_map]
pub static LB_SVC_STATS: PerCpuArray<ServiceStats, { MAX_SERVICES as usize }> = PerCpuArray::new();

/// Per-real-server counters (per CPU).
#[btf_map]
pub static LB_REAL_STATS: PerCpuArray<RealStats, { MAX_REALS as usize }> = PerCpuArray::new();

/// `XDP_PASS` counts by `PassReason` (per CPU).
#[btf_map]
pub static LB_PASS_STATS: PerCpuArray<u64, { PASS_REASONS as usize }> = PerCpuArray::new();
