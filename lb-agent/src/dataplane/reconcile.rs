//! Desired state → the map writes that bring the data plane there, as a diff: what did not
//! change is not written, counters survive (ids are stable), and a pool changes by writing the
//! service's inactive Maglev table and then flipping `active_table` in one word. Pure: the
//! writer executes the plan.

use std::{
    collections::{BTreeMap, HashMap, HashSet},
    sync::Arc,
};

use xdp_ebpf::{
    maps::{
        Config as XdpConfig, MaglevTable, Real, Service, ServiceKey, Targets, VIP_FILTER_ALL_PORTS,
        VIP_FILTER_ANY,
    },
    vip_filter_slot,
};

use crate::balancer::desired::{DesiredService, DesiredState};

/// One map write.
#[derive(Debug, Clone)]
pub enum MapOp {
    Config(XdpConfig),
    Real {
        id: u32,
        real: Real,
    },
    /// Zero a real server's counters (its id now belongs to another address).
    ResetRealStats(u32),
    /// Write one of a service's two tables, with its target set.
    Table {
        service: u32,
        copy: u32,
        table: Arc<MaglevTable>,
        targets: Arc<Targets>,
    },
    Info {
        id: u32,
        info: Service,
    },
    /// Zero a service's counters (its id now belongs to another service).
    ResetServiceStats(u32),
    Key {
        key: ServiceKey,
        id: u32,
    },
    RemoveKey(ServiceKey),
    Filter {
        slot: u32,
        bits: u32,
    },
}

fn info_of(s: &DesiredService) -> Service {
    Service {
        id: s.id,
        flags: s.flags,
        active_table: s.active_table,
        persistence_timeout_s: s.persistence_timeout_s,
        generation: s.generation,
        _pad: 0,
    }
}

fn filter_of(state: Option<&DesiredState>) -> BTreeMap<u32, u32> {
    let mut f = BTreeMap::new();
    for s in state.iter().flat_map(|s| s.services.iter()) {
        let bits = VIP_FILTER_ANY
            | if s.key.port == 0 {
                VIP_FILTER_ALL_PORTS
            } else {
                0
            };
        *f.entry(vip_filter_slot(&s.key.addr)).or_insert(0) |= bits;
    }
    f
}

/// The writes from `old` (what the maps hold; `None` = fresh maps) to `new`. Sets each new
/// service's `active_table`.
///
/// One function on purpose: the order of the writes is what makes a change safe for the
/// packets in flight (a key is found only after its table, info and filter bits are in
/// place; a removed key goes first), and that order is easiest to check read in one piece.
pub fn plan(old: Option<&DesiredState>, new: &mut DesiredState) -> Vec<MapOp> {
    let mut ops = Vec::new();
    // The common case at run time (a real server changed, a reload that kept every service):
    // the same services in the same order. Pair them by position; the key set, the filter
    // and the ids are then unchanged.
    if let Some(o) = old
        && o.services.len() == new.services.len()
        && o.services
            .iter()
            .zip(&new.services)
            .all(|(a, b)| a.key == b.key && a.id == b.id)
    {
        config_and_reals(Some(o), new, &mut ops);
        for (o, s) in o.services.iter().zip(new.services.iter_mut()) {
            update_service(o, s, &mut ops);
        }
        return ops;
    }

    let old_services: HashMap<ServiceKey, &DesiredService> = old
        .iter()
        .flat_map(|o| o.services.iter())
        .map(|s| (s.key, s))
        .collect();
    let new_keys: HashSet<ServiceKey> = new.services.iter().map(|s| s.key).collect();
    let mut removed: Vec<&DesiredService> = old
        .iter()
        .flat_map(|o| o.services.iter())
        .filter(|s| !new_keys.contains(&s.key))
        .collect();
    removed.sort_by_key(|s| s.id);
    let new_ids: HashSet<u32> = new.services.iter().map(|s| s.id).collect();

    // Services that go away stop being found first.
    for o in &removed {
        ops.push(MapOp::RemoveKey(o.key));
    }
    config_and_reals(old, new, &mut ops);

    let mut keys = Vec::new();
    for s in &mut new.services {
        match old_services.get(&s.key) {
            Some(o) if o.id == s.id => update_service(o, s, &mut ops),
            _ => {
                // A new service (or one whose id changed): its counters start at zero.
                s.active_table = 0;
                if old.is_some() {
                    ops.push(MapOp::ResetServiceStats(s.id));
                }
                ops.push(MapOp::Table {
                    service: s.id,
                    copy: 0,
                    table: s.table.clone(),
                    targets: s.targets.clone(),
                });
                ops.push(MapOp::Info {
                    id: s.id,
                    info: info_of(s),
                });
                keys.push(MapOp::Key {
                    key: s.key,
                    id: s.id,
                });
            }
        }
    }

    let (old_filter, new_filter) = (filter_of(old), filter_of(Some(new)));
    for (slot, bits) in &new_filter {
        if old_filter.get(slot) != Some(bits) {
            ops.push(MapOp::Filter {
                slot: *slot,
                bits: *bits,
            });
        }
    }
    ops.extend(keys);
    for slot in old_filter.keys().filter(|s| !new_filter.contains_key(s)) {
        ops.push(MapOp::Filter {
            slot: *slot,
            bits: 0,
        });
    }
    // Removed services whose id is not reused: inactive, so that their connection entries
    // pass instead of forwarding.
    for o in &removed {
        if !new_ids.contains(&o.id) {
            ops.push(MapOp::Info {
                id: o.id,
                info: Service {
                    flags: 0,
                    ..info_of(o)
                },
            });
        }
    }
    // Real servers no longer configured are left as they are (quiesced, as IPVS keeps a
    // deleted destination for its connections): established flows drain, and the generation
    // in `real_ref` retires them when the id goes to another address.
    ops
}

