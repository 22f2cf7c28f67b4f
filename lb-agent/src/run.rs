//! The daemon, in start-up order: config, privileges, interface, logging, health checks, data
//! plane, maps, VRRP, readiness; then a loop that follows checks, adverts, neighbour changes,
//! reloads and control requests until SIGINT/SIGTERM; then a resignation and a clean detach.

use std::{
    collections::{HashMap, HashSet},
    net::IpAddr,
    path::Path,
    time::Duration,
};

use anyhow::{Context, Result, bail};
use lb_agent::{
    balancer::{
        desired::{self, DesiredState, RealInfo},
        ids::Planner,
    },
    config::{Config, XdpModeSetting},
    control,
    dataplane::{AttachMode, Dataplane, LoadOptions, reconcile},
    health::state::{Event as HealthEvent, Flip, HealthState},
    netlink, notify,
    vrrp::driver::Vrrp,
};
use tokio::signal::unix::{SignalKind, signal};

/// How often neighbours are re-read (MAC changes, late resolution).
const NEIGHBOUR_POLL: Duration = Duration::from_secs(1);

fn status_of(
    dp: &mut Dataplane,
    cfg: &Config,
    state: &DesiredState,
    mode: &str,
    vrrp: &Vrrp,
    health: &HealthState,
) -> Result<control::status::Status> {
    let sids: Vec<u32> = state.services.iter().map(|s| s.id).collect();
    let rids: Vec<u32> = state.reals.keys().copied().collect();
    let counters = dp.maps().counters(&sids, &rids)?;
    let mut s = control::status::build(cfg, state, &counters, mode);
    s.learned_peers = control::status::peers(&dp.maps().learned_peers()?);
    s.vrrp = vrrp.status();
    control::status::add_health(&mut s, &health.eval.reports);
    Ok(s)
}

/// `lb-agent run --cleanup`: detach and unpin what an agent left pinned.
pub fn cleanup(config_path: &Path) -> Result<()> {
    let cfg = Config::load(config_path)?;
    let dir = &cfg.dataplane.pin_dir;
    lb_agent::dataplane::remove_pinned(dir)?;
    println!("removed the pinned data plane under {}", dir.display());
    Ok(())
}

pub fn run(config_path: &Path) -> Result<()> {
    // 1. Configuration: an unreadable or invalid file stops here, before anything changes.
    let cfg = Config::load(config_path)?;
    // 2. Privileges.
    if unsafe { libc::geteuid() } != 0 {
        bail!("lb-agent run must be started as root (it loads XDP programs and maps)");
    }
    // 3. The interface.
    let iface = cfg.dataplane.interface.clone();
    netlink::if_index(&iface)?;
    // 4. Logging: one line per event, no colours (journald).
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_ansi(false)
        .with_writer(std::io::stderr)
        .init();

    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    rt.block_on(serve(config_path, cfg, iface))
}

