//! Virtual addresses on an interface (`ip addr add VIP/32 dev eth0 label eth0:1`), and the
//! gratuitous ARP (IPv4) or unsolicited neighbour advertisement (IPv6) that tells the LAN
//! where they went.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use anyhow::{Context, Result, bail};
use futures_util::TryStreamExt;
use netlink_packet_route::address::{AddressAttribute, AddressFlag};
use rtnetlink::Handle;

/// A virtual address as the driver adds it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Vip {
    pub address: IpAddr,
    pub prefix: u8,
    pub index: u32,
    pub label: Option<String>,
}

/// Adds `vip`; already present is fine (idempotent).
pub async fn add(handle: &Handle, vip: &Vip) -> Result<()> {
    let mut req = handle.address().add(vip.index, vip.address, vip.prefix);
    if let Some(l) = &vip.label {
        req.message_mut()
            .attributes
            .push(AddressAttribute::Label(l.clone()));
    }
    if vip.address.is_ipv6() {
        // No duplicate address detection: the peer may still answer for the VIP for a moment,
        // and a tentative address would not be usable (keepalived adds it the same way).
        req.message_mut()
            .attributes
            .push(AddressAttribute::Flags(vec![AddressFlag::Nodad]));
    }
    match req.execute().await {
        Ok(()) => Ok(()),
        Err(rtnetlink::Error::NetlinkError(e))
            if e.code.map(|c| -c.get()) == Some(libc::EEXIST) =>
        {
            Ok(())
        }
        Err(e) => Err(e).with_context(|| format!("adding {}/{}", vip.address, vip.prefix)),
    }
}

/// Removes `vip` if present; returns whether it was.
pub async fn remove(handle: &Handle, vip: &Vip) -> Result<bool> {
    let mut found = handle
        .address()
        .get()
        .set_link_index_filter(vip.index)
        .set_address_filter(vip.address)
        .execute();
    let mut removed = false;
    while let Some(msg) = found.try_next().await? {
        handle
            .address()
            .del(msg)
            .execute()
            .await
            .with_context(|| format!("removing {}", vip.address))?;
        removed = true;
    }
    Ok(removed)
}

/// Sends `count` gratuitous ARP requests for `addr` from `mac` on interface `index`.
pub fn gratuitous_arp(index: u32, mac: [u8; 6], addr: Ipv4Addr, count: usize) -> Result<()> {
    let mut frame = Vec::with_capacity(42);
    frame.extend_from_slice(&[0xff; 6]);
    frame.extend_from_slice(&mac);
    frame.extend_from_slice(&0x0806u16.to_be_bytes());
    frame.extend_from_slice(&[0, 1, 8, 0, 6, 4, 0, 1]);
    frame.extend_from_slice(&mac);
    frame.extend_from_slice(&addr.octets());
    frame.extend_from_slice(&[0; 6]);
    frame.extend_from_slice(&addr.octets());
    // SAFETY: plain socket calls with valid buffers; the descriptor is closed below.
    unsafe {
        let fd = libc::socket(libc::AF_PACKET, libc::SOCK_RAW, 0);
        if fd < 0 {
            bail!(
                "opening a packet socket for gratuitous ARP: {}",
                std::io::Error::last_os_error()
            );
        }
        let mut sll: libc::sockaddr_ll = std::mem::zeroed();
        sll.sll_family = libc::AF_PACKET as u16;
        sll.sll_protocol = 0x0806u16.to_be();
        sll.sll_ifindex = index as i32;
        sll.sll_halen = 6;
        sll.sll_addr[..6].copy_from_slice(&[0xff; 6]);
        let mut result = Ok(());
        for _ in 0..count {
            let rc = libc::sendto(
                fd,
                frame.as_ptr().cast(),
                frame.len(),
                0,
                (&sll as *const libc::sockaddr_ll).cast(),
                std::mem::size_of::<libc::sockaddr_ll>() as u32,
            );
            if rc < 0 {
                result = Err(anyhow::anyhow!(
                    "sending gratuitous ARP for {addr}: {}",
                    std::io::Error::last_os_error()
                ));
                break;
            }
        }
        libc::close(fd);
        result
    }
}

/// The unsolicited neighbour advertisement (RFC 4861 7.2.6) for `target` from `mac`: ICMPv6
/// type 136 with the Override flag and the target link-layer address option. The checksum is
/// left 0: the kernel fills it in on raw ICMPv6 sockets.
pub fn unsolicited_na(mac: [u8; 6], target: Ipv6Addr) -> Vec<u8> {
    let mut m = Vec::with_capacity(32);
    m.extend_from_slice(&[136, 0, 0, 0]);
    m.extend_from_slice(&0x2000_0000u32.to_be_bytes());
    m.extend_from_slice(&target.octets());
    m.extend_from_slice(&[2, 1]);
    m.extend_from_slice(&mac);
    m
}

/// Sends `count` unsolicited neighbour advertisements for `target` to all nodes (ff02::1) on
/// interface `index`, with hop limit 255 as receivers demand.
pub fn unsolicited_nas(index: u32, mac: [u8; 6], target: Ipv6Addr, count: usize) -> Result<()> {
    use socket2::{Domain, Protocol, SockAddr, Socket, Type};
    let s = Socket::new(Domain::IPV6, Type::RAW, Some(Protocol::ICMPV6))
        .context("opening an ICMPv6 socket for neighbour advertisements")?;
    s.set_multicast_if_v6(index)?;
    s.set_multicast_hops_v6(255)?;
    let all_nodes = Ipv6Addr::new(0xff02, 0, 0, 0, 0, 0, 0, 1);
    let to = SockAddr::from(std::net::SocketAddrV6::new(all_nodes, 0, 0, index));
    let na = unsolicited_na(mac, target);
    for _ in 0..count {
        s.send_to(&na, &to)
            .with_context(|| format!("sending a neighbour advertisement for {target}"))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unsolicited_na_bytes() {
        let na = unsolicited_na([2, 0, 0, 0, 0, 1], "2001:db8::10".parse().unwrap());
        assert_eq!(
            na,
            [
                136, 0, 0, 0, 0x20, 0, 0, 0, 0x20, 0x01, 0x0d, 0xb8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0,
                0, 0x10, 2, 1, 2, 0, 0, 0, 0, 1
            ]
        );
    }
}
