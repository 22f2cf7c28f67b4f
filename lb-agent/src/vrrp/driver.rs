//! The VRRP driver: one `Instance` per configured `vrrp_instance`, its socket, its timers,
//! its virtual addresses and what it tracks. The daemon's loop feeds it events (received
//! adverts, track-script results), link changes and deadlines; the driver carries out the
//! instances' actions and tells which VIPs this host is master for.

use std::{
    collections::HashSet,
    net::IpAddr,
    sync::Arc,
    time::{Duration, Instant},
};

use anyhow::{Context, Result, bail};
use futures_util::TryStreamExt;
use netlink_packet_route::address::AddressAttribute;
use rtnetlink::Handle;
use tokio::sync::mpsc;

use super::{
    instance::{Action, Instance, InstanceConfig, State},
    packet::{Advert, Auth, MULTICAST_V4, MULTICAST_V6, Received, V3Ipv4Checksum, Version},
    socket::VrrpSocket,
    track::{self, Tracked},
};
use crate::{
    config::{Config, InitialState, VrrpInstance, VrrpScript},
    health::{exec, tracker::Tracker},
    netlink::{
        self,
        vips::{self, Vip},
    },
    notify,
};

/// keepalived's gratuitous ARP settings of one instance.
struct Garp {
    repeat: usize,
    delay: Duration,
    refresh: Duration,
    refresh_repeat: usize,
}

/// What moves an instance's priority, or faults it.
enum TrackRef {
    /// An interface and its last known state (the instance's own interface is one, weight 0).
    Interface { name: String, weight: i32, up: bool },
    /// A `vrrp_script`, by index into `Vrrp::scripts`.
    Script { index: usize, weight: i32 },
}

struct Router {
    name: String,
    /// notify_master, notify_backup, notify_fault.
    notify: [Option<String>; 3],
    smtp_alert: bool,
    inst: Instance,
    base_priority: u8,
    tracks: Vec<TrackRef>,
    socket: Arc<VrrpSocket>,
    local: IpAddr,
    /// Multicast group, or the unicast peers.
    destinations: Vec<IpAddr>,
    vips: Vec<Vip>,
    mac: [u8; 6],
    garp: Garp,
    /// The next gratuitous ARP burst while master: when, and how many per VIP.
    garp_due: Option<(Instant, usize)>,
}

/// A track script's latest verdict.
struct Script {
    name: String,
    tracker: Tracker,
}

/// What the driver's background tasks report to the daemon's loop.
pub enum Event {
    /// A received advert: router index, IP facts, VRRP message.
    Advert(usize, Received, Vec<u8>),
    /// A track script ran: script index, exit 0 or not.
    Script(usize, bool),
}

pub struct Vrrp {
    routers: Vec<Router>,
    /// Per router: its sync group (index into `vrrp_sync_group`), if any.
    groups: Vec<Option<usize>>,
    scripts: Vec<Script>,
    /// For e-mail alerts: who sends, to whom, through which server.
    mail: Option<notify::mail::Mailer>,
    /// While resigning: addresses stay until a backup has taken over (see `shutdown`).
    keep_addresses: bool,
}

/// The longest a resigning master keeps its addresses waiting for a backup's first advert.
const MAX_HANDOVER_WAIT: Duration = Duration::from_secs(3);
/// Slack for the backup's processing and its gratuitous ARPs.
const HANDOVER_MARGIN: Duration = Duration::from_millis(20);

/// What `status` shows of one instance.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize, PartialEq)]
pub struct RouterStatus {
    pub name: String,
    pub state: String,
    /// The current master's address, as far as this host knows.
    #[serde(default)]
    pub master: Option<IpAddr>,
    pub priority: u8,
    pub adverts_received: u64,
    pub adverts_sent: u64,
    pub became_master: u64,
    pub discards: Vec<(String, u64)>,
}

