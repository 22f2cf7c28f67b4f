//! Why a check run failed: the server's fault, or the agent's own. A check that cannot even
//! open its socket or start its command — no descriptor left (`EMFILE`, `ENFILE`), no
//! buffer or memory (`ENOBUFS`, `ENOMEM`), no process (`EAGAIN` at spawn) — says nothing
//! about the server: it is logged as the agent's problem and the server's verdict stands.
//! (A flood of connections to a management port once turned "Too many open files" into
//! "real server down", and the service fell back to its sorry server.)

use std::fmt;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CheckError {
    /// The server failed the check.
    Server(String),
    /// The agent could not run it.
    Local(String),
}

impl fmt::Display for CheckError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            CheckError::Server(m) | CheckError::Local(m) => f.write_str(m),
        }
    }
}

impl From<CheckError> for String {
    fn from(e: CheckError) -> String {
        e.to_string()
    }
}

/// An error of the agent's own resources, not of the peer.
pub fn is_local(e: &std::io::Error) -> bool {
    matches!(
        e.raw_os_error(),
        Some(libc::EMFILE | libc::ENFILE | libc::ENOBUFS | libc::ENOMEM)
    )
}

/// `message` as the server's failure, or the agent's when `e` is local.
pub fn classify(e: &std::io::Error, message: String) -> CheckError {
    if is_local(e) {
        CheckError::Local(message)
    } else {
        CheckError::Server(message)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn descriptor_and_memory_errors_are_the_agents() {
        let e = |n| std::io::Error::from_raw_os_error(n);
        assert!(is_local(&e(libc::EMFILE)) && is_local(&e(libc::ENFILE)));
        assert!(is_local(&e(libc::ENOBUFS)) && is_local(&e(libc::ENOMEM)));
        assert!(!is_local(&e(libc::ECONNREFUSED)) && !is_local(&e(libc::ETIMEDOUT)));
        assert_eq!(
            classify(&e(libc::EMFILE), "x".into()),
            CheckError::Local("x".into())
        );
        let refused = std::io::Error::from(std::io::ErrorKind::ConnectionRefused);
        assert!(matches!(
            classify(&refused, "y".into()),
            CheckError::Server(_)
        ));
    }
}
