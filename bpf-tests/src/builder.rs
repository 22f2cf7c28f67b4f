//! Frame builder for fixtures: Ethernet (optionally one 802.1Q tag), IPv4 (with options and
//! fragment fields) or IPv6 (with extension headers), TCP, UDP, ICMP, VRRP. Checksums are
//! filled where the header has one, although the data plane never checks them.

use std::net::{Ipv4Addr, Ipv6Addr};

pub const ETH_IPV4: u16 = 0x0800;
pub const ETH_IPV6: u16 = 0x86dd;
pub const ETH_ARP: u16 = 0x0806;

#[derive(Clone, Debug)]
pub struct Frame {
    pub dst: [u8; 6],
    pub src: [u8; 6],
    pub vlan: Option<u16>,
    /// Raw EtherType and payload (the L3 packet).
    pub ethertype: u16,
    pub payload: Vec<u8>,
}

impl Frame {
    pub fn bytes(&self) -> Vec<u8> {
        let mut b = Vec::with_capacity(18 + self.payload.len());
        b.extend_from_slice(&self.dst);
        b.extend_from_slice(&self.src);
        if let Some(tci) = self.vlan {
            b.extend_from_slice(&0x8100u16.to_be_bytes());
            b.extend_from_slice(&tci.to_be_bytes());
        }
        b.extend_from_slice(&self.ethertype.to_be_bytes());
        b.extend_from_slice(&self.payload);
        b
    }
}