/// Makes the other members of `leader`'s sync group follow its move to `to`.
fn apply_group(
    routers: &mut [Router],
    groups: &[Option<usize>],
    leader: usize,
    to: State,
    now: std::time::Instant,
) {
    let Some(g) = groups[leader] else { return };
    for (j, r) in routers.iter_mut().enumerate() {
        if j != leader && groups[j] == Some(g) {
            if to == State::Master {
                r.inst.follow_master(now);
            } else {
                r.inst.follow_backup(now);
            }
        }
    }
}

/// The address adverts are sent from: for IPv4 the interface's first address that is not one
/// of `vips`; for IPv6 its link-local address (RFC 5798 5.1.2.1).
async fn primary(handle: &Handle, index: u32, vips: &[Vip], v6: bool) -> Result<IpAddr> {
    let mut addrs = handle
        .address()
        .get()
        .set_link_index_filter(index)
        .execute();
    while let Some(msg) = addrs.try_next().await? {
        for attr in msg.attributes {
            if let AddressAttribute::Address(a) = attr
                && !vips.iter().any(|v| v.address == a)
            {
                match a {
                    IpAddr::V4(_) if !v6 => return Ok(a),
                    IpAddr::V6(l) if v6 && l.is_unicast_link_local() => return Ok(a),
                    _ => {}
                }
            }
        }
    }
    if v6 {
        bail!("the interface has no IPv6 link-local address to send VRRP adverts from")
    }
    bail!("the interface has no IPv4 address of its own to send VRRP adverts from")
}

/// Runs a track script every `interval` for as long as the daemon's loop listens.
fn spawn_script(index: usize, sc: &VrrpScript, tx: mpsc::Sender<Event>) {
    let command = sc.script.clone();
    let interval = sc.interval.0;
    let timeout = sc.timeout.map(|t| t.0).unwrap_or(interval);
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            let ok = exec::run(&command, timeout, false).await.ok();
            if tx.send(Event::Script(index, ok)).await.is_err() {
                return;
            }
        }
    });
}

fn instance_config(vi: &VrrpInstance, primary: IpAddr) -> InstanceConfig {
    InstanceConfig {
        vrid: vi.virtual_router_id,
        version: if vi.version == 3 {
            Version::V3
        } else {
            Version::V2
        },
        priority: vi.priority,
        interval: vi.advert_interval.0,
        preempt: vi.preempt,
        preempt_delay: vi.preempt_delay.0,
        start_as_master: vi.state == InitialState::Master,
        primary,
        addresses: vi.virtual_addresses.iter().map(|v| v.address).collect(),
        auth: match &vi.auth_pass {
            Some(p) => Auth::pass(p),
            None => Auth::None,
        },
    }
}

impl Vrrp {
    /// Opens every instance's socket, removes virtual addresses a previous run left (we are
    /// not master of anything yet), starts the track scripts and the instances.
    /// Also returns the channel of events, for the daemon's loop.
    pub async fn start(
        cfg: &Config,
        handle: &Handle,
        now: Instant,
    ) -> Result<(Vrrp, mpsc::Receiver<Event>)> {
        let (tx, events) = mpsc::channel(256);
        let scripts: Vec<Script> = cfg
            .vrrp_scripts
            .iter()
            .map(|sc| {
                let sc = sc.get_ref();
                Script {
                    name: sc.name.clone(),
                    tracker: Tracker::new(sc.rise, sc.fall, !sc.init_fail),
                }
            })
            .collect();
        let mut routers = Vec::new();
        for (i, vi) in cfg.vrrp_instances.iter().map(|v| v.get_ref()).enumerate() {
            routers.push(
                Self::start_router(cfg, handle, i, vi, &tx, now)
                    .await
                    .with_context(|| format!("vrrp_instance {}", vi.name))?,
            );
        }
        // Only the scripts some instance tracks.
        for (j, sc) in cfg.vrrp_scripts.iter().enumerate() {
            if routers.iter().any(|r| {
                r.tracks
                    .iter()
                    .any(|t| matches!(t, TrackRef::Script { index, .. } if *index == j))
            }) {
                spawn_script(j, sc.get_ref(), tx.clone());
            }
        }
        let groups = cfg
            .vrrp_instances
            .iter()
            .map(|vi| {
                cfg.sync_groups
                    .iter()
                    .position(|g| g.get_ref().members.contains(&vi.get_ref().name))
            })
            .collect();
        let mut vrrp = Vrrp {
            routers,
            groups,
            scripts,
            mail: notify::mail::Mailer::from_config(&cfg.global),
            keep_addresses: false,
        };
        vrrp.refresh_links(handle, now).await;
        Ok((vrrp, events))
    }

