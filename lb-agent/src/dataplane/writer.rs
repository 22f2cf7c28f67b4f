//! Writes the desired state into the maps and reads the counters back.
//!
//! A service's pool changes by writing its inactive Maglev table, then replacing the service
//! entry with `active_table` flipped: the data plane sees the old pool or the new one, never a
//! mix.

use std::sync::Arc;

use anyhow::{Context, Result, anyhow};
use aya::{
    Ebpf, Pod,
    maps::{Array, HashMap, Map, MapData, PerCpuArray, PerCpuValues},
};
use xdp_ebpf::maps::*;

use super::reconcile::{self, MapOp};
use crate::balancer::desired::{DesiredService, DesiredState, addr_from_words};

pub struct MapWriter<'a> {
    ebpf: &'a mut Ebpf,
}

/// What a previous agent left in pinned maps: enough to keep its ids and to diff against.
#[derive(Debug, Clone, Default)]
pub struct Adopted {
    pub config: Config,
    /// (key, entry) of every service found by key.
    pub services: Vec<(ServiceKey, Service)>,
    /// (id, entry) of every real server entry in use.
    pub reals: Vec<(u32, Real)>,
    /// (service id, the real ids its active table holds, sorted).
    pub members: Vec<(u32, Vec<u32>)>,
}

impl Adopted {
    /// The state a previous agent left in the maps, as far as the reconciler needs it: its tables
    /// are unknown (so every pool is written again into the inactive table and flipped, without a
    /// gap), its ids and generations are kept.
    pub fn as_desired(&self) -> DesiredState {
        let a = self;
        let unknown = Arc::new(MaglevTable {
            slots: [NO_REAL - 1; xdp_ebpf::maps::MAGLEV_RING as usize],
        });
        let mut services: Vec<DesiredService> = a
            .services
            .iter()
            .map(|(key, info)| DesiredService {
                name: String::new(),
                key: *key,
                id: info.id,
                generation: info.generation,
                flags: info.flags,
                persistence_timeout_s: info.persistence_timeout_s,
                members: vec![],
                using_sorry: false,
                warning: None,
                table: unknown.clone(),
                targets: Arc::new(Targets::EMPTY),
                active_table: info.active_table,
            })
            .collect();
        services.sort_by_key(|s| s.id);
        DesiredState {
            config: a.config,
            reals: a
                .reals
                .iter()
                .map(|(id, r)| (*id, (addr_from_words(&r.addr, r.family), *r)))
                .collect(),
            known: std::collections::HashMap::new(),
            services,
        }
    }
}

/// Counters of the whole data plane, summed over CPUs.
#[derive(Debug, Clone, Default)]
pub struct Counters {
    pub services: Vec<(u32, ServiceStats)>,
    pub reals: Vec<(u32, RealStats)>,
    pub passes: Vec<(PassReason, u64)>,
}

fn map<'m>(ebpf: &'m mut Ebpf, name: &str) -> Result<&'m mut Map> {
    ebpf.map_mut(name)
        .ok_or_else(|| anyhow!("the XDP object has no map {name}"))
}

impl<'a> MapWriter<'a> {
    pub fn new(ebpf: &'a mut Ebpf) -> Self {
        Self { ebpf }
    }

    fn array<V: Pod>(&mut self, name: &str) -> Result<Array<&mut MapData, V>> {
        Array::try_from(map(self.ebpf, name)?).with_context(|| format!("opening {name}"))
    }

    fn per_cpu<V: Pod>(&mut self, name: &str) -> Result<PerCpuArray<&mut MapData, V>> {
        PerCpuArray::try_from(map(self.ebpf, name)?).with_context(|| format!("opening {name}"))
    }

    fn services(&mut self) -> Result<HashMap<&mut MapData, ServiceKey, u32>> {
        HashMap::try_from(map(self.ebpf, MAP_SERVICES)?).context("opening LB_SERVICES")
    }

    pub fn set_config(&mut self, c: &Config) -> Result<()> {
        self.array::<Config>(MAP_CONFIG)?
            .set(0, c, 0)
            .context("writing LB_CONFIG")
    }

    pub fn set_real(&mut self, id: u32, real: &Real) -> Result<()> {
        self.array::<Real>(MAP_REALS)?
            .set(id, real, 0)
            .with_context(|| format!("writing real {id}"))
    }

    /// Reads a service entry back.
    pub fn service(&mut self, key: &ServiceKey) -> Result<Option<Service>> {
        let Ok(id) = self.services()?.get(key, 0) else {
            return Ok(None);
        };
        Ok(Some(self.array::<Service>(MAP_SVC_INFO)?.get(&id, 0)?))
    }

    /// Writes a whole desired state into fresh maps; sets the services' `active_table`.
    pub fn apply(&mut self, state: &mut DesiredState) -> Result<()> {
        let ops = reconcile::plan(None, state);
        self.execute(&ops)
    }

