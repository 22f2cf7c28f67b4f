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

#[xdp]
pub fn lb_xdp(ctx: XdpContext) -> u32 {
    match balance::balance(&ctx) {
        Verdict::Tx => xdp_action::XDP_TX,
        Verdict::Pass(reason) => {
            stats::count_pass(reason);
            xdp_action::XDP_PASS
        }
    }
}

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}

#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 13] = *b"Dual MIT/GPL\0";
