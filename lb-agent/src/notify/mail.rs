//! E-mail alerts through SMTP (keepalived's `notification_email`, `smtp_server`,
//! `smtp_connect_timeout`): each alert is sent in the background within the configured
//! timeout; a failure is logged and nothing waits for it.

use std::time::Duration;

use lettre::{
    AsyncSmtpTransport, AsyncTransport, Message, Tokio1Executor,
    message::{Mailbox, header::ContentType},
    transport::smtp::extension::ClientId,
};

use crate::config::Global;

/// keepalived's default `smtp_connect_timeout`.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(30);

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

/// `host` or `host:port` (25 when omitted); `[v6]:port` for an IPv6 literal with a port.
pub fn parse_server(s: &str) -> Result<(String, u16), String> {
    let bad = || format!("smtp_server {s:?}: expected HOST or HOST:PORT");
    if let Some(rest) = s.strip_prefix('[') {
        let (host, port) = rest.split_once("]:").ok_or_else(bad)?;
        return Ok((host.to_string(), port.parse().map_err(|_| bad())?));
    }
    match s.rsplit_once(':') {
        // More than one ':' is a bare IPv6 literal.
        Some((host, port)) if !host.contains(':') => {
            Ok((host.to_string(), port.parse().map_err(|_| bad())?))
        }
        _ if s.is_empty() => Err(bad()),
        _ => Ok((s.to_string(), 25)),
    }
}

/// Checks the e-mail settings of `global` (used by the configuration's validation).
pub fn check(g: &Global) -> Result<(), (String, String)> {
    for a in &g.notification_email {
        a.parse::<Mailbox>().map_err(|e| {
            (
                "notification_email".to_string(),
                format!("{a:?} is not an e-mail address: {e}"),
            )
        })?;
    }
    if let Some(f) = &g.notification_email_from {
        f.parse::<Mailbox>().map_err(|e| {
            (
                "notification_email_from".to_string(),
                format!("{f:?} is not an e-mail address: {e}"),
            )
        })?;
    }
    if let Some(s) = &g.smtp_server {
        parse_server(s).map_err(|m| ("smtp_server".to_string(), m))?;
    }
    if !g.notification_email.is_empty() && g.smtp_server.is_none() {
        return Err((
            "smtp_server".into(),
            "notification_email needs an smtp_server to send through".into(),
        ));
    }
    Ok(())
}

impl Mailer {
    /// `None` when no recipient or no server is configured (validation has checked the rest).
    pub fn from_config(g: &Global) -> Option<Mailer> {
        let (host, port) = parse_server(g.smtp_server.as_deref()?).ok()?;
        let to: Vec<Mailbox> = g
            .notification_email
            .iter()
            .filter_map(|a| a.parse().ok())
            .collect();
        if to.is_empty() {
            return None;
        }
        let router_id = g.router_id.clone().unwrap_or_else(|| "lb-agent".into());
        let from = g
            .notification_email_from
            .as_deref()
            .and_then(|f| f.parse().ok())
            .or_else(|| format!("lb-agent@{router_id}").parse().ok())
            .or_else(|| "lb-agent@localhost".parse().ok())?;
        Some(Mailer {
            from,
            to,
            host,
            port,
            timeout: g
                .smtp_connect_timeout
                .map(|t| t.0)
                .unwrap_or(DEFAULT_TIMEOUT),
            router_id,
        })
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

    #[test]
    fn server_forms() {
        assert_eq!(parse_server("mail"), Ok(("mail".into(), 25)));
        assert_eq!(parse_server("10.0.0.1:2525"), Ok(("10.0.0.1".into(), 2525)));
        assert_eq!(parse_server("[::1]:2525"), Ok(("::1".into(), 2525)));
        assert_eq!(parse_server("::1"), Ok(("::1".into(), 25)));
        assert!(parse_server("mail:x").is_err());
        assert!(parse_server("").is_err());
    }

    #[test]
    fn bad_addresses_are_refused_and_recipients_need_a_server() {
        let mut g = Global {
            notification_email: vec!["dba@example.com".into()],
            smtp_server: Some("127.0.0.1".into()),
            ..Global::default()
        };
        assert!(check(&g).is_ok());
        g.notification_email.push("not an address".into());
        assert!(check(&g).is_err());
        g.notification_email.pop();
        g.smtp_server = None;
        assert!(check(&g).is_err());
    }

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
        let g = Global {
            router_id: Some("lb1".into()),
            notification_email: vec!["dba@example.com".into()],
            notification_email_from: Some("lb@example.com".into()),
            smtp_server: Some(format!("127.0.0.1:{port}")),
            smtp_connect_timeout: Some(crate::config::DurationStr(Duration::from_secs(5))),
            ..Global::default()
        };
        let m = Mailer::from_config(&g).unwrap();
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
        let g = Global {
            notification_email: vec!["dba@example.com".into()],
            smtp_server: Some(format!(
                "127.0.0.1:{}",
                listener.local_addr().unwrap().port()
            )),
            smtp_connect_timeout: Some(crate::config::DurationStr(Duration::from_millis(300))),
            ..Global::default()
        };
        let started = std::time::Instant::now();
        let r = Mailer::from_config(&g)
            .unwrap()
            .send_now("x", "y".into())
            .await;
        assert!(r.is_err());
        assert!(started.elapsed() < Duration::from_secs(3));
    }
}
