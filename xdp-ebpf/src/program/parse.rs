//! Header parsing. Every read goes through `load`, which checks the packet bound first, and
//! every variable offset is checked against a constant limit so that the verifier can bound
//! it. A parse failure is a `PassReason`, never a forward.
//!
//! Packet loads may be unaligned: XDP runs where the JIT allows that, and it is how every XDP
//! program reads headers that sit at 14 or 18 bytes into a frame.

use aya_ebpf::programs::XdpContext;
use xdp_ebpf::maps::{FAMILY_V4, FAMILY_V6, PassReason};

pub const ETH_P_IPV4: u16 = 0x0800;
pub const ETH_P_IPV6: u16 = 0x86dd;
pub const ETH_P_8021Q: u16 = 0x8100;

pub const IPPROTO_ICMP: u8 = 1;
pub const IPPROTO_TCP: u8 = 6;
pub const IPPROTO_UDP: u8 = 17;
pub const IPPROTO_ICMPV6: u8 = 58;
pub const IPPROTO_VRRP: u8 = 112;

/// No header we read starts further in than this (VLAN + IPv6 + extension headers).
const MAX_L4_OFFSET: usize = 400;
/// IPv6 extension headers walked before giving up (Pass, `Unsupported`).
const MAX_EXT_HEADERS: usize = 4;

/// Reads a `T` at `off`, or `None` when the frame is too short.
#[inline(always)]
pub fn load<T: Copy>(ctx: &XdpContext, off: usize) -> Option<T> {
    let start = ctx.data();
    if start + off + core::mem::size_of::<T>() > ctx.data_end() {
        return None;
    }
    // SAFETY: the bytes are inside the packet (checked above).
    Some(unsafe { *((start + off) as *const T) })
}

/// `load` for an offset only known at run time: one load of the whole `T` after one bound
/// check on the same pointer. Separate small loads at `off + k` let LLVM rewrite the address
/// as `(start + k) + off`, a pointer the verifier has no range for.
#[inline(always)]
pub fn load_at_variable<T: Copy>(ctx: &XdpContext, off: usize) -> Option<T> {
    let p = ctx.data() + off;
    if p + core::mem::size_of::<T>() > ctx.data_end() {
        return None;
    }
    // SAFETY: the bytes are inside the packet (checked above).
    Some(unsafe { core::ptr::read_volatile(p as *const T) })
}

#[inline(always)]
pub fn load_be16(ctx: &XdpContext, off: usize) -> Option<u16> {
    load::<u16>(ctx, off).map(u16::from_be)
}

/// A MAC read from the frame in the form `MacAddr::as_u64` gives.
#[inline(always)]
fn load_mac(ctx: &XdpContext, off: usize) -> Option<u64> {
    let lo = load::<u32>(ctx, off)? as u64;
    let hi = load::<u16>(ctx, off + 4)? as u64;
    Some(lo | (hi << 32))
}

pub struct Ethernet {
    pub dst: u64,
    pub src: u64,
    /// The EtherType after at most one 802.1Q tag.
    pub ethertype: u16,
    pub l3_off: usize,
}

#[inline(always)]
pub fn ethernet(ctx: &XdpContext) -> Result<Ethernet, PassReason> {
    let dst = load_mac(ctx, 0).ok_or(PassReason::Malformed)?;
    let src = load_mac(ctx, 6).ok_or(PassReason::Malformed)?;
    let mut ethertype = load_be16(ctx, 12).ok_or(PassReason::Malformed)?;
    let mut l3_off = 14;
    if ethertype == ETH_P_8021Q {
        ethertype = load_be16(ctx, 16).ok_or(PassReason::Malformed)?;
        l3_off = 18;
    }
    Ok(Ethernet {
        dst,
        src,
        ethertype,
        l3_off,
    })
}

/// Fragment facts of an IP datagram.
#[derive(Clone, Copy)]
pub struct Fragment {
    /// Part of a fragmented datagram (first or later).
    pub is_fragment: bool,
    /// Offset 0: the L4 header is here.
    pub is_first: bool,
    /// IPv4 identification (network order, zero-extended) or IPv6 fragment id.
    pub id: u32,
}

/// What the balancer reads of an IP packet.
pub struct Ip {
    pub family: u8,
    /// Upper-layer protocol (after IPv6 extension headers).
    pub proto: u8,
    /// TTL / hop limit.
    pub ttl: u8,
    pub src: [u32; 4],
    pub dst: [u32; 4],
    pub l4_off: usize,
    pub frag: Fragment,
}

