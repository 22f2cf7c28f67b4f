//! keepalived's `TCP_CHECK`: a connect within `connect_timeout`, tried `retry` times with
//! `delay_before_retry` in between before the check counts as failed.

use std::{net::SocketAddr, time::Duration};

use super::failure::{CheckError, is_local};

pub async fn check(
    addr: SocketAddr,
    timeout: Duration,
    retry: u32,
    delay_before_retry: Duration,
) -> Result<(), CheckError> {
    let mut last = String::new();
    for attempt in 0..retry.max(1) {
        if attempt > 0 {
            tokio::time::sleep(delay_before_retry).await;
        }
        match tokio::time::timeout(timeout, tokio::net::TcpStream::connect(addr)).await {
            Ok(Ok(_)) => return Ok(()),
            // No socket for us: nothing known about the server.
            Ok(Err(e)) if is_local(&e) => {
                return Err(CheckError::Local(format!("connect to {addr}: {e}")));
            }
            Ok(Err(e)) => last = format!("connect to {addr}: {e}"),
            Err(_) => last = format!("no connection to {addr} within {timeout:?}"),
        }
    }
    Err(CheckError::Server(last))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn open_closed_and_retried() {
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let open = l.local_addr().unwrap();
        let t = Duration::from_secs(1);
        assert!(check(open, t, 1, t).await.is_ok());
        // A port bound but not listening refuses, and stays ours: a port freed by dropping
        // the listener could be taken by a parallel test (or connect to itself) meanwhile.
        let bound = tokio::net::TcpSocket::new_v4().unwrap();
        bound.bind("127.0.0.1:0".parse().unwrap()).unwrap();
        let closed = bound.local_addr().unwrap();
        let started = std::time::Instant::now();
        let e = check(closed, t, 3, Duration::from_millis(50))
            .await
            .unwrap_err();
        assert!(e.to_string().contains("refused"), "{e}");
        // Three attempts, two pauses.
        assert!(started.elapsed() >= Duration::from_millis(100));
    }
}
