//! Conformance-style scenarios: a LAN of instances with virtual time. Adverts go through the
//! real codec (encode, then decode with TTL 255) to the other running instances, unless the
//! scenario drops them; the harness steps to the next deadline and records every transition
//! with its virtual time.

use std::{
    net::{IpAddr, Ipv4Addr},
    time::Duration,
};

use super::{
    instance::{Action, Instance, InstanceConfig, LowerPrio, State},
    packet::{Advert, Auth, MULTICAST_V4, Received, V3Ipv4Checksum, Version},
};

type Instant = std::time::Instant;

struct Node {
    inst: Instance,
    addr: IpAddr,
    running: bool,
    /// Adverts this node sends are lost while set.
    mute: bool,
}

struct Lan {
    t0: Instant,
    now: Instant,
    nodes: Vec<Node>,
    /// (virtual time, node, from, to)
    transitions: Vec<(Duration, usize, State, State)>,
    /// Nodes on different sides of a partition do not hear each other.
    partition: Option<Vec<usize>>,
    sent: Vec<(Duration, usize, u8)>,
    /// (virtual time, node, messages per address) of every re-announcement.
    announced: Vec<(Duration, usize, usize)>,
}

fn cfg(version: Version, priority: u8, last_octet: u8) -> InstanceConfig {
    InstanceConfig {
        vrid: 51,
        version,
        priority,
        interval: Duration::from_secs(1),
        preempt: true,
        preempt_delay: Duration::ZERO,
        start_as_master: false,
        primary: IpAddr::V4(Ipv4Addr::new(10, 0, 0, last_octet)),
        addresses: vec![IpAddr::V4(Ipv4Addr::new(10, 0, 0, 100))],
        auth: if version == Version::V2 {
            Auth::pass("1111")
        } else {
            Auth::None
        },
        // The configuration's defaults (keepalived's, but for higher_prio_send_advert).
        lower_prio: LowerPrio {
            garp_repeat: 5,
            garp_delay: Duration::from_secs(5),
            no_advert: false,
        },
        higher_prio_send_advert: true,
        accept_sources: None,
    }
}

impl Lan {
    fn new(cfgs: Vec<InstanceConfig>) -> Lan {
        let t0 = Instant::now();
        let nodes = cfgs
            .into_iter()
            .map(|c| Node {
                addr: c.primary,
                inst: Instance::new(c),
                running: false,
                mute: false,
            })
            .collect();
        Lan {
            t0,
            now: t0,
            nodes,
            transitions: vec![],
            partition: None,
            sent: vec![],
            announced: vec![],
        }
    }

    fn at(&self) -> Duration {
        self.now - self.t0
    }

    fn start(&mut self, i: usize) {
        self.nodes[i].running = true;
        let now = self.now;
        self.nodes[i].inst.startup(now);
        self.pump();
    }

    fn hears(&self, from: usize, to: usize) -> bool {
        match &self.partition {
            Some(side) => side.contains(&from) == side.contains(&to),
            None => true,
        }
    }

    /// Carries out queued actions until none is left.
    fn pump(&mut self) {
        loop {
            let mut any = false;
            for i in 0..self.nodes.len() {
                while let Some(a) = self.nodes[i].inst.poll_action() {
                    any = true;
                    match a {
                        Action::SendAdvert { priority } => {
                            self.sent.push((self.at(), i, priority));
                            if self.nodes[i].mute {
                                continue;
                            }
                            let c = &self.nodes[i];
                            let adv = c.inst.advert(priority);
                            let src = c.addr;
                            let dst = IpAddr::V4(MULTICAST_V4);
                            let bytes = adv.encode(src, dst, V3Ipv4Checksum::default());
                            for j in 0..self.nodes.len() {
                                if j == i || !self.nodes[j].running || !self.hears(i, j) {
                                    continue;
                                }
                                let rx = Received { src, dst, ttl: 255 };
                                let got = Advert::decode(&bytes, rx, V3Ipv4Checksum::default())
                                    .expect("our own encoding decodes");
                                let now = self.now;
                                self.nodes[j].inst.advert_received(now, src, &got);
                            }
                        }
                        Action::Transition { from, to, .. } => {
                            self.transitions.push((self.at(), i, from, to))
                        }
                        Action::Announce { count } => self.announced.push((self.at(), i, count)),
                        Action::TakeAddresses | Action::ReleaseAddresses => {}
                    }
                }
            }
            if !any {
                return;
            }
        }
    }

