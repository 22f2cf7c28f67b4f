//! The VRRP driver: one `Instance` per configured `vrrp_instance`, its socket, its timers and
//! its virtual addresses. The daemon's loop feeds it received adverts and deadlines; the
//! driver carries out the instances' actions and tells which VIPs this host is master for.

use std::{
    collections::HashSet,
    net::{IpAddr, Ipv4Addr},
    sync::Arc,
    time::Duration,
};

use anyhow::{Context, Result, bail};
use futures_util::TryStreamExt;
use netlink_packet_route::address::AddressAttribute;
use rtnetlink::Handle;
use tokio::sync::mpsc;

use super::{
    instance::{Action, Instance, InstanceConfig, State},
    packet::{Advert, Auth, MULTICAST_V4, Received, V3Ipv4Checksum, Version},
    socket::VrrpSocket,
};
use crate::{
    config::{Config, InitialState, VrrpInstance},
    netlink::{
        self,
        vips::{self, Vip},
    },
};

/// Gratuitous ARPs sent for each VIP on becoming master.
const GARP_COUNT: usize = 5;

struct Router {
    name: String,
    /// notify_master, notify_backup, notify_fault.
    notify: [Option<String>; 3],
    inst: Instance,
    socket: Arc<VrrpSocket>,
    local: Ipv4Addr,
    /// Multicast group, or the unicast peers.
    destinations: Vec<Ipv4Addr>,
    vips: Vec<Vip>,
    index: u32,
    mac: [u8; 6],
}

/// A received advert: (router index, IP facts, VRRP message).
pub type Incoming = (usize, Received, Vec<u8>);

pub struct Vrrp {
    routers: Vec<Router>,
    /// Per router: its sync group (index into `vrrp_sync_group`), if any.
    groups: Vec<Option<usize>>,
}

/// What `status` shows of one instance.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize, PartialEq)]
pub struct RouterStatus {
    pub name: String,
    pub state: String,
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

/// The interface's first IPv4 address that is not one of `vips`.
async fn primary_v4(handle: &Handle, index: u32, vips: &[Vip]) -> Result<Ipv4Addr> {
    let mut addrs = handle
        .address()
        .get()
        .set_link_index_filter(index)
        .execute();
    while let Some(msg) = addrs.try_next().await? {
        for attr in msg.attributes {
            if let AddressAttribute::Address(IpAddr::V4(a)) = attr
                && !vips.iter().any(|v| v.address == IpAddr::V4(a))
            {
                return Ok(a);
            }
        }
    }
    bail!("the interface has no IPv4 address of its own to send VRRP adverts from")
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
    /// not master of anything yet), and starts the instances.
    /// Also returns the channel of received adverts, for the daemon's loop.
    pub async fn start(
        cfg: &Config,
        handle: &Handle,
        now: std::time::Instant,
    ) -> Result<(Vrrp, mpsc::Receiver<Incoming>)> {
        let (tx, incoming) = mpsc::channel(256);
        let mut routers = Vec::new();
        for (i, vi) in cfg.vrrp_instances.iter().map(|v| v.get_ref()).enumerate() {
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
            if vips.iter().any(|v| v.address.is_ipv6())
                || vi.unicast_peers.iter().any(|p| p.is_ipv6())
            {
                bail!(
                    "vrrp_instance {}: VRRP over IPv6 is not supported yet",
                    vi.name
                );
            }
            for v in &vips {
                if vips::remove(handle, v).await? {
                    tracing::warn!(instance = %vi.name, vip = %v.address, "removed a virtual address left by a previous run");
                }
            }
            let local = match vi.unicast_src {
                Some(IpAddr::V4(a)) => a,
                _ => primary_v4(handle, index, &vips)
                    .await
                    .with_context(|| format!("vrrp_instance {}", vi.name))?,
            };
            let socket = Arc::new(VrrpSocket::open_v4(&vi.interface, index, local)?);
            let destinations = if vi.unicast_peers.is_empty() {
                vec![MULTICAST_V4]
            } else {
                vi.unicast_peers
                    .iter()
                    .filter_map(|p| {
                        if let IpAddr::V4(a) = p {
                            Some(*a)
                        } else {
                            None
                        }
                    })
                    .collect()
            };
            let reader = socket.clone();
            let tx = tx.clone();
            tokio::spawn(async move {
                while let Ok((rx, bytes)) = reader.recv().await {
                    if tx.send((i, rx, bytes)).await.is_err() {
                        return;
                    }
                }
            });
            let mut inst = Instance::new(instance_config(vi, IpAddr::V4(local)));
            inst.startup(now);
            routers.push(Router {
                name: vi.name.clone(),
                notify: [
                    vi.notify_master.clone(),
                    vi.notify_backup.clone(),
                    vi.notify_fault.clone(),
                ],
                inst,
                socket,
                local,
                destinations,
                vips,
                index,
                mac,
            });
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
        Ok((Vrrp { routers, groups }, incoming))
    }

    pub fn is_empty(&self) -> bool {
        self.routers.is_empty()
    }

    pub fn next_deadline(&self) -> Option<std::time::Instant> {
        self.routers
            .iter()
            .filter_map(|r| r.inst.poll_timeout())
            .min()
    }

    pub fn handle_timeout(&mut self, now: std::time::Instant) {
        for r in &mut self.routers {
            r.inst.handle_timeout(now);
        }
    }

    /// A received advert; decoding failures count as discards.
    pub fn advert_received(&mut self, now: std::time::Instant, (i, rx, bytes): Incoming) {
        let Some(r) = self.routers.get_mut(i) else {
            return;
        };
        // Our own multicast adverts do not come back (IP_MULTICAST_LOOP off); unicast ones
        // might, from the kernel's raw delivery: ignore anything from ourselves.
        if rx.src == IpAddr::V4(r.local) {
            return;
        }
        match Advert::decode(&bytes, rx, V3Ipv4Checksum::default()) {
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
            let now = std::time::Instant::now();
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
                    Action::SendAdvert { priority } => {
                        let bytes = r.inst.advert(priority).encode(
                            IpAddr::V4(r.local),
                            IpAddr::V4(MULTICAST_V4),
                            V3Ipv4Checksum::default(),
                        );
                        for dst in &r.destinations {
                            // v3 sums the destination into the checksum: re-encode for unicast.
                            let bytes = if *dst == MULTICAST_V4 {
                                bytes.clone()
                            } else {
                                r.inst.advert(priority).encode(
                                    IpAddr::V4(r.local),
                                    IpAddr::V4(*dst),
                                    V3Ipv4Checksum::default(),
                                )
                            };
                            if let Err(e) = r.socket.send(&bytes, *dst) {
                                tracing::warn!(instance = %r.name, error = %e, "sending a VRRP advert");
                            }
                        }
                    }
                    Action::TakeAddresses => {
                        for v in &r.vips {
                            vips::add(handle, v).await?;
                            if let IpAddr::V4(a) = v.address
                                && let Err(e) = vips::gratuitous_arp(r.index, r.mac, a, GARP_COUNT)
                            {
                                tracing::warn!(instance = %r.name, error = %e, "gratuitous ARP");
                            }
                        }
                        *changed = true;
                    }
                    Action::ReleaseAddresses => {
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
                            crate::notify::spawn_script(what, command);
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

    /// Resign: priority-0 adverts, addresses released.
    pub async fn shutdown(&mut self, handle: &Handle) -> Result<()> {
        for r in &mut self.routers {
            r.inst.shutdown();
        }
        self.run_actions(handle).await?;
        // Give the resignation adverts a moment on the wire before the sockets close.
        tokio::time::sleep(Duration::from_millis(20)).await;
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
