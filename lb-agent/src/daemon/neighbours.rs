//! What the kernel knows of the real servers: local addresses and neighbour entries (MACs),
//! probed when missing, turned into the desired data-plane state.

use std::{collections::HashMap, net::IpAddr, time::Duration};

use anyhow::{Context, Result};
use lb_agent::{
    balancer::{
        desired::{self, DesiredState, RealInfo, Verdicts},
        ids::Planner,
    },
    config::Config,
    netlink,
};

/// The data-plane interface, and the rtnetlink connection that reads it.
pub struct Link {
    pub handle: rtnetlink::Handle,
    pub name: String,
    pub index: u32,
    pub mac: [u8; 6],
}

/// How hard `resolve` tries for real servers without a MAC.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Resolve {
    /// Read only (after a notification: probing here would notify again, and again).
    Look,
    /// Send a probe to each missing one.
    Probe,
    /// Probe, and wait for the answers (bounded: 1 s).
    ProbeAndWait,
}

/// Reads local addresses and neighbours and computes the desired state.
pub async fn resolve(
    cfg: &Config,
    link: &Link,
    how: Resolve,
    planner: &mut Planner,
    verdicts: &Verdicts,
) -> Result<DesiredState> {
    let local = netlink::local_addresses(&link.handle).await?;
    let configured: HashMap<IpAddr, Option<[u8; 6]>> = cfg
        .services
        .iter()
        .flat_map(|vs| vs.members().map(|(_, r)| (r.address, r.mac)))
        .collect();
    let mut neigh = netlink::neighbours(&link.handle, link.index).await?;
    let missing = |neigh: &HashMap<IpAddr, [u8; 6]>| -> Vec<IpAddr> {
        configured
            .iter()
            .filter(|(a, m)| m.is_none() && !local.contains(a) && !neigh.contains_key(a))
            .map(|(a, _)| *a)
            .collect()
    };
    let todo = missing(&neigh);
    if !todo.is_empty() && how != Resolve::Look {
        for a in &todo {
            if let Err(e) = netlink::probe(&link.name, *a) {
                tracing::warn!(real = %a, error = %e, "neighbour probe failed");
            }
        }
        if how == Resolve::ProbeAndWait {
            for _ in 0..20 {
                tokio::time::sleep(Duration::from_millis(50)).await;
                neigh = netlink::neighbours(&link.handle, link.index).await?;
                if missing(&neigh).is_empty() {
                    break;
                }
            }
        }
    }
    let mut state = desired::compute(
        cfg,
        link.mac,
        |a| RealInfo {
            mac: configured
                .get(a)
                .copied()
                .flatten()
                .or_else(|| neigh.get(a).copied()),
            local: local.contains(a),
        },
        planner,
    )
    .map_err(anyhow::Error::msg)
    .context("computing the data-plane state")?;
    state.apply_health(cfg, verdicts, &Verdicts::new(), planner);
    Ok(state)
}
