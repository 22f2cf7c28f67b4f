//! The VRRP socket: raw IP protocol 112 on one interface, IPv4 (multicast 224.0.0.18 or
//! unicast peers). Adverts leave with TTL 255 from the instance's address; received ones come
//! with their IP header, from which the TTL and addresses are read.

use std::{
    io,
    mem::MaybeUninit,
    net::{IpAddr, Ipv4Addr, SocketAddr},
};

use anyhow::{Context, Result};
use socket2::{Domain, InterfaceIndexOrAddress, Protocol, SockAddr, Socket, Type};
use tokio::io::unix::AsyncFd;

use super::packet::{MULTICAST_V4, PROTO_VRRP, Received, TTL};

pub struct VrrpSocket {
    fd: AsyncFd<Socket>,
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
        s.set_nonblocking(true)?;
        // SAFETY: `s` owns its descriptor and the AsyncFd owns `s`: the descriptor is neither
        // closed nor reused while registered.
        let fd = unsafe { AsyncFd::register(s) }
            .map_err(|e| anyhow::anyhow!("registering the VRRP socket: {e}"))?;
        Ok(VrrpSocket { fd })
    }

    /// The next packet: what the IP header says, and the VRRP message.
    pub async fn recv(&self) -> io::Result<(Received, Vec<u8>)> {
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

    pub fn send(&self, bytes: &[u8], dst: Ipv4Addr) -> io::Result<()> {
        let to = SockAddr::from(SocketAddr::new(IpAddr::V4(dst), 0));
        self.fd.get_ref().send_to(bytes, &to).map(|_| ())
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
