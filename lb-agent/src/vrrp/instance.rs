//! One VRRP router as a state machine without I/O (RFC 5798 section 6, RFC 3768 section 6).
//!
//! Contract (as quinn-proto's): the instance never reads a clock and never touches a socket.
//! Every input takes `now`; outputs are pulled: `poll_action` yields what to do (send an
//! advert, take or release the virtual addresses, announce them), `poll_timeout` gives the
//! earliest deadline, and `handle_timeout(now)` fires what is due (a spurious call does
//! nothing). The driver owns sockets, timers and netlink, and feeds this.

use std::{collections::VecDeque, net::IpAddr, time::Duration};

use super::packet::{Advert, Auth, Discard, Version};

/// The longest wait after a master resigns (see `Instance::resign_skew`).
const RESIGN_SKEW_BASE: Duration = Duration::from_millis(50);

/// Time as the caller measures it (monotonic).
pub type Instant = std::time::Instant;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum State {
    Initialize,
    Backup,
    Master,
    /// The interface is down: no adverts, no addresses.
    Fault,
}

#[derive(Debug, Clone)]
pub struct InstanceConfig {
    pub vrid: u8,
    pub version: Version,
    /// Configured priority (1–255; 255 = owner of the addresses).
    pub priority: u8,
    /// Advertisement_Interval.
    pub interval: Duration,
    pub preempt: bool,
    /// No preemption until this long after start-up (keepalived's `preempt_delay`).
    pub preempt_delay: Duration,
    /// Start as master at once (keepalived's `state MASTER`) rather than after the master-down
    /// interval; a higher-priority master still wins as soon as it is heard.
    pub start_as_master: bool,
    /// Our primary address on the interface: the tie-breaker between equal priorities.
    pub primary: IpAddr,
    pub addresses: Vec<IpAddr>,
    pub auth: Auth,
    /// What a master does when it hears a lower-priority advert (keepalived's defaults: an
    /// advert back, and gratuitous ARPs now and again after a delay), so that a client
    /// whose ARP entry moved to the other host during two masters comes back.
    pub lower_prio: LowerPrio,
    /// keepalived's `higher_prio_send_advert`: a master that hears a higher priority sends
    /// one more advert of its own before it becomes backup.
    pub higher_prio_send_advert: bool,
    /// Adverts only from these sources (`check_unicast_src`: the unicast peers; or
    /// `accept_sources`); `None`: from anyone on the segment (the protocol's rule).
    pub accept_sources: Option<Vec<IpAddr>>,
}

/// keepalived's `garp_lower_prio_repeat`, `garp_lower_prio_delay`, `lower_prio_no_advert`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LowerPrio {
    /// Gratuitous ARPs / unsolicited NAs per address, at once and again after `garp_delay`
    /// (0: none).
    pub garp_repeat: usize,
    /// The second burst's delay (zero: no second burst).
    pub garp_delay: Duration,
    /// Do not answer with an advert (RFC behaviour).
    pub no_advert: bool,
}

/// Something the driver must do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// Send an advertisement with this priority (0: we resign).
    SendAdvert { priority: u8 },
    /// Add the virtual addresses and send gratuitous ARP / unsolicited NA.
    TakeAddresses,
    /// Remove the virtual addresses.
    ReleaseAddresses,
    /// Announce the addresses held again: this many gratuitous ARPs / unsolicited NAs each.
    Announce { count: usize },
    /// A state change, with why (for logs, notify scripts and status).
    Transition {
        from: State,
        to: State,
        reason: &'static str,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Timer {
    Advert = 0,
    MasterDown = 1,
    /// The second burst of gratuitous ARPs after a lower-priority advert.
    LowerPrioGarp = 2,
}

const TIMERS: usize = 3;

/// Per-instance counters (the VRRP MIB's statistics).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Stats {
    pub adverts_received: u64,
    pub adverts_sent: u64,
    pub priority_zero_received: u64,
    pub priority_zero_sent: u64,
    pub became_master: u64,
    pub discards: Vec<(Discard, u64)>,
}

