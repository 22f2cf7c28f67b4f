//! A MySQL client in a lab namespace, for tests that fail things over underneath it: a writer
//! that commits one transaction every 10 ms through a VIP (a row with a unique id and
//! `@@server_id`, and an increment of one counter row) and records what was acknowledged and
//! by which server; and a reader that asks a VIP which server answers.
//!
//! Whenever writes come back to server 1 after server 2 took some, the writer asks server 1
//! directly whether it holds all of server 2's acknowledged writes: a "violation" when not.
//! Tables: `app.w (id BIGINT PRIMARY KEY, server INT)`, `app.c (k INT PRIMARY KEY, n BIGINT)`.

use std::{
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, Ordering},
    },
    time::{Duration, Instant},
};

use mysql_async::prelude::Queryable;

use super::{
    Lab,
    mariadb::{APP_PASSWORD, APP_USER, Db},
};

/// The schema the writer needs, created on `db` (replication carries it to the other).
pub fn create_schema(db: &Db) {
    db.sql(
        "CREATE DATABASE app;
         CREATE TABLE app.w (id BIGINT PRIMARY KEY, server INT NOT NULL);
         CREATE TABLE app.c (k INT PRIMARY KEY, n BIGINT NOT NULL);
         INSERT INTO app.c VALUES (1, 0);",
    );
}

/// One acknowledged write.
#[derive(Debug, Clone, Copy)]
pub struct Acked {
    pub id: u64,
    pub server: u32,
    pub at: Instant,
}

#[derive(Default)]
pub struct Log {
    pub acked: Mutex<Vec<Acked>>,
    /// Writes that came back to server 1 while it lacked some of server 2's acknowledged
    /// writes.
    pub violations: Mutex<Vec<String>>,
    /// (when, which server answered) for every read that succeeded.
    pub reads: Mutex<Vec<(Instant, u32)>>,
    /// (when, which server) for every write attempt that reached a server, acknowledged or
    /// not (a read-only sorry server refuses, but was reached).
    pub reached: Mutex<Vec<(Instant, u32)>>,
    pub stop: AtomicBool,
    /// Writers wait (no write in flight once `paused` is seen) until it is cleared.
    pub pause: AtomicBool,
    /// How many writers see `pause` now.
    pub paused: std::sync::atomic::AtomicUsize,
}

impl Log {
    /// When `server` first acknowledged a write after `after`.
    pub fn first_on(&self, server: u32, after: Instant) -> Option<Instant> {
        self.acked
            .lock()
            .unwrap()
            .iter()
            .find(|a| a.server == server && a.at > after)
            .map(|a| a.at)
    }

