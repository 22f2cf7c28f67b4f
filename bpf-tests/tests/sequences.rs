//! Multi-frame behaviour of the XDP program in the kernel: stickiness across pool changes,
//! persistence, weights, fragments, ICMP errors after a pool change, learned peers, counters.

use std::{
    collections::HashMap,
    net::{IpAddr, Ipv4Addr},
};

use bpf_tests::{
    builder::*,
    fixtures::{flow, frames::*},
    provision::*,
};
use xdp_ebpf::{flow_hash, maps::PassReason};

fn client(i: u32) -> Ipv4Addr {
    Ipv4Addr::from(u32::from(Ipv4Addr::new(198, 18, 0, 0)) + i)
}

/// Sends a SYN of flow `i` to `vip:3306` (a new connection: always a fresh decision) and
/// returns the real id it went to.
fn send(h: &Harness, vip: Ipv4Addr, i: u32) -> u32 {
    send_flags(h, vip, i, TCP_SYN)
}

/// Sends an ACK of flow `i` (its connection goes on) and returns the real id it went to.
fn ack(h: &Harness, vip: Ipv4Addr, i: u32) -> u32 {
    send_flags(h, vip, i, TCP_ACK)
}

fn send_flags(h: &Harness, vip: Ipv4Addr, i: u32, flags: u8) -> u32 {
    let ip = bpf_tests::builder::V4::new(client(i), vip, 6);
    let frame = tcp4_with(ip, 10_000 + (i % 50_000) as u16, 3306, flags).bytes();
    let (action, out) = h.run(&frame);
    assert_eq!(action, XDP_TX, "flow {i} not forwarded");
    h.real_of_mac(&out).expect("forwarded to a known real")
}

#[test]
fn established_flows_stay_when_a_server_is_added_drained_or_removed() {
    let mut h = Harness::new();
    h.set_pool("tcp", &[("10.0.1.1", 1), ("10.0.1.2", 1), ("10.0.1.3", 1)]);
    let before: Vec<u32> = (0..600).map(|i| send(&h, VIP_TCP, i)).collect();
    let r3 = h.real_id("10.0.1.3");
    assert!(before.contains(&r3), "the third server got no flows");

    // Drain 10.0.1.3 (weight 0): its established flows stay on it (IPVS keeps connections to
    // a quiesced server), nobody else moves, and new connections no longer reach it.
    h.set_pool("tcp", &[("10.0.1.1", 1), ("10.0.1.2", 1), ("10.0.1.3", 0)]);
    let after_drain: Vec<u32> = (0..600).map(|i| ack(&h, VIP_TCP, i)).collect();
    assert_eq!(before, after_drain, "established flows moved after a drain");
    for i in 1000..1300 {
        assert_ne!(
            send(&h, VIP_TCP, i),
            r3,
            "a new connection reached the drained server"
        );
    }

    // Add it back with weight 2: established flows stay, new connections reach it.
    h.set_pool("tcp", &[("10.0.1.1", 1), ("10.0.1.2", 1), ("10.0.1.3", 2)]);
    let after_add: Vec<u32> = (0..600).map(|i| ack(&h, VIP_TCP, i)).collect();
    assert_eq!(
        before, after_add,
        "established flows moved after an addition"
    );
    let new: Vec<u32> = (2000..2400).map(|i| send(&h, VIP_TCP, i)).collect();
    assert!(
        new.iter().filter(|&&r| r == r3).count() > 100,
        "new connections do not reach the added server"
    );

    // Remove it: it is no longer a target of the service, so its flows take a new decision
    // (a connection entry never keeps a flow on a server that left the pool); the others
    // stay where they are.
    h.set_pool("tcp", &[("10.0.1.1", 1), ("10.0.1.2", 1)]);
    for (i, &was) in before.iter().enumerate() {
        let now = ack(&h, VIP_TCP, i as u32);
        if was == r3 {
            assert_ne!(now, r3, "flow {i} stayed on the removed server");
        } else {
            assert_eq!(now, was, "flow {i} moved although its server stayed");
        }
    }
}

#[test]
fn a_syn_takes_a_fresh_decision_whatever_its_port_did_before() {
    let mut h = Harness::new();
    h.set_pool("tcp", &[("10.0.1.1", 1)]);
    let (r1, r2) = (h.real_id("10.0.1.1"), h.real_id("10.0.1.2"));
    for i in 0..100 {
        assert_eq!(send(&h, VIP_TCP, i), r1);
    }
    // 10.0.1.1 is drained (still a target: its connections go on) and 10.0.1.2 takes the new
    // ones — a failback, say. A client that reuses a port opens a new connection: its SYN
    // goes where the pool says, not where the old entry of its 5-tuple pointed.
    h.set_pool("tcp", &[("10.0.1.1", 0), ("10.0.1.2", 1)]);
    for i in 0..100 {
        assert_eq!(ack(&h, VIP_TCP, i), r1, "an established flow moved");
    }
    for i in 0..100 {
        assert_eq!(send(&h, VIP_TCP, i), r2, "a SYN followed a stale entry");
        // And the new entry replaced the old one.
        assert_eq!(ack(&h, VIP_TCP, i), r2);
    }
}

