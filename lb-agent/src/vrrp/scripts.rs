//! The track scripts (`vrrp_script`) by name: each runs in its own task and reports to the
//! daemon's loop; the verdict (with rise/fall) lives here. A reload keeps an unchanged
//! script with its verdict, restarts a changed one, stops one no instance tracks any more.

use std::collections::{HashMap, HashSet};

use tokio::sync::mpsc;

use super::event::Event;
use crate::{
    config::VrrpScript,
    health::{exec, tracker::Tracker},
};

/// A track script's latest verdict, and its task.
struct Script {
    spec: VrrpScript,
    tracker: Tracker,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Script {
    fn drop(&mut self) {
        self.task.abort();
    }
}

#[derive(Default)]
pub struct Scripts {
    by_name: HashMap<String, Script>,
}

impl Scripts {
    /// Runs the scripts in `specs` that some instance tracks (`tracked`): kept (with their
    /// verdict) when unchanged, started when new or changed, stopped when no longer tracked.
    pub fn set(&mut self, specs: &[VrrpScript], tracked: &HashSet<&str>, tx: &mpsc::Sender<Event>) {
        let mut old = std::mem::take(&mut self.by_name);
        for sc in specs.iter().filter(|s| tracked.contains(s.name.as_str())) {
            let script = match old.remove(&sc.name) {
                Some(s) if s.spec == *sc => s,
                _ => Script {
                    spec: sc.clone(),
                    tracker: Tracker::new(sc.rise, sc.fall, !sc.init_fail),
                    task: spawn(sc, tx.clone()),
                },
            };
            self.by_name.insert(sc.name.clone(), script);
        }
    }

    /// Records one run of `name`; `Some(up)` when its verdict changed.
    pub fn record(&mut self, name: &str, ok: bool) -> Option<bool> {
        self.by_name.get_mut(name)?.tracker.record(ok)
    }

    /// Whether `name` counts as up (a script that is not running counts as up).
    pub fn is_up(&self, name: &str) -> bool {
        self.by_name.get(name).is_none_or(|s| s.tracker.is_up())
    }
}

/// Runs a track script every `interval` for as long as the daemon's loop listens.
fn spawn(sc: &VrrpScript, tx: mpsc::Sender<Event>) -> tokio::task::JoinHandle<()> {
    let (command, name) = (sc.script.clone(), sc.name.clone());
    let (interval, timeout) = (sc.interval, sc.timeout);
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            let out = exec::run(&command, timeout, false).await;
            // Not started for want of the agent's own resources: no result at all.
            if let exec::Outcome::Local(why) = &out {
                tracing::warn!(script = %name, "track script could not run: {why}");
                continue;
            }
            let ok = out.ok();
            if tx.send(Event::Script(name.clone(), ok)).await.is_err() {
                return;
            }
        }
    })
}