    /// Executes a plan from `reconcile::plan`, in order.
    pub fn execute(&mut self, ops: &[MapOp]) -> Result<()> {
        for op in ops {
            match op {
                MapOp::Config(c) => self.set_config(c)?,
                MapOp::Real { id, real } => self.set_real(*id, real)?,
                MapOp::ResetRealStats(id) => self.reset::<RealStats>(MAP_REAL_STATS, *id)?,
                MapOp::Table {
                    service,
                    copy,
                    table,
                    targets,
                } => {
                    let index = maglev_index(*service, *copy);
                    self.array::<Targets>(MAP_TARGETS)?
                        .set(index, targets.as_ref(), 0)
                        .with_context(|| format!("writing the targets of service {service}"))?;
                    self.array::<MaglevTable>(MAP_MAGLEV)?
                        .set(index, table.as_ref(), 0)
                        .with_context(|| format!("writing a Maglev table of service {service}"))?
                }
                MapOp::Info { id, info } => self
                    .array::<Service>(MAP_SVC_INFO)?
                    .set(*id, info, 0)
                    .with_context(|| format!("writing service {id}"))?,
                MapOp::ResetServiceStats(id) => self.reset::<ServiceStats>(MAP_SVC_STATS, *id)?,
                MapOp::Key { key, id } => self
                    .services()?
                    .insert(key, id, 0)
                    .with_context(|| format!("writing the key of service {id}"))?,
                MapOp::RemoveKey(key) => match self.services()?.remove(key) {
                    Ok(()) | Err(aya::maps::MapError::KeyNotFound) => {}
                    Err(e) => return Err(e).context("removing a service key"),
                },
                MapOp::Filter { slot, bits } => self
                    .array::<u32>(MAP_VIP_FILTER)?
                    .set(*slot, bits, 0)
                    .context("writing LB_VIP_FILTER")?,
            }
        }
        Ok(())
    }

    fn reset<V: Pod + Default + Clone>(&mut self, name: &str, id: u32) -> Result<()> {
        let cpus = aya::util::nr_cpus().map_err(|(_, e)| anyhow!("counting CPUs: {e}"))?;
        let zeros = PerCpuValues::try_from(vec![V::default(); cpus])?;
        self.per_cpu::<V>(name)?
            .set(id, zeros, 0)
            .with_context(|| format!("zeroing {name}[{id}]"))
    }

    /// Reads back what the maps hold (after adopting a pinned data plane).
    pub fn read_back(&mut self) -> Result<Adopted> {
        let config = self.array::<Config>(MAP_CONFIG)?.get(&0, 0)?;
        let keys: Vec<(ServiceKey, u32)> = self
            .services()?
            .iter()
            .collect::<Result<_, _>>()
            .context("reading LB_SERVICES")?;
        let info = self.array::<Service>(MAP_SVC_INFO)?;
        let mut services = Vec::new();
        for (key, id) in keys {
            services.push((
                key,
                info.get(&id, 0)
                    .with_context(|| format!("reading service {id}"))?,
            ));
        }
        let reals_map = self.array::<Real>(MAP_REALS)?;
        let mut reals = Vec::new();
        for (id, r) in reals_map.iter().enumerate() {
            let r = r.context("reading LB_REALS")?;
            if r.family != 0 {
                reals.push((id as u32, r));
            }
        }
        let tables = self.array::<MaglevTable>(MAP_MAGLEV)?;
        let mut members = Vec::new();
        for (_, s) in &services {
            let t = tables
                .get(&maglev_index(s.id, s.active_table), 0)
                .with_context(|| format!("reading the table of service {}", s.id))?;
            let mut ids: Vec<u32> = t.slots.iter().copied().filter(|&r| r != NO_REAL).collect();
            ids.sort_unstable();
            ids.dedup();
            members.push((s.id, ids));
        }
        Ok(Adopted {
            config,
            services,
            reals,
            members,
        })
    }

    /// Publishes the clock the connection table ages by (see `xdp_ebpf::maps::TICK_SHIFT`).
    pub fn set_clock(&mut self, tick: u32) -> Result<()> {
        self.array::<u32>(MAP_CLOCK)?
            .set(0, tick, 0)
            .context("writing LB_CLOCK")
    }

    /// Renews the agent's lease on the shared writer decisions until `until_ns`
    /// (`CLOCK_MONOTONIC`; see `xdp_ebpf::maps::SERVICE_LEASED`).
    pub fn set_lease(&mut self, until_ns: u64) -> Result<()> {
        self.array::<u64>(MAP_LEASE)?
            .set(0, until_ns, 0)
            .context("writing LB_LEASE")
    }

    /// The IPv4 connection table as it is now (for tests and inspection; a million entries
    /// take a while).
    pub fn conns4(&mut self) -> Result<Vec<(FlowKey4, Conn)>> {
        let m: HashMap<&mut MapData, FlowKey4, Conn> =
            HashMap::try_from(map(self.ebpf, MAP_CONNS4)?).context("opening LB_CONNS4")?;
        Ok(m.iter().filter_map(|e| e.ok()).collect())
    }

    /// The peers learned from VRRP adverts.
    pub fn learned_peers(&mut self) -> Result<Vec<MacAddr>> {
        let peers = self.array::<Peers>(MAP_PEERS)?.get(&0, 0)?;
        Ok(peers.macs.into_iter().filter(|m| !m.is_zero()).collect())
    }

    /// Counters for the given service and real ids, summed over CPUs.
    pub fn counters(&mut self, service_ids: &[u32], real_ids: &[u32]) -> Result<Counters> {
        let mut out = Counters::default();
        let svc = self.per_cpu::<ServiceStats>(MAP_SVC_STATS)?;
        for &id in service_ids {
            let mut sum = ServiceStats::default();
            for v in svc.get(&id, 0)?.iter() {
                sum.add(v);
            }
            out.services.push((id, sum));
        }
        let reals = self.per_cpu::<RealStats>(MAP_REAL_STATS)?;
        for &id in real_ids {
            let mut sum = RealStats::default();
            for v in reals.get(&id, 0)?.iter() {
                sum.add(v);
            }
            out.reals.push((id, sum));
        }
        let passes = self.per_cpu::<u64>(MAP_PASS_STATS)?;
        for r in PassReason::ALL {
            let n = passes.get(&(r as u32), 0)?.iter().sum();
            out.passes.push((r, n));
        }
        Ok(out)
    }
}