/// The provisioning with short connection timeouts: `timeouts` is the TOML of
/// `[dataplane.timeouts]`.
fn with_timeouts(timeouts: &str) -> Harness {
    Harness::with(&format!("{PROVISION}\n[dataplane.timeouts]\n{timeouts}\n"))
}

/// Entries age out by state, as IPVS times them: an idle TCP connection after `tcp`, one
/// the client closed (FIN) after `tcp_fin`, one it reset after `tcp_close`, UDP after `udp`.
/// A flow whose entry expired takes a new decision. Time is the agent's clock, injected:
/// ticks of 1.07 s, so a timeout of "1s" is one tick, and an entry idle for two is gone.
#[test]
fn entries_age_out_by_state() {
    let mut h = with_timeouts("tcp = \"1h\"\ntcp_fin = \"1s\"\ntcp_close = \"1s\"\nudp = \"1s\"");
    h.set_clock(1000);
    h.set_pool("tcp", &[("10.0.1.1", 1)]);
    h.set_pool("udp", &[("10.0.1.1", 1)]);
    let (r1, r2) = (h.real_id("10.0.1.1"), h.real_id("10.0.1.2"));
    let flags = |h: &Harness, i: u32, f: u8| send_flags(h, VIP_TCP, i, f);
    let udp = |h: &Harness, i: u32| {
        let frame = udp4(client(i), VIP_TCP, 20_000 + i as u16, 53).bytes();
        let (action, out) = h.run(&frame);
        assert_eq!(action, XDP_TX);
        h.real_of_mac(&out).unwrap()
    };
    // Flow 0 stays open; flow 1 is closed by the client, flow 2 reset; flow 3 is UDP.
    for i in 0..3 {
        assert_eq!(flags(&h, i, TCP_SYN), r1);
    }
    assert_eq!(flags(&h, 1, TCP_ACK | 0x01), r1);
    assert_eq!(flags(&h, 2, 0x04), r1);
    assert_eq!(udp(&h, 3), r1);
    // 10.0.1.1 drained: every entry is still valid, so every flow stays.
    h.set_pool("tcp", &[("10.0.1.1", 0), ("10.0.1.2", 1)]);
    h.set_pool("udp", &[("10.0.1.1", 0), ("10.0.1.2", 1)]);
    assert_eq!(
        (flags(&h, 0, TCP_ACK), flags(&h, 1, TCP_ACK), udp(&h, 3)),
        (r1, r1, r1)
    );
    // One tick later nothing has expired (idle for one tick = the timeout), and every frame
    // refreshes its entry...
    h.set_clock(1001);
    assert_eq!(
        (flags(&h, 1, TCP_ACK), flags(&h, 2, TCP_ACK), udp(&h, 3)),
        (r1, r1, r1)
    );
    // ...two ticks on, the short timeouts have passed; the open connection has an hour.
    h.set_clock(1003);
    assert_eq!(
        flags(&h, 0, TCP_ACK),
        r1,
        "an open connection aged out within its 1 h"
    );
    assert_eq!(
        flags(&h, 1, TCP_ACK),
        r2,
        "a closed connection outlived tcp_fin"
    );
    assert_eq!(
        flags(&h, 2, TCP_ACK),
        r2,
        "a reset connection outlived tcp_close"
    );
    assert_eq!(udp(&h, 3), r2, "a UDP flow outlived udp");
}

#[test]
fn a_flow_on_an_unusable_server_is_rebalanced() {
    let mut h = Harness::new();
    let first = send(&h, VIP_TCP, 7);
    // The server's MAC becomes unresolved (left out, flags cleared): the flow must move.
    let mut real = h.state.reals[&first].1;
    real.flags = 0;
    h.dp.maps().set_real(first, &real).unwrap();
    let other = if h.state.reals[&first].0.to_string() == "10.0.1.1" {
        "10.0.1.2"
    } else {
        "10.0.1.1"
    };
    h.set_pool("tcp", &[(other, 1)]);
    assert_eq!(send(&h, VIP_TCP, 7), h.real_id(other));
}