    /// Runs until virtual time `until` (bounded number of steps).
    fn run_until(&mut self, until: Duration) {
        for _ in 0..100_000 {
            let next = self
                .nodes
                .iter()
                .filter(|n| n.running)
                .filter_map(|n| n.inst.poll_timeout())
                .min();
            match next {
                Some(t) if t - self.t0 <= until => {
                    self.now = t.max(self.now);
                    let now = self.now;
                    for n in self.nodes.iter_mut().filter(|n| n.running) {
                        n.inst.handle_timeout(now);
                    }
                    self.pump();
                }
                _ => {
                    self.now = self.t0 + until;
                    return;
                }
            }
        }
        panic!("the scenario did not settle");
    }

    fn masters(&self) -> Vec<usize> {
        (0..self.nodes.len())
            .filter(|&i| self.nodes[i].running && self.nodes[i].inst.state() == State::Master)
            .collect()
    }

    /// SIGKILL: no resignation, the node just goes silent.
    fn kill(&mut self, i: usize) {
        self.nodes[i].running = false;
    }

    /// A clean stop: priority-0 advert, then silence.
    fn stop(&mut self, i: usize) {
        self.nodes[i].inst.shutdown();
        self.pump();
        self.nodes[i].running = false;
    }

    /// When node `i` last became master.
    fn became_master_at(&self, i: usize) -> Option<Duration> {
        self.transitions
            .iter()
            .rev()
            .find(|(_, n, _, to)| *n == i && *to == State::Master)
            .map(|(t, ..)| *t)
    }
}

fn secs(s: f64) -> Duration {
    Duration::from_secs_f64(s)
}

#[test]
fn the_higher_priority_becomes_the_only_master() {
    let mut lan = Lan::new(vec![cfg(Version::V2, 180, 1), cfg(Version::V2, 150, 2)]);
    lan.start(0);
    lan.start(1);
    lan.run_until(secs(10.0));
    assert_eq!(lan.masters(), vec![0]);
    // Master_Down_Interval of priority 180 with v2: 3 s + (256 - 180) / 256 s.
    let expected = secs(3.0) + Duration::from_secs(1) * 76 / 256;
    assert_eq!(lan.became_master_at(0), Some(expected));
    assert_eq!(lan.nodes[1].inst.state(), State::Backup);
}

#[test]
fn a_killed_master_is_replaced_after_the_master_down_interval() {
    let mut lan = Lan::new(vec![cfg(Version::V2, 180, 1), cfg(Version::V2, 150, 2)]);
    lan.start(0);
    lan.start(1);
    lan.run_until(secs(10.0));
    // The master's last advert before the kill went out at some t; the backup takes over
    // 3 s + skew(150) after the last advert it heard.
    let last = lan.sent.iter().rev().find(|(_, n, _)| *n == 0).unwrap().0;
    lan.kill(0);
    lan.run_until(secs(20.0));
    assert_eq!(lan.masters(), vec![1]);
    let skew = Duration::from_secs(1) * 106 / 256;
    assert_eq!(lan.became_master_at(1), Some(last + secs(3.0) + skew));
}

