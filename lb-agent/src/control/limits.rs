//! What a management listener (the control socket, the metrics endpoint) accepts, so that a
//! flood on it can neither exhaust the agent nor reach its data path: at most
//! `MAX_CONNECTIONS` at once (more are closed at once), a request of at most `MAX_REQUEST`
//! bytes read within a timeout, a pause after an accept error (a full descriptor table
//! would otherwise spin the loop), and errors that quote at most a short prefix of what the
//! client sent.

use std::{sync::Arc, time::Duration};

use tokio::sync::{OwnedSemaphorePermit, Semaphore};

pub const MAX_CONNECTIONS: usize = 64;
/// A control request is a line of JSON; a scrape is a request head.
pub const MAX_REQUEST: u64 = 64 * 1024;
pub const ACCEPT_BACKOFF: Duration = Duration::from_millis(100);
/// Characters of client input an error may quote.
const QUOTED: usize = 64;

/// The connections a listener serves at once.
#[derive(Clone)]
pub struct Slots(Arc<Semaphore>);

impl Slots {
    pub fn new() -> Slots {
        Slots(Arc::new(Semaphore::new(MAX_CONNECTIONS)))
    }

    /// A slot for one more connection, or `None`: the caller closes it at once.
    pub fn take(&self) -> Option<OwnedSemaphorePermit> {
        self.0.clone().try_acquire_owned().ok()
    }
}

impl Default for Slots {
    fn default() -> Self {
        Slots::new()
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

    #[test]
    fn slots_run_out_and_come_back() {
        let s = Slots::new();
        let held: Vec<_> = (0..MAX_CONNECTIONS).map(|_| s.take().unwrap()).collect();
        assert!(s.take().is_none());
        drop(held);
        assert!(s.take().is_some());
    }

    #[test]
    fn long_input_is_quoted_short() {
        assert_eq!(short("mysql-write"), "mysql-write");
        let long = "x".repeat(10_000_000);
        let q = short(&long);
        assert!(q.len() < 100 && q.ends_with("(10000000 bytes)"), "{q}");
    }
}
