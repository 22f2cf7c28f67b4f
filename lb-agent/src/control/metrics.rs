//! The Prometheus endpoint (`global.metrics_listen`): the figures of `lb-agent status`, in the
//! OpenMetrics text format, under conventional names. Each scrape asks the main loop for a
//! fresh status, like `lb-agent status` does.

use std::{collections::BTreeMap, convert::Infallible, net::SocketAddr, sync::Arc, time::Duration};

use anyhow::{Context, Result};
use http_body_util::Full;
use hyper::{
    Method, StatusCode,
    body::{Bytes, Incoming},
    header,
    server::conn::http1,
    service::service_fn,
};
use hyper_util::rt::{TokioIo, TokioTimer};
use prometheus_client::{
    encoding::text::encode,
    metrics::{counter::Counter, family::Family, gauge::Gauge},
    registry::Registry,
};
use tokio::{
    net::TcpListener,
    sync::{mpsc, oneshot},
};

use super::{
    Pending, Reply, Request,
    status::{RealState, Status},
};
use crate::{health::verdict::CheckHealth, vrrp::status::StateName};

type Labels = Vec<(String, String)>;

/// The OpenMetrics text of a status.
pub fn encode_status(s: &Status) -> String {
    let mut reg = Registry::with_prefix("lb");
    services(&mut reg, s);
    xdp_passes(&mut reg, s);
    vrrp(&mut reg, s);
    stalls(&mut reg, s);
    quorum(&mut reg, s);
    let mut out = String::new();
    encode(&mut out, &reg).expect("writing to a String");
    out
}

fn counter(reg: &mut Registry, name: &str, help: &str) -> Family<Labels, Counter> {
    let f = Family::<Labels, Counter>::default();
    reg.register(name, help, f.clone());
    f
}

fn gauge(reg: &mut Registry, name: &str, help: &str) -> Family<Labels, Gauge> {
    let f = Family::<Labels, Gauge>::default();
    reg.register(name, help, f.clone());
    f
}