async fn serve(config_path: &Path, mut cfg: Config, iface: String) -> Result<()> {
    let handle = netlink::connect()?;
    let link = Link {
        handle: handle.clone(),
        mac: netlink::iface_mac(&handle, &iface).await?,
        index: netlink::if_index(&iface)?,
        name: iface.clone(),
    };

    // 5. Health checks first: a password file that cannot be used stops the start before the
    //    data plane changes. Until its first result a checked server counts as up
    //    (keepalived's default).
    let (check_tx, mut check_rx) = tokio::sync::mpsc::channel::<HealthEvent>(256);
    let mut health = HealthState::start(&cfg, check_tx, &[], std::time::Instant::now())?;

    // 6. The data plane: load (verifier) with the maps pinned, fill them, then attach, so that
    //    the first frame already sees the full configuration. A data plane left pinned by a
    //    previous agent (killed, crashed, upgraded) keeps forwarding meanwhile: we take over
    //    its maps and ids, write the difference, and swap our program into its link.
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
        health.set_adopted(&cfg, &adopted_sorry(&cfg, &a), std::time::Instant::now());
        Some(desired::from_adopted(&a))
    } else {
        None
    };
    let mut state = resolve(
        &cfg,
        &link,
        Resolve::ProbeAndWait,
        &mut planner,
        &HashSet::new(),
        health.verdicts(),
    )
    .await?;
    let ops = reconcile::plan(previous.as_ref(), &mut state);
    dp.maps().execute(&ops)?;
    report(&state);
    let mode = match cfg.dataplane.xdp_mode {
        XdpModeSetting::Auto => None,
        XdpModeSetting::Driver => Some(AttachMode::Driver),
        XdpModeSetting::Skb => Some(AttachMode::Skb),
    };
    let got = dp.attach(&iface, mode)?;
    let attach_mode = format!("{got:?}").to_lowercase();
    let (control_tx, mut control_rx) = tokio::sync::mpsc::channel(16);
    let socket = control::socket_path(cfg.global.control_socket.as_deref());
    if let Some(addr) = cfg.global.metrics_listen {
        control::metrics::serve(addr, control_tx.clone()).await?;
    }
    control::serve(&socket, control_tx)?;
    tracing::info!(interface = %iface, mode = ?got, services = state.services.len(), reals = state.reals.len(), "data plane attached");

    // 7. VRRP: until an instance is master here, the services of its VIPs stay inactive (the
    //    state above was computed with no masters).
    let (mut vrrp, mut vrrp_events) = Vrrp::start(&cfg, &handle, std::time::Instant::now()).await?;
    vrrp_step(&mut vrrp, &handle, &cfg, &mut dp, &mut state).await?;

    // 8. Tell systemd (Type=notify) that we are up; ping its watchdog from the main loop, so a
    //    loop that hangs gets the service restarted. Outside systemd these do nothing.
    let _ = sd_notify::notify(false, &[sd_notify::NotifyState::Ready]);
    let mut watchdog_usec = 0;
    let mut watchdog = sd_notify::watchdog_enabled(false, &mut watchdog_usec).then(|| {
        tokio::time::interval(
            Duration::from_micros(watchdog_usec / 2).max(Duration::from_millis(100)),
        )
    });

    // 9. Run until told to stop.
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    let mut hup = signal(SignalKind::hangup())?;
    // Neighbour and address changes apply at once; the tick also catches what no event told
    // us, and probes what is still unresolved.
    let mut changes = netlink::watch()?;
    let mut tick = tokio::time::interval(NEIGHBOUR_POLL);
    loop {
        let deadline = vrrp.next_deadline();
        let health_deadline = health.next_deadline();
        tokio::select! {
            _ = term.recv() => break,
            _ = int.recv() => break,
            Some(event) = vrrp_events.recv() => {
                vrrp.handle_event(std::time::Instant::now(), event);
                vrrp_step(&mut vrrp, &handle, &cfg, &mut dp, &mut state).await?;
            }
            _ = sleep_until(deadline) => {
                vrrp.handle_timeout(std::time::Instant::now());
                vrrp_step(&mut vrrp, &handle, &cfg, &mut dp, &mut state).await?;
            }
            Some(event) = check_rx.recv() => {
                let (flip, changed) = health.handle(event, std::time::Instant::now());
                if let Some(f) = flip {
                    notify_real(&cfg, &f);
                }
                if changed {
                    health_step(&mut health, &cfg, &mut planner, &mut dp, &mut state, &vrrp).await?;
                }
            }
            _ = sleep_until(health_deadline) => {
                health_step(&mut health, &cfg, &mut planner, &mut dp, &mut state, &vrrp).await?;
            }
            Some((request, reply)) = control_rx.recv() => {
                let answer = match request {
                    control::Request::Status => match status_of(&mut dp, &cfg, &state, &attach_mode, &vrrp, &health) {
                        Ok(s) => serde_json::to_string(&s).unwrap_or_else(|e| control::error_json(&e.to_string())),
                        Err(e) => control::error_json(&format!("{e:#}")),
                    },
                    control::Request::Failback { service } => match health.request_failback(&cfg, &service) {
                        Ok(()) => {
                            tracing::info!(service, "failback requested");
                            health_step(&mut health, &cfg, &mut planner, &mut dp, &mut state, &vrrp).await?;
                            serde_json::json!({ "ok": format!("{service}: failback requested") }).to_string()
                        }
                        Err(e) => control::error_json(&format!("{service}: {e}")),
                    },
                };
                let _ = reply.send(answer);
            }
            _ = tick_watchdog(&mut watchdog) => {
                let _ = sd_notify::notify(false, &[sd_notify::NotifyState::Watchdog]);
            }
            _ = hup.recv() => {
                let _ = sd_notify::notify(false, &[sd_notify::NotifyState::Reloading]);
                let _ = sd_notify::notify(false, &[sd_notify::NotifyState::Ready]);
                // A reload applies the difference only; an invalid file changes nothing.
                let new_cfg = match Config::load(config_path) {
                    Ok(c) => c,
                    Err(e) => {
                        tracing::error!(error = %e, "reload refused, the running configuration stays");
                        continue;
                    }
                };
                let (a, b) = (&cfg.dataplane, &new_cfg.dataplane);
                if (&a.interface, a.xdp_mode, &a.pin_dir) != (&b.interface, b.xdp_mode, &b.pin_dir) {
                    tracing::error!("reload refused: dataplane.interface, xdp_mode and pin_dir need a restart");
                    continue;
                }
                // New checks (password files read again): a failure refuses the reload.
                let (tx, rx) = tokio::sync::mpsc::channel::<HealthEvent>(256);
                if let Err(e) = health.reload(&new_cfg, tx, std::time::Instant::now()) {
                    tracing::error!(error = %format!("{e:#}"), "reload refused, the running configuration stays");
                    continue;
                }
                check_rx = rx;
                match resolve(&new_cfg, &link, Resolve::ProbeAndWait, &mut planner, &vrrp.masters(), health.verdicts()).await {
                    Ok(next) => {
                        let writes = apply(&mut dp, &mut state, next)?;
                        tracing::info!(writes, services = state.services.len(), "configuration reloaded");
                        cfg = new_cfg;
                    }
                    Err(e) => tracing::error!(error = %format!("{e:#}"), "reload refused, the running configuration stays"),
                }
            }
            Some(()) = futures_util::StreamExt::next(&mut changes) => {
                // A burst of notifications is one look.
                while let Some(Some(())) = futures_util::FutureExt::now_or_never(futures_util::StreamExt::next(&mut changes)) {}
                vrrp.refresh_links(&handle, std::time::Instant::now()).await;
                vrrp_step(&mut vrrp, &handle, &cfg, &mut dp, &mut state).await?;
                refresh(&cfg, &link, Resolve::Look, &mut planner, &mut dp, &mut state, &vrrp.masters(), health.verdicts()).await?;
            }
            _ = tick.tick() => {
                vrrp.refresh_links(&handle, std::time::Instant::now()).await;
                vrrp_step(&mut vrrp, &handle, &cfg, &mut dp, &mut state).await?;
                refresh(&cfg, &link, Resolve::Probe, &mut planner, &mut dp, &mut state, &vrrp.masters(), health.verdicts()).await?;
            }
        }
    }

    // 10. Clean exit: resign from VRRP (priority 0: the peer takes over after skew time; we
    //    keep forwarding until it has), then detach and unpin. (A killed agent leaves the data plane running, pinned, for the next
    //    one to adopt.)
    let _ = sd_notify::notify(false, &[sd_notify::NotifyState::Stopping]);
    vrrp.shutdown(&handle, &mut vrrp_events).await?;
    tracing::info!("stopping: detaching the data plane");
    let _ = std::fs::remove_file(&socket);
    dp.shutdown()?;
    Ok(())
}

