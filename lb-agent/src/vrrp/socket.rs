//! The VRRP socket: raw IP protocol 112 on one interface, IPv4 (multicast 224.0.0.18 or
//! unicast peers) or IPv6 (ff02::12 or unicast peers). Adverts leave with TTL / hop limit 255.
//! Received IPv4 adverts come with their IP header, from which the TTL and addresses are read;
//! IPv6 raw sockets never show the header, so the hop limit and destination come as control
//! messages (IPV6_RECVHOPLIMIT, IPV6_RECVPKTINFO).

use std::{
    io,
    mem::MaybeUninit,
    net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, SocketAddrV6},
    os::fd::AsRawFd,
};

use anyhow::{Context, Result};
use socket2::{Domain, InterfaceIndexOrAddress, Protocol, SockAddr, Socket, Type};
use tokio::io::unix::AsyncFd;

use super::packet::{MULTICAST_V4, MULTICAST_V6, PROTO_VRRP, Received, TTL};

pub struct VrrpSocket {
    fd: AsyncFd<Socket>,
    /// IPv6: the interface, for link-local destinations.
    v6_scope: Option<u32>,
}

/// Offset of the checksum in a VRRP message, for IPV6_CHECKSUM.
const CHECKSUM_OFFSET: libc::c_int = 6;

