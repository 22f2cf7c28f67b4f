//! Choosing the real server: service lookup, connection table, persistence, Maglev.

use aya_ebpf::helpers::bpf_ktime_get_ns;
use xdp_ebpf::{
    flow_hash,
    hash::client_hash,
    maps::{
        CONN_TCP_FIN, CONN_TCP_OPEN, CONN_TCP_RST, CONN_UDP, Config, Conn, FlowKey, FlowKey4,
        MAGLEV_RING, NO_REAL, PROTO_TCP, PassReason, Persist, PersistKey, REAL_VALID, Real,
        Service, ServiceKey, VIP_FILTER_ALL_PORTS, VIP_FILTER_ANY, conn_service, maglev_index,
        real_ref,
    },
    vip_filter_slot,
};

use crate::{
    maps::{
        LB_CLOCK, LB_CONNS4, LB_CONNS6, LB_MAGLEV, LB_PERSIST, LB_REALS, LB_SERVICES, LB_SVC_INFO,
        LB_TARGETS, LB_VIP_FILTER,
    },
    parse::{TCP_FIN, TCP_RST},
};

/// Refresh a persistence entry's timestamp at most this often (a map write per packet would
/// cost more than the affinity is worth).
const PERSIST_REFRESH_NS: u64 = 1_000_000_000;

/// Whether `addr` may be a VIP: one inlined array read that keeps non-VIP traffic off the
/// hash maps. Returns the filter bits.
#[inline(always)]
pub fn vip_filter(addr: &[u32; 4]) -> Result<u32, PassReason> {
    let bits = LB_VIP_FILTER
        .get(vip_filter_slot(addr))
        .copied()
        .unwrap_or(0);
    if bits & VIP_FILTER_ANY == 0 {
        return Err(PassReason::NoService);
    }
    Ok(bits)
}

/// A service by id.
#[inline(always)]
pub fn service_info(id: u32) -> Result<Service, PassReason> {
    LB_SVC_INFO.get(id).copied().ok_or(PassReason::NoService)
}

/// The service for (VIP, port, protocol), falling back to the VIP's port-0 service.
#[inline(always)]
pub fn service(
    filter: u32,
    family: u8,
    addr: &[u32; 4],
    port: u16,
    proto: u8,
) -> Result<Service, PassReason> {
    let mut key = ServiceKey {
        addr: *addr,
        port,
        proto,
        family,
    };
    // SAFETY: the value is copied out at once; hash map values may be replaced concurrently.
    if let Some(id) = unsafe { LB_SERVICES.get(key) }.copied() {
        return service_info(id);
    }
    if filter & VIP_FILTER_ALL_PORTS != 0 {
        key.port = 0;
        if let Some(id) = unsafe { LB_SERVICES.get(key) }.copied() {
            return service_info(id);
        }
    }
    Err(PassReason::NoService)
}

/// Connection-table time now, in ticks: the agent's clock (see `TICK_SHIFT`).
#[inline(always)]
pub fn now_ticks() -> u32 {
    LB_CLOCK.get(0).copied().unwrap_or(0)
}

/// Whether `real_id` is in the live target set of `svc` (see `Targets`).
#[inline(always)]
fn is_target(svc: &Service, real_id: u32) -> bool {
    match LB_TARGETS.get(maglev_index(svc.id, svc.active_table)) {
        Some(t) => t.contains(real_id),
        None => false,
    }
}

/// The connection-table entry of an established flow, with its service: one that has not
/// been idle past its state's timeout, whose service id was not given to another service
/// since, and whose server is usable and still a target of the service. `tcp_flags` is the
/// frame's (`None`: an ICMP error about the flow, which neither refreshes nor ends it).
#[inline(always)]
pub fn established(
    cfg: &Config,
    flow: &FlowKey,
    now: u32,
    tcp_flags: Option<u8>,
) -> Option<(Service, u32, Real)> {
    let conn = if flow.is_v4() {
        LB_CONNS4.get_ptr_mut(FlowKey4::from_flow(flow))?
    } else {
        LB_CONNS6.get_ptr_mut(flow)?
    };
    // SAFETY: a valid map value; concurrent writers (other CPUs) only race on the timestamp
    // and the state, and any of their values is a valid one.
    let conn = unsafe { &mut *conn };
    let timeout = cfg
        .conn_timeout
        .get(conn.state as usize)
        .copied()
        .unwrap_or(0);
    if timeout != 0 && now.wrapping_sub(conn.last_seen) > timeout {
        return None;
    }
    let svc = LB_SVC_INFO.get(conn.service & 0xffff).copied()?;
    if conn_service(svc.id, svc.generation) != conn.service {
        return None;
    }
    let (real_id, real) = usable_real_ref(conn.real)?;
    if !is_target(&svc, real_id) {
        return None;
    }
    if let Some(flags) = tcp_flags {
        // One write per tick at most: a store per packet would cost more than aging is worth.
        if conn.last_seen != now {
            conn.last_seen = now;
        }
        if flags & TCP_RST != 0 {
            conn.state = CONN_TCP_RST;
        } else if flags & TCP_FIN != 0 && conn.state == CONN_TCP_OPEN {
            conn.state = CONN_TCP_FIN;
        }
    }
    Some((svc, real_id, real))
}

