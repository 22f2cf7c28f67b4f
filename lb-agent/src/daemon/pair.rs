//! `[pair]`: the writer decision exchanged with the other agent(s) (see
//! `lb_agent::decision`). One UDP socket; a reader task hands each datagram to the daemon's
//! loop; sends are best effort (a lost datagram is repeated within a period). Datagrams
//! from addresses that are not peers, or whose tag does not verify, are dropped and counted.

use std::{
    collections::BTreeMap,
    net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr},
    sync::Arc,
    time::Instant,
};

use anyhow::{Context, Result};
use lb_agent::{
    config::Pair,
    decision::{
        maintenance::MarkSet,
        shared::{Effect, Shared},
        wire,
    },
};
use tokio::sync::mpsc;

/// A datagram and its sender.
pub type Datagram = (Vec<u8>, SocketAddr);

pub struct PairLink {
    pub shared: Shared,
    socket: Arc<tokio::net::UdpSocket>,
    key: Vec<u8>,
    peers: Vec<SocketAddr>,
    reader: tokio::task::JoinHandle<()>,
    /// Dropped datagrams, by reason.
    pub discards: BTreeMap<&'static str, u64>,
    /// Whether the decisions were current at the last look (`Shared::current`), to log
    /// the changes.
    pub was_current: bool,
}

impl Drop for PairLink {
    fn drop(&mut self) {
        self.reader.abort();
    }
}

impl PairLink {
    /// Reads the key, binds the port (on every address: the peers may be reached over any
    /// interface) and starts the reader. `me`: this agent's name in its views.
    pub fn open(cfg: &Pair, me: String, tx: mpsc::Sender<Datagram>) -> Result<PairLink> {
        let key = wire::read_key(&cfg.key_file).map_err(anyhow::Error::msg)?;
        let any: IpAddr = if cfg.peers.iter().all(|p| p.is_ipv4()) {
            Ipv4Addr::UNSPECIFIED.into()
        } else {
            Ipv6Addr::UNSPECIFIED.into()
        };
        let std_socket = std::net::UdpSocket::bind(SocketAddr::new(any, cfg.port))
            .with_context(|| format!("binding the pair's UDP port {}", cfg.port))?;
        std_socket.set_nonblocking(true)?;
        let socket = Arc::new(tokio::net::UdpSocket::from_std(std_socket)?);
        let reader = {
            let socket = socket.clone();
            tokio::spawn(async move {
                let mut buf = vec![0u8; wire::MAX_DATAGRAM + 1];
                loop {
                    match socket.recv_from(&mut buf).await {
                        Ok((n, from)) => {
                            if tx.send((buf[..n].to_vec(), from)).await.is_err() {
                                return;
                            }
                        }
                        // A transient error (ICMP unreachable from a peer that is down):
                        // keep listening, without spinning.
                        Err(_) => tokio::time::sleep(std::time::Duration::from_millis(100)).await,
                    }
                }
            })
        };
        tracing::info!(port = cfg.port, peers = ?cfg.peers, "pair: exchanging the writer decision");
        Ok(PairLink {
            shared: Shared::new(me, Instant::now()),
            socket,
            key,
            peers: cfg.peers.clone(),
            reader,
            discards: BTreeMap::new(),
            was_current: false,
        })
    }

    /// One datagram: verified, decoded, applied; the decisions' effects, and the peer's
    /// maintenance words (for the daemon to merge).
    pub fn receive(
        &mut self,
        now: Instant,
        bytes: &[u8],
        from: SocketAddr,
    ) -> (Vec<Effect>, MarkSet) {
        if !self.peers.iter().any(|p| p.ip() == from.ip()) {
            *self.discards.entry("not_a_peer").or_default() += 1;
            return Default::default();
        }
        match wire::decode(bytes, &self.key) {
            Ok(view) => (self.shared.on_view(now, &view), view.maintenance),
            Err(e) => {
                *self.discards.entry(e.name()).or_default() += 1;
                Default::default()
            }
        }
    }

    /// Sends this agent's view, with its maintenance words, when due; whether it did.
    pub fn send_due(&mut self, now: Instant, maintenance: &MarkSet) -> bool {
        let Some(mut view) = self.shared.poll_send(now) else {
            return false;
        };
        view.maintenance = maintenance.clone();
        let bytes = wire::encode(&view, &self.key);
        for p in &self.peers {
            // Best effort: the next period repeats it.
            let _ = self.socket.try_send_to(&bytes, *p);
        }
        true
    }
}
