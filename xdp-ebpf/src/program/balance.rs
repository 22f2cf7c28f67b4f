//! The decision for one frame: forward (`XDP_TX`) to a real server, or pass with a reason.

use aya_ebpf::programs::XdpContext;
use xdp_ebpf::maps::{Config, FlowKey, Frag, FragKey, MAX_MACS, PassReason, REAL_LOCAL, Service};

use crate::{
    maps::{LB_CONFIG, LB_FRAGS, LB_LEASE, LB_PEERS},
    parse::{self, IPPROTO_ICMP, IPPROTO_ICMPV6, IPPROTO_TCP, IPPROTO_UDP, IPPROTO_VRRP, Ip},
    rewrite,
    select::{self, Choice},
    stats,
};

pub enum Verdict {
    Tx,
    Pass(PassReason),
    /// The service's writes wait (`SERVICE_HOLD`).
    Drop,
}

impl From<PassReason> for Verdict {
    fn from(r: PassReason) -> Self {
        Verdict::Pass(r)
    }
}

#[inline(always)]
pub fn balance(ctx: &XdpContext) -> Verdict {
    match try_balance(ctx) {
        Ok(v) => v,
        Err(reason) => Verdict::Pass(reason),
    }
}

#[inline(always)]
fn try_balance(ctx: &XdpContext) -> Result<Verdict, PassReason> {
    // Without configuration the program is inert: everything passes.
    let cfg = LB_CONFIG.get(0).ok_or(PassReason::NotOurMac)?;
    let eth = parse::ethernet(ctx)?;
    let ours = mac_in(eth.dst, &cfg.local_macs, cfg.n_local_macs);
    let multicast = eth.dst & 1 != 0;
    // Only frames for us, and multicast that may be a VRRP advert, are worth parsing.
    if !ours && !multicast {
        return Err(PassReason::NotOurMac);
    }
    let ip = parse::ip(ctx, eth.ethertype, eth.l3_off)?;
    if ip.proto == IPPROTO_VRRP {
        learn_peer(ctx, cfg, &ip, eth.src);
        return Err(PassReason::Unsupported);
    }
    if !ours {
        return Err(PassReason::NotOurMac);
    }
    let bytes = (ctx.data_end() - ctx.data()) as u64;

    match ip.proto {
        IPPROTO_TCP | IPPROTO_UDP if ip.frag.is_fragment && !ip.frag.is_first => {
            later_fragment(ctx, cfg, &ip, eth.src, bytes)
        }
        IPPROTO_TCP | IPPROTO_UDP => {
            let filter = select::vip_filter(&ip.dst)?;
            let l4 = parse::ports(ctx, ip.proto, ip.l4_off)?;
            let flow = FlowKey {
                src: ip.src,
                dst: ip.dst,
                sport: l4.sport,
                dport: l4.dport,
                proto: ip.proto,
                family: ip.family,
                _pad: [0; 2],
            };
            let (svc, choice) = route(cfg, filter, &flow, eth.src, Some(l4.tcp_flags))?;
            if ip.frag.is_fragment {
                // The first fragment: the others (no ports) follow it through LB_FRAGS.
                let key = frag_key(&ip);
                let _ = LB_FRAGS.insert(
                    key,
                    Frag {
                        service: svc.id,
                        real: choice.real_id,
                    },
                    0,
                );
                stats::service(svc.id, |s| s.fragments += 1);
            }
            forward(ctx, cfg, &svc, choice, bytes)
        }
        IPPROTO_ICMP | IPPROTO_ICMPV6 => too_big(ctx, cfg, &ip, eth.src, bytes),
        _ => Err(PassReason::Unsupported),
    }
}

