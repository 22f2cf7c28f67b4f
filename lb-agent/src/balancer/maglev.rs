//! Weighted Maglev tables (Eisenbud et al., NSDI 2016; weights as in Katran's MaglevV2).
//!
//! Each backend has a permutation of the table's slots derived from a stable key (its address
//! and port, never a local id), so that two load balancers with the same pool build the same
//! table. Backends take turns claiming their next free slot; a backend's turn comes in
//! proportion to its weight. Removing one of N equal backends moves about 1/N of the slots.

use xdp_ebpf::maps::NO_REAL;

/// One member of a pool.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Backend {
    /// What the table stores for this backend (the data plane's real id).
    pub id: u32,
    /// A stable identity, equal on every load balancer (see `backend_key`).
    pub key: u64,
    /// Relative weight; 0 means "no new flows".
    pub weight: u32,
}

/// A stable key for a backend: FNV-1a of its address bytes and port.
pub fn backend_key(addr: &std::net::IpAddr, port: u16) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    let mut eat = |b: u8| {
        h ^= b as u64;
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    };
    match addr {
        std::net::IpAddr::V4(a) => a.octets().into_iter().for_each(&mut eat),
        std::net::IpAddr::V6(a) => a.octets().into_iter().for_each(&mut eat),
    }
    port.to_be_bytes().into_iter().for_each(&mut eat);
    h
}

/// SplitMix64 finaliser: two independent-looking hashes of one key.
fn mix(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// Builds a table of `size` slots (a prime). Slots hold backend ids; with no backend of
/// positive weight every slot is `NO_REAL`. The result depends only on the set of
/// (key, weight, id), not on the order of `backends`.
pub fn build(backends: &[Backend], size: u32) -> Vec<u32> {
    let m = size as u64;
    let mut table = vec![NO_REAL; size as usize];
    let mut pool: Vec<Backend> = backends.iter().copied().filter(|b| b.weight > 0).collect();
    if pool.is_empty() || size == 0 {
        return table;
    }
    // Order-independence: every load balancer walks the pool in key order.
    pool.sort_by_key(|b| (b.key, b.id));
    let max_weight = pool.iter().map(|b| b.weight as u64).max().unwrap_or(1);
    let offsets: Vec<u64> = pool.iter().map(|b| mix(b.key) % m).collect();
    let skips: Vec<u64> = pool
        .iter()
        .map(|b| mix(b.key ^ 0x9e37_79b9_7f4a_7c15) % (m - 1) + 1)
        .collect();
    // Each backend walks its permutation offset, offset + skip, ... (mod m) by adding skip
    // and subtracting m: no division in the loop.
    let mut pos = offsets;
    let mut credit = vec![0u64; pool.len()];
    let mut filled = 0u64;
    while filled < m {
        for i in 0..pool.len() {
            credit[i] += pool[i].weight as u64;
            if credit[i] < max_weight {
                continue;
            }
            credit[i] -= max_weight;
            // The backend's next preferred slot that is still free. A permutation visits every
            // slot, so this ends within `m` steps.
            loop {
                let slot = pos[i] as usize;
                pos[i] += skips[i];
                if pos[i] >= m {
                    pos[i] -= m;
                }
                if table[slot] == NO_REAL {
                    table[slot] = pool[i].id;
                    filled += 1;
                    break;
                }
            }
            if filled == m {
                break;
            }
        }
    }
    table
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    const M: u32 = xdp_ebpf::maps::MAGLEV_RING;

    fn pool(weights: &[u32]) -> Vec<Backend> {
        weights
            .iter()
            .enumerate()
            .map(|(i, &w)| Backend {
                id: i as u32,
                key: backend_key(&format!("10.0.0.{}", i + 1).parse().unwrap(), 3306),
                weight: w,
            })
            .collect()
    }

    fn counts(t: &[u32]) -> HashMap<u32, usize> {
        let mut c = HashMap::new();
        for &id in t {
            *c.entry(id).or_default() += 1;
        }
        c
    }

    #[test]
    fn distribution_follows_weights() {
        for weights in [&[1u32, 1, 1][..], &[1, 2, 3], &[5, 1], &[10, 10, 1, 0, 3]] {
            let t = build(&pool(weights), M);
            let c = counts(&t);
            let total: u32 = weights.iter().sum();
            assert!(!c.contains_key(&NO_REAL));
            for (i, &w) in weights.iter().enumerate() {
                let share = *c.get(&(i as u32)).unwrap_or(&0) as f64 / M as f64;
                let want = w as f64 / total as f64;
                assert!(
                    (share - want).abs() < 0.005,
                    "weights {weights:?}: {i} has {share}, want {want}"
                );
            }
        }
    }

    #[test]
    fn removing_one_of_n_moves_about_one_nth() {
        for n in [3usize, 5, 10] {
            let full = pool(&vec![1; n]);
            let before = build(&full, M);
            let after = build(&full[1..], M);
            let moved = before
                .iter()
                .zip(&after)
                .filter(|(b, a)| **b != 0 && b != a)
                .count() as f64;
            // Slots of the removed backend must move; of the rest, only a few percent may.
            let frac = moved / M as f64;
            assert!(frac < 0.06, "n={n}: {frac} of other slots moved");
            assert!(before.iter().zip(&after).all(|(b, a)| *b != 0 || *a != 0));
        }
    }

    #[test]
    fn order_independent_and_empty_cases() {
        let mut p = pool(&[1, 2, 3]);
        let a = build(&p, M);
        p.reverse();
        assert_eq!(a, build(&p, M));
        assert!(build(&[], M).iter().all(|&s| s == NO_REAL));
        assert!(build(&pool(&[0, 0]), M).iter().all(|&s| s == NO_REAL));
        assert_eq!(build(&pool(&[1]), 7), vec![0; 7]);
    }
}