fn setsockopt_int(
    s: &Socket,
    level: libc::c_int,
    name: libc::c_int,
    value: libc::c_int,
) -> io::Result<()> {
    // SAFETY: a plain int option on a socket we own.
    let rc = unsafe {
        libc::setsockopt(
            s.as_raw_fd(),
            level,
            name,
            (&value as *const libc::c_int).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    if rc < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(())
    }
}

fn register(s: Socket) -> Result<AsyncFd<Socket>> {
    s.set_nonblocking(true)?;
    // SAFETY: `s` owns its descriptor and the AsyncFd owns `s`: the descriptor is neither
    // closed nor reused while registered.
    unsafe { AsyncFd::register(s) }.map_err(|e| anyhow::anyhow!("registering the VRRP socket: {e}"))
}

impl VrrpSocket {
    /// Opens the socket on `iface` with source `local`, joined to the VRRP group.
    pub fn open_v4(iface: &str, ifindex: u32, local: Ipv4Addr) -> Result<VrrpSocket> {
        let s = Socket::new(
            Domain::IPV4,
            Type::RAW,
            Some(Protocol::from(PROTO_VRRP as i32)),
        )
        .context("opening a raw VRRP socket (needs CAP_NET_RAW)")?;
        s.bind_device(Some(iface.as_bytes()))
            .with_context(|| format!("binding the VRRP socket to {iface}"))?;
        // No bind(): on a raw socket it would filter on the destination address, and drop the
        // multicast adverts. The source of multicast adverts comes from IP_MULTICAST_IF.
        s.set_multicast_ttl_v4(TTL as u32)?;
        s.set_ttl_v4(TTL as u32)?;
        s.set_multicast_loop_v4(false)?;
        s.set_multicast_if_v4(&local)?;
        s.join_multicast_v4_n(&MULTICAST_V4, &InterfaceIndexOrAddress::Index(ifindex))
            .with_context(|| format!("joining 224.0.0.18 on {iface}"))?;
        Ok(VrrpSocket {
            fd: register(s)?,
            v6_scope: None,
        })
    }

    /// Opens an IPv6 socket on `iface`, joined to ff02::12. The kernel picks the source (the
    /// interface's link-local address for ff02::12, as RFC 5798 wants) and computes and
    /// verifies the checksum over the pseudo-header (IPV6_CHECKSUM), as keepalived has it.
    pub fn open_v6(iface: &str, ifindex: u32) -> Result<VrrpSocket> {
        let s = Socket::new(
            Domain::IPV6,
            Type::RAW,
            Some(Protocol::from(PROTO_VRRP as i32)),
        )
        .context("opening a raw IPv6 VRRP socket (needs CAP_NET_RAW)")?;
        s.bind_device(Some(iface.as_bytes()))
            .with_context(|| format!("binding the VRRP socket to {iface}"))?;
        s.set_multicast_hops_v6(TTL as u32)?;
        s.set_unicast_hops_v6(TTL as u32)?;
        s.set_multicast_loop_v6(false)?;
        s.set_multicast_if_v6(ifindex)?;
        setsockopt_int(&s, libc::IPPROTO_IPV6, libc::IPV6_CHECKSUM, CHECKSUM_OFFSET)
            .context("IPV6_CHECKSUM")?;
        setsockopt_int(&s, libc::IPPROTO_IPV6, libc::IPV6_RECVHOPLIMIT, 1)
            .context("IPV6_RECVHOPLIMIT")?;
        setsockopt_int(&s, libc::IPPROTO_IPV6, libc::IPV6_RECVPKTINFO, 1)
            .context("IPV6_RECVPKTINFO")?;
        s.join_multicast_v6(&MULTICAST_V6, ifindex)
            .with_context(|| format!("joining ff02::12 on {iface}"))?;
        Ok(VrrpSocket {
            fd: register(s)?,
            v6_scope: Some(ifindex),
        })
    }

    /// The next packet: what the IP header says, and the VRRP message.
    pub async fn recv(&self) -> io::Result<(Received, Vec<u8>)> {
        if self.v6_scope.is_some() {
            return self.recv_v6().await;
        }
        let mut buf = [MaybeUninit::<u8>::uninit(); 2048];
        loop {
            let mut guard = self.fd.readable().await?;
            match guard.try_io(|s| s.get_ref().recv_from(&mut buf)) {
                Ok(Ok((n, _))) => {
                    // SAFETY: recv_from initialised the first n bytes.
                    let bytes: Vec<u8> = buf[..n]
                        .iter()
                        .map(|b| unsafe { b.assume_init() })
                        .collect();
                    if let Some(r) = split_ipv4(&bytes) {
                        return Ok(r);
                    }
                }
                Ok(Err(e)) => return Err(e),
                Err(_would_block) => continue,
            }
        }
    }

    async fn recv_v6(&self) -> io::Result<(Received, Vec<u8>)> {
        let mut buf = [0u8; 2048];
        loop {
            let mut guard = self.fd.readable().await?;
            match guard.try_io(|s| recvmsg_v6(s.get_ref().as_raw_fd(), &mut buf)) {
                Ok(Ok((n, rx))) => return Ok((rx, buf[..n].to_vec())),
                Ok(Err(e)) => return Err(e),
                Err(_would_block) => continue,
            }
        }
    }

    pub fn send(&self, bytes: &[u8], dst: IpAddr) -> io::Result<()> {
        let to = match (dst, self.v6_scope) {
            (IpAddr::V6(a), Some(scope)) => SockAddr::from(SocketAddrV6::new(a, 0, 0, scope)),
            _ => SockAddr::from(SocketAddr::new(dst, 0)),
        };
        self.fd.get_ref().send_to(bytes, &to).map(|_| ())
    }
}

/// One `recvmsg` on a raw IPv6 socket: the payload into `buf`, and the source (from the
/// address), destination (IPV6_PKTINFO) and hop limit (IPV6_HOPLIMIT). A packet without a
/// hop-limit message reads as hop limit 0, which the codec discards.
fn recvmsg_v6(fd: libc::c_int, buf: &mut [u8]) -> io::Result<(usize, Received)> {
    // u64 words keep the control buffer aligned for cmsghdr.
    let mut control = [0u64; 16];
    // SAFETY: zeroed sockaddr_in6/msghdr are valid; every pointer stored in `msg` points to a
    // live buffer of the stated length; cmsg walking uses the libc macros within
    // `msg_controllen` as the kernel returned it.
    unsafe {
        let mut from: libc::sockaddr_in6 = std::mem::zeroed();
        let mut iov = libc::iovec {
            iov_base: buf.as_mut_ptr().cast(),
            iov_len: buf.len(),
        };
        let mut msg: libc::msghdr = std::mem::zeroed();
        msg.msg_name = (&mut from as *mut libc::sockaddr_in6).cast();
        msg.msg_namelen = std::mem::size_of::<libc::sockaddr_in6>() as libc::socklen_t;
        msg.msg_iov = &mut iov;
        msg.msg_iovlen = 1;
        msg.msg_control = control.as_mut_ptr().cast();
        msg.msg_controllen = std::mem::size_of_val(&control);
        let n = libc::recvmsg(fd, &mut msg, 0);
        if n < 0 {
            return Err(io::Error::last_os_error());
        }
        let mut dst = Ipv6Addr::UNSPECIFIED;
        let mut hops = 0u8;
        let mut c = libc::CMSG_FIRSTHDR(&msg);
        while !c.is_null() {
            let data = libc::CMSG_DATA(c);
            match ((*c).cmsg_level, (*c).cmsg_type) {
                (libc::IPPROTO_IPV6, libc::IPV6_HOPLIMIT) => {
                    let v = std::ptr::read_unaligned(data.cast::<libc::c_int>());
                    hops = v.clamp(0, 255) as u8;
                }
                (libc::IPPROTO_IPV6, libc::IPV6_PKTINFO) => {
                    let info = std::ptr::read_unaligned(data.cast::<libc::in6_pktinfo>());
                    dst = Ipv6Addr::from(info.ipi6_addr.s6_addr);
                }
                _ => {}
            }
            c = libc::CMSG_NXTHDR(&msg, c);
        }
        let src = Ipv6Addr::from(from.sin6_addr.s6_addr);
        Ok((
            n as usize,
            Received {
                src: IpAddr::V6(src),
                dst: IpAddr::V6(dst),
                ttl: hops,
            },
        ))
    }
}

/// Splits a raw IPv4 packet into (what the header says, payload); `None` when malformed.
pub fn split_ipv4(p: &[u8]) -> Option<(Received, Vec<u8>)> {
    let ihl = (*p.first()? & 0x0f) as usize * 4;
    if p.first()? >> 4 != 4 || ihl < 20 || p.len() < ihl {
        return None;
    }
    let total = (u16::from_be_bytes([p[2], p[3]]) as usize).min(p.len());
    if total < ihl {
        return None;
    }
    let src = Ipv4Addr::new(p[12], p[13], p[14], p[15]);
    let dst = Ipv4Addr::new(p[16], p[17], p[18], p[19]);
    Some((
        Received {
            src: IpAddr::V4(src),
            dst: IpAddr::V4(dst),
            ttl: p[8],
        },
        p[ihl..total].to_vec(),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ipv4_split_reads_ttl_and_addresses_and_survives_garbage() {
        let mut p = vec![
            0x45, 0, 0, 28, 0, 0, 0, 0, 255, 112, 0, 0, 10, 0, 0, 1, 224, 0, 0, 18,
        ];
        p.extend_from_slice(&[1, 2, 3, 4, 5, 6, 7, 8]);
        let (r, payload) = split_ipv4(&p).unwrap();
        assert_eq!(
            (r.ttl, r.src, r.dst),
            (
                255,
                "10.0.0.1".parse().unwrap(),
                "224.0.0.18".parse().unwrap()
            )
        );
        assert_eq!(payload, vec![1, 2, 3, 4, 5, 6, 7, 8]);
        for n in 0..p.len() {
            let _ = split_ipv4(&p[..n]);
        }
        assert!(split_ipv4(&[0x46, 0, 0, 20]).is_none());
    }
}