    async fn start_router(
        cfg: &Config,
        handle: &Handle,
        i: usize,
        vi: &VrrpInstance,
        tx: &mpsc::Sender<Event>,
        now: Instant,
    ) -> Result<Router> {
        let index = netlink::if_index(&vi.interface)?;
        let mac = netlink::iface_mac(handle, &vi.interface).await?;
        let mut vips = Vec::new();
        for va in &vi.virtual_addresses {
            let device = va.device.as_deref().unwrap_or(&vi.interface);
            vips.push(Vip {
                address: va.address,
                prefix: va
                    .prefix
                    .unwrap_or(if va.address.is_ipv4() { 32 } else { 128 }),
                index: netlink::if_index(device)?,
                label: va.label.clone(),
            });
        }
        let v6 = vips.first().is_some_and(|v| v.address.is_ipv6());
        for v in &vips {
            if vips::remove(handle, v).await? {
                tracing::warn!(instance = %vi.name, vip = %v.address, "removed a virtual address left by a previous run");
            }
        }
        let (socket, local) = if v6 {
            let local = match vi.unicast_src {
                Some(a) => a,
                None => primary(handle, index, &vips, true).await?,
            };
            (VrrpSocket::open_v6(&vi.interface, index)?, local)
        } else {
            let local = match vi.unicast_src {
                Some(IpAddr::V4(a)) => a,
                _ => match primary(handle, index, &vips, false).await? {
                    IpAddr::V4(a) => a,
                    IpAddr::V6(_) => bail!("no IPv4 address"),
                },
            };
            (
                VrrpSocket::open_v4(&vi.interface, index, local)?,
                IpAddr::V4(local),
            )
        };
        let socket = Arc::new(socket);
        let destinations = if vi.unicast_peers.is_empty() {
            vec![if v6 {
                IpAddr::V6(MULTICAST_V6)
            } else {
                IpAddr::V4(MULTICAST_V4)
            }]
        } else {
            vi.unicast_peers.clone()
        };
        let reader = socket.clone();
        let tx = tx.clone();
        tokio::spawn(async move {
            while let Ok((rx, bytes)) = reader.recv().await {
                if tx.send(Event::Advert(i, rx, bytes)).await.is_err() {
                    return;
                }
            }
        });
        let mut tracks = vec![TrackRef::Interface {
            name: vi.interface.clone(),
            weight: 0,
            up: true,
        }];
        for t in &vi.track_interface {
            tracks.push(TrackRef::Interface {
                name: t.name.clone(),
                weight: t.weight.unwrap_or(0),
                up: true,
            });
        }
        for t in &vi.track_script {
            let Some(index) = cfg
                .vrrp_scripts
                .iter()
                .position(|s| s.get_ref().name == t.name)
            else {
                bail!("track_script {:?}: no such vrrp_script", t.name);
            };
            let weight = t.weight.unwrap_or(cfg.vrrp_scripts[index].get_ref().weight);
            tracks.push(TrackRef::Script { index, weight });
        }
        let mut inst = Instance::new(instance_config(vi, local));
        inst.startup(now);
        Ok(Router {
            name: vi.name.clone(),
            notify: [
                vi.notify_master.clone(),
                vi.notify_backup.clone(),
                vi.notify_fault.clone(),
            ],
            smtp_alert: vi.smtp_alert,
            inst,
            base_priority: vi.priority,
            tracks,
            socket,
            local,
            destinations,
            vips,
            mac,
            garp: Garp {
                repeat: vi.garp_master_repeat as usize,
                delay: vi.garp_master_delay.0,
                refresh: vi.garp_master_refresh.0,
                refresh_repeat: vi.garp_master_refresh_repeat as usize,
            },
            garp_due: None,
        })
    }