/// Per virtual server: whether the adopted data plane has it on its sorry server only
/// (`None` when the data plane does not know the service).
fn adopted_sorry(cfg: &Config, a: &lb_agent::dataplane::Adopted) -> Vec<Option<bool>> {
    cfg.virtual_servers
        .iter()
        .map(|vs| {
            let vs = vs.get_ref();
            let key = desired::service_key(vs);
            let (_, svc) = a.services.iter().find(|(k, _)| *k == key)?;
            let (_, members) = a.members.iter().find(|(id, _)| *id == svc.id)?;
            let sorry = vs.sorry_server.as_ref()?;
            let sorry_id = a
                .reals
                .iter()
                .find(|(_, r)| desired::addr_from_words(&r.addr, r.family) == sorry.address)
                .map(|(id, _)| *id)?;
            Some(members.as_slice() == [sorry_id])
        })
        .collect()
}

fn report(state: &DesiredState) {
    for w in state.warnings() {
        tracing::warn!("{w}");
    }
}

/// The next watchdog tick, or never without a watchdog.
async fn tick_watchdog(w: &mut Option<tokio::time::Interval>) {
    match w {
        Some(i) => {
            i.tick().await;
        }
        None => std::future::pending().await,
    }
}

/// Sleeps until `deadline`, or forever without one.
async fn sleep_until(deadline: Option<std::time::Instant>) {
    match deadline {
        Some(d) => tokio::time::sleep_until(tokio::time::Instant::from_std(d)).await,
        None => std::future::pending().await,
    }
}