/// The service and real server of a client flow: the connection table first (an established
/// flow costs one hash lookup), then the service and Maglev. `tcp_flags` is the frame's
/// (0 for UDP): a TCP SYN always takes a fresh decision, replacing whatever entry its
/// 5-tuple had (a client port reused after a failback must not follow the old choice).
/// `None`: an ICMP error about a flow, which must not create, refresh or end entries.
#[inline(always)]
fn route(
    cfg: &Config,
    filter: u32,
    flow: &FlowKey,
    src_mac: u64,
    tcp_flags: Option<u8>,
) -> Result<(Service, Choice), PassReason> {
    let now = select::now_ticks();
    let syn = flow.proto == IPPROTO_TCP
        && matches!(tcp_flags, Some(f) if f & (parse::TCP_SYN | parse::TCP_ACK) == parse::TCP_SYN);
    if !syn && let Some((svc, real_id, real)) = select::established(cfg, flow, now, tcp_flags) {
        admit(cfg, &svc, src_mac)?;
        return Ok((
            svc,
            Choice {
                real_id,
                real,
                new_flow: false,
            },
        ));
    }
    let svc = select::service(filter, flow.family, &flow.dst, flow.dport, flow.proto)?;
    admit(cfg, &svc, src_mac)?;
    let choice = select::choose(&svc, flow, tcp_flags.is_some(), now)
        .inspect_err(|_| stats::service(svc.id, |s| s.no_real += 1))?;
    Ok((svc, choice))
}

/// Whether this host forwards for `svc` a frame from `src_mac`.
#[inline(always)]
fn admit(cfg: &Config, svc: &Service, src_mac: u64) -> Result<(), PassReason> {
    if svc.flags & xdp_ebpf::maps::SERVICE_ACTIVE == 0 {
        stats::service(svc.id, |s| s.passed_inactive += 1);
        return Err(PassReason::Inactive);
    }
    // A peer load balancer already chose us as the real server: never forward twice, even
    // if both of us believe we are master (split brain must not become a loop).
    if from_peer(cfg, src_mac) {
        stats::service(svc.id, |s| s.passed_peer += 1);
        return Err(PassReason::FromPeer);
    }
    Ok(())
}

/// Rewrites and transmits, or passes when the chosen real server is this host.
#[inline(always)]
fn forward(
    ctx: &XdpContext,
    cfg: &Config,
    svc: &Service,
    choice: Choice,
    bytes: u64,
) -> Result<Verdict, PassReason> {
    if svc.flags & xdp_ebpf::maps::SERVICE_HOLD != 0
        || (svc.flags & xdp_ebpf::maps::SERVICE_LEASED != 0 && lease_expired())
    {
        stats::service(svc.id, |s| s.held += 1);
        return Ok(Verdict::Drop);
    }
    stats::service(svc.id, |s| {
        s.packets += 1;
        s.bytes += bytes;
        s.new_flows += choice.new_flow as u64;
    });
    stats::real(choice.real_id, bytes, choice.new_flow);
    if choice.real.flags & REAL_LOCAL != 0 {
        stats::service(svc.id, |s| s.passed_local += 1);
        return Err(PassReason::LocalReal);
    }
    if !rewrite::set_macs(ctx, choice.real.mac.as_u64(), cfg.iface_mac.as_u64()) {
        return Err(PassReason::Malformed);
    }
    Ok(Verdict::Tx)
}

/// The agent has not renewed its lease in time (see `SERVICE_LEASED`): one call of the coarse
/// clock helper (`CLOCK_MONOTONIC_COARSE`, behind the agent's `CLOCK_MONOTONIC` by a tick at
/// most: nothing for a lease of seconds; a quarter of `bpf_ktime_get_ns`'s cost), only for
/// the services that follow the shared writer decision.
#[inline(always)]
fn lease_expired() -> bool {
    let until = LB_LEASE.get(0).copied().unwrap_or(0);
    // SAFETY: a helper without arguments.
    let now = unsafe { aya_ebpf::helpers::bpf_ktime_get_coarse_ns() };
    now >= until
}

#[inline(always)]
fn frag_key(ip: &Ip) -> FragKey {
    FragKey {
        src: ip.src,
        dst: ip.dst,
        id: ip.frag.id,
        proto: ip.proto as u32,
    }
}

/// A fragment after the first: no ports, so it follows the first fragment's choice.
#[inline(always)]
fn later_fragment(
    ctx: &XdpContext,
    cfg: &Config,
    ip: &Ip,
    src_mac: u64,
    bytes: u64,
) -> Result<Verdict, PassReason> {
    // SAFETY: copied out at once.
    let frag = unsafe { LB_FRAGS.get(frag_key(ip)) }
        .copied()
        .ok_or(PassReason::FragUnknown)?;
    let svc = select::service_info(frag.service)?;
    admit(cfg, &svc, src_mac)?;
    let real = select::usable_real(frag.real).ok_or(PassReason::NoReal)?;
    stats::service(svc.id, |s| s.fragments += 1);
    forward(
        ctx,
        cfg,
        &svc,
        Choice {
            real_id: frag.real,
            real,
            new_flow: false,
        },
        bytes,
    )
}

