//! The daemon, in start-up order: config, privileges, interface, one agent per data plane
//! and socket, logging, secrets (check passwords, the pair's key), data plane, maps,
//! control, VRRP, readiness; then a loop that waits for the next event and hands
//! it to the one owner of the running state (`core::Daemon`) until SIGINT/SIGTERM; then a
//! resignation and a clean detach.

mod attach;
mod core;
mod lock;
mod maintenance;
mod neighbours;
mod pair;
mod quorum;
mod reload;
mod replication;
mod stall;
mod writer;
mod writer_quorum;

use std::{path::Path, time::Duration};

use anyhow::{Result, bail};
use lb_agent::{
    config::Config,
    control,
    health::{
        runner,
        state::{Event as HealthEvent, HealthState},
        verdict::AdoptedSorry,
    },
    netlink,
    notify::Notifier,
    vrrp::{driver::Vrrp, event::Event as VrrpEvent},
};
use tokio::{
    signal::unix::{SignalKind, signal},
    sync::mpsc,
};

use self::{attach::Attached, core::Daemon, neighbours::Link};

/// How often links and neighbours are re-read (MAC changes, late resolution).
const NEIGHBOUR_POLL: Duration = Duration::from_secs(1);

/// How long `lb-agent prepare-restart` holds: long enough for `systemctl restart` (the stop
/// waits at most the unit's 15 s TimeoutStopSec), short enough that a forgotten preparation
/// does not turn a later stop for good into a silent hand-over.
pub const RESTART_WINDOW: Duration = Duration::from_secs(60);

/// `lb-agent run --cleanup`: detach and unpin what an agent left pinned.
pub fn cleanup(config_path: &Path) -> Result<()> {
    let cfg = Config::load(config_path)?;
    let dir = &cfg.dataplane.pin_dir;
    // Never under a running agent.
    let _locks = lock::take(
        dir,
        &control::socket_path(cfg.global.control_socket.as_deref()),
    )?;
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
    netlink::if_index(&cfg.dataplane.interface)?;
    // 3b. One agent per pinned data plane and per control socket, for its whole life: taken
    //     before anything of them is touched.
    let locks = lock::take(
        &cfg.dataplane.pin_dir,
        &control::socket_path(cfg.global.control_socket.as_deref()),
    )?;
    // 4. Logging: one line per event, no colours (journald).
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_ansi(false)
        .with_writer(std::io::stderr)
        .init();
    for w in &cfg.warnings {
        tracing::warn!("{w}");
    }
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let served = rt.block_on(serve(config_path, cfg));
    drop(locks);
    served
}

