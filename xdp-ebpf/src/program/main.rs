//! The XDP program: a direct-routing (LVS-DR style) load balancer.
//!
//! Stages, one module each: `parse` fills a `Packet` description after checking every bound;
//! `balance` decides (service, real server, or a reason to pass); `select` holds the Maglev,
//! connection-table, persistence and fragment logic; `rewrite` turns a decision into bytes;
//! `stats` counts. The maps are documented in `maps` (BPF side) and `xdp_ebpf::maps` (shared
//! types). Anything not for a configured, active service on this host gets `XDP_PASS`
//! untouched.
#![no_std]
#![no_main]

mod balance;
mod maps;
mod parse;
mod rewrite;
mod select;
mod stats;

use aya_ebpf::{bindings::xdp_action, macros::xdp, programs::XdpContext};

use balance::Verdict;

/// Benchmarks only: when 1, every run ends by advancing the frame's IPv4 source port, so that
/// `BPF_PROG_TEST_RUN` with `repeat` (which reuses one buffer) sees a new flow per packet.
/// Userspace sets it at load time (`EbpfLoader::override_global`); it lives in `.rodata`,
/// which the kernel freezes, so with the default 0 the verifier knows the branch is dead and
/// removes it from the production program.
#[unsafe(no_mangle)]
static LB_BENCH_NEXT_FLOW: u32 = 0;

#[xdp]
pub fn lb_xdp(ctx: XdpContext) -> u32 {
    let action = match balance::balance(&ctx) {
        Verdict::Tx => xdp_action::XDP_TX,
        Verdict::Drop => xdp_action::XDP_DROP,
        Verdict::Pass(reason) => {
            stats::count_pass(reason);
            xdp_action::XDP_PASS
        }
    };
    if unsafe { core::ptr::read_volatile(&LB_BENCH_NEXT_FLOW) } != 0 {
        rewrite::next_flow_for_bench(&ctx);
    }
    action
}

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}

#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 13] = *b"Dual MIT/GPL\0";
