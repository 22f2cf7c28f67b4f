//! E-mail alerts through SMTP (keepalived's `notification_email`, `smtp_server`,
//! `smtp_connect_timeout`): each alert is sent in the background within the configured
//! timeout; a failure is logged and nothing waits for it.

use std::time::Duration;

use lettre::{
    AsyncSmtpTransport, AsyncTransport, Message, Tokio1Executor,
    message::{Mailbox, header::ContentType},
    transport::smtp::extension::ClientId,
};

use crate::config::Mail;

#[derive(Debug, Clone)]
pub struct Mailer {
    from: Mailbox,
    to: Vec<Mailbox>,
    host: String,
    port: u16,
    timeout: Duration,
    /// The EHLO name and the prefix of subjects: `router_id`, or "lb-agent".
    router_id: String,
}

impl Mailer {
    /// From the resolved settings (validation has checked every address).
    pub fn new(m: &Mail) -> Mailer {
        let mailbox = |a: &str| a.parse::<Mailbox>().ok();
        Mailer {
            from: mailbox(&m.from)
                .or_else(|| mailbox("lb-agent@localhost"))
                .expect("a valid literal address"),
            to: m.to.iter().filter_map(|a| mailbox(a)).collect(),
            host: m.host.clone(),
            port: m.port,
            timeout: m.timeout,
            router_id: m.router_id.clone(),
        }
    }

    /// The message as it goes out: subject prefixed with the router id, as keepalived does.
    pub fn message(&self, subject: &str, body: String) -> Result<Message, lettre::error::Error> {
        let mut b = Message::builder()
            .from(self.from.clone())
            .subject(format!("[{}] {subject}", self.router_id))
            .header(ContentType::TEXT_PLAIN);
        for to in &self.to {
            b = b.to(to.clone());
        }
        b.body(body)
    }

    /// Sends in the background (on the current tokio runtime).
    pub fn send(&self, subject: String, body: String) {
        let me = self.clone();
        tokio::spawn(async move {
            if let Err(e) = me.send_now(&subject, body).await {
                tracing::warn!(subject, server = %me.host, error = %e, "e-mail alert not sent");
            } else {
                tracing::info!(subject, "e-mail alert sent");
            }
        });
    }

    /// Sends and waits (bounded by the timeout).
    pub async fn send_now(&self, subject: &str, body: String) -> Result<(), String> {
        let msg = self.message(subject, body).map_err(|e| e.to_string())?;
        let transport = AsyncSmtpTransport::<Tokio1Executor>::builder_dangerous(&self.host)
            .port(self.port)
            .timeout(Some(self.timeout))
            .hello_name(ClientId::Domain(self.router_id.clone()))
            .build();
        match tokio::time::timeout(self.timeout, transport.send(msg)).await {
            Ok(Ok(_)) => Ok(()),
            Ok(Err(e)) => Err(e.to_string()),
            Err(_) => Err(format!("timed out after {:?}", self.timeout)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A real SMTP conversation with a minimal server on loopback: the alert arrives whole.
    #[tokio::test]
    async fn an_alert_reaches_an_smtp_server() {
        use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let server = tokio::spawn(async move {
            let (sock, _) = listener.accept().await.unwrap();
            let (r, mut w) = sock.into_split();
            let mut lines = BufReader::new(r).lines();
            let mut data = String::new();
            let mut in_data = false;
            w.write_all(b"220 test ESMTP\r\n").await.unwrap();
            while let Some(line) = lines.next_line().await.unwrap() {
                if in_data {
                    if line == "." {
                        in_data = false;
                        w.write_all(b"250 queued\r\n").await.unwrap();
                    } else {
                        data.push_str(&line);
                        data.push('\n');
                    }
                    continue;
                }
                let reply: &[u8] = match line.get(..4).unwrap_or("").to_ascii_uppercase().as_str() {
                    "EHLO" | "HELO" => b"250 test\r\n",
                    "DATA" => {
                        in_data = true;
                        b"354 go on\r\n"
                    }
                    "QUIT" => {
                        w.write_all(b"221 bye\r\n").await.unwrap();
                        break;
                    }
                    _ => b"250 ok\r\n",
                };
                w.write_all(reply).await.unwrap();
            }
            data
        });
        let m = Mailer::new(&Mail {
            router_id: "lb1".into(),
            to: vec!["dba@example.com".into()],
            from: "lb@example.com".into(),
            host: "127.0.0.1".into(),
            port,
            timeout: Duration::from_secs(5),
        });
        m.send_now("VRRP_1 is MASTER", "now master".into())
            .await
            .unwrap();
        let data = server.await.unwrap();
        assert!(data.contains("Subject: [lb1] VRRP_1 is MASTER"), "{data}");
        assert!(data.contains("To: dba@example.com"), "{data}");
        assert!(data.contains("now master"), "{data}");
    }

    #[tokio::test]
    async fn an_unreachable_server_fails_within_the_timeout() {
        // A listener that never answers: the greeting never comes.
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let m = Mailer::new(&Mail {
            router_id: "lb-agent".into(),
            to: vec!["dba@example.com".into()],
            from: "lb-agent@localhost".into(),
            host: "127.0.0.1".into(),
            port: listener.local_addr().unwrap().port(),
            timeout: Duration::from_millis(300),
        });
        let started = std::time::Instant::now();
        let r = m.send_now("x", "y".into()).await;
        assert!(r.is_err());
        assert!(started.elapsed() < Duration::from_secs(3));
    }
}