    pub fn is_empty(&self) -> bool {
        self.routers.is_empty()
    }

    pub fn next_deadline(&self) -> Option<Instant> {
        self.routers
            .iter()
            .flat_map(|r| [r.inst.poll_timeout(), r.garp_due.map(|(at, _)| at)])
            .flatten()
            .min()
    }

    pub fn handle_timeout(&mut self, now: Instant) {
        for r in &mut self.routers {
            r.inst.handle_timeout(now);
            if let Some((at, count)) = r.garp_due
                && at <= now
            {
                r.announce(count);
                r.garp_due = (!r.garp.refresh.is_zero())
                    .then(|| (now + r.garp.refresh, r.garp.refresh_repeat));
            }
        }
    }

    /// An event from a background task.
    pub fn handle_event(&mut self, now: Instant, event: Event) {
        match event {
            Event::Advert(i, rx, bytes) => self.advert_received(now, i, rx, &bytes),
            Event::Script(j, ok) => {
                let Some(sc) = self.scripts.get_mut(j) else {
                    return;
                };
                if let Some(up) = sc.tracker.record(ok) {
                    tracing::info!(script = %sc.name, up, "track script changed");
                    self.retrack(now);
                }
            }
        }
    }

    /// Reads the state of every tracked interface (after a link notification, and on the
    /// daemon's tick) and applies what changed.
    pub async fn refresh_links(&mut self, handle: &Handle, now: Instant) {
        let mut changed = false;
        for r in &mut self.routers {
            for t in &mut r.tracks {
                if let TrackRef::Interface { name, up, .. } = t {
                    let now_up = netlink::link_up(handle, name).await.unwrap_or(false);
                    if now_up != *up {
                        tracing::info!(instance = %r.name, interface = %name, up = now_up, "tracked interface changed");
                        *up = now_up;
                        changed = true;
                    }
                }
            }
        }
        if changed {
            self.retrack(now);
        }
    }

    /// Recomputes every instance's priority and fault from what it tracks.
    fn retrack(&mut self, now: Instant) {
        for r in &mut self.routers {
            let scripts = &self.scripts;
            let (prio, fault) = track::effective(
                r.base_priority,
                r.tracks.iter().map(|t| match t {
                    TrackRef::Interface { weight, up, .. } => Tracked {
                        weight: *weight,
                        up: *up,
                    },
                    TrackRef::Script { index, weight } => Tracked {
                        weight: *weight,
                        up: scripts[*index].tracker.is_up(),
                    },
                }),
            );
            r.inst.set_priority(now, prio);
            if fault {
                r.inst.fault("a tracked interface or script is down");
            } else {
                r.inst.recover(now, "tracked interfaces and scripts are up");
            }
        }
    }

    /// A received advert; decoding failures count as discards.
    fn advert_received(&mut self, now: Instant, i: usize, rx: Received, bytes: &[u8]) {
        let Some(r) = self.routers.get_mut(i) else {
            return;
        };
        // Our own multicast adverts do not come back (multicast loop off); unicast ones
        // might, from the kernel's raw delivery: ignore anything from ourselves.
        if rx.src == r.local {
            return;
        }
        match Advert::decode(bytes, rx, V3Ipv4Checksum::default()) {
            Ok(adv) if adv.vrid == r.inst.vrid() => r.inst.advert_received(now, rx.src, &adv),
            // Another virtual router on the same LAN: not ours to count.
            Ok(_) => {}
            Err(reason) => r.inst.count_discard(reason),
        }
    }

