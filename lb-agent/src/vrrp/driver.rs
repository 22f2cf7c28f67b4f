//! The VRRP driver: one `Router` per configured `vrrp_instance` (by name), the track scripts
//! (by name) and the sync groups. The daemon's loop feeds it events (received adverts,
//! track-script results), link changes and deadlines; the driver carries out the instances'
//! actions, tells which VIPs this host is master for, and hands the transitions to the
//! daemon for notification. A reload is prepared (every socket opened) before anything
//! running changes, then committed.

use std::{
    collections::{HashMap, HashSet},
    net::IpAddr,
    time::{Duration, Instant},
};

use anyhow::{Context, Result};
use rtnetlink::Handle;
use tokio::sync::mpsc;

use super::{
    event::Event,
    instance::{Action, State},
    packet::{Advert, Received, V3Ipv4Checksum},
    router::{self, Router, TrackRef},
    scripts::Scripts,
    status::RouterStatus,
    track::{self, Tracked},
};
use crate::{
    config::{Config, VrrpScript},
    netlink::{self, vips},
};

/// A state change of an instance, for the notifications.
#[derive(Debug, Clone)]
pub struct Transition {
    pub instance: String,
    pub from: State,
    pub to: State,
    pub reason: &'static str,
    pub notify: crate::config::VrrpNotify,
    pub smtp_alert: bool,
}

pub struct Vrrp {
    routers: Vec<Router>,
    /// Removed or restarted instances whose resignation still has to go out.
    retiring: Vec<Router>,
    scripts: Scripts,
    tx: mpsc::Sender<Event>,
    /// Transitions not yet taken by the daemon.
    transitions: Vec<Transition>,
    /// While resigning: addresses stay until a backup has taken over (see `shutdown`).
    keep_addresses: bool,
}

/// A reload, ready to commit: the routers of new and restarted instances are open.
pub struct Prepared {
    instances: Vec<crate::config::VrrpInstance>,
    scripts: Vec<VrrpScript>,
    opened: HashMap<String, Router>,
}