pub struct Instance {
    cfg: InstanceConfig,
    state: State,
    /// Priority after tracking adjustments.
    priority: u8,
    /// Master_Adver_Interval: the master's advert interval (learned from its adverts in v3).
    master_interval: Duration,
    timers: [Option<Instant>; TIMERS],
    started: Option<Instant>,
    actions: VecDeque<Action>,
    stats: Stats,
    /// The current master as far as we know: us, the sender of the adverts we follow, or
    /// nobody (starting, fault, or the master resigned).
    master: Option<IpAddr>,
}

impl Instance {
    pub fn new(cfg: InstanceConfig) -> Instance {
        let priority = cfg.priority;
        let master_interval = cfg.interval;
        Instance {
            cfg,
            state: State::Initialize,
            priority,
            master_interval,
            timers: [None; TIMERS],
            started: None,
            actions: VecDeque::new(),
            stats: Stats::default(),
            master: None,
        }
    }

    pub fn state(&self) -> State {
        self.state
    }

    pub fn priority(&self) -> u8 {
        self.priority
    }

    /// The advert interval of the current master (ours, or learned from its adverts in v3).
    pub fn master_interval(&self) -> Duration {
        self.master_interval
    }

    pub fn master(&self) -> Option<IpAddr> {
        self.master
    }

    pub fn stats(&self) -> &Stats {
        &self.stats
    }

    pub fn version(&self) -> Version {
        self.cfg.version
    }

    pub fn vrid(&self) -> u8 {
        self.cfg.vrid
    }

    /// An advert the driver could not even decode.
    pub fn count_discard(&mut self, reason: Discard) {
        self.discard(reason);
    }

    /// The advert to send for `Action::SendAdvert { priority }`.
    pub fn advert(&self, priority: u8) -> Advert {
        Advert {
            version: self.cfg.version,
            vrid: self.cfg.vrid,
            priority,
            interval: self.cfg.interval,
            addresses: self.cfg.addresses.clone(),
            auth: if self.cfg.version == Version::V2 {
                self.cfg.auth.clone()
            } else {
                Auth::None
            },
        }
    }

    pub fn poll_action(&mut self) -> Option<Action> {
        self.actions.pop_front()
    }

    /// The earliest deadline, if any.
    pub fn poll_timeout(&self) -> Option<Instant> {
        self.timers.iter().flatten().min().copied()
    }

    /// Skew_Time (RFC 5798 6.1): v3 scales with the master's interval, v2 is in seconds.
    fn skew(&self) -> Duration {
        let p = self.priority as u32;
        match self.cfg.version {
            Version::V3 => self.master_interval * (256 - p) / 256,
            Version::V2 => Duration::from_secs(1) * (256 - p) / 256,
        }
    }

    /// The wait after a master resigns (priority 0). RFC 5798 6.4.2 says Skew_Time, which at a
    /// 1 s interval is up to a second of nobody forwarding after a clean stop. We scale the
    /// same priority-ordered skew to at most 50 ms: backups still take over in priority
    /// order (the highest first), only sooner. A deliberate, interoperable deviation: a peer
    /// that waits the full Skew_Time just loses the race to a lower-priority us by a little.
    fn resign_skew(&self) -> Duration {
        let base = self.master_interval.min(RESIGN_SKEW_BASE);
        base * (256 - self.priority as u32) / 256
    }

    /// Master_Down_Interval = 3 × Master_Adver_Interval + Skew_Time.
    fn master_down_interval(&self) -> Duration {
        self.master_interval * 3 + self.skew()
    }

    fn set(&mut self, t: Timer, at: Option<Instant>) {
        self.timers[t as usize] = at;
    }

    /// The one place that changes state, with its side effects (holo-vrrp's pattern).
    fn transition(&mut self, to: State, reason: &'static str) {
        let from = self.state;
        if from == to {
            return;
        }
        self.state = to;
        self.master = match to {
            State::Master => Some(self.cfg.primary),
            State::Backup => self.master,
            State::Initialize | State::Fault => None,
        };
        match (from, to) {
            (_, State::Master) => {
                self.stats.became_master += 1;
                self.actions.push_back(Action::TakeAddresses);
            }
            (State::Master, _) => self.actions.push_back(Action::ReleaseAddresses),
            _ => {}
        }
        self.actions
            .push_back(Action::Transition { from, to, reason });
    }

