//! The flow hash: one function, compiled into the XDP program and into userspace, so that tests
//! and tools can predict the data plane's choice, and two load balancers with the same pool pick
//! the same real server for the same flow.
//!
//! MurmurHash3's 32-bit block mix and finaliser over the key's words: cheap on BPF (no loops
//! that the verifier must unroll beyond ten words, no tables) and well spread in every bit.

use crate::maps::{FlowKey, VIP_FILTER_SIZE};

const C1: u32 = 0xcc9e_2d51;
const C2: u32 = 0x1b87_3593;

#[inline(always)]
const fn mix(h: u32, k: u32) -> u32 {
    let k = k.wrapping_mul(C1).rotate_left(15).wrapping_mul(C2);
    (h ^ k)
        .rotate_left(13)
        .wrapping_mul(5)
        .wrapping_add(0xe654_6b64)
}

#[inline(always)]
const fn finish(mut h: u32) -> u32 {
    h ^= h >> 16;
    h = h.wrapping_mul(0x85eb_ca6b);
    h ^= h >> 13;
    h = h.wrapping_mul(0xc2b2_ae35);
    h ^ (h >> 16)
}

/// Hash of a whole flow (addresses, ports, protocol), used for the Maglev slot of a new flow.
#[inline(always)]
pub const fn flow_hash(key: &FlowKey) -> u32 {
    let mut h = 0x4c42_5844; // "LBXD"
    h = mix(h, key.src[0]);
    h = mix(h, key.src[1]);
    h = mix(h, key.src[2]);
    h = mix(h, key.src[3]);
    h = mix(h, key.dst[0]);
    h = mix(h, key.dst[1]);
    h = mix(h, key.dst[2]);
    h = mix(h, key.dst[3]);
    h = mix(h, (key.sport as u32) | ((key.dport as u32) << 16));
    h = mix(h, key.proto as u32);
    finish(h)
}

/// Hash of a client address alone, used for the Maglev slot when a service has
/// `persistence_timeout` (client-IP affinity): every connection of that client lands on the
/// same real server, on every load balancer.
#[inline(always)]
pub const fn client_hash(addr: &[u32; 4]) -> u32 {
    let mut h = 0x5045_5253; // "PERS"
    h = mix(h, addr[0]);
    h = mix(h, addr[1]);
    h = mix(h, addr[2]);
    h = mix(h, addr[3]);
    finish(h)
}

/// Slot of a destination address in the VIP pre-filter (see `LB_VIP_FILTER`).
#[inline(always)]
pub const fn vip_filter_slot(addr: &[u32; 4]) -> u32 {
    finish(addr[0] ^ addr[1].rotate_left(8) ^ addr[2].rotate_left(16) ^ addr[3].rotate_left(24))
        & (VIP_FILTER_SIZE - 1)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flow_hash_depends_on_every_field() {
        let base = FlowKey::v4([10, 0, 0, 1], [10, 0, 0, 2], 1000, 3306, 6);
        let h = flow_hash(&base);
        let mut k = base;
        k.sport = 1001;
        assert_ne!(flow_hash(&k), h);
        let mut k = base;
        k.proto = 17;
        assert_ne!(flow_hash(&k), h);
        let mut k = base;
        k.dst[0] ^= 1;
        assert_ne!(flow_hash(&k), h);
        assert_eq!(flow_hash(&base), h, "deterministic");
    }

    #[test]
    fn vip_filter_slot_is_in_range() {
        for i in 0..10_000u32 {
            assert!(vip_filter_slot(&[i.wrapping_mul(2_654_435_761), i, 0, 0]) < VIP_FILTER_SIZE);
        }
    }
}