#[test]
fn persistence_keeps_a_client_on_one_server() {
    let mut h = Harness::new();
    let mut per_client: HashMap<u32, u32> = HashMap::new();
    for c in 0..40u32 {
        for port in 0..10u16 {
            let frame = tcp4(client(c), VIP_PERSIST, 20_000 + port, 3306).bytes();
            let (action, out) = h.run(&frame);
            assert_eq!(action, XDP_TX);
            let real = h.real_of_mac(&out).unwrap();
            let first = *per_client.entry(c).or_insert(real);
            assert_eq!(first, real, "client {c} port {port} left its server");
        }
    }
    let spread: std::collections::HashSet<u32> = per_client.values().copied().collect();
    assert_eq!(
        spread.len(),
        2,
        "persistent clients all landed on one server"
    );
    // The choice is Maglev's on the client address, so a second LB agrees.
    for (c, real) in &per_client {
        let hash = xdp_ebpf::hash::client_hash(&bpf_tests::fixtures::words(IpAddr::V4(client(*c))));
        assert_eq!(h.predicted("persistent", hash), *real);
    }
    // A server that leaves the pool loses its persistent clients at their next connection
    // (persistence follows the target set, as connection entries do); the others keep theirs.
    let (r1, r2) = (h.real_id("10.0.1.1"), h.real_id("10.0.1.2"));
    h.set_pool("persistent", &[("10.0.1.2", 1)]);
    for (c, was) in &per_client {
        let frame = tcp4(client(*c), VIP_PERSIST, 30_000, 3306).bytes();
        let (_, out) = h.run(&frame);
        let now = h.real_of_mac(&out).unwrap();
        assert_eq!(
            now, r2,
            "client {c} kept its removed server {was} (r1 = {r1})"
        );
    }
}

#[test]
fn weights_hold_over_ten_thousand_flows() {
    let h = Harness::new();
    let mut counts: HashMap<u32, u32> = HashMap::new();
    let n = 10_000u32;
    for i in 0..n {
        *counts.entry(send(&h, VIP_WEIGHTED, i)).or_default() += 1;
    }
    for (addr, weight) in [("10.0.1.1", 1.0), ("10.0.1.2", 2.0), ("10.0.1.3", 3.0)] {
        let share = counts.get(&h.real_id(addr)).copied().unwrap_or(0) as f64 / n as f64;
        let want = weight / 6.0;
        println!("{addr}: weight {weight}, share {share:.4}, want {want:.4}");
        assert!(
            (share - want).abs() <= 0.02,
            "{addr}: share {share:.4}, want {want:.4} ± 0.02"
        );
    }
}

#[test]
fn fragments_follow_the_first() {
    let h = Harness::new();
    for id in 0..50u16 {
        let (first, second) =
            udp4_fragments(client(id as u32), VIP_TCP, 7000 + id, 53, 0x1000 + id);
        let (a1, o1) = h.run(&first.bytes());
        let (a2, o2) = h.run(&second.bytes());
        assert_eq!((a1, a2), (XDP_TX, XDP_TX), "fragment {id}");
        assert_eq!(
            o1[..6],
            o2[..6],
            "fragments of datagram {id} went to different servers"
        );
    }
    for id in 0..20u32 {
        let (first, second) = udp6_fragments(CLIENT6, VIP6, 7000 + id as u16, 53, 0x2000 + id);
        let (a1, o1) = h.run(&first.bytes());
        let (a2, o2) = h.run(&second.bytes());
        assert_eq!((a1, a2), (XDP_TX, XDP_TX), "v6 fragment {id}");
        assert_eq!(
            o1[..6],
            o2[..6],
            "v6 fragments of datagram {id} went to different servers"
        );
    }
}

#[test]
fn icmp_too_big_follows_the_connection_after_a_pool_change() {
    let mut h = Harness::new();
    // Find flows whose owner changes when the pool grows, then check the ICMP error still
    // reaches the owner (from the connection table), not the new Maglev choice.
    let owners: Vec<(u32, u32)> = (0..200).map(|i| (i, send(&h, VIP_TCP, i))).collect();
    h.set_pool("tcp", &[("10.0.1.1", 1), ("10.0.1.2", 1), ("10.0.1.3", 5)]);
    let mut checked = 0;
    for (i, owner) in owners {
        let key = flow(
            IpAddr::V4(client(i)),
            IpAddr::V4(VIP_TCP),
            10_000 + i as u16,
            3306,
            6,
        );
        if h.predicted("tcp", flow_hash(&key)) == owner {
            continue;
        }
        let err = icmp4_frag_needed(
            Ipv4Addr::new(192, 0, 2, 254),
            VIP_TCP,
            3306,
            client(i),
            10_000 + i as u16,
        );
        let (action, out) = h.run(&err.bytes());
        assert_eq!(action, XDP_TX);
        assert_eq!(
            h.real_of_mac(&out),
            Some(owner),
            "ICMP error for flow {i} missed its owner"
        );
        checked += 1;
    }
    assert!(
        checked > 20,
        "too few flows changed owner to test ({checked})"
    );
}

