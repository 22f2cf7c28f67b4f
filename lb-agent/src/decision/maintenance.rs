//! The operators' maintenance words (`lb-agent maintenance SERVER on|off`), shared by the
//! agents, without I/O: run on either agent, they hold on both — also on an agent that
//! takes the writer decision over, or restarts while its peer runs (a replica whose
//! replication an operator stopped for an `ALTER TABLE` must not be re-pointed, nor a writer
//! in maintenance get the writes back, because the VRRP master moved).
//!
//! Each server has one mark, the last word said of it anywhere: on or off, with a version
//! that orders the words across agents — a Lamport clock (a new word takes one more than
//! the highest version this agent has seen), ties broken by the agent's name. Every agent
//! sends all its marks (`[pair]`: in its view; `[quorum]`: under its key in etcd) and takes
//! every newer one it hears. A word is never lost to an older one; two words said at once
//! on both agents end the same on both. A word said to an agent that has just started and
//! not yet heard the others is refused for `SILENCE` (its clock would start below theirs,
//! and its word could lose to an older one).

use std::{
    collections::BTreeMap,
    net::IpAddr,
    time::{Duration, Instant},
};

/// How long a started agent that has heard nobody refuses words (then it is alone).
pub const SILENCE: Duration = super::shared::SILENCE;

/// The last word said of one server.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Mark {
    pub on: bool,
    pub version: u64,
    /// The agent it was said to.
    pub by: String,
}

impl Mark {
    fn newer_than(&self, other: &Mark) -> bool {
        (self.version, &self.by) > (other.version, &other.by)
    }
}

/// Marks by server.
pub type MarkSet = BTreeMap<IpAddr, Mark>;

/// This agent's marks.
#[derive(Debug, Clone)]
pub struct Marks {
    me: String,
    marks: MarkSet,
    /// The highest version seen anywhere.
    clock: u64,
    started: Instant,
    /// Another agent was heard (its marks, or that it has none).
    heard: bool,
}

impl Marks {
    pub fn new(me: impl Into<String>, now: Instant) -> Marks {
        Marks {
            me: me.into(),
            marks: MarkSet::new(),
            clock: 0,
            started: now,
            heard: false,
        }
    }

    /// Another agent was heard (a view, a round with etcd), whatever its marks.
    pub fn heard(&mut self) {
        self.heard = true;
    }

    /// Whether a word may be said to this agent now (see the module's doc).
    pub fn may_say(&self, now: Instant) -> Result<(), String> {
        let up = now.duration_since(self.started);
        if self.heard || up >= SILENCE {
            return Ok(());
        }
        Err(format!(
            "this agent started {up:.1?} ago and has not heard the other agent yet: a word \
             said now could lose to an older one it holds; try again in {:.0?}",
            SILENCE.saturating_sub(up)
        ))
    }

    pub fn all(&self) -> &MarkSet {
        &self.marks
    }

    /// An operator's word to this agent.
    pub fn say(&mut self, server: IpAddr, on: bool) {
        self.clock += 1;
        self.marks.insert(
            server,
            Mark {
                on,
                version: self.clock,
                by: self.me.clone(),
            },
        );
    }

    /// Another agent's marks: the newer ones are taken. Returns the servers whose state
    /// changed here (server, on), to apply.
    pub fn merge(&mut self, theirs: &MarkSet) -> Vec<(IpAddr, bool)> {
        self.heard = true;
        let mut changed = Vec::new();
        for (server, mark) in theirs {
            self.clock = self.clock.max(mark.version);
            let ours = self.marks.get(server);
            if ours.is_some_and(|o| !mark.newer_than(o)) {
                continue;
            }
            if ours.map(|o| o.on) != Some(mark.on) && (mark.on || ours.is_some()) {
                changed.push((*server, mark.on));
            }
            self.marks.insert(*server, mark.clone());
        }
        changed
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn a_word_on_one_agent_holds_on_the_other_and_the_last_one_wins() {
        let (mut a, mut b) = (
            Marks::new("db1", Instant::now()),
            Marks::new("db2", Instant::now()),
        );
        let rp1 = ip("10.1.1.121");
        a.say(rp1, true);
        assert_eq!(b.merge(a.all()), [(rp1, true)]);
        assert_eq!(b.merge(a.all()), [], "once");
        assert_eq!(a.merge(b.all()), [], "its own word back changes nothing");
        // Off on the other agent: newer (its clock has seen a's word).
        b.say(rp1, false);
        assert_eq!(a.merge(b.all()), [(rp1, false)]);
        // An old view arriving late does not undo it.
        let mut old = MarkSet::new();
        old.insert(
            rp1,
            Mark {
                on: true,
                version: 1,
                by: "db1".into(),
            },
        );
        assert_eq!(a.merge(&old), []);
        assert!(!a.all()[&rp1].on);
    }

    #[test]
    fn words_said_at_once_on_both_end_the_same_on_both() {
        let (mut a, mut b) = (
            Marks::new("db1", Instant::now()),
            Marks::new("db2", Instant::now()),
        );
        let db1 = ip("10.1.1.113");
        a.say(db1, true);
        b.say(db1, false);
        a.merge(b.all());
        b.merge(a.all());
        assert_eq!(a.all(), b.all());
        assert_eq!(
            a.all()[&db1].by,
            "db2",
            "equal versions: the name orders them"
        );
    }

    /// A restarted agent knows nothing: it takes the words its peer kept; an "off" for a
    /// server it never had in maintenance changes nothing there.
    #[test]
    fn a_restarted_agent_takes_its_peers_words() {
        let mut a = Marks::new("db1", Instant::now());
        let (rp1, rp2) = (ip("10.1.1.121"), ip("10.1.1.122"));
        a.say(rp1, true);
        a.say(rp2, true);
        a.say(rp2, false);
        let t = Instant::now();
        let mut fresh = Marks::new("db2", t);
        assert!(
            fresh.may_say(t).is_err(),
            "not before it has heard the other"
        );
        assert!(fresh.may_say(t + SILENCE).is_ok(), "alone after SILENCE");
        assert_eq!(fresh.merge(a.all()), [(rp1, true)]);
        assert!(fresh.may_say(t).is_ok());
        // Its next word is newer than everything it has seen.
        fresh.say(rp1, false);
        assert_eq!(a.merge(fresh.all()), [(rp1, false)]);
    }
}