fn checksum(data: &[u8], initial: u32) -> u16 {
    let mut sum = initial;
    for c in data.chunks(2) {
        let w = if c.len() == 2 {
            u16::from_be_bytes([c[0], c[1]])
        } else {
            u16::from_be_bytes([c[0], 0])
        };
        sum += w as u32;
    }
    while sum >> 16 != 0 {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

/// IPv4 header fields a fixture may want to bend.
#[derive(Clone, Debug)]
pub struct V4 {
    pub src: Ipv4Addr,
    pub dst: Ipv4Addr,
    pub proto: u8,
    pub ttl: u8,
    pub id: u16,
    /// Flags and fragment offset (in 8-byte units), as on the wire: 0x2000 = MF.
    pub frag: u16,
    /// Option bytes (padded to a multiple of 4).
    pub options: Vec<u8>,
    /// Overrides: the IHL nibble and the total length, for malformed fixtures.
    pub ihl: Option<u8>,
    pub total_len: Option<u16>,
}

impl V4 {
    pub fn new(src: Ipv4Addr, dst: Ipv4Addr, proto: u8) -> Self {
        V4 {
            src,
            dst,
            proto,
            ttl: 64,
            id: 0x1234,
            frag: 0,
            options: vec![],
            ihl: None,
            total_len: None,
        }
    }

    pub fn packet(&self, l4: &[u8]) -> Vec<u8> {
        let mut opts = self.options.clone();
        while !opts.len().is_multiple_of(4) {
            opts.push(0);
        }
        let hlen = 20 + opts.len();
        let total = self.total_len.unwrap_or((hlen + l4.len()) as u16);
        let ihl = self.ihl.unwrap_or((hlen / 4) as u8);
        let mut h = vec![0x40 | (ihl & 0x0f), 0];
        h.extend_from_slice(&total.to_be_bytes());
        h.extend_from_slice(&self.id.to_be_bytes());
        h.extend_from_slice(&self.frag.to_be_bytes());
        h.extend_from_slice(&[self.ttl, self.proto, 0, 0]);
        h.extend_from_slice(&self.src.octets());
        h.extend_from_slice(&self.dst.octets());
        h.extend_from_slice(&opts);
        let c = checksum(&h, 0);
        h[10..12].copy_from_slice(&c.to_be_bytes());
        h.extend_from_slice(l4);
        h
    }

    fn pseudo(&self, len: usize) -> u32 {
        let mut s = 0u32;
        for c in self
            .src
            .octets()
            .chunks(2)
            .chain(self.dst.octets().chunks(2))
        {
            s += u16::from_be_bytes([c[0], c[1]]) as u32;
        }
        s + self.proto as u32 + len as u32
    }
}

#[derive(Clone, Debug)]
pub struct V6 {
    pub src: Ipv6Addr,
    pub dst: Ipv6Addr,
    /// Upper-layer protocol.
    pub proto: u8,
    pub hop_limit: u8,
    /// Extension headers to put first: (type, body without the next-header byte).
    pub ext: Vec<(u8, Vec<u8>)>,
    pub payload_len: Option<u16>,
}

impl V6 {
    pub fn new(src: Ipv6Addr, dst: Ipv6Addr, proto: u8) -> Self {
        V6 {
            src,
            dst,
            proto,
            hop_limit: 64,
            ext: vec![],
            payload_len: None,
        }
    }

    pub fn packet(&self, l4: &[u8]) -> Vec<u8> {
        let mut ext = Vec::new();
        for (i, (_, body)) in self.ext.iter().enumerate() {
            let next = self.ext.get(i + 1).map(|e| e.0).unwrap_or(self.proto);
            ext.push(next);
            ext.extend_from_slice(body);
        }
        let first = self.ext.first().map(|e| e.0).unwrap_or(self.proto);
        let plen = self.payload_len.unwrap_or((ext.len() + l4.len()) as u16);
        let mut h = vec![0x60, 0, 0, 0];
        h.extend_from_slice(&plen.to_be_bytes());
        h.extend_from_slice(&[first, self.hop_limit]);
        h.extend_from_slice(&self.src.octets());
        h.extend_from_slice(&self.dst.octets());
        h.extend_from_slice(&ext);
        h.extend_from_slice(l4);
        h
    }

    fn pseudo(&self, len: usize) -> u32 {
        let mut s = 0u32;
        for c in self
            .src
            .octets()
            .chunks(2)
            .chain(self.dst.octets().chunks(2))
        {
            s += u16::from_be_bytes([c[0], c[1]]) as u32;
        }
        s + self.proto as u32 + len as u32
    }
}

/// A TCP header (20 bytes, SYN unless `flags` says otherwise) followed by `data`.
pub fn tcp(sport: u16, dport: u16, flags: u8, data: &[u8]) -> Vec<u8> {
    let mut t = Vec::new();
    t.extend_from_slice(&sport.to_be_bytes());
    t.extend_from_slice(&dport.to_be_bytes());
    t.extend_from_slice(&1u32.to_be_bytes());
    t.extend_from_slice(&0u32.to_be_bytes());
    t.extend_from_slice(&[0x50, flags, 0xff, 0xff, 0, 0, 0, 0]);
    t.extend_from_slice(data);
    t
}

pub fn udp(sport: u16, dport: u16, data: &[u8]) -> Vec<u8> {
    let mut u = Vec::new();
    u.extend_from_slice(&sport.to_be_bytes());
    u.extend_from_slice(&dport.to_be_bytes());
    u.extend_from_slice(&((8 + data.len()) as u16).to_be_bytes());
    u.extend_from_slice(&[0, 0]);
    u.extend_from_slice(data);
    u
}

pub const TCP_SYN: u8 = 0x02;
pub const TCP_ACK: u8 = 0x10;

/// Fills the TCP or UDP checksum of an IPv4 L4 segment.
pub fn l4_checksum_v4(ip: &V4, l4: &mut [u8]) {
    let at = if ip.proto == 6 { 16 } else { 6 };
    l4[at..at + 2].fill(0);
    let c = checksum(l4, ip.pseudo(l4.len()));
    l4[at..at + 2].copy_from_slice(&c.to_be_bytes());
}

pub fn l4_checksum_v6(ip: &V6, l4: &mut [u8]) {
    let at = if ip.proto == 6 { 16 } else { 6 };
    l4[at..at + 2].fill(0);
    let c = checksum(l4, ip.pseudo(l4.len()));
    l4[at..at + 2].copy_from_slice(&c.to_be_bytes());
}

/// An ICMP error (type, code) quoting `quoted` (an IP header and at least 8 L4 bytes).
pub fn icmp_error(ty: u8, code: u8, mtu: u16, quoted: &[u8]) -> Vec<u8> {
    let mut m = vec![ty, code, 0, 0, 0, 0];
    m.extend_from_slice(&mtu.to_be_bytes());
    m.extend_from_slice(quoted);
    let c = checksum(&m, 0);
    m[2..4].copy_from_slice(&c.to_be_bytes());
    m
}

/// ICMPv6 "packet too big" (type 2) quoting `quoted`.
pub fn icmp6_too_big(mtu: u32, quoted: &[u8]) -> Vec<u8> {
    let mut m = vec![2, 0, 0, 0];
    m.extend_from_slice(&mtu.to_be_bytes());
    m.extend_from_slice(quoted);
    m
}

/// A VRRPv2 advertisement for `vrid` with one address.
pub fn vrrp_advert(vrid: u8, priority: u8, vip: Ipv4Addr) -> Vec<u8> {
    let mut m = vec![0x21, vrid, priority, 1, 1, 1, 0, 0];
    m.extend_from_slice(&vip.octets());
    m.extend_from_slice(&[0; 8]);
    let c = checksum(&m, 0);
    m[6..8].copy_from_slice(&c.to_be_bytes());
    m
}

/// An ARP request (who-has `target`, tell `sender`).
pub fn arp_request(sender_mac: [u8; 6], sender: Ipv4Addr, target: Ipv4Addr) -> Vec<u8> {
    let mut a = vec![0, 1, 8, 0, 6, 4, 0, 1];
    a.extend_from_slice(&sender_mac);
    a.extend_from_slice(&sender.octets());
    a.extend_from_slice(&[0; 6]);
    a.extend_from_slice(&target.octets());
    a
}