    fn send_advert(&mut self, priority: u8) {
        self.stats.adverts_sent += 1;
        if priority == 0 {
            self.stats.priority_zero_sent += 1;
        }
        self.actions.push_back(Action::SendAdvert { priority });
    }

    fn become_master(&mut self, now: Instant, reason: &'static str) {
        self.send_advert(self.priority);
        self.set(Timer::Advert, Some(now + self.cfg.interval));
        self.set(Timer::MasterDown, None);
        self.transition(State::Master, reason);
    }

    fn become_backup(&mut self, now: Instant, reason: &'static str) {
        self.set(Timer::Advert, None);
        self.set(Timer::LowerPrioGarp, None);
        self.set(Timer::MasterDown, Some(now + self.master_down_interval()));
        self.transition(State::Backup, reason);
    }

    /// RFC 5798 6.4.1: leave Initialize.
    pub fn startup(&mut self, now: Instant) {
        if self.state != State::Initialize {
            return;
        }
        self.started = Some(now);
        self.master_interval = self.cfg.interval;
        if self.priority == 255 || self.cfg.start_as_master {
            self.become_master(
                now,
                if self.priority == 255 {
                    "address owner"
                } else {
                    "configured to start as master"
                },
            );
        } else {
            self.become_backup(now, "start-up");
        }
    }

    /// Fires what is due at `now`.
    pub fn handle_timeout(&mut self, now: Instant) {
        if self.timers[Timer::MasterDown as usize].is_some_and(|t| t <= now)
            && self.state == State::Backup
        {
            self.become_master(
                now,
                "master down: no advert within the master-down interval",
            );
        }
        if self.timers[Timer::Advert as usize].is_some_and(|t| t <= now)
            && self.state == State::Master
        {
            self.send_advert(self.priority);
            self.set(Timer::Advert, Some(now + self.cfg.interval));
        }
        if self.timers[Timer::LowerPrioGarp as usize].is_some_and(|t| t <= now) {
            self.set(Timer::LowerPrioGarp, None);
            if self.state == State::Master {
                self.actions.push_back(Action::Announce {
                    count: self.cfg.lower_prio.garp_repeat,
                });
            }
        }
    }

    /// An advert from `src` (decoded, TTL checked). Applies the instance checks, then RFC
    /// 5798 6.4.2 (Backup) / 6.4.3 (Master).
    pub fn advert_received(&mut self, now: Instant, src: IpAddr, adv: &Advert) {
        if self
            .cfg
            .accept_sources
            .as_ref()
            .is_some_and(|ok| !ok.contains(&src))
        {
            self.discard(Discard::UnknownSource);
            return;
        }
        if let Err(reason) = adv.check(
            self.cfg.vrid,
            self.cfg.version,
            &self.cfg.auth,
            self.cfg.interval,
        ) {
            self.discard(reason);
            return;
        }
        self.stats.adverts_received += 1;
        if adv.priority == 0 {
            self.stats.priority_zero_received += 1;
        }
        match self.state {
            State::Backup => {
                if adv.priority == 0 {
                    // The master resigned: take over after a short, priority-ordered wait.
                    self.master = None;
                    self.set(Timer::MasterDown, Some(now + self.resign_skew()));
                    return;
                }
                let may_preempt = self.cfg.preempt
                    && self
                        .started
                        .is_none_or(|s| now.duration_since(s) >= self.cfg.preempt_delay)
                    || self.priority == 255;
                if !may_preempt || adv.priority >= self.priority {
                    self.master = Some(src);
                    if self.cfg.version == Version::V3 {
                        self.master_interval = adv.interval;
                    }
                    self.set(Timer::MasterDown, Some(now + self.master_down_interval()));
                }
                // Otherwise: a lower-priority master and we preempt — let the timer fire.
            }
            State::Master => {
                if adv.priority == 0 {
                    self.send_advert(self.priority);
                    self.set(Timer::Advert, Some(now + self.cfg.interval));
                } else if adv.priority > self.priority
                    || (adv.priority == self.priority && src > self.cfg.primary)
                {
                    if self.cfg.higher_prio_send_advert {
                        self.send_advert(self.priority);
                    }
                    if self.cfg.version == Version::V3 {
                        self.master_interval = adv.interval;
                    }
                    self.become_backup(now, "a higher-priority master");
                    self.master = Some(src);
                } else {
                    self.lower_priority_heard(now);
                }
            }
            State::Initialize | State::Fault => {}
        }
    }

