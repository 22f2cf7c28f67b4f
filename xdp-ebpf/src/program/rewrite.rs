//! DR-mode rewrite: destination MAC := the real server's, source MAC := ours. Nothing else
//! changes (no IP or L4 rewrite, no checksum update).

use aya_ebpf::programs::XdpContext;

/// Writes both MACs. The caller has already checked that the frame holds an Ethernet header
/// (parsing did); the bound is checked again here for the verifier.
#[inline(always)]
pub fn set_macs(ctx: &XdpContext, dst: u64, src: u64) -> bool {
    let start = ctx.data();
    if start + 12 > ctx.data_end() {
        return false;
    }
    // SAFETY: 12 bytes are in the packet (checked above); packet loads and stores may be
    // unaligned on every architecture that runs XDP with a JIT.
    unsafe {
        *(start as *mut u32) = dst as u32;
        *((start + 4) as *mut u16) = (dst >> 32) as u16;
        *((start + 6) as *mut u32) = src as u32;
        *((start + 10) as *mut u16) = (src >> 32) as u16;
    }
    true
}

/// Benchmarks only (see `LB_BENCH_NEXT_FLOW`): the next flow of an untagged IPv4 frame without
/// options, by source port, then source address.
#[inline(always)]
pub fn next_flow_for_bench(ctx: &XdpContext) {
    let start = ctx.data();
    if start + 38 > ctx.data_end() {
        return;
    }
    // SAFETY: 38 bytes are in the packet (checked above).
    unsafe {
        let sport = (start + 34) as *mut u16;
        let next = u16::from_be(*sport).wrapping_add(1);
        *sport = next.to_be();
        if next == 0 {
            let src = (start + 26) as *mut u32;
            *src = (u32::from_be(*src).wrapping_add(1)).to_be();
        }
    }
}