fn config_and_reals(old: Option<&DesiredState>, new: &DesiredState, ops: &mut Vec<MapOp>) {
    if old.is_none_or(|o| o.config != new.config) {
        ops.push(MapOp::Config(new.config));
    }
    for (id, (addr, real)) in &new.reals {
        match old.and_then(|o| o.reals.get(id)) {
            Some((a, r)) if a == addr && r == real => {}
            Some(_) => ops.push(MapOp::Real {
                id: *id,
                real: *real,
            }),
            // An id new to the maps may have counted for a removed server before.
            None if old.is_some() => {
                ops.push(MapOp::ResetRealStats(*id));
                ops.push(MapOp::Real {
                    id: *id,
                    real: *real,
                });
            }
            None => ops.push(MapOp::Real {
                id: *id,
                real: *real,
            }),
        }
    }
}

/// A service that exists on both sides with the same id: flip its table if the pool changed,
/// rewrite its info if that changed.
fn update_service(o: &DesiredService, s: &mut DesiredService, ops: &mut Vec<MapOp>) {
    let same_table = Arc::ptr_eq(&o.table, &s.table) || o.table.slots == s.table.slots;
    if same_table && o.targets == s.targets {
        s.active_table = o.active_table;
    } else {
        s.active_table = o.active_table ^ 1;
        ops.push(MapOp::Table {
            service: s.id,
            copy: s.active_table,
            table: s.table.clone(),
            targets: s.targets.clone(),
        });
    }
    if info_of(o) != info_of(s) {
        ops.push(MapOp::Info {
            id: s.id,
            info: info_of(s),
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{
        balancer::{
            desired::{RealInfo, compute},
            ids::Planner,
        },
        config::Config,
    };
    use std::path::Path;

    fn state(text: &str, planner: &mut Planner) -> DesiredState {
        let cfg = Config::parse(Path::new("t.toml"), text).unwrap();
        compute(
            &cfg,
            [2, 0, 0, 0, 0, 1],
            |_| RealInfo {
                mac: Some([2, 0, 0, 0, 1, 1]),
                local: false,
            },
            planner,
        )
        .unwrap()
    }

    fn config(services: &[(u16, &[&str])]) -> String {
        let mut t = String::from("[dataplane]\ninterface = \"eth0\"\n");
        for (port, reals) in services {
            t += &format!("[[virtual_server]]\naddress = \"10.0.0.100\"\nport = {port}\n");
            for r in *reals {
                t += &format!("[[virtual_server.real_server]]\naddress = \"{r}\"\n");
            }
        }
        t
    }

    fn count(ops: &[MapOp], f: impl Fn(&MapOp) -> bool) -> usize {
        ops.iter().filter(|o| f(o)).count()
    }

    #[test]
    fn from_scratch_writes_everything_once() {
        let mut p = Planner::default();
        let mut s = state(
            &config(&[(1, &["10.0.1.1", "10.0.1.2"]), (2, &["10.0.1.2"])]),
            &mut p,
        );
        let ops = plan(None, &mut s);
        assert_eq!(count(&ops, |o| matches!(o, MapOp::Config(_))), 1);
        assert_eq!(count(&ops, |o| matches!(o, MapOp::Real { .. })), 2);
        assert_eq!(
            count(&ops, |o| matches!(o, MapOp::Table { copy: 0, .. })),
            2
        );
        assert_eq!(count(&ops, |o| matches!(o, MapOp::Key { .. })), 2);
        assert_eq!(
            count(&ops, |o| matches!(o, MapOp::Filter { .. })),
            1,
            "one VIP, one slot"
        );
        // Keys come after the tables they point at.
        let first_key = ops
            .iter()
            .position(|o| matches!(o, MapOp::Key { .. }))
            .unwrap();
        let last_table = ops
            .iter()
            .rposition(|o| matches!(o, MapOp::Table { .. }))
            .unwrap();
        assert!(last_table < first_key);
    }

    #[test]
    fn no_change_writes_nothing_and_one_change_flips_one_table() {
        let mut p = Planner::default();
        let text = config(&[(1, &["10.0.1.1", "10.0.1.2"]), (2, &["10.0.1.2"])]);
        let mut a = state(&text, &mut p);
        plan(None, &mut a);
        let mut b = state(&text, &mut p);
        assert!(plan(Some(&a), &mut b).is_empty());

        let mut c = state(&config(&[(1, &["10.0.1.1"]), (2, &["10.0.1.2"])]), &mut p);
        let ops = plan(Some(&b), &mut c);
        assert!(
            matches!(ops.as_slice(), [MapOp::Table { service: 0, copy: 1, .. }, MapOp::Info { id: 0, info }] if info.active_table == 1),
            "{ops:?}"
        );
        // 10.0.1.2 is still used by port 2: it stays.
        assert_eq!(c.services[0].active_table, 1);
        let mut d = state(
            &config(&[(1, &["10.0.1.1", "10.0.1.2"]), (2, &["10.0.1.2"])]),
            &mut p,
        );
        let ops = plan(Some(&c), &mut d);
        assert!(
            matches!(
                ops[0],
                MapOp::Table {
                    service: 0,
                    copy: 0,
                    ..
                }
            ),
            "flips back: {ops:?}"
        );
    }

    #[test]
    fn removal_and_id_reuse() {
        // Two ids of each kind, so that the third service and real must reuse one.
        let mut p = Planner::with_limits(2, 2);
        let mut a = state(&config(&[(1, &["10.0.1.1"]), (2, &["10.0.1.2"])]), &mut p);
        plan(None, &mut a);
        let mut b = state(&config(&[(2, &["10.0.1.2"])]), &mut p);
        let ops = plan(Some(&a), &mut b);
        assert!(
            matches!(ops[0], MapOp::RemoveKey(k) if k.port == 1u16.to_be()),
            "{ops:?}"
        );
        assert!(
            ops.iter()
                .any(|o| matches!(o, MapOp::Info { id: 0, info } if info.flags == 0))
        );
        assert!(
            !ops.iter().any(|o| matches!(o, MapOp::Real { .. })),
            "a removed real server is quiesced, not rewritten: {ops:?}"
        );
        // A new service reuses id 0 with a new generation and fresh counters.
        let mut c = state(&config(&[(2, &["10.0.1.2"]), (3, &["10.0.1.3"])]), &mut p);
        let ops = plan(Some(&b), &mut c);
        let s3 = c
            .services
            .iter()
            .find(|s| s.key.port == 3u16.to_be())
            .unwrap();
        assert_eq!(s3.id, 0);
        assert_eq!(s3.generation, 2);
        assert!(ops.iter().any(|o| matches!(o, MapOp::ResetServiceStats(0))));
        assert!(
            ops.iter().any(|o| matches!(o, MapOp::ResetRealStats(0))),
            "real id 0 now is 10.0.1.3: {ops:?}"
        );
    }
}