/// Per service, and per real server.
fn services(reg: &mut Registry, s: &Status) {
    let packets = counter(
        reg,
        "service_packets",
        "Frames of the service forwarded or passed to a local real server",
    );
    let bytes = counter(reg, "service_bytes", "Bytes of those frames");
    let flows = counter(
        reg,
        "service_new_flows",
        "Flows that took a new scheduling decision",
    );
    let passed = counter(
        reg,
        "service_passed",
        "Frames of the service passed to the kernel, by reason",
    );
    let active = gauge(
        reg,
        "service_active",
        "1 when this host forwards for the service",
    );
    let sorry = gauge(
        reg,
        "service_sorry_server_in_use",
        "1 when the sorry server has the traffic",
    );
    let real_up = gauge(
        reg,
        "real_server_up",
        "1 when the real server is in the service's pool",
    );
    let real_healthy = gauge(
        reg,
        "real_server_healthy",
        "1 when the real server passes its health check and role (or has no check)",
    );
    let evicted = counter(
        reg,
        "management_connections_evicted",
        "Connections to a management listener closed while still waiting for their request, to make room (a flood), by listener",
    );
    for (listener, n) in [
        ("control", &super::limits::EVICTED_CONTROL),
        ("metrics", &super::limits::EVICTED_METRICS),
    ] {
        evicted
            .get_or_create(&vec![("listener".into(), listener.into())])
            .inc_by(n.load(std::sync::atomic::Ordering::Relaxed));
    }
    let at_risk = counter(
        reg,
        "writer_changes_at_risk",
        "Writer changes that may have lost transactions (asynchronous replication, an old writer that does not answer, a failback without caught-up)",
    );
    let replica_following = gauge(
        reg,
        "replica_following",
        "A replica of the service: 1 replicates from the server that has the writes, 0 on its way (re-pointed, waiting), -1 cannot follow (out of the read pool, automation stopped for it)",
    );
    let semisync_active = gauge(
        reg,
        "mysql_semisync_active",
        "1 when the server, as a primary, has semi-synchronous replication in effect (0: off or fallen back to asynchronous)",
    );
    let semisync_clients = gauge(
        reg,
        "mysql_semisync_clients",
        "Replicas acknowledging the server's transactions semi-synchronously",
    );
    let real_packets = counter(reg, "real_server_packets", "Frames sent to the real server");
    let real_bytes = counter(reg, "real_server_bytes", "Bytes sent to the real server");
    let real_flows = counter(
        reg,
        "real_server_new_flows",
        "New flows scheduled to the real server",
    );

    let mut reals = BTreeMap::new();
    for svc in &s.services {
        let l: Labels = vec![
            ("service".into(), svc.name.clone()),
            ("vip".into(), svc.address.to_string()),
            ("port".into(), svc.port.to_string()),
            ("protocol".into(), svc.protocol.clone()),
        ];
        packets.get_or_create(&l).inc_by(svc.packets);
        bytes.get_or_create(&l).inc_by(svc.bytes);
        flows.get_or_create(&l).inc_by(svc.new_flows);
        for (reason, n) in [
            ("local_real", svc.passed_local),
            ("inactive", svc.passed_inactive),
            ("from_peer", svc.passed_peer),
            ("no_real", svc.no_real),
        ] {
            let mut lr = l.clone();
            lr.push(("reason".into(), reason.into()));
            passed.get_or_create(&lr).inc_by(n);
        }
        active.get_or_create(&l).set(svc.active as i64);
        sorry.get_or_create(&l).set(svc.using_sorry_server as i64);
        at_risk
            .get_or_create(&vec![("service".into(), svc.name.clone())])
            .inc_by(svc.writer_risks);
        for r in &svc.replicas {
            replica_following
                .get_or_create(&vec![
                    ("service".into(), svc.name.clone()),
                    ("replica".into(), r.address.to_string()),
                ])
                .set(match r.phase.as_str() {
                    "following" => 1,
                    "cannot-follow" => -1,
                    _ => 0,
                });
        }
        for r in &svc.real_servers {
            let lr: Labels = vec![
                ("service".into(), svc.name.clone()),
                ("real".into(), r.address.to_string()),
            ];
            real_up
                .get_or_create(&lr)
                .set(matches!(r.state, RealState::Up | RealState::Local | RealState::Sorry) as i64);
            real_healthy
                .get_or_create(&lr)
                .set((r.health != CheckHealth::Down && r.reason.is_none()) as i64);
            reals.insert(r.address, (r.packets, r.bytes, r.new_flows));
            if let Some(ss) = &r.semisync {
                let l: Labels = vec![("real".into(), r.address.to_string())];
                semisync_active
                    .get_or_create(&l)
                    .set((ss.enabled && ss.active) as i64);
                semisync_clients.get_or_create(&l).set(ss.clients as i64);
            }
        }
    }
    // Real server counters are per server, whatever services share it.
    for (addr, (p, b, f)) in reals {
        let l: Labels = vec![("real".into(), addr.to_string())];
        real_packets.get_or_create(&l).inc_by(p);
        real_bytes.get_or_create(&l).inc_by(b);
        real_flows.get_or_create(&l).inc_by(f);
    }
}

/// The agent's loop standing still (see `status.loop_stalls`).
fn stalls(reg: &mut Registry, s: &Status) {
    let stalls: Counter = Counter::default();
    reg.register(
        "main_loop_stalls",
        "Times the agent's loop stood still longer than an advert interval",
        stalls.clone(),
    );
    stalls.inc_by(s.loop_stalls);
    let longest: Gauge<f64, std::sync::atomic::AtomicU64> = Gauge::default();
    reg.register(
        "main_loop_longest_stall_seconds",
        "The longest such stall since the agent started",
        longest.clone(),
    );
    longest.set(s.longest_stall_ms as f64 / 1000.0);
}