    /// Another master with a lower priority: two masters, after lost adverts or a stalled
    /// peer. Our advert makes it back down; the gratuitous ARPs bring back clients (and
    /// switches) that followed its announcements meanwhile. As keepalived does.
    fn lower_priority_heard(&mut self, now: Instant) {
        let lp = self.cfg.lower_prio;
        if !lp.no_advert {
            self.send_advert(self.priority);
        }
        if lp.garp_repeat > 0 {
            self.actions.push_back(Action::Announce {
                count: lp.garp_repeat,
            });
            if !lp.garp_delay.is_zero() {
                self.set(Timer::LowerPrioGarp, Some(now + lp.garp_delay));
            }
        }
    }

    fn discard(&mut self, reason: Discard) {
        match self.stats.discards.iter_mut().find(|(r, _)| *r == reason) {
            Some((_, n)) => *n += 1,
            None => self.stats.discards.push((reason, 1)),
        }
    }

    /// Tracking changed our priority (1–254; an owner stays 255).
    pub fn set_priority(&mut self, now: Instant, priority: u8) {
        let priority = if self.cfg.priority == 255 {
            255
        } else {
            priority.clamp(1, 254)
        };
        if priority == self.priority {
            return;
        }
        self.priority = priority;
        if self.state == State::Master {
            // Tell the others at once: a better backup may preempt now.
            self.send_advert(self.priority);
            self.set(Timer::Advert, Some(now + self.cfg.interval));
        }
    }

    /// A sync-group member went master: follow it (RFC-external, keepalived's semantics).
    pub fn follow_master(&mut self, now: Instant) {
        if self.state == State::Backup {
            self.become_master(now, "sync group: a member became master");
        }
    }

    /// A sync-group member left master: follow it.
    pub fn follow_backup(&mut self, now: Instant) {
        if self.state == State::Master {
            self.become_backup(now, "sync group: a member left master");
        }
    }

    /// The interface, or a tracked interface or script with weight 0, went down: Fault,
    /// addresses released, silent.
    pub fn fault(&mut self, reason: &'static str) {
        if self.state == State::Fault {
            return;
        }
        // Like a shutdown (and like keepalived): a master resigns so a backup takes over after
        // skew time. If the interface itself is down the advert is lost, harmlessly.
        if self.state == State::Master {
            self.send_advert(0);
        }
        self.timers = [None; TIMERS];
        self.transition(State::Fault, reason);
    }

    /// What caused the fault is back: start again.
    pub fn recover(&mut self, now: Instant, reason: &'static str) {
        if self.state == State::Fault {
            self.state = State::Initialize;
            self.actions.push_back(Action::Transition {
                from: State::Fault,
                to: State::Initialize,
                reason,
            });
            self.startup(now);
        }
    }

    /// A reload changed what this instance runs with, on the same wire (router id, version and
    /// primary address unchanged): the state is kept. A master re-advertises at once with a
    /// changed interval or priority (tracking sets the effective priority afterwards, through
    /// `set_priority`).
    pub fn reconfigure(&mut self, now: Instant, cfg: InstanceConfig) {
        let interval_changed = cfg.interval != self.cfg.interval;
        if self.cfg.priority != cfg.priority {
            self.priority = cfg.priority;
        }
        if self.state != State::Master {
            self.master_interval = cfg.interval;
        }
        self.cfg = cfg;
        if self.state == State::Master && interval_changed {
            self.send_advert(self.priority);
            self.set(Timer::Advert, Some(now + self.cfg.interval));
        }
    }

    /// RFC 5798 6.4.3: a master resigns with a priority-0 advert, so that a backup takes over
    /// after Skew_Time instead of the whole master-down interval.
    pub fn shutdown(&mut self) {
        if self.state == State::Master {
            self.send_advert(0);
        }
        self.timers = [None; TIMERS];
        self.transition(State::Initialize, "shutdown");
    }
}