#[test]
fn a_learned_peer_is_never_forwarded_again() {
    let mut h = Harness::new();
    let peer = [0x02, 0, 0, 0, 0, 0x2f];
    let from_peer = Frame {
        src: peer,
        ..tcp4(CLIENT4, VIP_TCP, 40000, 3306)
    }
    .bytes();
    assert_eq!(h.run(&from_peer).0, XDP_TX, "an unknown MAC is a client");

    // A VRRP advert for another router id teaches nothing.
    let advert = |vrid: u8, ttl: u8| Frame {
        dst: [0x01, 0, 0x5e, 0, 0, 0x12],
        src: peer,
        vlan: None,
        ethertype: ETH_IPV4,
        payload: V4 {
            ttl,
            ..V4::new(
                Ipv4Addr::new(10, 0, 0, 2),
                Ipv4Addr::new(224, 0, 0, 18),
                112,
            )
        }
        .packet(&vrrp_advert(vrid, 150, VIP_TCP)),
    };
    h.run(&advert(52, 255).bytes());
    h.run(&advert(51, 64).bytes());
    assert_eq!(
        h.run(&from_peer).0,
        XDP_TX,
        "learned from a foreign VRID or a routed advert"
    );

    // An advert of our VRID does.
    assert_eq!(h.run(&advert(51, 255).bytes()).0, XDP_PASS);
    assert_eq!(h.dp.maps().learned_peers().unwrap().len(), 1);
    let (action, out) = h.run(&from_peer);
    assert_eq!(action, XDP_PASS);
    assert_eq!(out, from_peer);
    assert_eq!(h.pass_count(PassReason::FromPeer), 1);
}

#[test]
fn counters_count_per_service_and_real() {
    let mut h = Harness::new();
    let syn = tcp4(CLIENT4, VIP_TCP, 40000, 3306).bytes();
    let frame = tcp4_with(
        bpf_tests::builder::V4::new(CLIENT4, VIP_TCP, 6),
        40000,
        3306,
        TCP_ACK,
    )
    .bytes();
    assert_eq!(frame.len(), syn.len());
    assert_eq!(h.run(&syn).0, XDP_TX);
    for _ in 0..4 {
        assert_eq!(h.run(&frame).0, XDP_TX);
    }
    let c = h.counters();
    let id = h.service("tcp").id;
    let s = c.services.iter().find(|(i, _)| *i == id).unwrap().1;
    assert_eq!(
        (s.packets, s.new_flows, s.bytes),
        (5, 1, 5 * frame.len() as u64)
    );
    let real_packets: u64 = c.reals.iter().map(|(_, r)| r.packets).sum();
    assert_eq!(real_packets, 5);
}

#[test]
fn the_table_flip_is_whole() {
    // After a flip, every flow follows the new table: no slot is read from a half-written one.
    let mut h = Harness::new();
    let only_1 = h.set_pool("udp", &[("10.0.1.1", 1)]);
    assert!(only_1.slots.iter().all(|&r| r == h.real_id("10.0.1.1")));
    for i in 0..200u32 {
        let (a, out) = h.run(&udp4(client(i), VIP_TCP, 1000 + i as u16, 53).bytes());
        assert_eq!(a, XDP_TX);
        assert_eq!(h.real_of_mac(&out), Some(h.real_id("10.0.1.1")));
    }
    h.set_pool("udp", &[("10.0.1.2", 1)]);
    for i in 200..400u32 {
        let (_, out) = h.run(&udp4(client(i), VIP_TCP, 1000 + i as u16, 53).bytes());
        assert_eq!(h.real_of_mac(&out), Some(h.real_id("10.0.1.2")));
    }
}