/// The quorum (`[quorum]` only).
fn quorum(reg: &mut Registry, s: &Status) {
    let Some(q) = &s.quorum else {
        return;
    };
    let connected: Gauge = Gauge::default();
    reg.register(
        "quorum_connected",
        "1 while the agent's rounds with etcd succeed (its data plane follows the committed decisions)",
        connected.clone(),
    );
    connected.set(q.connected as i64);
    let leads: Gauge = Gauge::default();
    reg.register(
        "quorum_leader",
        "1 while this agent holds the leader key (it decides)",
        leads.clone(),
    );
    leads.set(q.this_agent_leads as i64);
    let since: Gauge<f64, std::sync::atomic::AtomicU64> = Gauge::default();
    reg.register(
        "quorum_seconds_since_renewal",
        "Since the last good round with etcd was sent",
        since.clone(),
    );
    since.set(
        q.since_renewal_ms
            .map_or(f64::INFINITY, |ms| ms as f64 / 1000.0),
    );
    let failed: Counter = Counter::default();
    reg.register(
        "quorum_rounds_failed",
        "Rounds with etcd that failed",
        failed.clone(),
    );
    failed.inc_by(q.failed_rounds);
    let epoch = gauge(
        reg,
        "writer_epoch",
        "The committed epoch of a shared writer decision",
    );
    for (service, e) in &q.epochs {
        epoch
            .get_or_create(&vec![("service".into(), service.clone())])
            .set(*e as i64);
    }
}

/// `XDP_PASS` counts by reason.
fn xdp_passes(reg: &mut Registry, s: &Status) {
    let xdp_passed = counter(
        reg,
        "xdp_passed",
        "Frames the XDP program passed to the kernel, by reason",
    );
    for (reason, n) in &s.passes {
        xdp_passed
            .get_or_create(&vec![("reason".into(), reason.clone())])
            .inc_by(*n);
    }
}

/// Per VRRP instance.
fn vrrp(reg: &mut Registry, s: &Status) {
    let vrrp_master = gauge(
        reg,
        "vrrp_master",
        "1 when the VRRP instance is master here",
    );
    let vrrp_priority = gauge(reg, "vrrp_priority", "The VRRP instance's current priority");
    let vrrp_sent = counter(reg, "vrrp_adverts_sent", "VRRP adverts sent");
    let vrrp_received = counter(
        reg,
        "vrrp_adverts_received",
        "VRRP adverts received and accepted",
    );
    let vrrp_became_master = counter(reg, "vrrp_became_master", "Transitions to master");
    let vrrp_discards = counter(reg, "vrrp_discards", "VRRP adverts discarded, by reason");

    for r in &s.vrrp {
        let l: Labels = vec![("instance".into(), r.name.clone())];
        vrrp_master
            .get_or_create(&l)
            .set((r.state == StateName::Master) as i64);
        vrrp_priority.get_or_create(&l).set(r.priority as i64);
        vrrp_sent.get_or_create(&l).inc_by(r.adverts_sent);
        vrrp_received.get_or_create(&l).inc_by(r.adverts_received);
        vrrp_became_master.get_or_create(&l).inc_by(r.became_master);
        for (reason, n) in &r.discards {
            let mut lr = l.clone();
            lr.push(("reason".into(), reason.clone()));
            vrrp_discards.get_or_create(&lr).inc_by(*n);
        }
    }
}

/// Serves `GET` and `HEAD /metrics` on `addr` with hyper's HTTP/1 server (anything else:
/// 404 or 405), one request per connection, its head within 5 s. With `token` (the
/// contents of `metrics_token_file`), only requests with `Authorization: Bearer <token>`
/// (Prometheus: `authorization: { credentials_file: … }`) are answered; others get 401.
///
/// hyper rather than the hand-written handler of before: HTTP/1 parsing (pipelining,
/// partial heads, `HEAD`, chunked bodies sent to a GET) is where hand-written servers go
/// wrong, and hyper is already in the build through etcd's gRPC client.
pub async fn serve(
    addr: SocketAddr,
    token: Option<String>,
    tx: mpsc::Sender<Pending>,
) -> Result<()> {
    let listener = TcpListener::bind(addr)
        .await
        .with_context(|| format!("binding metrics_listen {addr}"))?;
    let waiting = super::limits::Waiting::new(&super::limits::EVICTED_METRICS);
    let token = Arc::new(token);
    tokio::spawn(async move {
        loop {
            let stream = match listener.accept().await {
                Ok((stream, _)) => stream,
                Err(e) => {
                    tracing::warn!(error = %e, "metrics endpoint: accept failed; pausing");
                    tokio::time::sleep(super::limits::ACCEPT_BACKOFF).await;
                    continue;
                }
            };
            let (tx, token) = (tx.clone(), token.clone());
            let (id, queue) = (waiting.next_id(), waiting.clone());
            let task = tokio::spawn(async move {
                let service = service_fn(move |req| {
                    // A whole request head arrived: this connection no longer waits.
                    queue.received(id);
                    answer(req, tx.clone(), token.clone())
                });
                let conn = http1::Builder::new()
                    .timer(TokioTimer::new())
                    .header_read_timeout(Duration::from_secs(5))
                    .max_buf_size(8192)
                    .keep_alive(false)
                    .serve_connection(TokioIo::new(stream), service);
                // A slow reader of the answer is cut off too.
                let _ = tokio::time::timeout(Duration::from_secs(30), conn).await;
            });
            // Before the task first runs (one thread): it cannot have finished yet.
            waiting.admit(id, task.abort_handle()).await;
        }
    });
    Ok(())
}