    /// Waits (bounded) for a write acknowledged by `server` after `after`; how long it took.
    pub fn wait_for(&self, server: u32, after: Instant, limit: Duration) -> Option<Duration> {
        let deadline = Instant::now() + limit;
        while Instant::now() < deadline {
            if let Some(at) = self.first_on(server, after) {
                return Some(at.duration_since(after));
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        None
    }
}

pub fn opts(addr: &str, user: &str, password: &str) -> mysql_async::OptsBuilder {
    mysql_async::OptsBuilder::default()
        .ip_or_hostname(addr)
        .tcp_port(3306)
        .user(Some(user))
        .pass(Some(password))
        .db_name(Some("app"))
        .prefer_socket(false)
}

/// One write through `vip`: (the server that took it, when its COMMIT returned) when
/// acknowledged. Every server the attempt reached goes to `log.reached`.
///
/// The moment is the COMMIT's answer, not the end of the call: the disconnect after it can
/// take as long as a killed server takes to close its sockets (a thread finishing an fsync
/// holds them open), which would date a write acknowledged before a kill after the first
/// writes elsewhere. A COMMIT answered OK is acknowledged whatever the disconnect does.
async fn write(vip: &str, id: u64, log: &Log) -> Result<(u32, Instant), String> {
    let run = async {
        let mut c = mysql_async::Conn::new(opts(vip, APP_USER, APP_PASSWORD)).await?;
        let server: Option<u32> = c.query_first("SELECT @@server_id").await?;
        log.reached
            .lock()
            .unwrap()
            .push((Instant::now(), server.unwrap_or(0)));
        c.query_drop("BEGIN").await?;
        c.query_drop(format!(
            "INSERT INTO w (id, server) VALUES ({id}, @@server_id)"
        ))
        .await?;
        c.query_drop("UPDATE c SET n = n + 1 WHERE k = 1").await?;
        c.query_drop("COMMIT").await?;
        Ok::<_, mysql_async::Error>((c, server.unwrap_or(0), Instant::now()))
    };
    let (c, server, at) = match tokio::time::timeout(Duration::from_secs(1), run).await {
        Ok(r) => r.map_err(|e| e.to_string())?,
        Err(_) => return Err("timed out".into()),
    };
    let _ = tokio::time::timeout(Duration::from_secs(1), c.disconnect()).await;
    Ok((server, at))
}

/// How many of server 2's writes server 1 (at `db1`) holds (asked directly, not through the
/// VIP).
async fn db2_rows_on_db1(db1: &str) -> Result<usize, String> {
    let run = async {
        let mut c = mysql_async::Conn::new(opts(db1, APP_USER, APP_PASSWORD)).await?;
        let n: Option<usize> = c
            .query_first("SELECT COUNT(*) FROM w WHERE server = 2")
            .await?;
        c.disconnect().await?;
        Ok::<_, mysql_async::Error>(n.unwrap_or(0))
    };
    match tokio::time::timeout(Duration::from_secs(1), run).await {
        Ok(r) => r.map_err(|e| e.to_string()),
        Err(_) => Err("timed out".into()),
    }
}

/// The writer, in `host`: one write through `vip` every 10 ms until told to stop (bounded:
/// 100,000 writes and 30 minutes), with ids from `first_id` (writers in parallel take
/// disjoint ranges); while `log.pause` is set it waits between writes.
/// `db1`: server 1's own address, for the violation check.
pub fn start_writer(
    lab: &Lab,
    host: &str,
    vip: &'static str,
    db1: &'static str,
    log: Arc<Log>,
    first_id: u64,
) -> std::thread::JoinHandle<()> {
    let ns = lab.ns(host);
    std::thread::spawn(move || {
        super::enter(&ns);
        super::block_on(async {
            let mut last_server = 0;
            let deadline = Instant::now() + Duration::from_secs(30 * 60);
            for id in first_id..first_id + 100_000 {
                if log.stop.load(Ordering::Relaxed) || Instant::now() > deadline {
                    break;
                }
                if log.pause.load(Ordering::SeqCst) {
                    log.paused.fetch_add(1, Ordering::SeqCst);
                    while log.pause.load(Ordering::SeqCst)
                        && !log.stop.load(Ordering::Relaxed)
                        && Instant::now() < deadline
                    {
                        tokio::time::sleep(Duration::from_millis(10)).await;
                    }
                    log.paused.fetch_sub(1, Ordering::SeqCst);
                }
                if let Ok((server, at)) = write(vip, id, &log).await {
                    let acked_on_db2 = {
                        let mut a = log.acked.lock().unwrap();
                        a.push(Acked { id, server, at });
                        a.iter().filter(|w| w.server == 2).count()
                    };
                    if server == 1 && last_server == 2 {
                        // Back on db1: it must hold everything db2 acknowledged.
                        match db2_rows_on_db1(db1).await {
                            Ok(n) if n >= acked_on_db2 => {}
                            Ok(n) => log.violations.lock().unwrap().push(format!(
                                "write {id} went to db1 holding {n} of db2's {acked_on_db2} writes"
                            )),
                            Err(e) => log
                                .violations
                                .lock()
                                .unwrap()
                                .push(format!("write {id}: cannot ask db1: {e}")),
                        }
                    }
                    last_server = server;
                }
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        });
    })
}

/// The reader, in `host`: asks `vip` which server answers, every 20 ms until told to stop
/// (bounded: 20,000 reads).
pub fn start_reader(
    lab: &Lab,
    host: &str,
    vip: &'static str,
    log: Arc<Log>,
) -> std::thread::JoinHandle<()> {
    let ns = lab.ns(host);
    std::thread::spawn(move || {
        super::enter(&ns);
        super::block_on(async {
            for _ in 0..20_000 {
                if log.stop.load(Ordering::Relaxed) {
                    break;
                }
                let read = async {
                    let mut c = mysql_async::Conn::new(opts(vip, APP_USER, APP_PASSWORD)).await?;
                    let s: Option<u32> = c.query_first("SELECT @@server_id").await?;
                    c.disconnect().await?;
                    Ok::<_, mysql_async::Error>(s.unwrap_or(0))
                };
                if let Ok(Ok(s)) = tokio::time::timeout(Duration::from_secs(1), read).await {
                    log.reads.lock().unwrap().push((Instant::now(), s));
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        });
    })
}

impl Log {
    /// Pauses `writers` writers (bounded wait: 5 s) so that the servers can be compared with
    /// no write in flight.
    pub fn pause_writers(&self, writers: usize) -> bool {
        self.pause.store(true, Ordering::SeqCst);
        let deadline = Instant::now() + Duration::from_secs(5);
        while self.paused.load(Ordering::SeqCst) < writers && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(10));
        }
        self.paused.load(Ordering::SeqCst) >= writers
    }

    pub fn resume_writers(&self) {
        self.pause.store(false, Ordering::SeqCst);
    }
}

/// How many of `acked` `db` does not hold.
pub fn missing_on(db: &Db, acked: &[Acked]) -> usize {
    let ids: std::collections::HashSet<u64> = db
        .sql("SELECT id FROM app.w")
        .lines()
        .filter_map(|l| l.trim().parse().ok())
        .collect();
    acked.iter().filter(|a| !ids.contains(&a.id)).count()
}