/// Carries out the VRRP instances' actions; when the VIPs we are master for changed, flips the
/// services' active flags (one map write each).
async fn vrrp_step(
    vrrp: &mut Vrrp,
    handle: &rtnetlink::Handle,
    cfg: &Config,
    dp: &mut Dataplane,
    state: &mut DesiredState,
) -> Result<()> {
    if vrrp.run_actions(handle).await? {
        let masters = vrrp.masters();
        let mut next = state.clone();
        next.apply_vrrp(cfg, &masters);
        let writes = apply(dp, state, next)?;
        tracing::info!(writes, masters = ?masters, "VRRP ownership changed, services flipped");
    }
    Ok(())
}

/// Evaluates the services' health again and, when a verdict changed (a server failed or came
/// back, a failback became due), writes the affected services: the decision-to-map-flip time
/// is logged as `switch_us`.
async fn health_step(
    health: &mut HealthState,
    cfg: &Config,
    planner: &mut Planner,
    dp: &mut Dataplane,
    state: &mut DesiredState,
    vrrp: &Vrrp,
) -> Result<()> {
    let decided = std::time::Instant::now();
    let Some(before) = health.evaluate(cfg, decided) else {
        return Ok(());
    };
    let mut next = state.clone();
    next.apply_health(cfg, health.verdicts(), &before, planner);
    next.apply_vrrp(cfg, &vrrp.masters());
    let sorry_before: Vec<bool> = state.services.iter().map(|s| s.using_sorry).collect();
    let writes = apply(dp, state, next)?;
    let switch_us = decided.elapsed().as_micros() as u64;
    tracing::info!(writes, switch_us, "health verdicts changed, maps updated");
    for (i, (vs, svc)) in cfg
        .virtual_servers
        .iter()
        .map(|v| v.get_ref())
        .zip(&state.services)
        .enumerate()
    {
        if sorry_before.get(i) == Some(&svc.using_sorry) {
            continue;
        }
        let (what, script, text) = if svc.using_sorry {
            (
                "quorum_down",
                vs.quorum_down.clone(),
                "lost its quorum: the sorry server takes the traffic",
            )
        } else {
            (
                "quorum_up",
                vs.quorum_up.clone(),
                "is back on its real servers",
            )
        };
        tracing::warn!(service = %svc.name, "{text}");
        if let Some(command) = script {
            notify::spawn_script(what, command);
        }
        if vs.smtp_alert
            && let Some(m) = notify::mail::Mailer::from_config(&cfg.global)
        {
            m.send(
                format!(
                    "=> {} {} <=",
                    svc.name,
                    if svc.using_sorry {
                        "QUORUM DOWN"
                    } else {
                        "QUORUM UP"
                    }
                ),
                format!("{} {text}", svc.name),
            );
        }
    }
    Ok(())
}