#[test]
fn a_cleanly_stopped_master_is_replaced_within_100_ms() {
    let mut lan = Lan::new(vec![cfg(Version::V3, 180, 1), cfg(Version::V3, 150, 2)]);
    lan.start(0);
    lan.start(1);
    lan.run_until(secs(10.0));
    let stopped_at = lan.at();
    lan.stop(0);
    assert_eq!(
        lan.sent.last().map(|s| s.2),
        Some(0),
        "no priority-0 advert on shutdown"
    );
    lan.run_until(secs(20.0));
    assert_eq!(lan.masters(), vec![1]);
    // Skew_Time scaled to a 50 ms base (see `resign_skew`): 106/256 of 50 ms.
    let skew = Duration::from_millis(50) * 106 / 256;
    assert_eq!(lan.became_master_at(1), Some(stopped_at + skew));
    assert!(skew < Duration::from_millis(100));
}

#[test]
fn lost_adverts_below_three_intervals_change_nothing() {
    let mut lan = Lan::new(vec![cfg(Version::V2, 180, 1), cfg(Version::V2, 150, 2)]);
    lan.start(0);
    lan.start(1);
    lan.run_until(secs(10.0));
    let before = lan.transitions.len();
    lan.nodes[0].mute = true; // two adverts lost
    lan.run_until(secs(12.0));
    lan.nodes[0].mute = false;
    lan.run_until(secs(30.0));
    assert_eq!(
        lan.transitions.len(),
        before,
        "{:?}",
        &lan.transitions[before..]
    );
    assert_eq!(lan.masters(), vec![0]);
}

#[test]
fn equal_priorities_are_broken_by_the_higher_address() {
    let mut lan = Lan::new(vec![cfg(Version::V2, 100, 1), cfg(Version::V2, 100, 2)]);
    // Both start as master (keepalived's `state MASTER` on both sides, a common mistake).
    lan.nodes[0].inst = Instance::new(InstanceConfig {
        start_as_master: true,
        ..cfg(Version::V2, 100, 1)
    });
    lan.nodes[1].inst = Instance::new(InstanceConfig {
        start_as_master: true,
        ..cfg(Version::V2, 100, 2)
    });
    lan.start(0);
    lan.start(1);
    lan.run_until(secs(10.0));
    assert_eq!(lan.masters(), vec![1], "10.0.0.2 > 10.0.0.1 wins the tie");
}

#[test]
fn a_higher_priority_peer_that_appears_takes_over_with_preempt_and_not_without() {
    for preempt in [true, false] {
        let mut lan = Lan::new(vec![
            cfg(Version::V2, 150, 1),
            InstanceConfig {
                preempt,
                ..cfg(Version::V2, 200, 2)
            },
        ]);
        lan.start(0);
        lan.run_until(secs(10.0));
        assert_eq!(lan.masters(), vec![0]);
        lan.start(1);
        lan.run_until(secs(30.0));
        let want = if preempt { vec![1] } else { vec![0] };
        assert_eq!(lan.masters(), want, "preempt = {preempt}");
    }
}

#[test]
fn preempt_delay_holds_preemption_after_start_up() {
    let mut lan = Lan::new(vec![
        cfg(Version::V2, 150, 1),
        InstanceConfig {
            preempt_delay: secs(15.0),
            ..cfg(Version::V2, 200, 2)
        },
    ]);
    lan.start(0);
    lan.run_until(secs(10.0));
    lan.start(1);
    lan.run_until(secs(20.0));
    assert_eq!(lan.masters(), vec![0], "preempted within preempt_delay");
    lan.run_until(secs(40.0));
    assert_eq!(
        lan.masters(),
        vec![1],
        "did not preempt after preempt_delay"
    );
}

#[test]
fn a_split_makes_two_masters_and_the_heal_leaves_one() {
    let mut lan = Lan::new(vec![cfg(Version::V2, 180, 1), cfg(Version::V2, 150, 2)]);
    lan.start(0);
    lan.start(1);
    lan.run_until(secs(10.0));
    lan.partition = Some(vec![0]);
    lan.run_until(secs(20.0));
    assert_eq!(lan.masters(), vec![0, 1], "both sides elect a master");
    lan.partition = None;
    lan.run_until(secs(25.0));
    assert_eq!(lan.masters(), vec![0]);
}