/// Parses the IPv4 or IPv6 header at `off`. `Err(NotIp)` for other EtherTypes.
#[inline(always)]
pub fn ip(ctx: &XdpContext, ethertype: u16, off: usize) -> Result<Ip, PassReason> {
    match ethertype {
        ETH_P_IPV4 => ipv4(ctx, off),
        ETH_P_IPV6 => ipv6(ctx, off),
        _ => Err(PassReason::NotIp),
    }
}

#[inline(always)]
pub fn ipv4(ctx: &XdpContext, off: usize) -> Result<Ip, PassReason> {
    let vihl = load::<u8>(ctx, off).ok_or(PassReason::Malformed)?;
    if vihl >> 4 != 4 {
        return Err(PassReason::Malformed);
    }
    // Fixed fields first: LLVM would otherwise fold their bound checks into the variable
    // header-length check below, whose range the verifier cannot carry over.
    let total_len = load_be16(ctx, off + 2).ok_or(PassReason::Malformed)? as usize;
    let id = load::<u16>(ctx, off + 4).ok_or(PassReason::Malformed)? as u32;
    let frag_field = load_be16(ctx, off + 6).ok_or(PassReason::Malformed)?;
    let ttl = load::<u8>(ctx, off + 8).ok_or(PassReason::Malformed)?;
    let proto = load::<u8>(ctx, off + 9).ok_or(PassReason::Malformed)?;
    let src = load::<u32>(ctx, off + 12).ok_or(PassReason::Malformed)?;
    let dst = load::<u32>(ctx, off + 16).ok_or(PassReason::Malformed)?;
    let hlen = ((vihl & 0x0f) as usize) * 4;
    if hlen < 20 {
        return Err(PassReason::Malformed);
    }
    // The whole header, options included, must be in the frame, and the datagram may be
    // shorter than the frame (Ethernet padding), never longer.
    if total_len < hlen || ctx.data() + off + total_len > ctx.data_end() {
        return Err(PassReason::Malformed);
    }
    let more_fragments = frag_field & 0x2000 != 0;
    let frag_offset = frag_field & 0x1fff;
    Ok(Ip {
        family: FAMILY_V4,
        proto,
        ttl,
        src: [src, 0, 0, 0],
        dst: [dst, 0, 0, 0],
        l4_off: off + hlen,
        frag: Fragment {
            is_fragment: more_fragments || frag_offset != 0,
            is_first: frag_offset == 0,
            id,
        },
    })
}

#[inline(always)]
fn load_addr6(ctx: &XdpContext, off: usize) -> Option<[u32; 4]> {
    Some([
        load::<u32>(ctx, off)?,
        load::<u32>(ctx, off + 4)?,
        load::<u32>(ctx, off + 8)?,
        load::<u32>(ctx, off + 12)?,
    ])
}

#[inline(always)]
pub fn ipv6(ctx: &XdpContext, off: usize) -> Result<Ip, PassReason> {
    let v = load::<u8>(ctx, off).ok_or(PassReason::Malformed)?;
    if v >> 4 != 6 {
        return Err(PassReason::Malformed);
    }
    // Fixed fields first (see `ipv4`), then the variable payload-length check.
    let payload_len = load_be16(ctx, off + 4).ok_or(PassReason::Malformed)? as usize;
    let mut next = load::<u8>(ctx, off + 6).ok_or(PassReason::Malformed)?;
    let ttl = load::<u8>(ctx, off + 7).ok_or(PassReason::Malformed)?;
    let src = load_addr6(ctx, off + 8).ok_or(PassReason::Malformed)?;
    let dst = load_addr6(ctx, off + 24).ok_or(PassReason::Malformed)?;
    // Payload length 0 is a jumbogram (or garbage): not ours to balance.
    if payload_len == 0 || ctx.data() + off + 40 + payload_len > ctx.data_end() {
        return Err(PassReason::Malformed);
    }
    let mut frag = Fragment {
        is_fragment: false,
        is_first: true,
        id: 0,
    };
    let mut l4 = off + 40;
    // Extension headers (RFC 8200 section 4): hop-by-hop, routing, destination options,
    // fragment, AH. Anything else ends the chain.
    for _ in 0..MAX_EXT_HEADERS {
        if l4 > MAX_L4_OFFSET {
            return Err(PassReason::Malformed);
        }
        if !matches!(next, 0 | 43 | 44 | 51 | 60) {
            break;
        }
        // Every extension header is at least 8 bytes: read them in one load, so that one
        // bound check covers every field (see `load_at_variable`).
        let h = load_at_variable::<[u8; 8]>(ctx, l4).ok_or(PassReason::Malformed)?;
        let len = h[1] as usize;
        match next {
            44 => {
                let field = u16::from_be_bytes([h[2], h[3]]);
                frag = Fragment {
                    is_fragment: true,
                    is_first: field >> 3 == 0,
                    id: u32::from_ne_bytes([h[4], h[5], h[6], h[7]]),
                };
                l4 += 8;
            }
            51 => l4 += (len + 2) * 4,
            _ => l4 += (len + 1) * 8,
        }
        next = h[0];
    }
    if l4 > MAX_L4_OFFSET || matches!(next, 0 | 43 | 44 | 51 | 60) {
        return Err(PassReason::Unsupported);
    }
    Ok(Ip {
        family: FAMILY_V6,
        proto: next,
        ttl,
        src,
        dst,
        l4_off: l4,
        frag,
    })
}