/// notify_up / notify_down of every real server entry at the flipped address and port, and
/// e-mail for services with `smtp_alert`.
fn notify_real(cfg: &Config, f: &Flip) {
    if f.up {
        tracing::info!(real = %f.addr, port = f.port, "real server up");
    } else {
        tracing::warn!(real = %f.addr, port = f.port, reason = f.reason.as_deref().unwrap_or(""), "real server down");
    }
    let mut mailed = false;
    for vs in cfg.virtual_servers.iter().map(|v| v.get_ref()) {
        for rs in vs.real_servers.iter().chain(vs.sorry_server.iter()) {
            if rs.address != f.addr || rs.port.unwrap_or(vs.port) != f.port {
                continue;
            }
            let script = if f.up { &rs.notify_up } else { &rs.notify_down };
            if let Some(command) = script {
                notify::spawn_script(
                    if f.up { "notify_up" } else { "notify_down" },
                    command.clone(),
                );
            }
            if vs.smtp_alert
                && !mailed
                && let Some(m) = notify::mail::Mailer::from_config(&cfg.global)
            {
                mailed = true;
                let state = if f.up { "UP" } else { "DOWN" };
                m.send(
                    format!("=> CHECK on service [{}]:{} {state} <=", f.addr, f.port),
                    format!(
                        "=> real server [{}]:{} is {state}{} <=",
                        f.addr,
                        f.port,
                        f.reason
                            .as_ref()
                            .map(|r| format!(": {r}"))
                            .unwrap_or_default()
                    ),
                );
            }
        }
    }
}

/// Looks at the neighbours again and writes what changed.
#[allow(clippy::too_many_arguments)]
async fn refresh(
    cfg: &Config,
    link: &Link,
    how: Resolve,
    planner: &mut Planner,
    dp: &mut Dataplane,
    state: &mut DesiredState,
    masters: &HashSet<IpAddr>,
    verdicts: &[lb_agent::balancer::desired::ServiceVerdict],
) -> Result<()> {
    match resolve(cfg, link, how, planner, masters, verdicts).await {
        Ok(next) => {
            let writes = apply(dp, state, next)?;
            if writes > 0 {
                tracing::info!(writes, "real servers changed, maps updated");
            }
        }
        Err(e) => tracing::warn!(error = %format!("{e:#}"), "reading neighbours"),
    }
    Ok(())
}

/// Writes the difference from `state` to `next` and makes `next` the state; returns how many
/// map writes that took (0: nothing changed, nothing reported).
fn apply(dp: &mut Dataplane, state: &mut DesiredState, mut next: DesiredState) -> Result<usize> {
    let ops = reconcile::plan(Some(state), &mut next);
    if !ops.is_empty() {
        dp.maps().execute(&ops)?;
        report(&next);
    }
    *state = next;
    Ok(ops.len())
}

/// The data-plane interface, and the rtnetlink connection that reads it.
struct Link {
    handle: rtnetlink::Handle,
    name: String,
    index: u32,
    mac: [u8; 6],
}

/// How hard `resolve` tries for real servers without a MAC.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Resolve {
    /// Read only (after a notification: probing here would notify again, and again).
    Look,
    /// Send a probe to each missing one.
    Probe,
    /// Probe, and wait for the answers (bounded: 1 s).
    ProbeAndWait,
}

/// Reads local addresses and neighbours and computes the desired state.
async fn resolve(
    cfg: &Config,
    link: &Link,
    how: Resolve,
    planner: &mut Planner,
    masters: &HashSet<IpAddr>,
    verdicts: &[lb_agent::balancer::desired::ServiceVerdict],
) -> Result<DesiredState> {
    let local = netlink::local_addresses(&link.handle).await?;
    let configured: HashMap<IpAddr, Option<[u8; 6]>> = cfg
        .virtual_servers
        .iter()
        .flat_map(|vs| {
            let vs = vs.get_ref();
            vs.real_servers
                .iter()
                .chain(vs.sorry_server.iter())
                .map(|r| (r.address, r.mac.map(|m| m.0)))
        })
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
    state.apply_health(cfg, verdicts, &[], planner);
    state.apply_vrrp(cfg, masters);
    Ok(state)
}