type Answer = hyper::Response<Full<Bytes>>;

fn text(code: StatusCode, body: &'static str) -> Answer {
    let mut r = hyper::Response::new(Full::new(Bytes::from_static(body.as_bytes())));
    *r.status_mut() = code;
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    r
}

/// One request: the path and method, the token, then a fresh status from the main loop.
async fn answer(
    req: hyper::Request<Incoming>,
    tx: mpsc::Sender<Pending>,
    token: Arc<Option<String>>,
) -> Result<Answer, Infallible> {
    if req.uri().path() != "/metrics" {
        return Ok(text(StatusCode::NOT_FOUND, "try /metrics\n"));
    }
    if req.method() != Method::GET && req.method() != Method::HEAD {
        let mut r = text(StatusCode::METHOD_NOT_ALLOWED, "GET or HEAD\n");
        r.headers_mut()
            .insert(header::ALLOW, header::HeaderValue::from_static("GET, HEAD"));
        return Ok(r);
    }
    if let Some(want) = token.as_deref() {
        let given = req
            .headers()
            .get(header::AUTHORIZATION)
            .and_then(|v| v.as_bytes().strip_prefix(b"Bearer "));
        if !given.is_some_and(|g| same_secret(g, want.as_bytes())) {
            let mut r = text(StatusCode::UNAUTHORIZED, "a bearer token is required\n");
            r.headers_mut().insert(
                header::WWW_AUTHENTICATE,
                header::HeaderValue::from_static("Bearer realm=\"lb-agent\""),
            );
            return Ok(r);
        }
    }
    let (otx, orx) = oneshot::channel();
    let status = match tx.send((Request::Status, otx)).await {
        Ok(()) => orx.await.ok(),
        Err(_) => None,
    };
    let Some(Reply::Status(s)) = status else {
        return Ok(text(
            StatusCode::SERVICE_UNAVAILABLE,
            "status unavailable\n",
        ));
    };
    // hyper sends the headers of a HEAD answer (its length included) without the body.
    let mut r = hyper::Response::new(Full::new(Bytes::from(encode_status(&s))));
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static(
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        ),
    );
    Ok(r)
}

/// Compares a presented secret with the configured one in time that does not depend on
/// where they differ.
fn same_secret(given: &[u8], want: &[u8]) -> bool {
    given.len() == want.len() && given.iter().zip(want).fold(0u8, |d, (a, b)| d | (a ^ b)) == 0
}