/// keepalived's answer to two masters (`garp_lower_prio_repeat`, `garp_lower_prio_delay`):
/// the master that hears a lower-priority advert answers with its own advert at once (the
/// other backs down without waiting for the next interval) and re-announces its addresses,
/// now and 5 s later, so that clients whose ARP entries followed the other master return.
#[test]
fn the_master_that_hears_a_lower_priority_re_announces_its_addresses() {
    // keepalived's own default on the lower one: it steps down without a last advert.
    let mut lower = cfg(Version::V2, 150, 2);
    lower.higher_prio_send_advert = false;
    let mut lan = Lan::new(vec![cfg(Version::V2, 180, 1), lower]);
    lan.start(0);
    lan.start(1);
    lan.run_until(secs(10.0));
    assert!(lan.announced.is_empty(), "{:?}", lan.announced);
    lan.partition = Some(vec![0]);
    lan.run_until(secs(20.0));
    assert_eq!(lan.masters(), vec![0, 1]);
    // The heal, with node 0's adverts still lost for a second: node 1's adverts reach it
    // first (whichever phase the two timers have).
    let heal = secs(20.0);
    lan.partition = None;
    lan.nodes[0].mute = true;
    lan.run_until(secs(21.0));
    lan.nodes[0].mute = false;
    lan.run_until(secs(30.0));
    assert_eq!(lan.masters(), vec![0]);
    // Node 1's first advert after the heal reaches node 0 within an interval: node 0
    // answers (advert) and announces, now and 5 s later.
    let answers: Vec<_> = lan
        .announced
        .iter()
        .filter(|(_, n, count)| *n == 0 && *count == 5)
        .map(|(t, ..)| *t)
        .collect();
    assert_eq!(answers.len(), 2, "{:?}", lan.announced);
    assert!(
        answers[0] >= heal && answers[0] <= heal + secs(1.0),
        "{answers:?}"
    );
    assert_eq!(answers[1] - answers[0], secs(5.0));
    assert!(
        lan.sent.iter().any(|(t, n, _)| *n == 0 && *t == answers[0]),
        "no advert answered the lower priority"
    );
    assert!(!lan.announced.iter().any(|(_, n, _)| *n == 1));
}

/// Whichever advert crosses first after two masters, the higher master hears of the lower
/// one: either the lower one's regular advert, or (if the higher one's arrived first) the
/// advert `higher_prio_send_advert` makes it send as it steps down.
#[test]
fn after_two_masters_the_higher_one_re_announces_whatever_the_order() {
    for delay_ms in [0u64, 300, 600, 900] {
        let mut lan = Lan::new(vec![cfg(Version::V2, 180, 1), cfg(Version::V2, 150, 2)]);
        lan.start(0);
        lan.start(1);
        lan.run_until(secs(10.0));
        lan.partition = Some(vec![0]);
        lan.run_until(secs(20.0) + Duration::from_millis(delay_ms));
        assert_eq!(lan.masters(), vec![0, 1]);
        let heal = lan.at();
        lan.partition = None;
        lan.run_until(heal + secs(2.0));
        assert_eq!(lan.masters(), vec![0], "heal at {heal:?}");
        assert!(
            lan.announced
                .iter()
                .any(|(t, n, _)| *n == 0 && *t >= heal && *t <= heal + secs(1.0)),
            "heal at {heal:?}: no re-announcement: {:?}",
            lan.announced
        );
    }
}

