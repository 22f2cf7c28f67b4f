//! One configured `vrrp_instance` at run time: its sans-IO `Instance`, its socket and reader
//! task, its virtual addresses, what it tracks and its gratuitous-ARP schedule.

use std::{
    net::IpAddr,
    sync::Arc,
    time::{Duration, Instant},
};

use anyhow::{Result, bail};
use futures_util::TryStreamExt;
use netlink_packet_route::address::AddressAttribute;
use rtnetlink::Handle;
use tokio::sync::mpsc;

use super::{
    event::Event,
    instance::{Instance, InstanceConfig, LowerPrio},
    packet::{Auth, MULTICAST_V4, MULTICAST_V6, V3Ipv4Checksum, Version},
    socket::VrrpSocket,
};
use crate::{
    config::{InitialState, VrrpInstance, VrrpVersion},
    netlink::{
        self,
        vips::{self, Vip},
    },
};

/// What moves an instance's priority, or faults it.
pub enum TrackRef {
    /// An interface and its last known state (the instance's own interface is one, weight 0).
    Interface { name: String, weight: i32, up: bool },
    /// A `vrrp_script`, by name.
    Script { name: String, weight: i32 },
}

pub struct Router {
    /// The configuration it runs (a reload compares against it).
    pub cfg: VrrpInstance,
    pub inst: Instance,
    pub tracks: Vec<TrackRef>,
    pub socket: Arc<VrrpSocket>,
    /// The reader task: ended with the router (a removed or restarted instance).
    reader: tokio::task::JoinHandle<()>,
    pub local: IpAddr,
    /// Multicast group, or the unicast peers.
    pub destinations: Vec<IpAddr>,
    pub vips: Vec<Vip>,
    pub mac: [u8; 6],
    /// The next gratuitous ARP burst while master: when, and how many per VIP.
    pub garp_due: Option<(Instant, usize)>,
}

