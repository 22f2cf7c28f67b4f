//! The operators' maintenance words in the daemon: said here (`lb-agent maintenance`), or
//! heard from the other agent (`[pair]`'s view, `[quorum]`'s keys), and applied to the
//! health state either way (see `lb_agent::decision::maintenance` for the rules).

use std::{collections::HashSet, net::IpAddr, time::Instant};

use anyhow::Result;
use lb_agent::{control::Reply, decision::maintenance::MarkSet};

use super::core::Daemon;

impl Daemon {
    /// `lb-agent maintenance SERVER on|off` to this agent: refused or applied here, then
    /// shared.
    pub(super) async fn on_maintenance_request(
        &mut self,
        server: IpAddr,
        on: bool,
    ) -> Result<Reply> {
        if let Err(e) = self.maintenance.may_say(Instant::now()) {
            return Ok(Reply::Error(e));
        }
        let on_sorry: HashSet<String> = self
            .state
            .services
            .iter()
            .filter(|s| s.using_sorry)
            .map(|s| s.name.clone())
            .collect();
        match self
            .health
            .set_maintenance(&self.cfg, &on_sorry, server, on)
        {
            Ok(said) => {
                tracing::warn!(server = %server, on, "{said}");
                self.maintenance.say(server, on);
                self.share_maintenance();
                self.health_step().await?;
                Ok(Reply::Ok(said))
            }
            Err(e) => Ok(Reply::Error(e)),
        }
    }

    /// Another agent's words: the newer ones are applied here as if said here (the caller
    /// evaluates next).
    pub(super) fn take_maintenance_words(&mut self, theirs: &MarkSet) {
        for (server, on) in self.maintenance.merge(theirs) {
            if let Some(said) = self.health.maintenance_from_peer(server, on) {
                tracing::warn!(server = %server, on, "{said} (said to the other agent)");
            }
        }
    }

    /// Sends this agent's words now: in the pair's next view (at once), or to etcd.
    fn share_maintenance(&mut self) {
        if let Some(p) = &mut self.pair {
            p.shared.send_soon();
            p.send_due(Instant::now(), self.maintenance.all());
        }
        if let Some(q) = &self.quorum {
            q.publish_maintenance(self.maintenance.all());
        }
    }
}