/// Reads `metrics_token_file` (the secret-file rules of `crate::secret`): its first line.
pub fn read_token(path: &std::path::Path) -> Result<String, String> {
    let bytes = crate::secret::read(path, "metrics token file")?;
    let text = String::from_utf8(bytes)
        .map_err(|_| format!("metrics token file {}: not UTF-8", path.display()))?;
    let token = text.lines().next().unwrap_or_default().trim().to_string();
    if token.is_empty() {
        return Err(format!("metrics token file {}: empty", path.display()));
    }
    Ok(token)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secrets_compare_whole() {
        assert!(same_secret(b"s3cret", b"s3cret"));
        assert!(!same_secret(b"s3cre", b"s3cret"));
        assert!(!same_secret(b"s3creT", b"s3cret"));
        assert!(!same_secret(b"", b"s3cret"));
    }
    use crate::{control::status::Status, vrrp::status::RouterStatus};

    /// The endpoint over real TCP on loopback: methods, paths, HEAD, the bearer token.
    #[tokio::test(flavor = "current_thread")]
    async fn scrapes_heads_and_tokens() {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        // A free port, taken back by the endpoint.
        let addr = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap();
        let (tx, mut rx) = mpsc::channel::<Pending>(4);
        tokio::spawn(async move {
            while let Some((_, reply)) = rx.recv().await {
                let s = Status {
                    interface: "eth0".into(),
                    attach_mode: "skb".into(),
                    services: vec![],
                    passes: vec![],
                    learned_peers: vec![],
                    loop_stalls: 0,
                    longest_stall_ms: 0,
                    quorum: None,
                    vrrp: vec![],
                };
                let _ = reply.send(Reply::Status(Box::new(s)));
            }
        });
        serve(addr, Some("t0ken".into()), tx).await.unwrap();
        let ask = |head: &'static str| async move {
            let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
            s.write_all(head.as_bytes()).await.unwrap();
            let mut out = String::new();
            tokio::time::timeout(Duration::from_secs(5), s.read_to_string(&mut out))
                .await
                .unwrap()
                .unwrap();
            out
        };
        let ok =
            ask("GET /metrics HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer t0ken\r\n\r\n").await;
        assert!(ok.starts_with("HTTP/1.1 200"), "{ok}");
        assert!(
            ok.contains("openmetrics-text") && ok.ends_with("# EOF\n"),
            "{ok}"
        );
        let head =
            ask("HEAD /metrics HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer t0ken\r\n\r\n").await;
        assert!(head.starts_with("HTTP/1.1 200"), "{head}");
        assert!(
            head.to_ascii_lowercase().contains("content-length:"),
            "{head}"
        );
        assert!(head.ends_with("\r\n\r\n"), "HEAD has no body: {head}");
        for (req, code) in [
            ("GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n", "401"),
            (
                "GET /metrics HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer t0kem\r\n\r\n",
                "401",
            ),
            ("GET / HTTP/1.1\r\nHost: x\r\n\r\n", "404"),
            (
                "POST /metrics HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n\r\n",
                "405",
            ),
            ("garbage\r\n\r\n", "400"),
        ] {
            let out = ask(req).await;
            assert!(
                out.starts_with(&format!("HTTP/1.1 {code}")),
                "{req:?}: {out}"
            );
        }
    }

    /// `configs/grafana/lb-agent.json` asks only for metrics the agent exports (under the
    /// names a scrape shows: counters with `_total`), and covers what an operator watches.
    #[test]
    fn grafana_dashboard_uses_exported_metrics() {
        let dashboard: serde_json::Value =
            serde_json::from_str(include_str!("../../../configs/grafana/lb-agent.json")).unwrap();
        // Every family the agent registers, from a status with every part present.
        let text = encode_status(&every_part());
        let exported: std::collections::BTreeSet<String> = text
            .lines()
            .filter_map(|l| l.strip_prefix("# TYPE "))
            .filter_map(|l| {
                let (name, kind) = l.split_once(' ')?;
                Some(if kind == "counter" {
                    format!("{name}_total")
                } else {
                    name.to_string()
                })
            })
            .collect();
        let mut exprs = Vec::new();
        fn walk(v: &serde_json::Value, out: &mut Vec<String>) {
            match v {
                serde_json::Value::Object(m) => {
                    for (k, v) in m {
                        match (k.as_str(), v.as_str()) {
                            ("expr" | "query", Some(e)) => out.push(e.to_string()),
                            _ => walk(v, out),
                        }
                    }
                }
                serde_json::Value::Array(a) => a.iter().for_each(|v| walk(v, out)),
                _ => {}
            }
        }
        walk(&dashboard, &mut exprs);
        let mut used = std::collections::BTreeSet::new();
        for e in &exprs {
            let mut rest = e.as_str();
            while let Some(i) = rest.find("lb_") {
                let name: String = rest[i..]
                    .chars()
                    .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                    .collect();
                rest = &rest[i + name.len()..];
                used.insert(name);
            }
        }
        let unknown: Vec<&String> = used.iter().filter(|n| !exported.contains(*n)).collect();
        assert!(
            unknown.is_empty(),
            "not exported: {unknown:?}\nexported: {exported:?}"
        );
        for topic in [
            "lb_service_packets_total",
            "lb_service_sorry_server_in_use",
            "lb_real_server_healthy",
            "lb_vrrp_master",
            "lb_writer_epoch",
            "lb_writer_changes_at_risk_total",
            "lb_service_passed_total",
            "lb_xdp_passed_total",
            "lb_quorum_connected",
        ] {
            assert!(used.contains(topic), "the dashboard does not show {topic}");
        }
    }

    /// A status with every part present (a family without samples is not exported): a
    /// service with a real server, a replica and a writer risk, pass reasons, a VRRP instance with a
    /// discard, the quorum with an epoch.
    fn every_part() -> Status {
        serde_json::from_value(serde_json::json!({
            "interface": "eth0",
            "attach_mode": "skb",
            "passes": [["not_ip", 1]],
            "learned_peers": [],
            "loop_stalls": 1,
            "longest_stall_ms": 10,
            "services": [{
                "name": "mysql-write", "address": "10.1.1.176", "port": 3306,
                "protocol": "tcp", "active": true, "using_sorry_server": false,
                "writes_held": false, "held": 0, "packets": 1, "bytes": 1, "new_flows": 1,
                "passed_local": 1, "passed_inactive": 1, "passed_peer": 1, "no_real": 1,
                "failback": "caught-up", "writer_risks": 1,
                "replicas": [{"address": "10.1.1.121", "phase": "following"}],
                "real_servers": [{
                    "address": "10.1.1.113", "weight": 1, "state": "up", "health": "up",
                    "mac": "02:00:00:00:00:01", "packets": 1, "bytes": 1, "new_flows": 1
                }]
            }],
            "vrrp": [{
                "addresses": [], "name": "VI_1", "state": "master", "master": null,
                "priority": 100, "adverts_received": 1, "adverts_sent": 1,
                "became_master": 1, "discards": [["auth_failure", 1]]
            }],
            "quorum": {"connected": true, "this_agent_leads": true, "epochs": [["mysql-write", 3]], "rounds": 1, "failed_rounds": 0, "self_fenced": []}
        }))
        .unwrap()
    }

    #[test]
    fn vrrp_figures_are_exported() {
        let s = Status {
            interface: "eth0".into(),
            attach_mode: "driver".into(),
            services: vec![],
            passes: vec![("not_ip".into(), 3)],
            learned_peers: vec![],
            loop_stalls: 2,
            longest_stall_ms: 6_000,
            quorum: Some(crate::control::status::QuorumStatus {
                connected: true,
                this_agent_leads: true,
                since_renewal_ms: Some(400),
                epochs: vec![("mysql-write".into(), 7)],
                failed_rounds: 3,
                ..Default::default()
            }),
            vrrp: vec![RouterStatus {
                addresses: vec![],
                name: "VI_1".into(),
                state: StateName::Master,
                master: None,
                priority: 180,
                adverts_received: 2,
                adverts_sent: 40,
                became_master: 1,
                discards: vec![("auth_failure".into(), 5)],
            }],
        };
        let text = encode_status(&s);
        for line in [
            "lb_vrrp_master{instance=\"VI_1\"} 1",
            "lb_vrrp_priority{instance=\"VI_1\"} 180",
            "lb_vrrp_adverts_sent_total{instance=\"VI_1\"} 40",
            "lb_vrrp_discards_total{instance=\"VI_1\",reason=\"auth_failure\"} 5",
            "lb_xdp_passed_total{reason=\"not_ip\"} 3",
            "lb_main_loop_stalls_total 2",
            "lb_quorum_connected 1",
            "lb_quorum_leader 1",
            "lb_quorum_seconds_since_renewal 0.4",
            "lb_quorum_rounds_failed_total 3",
            "lb_writer_epoch{service=\"mysql-write\"} 7",
            "lb_main_loop_longest_stall_seconds 6.0",
        ] {
            assert!(
                text.lines().any(|l| l == line),
                "missing {line:?} in:\n{text}"
            );
        }
    }
}