impl Drop for Router {
    fn drop(&mut self) {
        self.reader.abort();
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

pub fn instance_config(vi: &VrrpInstance, primary: IpAddr) -> InstanceConfig {
    InstanceConfig {
        vrid: vi.virtual_router_id,
        version: match vi.version {
            VrrpVersion::V2 => Version::V2,
            VrrpVersion::V3 => Version::V3,
        },
        priority: vi.priority,
        interval: vi.advert_interval,
        preempt: vi.preempt,
        preempt_delay: vi.preempt_delay,
        start_as_master: vi.initial == InitialState::Master,
        primary,
        addresses: vi.virtual_addresses.iter().map(|v| v.address).collect(),
        auth: match &vi.auth_pass {
            Some(p) => Auth::pass(p),
            None => Auth::None,
        },
        lower_prio: LowerPrio {
            garp_repeat: vi.garp.lower_prio_repeat as usize,
            garp_delay: vi.garp.lower_prio_delay,
            no_advert: vi.garp.lower_prio_no_advert,
        },
        higher_prio_send_advert: vi.garp.higher_prio_send_advert,
        accept_sources: vi.accept_sources.clone(),
    }
}

/// The VIPs of `vi`, with their devices' indexes.
pub fn vips_of(vi: &VrrpInstance) -> Result<Vec<Vip>> {
    vi.virtual_addresses
        .iter()
        .map(|va| {
            let device = va.device.as_deref().unwrap_or(&vi.interface);
            Ok(Vip {
                address: va.address,
                prefix: va
                    .prefix
                    .unwrap_or(if va.address.is_ipv4() { 32 } else { 128 }),
                index: netlink::if_index(device)?,
                label: va.label.clone(),
            })
        })
        .collect()
}

/// The tracks of `vi`: its own interface (weight 0), its tracked interfaces and scripts.
pub fn tracks_of(vi: &VrrpInstance) -> Vec<TrackRef> {
    std::iter::once(TrackRef::Interface {
        name: vi.interface.clone(),
        weight: 0,
        up: true,
    })
    .chain(vi.track_interfaces.iter().map(|t| TrackRef::Interface {
        name: t.name.clone(),
        weight: t.weight,
        up: true,
    }))
    .chain(vi.track_scripts.iter().map(|t| TrackRef::Script {
        name: t.name.clone(),
        weight: t.weight,
    }))
    .collect()
}

impl Router {
    /// Opens the instance's socket and starts its reader; the instance itself starts with
    /// `startup`. With `clear_leftovers`, removes virtual addresses a previous run left (we
    /// are not master of it yet); not for an instance restarted by a reload, whose running
    /// predecessor still holds them until it resigns.
    pub async fn open(
        handle: &Handle,
        vi: &VrrpInstance,
        tx: &mpsc::Sender<Event>,
        clear_leftovers: bool,
    ) -> Result<Router> {
        let index = netlink::if_index(&vi.interface)?;
        let mac = netlink::iface_mac(handle, &vi.interface).await?;
        let vips = vips_of(vi)?;
        let v6 = vips.first().is_some_and(|v| v.address.is_ipv6());
        for v in vips.iter().filter(|_| clear_leftovers) {
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
        let (reader_socket, tx, name) = (socket.clone(), tx.clone(), vi.name.clone());
        let reader = tokio::spawn(async move {
            while let Ok((rx, bytes)) = reader_socket.recv().await {
                if tx
                    .send(Event::Advert(name.clone(), rx, bytes))
                    .await
                    .is_err()
                {
                    return;
                }
            }
        });
        Ok(Router {
            inst: Instance::new(instance_config(vi, local)),
            tracks: tracks_of(vi),
            cfg: vi.clone(),
            socket,
            reader,
            local,
            destinations,
            vips,
            mac,
            garp_due: None,
        })
    }

    pub fn name(&self) -> &str {
        &self.cfg.name
    }

    /// Whether `vi` can run on this router's socket: same interface, router id, version and
    /// peers. Anything else restarts the instance (keepalived does the same).
    pub fn same_wire(&self, vi: &VrrpInstance) -> bool {
        let a = &self.cfg;
        (
            &a.interface,
            a.virtual_router_id,
            a.version,
            a.unicast_src,
            &a.unicast_peers,
        ) == (
            &vi.interface,
            vi.virtual_router_id,
            vi.version,
            vi.unicast_src,
            &vi.unicast_peers,
        )
    }

    pub fn send_advert(&mut self, priority: u8) {
        for dst in &self.destinations {
            // v3 sums the destination into the checksum: encode per destination. (Over IPv6
            // the kernel computes the checksum again with the source it picks.)
            let bytes =
                self.inst
                    .advert(priority)
                    .encode(self.local, *dst, V3Ipv4Checksum::default());
            if let Err(e) = self.socket.send(&bytes, *dst) {
                tracing::warn!(instance = %self.name(), error = %e, "sending a VRRP advert");
            }
        }
    }

    /// `count` gratuitous ARPs (IPv4) or unsolicited NAs (IPv6) for each of `vips`.
    pub fn announce_these(&self, vips: &[Vip], count: usize) {
        if count == 0 {
            return;
        }
        for v in vips {
            let sent = match v.address {
                IpAddr::V4(a) => vips::gratuitous_arp(v.index, self.mac, a, count),
                IpAddr::V6(a) => vips::unsolicited_nas(v.index, self.mac, a, count),
            };
            if let Err(e) = sent {
                tracing::warn!(instance = %self.name(), vip = %v.address, error = %format!("{e:#}"), "announcing a VIP");
            }
        }
    }

    pub fn announce(&self, count: usize) {
        self.announce_these(&self.vips, count);
    }

    /// The first gratuitous-ARP burst after becoming master is sent; when the next is due.
    pub fn schedule_garp(&mut self, now: Instant) {
        let g = &self.cfg.garp;
        self.garp_due = if !g.delay.is_zero() {
            Some((now + g.delay, g.repeat as usize))
        } else if !g.refresh.is_zero() {
            Some((now + g.refresh, g.refresh_repeat as usize))
        } else {
            None
        };
    }

    /// The periodic refresh after a burst.
    pub fn next_refresh(&self, now: Instant) -> Option<(Instant, usize)> {
        let g = &self.cfg.garp;
        (!g.refresh.is_zero()).then(|| (now + g.refresh, g.refresh_repeat as usize))
    }

    pub fn master_interval(&self) -> Duration {
        self.inst.master_interval()
    }
}
