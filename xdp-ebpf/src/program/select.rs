//! Choosing the real server: service lookup, connection table, persistence, Maglev.

use aya_ebpf::helpers::bpf_ktime_get_ns;
use xdp_ebpf::{
    flow_hash,
    hash::client_hash,
    maps::{
        Conn, FlowKey, FlowKey4, MAGLEV_RING, NO_REAL, PassReason, Persist, PersistKey, REAL_VALID,
        Real, Service, ServiceKey, VIP_FILTER_ALL_PORTS, VIP_FILTER_ANY, conn_service,
        maglev_index, real_ref,
    },
    vip_filter_slot,
};

use crate::maps::{
    LB_CONNS4, LB_CONNS6, LB_MAGLEV, LB_PERSIST, LB_REALS, LB_SERVICES, LB_SVC_INFO, LB_VIP_FILTER,
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

/// The connection-table entry of an established flow, with its service, whose server is
/// still usable and whose service id was not given to another service since.
#[inline(always)]
pub fn established(flow: &FlowKey) -> Option<(Conn, Service, u32, Real)> {
    // SAFETY: copied out at once.
    let conn = if flow.is_v4() {
        unsafe { LB_CONNS4.get(FlowKey4::from_flow(flow)) }.copied()?
    } else {
        unsafe { LB_CONNS6.get(flow) }.copied()?
    };
    let svc = LB_SVC_INFO.get(conn.service & 0xffff).copied()?;
    if conn_service(svc.id, svc.generation) != conn.service {
        return None;
    }
    let (real_id, real) = usable_real_ref(conn.real)?;
    Some((conn, svc, real_id, real))
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

/// A new decision for `flow` of `svc` (no usable connection-table entry). With `track`, it is
/// remembered in the connection table.
#[inline(always)]
pub fn choose(svc: &Service, flow: &FlowKey, track: bool) -> Result<Choice, PassReason> {
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