async fn serve(config_path: &Path, cfg: Config) -> Result<()> {
    let iface = cfg.dataplane.interface.clone();
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
    let now = std::time::Instant::now();
    let mut health = HealthState::new(&cfg, &AdoptedSorry::new(), now)?;
    // 5b. The pair's key too (it is read again when the pair opens), and the quorum's TLS
    //     files (the key under the same rules).
    if let Some(p) = &cfg.pair {
        lb_agent::decision::wire::read_key(&p.key_file).map_err(anyhow::Error::msg)?;
    }
    if let Some(q) = &cfg.quorum {
        quorum::tls_options(q)?;
    }

    // 6. The data plane: load (verifier) with the maps pinned, fill them, then attach, so that
    //    the first frame already sees the full configuration. A data plane left pinned by a
    //    previous agent (killed, crashed, upgraded) keeps forwarding meanwhile: we take over
    //    its maps and ids, write the difference, and swap our program into its link.
    let (
        Attached {
            dp,
            planner,
            state,
            mode: got,
        },
        verdicts,
    ) = attach::attach(&cfg, &link, &mut health, now).await?;
    let (health_tx, health_rx) = tokio::sync::mpsc::channel::<HealthEvent>(256);
    runner::spawn_checks(&health.monitor, &health_tx);

    // 7. Control: the socket and the metrics endpoint.
    let (control_tx, control_rx) = tokio::sync::mpsc::channel(16);
    let socket = control::socket_path(cfg.global.control_socket.as_deref());
    if let Some(addr) = cfg.global.metrics_listen {
        let token = match &cfg.global.metrics_token_file {
            Some(path) => Some(control::metrics::read_token(path).map_err(anyhow::Error::msg)?),
            None => None,
        };
        control::metrics::serve(addr, token, control_tx.clone()).await?;
    }
    control::serve(&socket, control_tx)?;
    tracing::info!(interface = %iface, mode = ?got, services = state.services.len(), reals = state.reals.len(), "data plane attached");

    // 8. VRRP: it moves the addresses only. The services are on already: a backup that
    //    receives VIP frames forwards them by the same decision as the master.
    let (vrrp, vrrp_events) = Vrrp::start(&cfg, &handle, std::time::Instant::now()).await?;
    // Later than this, the loop's tick says the agent stood still (`stall`).
    let shortest_advert_interval = cfg
        .vrrp_instances
        .iter()
        .map(|vi| vi.advert_interval)
        .min()
        .unwrap_or(NEIGHBOUR_POLL);
    // 8b. The pair: the writer decision exchanged with the other agent(s). Until this agent
    //     has heard them (or waited them out), it decides nothing new.
    let (pair_tx, pair_rx) = mpsc::channel::<pair::Datagram>(64);
    let pair = match &cfg.pair {
        Some(p) => Some(pair::PairLink::open(p, agent_name(&cfg), pair_tx.clone())?),
        None => None,
    };
    // 8c. The quorum: the writer decision kept in etcd. Its task starts now; until a round
    //     has read a committed decision, the shared writes wait ("no quorum" in status).
    let (quorum_tx, quorum_rx) = mpsc::channel::<quorum::Report>(64);
    let quorum = match &cfg.quorum {
        Some(q) => Some(quorum::QuorumLink::open(
            q,
            agent_name(&cfg),
            quorum_tx.clone(),
        )?),
        None => None,
    };
    let maintenance =
        lb_agent::decision::maintenance::Marks::new(agent_name(&cfg), std::time::Instant::now());
    let mut d = Daemon {
        config_path: config_path.to_path_buf(),
        maintenance,
        notifier: Notifier::new(&cfg),
        cfg,
        link,
        dp,
        attach_mode: format!("{got:?}").to_lowercase(),
        planner,
        state,
        health,
        health_tx,
        vrrp,
        pair,
        quorum,
        fences: Default::default(),
        verdicts,
        stall: stall::StallWatch::new(NEIGHBOUR_POLL, shortest_advert_interval),
        restart_prepared_until: None,
    };
    d.vrrp_step().await?;

    // 9. Tell systemd (Type=notify) that we are up; ping its watchdog from the main loop, so a
    //    loop that hangs gets the service restarted. Outside systemd these do nothing.
    let _ = sd_notify::notify(false, &[sd_notify::NotifyState::Ready]);
    let mut watchdog_usec = 0;
    let watchdog = sd_notify::watchdog_enabled(false, &mut watchdog_usec).then(|| {
        tokio::time::interval(
            Duration::from_micros(watchdog_usec / 2).max(Duration::from_millis(100)),
        )
    });

    // 10. Run until told to stop: each event goes to its method of `Daemon`.
    let mut inputs = Inputs {
        vrrp: vrrp_events,
        health: health_rx,
        control: control_rx,
        pair: pair_rx,
        _pair_tx: pair_tx,
        quorum: quorum_rx,
        _quorum_tx: quorum_tx,
        watchdog,
    };
    event_loop(&mut d, &mut inputs).await?;

    // 11. Clean exit: resign, detach, unpin — unless a restart was prepared, which leaves the
    //     data plane as a killed agent would, for the next one to adopt.
    let _ = sd_notify::notify(false, &[sd_notify::NotifyState::Stopping]);
    if d.restart_prepared(std::time::Instant::now()) {
        d.exit_for_restart();
        return Ok(());
    }
    d.shutdown(&mut inputs.vrrp).await
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

/// What the loop waits on besides signals, netlink and the tick.
struct Inputs {
    vrrp: mpsc::Receiver<VrrpEvent>,
    health: mpsc::Receiver<HealthEvent>,
    control: mpsc::Receiver<control::Pending>,
    pair: mpsc::Receiver<pair::Datagram>,
    /// Keeps `pair` open without a pair (its branch then never fires).
    _pair_tx: mpsc::Sender<pair::Datagram>,
    quorum: mpsc::Receiver<quorum::Report>,
    /// Keeps `quorum` open without a quorum.
    _quorum_tx: mpsc::Sender<quorum::Report>,
    watchdog: Option<tokio::time::Interval>,
}

/// Waits for the next event and hands it to its method of `Daemon`, until SIGTERM/SIGINT.
async fn event_loop(d: &mut Daemon, inputs: &mut Inputs) -> Result<()> {
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    let mut hup = signal(SignalKind::hangup())?;
    let mut changes = netlink::watch()?;
    let mut tick = tokio::time::interval(NEIGHBOUR_POLL);
    loop {
        let vrrp_deadline = d.vrrp.next_deadline();
        let health_deadline = d.health.next_deadline();
        let pair_deadline = d.pair_deadline();
        let quorum_deadline = d.quorum_deadline();
        tokio::select! {
            _ = term.recv() => break,
            _ = int.recv() => break,
            Some(event) = inputs.vrrp.recv() => d.on_vrrp_event(event).await?,
            _ = sleep_until(vrrp_deadline) => d.on_vrrp_timer().await?,
            Some(event) = inputs.health.recv() => d.on_health_event(event).await?,
            _ = sleep_until(health_deadline) => d.on_health_deadline().await?,
            Some(datagram) = inputs.pair.recv() => d.on_pair_datagram(datagram).await?,
            _ = sleep_until(pair_deadline) => d.on_pair_timer().await?,
            Some(report) = inputs.quorum.recv() => d.on_quorum_report(report).await?,
            _ = sleep_until(quorum_deadline) => d.on_quorum_deadline().await?,
            Some((request, reply)) = inputs.control.recv() => {
                let answer = match request {
                    // A reload replaces the health tasks' channel, which the loop owns.
                    control::Request::Reload => reload(d, &mut inputs.health).await?,
                    other => d.on_control(other).await?,
                };
                let _ = reply.send(answer);
            }
            _ = tick_watchdog(&mut inputs.watchdog) => {
                let _ = sd_notify::notify(false, &[sd_notify::NotifyState::Watchdog]);
            }
            _ = hup.recv() => {
                reload(d, &mut inputs.health).await?;
            }
            Some(()) = futures_util::StreamExt::next(&mut changes) => {
                // A burst of notifications is one look.
                while let Some(Some(())) = futures_util::FutureExt::now_or_never(futures_util::StreamExt::next(&mut changes)) {}
                d.on_netlink_change().await?;
            }
            _ = tick.tick() => d.on_tick().await?,
        }
    }
    Ok(())
}

/// SIGHUP or `lb-agent reload`: the configuration file read again and applied (or refused,
/// the running state untouched), with systemd told RELOADING=1 / READY=1 around it.
async fn reload(
    d: &mut Daemon,
    health: &mut tokio::sync::mpsc::Receiver<HealthEvent>,
) -> Result<control::Reply> {
    let _ = sd_notify::notify(false, &[sd_notify::NotifyState::Reloading]);
    let answer = match d.on_reload().await? {
        reload::Reloaded::Applied {
            health: rx,
            summary,
        } => {
            *health = rx;
            control::Reply::Ok(summary)
        }
        reload::Reloaded::Refused(why) => control::Reply::Error(format!("reload refused: {why}")),
    };
    let _ = sd_notify::notify(false, &[sd_notify::NotifyState::Ready]);
    Ok(answer)
}

/// This agent's name in the pair's views and in etcd: its `router_id` (the recipe's LVS1 / LVS2), with
/// the process id, so that two agents never take each other's views for their own.
fn agent_name(cfg: &Config) -> String {
    format!(
        "{}#{}",
        cfg.global.router_id.as_deref().unwrap_or("lb-agent"),
        std::process::id()
    )
}