pub const TCP_FIN: u8 = 0x01;
pub const TCP_SYN: u8 = 0x02;
pub const TCP_RST: u8 = 0x04;
pub const TCP_ACK: u8 = 0x10;

/// Ports (network order) and, for TCP, the flags byte (0 for UDP).
pub struct L4 {
    pub sport: u16,
    pub dport: u16,
    pub tcp_flags: u8,
}

/// Source and destination port at `off` (TCP or UDP), network order, and the TCP flags, after
/// checking that the whole fixed L4 header is in the frame.
#[inline(always)]
pub fn ports(ctx: &XdpContext, proto: u8, off: usize) -> Result<L4, PassReason> {
    if off > MAX_L4_OFFSET {
        return Err(PassReason::Malformed);
    }
    // One load each: the flags come with the ports (a separate load at `off + 13` would have
    // its bounds check folded into the header-length check below, and the verifier rejects
    // what is left).
    let (sport, dport, tcp_flags) = if proto == IPPROTO_TCP {
        let h = load_at_variable::<[u8; 14]>(ctx, off).ok_or(PassReason::Malformed)?;
        (
            u16::from_ne_bytes([h[0], h[1]]),
            u16::from_ne_bytes([h[2], h[3]]),
            h[13],
        )
    } else {
        let p = load_at_variable::<[u16; 2]>(ctx, off).ok_or(PassReason::Malformed)?;
        (p[0], p[1], 0)
    };
    let header_len = if proto == IPPROTO_TCP { 20 } else { 8 };
    if ctx.data() + off + header_len > ctx.data_end() {
        return Err(PassReason::Malformed);
    }
    Ok(L4 {
        sport,
        dport,
        tcp_flags,
    })
}

/// The packet an ICMP error quotes: the real server's reply, VIP:port → client:port.
pub struct Quoted {
    pub proto: u8,
    pub src: [u32; 4],
    pub dst: [u32; 4],
    pub sport: u16,
    pub dport: u16,
}

/// The IPv4 header and first 4 L4 bytes quoted at `off` in an ICMP error (RFC 792 quotes the
/// header and 8 bytes; its total length may exceed what is quoted).
#[inline(always)]
pub fn ipv4_quoted(ctx: &XdpContext, off: usize) -> Result<Quoted, PassReason> {
    if off > MAX_L4_OFFSET {
        return Err(PassReason::Malformed);
    }
    let h = load_at_variable::<[u32; 5]>(ctx, off).ok_or(PassReason::Malformed)?;
    let b = h[0].to_ne_bytes();
    let hlen = ((b[0] & 0x0f) as usize) * 4;
    if b[0] >> 4 != 4 || hlen < 20 {
        return Err(PassReason::Malformed);
    }
    let proto = h[2].to_ne_bytes()[1];
    let p = load_at_variable::<[u16; 2]>(ctx, off + hlen).ok_or(PassReason::Malformed)?;
    Ok(Quoted {
        proto,
        src: [h[3], 0, 0, 0],
        dst: [h[4], 0, 0, 0],
        sport: p[0],
        dport: p[1],
    })
}

/// The IPv6 header and first 4 L4 bytes quoted at `off` in an ICMPv6 error (extension headers
/// in the quoted packet are not followed: the real servers' replies carry none).
#[inline(always)]
pub fn ipv6_quoted(ctx: &XdpContext, off: usize) -> Result<Quoted, PassReason> {
    if off > MAX_L4_OFFSET {
        return Err(PassReason::Malformed);
    }
    let h = load_at_variable::<[u32; 11]>(ctx, off).ok_or(PassReason::Malformed)?;
    let b = h[1].to_ne_bytes();
    if h[0].to_ne_bytes()[0] >> 4 != 6 {
        return Err(PassReason::Malformed);
    }
    let ports = h[10].to_ne_bytes();
    Ok(Quoted {
        proto: b[2],
        src: [h[2], h[3], h[4], h[5]],
        dst: [h[6], h[7], h[8], h[9]],
        sport: u16::from_ne_bytes([ports[0], ports[1]]),
        dport: u16::from_ne_bytes([ports[2], ports[3]]),
    })
}