    /// Carries out pending actions (sync groups included); returns whether the set of VIPs we
    /// are master for changed.
    pub async fn run_actions(&mut self, handle: &Handle) -> Result<bool> {
        let mut changed = false;
        // A group's followers queue actions of their own: go round until nothing is left
        // (bounded: each round can only move members in the direction of the first change).
        for _ in 0..=self.routers.len() {
            let moves = self.run_actions_once(handle, &mut changed).await?;
            if moves.is_empty() {
                break;
            }
            let now = Instant::now();
            for (leader, to) in moves {
                apply_group(&mut self.routers, &self.groups, leader, to, now);
            }
        }
        Ok(changed)
    }

    /// One pass over the queued actions; returns the transitions of grouped routers.
    async fn run_actions_once(
        &mut self,
        handle: &Handle,
        changed: &mut bool,
    ) -> Result<Vec<(usize, State)>> {
        let mut moves = Vec::new();
        for (i, r) in self.routers.iter_mut().enumerate() {
            while let Some(a) = r.inst.poll_action() {
                match a {
                    Action::SendAdvert { priority } => r.send_advert(priority),
                    Action::TakeAddresses => {
                        for v in &r.vips {
                            vips::add(handle, v).await?;
                        }
                        r.announce(r.garp.repeat);
                        let now = Instant::now();
                        r.garp_due = if !r.garp.delay.is_zero() {
                            Some((now + r.garp.delay, r.garp.repeat))
                        } else if !r.garp.refresh.is_zero() {
                            Some((now + r.garp.refresh, r.garp.refresh_repeat))
                        } else {
                            None
                        };
                        *changed = true;
                    }
                    Action::ReleaseAddresses => {
                        r.garp_due = None;
                        if self.keep_addresses {
                            continue;
                        }
                        for v in &r.vips {
                            vips::remove(handle, v).await?;
                        }
                        *changed = true;
                    }
                    Action::Transition { from, to, reason } => {
                        tracing::info!(instance = %r.name, from = ?from, to = ?to, reason, "VRRP transition");
                        let script = match to {
                            State::Master => r.notify[0].clone().map(|c| ("notify_master", c)),
                            State::Backup => r.notify[1].clone().map(|c| ("notify_backup", c)),
                            State::Fault => r.notify[2].clone().map(|c| ("notify_fault", c)),
                            State::Initialize => None,
                        };
                        if let Some((what, command)) = script {
                            notify::spawn_script(what, command);
                        }
                        if r.smtp_alert
                            && to != State::Initialize
                            && let Some(m) = &self.mail
                        {
                            let state = format!("{to:?}").to_uppercase();
                            m.send(
                                format!("=> VRRP Instance {} - Entering {state} state <=", r.name),
                                format!(
                                    "=> VRRP Instance {} is now {state} (was {}): {reason} <=",
                                    r.name,
                                    format!("{from:?}").to_uppercase()
                                ),
                            );
                        }
                        if self.groups[i].is_some()
                            && (to == State::Master || from == State::Master)
                        {
                            moves.push((i, to));
                        }
                    }
                }
            }
        }
        Ok(moves)
    }

    /// The VIPs of every instance that is master here.
    pub fn masters(&self) -> HashSet<IpAddr> {
        self.routers
            .iter()
            .filter(|r| r.inst.state() == State::Master)
            .flat_map(|r| r.vips.iter().map(|v| v.address))
            .collect()
    }

