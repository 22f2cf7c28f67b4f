//! What the kernel knows: interface index and MAC, this host's addresses, and neighbour (ARP /
//! NDP) entries, read over rtnetlink.

use std::{
    collections::{HashMap, HashSet},
    net::{IpAddr, SocketAddr, UdpSocket},
};

use anyhow::{Context, Result, anyhow, bail};
use futures_util::TryStreamExt;
use netlink_packet_route::{
    address::AddressAttribute,
    link::LinkAttribute,
    neighbour::{NeighbourAddress, NeighbourAttribute, NeighbourState},
};
use rtnetlink::Handle;

pub mod vips;

/// The interface's index, with a clear error when it does not exist.
pub fn if_index(name: &str) -> Result<u32> {
    if_index_if_any(name)?.ok_or_else(|| anyhow!("interface {name} does not exist"))
}

/// `if_index`, with "no such interface" as `None` and any other failure as an error
/// (`if_nametoindex` opens a socket: without a descriptor it fails for every name).
fn if_index_if_any(name: &str) -> Result<Option<u32>> {
    let c = std::ffi::CString::new(name).map_err(|_| anyhow!("bad interface name {name:?}"))?;
    // SAFETY: a valid C string.
    let index = unsafe { libc::if_nametoindex(c.as_ptr()) };
    if index != 0 {
        return Ok(Some(index));
    }
    let e = std::io::Error::last_os_error();
    if e.raw_os_error() == Some(libc::ENODEV) {
        Ok(None)
    } else {
        Err(anyhow!("looking up interface {name}: {e}"))
    }
}

/// An rtnetlink connection; its driver task runs on the current tokio runtime.
pub fn connect() -> Result<Handle> {
    let (conn, handle, _) = rtnetlink::new_connection().context("opening rtnetlink")?;
    tokio::spawn(conn);
    Ok(handle)
}

/// Notifications of neighbour, address and link changes (RTMGRP_NEIGH, _IFADDR, _LINK), on a
/// connection of their own. Every message means "look again".
pub fn watch() -> Result<futures_util::stream::BoxStream<'static, ()>> {
    use futures_util::StreamExt;
    use netlink_sys::{AsyncSocket, SocketAddr};
    let (mut conn, _, messages) = rtnetlink::new_connection().context("opening rtnetlink")?;
    let groups = (libc::RTMGRP_NEIGH
        | libc::RTMGRP_IPV4_IFADDR
        | libc::RTMGRP_IPV6_IFADDR
        | libc::RTMGRP_LINK) as u32;
    conn.socket_mut()
        .socket_mut()
        .bind(&SocketAddr::new(0, groups))
        .context("subscribing to neighbour and address changes")?;
    tokio::spawn(conn);
    Ok(messages.map(|_| ()).boxed())
}

/// The interface's MAC address.
pub async fn iface_mac(handle: &Handle, name: &str) -> Result<[u8; 6]> {
    let index = if_index(name)?;
    let mut links = handle.link().get().match_index(index).execute();
    while let Some(msg) = links.try_next().await? {
        for attr in msg.attributes {
            if let LinkAttribute::Address(a) = attr
                && let Ok(mac) = <[u8; 6]>::try_from(a.as_slice())
            {
                return Ok(mac);
            }
        }
    }
    bail!("interface {name} has no Ethernet address")
}

/// Whether interface `name` is up with a carrier (`UP` and `LOWER_UP`); a missing interface is
/// down.
/// Whether interface `name` is up with a carrier. A missing interface is down; a lookup that
/// fails otherwise (no descriptor left, netlink trouble) is an error, not "down".
pub async fn link_up(handle: &Handle, name: &str) -> Result<bool> {
    use netlink_packet_route::link::LinkFlag;
    let Some(index) = if_index_if_any(name)? else {
        return Ok(false);
    };
    let mut links = handle.link().get().match_index(index).execute();
    match links.try_next().await {
        Ok(Some(msg)) => {
            let f = &msg.header.flags;
            Ok(f.contains(&LinkFlag::Up) && f.contains(&LinkFlag::LowerUp))
        }
        // Gone between the two lookups.
        Ok(None) => Ok(false),
        Err(rtnetlink::Error::NetlinkError(e)) if e.raw_code() == -libc::ENODEV => Ok(false),
        Err(e) => Err(anyhow!("reading interface {name}: {e}")),
    }
}

/// Every address configured on this host (all interfaces, `lo` included).
pub async fn local_addresses(handle: &Handle) -> Result<HashSet<IpAddr>> {
    let mut out = HashSet::new();
    let mut addrs = handle.address().get().execute();
    while let Some(msg) = addrs.try_next().await? {
        for attr in msg.attributes {
            if let AddressAttribute::Address(a) | AddressAttribute::Local(a) = attr {
                out.insert(a);
            }
        }
    }
    Ok(out)
}

/// Resolved neighbours on interface `index`: address → MAC. Entries being resolved or failed
/// are left out.
pub async fn neighbours(handle: &Handle, index: u32) -> Result<HashMap<IpAddr, [u8; 6]>> {
    let mut out = HashMap::new();
    let mut neigh = handle.neighbours().get().execute();
    while let Some(msg) = neigh.try_next().await? {
        if msg.header.ifindex != index
            || matches!(
                msg.header.state,
                NeighbourState::Incomplete | NeighbourState::Failed | NeighbourState::None
            )
        {
            continue;
        }
        let mut dst = None;
        let mut mac = None;
        for attr in msg.attributes {
            match attr {
                NeighbourAttribute::Destination(NeighbourAddress::Inet(a)) => {
                    dst = Some(IpAddr::V4(a))
                }
                NeighbourAttribute::Destination(NeighbourAddress::Inet6(a)) => {
                    dst = Some(IpAddr::V6(a))
                }
                NeighbourAttribute::LinkLocalAddress(l) => {
                    mac = <[u8; 6]>::try_from(l.as_slice()).ok()
                }
                _ => {}
            }
        }
        if let (Some(d), Some(m)) = (dst, mac)
            && m != [0; 6]
        {
            out.insert(d, m);
        }
    }
    Ok(out)
}

/// Makes the kernel resolve `addr` on `iface` (ARP or neighbour solicitation) by sending one
/// empty UDP datagram to its discard port from a socket bound to that interface.
pub fn probe(iface: &str, addr: IpAddr) -> Result<()> {
    let bind: SocketAddr = match addr {
        IpAddr::V4(_) => "0.0.0.0:0".parse()?,
        IpAddr::V6(_) => "[::]:0".parse()?,
    };
    let sock = UdpSocket::bind(bind)?;
    let fd = std::os::fd::AsRawFd::as_raw_fd(&sock);
    // SAFETY: a valid socket and a buffer of the given length.
    let rc = unsafe {
        libc::setsockopt(
            fd,
            libc::SOL_SOCKET,
            libc::SO_BINDTODEVICE,
            iface.as_ptr().cast(),
            iface.len() as libc::socklen_t,
        )
    };
    if rc != 0 {
        bail!(
            "binding a probe socket to {iface}: {}",
            std::io::Error::last_os_error()
        );
    }
    let _ = sock.send_to(&[], SocketAddr::new(addr, 9));
    Ok(())
}
