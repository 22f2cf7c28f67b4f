//! The DR topology most namespace tests share: a client, an LB and two real servers on a
//! bridge, set up as LVS-DR wants them.

use super::Lab;

pub const VIP: &str = "10.99.0.100";

/// Client, LB and two real servers on a bridge, set up as LVS-DR wants them.
pub fn topology(lab: &mut Lab) {
    lab.bridge();
    lab.host("cl", "10.99.0.10/24");
    lab.host("lb", "10.99.0.1/24");
    lab.host("r1", "10.99.0.11/24");
    lab.host("r2", "10.99.0.12/24");

    // The LB answers ARP for the VIP; the real servers hold it on lo and never answer for it.
    lab.ip("lb", &["addr", "add", &format!("{VIP}/32"), "dev", "eth0"]);
    for r in ["r1", "r2"] {
        lab.ip(r, &["addr", "add", &format!("{VIP}/32"), "dev", "lo"]);
        for dev in ["all", "eth0"] {
            lab.sysctl(r, &format!("net.ipv4.conf.{dev}.arp_ignore"), "1");
            lab.sysctl(r, &format!("net.ipv4.conf.{dev}.arp_announce"), "2");
        }
    }
    // veth pitfalls (DESIGN.md §5): frames sent with XDP_TX arrive only if the peer runs an
    // XDP program, and the client must not leave TCP checksums to an offload XDP_TX skips.
    let pass = concat!(env!("CARGO_MANIFEST_DIR"), "/../target/bpf/xdp-pass.o");
    lab.ip(
        "br",
        &[
            "link", "set", "dev", "p-lb", "xdpdrv", "obj", pass, "sec", "xdp",
        ],
    );
    lab.exec("cl", &["ethtool", "-K", "eth0", "tx", "off"]);
}