    /// Resign: priority-0 adverts, then the addresses released — but only once a backup has
    /// taken over (its first advert), or after a bound. Until then this host keeps answering
    /// for its VIPs and forwarding, so that what clients send before the new master's
    /// gratuitous ARP reaches them is still served rather than lost (in DR both load
    /// balancers forward to the same real servers, so the short overlap is harmless).
    pub async fn shutdown(
        &mut self,
        handle: &Handle,
        events: &mut mpsc::Receiver<Event>,
    ) -> Result<()> {
        let resigning: HashSet<usize> = (0..self.routers.len())
            .filter(|&i| self.routers[i].inst.state() == State::Master)
            .collect();
        // A backup takes over at most one advert interval (its Skew_Time) after our
        // priority-0 advert.
        let bound = resigning
            .iter()
            .map(|&i| self.routers[i].inst.master_interval())
            .max()
            .unwrap_or_default()
            .min(MAX_HANDOVER_WAIT)
            + HANDOVER_MARGIN;
        for r in &mut self.routers {
            r.inst.shutdown();
        }
        self.keep_addresses = true;
        let sent = self.run_actions(handle).await;
        self.keep_addresses = false;
        sent?;
        let mut waiting = resigning.clone();
        let deadline = tokio::time::Instant::now() + bound;
        while !waiting.is_empty() {
            match tokio::time::timeout_at(deadline, events.recv()).await {
                Ok(Some(Event::Advert(i, rx, bytes))) => {
                    if let Some(r) = self.routers.get(i)
                        && rx.src != r.local
                        && Advert::decode(&bytes, rx, V3Ipv4Checksum::default())
                            .is_ok_and(|a| a.vrid == r.inst.vrid() && a.priority > 0)
                    {
                        tracing::info!(instance = %r.name, new_master = %rx.src, "a backup took over");
                        waiting.remove(&i);
                    }
                }
                Ok(Some(Event::Script(..))) => {}
                Ok(None) | Err(_) => break,
            }
        }
        if !waiting.is_empty() {
            tracing::info!(waited = ?bound, "no backup took over; releasing the addresses anyway");
        }
        // Its gratuitous ARPs leave right after its first advert: a moment for them to land.
        tokio::time::sleep(HANDOVER_MARGIN).await;
        for i in resigning {
            for v in &self.routers[i].vips {
                vips::remove(handle, v).await?;
            }
        }
        Ok(())
    }

    pub fn status(&self) -> Vec<RouterStatus> {
        self.routers
            .iter()
            .map(|r| {
                let s = r.inst.stats();
                RouterStatus {
                    name: r.name.clone(),
                    state: format!("{:?}", r.inst.state()).to_lowercase(),
                    master: r.inst.master(),
                    priority: r.inst.priority(),
                    adverts_received: s.adverts_received,
                    adverts_sent: s.adverts_sent,
                    became_master: s.became_master,
                    discards: s
                        .discards
                        .iter()
                        .map(|(d, n)| (d.name().to_string(), *n))
                        .collect(),
                }
            })
            .collect()
    }
}

impl Router {
    fn send_advert(&mut self, priority: u8) {
        for dst in &self.destinations {
            // v3 sums the destination into the checksum: encode per destination. (Over IPv6
            // the kernel computes the checksum again with the source it picks.)
            let bytes =
                self.inst
                    .advert(priority)
                    .encode(self.local, *dst, V3Ipv4Checksum::default());
            if let Err(e) = self.socket.send(&bytes, *dst) {
                tracing::warn!(instance = %self.name, error = %e, "sending a VRRP advert");
            }
        }
    }

    /// `count` gratuitous ARPs (IPv4) or unsolicited NAs (IPv6) for each VIP.
    fn announce(&self, count: usize) {
        if count == 0 {
            return;
        }
        for v in &self.vips {
            let sent = match v.address {
                IpAddr::V4(a) => vips::gratuitous_arp(v.index, self.mac, a, count),
                IpAddr::V6(a) => vips::unsolicited_nas(v.index, self.mac, a, count),
            };
            if let Err(e) = sent {
                tracing::warn!(instance = %self.name, vip = %v.address, error = %format!("{e:#}"), "announcing a VIP");
            }
        }
    }
}