/// `lower_prio_no_advert` (the RFC's behaviour): no answering advert; `garp_lower_prio_repeat`
/// 0: no re-announcement. `higher_prio_send_advert`: a master stepping down sends one more.
#[test]
fn lower_and_higher_priority_options() {
    let mut quiet = cfg(Version::V2, 180, 1);
    quiet.lower_prio = LowerPrio {
        garp_repeat: 0,
        garp_delay: Duration::ZERO,
        no_advert: true,
    };
    let loud = cfg(Version::V2, 150, 2);
    let mut lan = Lan::new(vec![quiet, loud]);
    lan.start(0);
    lan.start(1);
    lan.run_until(secs(10.0));
    lan.partition = Some(vec![0]);
    lan.run_until(secs(20.0));
    lan.partition = None;
    let sent_before = lan.sent.len();
    lan.run_until(secs(22.5));
    assert_eq!(lan.masters(), vec![0]);
    assert!(lan.announced.is_empty(), "{:?}", lan.announced);
    // Node 0 only sends its interval adverts; node 1 sent one more as it stepped down (at
    // the instant it heard node 0).
    let after: Vec<_> = lan.sent[sent_before..].to_vec();
    let node0: Vec<_> = after
        .iter()
        .filter(|(_, n, _)| *n == 0)
        .map(|(t, ..)| *t)
        .collect();
    assert!(
        after
            .iter()
            .any(|(t, n, p)| *n == 1 && *p == 150 && node0.contains(t)),
        "node 1 stepped down without its advert: {after:?}"
    );
    for w in node0.windows(2) {
        assert_eq!(
            w[1] - w[0],
            secs(1.0),
            "node 0 answered a lower priority: {after:?}"
        );
    }
}

#[test]
fn a_restarted_peer_takes_its_role_back() {
    let mut lan = Lan::new(vec![cfg(Version::V2, 180, 1), cfg(Version::V2, 150, 2)]);
    lan.start(0);
    lan.start(1);
    lan.run_until(secs(10.0));
    lan.kill(0);
    lan.run_until(secs(20.0));
    assert_eq!(lan.masters(), vec![1]);
    lan.nodes[0].inst = Instance::new(cfg(Version::V2, 180, 1));
    lan.start(0);
    lan.run_until(secs(40.0));
    assert_eq!(lan.masters(), vec![0]);
}

#[test]
fn owner_priority_255_is_master_at_once() {
    let mut lan = Lan::new(vec![cfg(Version::V2, 150, 1), cfg(Version::V2, 255, 2)]);
    lan.start(0);
    lan.run_until(secs(10.0));
    lan.start(1);
    assert_eq!(lan.became_master_at(1), Some(secs(10.0)));
    lan.run_until(secs(12.0));
    assert_eq!(lan.masters(), vec![1]);
}

#[test]
fn wrong_password_and_foreign_vrid_are_discarded_and_counted() {
    let mut inst = Instance::new(cfg(Version::V2, 150, 1));
    let now = Instant::now();
    inst.startup(now);
    let mut adv = Advert {
        version: Version::V2,
        vrid: 51,
        priority: 200,
        interval: Duration::from_secs(1),
        addresses: vec![],
        auth: Auth::pass("wrong"),
    };
    let src = IpAddr::V4(Ipv4Addr::new(10, 0, 0, 9));
    inst.advert_received(now, src, &adv);
    adv.auth = Auth::pass("1111");
    adv.vrid = 52;
    inst.advert_received(now, src, &adv);
    adv.vrid = 51;
    adv.interval = Duration::from_secs(2);
    inst.advert_received(now, src, &adv);
    let d = &inst.stats().discards;
    assert_eq!(d.len(), 3, "{d:?}");
    assert_eq!(inst.stats().adverts_received, 0);
}

