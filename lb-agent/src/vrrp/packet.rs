//! VRRP advertisements on the wire: VRRPv2 (RFC 3768 section 5) and VRRPv3 (RFC 5798
//! section 5) over IPv4, VRRPv3 over IPv6.
//!
//! Rules of this module: `decode` never panics, whatever the bytes (every read is bounds-checked
//! first, and a fuzz test holds it to that); it checks what the packet alone can tell (length,
//! version, type, address count, checksum, TTL); checks against an instance's configuration
//! (VRID, authentication, advert interval) are `Advert::check`'s. Each failure is its own
//! `Discard` variant, as the VRRP MIB counts them (RFC 6527 `vrrpv3Statistics`).

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::time::Duration;

/// IP protocol number of VRRP.
pub const PROTO_VRRP: u8 = 112;
/// Advertisements are sent with TTL / hop limit 255 and discarded otherwise.
pub const TTL: u8 = 255;
pub const MULTICAST_V4: Ipv4Addr = Ipv4Addr::new(224, 0, 0, 18);
pub const MULTICAST_V6: Ipv6Addr = Ipv6Addr::new(0xff02, 0, 0, 0, 0, 0, 0, 0x12);

const HEADER_LEN: usize = 8;
const AUTH_LEN: usize = 8;
const TYPE_ADVERTISEMENT: u8 = 1;
const AUTH_NONE: u8 = 0;
const AUTH_PASS: u8 = 1;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Version {
    V2,
    V3,
}

/// Authentication of a VRRPv2 advert (RFC 3768 section 5.3.6; AH was removed by RFC 3768).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Auth {
    None,
    /// `auth_type PASS`: up to 8 bytes of clear text, zero-padded.
    Pass([u8; AUTH_LEN]),
}

impl Auth {
    pub fn pass(text: &str) -> Auth {
        let mut b = [0u8; AUTH_LEN];
        for (d, s) in b.iter_mut().zip(text.bytes()) {
            *d = s;
        }
        Auth::Pass(b)
    }
}

/// One advertisement.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Advert {
    pub version: Version,
    pub vrid: u8,
    pub priority: u8,
    /// v2: whole seconds (1–255); v3: centiseconds (1–4095).
    pub interval: Duration,
    pub addresses: Vec<IpAddr>,
    /// v2 only; `None` for v3.
    pub auth: Auth,
}

/// Why an advert is discarded.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Discard {
    /// Shorter than its header, its addresses or its authentication data.
    PacketLength,
    /// TTL / hop limit other than 255 (RFC 3768 7.1, RFC 5798 7.1).
    IpTtl,
    /// Version other than the instance's (2 or 3), or not 2/3 at all.
    Version,
    /// Type other than 1 (advertisement).
    InvalidType,
    Checksum,
    /// An address count that does not fit the family, or none at all.
    AddressList,
    /// v2 authentication type unknown (or AH, which RFC 3768 removed).
    InvalidAuthType,
    /// v2 authentication type other than the instance's.
    AuthTypeMismatch,
    /// v2 `PASS` text other than the instance's.
    AuthFailure,
    /// v2 advert interval other than the instance's (RFC 3768 7.1: discard).
    AdvertInterval,
    /// Another virtual router's advert.
    VrId,
    /// From an address the instance does not accept adverts from (`check_unicast_src`,
    /// `accept_sources`).
    UnknownSource,
}

impl Discard {
    pub const ALL: [Discard; 12] = [
        Discard::PacketLength,
        Discard::IpTtl,
        Discard::Version,
        Discard::InvalidType,
        Discard::Checksum,
        Discard::AddressList,
        Discard::InvalidAuthType,
        Discard::AuthTypeMismatch,
        Discard::AuthFailure,
        Discard::AdvertInterval,
        Discard::VrId,
        Discard::UnknownSource,
    ];

