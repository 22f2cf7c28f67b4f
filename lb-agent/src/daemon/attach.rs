//! Start-up step 6: the data plane loaded with its maps pinned, filled, then attached — or a
//! data plane a previous agent left pinned, adopted (its ids and the failback gates' state)
//! and brought to this configuration while it keeps forwarding.

use std::time::Instant;

use anyhow::{Context, Result};
use lb_agent::{
    balancer::{
        desired::{self, DesiredState, Verdicts},
        ids::Planner,
    },
    config::{Config, XdpModeSetting},
    dataplane::{Adopted, AttachMode, Dataplane, LoadOptions, reconcile},
    health::{state::HealthState, verdict::AdoptedSorry},
};

use super::{
    core,
    neighbours::{Link, Resolve, resolve},
};

pub struct Attached {
    pub dp: Dataplane,
    pub planner: Planner,
    pub state: DesiredState,
    pub mode: AttachMode,
}

/// Loads (or adopts) the data plane, writes `cfg`'s state into its maps and attaches it to
/// the link. An adopted data plane also re-seeds `health`'s gates.
pub async fn attach(
    cfg: &Config,
    link: &Link,
    health: &mut HealthState,
    now: Instant,
) -> Result<(Attached, Verdicts)> {
    let mut dp = Dataplane::load_pinned(&cfg.dataplane.pin_dir, &LoadOptions::default())?;
    let mut planner = Planner::default();
    let previous = if dp.adopted() {
        let a = dp.maps().read_back().with_context(|| {
            format!(
                "the data plane pinned under {} does not match this lb-agent (a changed map \
                 layout?); `lb-agent run --cleanup` removes it (forwarding stops until the next \
                 start)",
                cfg.dataplane.pin_dir.display()
            )
        })?;
        adopt(&mut planner, &a);
        // The gates start where the adopted data plane is.
        health.set_adopted(cfg, &adopted_sorry(cfg, &a), now);
        Some(a.as_desired())
    } else {
        None
    };
    let verdicts = super::writer::starting_verdicts(cfg, health.verdicts());
    let mut state = resolve(cfg, link, Resolve::ProbeAndWait, &mut planner, &verdicts).await?;
    let ops = reconcile::plan(previous.as_ref(), &mut state);
    dp.maps().set_clock(lb_agent::dataplane::clock_tick())?;
    dp.maps().execute(&ops)?;
    core::report(&state);
    let mode = match cfg.dataplane.xdp_mode {
        XdpModeSetting::Auto => None,
        XdpModeSetting::Driver => Some(AttachMode::Driver),
        XdpModeSetting::Skb => Some(AttachMode::Skb),
    };
    let mode = dp.attach(&link.name, mode)?;
    Ok((
        Attached {
            dp,
            planner,
            state,
            mode,
        },
        verdicts,
    ))
}

/// Takes over the ids and generations of an adopted data plane.
fn adopt(planner: &mut Planner, a: &Adopted) {
    let reals: Vec<_> = a
        .reals
        .iter()
        .map(|(id, r)| {
            (
                desired::addr_from_words(&r.addr, r.family),
                *id,
                r.generation,
            )
        })
        .collect();
    let services: Vec<_> = a
        .services
        .iter()
        .map(|(k, s)| (*k, s.id, s.generation))
        .collect();
    planner.adopt(&reals, &services);
    tracing::info!(
        services = services.len(),
        reals = reals.len(),
        "adopting the pinned data plane"
    );
}

/// Per service name: whether the adopted data plane has it on its sorry server only (absent
/// when the data plane does not know the service).
fn adopted_sorry(cfg: &Config, a: &Adopted) -> AdoptedSorry {
    cfg.services
        .iter()
        .filter_map(|vs| {
            let key = desired::service_key(vs);
            let (_, svc) = a.services.iter().find(|(k, _)| *k == key)?;
            let (_, members) = a.members.iter().find(|(id, _)| *id == svc.id)?;
            let sorry = vs.sorry.as_ref()?;
            let sorry_id = a
                .reals
                .iter()
                .find(|(_, r)| desired::addr_from_words(&r.addr, r.family) == sorry.address)
                .map(|(id, _)| *id)?;
            Some((vs.name.clone(), members.as_slice() == [sorry_id]))
        })
        .collect()
}
