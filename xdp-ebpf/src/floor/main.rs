//! The benchmark floor: the least a DR forwarder does (bounds-checked Ethernet and IPv4 parse,
//! constant MAC rewrite, `XDP_TX`), measured beside `lb_xdp` by `cargo xtask bench`.
#![no_std]
#![no_main]

use aya_ebpf::{bindings::xdp_action, macros::xdp, programs::XdpContext};

#[xdp]
pub fn xdp_floor(ctx: XdpContext) -> u32 {
    let start = ctx.data();
    if start + 34 > ctx.data_end() {
        return xdp_action::XDP_PASS;
    }
    // SAFETY: 34 bytes (Ethernet + IPv4 header) are in the packet.
    unsafe {
        if *((start + 12) as *const u16) != 0x0008u16 || *((start + 14) as *const u8) >> 4 != 4 {
            return xdp_action::XDP_PASS;
        }
        *(start as *mut u32) = 0x0000_0002;
        *((start + 4) as *mut u16) = 0x0200;
        *((start + 6) as *mut u32) = 0x0000_0002;
        *((start + 10) as *mut u16) = 0x0100;
    }
    xdp_action::XDP_TX
}

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}

#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 13] = *b"Dual MIT/GPL\0";