    /// The name used in status and metrics.
    pub fn name(self) -> &'static str {
        match self {
            Discard::PacketLength => "packet_length",
            Discard::IpTtl => "ip_ttl",
            Discard::Version => "version",
            Discard::InvalidType => "invalid_type",
            Discard::Checksum => "checksum",
            Discard::AddressList => "address_list",
            Discard::InvalidAuthType => "invalid_auth_type",
            Discard::AuthTypeMismatch => "auth_type_mismatch",
            Discard::AuthFailure => "auth_failure",
            Discard::AdvertInterval => "advert_interval",
            Discard::VrId => "vrid",
            Discard::UnknownSource => "unknown_source",
        }
    }
}

/// How VRRPv3 over IPv4 sums its checksum. keepalived (and RFC 5798) include the IPv4
/// pseudo-header; RFC 9568 says not to. Interoperating with keepalived needs the former.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum V3Ipv4Checksum {
    #[default]
    WithPseudoHeader,
    WithoutPseudoHeader,
}

/// What the IP layer tells about a received advert.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Received {
    pub src: IpAddr,
    pub dst: IpAddr,
    /// TTL or hop limit.
    pub ttl: u8,
}

fn sum16(data: &[u8], mut sum: u32) -> u32 {
    let mut chunks = data.chunks_exact(2);
    for c in &mut chunks {
        sum += u16::from_be_bytes([c[0], c[1]]) as u32;
    }
    if let [last] = chunks.remainder() {
        sum += (*last as u32) << 8;
    }
    sum
}