/// ICMP "fragmentation needed" (type 3 code 4) and ICMPv6 "packet too big" (type 2) about a
/// service flow go to the real server that owns the flow, so that path MTU discovery works
/// through the VIP. The error quotes the real server's reply (VIP:port → client:port).
#[inline(always)]
fn too_big(
    ctx: &XdpContext,
    cfg: &Config,
    ip: &Ip,
    src_mac: u64,
    bytes: u64,
) -> Result<Verdict, PassReason> {
    if ip.frag.is_fragment {
        return Err(PassReason::Unsupported);
    }
    let [ty, code] =
        parse::load_at_variable::<[u8; 2]>(ctx, ip.l4_off).ok_or(PassReason::Malformed)?;
    let inner_off = ip.l4_off + 8;
    let inner = match (ip.proto, ty, code) {
        (IPPROTO_ICMP, 3, 4) => parse::ipv4_quoted(ctx, inner_off)?,
        (IPPROTO_ICMPV6, 2, 0) => parse::ipv6_quoted(ctx, inner_off)?,
        _ => return Err(PassReason::Unsupported),
    };
    if inner.proto != IPPROTO_TCP && inner.proto != IPPROTO_UDP {
        return Err(PassReason::Unsupported);
    }
    let filter = select::vip_filter(&inner.src)?;
    // The client's direction of the flow, as the connection table holds it.
    let flow = FlowKey {
        src: inner.dst,
        dst: inner.src,
        sport: inner.dport,
        dport: inner.sport,
        proto: inner.proto,
        family: ip.family,
        _pad: [0; 2],
    };
    let (svc, choice) = route(cfg, filter, &flow, src_mac, None)?;
    stats::service(svc.id, |s| s.icmp_too_big += 1);
    forward(
        ctx,
        cfg,
        &svc,
        Choice {
            new_flow: false,
            ..choice
        },
        bytes,
    )
}

/// Records the source MAC of a VRRP advert for one of our router ids as a peer load balancer.
#[inline(always)]
fn learn_peer(ctx: &XdpContext, cfg: &Config, ip: &Ip, src_mac: u64) {
    // RFC 3768 / 5798: adverts are sent with TTL / hop limit 255; anything else is forged or
    // routed and teaches nothing.
    if ip.ttl != 255 {
        return;
    }
    let Some([_, vrid]) = parse::load_at_variable::<[u8; 2]>(ctx, ip.l4_off) else {
        return;
    };
    if !cfg.has_vrid(vrid) || mac_in(src_mac, &cfg.local_macs, cfg.n_local_macs) {
        return;
    }
    let Some(peers) = LB_PEERS.get_ptr_mut(0) else {
        return;
    };
    // SAFETY: a valid map value; slots are written whole as one aligned u64.
    let peers = unsafe { &mut *peers };
    if mac_in(src_mac, &peers.macs, MAX_MACS as u32) {
        return;
    }
    let slot = (src_mac ^ (src_mac >> 24)) as usize % MAX_MACS;
    let p = &mut peers.macs[slot] as *mut _ as *mut u64;
    unsafe { core::ptr::write_volatile(p, src_mac) };
}

#[inline(always)]
fn from_peer(cfg: &Config, src_mac: u64) -> bool {
    if mac_in(src_mac, &cfg.peer_macs, cfg.n_peer_macs) {
        return true;
    }
    match LB_PEERS.get(0) {
        Some(peers) => mac_in(src_mac, &peers.macs, MAX_MACS as u32),
        None => false,
    }
}

/// Whether `mac` is one of the first `n` entries of `list`.
#[inline(always)]
fn mac_in(mac: u64, list: &[xdp_ebpf::maps::MacAddr; MAX_MACS], n: u32) -> bool {
    let mut i = 0;
    while i < MAX_MACS {
        if i as u32 >= n {
            return false;
        }
        if list[i].as_u64() == mac {
            return true;
        }
        i += 1;
    }
    false
}