/// The real server of a `real_ref`, if it can take traffic and its id was not given to
/// another address since: (id, entry).
#[inline(always)]
pub fn usable_real_ref(r: u32) -> Option<(u32, Real)> {
    let id = r & 0xffff;
    let real = usable_real(id)?;
    if real_ref(id, real.generation) != r {
        return None;
    }
    Some((id, real))
}

/// A real server that can take traffic, by id.
#[inline(always)]
pub fn usable_real(id: u32) -> Option<Real> {
    let real = *LB_REALS.get(id)?;
    if real.flags & REAL_VALID != 0 {
        Some(real)
    } else {
        None
    }
}

/// The Maglev table's choice for `hash`, or `NO_REAL`.
#[inline(always)]
fn maglev(svc: &Service, hash: u32) -> u32 {
    let Some(table) = LB_MAGLEV.get(maglev_index(svc.id, svc.active_table)) else {
        return NO_REAL;
    };
    // LLVM turns `% MAGLEV_RING` into multiply-and-shift, whose range the verifier cannot
    // follow, and then drops the bound check as redundant: launder the slot through a
    // volatile read so that the check stays.
    let slot = hash % MAGLEV_RING;
    let slot = unsafe { core::ptr::read_volatile(&slot) };
    table.slots.get(slot as usize).copied().unwrap_or(NO_REAL)
}

/// The outcome of selection.
pub struct Choice {
    pub real_id: u32,
    pub real: Real,
    /// A new decision (not a connection-table hit): counted as a new flow.
    pub new_flow: bool,
}

/// A new decision for `flow` of `svc` (no usable connection-table entry, or a SYN). With
/// `track`, it is remembered in the connection table, replacing any entry of the 5-tuple.
#[inline(always)]
pub fn choose(svc: &Service, flow: &FlowKey, track: bool, now: u32) -> Result<Choice, PassReason> {
    let real_id = if svc.persistence_timeout_s != 0 {
        persistent_choice(svc, &flow.src)
    } else {
        maglev(svc, flow_hash(flow))
    };
    let Some(real) = usable_real(real_id) else {
        return Err(PassReason::NoReal);
    };
    if track {
        let conn = Conn {
            real: real_ref(real_id, real.generation),
            service: conn_service(svc.id, svc.generation),
            last_seen: now,
            state: if flow.proto == PROTO_TCP {
                CONN_TCP_OPEN
            } else {
                CONN_UDP
            },
        };
        let _ = if flow.is_v4() {
            LB_CONNS4.insert(FlowKey4::from_flow(flow), conn, 0)
        } else {
            LB_CONNS6.insert(flow, conn, 0)
        };
    }
    Ok(Choice {
        real_id,
        real,
        new_flow: true,
    })
}

/// IPVS persistence: one client, one real server, until the client has been idle for the
/// timeout. The first choice comes from Maglev on the client address alone, so both load
/// balancers agree on it.
#[inline(always)]
fn persistent_choice(svc: &Service, client: &[u32; 4]) -> u32 {
    let key = PersistKey {
        service: svc.id,
        client: *client,
    };
    let now = unsafe { bpf_ktime_get_ns() };
    let timeout_ns = svc.persistence_timeout_s as u64 * 1_000_000_000;
    if let Some(p) = LB_PERSIST.get_ptr_mut(key) {
        // SAFETY: a valid map value; a concurrent update only races on the timestamp.
        let p = unsafe { &mut *p };
        if now.wrapping_sub(p.last_seen_ns) < timeout_ns
            && let Some((id, _)) = usable_real_ref(p.real)
            && is_target(svc, id)
        {
            if now.wrapping_sub(p.last_seen_ns) > PERSIST_REFRESH_NS {
                p.last_seen_ns = now;
            }
            return id;
        }
    }
    let real = maglev(svc, client_hash(client));
    if let Some(r) = usable_real(real) {
        let _ = LB_PERSIST.insert(
            key,
            Persist {
                real: real_ref(real, r.generation),
                _pad: 0,
                last_seen_ns: now,
            },
            0,
        );
    }
    real
}