fn fold(mut sum: u32) -> u16 {
    while sum >> 16 != 0 {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

/// The checksum of `message` (its checksum field zero or not: the caller decides) for the
/// given version and addresses.
fn checksum(
    message: &[u8],
    version: Version,
    src: IpAddr,
    dst: IpAddr,
    v3v4: V3Ipv4Checksum,
) -> u16 {
    let pseudo = |sum: u32| -> u32 {
        match (src, dst) {
            (IpAddr::V4(s), IpAddr::V4(d)) => sum16(
                &s.octets(),
                sum16(&d.octets(), sum + PROTO_VRRP as u32 + message.len() as u32),
            ),
            (s, d) => {
                let (s, d) = (to_v6(s), to_v6(d));
                sum16(
                    &s.octets(),
                    sum16(&d.octets(), sum + PROTO_VRRP as u32 + message.len() as u32),
                )
            }
        }
    };
    let with_pseudo = match (version, src) {
        (Version::V2, _) => false,
        (Version::V3, IpAddr::V6(_)) => true,
        (Version::V3, IpAddr::V4(_)) => v3v4 == V3Ipv4Checksum::WithPseudoHeader,
    };
    let base = if with_pseudo { pseudo(0) } else { 0 };
    fold(sum16(message, base))
}

fn to_v6(a: IpAddr) -> Ipv6Addr {
    match a {
        IpAddr::V4(a) => a.to_ipv6_mapped(),
        IpAddr::V6(a) => a,
    }
}

impl Advert {
    /// Reads an advert received with `rx`. Structural checks only (see the module doc).
    pub fn decode(bytes: &[u8], rx: Received, v3v4: V3Ipv4Checksum) -> Result<Advert, Discard> {
        if rx.ttl != TTL {
            return Err(Discard::IpTtl);
        }
        if bytes.len() < HEADER_LEN {
            return Err(Discard::PacketLength);
        }
        let version = match bytes[0] >> 4 {
            2 if rx.src.is_ipv4() => Version::V2,
            3 => Version::V3,
            _ => return Err(Discard::Version),
        };
        if bytes[0] & 0x0f != TYPE_ADVERTISEMENT {
            return Err(Discard::InvalidType);
        }
        let (vrid, priority, count) = (bytes[1], bytes[2], bytes[3] as usize);
        let addr_len = if rx.src.is_ipv4() { 4 } else { 16 };
        if count == 0 {
            return Err(Discard::AddressList);
        }
        let auth_len = if version == Version::V2 { AUTH_LEN } else { 0 };
        let needed = HEADER_LEN + count * addr_len + auth_len;
        if bytes.len() < needed {
            return Err(Discard::PacketLength);
        }
        // Trailing bytes beyond `needed` are not part of the message we sum.
        let message = &bytes[..needed];
        if checksum(message, version, rx.src, rx.dst, v3v4) != 0 {
            return Err(Discard::Checksum);
        }
        let addresses = message[HEADER_LEN..HEADER_LEN + count * addr_len]
            .chunks_exact(addr_len)
            .map(|c| match <[u8; 4]>::try_from(c) {
                Ok(v4) => IpAddr::V4(v4.into()),
                Err(_) => {
                    let mut v6 = [0u8; 16];
                    v6.copy_from_slice(c);
                    IpAddr::V6(v6.into())
                }
            })
            .collect();
        let (interval, auth) = match version {
            Version::V2 => {
                let auth = match bytes[4] {
                    AUTH_NONE => Auth::None,
                    AUTH_PASS => {
                        let mut b = [0u8; AUTH_LEN];
                        b.copy_from_slice(&message[needed - AUTH_LEN..]);
                        Auth::Pass(b)
                    }
                    // AH (2) was removed by RFC 3768; anything else is unknown.
                    _ => return Err(Discard::InvalidAuthType),
                };
                (Duration::from_secs(bytes[5] as u64), auth)
            }
            Version::V3 => {
                let cs = u16::from_be_bytes([bytes[4], bytes[5]]) & 0x0fff;
                (Duration::from_millis(cs as u64 * 10), Auth::None)
            }
        };
        Ok(Advert {
            version,
            vrid,
            priority,
            interval,
            addresses,
            auth,
        })
    }

    /// The bytes of this advert sent from `src` to `dst`.
    pub fn encode(&self, src: IpAddr, dst: IpAddr, v3v4: V3Ipv4Checksum) -> Vec<u8> {
        let mut m = Vec::with_capacity(HEADER_LEN + self.addresses.len() * 16 + AUTH_LEN);
        let version = match self.version {
            Version::V2 => 2,
            Version::V3 => 3,
        };
        m.push(version << 4 | TYPE_ADVERTISEMENT);
        m.push(self.vrid);
        m.push(self.priority);
        m.push(self.addresses.len().min(255) as u8);
        match self.version {
            Version::V2 => {
                m.push(match self.auth {
                    Auth::None => AUTH_NONE,
                    Auth::Pass(_) => AUTH_PASS,
                });
                m.push(self.interval.as_secs().clamp(1, 255) as u8);
            }
            Version::V3 => {
                let cs = (self.interval.as_millis() / 10).clamp(1, 4095) as u16;
                m.extend_from_slice(&cs.to_be_bytes());
            }
        }
        m.extend_from_slice(&[0, 0]);
        for a in self.addresses.iter().take(255) {
            match a {
                IpAddr::V4(a) => m.extend_from_slice(&a.octets()),
                IpAddr::V6(a) => m.extend_from_slice(&a.octets()),
            }
        }
        if self.version == Version::V2 {
            match &self.auth {
                Auth::None => m.extend_from_slice(&[0; AUTH_LEN]),
                Auth::Pass(b) => m.extend_from_slice(b),
            }
        }
        let c = checksum(&m, self.version, src, dst, v3v4);
        m[6..8].copy_from_slice(&c.to_be_bytes());
        m
    }

    /// The checks RFC 3768 7.1 / RFC 5798 7.1 make against the receiving instance.
    pub fn check(
        &self,
        vrid: u8,
        version: Version,
        auth: &Auth,
        interval: Duration,
    ) -> Result<(), Discard> {
        if self.vrid != vrid {
            return Err(Discard::VrId);
        }
        if self.version != version {
            return Err(Discard::Version);
        }
        if version == Version::V2 {
            match (&self.auth, auth) {
                (Auth::None, Auth::None) => {}
                (Auth::Pass(got), Auth::Pass(want)) if got == want => {}
                (Auth::Pass(_), Auth::Pass(_)) => return Err(Discard::AuthFailure),
                _ => return Err(Discard::AuthTypeMismatch),
            }
            if self.interval != interval {
                return Err(Discard::AdvertInterval);
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn v4(a: &str) -> IpAddr {
        a.parse().unwrap()
    }

    fn rx(src: &str, dst: &str) -> Received {
        Received {
            src: v4(src),
            dst: v4(dst),
            ttl: 255,
        }
    }

    /// The recipe's master: VRID 51, priority 180, both VIPs, PASS "1111", 1 s. Expected bytes
    /// computed independently (Python, RFC 1071 sum).
    const V2_RECIPE: &str = "2133b4020101b0030a0101b00a0101b13131313100000000";

    fn hex(s: &str) -> Vec<u8> {
        (0..s.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap())
            .collect()
    }

    fn recipe() -> Advert {
        Advert {
            version: Version::V2,
            vrid: 51,
            priority: 180,
            interval: Duration::from_secs(1),
            addresses: vec![v4("10.1.1.176"), v4("10.1.1.177")],
            auth: Auth::pass("1111"),
        }
    }

    #[test]
    fn v2_fixture_encodes_and_decodes() {
        let (s, d) = (v4("10.1.1.113"), IpAddr::V4(MULTICAST_V4));
        let bytes = recipe().encode(s, d, V3Ipv4Checksum::default());
        assert_eq!(bytes, hex(V2_RECIPE));
        let back = Advert::decode(
            &bytes,
            rx("10.1.1.113", "224.0.0.18"),
            V3Ipv4Checksum::default(),
        )
        .unwrap();
        assert_eq!(back, recipe());
        assert_eq!(
            back.check(51, Version::V2, &Auth::pass("1111"), Duration::from_secs(1)),
            Ok(())
        );
    }

    #[test]
    fn v3_checksums_with_and_without_the_ipv4_pseudo_header() {
        let a = Advert {
            version: Version::V3,
            vrid: 51,
            priority: 100,
            interval: Duration::from_secs(1),
            addresses: vec![v4("10.1.1.176")],
            auth: Auth::None,
        };
        let (s, d) = (v4("10.1.1.113"), IpAddr::V4(MULTICAST_V4));
        let with = a.encode(s, d, V3Ipv4Checksum::WithPseudoHeader);
        let without = a.encode(s, d, V3Ipv4Checksum::WithoutPseudoHeader);
        assert_eq!(&with[6..8], &[0x72, 0xb5]);
        assert_eq!(&without[6..8], &[0x5e, 0xb6]);
        let r = rx("10.1.1.113", "224.0.0.18");
        assert_eq!(
            Advert::decode(&with, r, V3Ipv4Checksum::WithPseudoHeader).unwrap(),
            a
        );
        assert_eq!(
            Advert::decode(&with, r, V3Ipv4Checksum::WithoutPseudoHeader),
            Err(Discard::Checksum)
        );
        assert_eq!(
            Advert::decode(&without, r, V3Ipv4Checksum::WithoutPseudoHeader).unwrap(),
            a
        );
    }

    #[test]
    fn v3_over_ipv6() {
        let a = Advert {
            version: Version::V3,
            vrid: 7,
            priority: 150,
            interval: Duration::from_millis(100),
            addresses: vec!["fd00::100".parse().unwrap()],
            auth: Auth::None,
        };
        let (s, d): (IpAddr, IpAddr) = ("fe80::1".parse().unwrap(), IpAddr::V6(MULTICAST_V6));
        let bytes = a.encode(s, d, V3Ipv4Checksum::default());
        assert_eq!(&bytes[6..8], &[0x3c, 0xcd]);
        let back = Advert::decode(
            &bytes,
            Received {
                src: s,
                dst: d,
                ttl: 255,
            },
            V3Ipv4Checksum::default(),
        )
        .unwrap();
        assert_eq!(back, a);
    }

    #[test]
    fn each_discard_reason() {
        let good = hex(V2_RECIPE);
        let r = rx("10.1.1.113", "224.0.0.18");
        let dec = |b: &[u8], r: Received| Advert::decode(b, r, V3Ipv4Checksum::default());
        assert_eq!(dec(&good, Received { ttl: 254, ..r }), Err(Discard::IpTtl));
        for n in 0..good.len() {
            assert_eq!(dec(&good[..n], r), Err(Discard::PacketLength), "cut to {n}");
        }
        let mut b = good.clone();
        b[0] = 0x41;
        assert_eq!(dec(&b, r), Err(Discard::Version));
        let mut b = good.clone();
        b[0] = 0x22;
        assert_eq!(dec(&b, r), Err(Discard::InvalidType));
        let mut b = good.clone();
        b[20] ^= 1;
        assert_eq!(dec(&b, r), Err(Discard::Checksum));
        let mut b = good.clone();
        b[3] = 0;
        assert_eq!(dec(&b, r), Err(Discard::AddressList));
        let mut b = good.clone();
        b[3] = 9;
        assert_eq!(dec(&b, r), Err(Discard::PacketLength));
        let with_auth = |t: u8| {
            let mut b = good.clone();
            b[4] = t;
            b[6..8].fill(0);
            let c = fold(sum16(&b, 0));
            b[6..8].copy_from_slice(&c.to_be_bytes());
            b
        };
        assert_eq!(dec(&with_auth(2), r), Err(Discard::InvalidAuthType));
        assert_eq!(dec(&with_auth(7), r), Err(Discard::InvalidAuthType));
        let a = dec(&good, r).unwrap();
        let sec = Duration::from_secs(1);
        assert_eq!(
            a.check(52, Version::V2, &Auth::pass("1111"), sec),
            Err(Discard::VrId)
        );
        assert_eq!(
            a.check(51, Version::V3, &Auth::None, sec),
            Err(Discard::Version)
        );
        assert_eq!(
            a.check(51, Version::V2, &Auth::pass("2222"), sec),
            Err(Discard::AuthFailure)
        );
        assert_eq!(
            a.check(51, Version::V2, &Auth::None, sec),
            Err(Discard::AuthTypeMismatch)
        );
        assert_eq!(
            a.check(51, Version::V2, &Auth::pass("1111"), sec * 2),
            Err(Discard::AdvertInterval)
        );
        // Trailing bytes (Ethernet padding) do not count.
        let mut padded = good.clone();
        padded.extend_from_slice(&[0; 6]);
        assert_eq!(dec(&padded, r).unwrap(), a);
    }

    #[test]
    fn no_input_panics() {
        // A deterministic xorshift stream of inputs: random lengths and bytes, plus mutations
        // of a valid advert (the interesting neighbourhood).
        let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
        let mut next = || {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x
        };
        let good = hex(V2_RECIPE);
        let receivers = [
            rx("10.1.1.113", "224.0.0.18"),
            Received {
                src: "fe80::1".parse().unwrap(),
                dst: IpAddr::V6(MULTICAST_V6),
                ttl: 255,
            },
        ];
        for i in 0..200_000u32 {
            let mut b: Vec<u8> = if i % 2 == 0 {
                (0..(next() % 96)).map(|_| next() as u8).collect()
            } else {
                let mut b = good.clone();
                let k = (next() % b.len() as u64) as usize;
                b[k] = next() as u8;
                b.truncate((next() % (b.len() as u64 + 1)) as usize);
                b
            };
            if i % 7 == 0 && !b.is_empty() {
                b[0] = 0x31;
            }
            for r in receivers {
                for v in [
                    V3Ipv4Checksum::WithPseudoHeader,
                    V3Ipv4Checksum::WithoutPseudoHeader,
                ] {
                    if let Ok(a) = Advert::decode(&b, r, v) {
                        // Whatever decodes, encodes back to a decodable advert.
                        let again = a.encode(r.src, r.dst, v);
                        assert_eq!(Advert::decode(&again, r, v).map(|x| x.vrid), Ok(a.vrid));
                    }
                }
            }
        }
    }

    mod properties {
        //! The decoder's fuzz target, as properties with shrinking: no input panics, and every
        //! advert the encoder can produce decodes back to itself.
        use proptest::prelude::*;

        use super::*;

        fn receiver() -> impl Strategy<Value = Received> {
            prop_oneof![
                (any::<[u8; 4]>(), any::<u8>()).prop_map(|(s, ttl)| Received {
                    src: IpAddr::V4(s.into()),
                    dst: IpAddr::V4(MULTICAST_V4),
                    ttl,
                }),
                (any::<[u8; 16]>(), any::<u8>()).prop_map(|(s, ttl)| Received {
                    src: IpAddr::V6(s.into()),
                    dst: IpAddr::V6(MULTICAST_V6),
                    ttl,
                }),
            ]
        }

        fn advert(v6: bool) -> impl Strategy<Value = Advert> {
            let addr = move || -> BoxedStrategy<IpAddr> {
                if v6 {
                    any::<[u8; 16]>().prop_map(|a| IpAddr::V6(a.into())).boxed()
                } else {
                    any::<[u8; 4]>().prop_map(|a| IpAddr::V4(a.into())).boxed()
                }
            };
            (
                any::<bool>(),
                1u8..=255,
                any::<u8>(),
                1u64..=255,
                1u64..=4095,
                proptest::collection::vec(addr(), 1..20),
                proptest::option::of(any::<[u8; AUTH_LEN]>()),
            )
                .prop_map(move |(v3, vrid, priority, secs, cs, addresses, pass)| {
                    let v3 = v3 || v6;
                    Advert {
                        version: if v3 { Version::V3 } else { Version::V2 },
                        vrid,
                        priority,
                        interval: if v3 {
                            Duration::from_millis(cs * 10)
                        } else {
                            Duration::from_secs(secs)
                        },
                        addresses,
                        auth: match pass {
                            Some(p) if !v3 => Auth::Pass(p),
                            _ => Auth::None,
                        },
                    }
                })
        }

        proptest! {
            #![proptest_config(ProptestConfig::with_cases(20_000))]

            #[test]
            fn decoding_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..128), r in receiver()) {
                for v in [V3Ipv4Checksum::WithPseudoHeader, V3Ipv4Checksum::WithoutPseudoHeader] {
                    let _ = Advert::decode(&bytes, r, v);
                }
            }

            #[test]
            fn mutated_adverts_never_panic(a in advert(false), at in any::<prop::sample::Index>(), byte in any::<u8>(), cut in any::<prop::sample::Index>()) {
                let r = Received { src: "10.1.1.113".parse().unwrap(), dst: IpAddr::V4(MULTICAST_V4), ttl: 255 };
                let mut b = a.encode(r.src, r.dst, V3Ipv4Checksum::default());
                let i = at.index(b.len());
                b[i] = byte;
                b.truncate(cut.index(b.len() + 1));
                let _ = Advert::decode(&b, r, V3Ipv4Checksum::default());
            }

            #[test]
            fn what_is_encoded_decodes_back(a in prop_oneof![advert(false), advert(true)]) {
                let v6 = a.addresses[0].is_ipv6();
                let (src, dst) = if v6 {
                    ("fe80::1".parse().unwrap(), IpAddr::V6(MULTICAST_V6))
                } else {
                    ("10.1.1.113".parse().unwrap(), IpAddr::V4(MULTICAST_V4))
                };
                let r = Received { src, dst, ttl: 255 };
                for v in [V3Ipv4Checksum::WithPseudoHeader, V3Ipv4Checksum::WithoutPseudoHeader] {
                    let bytes = a.encode(src, dst, v);
                    prop_assert_eq!(Advert::decode(&bytes, r, v), Ok(a.clone()));
                }
            }
        }
    }
}
