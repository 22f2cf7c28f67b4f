//! `lb-agent realserver up|down`: what the recipe's `realserver.sh` does for a DR real server,
//! through rtnetlink and /proc/sys instead of ifconfig and route. The VIPs go on `lo` (/32 or
//! /128, IPv4 ones labelled `lo:0`, `lo:1`, ... as the script names them), and the host stops
//! answering ARP for addresses that are not on the asking interface (`arp_ignore=1`) and
//! announcing them as sources (`arp_announce=2`): only the load balancer answers for a VIP.
//! Both directions are idempotent.

use std::{net::IpAddr, path::Path};

use anyhow::{Context, Result};

use crate::netlink::{
    self,
    vips::{self, Vip},
};

/// The sysctls the recipe sets, and their values when up.
const SYSCTLS: [(&str, &str); 4] = [
    ("/proc/sys/net/ipv4/conf/lo/arp_ignore", "1"),
    ("/proc/sys/net/ipv4/conf/lo/arp_announce", "2"),
    ("/proc/sys/net/ipv4/conf/all/arp_ignore", "1"),
    ("/proc/sys/net/ipv4/conf/all/arp_announce", "2"),
];

fn lo_vips(addrs: &[IpAddr]) -> Result<Vec<Vip>> {
    let index = netlink::if_index("lo")?;
    let mut out = Vec::new();
    let mut n = 0;
    for a in addrs {
        let label = a.is_ipv4().then(|| {
            n += 1;
            format!("lo:{}", n - 1)
        });
        out.push(Vip {
            address: *a,
            prefix: if a.is_ipv4() { 32 } else { 128 },
            index,
            label,
        });
    }
    Ok(out)
}

fn write_sysctl(path: &str, value: &str) -> Result<()> {
    std::fs::write(Path::new(path), value).with_context(|| format!("writing {value} to {path}"))
}

/// Adds the VIPs to `lo` and sets the ARP sysctls; returns what it did, line by line.
pub async fn up(addrs: &[IpAddr]) -> Result<Vec<String>> {
    let handle = netlink::connect()?;
    let mut done = Vec::new();
    // A VIP on a `lo` that is down answers nothing (a fresh network namespace has it down).
    handle
        .link()
        .set(netlink::if_index("lo")?)
        .up()
        .execute()
        .await
        .context("bringing lo up")?;
    for v in lo_vips(addrs)? {
        vips::add(&handle, &v).await?;
        done.push(format!("{}/{} on lo", v.address, v.prefix));
    }
    if addrs.iter().any(IpAddr::is_ipv4) {
        for (path, value) in SYSCTLS {
            write_sysctl(path, value)?;
            done.push(format!("{path} = {value}"));
        }
    }
    Ok(done)
}

/// Removes the VIPs from `lo` and resets the ARP sysctls to the kernel's defaults (0).
pub async fn down(addrs: &[IpAddr]) -> Result<Vec<String>> {
    let handle = netlink::connect()?;
    let mut done = Vec::new();
    for v in lo_vips(addrs)? {
        if vips::remove(&handle, &v).await? {
            done.push(format!("{} removed from lo", v.address));
        }
    }
    if addrs.iter().any(IpAddr::is_ipv4) {
        for (path, _) in SYSCTLS {
            write_sysctl(path, "0")?;
            done.push(format!("{path} = 0"));
        }
    }
    Ok(done)
}