#[test]
fn a_reload_changes_only_what_changed_and_removed_services_stop_forwarding() {
    let mut h = Harness::new();
    let flow = tcp4(CLIENT4, VIP_TCP, 40000, 3306).bytes();
    assert_eq!(h.run(&flow).0, XDP_TX);
    // The same provisioning again: nothing to write, and the flow still forwards.
    assert_eq!(h.reload(PROVISION), 0);
    assert_eq!(h.run(&flow).0, XDP_TX);
    let before = h.counters();

    // Without the "tcp" service: its established flow must no longer be forwarded (its
    // connection entry now points at an inactive service).
    let start = PROVISION
        .find("[[virtual_server]]\nname = \"tcp\"")
        .unwrap();
    let end = PROVISION[start + 1..].find("[[virtual_server]]").unwrap() + start + 1;
    let without = format!("{}{}", &PROVISION[..start], &PROVISION[end..]);
    assert!(h.reload(&without) > 0);
    let (action, out) = h.run(&flow);
    assert_eq!(action, XDP_PASS);
    assert_eq!(out, flow);
    // The other services kept their counters (stable ids).
    let udp = h.service("udp").id;
    let after = h.counters();
    let of = |c: &lb_agent::dataplane::Counters, id| {
        c.services.iter().find(|(i, _)| *i == id).unwrap().1
    };
    assert_eq!(of(&before, udp), of(&after, udp));
    assert_eq!(h.run(&udp4(CLIENT4, VIP_TCP, 5353, 53).bytes()).0, XDP_TX);
}

#[test]
fn a_connection_of_an_older_generation_is_ignored() {
    use lb_agent::dataplane::reconcile::MapOp;
    let mut h = Harness::new();
    let flow = tcp4(CLIENT4, VIP_TCP, 40000, 3306).bytes();
    assert_eq!(h.run(&flow).0, XDP_TX);
    // The service's id given to a new generation: the entry is stale, the flow is decided
    // again (a new flow in the counters) instead of following the entry blindly.
    let s = h.service("tcp").clone();
    let info = xdp_ebpf::maps::Service {
        id: s.id,
        flags: s.flags,
        active_table: s.active_table,
        persistence_timeout_s: 0,
        generation: s.generation + 1,
        _pad: 0,
    };
    h.dp.maps()
        .execute(&[MapOp::Info { id: s.id, info }])
        .unwrap();
    assert_eq!(h.run(&flow).0, XDP_TX);
    let c = h.counters();
    let stats = c.services.iter().find(|(i, _)| *i == s.id).unwrap().1;
    assert_eq!(stats.new_flows, 2);
}

/// A service that follows the agents' shared writer decision forwards only while the agent's
/// lease on the data plane holds (`SERVICE_LEASED`): a stalled agent cannot renew it, and
/// once it has run out the service's frames — new connections and established ones — are
/// dropped and counted as held, until the agent renews it. Time is the kernel's own clock,
/// which goes on while the agent is stopped.
#[test]
fn a_leased_service_holds_its_writes_once_the_agent_lease_runs_out() {
    use lb_agent::dataplane::monotonic_ns;
    use xdp_ebpf::maps::{LEASE_NS, SERVICE_ACTIVE, SERVICE_LEASED};
    let mut h = Harness::new();
    h.set_pool("tcp", &[("10.0.1.1", 1)]);
    h.set_flags("tcp", SERVICE_ACTIVE | SERVICE_LEASED);
    let r1 = h.real_id("10.0.1.1");
    let frame = |i: u32, flags: u8| {
        let ip = bpf_tests::builder::V4::new(client(i), VIP_TCP, 6);
        tcp4_with(ip, 10_000 + i as u16, 3306, flags).bytes()
    };
    h.set_lease(monotonic_ns() + LEASE_NS);
    assert_eq!(send(&h, VIP_TCP, 1), r1, "within the lease: forwarded");
    assert_eq!(ack(&h, VIP_TCP, 1), r1);
    let held = |h: &mut Harness| {
        let id = h.service("tcp").id;
        h.counters()
            .services
            .iter()
            .find(|(s, _)| *s == id)
            .map(|(_, c)| c.held)
            .unwrap()
    };
    let before = held(&mut h);
    // The lease ran out a second ago (the data plane's coarse clock lags by a tick at most).
    h.set_lease(monotonic_ns().saturating_sub(1_000_000_000));
    assert_eq!(h.run(&frame(1, TCP_ACK)).0, XDP_DROP, "an established flow");
    assert_eq!(h.run(&frame(2, TCP_SYN)).0, XDP_DROP, "a new connection");
    assert_eq!(held(&mut h), before + 2);
    // A service that does not follow the shared decision is not affected.
    h.set_flags("tcp", SERVICE_ACTIVE);
    assert_eq!(ack(&h, VIP_TCP, 1), r1);
    // Renewed: forwarded again, the established flow where it was.
    h.set_flags("tcp", SERVICE_ACTIVE | SERVICE_LEASED);
    h.set_lease(monotonic_ns() + LEASE_NS);
    assert_eq!(ack(&h, VIP_TCP, 1), r1);
    assert_eq!(send(&h, VIP_TCP, 2), r1);
}
