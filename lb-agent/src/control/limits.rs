//! What a management listener (the control socket, the metrics endpoint) accepts, so that a
//! flood on it can neither exhaust the agent nor lock out its operators: at most
//! `MAX_WAITING` connections waiting for their request — a new one pushes out the oldest that
//! still has not sent one (an idle flood evicts itself, while a client that sends its request
//! at once is served) —, a request of at most `MAX_REQUEST` bytes within a timeout, a pause
//! after an accept error (a full descriptor table would otherwise spin the loop), and errors
//! that quote at most a short prefix of what the client sent.

use std::{
    collections::VecDeque,
    sync::{
        Arc, Mutex,
        atomic::{AtomicU64, Ordering},
    },
    time::Duration,
};

use tokio::task::AbortHandle;

pub const MAX_WAITING: usize = 64;
/// A control request is a line of JSON; a scrape is a request head.
pub const MAX_REQUEST: u64 = 64 * 1024;
pub const ACCEPT_BACKOFF: Duration = Duration::from_millis(100);
/// Characters of client input an error may quote.
const QUOTED: usize = 64;

/// Connections pushed out while waiting for their request, per listener, since start.
pub static EVICTED_CONTROL: AtomicU64 = AtomicU64::new(0);
pub static EVICTED_METRICS: AtomicU64 = AtomicU64::new(0);

/// The connections of one listener still waiting for their request, oldest first.
#[derive(Clone)]
pub struct Waiting {
    queue: Arc<Mutex<VecDeque<(u64, AbortHandle)>>>,
    next: Arc<AtomicU64>,
    evicted: &'static AtomicU64,
}

impl Waiting {
    pub fn new(evicted: &'static AtomicU64) -> Waiting {
        Waiting {
            queue: Arc::default(),
            next: Arc::default(),
            evicted,
        }
    }

    /// The id a connection's task will report with (`received`).
    pub fn next_id(&self) -> u64 {
        self.next.fetch_add(1, Ordering::Relaxed)
    }

    /// A new connection's task (`id`) waits for its request; with `MAX_WAITING` waiting
    /// already, the oldest is aborted (its socket closes as its task drops). Then gives the
    /// runtime a turn when one was aborted: the aborted task is dropped — its descriptor
    /// freed — before the next accept. (Without it, a burst of accepts, up to tokio's
    /// budget of 128 without a yield, held that many evicted sockets at once; under a
    /// 256-descriptor limit the accepts then failed with EMFILE and paused, and `status`
    /// took 1.8 s instead of milliseconds.)
    pub async fn admit(&self, id: u64, task: AbortHandle) {
        let evicted = {
            let mut q = self.queue.lock().unwrap_or_else(|e| e.into_inner());
            let oldest = (q.len() >= MAX_WAITING).then(|| q.pop_front()).flatten();
            q.push_back((id, task));
            oldest
        };
        if let Some((_, oldest)) = evicted {
            oldest.abort();
            self.evicted.fetch_add(1, Ordering::Relaxed);
            tokio::task::yield_now().await;
        }
    }

    /// Connection `id` has its request (or is done): no longer evictable.
    pub fn received(&self, id: u64) {
        let mut q = self.queue.lock().unwrap_or_else(|e| e.into_inner());
        q.retain(|(i, _)| *i != id);
    }
}

/// `text` cut to a short prefix (client input in an error).
pub fn short(text: &str) -> String {
    match text.char_indices().nth(QUOTED) {
        Some((i, _)) => format!("{}… ({} bytes)", &text[..i], text.len()),
        None => text.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn the_oldest_waiting_connection_makes_room() {
        static EVICTED: AtomicU64 = AtomicU64::new(0);
        let w = Waiting::new(&EVICTED);
        let mut tasks = Vec::new();
        for _ in 0..MAX_WAITING + 3 {
            let id = w.next_id();
            let t = tokio::spawn(std::future::pending::<()>());
            w.admit(id, t.abort_handle()).await;
            tasks.push(t);
        }
        assert_eq!(EVICTED.load(Ordering::Relaxed), 3);
        for t in tasks.drain(..3) {
            assert!(t.await.unwrap_err().is_cancelled(), "the oldest three went");
        }
        // One that got its request is never evicted.
        w.received(3);
        for _ in 0..MAX_WAITING {
            let id = w.next_id();
            w.admit(
                id,
                tokio::spawn(std::future::pending::<()>()).abort_handle(),
            )
            .await;
        }
        tokio::task::yield_now().await;
        assert!(!tasks[0].is_finished(), "received: kept");
        assert!(tasks[1].is_finished(), "still waiting: evicted");
    }

    #[test]
    fn long_input_is_quoted_short() {
        assert_eq!(short("mysql-write"), "mysql-write");
        let long = "x".repeat(10_000_000);
        let q = short(&long);
        assert!(q.len() < 100 && q.ends_with("(10000000 bytes)"), "{q}");
    }
}