/// The longest a resigning master keeps its addresses waiting for a backup's first advert.
const MAX_HANDOVER_WAIT: Duration = Duration::from_secs(3);
/// Slack for the backup's processing and its gratuitous ARPs.
const HANDOVER_MARGIN: Duration = Duration::from_millis(20);

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
        let mut vrrp = Vrrp {
            routers: Vec::new(),
            retiring: Vec::new(),
            scripts: Scripts::default(),
            tx,
            transitions: Vec::new(),
            keep_addresses: false,
        };
        let prepared = vrrp.prepare(cfg, handle).await?;
        vrrp.commit(prepared, handle, now).await;
        Ok((vrrp, events))
    }

    /// Opens what a new configuration needs (the sockets of new instances, and of those
    /// whose interface, router id, version or peers changed) and checks the devices of every
    /// VIP; changes nothing that runs. Dropping the result closes what it opened.
    pub async fn prepare(&self, cfg: &Config, handle: &Handle) -> Result<Prepared> {
        let mut opened = HashMap::new();
        for vi in &cfg.vrrp_instances {
            let running = self.routers.iter().find(|r| r.name() == vi.name);
            match running {
                Some(r) if r.same_wire(vi) => {
                    router::vips_of(vi).with_context(|| format!("vrrp_instance {}", vi.name))?;
                }
                _ => {
                    let r = Router::open(handle, vi, &self.tx, running.is_none())
                        .await
                        .with_context(|| format!("vrrp_instance {}", vi.name))?;
                    opened.insert(vi.name.clone(), r);
                }
            }
        }
        Ok(Prepared {
            instances: cfg.vrrp_instances.clone(),
            scripts: cfg.vrrp_scripts.clone(),
            opened,
        })
    }

    /// Applies a prepared configuration as keepalived applies a reload: removed and
    /// restarted instances resign (priority 0, addresses released), kept ones take their new
    /// priority, VIPs, tracking, scripts and notifications without a transition, new ones
    /// start. Call `run_actions` next.
    pub async fn commit(&mut self, mut p: Prepared, handle: &Handle, now: Instant) {
        let mut kept = Vec::new();
        for mut r in std::mem::take(&mut self.routers) {
            let next = p.instances.iter().find(|vi| vi.name == r.name());
            match next {
                Some(vi) if !p.opened.contains_key(&vi.name) => {
                    self.reconfigure(&mut r, vi.clone(), handle, now).await;
                    kept.push(r);
                }
                _ => {
                    tracing::info!(instance = %r.name(), restarted = next.is_some(), "VRRP instance removed by the reload: resigning");
                    r.inst.shutdown();
                    self.retiring.push(r);
                }
            }
        }
        for vi in &p.instances {
            if let Some(mut r) = p.opened.remove(&vi.name) {
                r.inst.startup(now);
                kept.push(r);
            }
        }
        // In configuration order, as `status` lists them.
        kept.sort_by_key(|r| p.instances.iter().position(|vi| vi.name == r.name()));
        self.routers = kept;
        let tracked: HashSet<&str> = self
            .routers
            .iter()
            .flat_map(|r| r.cfg.track_scripts.iter().map(|t| t.name.as_str()))
            .collect();
        self.scripts.set(&p.scripts, &tracked, &self.tx);
        self.refresh_links(handle, now).await;
        self.retrack(now);
    }

    /// A kept instance takes its new settings; VIPs added or removed while master are added
    /// (and announced) or removed at once.
    async fn reconfigure(
        &mut self,
        r: &mut Router,
        vi: crate::config::VrrpInstance,
        handle: &Handle,
        now: Instant,
    ) {
        if vi == r.cfg {
            return;
        }
        tracing::info!(instance = %vi.name, "VRRP instance reconfigured by the reload");
        let vips = router::vips_of(&vi).unwrap_or_else(|_| r.vips.clone());
        if r.inst.state() == State::Master {
            let added: Vec<_> = vips
                .iter()
                .filter(|v| !r.vips.contains(v))
                .cloned()
                .collect();
            for v in r.vips.iter().filter(|v| !vips.contains(v)) {
                if let Err(e) = vips::remove(handle, v).await {
                    tracing::warn!(instance = %vi.name, vip = %v.address, error = %format!("{e:#}"), "removing a VIP");
                }
            }
            for v in &added {
                if let Err(e) = vips::add(handle, v).await {
                    tracing::warn!(instance = %vi.name, vip = %v.address, error = %format!("{e:#}"), "adding a VIP");
                }
            }
            r.announce_these(&added, vi.garp.repeat as usize);
        }
        let mut tracks = router::tracks_of(&vi);
        for t in &mut tracks {
            if let TrackRef::Interface { name, up, .. } = t
                && let Some(TrackRef::Interface { up: was, .. }) = r
                    .tracks
                    .iter()
                    .find(|o| matches!(o, TrackRef::Interface { name: n, .. } if n == name))
            {
                *up = *was;
            }
        }
        r.tracks = tracks;
        r.vips = vips;
        r.inst
            .reconfigure(now, router::instance_config(&vi, r.local));
        r.cfg = vi;
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
                r.garp_due = r.next_refresh(now);
            }
        }
    }

    /// An event from a background task.
    pub fn handle_event(&mut self, now: Instant, event: Event) {
        match event {
            Event::Advert(name, rx, bytes) => self.advert_received(now, &name, rx, &bytes),
            Event::Script(name, ok) => {
                if let Some(up) = self.scripts.record(&name, ok) {
                    tracing::info!(script = %name, up, "track script changed");
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
            let instance = r.cfg.name.clone();
            for t in &mut r.tracks {
                if let TrackRef::Interface { name, up, .. } = t {
                    // A lookup that fails (no descriptor, netlink busy) says nothing about
                    // the link: its last state stands.
                    let now_up = match netlink::link_up(handle, name).await {
                        Ok(up) => up,
                        Err(e) => {
                            tracing::warn!(instance, interface = %name, error = %format!("{e:#}"), "reading a tracked interface failed; keeping its last state");
                            continue;
                        }
                    };
                    if now_up != *up {
                        tracing::info!(instance, interface = %name, up = now_up, "tracked interface changed");
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
                r.cfg.priority,
                r.tracks.iter().map(|t| match t {
                    TrackRef::Interface { weight, up, .. } => Tracked {
                        weight: *weight,
                        up: *up,
                    },
                    TrackRef::Script { name, weight } => Tracked {
                        weight: *weight,
                        up: scripts.is_up(name),
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
    fn advert_received(&mut self, now: Instant, name: &str, rx: Received, bytes: &[u8]) {
        let Some(r) = self.routers.iter_mut().find(|r| r.cfg.name == name) else {
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

    /// Carries out pending actions (sync groups and retiring instances included); returns
    /// whether the set of VIPs we are master for changed.
    pub async fn run_actions(&mut self, handle: &Handle) -> Result<bool> {
        let mut changed = false;
        for mut r in std::mem::take(&mut self.retiring) {
            let mut transitions = Vec::new();
            let result =
                run_router_actions(&mut r, handle, false, &mut changed, &mut transitions).await;
            self.transitions.extend(transitions);
            result?;
        }
        // A group's followers queue actions of their own: go round until nothing is left
        // (bounded: each round can only move members in the direction of the first change).
        for _ in 0..=self.routers.len() {
            let mut moves = Vec::new();
            for r in &mut self.routers {
                let mut transitions = Vec::new();
                run_router_actions(
                    r,
                    handle,
                    self.keep_addresses,
                    &mut changed,
                    &mut transitions,
                )
                .await?;
                for t in &transitions {
                    if r.cfg.sync_group.is_some()
                        && (t.to == State::Master || t.from == State::Master)
                    {
                        moves.push((r.cfg.sync_group.clone(), r.cfg.name.clone(), t.to));
                    }
                }
                self.transitions.extend(transitions);
            }
            if moves.is_empty() {
                break;
            }
            let now = Instant::now();
            for (group, leader, to) in moves {
                for r in &mut self.routers {
                    if r.cfg.name != leader && r.cfg.sync_group == group {
                        if to == State::Master {
                            r.inst.follow_master(now);
                        } else {
                            r.inst.follow_backup(now);
                        }
                    }
                }
            }
        }
        Ok(changed)
    }

    /// The transitions since the last call, for the notifications.
    pub fn take_transitions(&mut self) -> Vec<Transition> {
        std::mem::take(&mut self.transitions)
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
                Ok(Some(Event::Advert(name, rx, bytes))) => {
                    let Some(i) = self.routers.iter().position(|r| r.cfg.name == name) else {
                        continue;
                    };
                    if let Some(r) = self.routers.get(i)
                        && rx.src != r.local
                        && Advert::decode(&bytes, rx, V3Ipv4Checksum::default())
                            .is_ok_and(|a| a.vrid == r.inst.vrid() && a.priority > 0)
                    {
                        tracing::info!(instance = %r.cfg.name, new_master = %rx.src, "a backup took over");
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
                    name: r.cfg.name.clone(),
                    state: r.inst.state().into(),
                    master: r.inst.master(),
                    priority: r.inst.priority(),
                    addresses: r.vips.iter().map(|v| v.address).collect(),
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

/// One router's queued actions.
async fn run_router_actions(
    r: &mut Router,
    handle: &Handle,
    keep_addresses: bool,
    changed: &mut bool,
    transitions: &mut Vec<Transition>,
) -> Result<()> {
    while let Some(a) = r.inst.poll_action() {
        match a {
            Action::SendAdvert { priority } => r.send_advert(priority),
            Action::TakeAddresses => {
                for v in &r.vips {
                    vips::add(handle, v).await?;
                }
                r.announce(r.cfg.garp.repeat as usize);
                r.schedule_garp(Instant::now());
                *changed = true;
            }
            Action::Announce { count } => r.announce(count),
            Action::ReleaseAddresses => {
                r.garp_due = None;
                if keep_addresses {
                    continue;
                }
                for v in &r.vips {
                    vips::remove(handle, v).await?;
                }
                *changed = true;
            }
            Action::Transition { from, to, reason } => {
                tracing::info!(instance = %r.cfg.name, from = ?from, to = ?to, reason, "VRRP transition");
                transitions.push(Transition {
                    instance: r.cfg.name.clone(),
                    from,
                    to,
                    reason,
                    notify: r.cfg.notify.clone(),
                    smtp_alert: r.cfg.smtp_alert,
                });
            }
        }
    }
    Ok(())
}
