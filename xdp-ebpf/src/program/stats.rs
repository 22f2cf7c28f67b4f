//! Counters. Per-CPU maps: plain adds, no atomics.

use xdp_ebpf::maps::{PassReason, RealStats, ServiceStats};

use crate::maps::{LB_PASS_STATS, LB_REAL_STATS, LB_SVC_STATS};

#[inline(always)]
pub fn count_pass(reason: PassReason) {
    if let Some(c) = LB_PASS_STATS.get_ptr_mut(reason as u32) {
        unsafe { *c += 1 };
    }
}

/// Runs `f` on this CPU's counters of service `id`.
#[inline(always)]
pub fn service(id: u32, f: impl FnOnce(&mut ServiceStats)) {
    if let Some(s) = LB_SVC_STATS.get_ptr_mut(id) {
        f(unsafe { &mut *s });
    }
}

#[inline(always)]
pub fn real(id: u32, bytes: u64, new_flow: bool) {
    if let Some(r) = LB_REAL_STATS.get_ptr_mut(id) {
        let r: &mut RealStats = unsafe { &mut *r };
        r.packets += 1;
        r.bytes += bytes;
        r.new_flows += new_flow as u64;
    }
}