/// `check_unicast_src` / `accept_sources`: a valid, higher-priority advert from an address
/// the instance does not accept is discarded and counted; the master stays master. The
/// accepted peer still takes over.
#[test]
fn adverts_from_unaccepted_sources_are_discarded() {
    let peer = IpAddr::V4(Ipv4Addr::new(10, 0, 0, 2));
    let mut inst = Instance::new(InstanceConfig {
        start_as_master: true,
        accept_sources: Some(vec![peer]),
        ..cfg(Version::V2, 150, 1)
    });
    let now = Instant::now();
    inst.startup(now);
    assert_eq!(inst.state(), State::Master);
    let adv = Advert {
        version: Version::V2,
        vrid: 51,
        priority: 254,
        interval: Duration::from_secs(1),
        addresses: vec![IpAddr::V4(Ipv4Addr::new(10, 0, 0, 100))],
        auth: Auth::pass("1111"),
    };
    let intruder = IpAddr::V4(Ipv4Addr::new(10, 0, 0, 66));
    for _ in 0..5 {
        inst.advert_received(now, intruder, &adv);
    }
    assert_eq!(
        inst.state(),
        State::Master,
        "an intruder took the master role"
    );
    assert_eq!(
        inst.stats().discards,
        vec![(crate::vrrp::packet::Discard::UnknownSource, 5)]
    );
    inst.advert_received(now, peer, &adv);
    assert_eq!(
        inst.state(),
        State::Backup,
        "the configured peer still preempts"
    );
}

#[test]
fn priority_tracking_lets_a_better_backup_preempt() {
    let mut lan = Lan::new(vec![cfg(Version::V2, 180, 1), cfg(Version::V2, 150, 2)]);
    lan.start(0);
    lan.start(1);
    lan.run_until(secs(10.0));
    // A check fails on the master: it drops below the backup and says so at once.
    let now = lan.now;
    lan.nodes[0].inst.set_priority(now, 100);
    lan.pump();
    lan.run_until(secs(20.0));
    assert_eq!(lan.masters(), vec![1]);
}

#[test]
fn interface_down_is_fault_and_up_starts_again() {
    let mut lan = Lan::new(vec![cfg(Version::V2, 180, 1), cfg(Version::V2, 150, 2)]);
    lan.start(0);
    lan.start(1);
    lan.run_until(secs(10.0));
    lan.nodes[0].inst.fault("interface down");
    lan.pump();
    assert_eq!(lan.nodes[0].inst.state(), State::Fault);
    lan.run_until(secs(20.0));
    assert_eq!(lan.masters(), vec![1]);
    let now = lan.now;
    lan.nodes[0].inst.recover(now, "interface up");
    lan.pump();
    lan.run_until(secs(30.0));
    assert_eq!(lan.masters(), vec![0]);
}

#[test]
fn v3_backups_learn_the_masters_interval() {
    let fast = InstanceConfig {
        interval: Duration::from_millis(100),
        ..cfg(Version::V3, 200, 1)
    };
    let mut lan = Lan::new(vec![fast, cfg(Version::V3, 150, 2)]);
    lan.start(0);
    lan.start(1);
    lan.run_until(secs(5.0));
    assert_eq!(lan.masters(), vec![0]);
    let last = lan.sent.iter().rev().find(|(_, n, _)| *n == 0).unwrap().0;
    lan.kill(0);
    lan.run_until(secs(10.0));
    // 3 × 100 ms + skew of 150 over 100 ms: well under half a second.
    let took = lan.became_master_at(1).unwrap() - last;
    assert!(took < Duration::from_millis(500), "took {took:?}");
}

#[test]
fn sync_group_members_follow() {
    let now = Instant::now();
    let mut a = Instance::new(cfg(Version::V2, 150, 1));
    a.startup(now);
    while a.poll_action().is_some() {}
    a.follow_master(now);
    assert_eq!(a.state(), State::Master);
    let actions: Vec<Action> = std::iter::from_fn(|| a.poll_action()).collect();
    assert!(actions.contains(&Action::TakeAddresses), "{actions:?}");
    assert!(
        actions
            .iter()
            .any(|x| matches!(x, Action::SendAdvert { priority: 150 }))
    );
    a.follow_backup(now);
    assert_eq!(a.state(), State::Backup);
    let actions: Vec<Action> = std::iter::from_fn(|| a.poll_action()).collect();
    assert!(actions.contains(&Action::ReleaseAddresses), "{actions:?}");
    // Following is a no-op from Initialize and Fault.
    let mut b = Instance::new(cfg(Version::V2, 150, 2));
    b.follow_master(now);
    assert_eq!(b.state(), State::Initialize);
}
