//! Stable ids for real servers and services, and a cache of Maglev tables.
//!
//! Ids index the data plane's arrays and counters, so they must not move when the
//! configuration changes: an address or service keeps its id for as long as it exists. A freed
//! id is reused last (first freed, first reused), and a reused service id gets a new
//! generation so that connection entries of the old service die with it.

use std::{
    collections::{HashMap, HashSet, VecDeque},
    net::IpAddr,
    sync::Arc,
};

use xdp_ebpf::maps::{MAGLEV_RING, MAX_REALS, MAX_SERVICES, MaglevTable, ServiceKey};

use super::maglev::{self, Backend};

#[derive(Debug, Default, Clone)]
struct Allocator<K> {
    ids: HashMap<K, u32>,
    free: VecDeque<u32>,
    next: u32,
    limit: u32,
}

impl<K: std::hash::Hash + Eq + Clone> Allocator<K> {
    fn new(limit: u32) -> Self {
        Self {
            ids: HashMap::new(),
            free: VecDeque::new(),
            next: 0,
            limit,
        }
    }

    /// The id of `k`, allocating one; `None` when all ids are taken.
    fn get(&mut self, k: &K) -> Option<(u32, bool)> {
        if let Some(&id) = self.ids.get(k) {
            return Some((id, false));
        }
        let id = if self.next < self.limit {
            self.next += 1;
            self.next - 1
        } else {
            self.free.pop_front()?
        };
        self.ids.insert(k.clone(), id);
        Some((id, true))
    }

    fn adopt(&mut self, k: K, id: u32) {
        self.ids.insert(k, id);
        self.next = self.next.max(id + 1);
    }

    /// After adoption: ids below `next` that nobody holds are free.
    fn rebuild_free(&mut self) {
        let used: HashSet<u32> = self.ids.values().copied().collect();
        self.free = (0..self.next).filter(|id| !used.contains(id)).collect();
    }

    /// Frees the ids of keys not in `live`; returns them.
    fn retain(&mut self, live: &HashSet<K>) -> Vec<u32> {
        let dead: Vec<K> = self
            .ids
            .keys()
            .filter(|k| !live.contains(*k))
            .cloned()
            .collect();
        let mut freed = Vec::new();
        for k in dead {
            if let Some(id) = self.ids.remove(&k) {
                self.free.push_back(id);
                freed.push(id);
            }
        }
        freed
    }
}

/// What persists between two computations of the desired state.
#[derive(Debug, Clone)]
pub struct Planner {
    reals: Allocator<IpAddr>,
    services: Allocator<ServiceKey>,
    /// Per service id and per real id: how many times it was given out.
    generations: Vec<u32>,
    real_generations: Vec<u32>,
    tables: HashMap<Vec<Backend>, Arc<MaglevTable>>,
    used_tables: HashMap<Vec<Backend>, Arc<MaglevTable>>,
}

impl Default for Planner {
    fn default() -> Self {
        Self::with_limits(MAX_REALS, MAX_SERVICES)
    }
}

impl Planner {
    pub fn with_limits(reals: u32, services: u32) -> Self {
        Planner {
            reals: Allocator::new(reals),
            services: Allocator::new(services),
            generations: vec![0; services as usize],
            real_generations: vec![0; reals as usize],
            tables: HashMap::new(),
            used_tables: HashMap::new(),
        }
    }

    /// Takes over the ids a previous agent left in the maps, so that they keep indexing the
    /// same tables, counters and connection entries.
    pub fn adopt(&mut self, reals: &[(IpAddr, u32, u32)], services: &[(ServiceKey, u32, u32)]) {
        for &(addr, id, generation) in reals {
            if id < self.reals.limit {
                self.reals.adopt(addr, id);
                self.real_generations[id as usize] = generation;
            }
        }
        for &(key, id, generation) in services {
            if id < self.services.limit {
                self.services.adopt(key, id);
                self.generations[id as usize] = generation;
            }
        }
        self.reals.rebuild_free();
        self.services.rebuild_free();
    }

    /// (id, generation) of a real server.
    pub fn real_id(&mut self, addr: &IpAddr) -> Option<(u32, u32)> {
        let (id, fresh) = self.reals.get(addr)?;
        let g = &mut self.real_generations[id as usize];
        if fresh {
            *g = g.wrapping_add(1) & 0xffff;
        }
        Some((id, *g))
    }

    /// (id, generation) of a service.
    pub fn service_id(&mut self, key: &ServiceKey) -> Option<(u32, u32)> {
        let (id, fresh) = self.services.get(key)?;
        let g = &mut self.generations[id as usize];
        if fresh {
            *g = g.wrapping_add(1) & 0xffff;
        }
        Some((id, *g))
    }

    /// The Maglev table of a pool, built once per distinct pool.
    pub fn table(&mut self, pool: &[Backend]) -> Arc<MaglevTable> {
        let mut key = pool.to_vec();
        key.sort_by_key(|b| (b.key, b.id, b.weight));
        if let Some(t) = self.used_tables.get(&key) {
            return t.clone();
        }
        let t = match self.tables.remove(&key) {
            Some(t) => t,
            None => {
                let mut t = Box::<MaglevTable>::default();
                t.slots.copy_from_slice(&maglev::build(&key, MAGLEV_RING));
                Arc::from(t)
            }
        };
        self.used_tables.insert(key, t.clone());
        t
    }

    /// Ends a computation: ids of reals and services not seen are freed, tables not used are
    /// dropped.
    pub fn finish(&mut self, live_reals: &HashSet<IpAddr>, live_services: &HashSet<ServiceKey>) {
        self.reals.retain(live_reals);
        self.services.retain(live_services);
        self.tables = std::mem::take(&mut self.used_tables);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(port: u16) -> ServiceKey {
        ServiceKey {
            addr: [1, 0, 0, 0],
            port,
            proto: 6,
            family: 4,
        }
    }

    #[test]
    fn ids_are_stable_and_reused_last_with_a_new_generation() {
        let mut p = Planner::with_limits(4, 3);
        let a: IpAddr = "10.0.0.1".parse().unwrap();
        let b: IpAddr = "10.0.0.2".parse().unwrap();
        assert_eq!(p.real_id(&a), Some((0, 1)));
        assert_eq!(p.real_id(&b), Some((1, 1)));
        assert_eq!(p.real_id(&a), Some((0, 1)));
        assert_eq!(p.service_id(&key(1)), Some((0, 1)));
        assert_eq!(p.service_id(&key(2)), Some((1, 1)));
        p.finish(&HashSet::from([b]), &HashSet::from([key(2)]));
        assert_eq!(p.real_id(&b), Some((1, 1)), "a live id does not move");
        // Unused ids come first; freed ones after them.
        assert_eq!(p.service_id(&key(3)), Some((2, 1)));
        assert_eq!(
            p.service_id(&key(4)),
            Some((0, 2)),
            "a reused id has a new generation"
        );
        assert_eq!(p.service_id(&key(5)), None, "all ids taken");
    }

    #[test]
    fn tables_are_cached_per_pool() {
        let mut p = Planner::default();
        let pool = [
            Backend {
                id: 0,
                key: 7,
                weight: 1,
            },
            Backend {
                id: 1,
                key: 9,
                weight: 2,
            },
        ];
        let t1 = p.table(&pool);
        let reversed = [pool[1], pool[0]];
        assert!(Arc::ptr_eq(&t1, &p.table(&reversed)));
        p.finish(&HashSet::new(), &HashSet::new());
        assert!(
            Arc::ptr_eq(&t1, &p.table(&pool)),
            "kept across one computation"
        );
    }
}
