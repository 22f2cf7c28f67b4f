//! Writes the desired state into the maps and reads the counters back.
//!
//! A service's pool changes by writing its inactive Maglev table, then replacing the service
//! entry with `active_table` flipped: the data plane sees the old pool or the new one, never a
//! mix.

use anyhow::{Context, Result, anyhow};
use aya::{
    Ebpf, Pod,
    maps::{Array, HashMap, Map, MapData, PerCpuArray},
};
use xdp_ebpf::{maps::*, vip_filter_slot};

use crate::balancer::desired::DesiredState;

pub struct MapWriter<'a> {
    ebpf: &'a mut Ebpf,
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

    /// Installs or replaces a service and its pool: the inactive table is written first, then
    /// `active_table` flips in one word, then the key is mapped to the id.
    pub fn set_service(
        &mut self,
        key: &ServiceKey,
        svc: Service,
        table: &MaglevTable,
    ) -> Result<()> {
        let next = match self.service(key)? {
            Some(c) if c.id == svc.id => (c.active_table ^ 1) & 1,
            _ => 0,
        };
        self.array::<MaglevTable>(MAP_MAGLEV)?
            .set(maglev_index(svc.id, next), table, 0)
            .with_context(|| format!("writing the Maglev table of service {}", svc.id))?;
        let svc = Service {
            active_table: next,
            ..svc
        };
        self.array::<Service>(MAP_SVC_INFO)?
            .set(svc.id, svc, 0)
            .with_context(|| format!("writing service {}", svc.id))?;
        self.services()?
            .insert(key, svc.id, 0)
            .with_context(|| format!("writing the key of service {}", svc.id))?;
        let slot = vip_filter_slot(&key.addr);
        let mut filter = self.array::<u32>(MAP_VIP_FILTER)?;
        let bits = filter.get(&slot, 0).unwrap_or(0)
            | VIP_FILTER_ANY
            | if key.port == 0 {
                VIP_FILTER_ALL_PORTS
            } else {
                0
            };
        filter.set(slot, bits, 0).context("writing LB_VIP_FILTER")
    }

    /// Reads a service entry back.
    pub fn service(&mut self, key: &ServiceKey) -> Result<Option<Service>> {
        let Ok(id) = self.services()?.get(key, 0) else {
            return Ok(None);
        };
        Ok(Some(self.array::<Service>(MAP_SVC_INFO)?.get(&id, 0)?))
    }

    /// Writes a whole desired state (start-up).
    pub fn apply(&mut self, state: &DesiredState) -> Result<()> {
        self.set_config(&state.config)?;
        for (id, (_, real)) in &state.reals {
            self.set_real(*id, real)?;
        }
        for s in &state.services {
            let svc = Service {
                id: s.id,
                flags: s.flags,
                active_table: 0,
                persistence_timeout_s: s.persistence_timeout_s,
            };
            self.set_service(&s.key, svc, &s.table)?;
        }
        Ok(())
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
