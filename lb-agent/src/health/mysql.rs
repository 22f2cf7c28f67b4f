//! The MySQL/MariaDB check: log in, read what roles and failback need, end the session with
//! COM_QUIT. A clean end matters: a checker that drops half-done handshakes raises the
//! server's `Aborted_connects` and gets its host blocked after `max_connect_errors`.
//!
//! What is read: `@@read_only` (and MySQL's `@@super_read_only`), the executed GTIDs and the
//! binary log position (MariaDB `@@gtid_current_pos` / `@@gtid_binlog_pos`, MySQL
//! `@@gtid_executed` for both), and the replication state (`SHOW SLAVE STATUS`: IO and SQL
//! threads, seconds behind the source, what the IO thread has received: MariaDB
//! `Gtid_IO_Pos`, MySQL `Retrieved_Gtid_Set`).

use std::{
    net::{IpAddr, SocketAddr},
    path::Path,
    time::Duration,
};

use mysql_async::{Conn, OptsBuilder, Row, prelude::Queryable};
use serde::{Deserialize, Serialize};

use super::{failure::CheckError, gtid::Gtids};

/// Where and as whom a check logs in.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    pub addr: SocketAddr,
    pub user: String,
    pub password: String,
    /// The whole check (connect, log in, queries, quit) must fit in it.
    pub timeout: Duration,
}

#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct Replica {
    pub source_host: String,
    pub io_running: bool,
    pub sql_running: bool,
    /// `None` when the server does not know (SQL thread stopped).
    pub seconds_behind: Option<u64>,
    /// What the IO thread has received into the relay log (MariaDB `Gtid_IO_Pos`, MySQL
    /// `Retrieved_Gtid_Set`); empty when it received nothing or the server does not say.
    #[serde(default)]
    pub received: String,
    /// The IO thread is stopped (`No`), not merely reconnecting (`Connecting`): replication
    /// was stopped on purpose (`STOP SLAVE`) or failed for good.
    #[serde(default)]
    pub io_stopped: bool,
}

#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct MysqlState {
    pub version: String,
    pub mariadb: bool,
    pub read_only: bool,
    pub super_read_only: bool,
    /// Everything this server has executed (MariaDB: `gtid_current_pos`).
    pub executed: String,
    /// What its own binary log holds (MariaDB: `gtid_binlog_pos`; MySQL: `gtid_executed`).
    pub binlog_pos: String,
    /// The name its own transactions carry in GTIDs (MariaDB: `server_id`; MySQL:
    /// `server_uuid`), so that what a writer replicated from it is never taken for errant.
    #[serde(default)]
    pub origin: String,
    /// What its binary logs no longer hold (MySQL: `gtid_purged`): a replica lacking any of
    /// it cannot fetch it from this server. Empty on MariaDB, which has no such set (a
    /// replica asking for a purged position shows as an IO thread that stops: see `follow`).
    #[serde(default)]
    pub purged: String,
    /// `None` when it replicates from nobody.
    pub replica: Option<Replica>,
    /// Semi-synchronous replication, as the server reports it (`None`: not available, e.g.
    /// MySQL without the plugin).
    #[serde(default)]
    pub semisync: Option<SemiSync>,
}

/// What `SHOW GLOBAL VARIABLES/STATUS LIKE 'rpl_semi_sync%'` says (MariaDB's built-in
/// semi-sync, MySQL's `master`/`source` plugin names alike).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SemiSync {
    /// As a primary: semi-sync enabled.
    pub enabled: bool,
    /// As a primary: semi-sync in effect now (off after a timeout: fallen back to async).
    pub active: bool,
    /// Replicas acknowledging now.
    pub clients: u64,
    /// `AFTER_SYNC` (lossless) or `AFTER_COMMIT`.
    pub wait_point: String,
    /// As a replica: semi-sync enabled.
    pub replica_enabled: bool,
}

impl SemiSync {
    /// From (name, value) pairs of the variables and the status, any case.
    pub fn from_pairs(pairs: &[(String, String)]) -> Option<SemiSync> {
        if pairs.is_empty() {
            return None;
        }
        let get = |suffixes: &[&str]| {
            pairs
                .iter()
                .find(|(k, _)| {
                    let k = k.to_ascii_lowercase();
                    suffixes.iter().any(|s| k.ends_with(s))
                })
                .map(|(_, v)| v.to_ascii_uppercase())
        };
        let on = |v: Option<String>| matches!(v.as_deref(), Some("ON" | "1"));
        Some(SemiSync {
            enabled: on(get(&[
                "semi_sync_master_enabled",
                "semi_sync_source_enabled",
            ])),
            active: on(get(&["semi_sync_master_status", "semi_sync_source_status"])),
            clients: get(&["semi_sync_master_clients", "semi_sync_source_clients"])
                .and_then(|v| v.parse().ok())
                .unwrap_or(0),
            wait_point: get(&["semi_sync_master_wait_point", "semi_sync_source_wait_point"])
                .unwrap_or_default(),
            replica_enabled: on(get(&[
                "semi_sync_slave_enabled",
                "semi_sync_replica_enabled",
            ])),
        })
    }

    /// One phrase for `status`.
    pub fn describe(&self) -> String {
        match (self.enabled, self.active) {
            (false, _) => "off".into(),
            (true, true) => format!(
                "on ({}, {} replica(s) acknowledging)",
                self.wait_point, self.clients
            ),
            (true, false) => "FALLEN BACK TO ASYNC (no replica acknowledged in time)".into(),
        }
    }
}

impl MysqlState {
    pub fn writable(&self) -> bool {
        !self.read_only && !self.super_read_only
    }

    /// Replicating with both threads running and at most `max_lag` behind.
    pub fn replica_within(&self, max_lag: Duration) -> Result<(), String> {
        let Some(r) = &self.replica else {
            return Err("not a replica (no replication configured)".into());
        };
        if !r.io_running || !r.sql_running {
            return Err(format!(
                "replication stopped (IO {}, SQL {})",
                yes_no(r.io_running),
                yes_no(r.sql_running)
            ));
        }
        match r.seconds_behind {
            Some(s) if Duration::from_secs(s) <= max_lag => Ok(()),
            Some(s) => Err(format!("{s} s behind its source (max_lag {max_lag:?})")),
            None => Err("lag unknown".into()),
        }
    }

    /// Has this server applied everything its IO thread received (relay log drained)? A
    /// transaction a semi-synchronous primary acknowledged is at least received here; only
    /// once it is also executed may this server take writes, or an older row image from the
    /// relay log would overwrite the new writes. A server that replicates from nobody has
    /// nothing to drain.
    pub fn drained(&self) -> Result<(), String> {
        let Some(r) = &self.replica else {
            return Ok(());
        };
        let received = Gtids::parse(&r.received)?;
        if Gtids::parse(&self.executed)?.contains(&received) {
            Ok(())
        } else {
            Err(format!(
                "relay log not applied yet: received {:?}, executed {:?}",
                r.received, self.executed
            ))
        }
    }

    /// The `caught-up` failback question: does this server replicate (both threads, zero
    /// lag), hold every transaction of `source_binlog_pos` and has it applied all it
    /// received?
    pub fn caught_up_with(&self, source_binlog_pos: &str) -> Result<(), String> {
        self.replica_within(Duration::ZERO)?;
        self.drained()?;
        self.holds(source_binlog_pos)
    }

    /// Whether this server has executed every transaction of `source_binlog_pos`.
    pub fn holds(&self, source_binlog_pos: &str) -> Result<(), String> {
        let mine = Gtids::parse(&self.executed)?;
        let theirs = Gtids::parse(source_binlog_pos)?;
        if mine.contains(&theirs) {
            Ok(())
        } else {
            Err(format!(
                "has executed {:?}, the sorry server's binary log is at {:?}",
                self.executed, source_binlog_pos
            ))
        }
    }
}

impl MysqlState {
    /// The errant-transaction question (DESIGN §7): has this server nothing that the sorry
    /// server `sorry` lacks? A writer that was cut off may have committed transactions
    /// nobody acknowledged (a commit in its semi-sync wait when it was fenced); they are in
    /// its binary log only. Replicated to the server that took the writes meanwhile, their
    /// row images would overwrite newer rows (a counter set back by every increment made
    /// since), so such a server is not failed back to and not replicated from.
    ///
    /// What the writer replicated from the sorry server (its origin) never counts, however
    /// old the sorry server's state is: read a moment before the writer's, under writes, it
    /// is always behind in its own domain.
    pub fn errant_against(&self, sorry: &MysqlState) -> Result<(), String> {
        let errant = self.errant_part(sorry)?;
        if errant.is_empty() {
            return Ok(());
        }
        Err(format!(
            "ERRANT: {errant} in its binary log {:?} is not in the sorry server's (executed \
             {:?}); it is kept out of the writes until rebuilt from the sorry server (README: \
             Errant transactions)",
            self.binlog_pos, sorry.executed
        ))
    }

    /// The transactions in this server's binary log, not of `sorry`'s origin, that `sorry`
    /// has not executed (empty when none), in the server's format; see `errant_against`.
    pub fn errant_part(&self, sorry: &MysqlState) -> Result<String, String> {
        let theirs = Gtids::parse(&sorry.executed)?;
        let mine = Gtids::parse(&self.binlog_pos)?.without_origin(&sorry.origin);
        if theirs.contains(&mine) {
            return Ok(String::new());
        }
        Ok(mine.beyond(&theirs))
    }
}

fn yes_no(b: bool) -> &'static str {
    if b { "running" } else { "stopped" }
}

/// Reads a check password from `path` (see `crate::secret` for the owner and mode rules).
pub fn read_password(path: &Path) -> Result<String, String> {
    let bytes = crate::secret::read(path, "password file")?;
    let text = String::from_utf8(bytes)
        .map_err(|_| format!("password file {}: not UTF-8", path.display()))?;
    Ok(text.trim_end_matches(['\n', '\r']).to_string())
}

fn opts(t: &Target) -> OptsBuilder {
    OptsBuilder::default()
        .ip_or_hostname(t.addr.ip().to_string())
        .tcp_port(t.addr.port())
        .user(Some(t.user.clone()))
        .pass(Some(t.password.clone()))
        // No extra queries at connect (socket discovery, settings): the check's own queries
        // are all it sends.
        .prefer_socket(false)
        .max_allowed_packet(Some(16 << 20))
        .wait_timeout(Some(60))
        .stmt_cache_size(0)
}

/// How a check that timed out begins its reason: the server is hung or unreachable, not
/// refusing (see `health::risk`).
pub const NO_ANSWER: &str = "no answer within";

/// One check. `replication`: also read `SHOW SLAVE STATUS`.
pub async fn probe(t: &Target, replication: bool) -> Result<MysqlState, CheckError> {
    match tokio::time::timeout(t.timeout, probe_untimed(t, replication)).await {
        Ok(r) => r,
        Err(_) => Err(CheckError::Server(format!("{NO_ANSWER} {:?}", t.timeout))),
    }
}

async fn probe_untimed(t: &Target, replication: bool) -> Result<MysqlState, CheckError> {
    let mut conn = Conn::new(opts(t)).await.map_err(|e| match &e {
        // No socket for us: nothing known about the server.
        mysql_async::Error::Io(mysql_async::IoError::Io(io)) => {
            super::failure::classify(io, e.to_string())
        }
        _ => CheckError::Server(e.to_string()),
    })?;
    let read = read_state(&mut conn, replication).await;
    // COM_QUIT whatever the queries said.
    let quit = conn.disconnect().await;
    let state = read.map_err(|e| CheckError::Server(e.to_string()))?;
    quit.map_err(|e| CheckError::Server(format!("ending the session: {e}")))?;
    Ok(state)
}

async fn read_state(conn: &mut Conn, replication: bool) -> mysql_async::Result<MysqlState> {
    let (version, read_only): (String, i64) = conn
        .query_first("SELECT @@version, @@global.read_only")
        .await?
        .unwrap_or_default();
    let mariadb = version.contains("MariaDB");
    let mut s = MysqlState {
        version,
        mariadb,
        read_only: read_only != 0,
        ..MysqlState::default()
    };
    if mariadb {
        let (cur, bin): (String, String) = conn
            .query_first("SELECT @@global.gtid_current_pos, @@global.gtid_binlog_pos")
            .await?
            .unwrap_or_default();
        (s.executed, s.binlog_pos) = (cur, bin);
        let id: Option<u64> = conn.query_first("SELECT @@global.server_id").await?;
        s.origin = id.map(|i| i.to_string()).unwrap_or_default();
    } else {
        let (sro, exec, uuid, purged): (i64, String, String, String) = conn
            .query_first(
                "SELECT @@global.super_read_only, @@global.gtid_executed, @@global.server_uuid, \
                 @@global.gtid_purged",
            )
            .await?
            .unwrap_or_default();
        s.super_read_only = sro != 0;
        s.origin = uuid;
        s.purged = purged;
        s.binlog_pos = exec.clone();
        s.executed = exec;
    }
    if replication {
        let row: Option<Row> = conn.query_first("SHOW SLAVE STATUS").await?;
        s.replica = row.map(|r| replica(&r));
        // Both LIKE forms answer (possibly with no rows) on every server: never an error.
        let mut pairs: Vec<(String, String)> = conn
            .query("SHOW GLOBAL VARIABLES LIKE 'rpl_semi_sync%'")
            .await?;
        pairs.extend(
            conn.query::<(String, String), _>("SHOW GLOBAL STATUS LIKE 'rpl_semi_sync%'")
                .await?,
        );
        s.semisync = SemiSync::from_pairs(&pairs);
    }
    Ok(s)
}

/// A `SHOW SLAVE STATUS` row, by column name (MySQL 8.0.22+ also answers with the
/// `Replica_`/`Source_` names).
fn replica(r: &Row) -> Replica {
    let text = |names: &[&str]| -> Option<String> {
        names.iter().find_map(|n| {
            let i = r.columns_ref().iter().position(|c| c.name_str() == *n)?;
            r.as_ref(i).and_then(|v| match v {
                mysql_async::Value::Bytes(b) => Some(String::from_utf8_lossy(b).into_owned()),
                mysql_async::Value::Int(n) => Some(n.to_string()),
                mysql_async::Value::UInt(n) => Some(n.to_string()),
                _ => None,
            })
        })
    };
    Replica {
        source_host: text(&["Master_Host", "Source_Host"]).unwrap_or_default(),
        io_running: text(&["Slave_IO_Running", "Replica_IO_Running"]).as_deref() == Some("Yes"),
        sql_running: text(&["Slave_SQL_Running", "Replica_SQL_Running"]).as_deref() == Some("Yes"),
        seconds_behind: text(&["Seconds_Behind_Master", "Seconds_Behind_Source"])
            .and_then(|s| s.parse().ok()),
        received: text(&["Gtid_IO_Pos", "Retrieved_Gtid_Set"]).unwrap_or_default(),
        io_stopped: text(&["Slave_IO_Running", "Replica_IO_Running"]).as_deref() == Some("No"),
    }
}

/// `SET GLOBAL read_only = on|off` (graceful switch and fencing).
///
/// Setting it takes the server's global read lock, which waits for statements in progress
/// (a long ALTER, a big UPDATE) and, while it waits, holds up new writes; the server keeps
/// waiting after we hang up. So the session's `lock_wait_timeout` is cut to the check's
/// timeout: at worst the attempt fails (the handover retries) instead of stalling the
/// database. (Transactions already open are not waited for: they may still commit after
/// it, which the graceful handover allows for.)
pub async fn set_read_only(t: &Target, on: bool) -> Result<(), String> {
    let wait = t.timeout.as_secs().max(1);
    // Longer than the server's own lock wait, so that it answers (and lets go) first.
    with_session(t, beyond_lock_wait(t), async |conn| {
        conn.query_drop(format!("SET SESSION lock_wait_timeout = {wait}"))
            .await?;
        conn.query_drop(format!("SET GLOBAL read_only = {}", u8::from(on)))
            .await
    })
    .await
}

/// How a replica logs in to the server it replicates from (`[virtual_server.replication]`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SourceLogin {
    pub user: String,
    pub password: String,
}

impl SourceLogin {
    /// Refuses what cannot go into a quoted SQL string the same way under every `sql_mode`
    /// (a quote, a backslash, a control character): a clear error at start or reload, never
    /// a statement that means something else.
    pub fn new(user: &str, password: &str) -> Result<SourceLogin, String> {
        for (what, s) in [("user", user), ("password", password)] {
            if s.chars().any(|c| c == '\'' || c == '\\' || c.is_control()) {
                return Err(format!(
                    "the replication {what} holds a quote, a backslash or a control character"
                ));
            }
        }
        Ok(SourceLogin {
            user: user.to_string(),
            password: password.to_string(),
        })
    }
}

/// The statements that point a replica at `source` (see `repoint`); they hold the password:
/// never logged.
pub fn repoint_statements(mariadb: bool, source: SocketAddr, login: &SourceLogin) -> Vec<String> {
    let (host, port) = (source.ip(), source.port());
    let (user, password) = (&login.user, &login.password);
    if mariadb {
        // slave_pos: go on from what this replica has applied, whoever wrote it.
        vec![
            "STOP SLAVE".into(),
            format!(
                "CHANGE MASTER TO MASTER_HOST='{host}', MASTER_PORT={port}, MASTER_USER='{user}', \
                 MASTER_PASSWORD='{password}', MASTER_USE_GTID=slave_pos"
            ),
            "START SLAVE".into(),
        ]
    } else {
        vec![
            "STOP REPLICA".into(),
            format!(
                "CHANGE REPLICATION SOURCE TO SOURCE_HOST='{host}', SOURCE_PORT={port}, \
                 SOURCE_USER='{user}', SOURCE_PASSWORD='{password}', SOURCE_AUTO_POSITION=1"
            ),
            "START REPLICA".into(),
        ]
    }
}

/// Re-points a replica to `source` (see `health::follow` for when): its replication
/// stopped, its source changed (GTID auto-positioning), started again. The caller checks
/// afterwards that both threads run. Needs `REPLICATION SLAVE ADMIN` (MariaDB) or
/// `REPLICATION_SLAVE_ADMIN` (MySQL) for the check user on the replica.
pub async fn repoint(t: &Target, source: SocketAddr, login: &SourceLogin) -> Result<(), String> {
    let result = with_session(t, t.timeout * 3 + Duration::from_secs(2), async |conn| {
        let version: String = conn
            .query_first("SELECT @@version")
            .await?
            .unwrap_or_default();
        for sql in repoint_statements(version.contains("MariaDB"), source, login) {
            conn.query_drop(sql).await?;
        }
        Ok(())
    })
    .await;
    // A server's error may quote the statement: never the password.
    result.map_err(|e| match login.password.is_empty() {
        true => e,
        false => e.replace(&login.password, "***"),
    })
}

/// Stops (`on` false) or starts replication on a server: `STOP SLAVE` / `START SLAVE` on
/// MariaDB, `STOP REPLICA` / `START REPLICA` on MySQL. Stopping lets the relay log be
/// applied first: the IO thread stops, the SQL thread applies what was received (bounded by
/// the check's timeout), then both stop — a writer that took the writes has applied all it
/// received from the server it replaced (the drain gate) and then takes nothing more from it.
pub async fn set_replicating(t: &Target, on: bool) -> Result<(), String> {
    with_session(t, t.timeout * 2 + Duration::from_secs(1), async |conn| {
        let version: String = conn.query_first("SELECT @@version").await?.unwrap_or_default();
        let word = if version.contains("MariaDB") { "SLAVE" } else { "REPLICA" };
        if on {
            // Already running (a handover started it a moment ago, and the caller read
            // an older check): left alone. A restart here would cut the new replication
            // connection right after it began, which MariaDB's semi-sync may not survive
            // (the replica then reconnected for 30 s without a single event).
            let row: Option<Row> = conn.query_first(format!("SHOW {word} STATUS")).await?;
            if row.map(|r| replica(&r)).is_some_and(|r| r.sql_running && !r.io_stopped) {
                return Ok(());
            }
            // Both threads stopped (an IO thread that failed leaves the SQL one running).
            conn.query_drop(format!("STOP {word}")).await?;
            if version.contains("MariaDB") {
                // The server took writes meanwhile: ask its source for what follows its
                // current position, not for its own transactions back from where it
                // last replicated (the source may have rotated them away — a rebuilt
                // server's binary log starts at the rebuild).
                conn.query_drop("SET GLOBAL gtid_slave_pos = @@global.gtid_current_pos")
                    .await?;
            }
            conn.query_drop(format!("START {word}")).await?;
            return Ok(());
        }
        conn.query_drop(format!("STOP {word} IO_THREAD")).await?;
        let row: Option<Row> = conn.query_first(format!("SHOW {word} STATUS")).await?;
        if let Some(r) = row.map(|r| replica(&r)).filter(|r| !r.received.is_empty()) {
            let wait = t.timeout.as_secs().max(1);
            let sql = if version.contains("MariaDB") {
                "SELECT MASTER_GTID_WAIT(?, ?)"
            } else {
                "SELECT WAIT_FOR_EXECUTED_GTID_SET(?, ?)"
            };
            let waited: Option<i64> = conn.exec_first(sql, (r.received.as_str(), wait)).await?;
            if waited != Some(0) {
                return Err(mysql_async::Error::Other(
                    format!("the relay log (up to {:?}) was not applied within {wait} s; replication left with its IO thread stopped", r.received).into(),
                ));
            }
        }
        conn.query_drop(format!("STOP {word}")).await?;
        Ok(())
    })
    .await
}

/// One administrative session on `t`: log in, run `f`, hang up whatever `f` returned, all
/// within `limit` (else "no answer within …"); errors as text. The fence, the handover and
/// the replication changes all go through here.
async fn with_session<T>(
    t: &Target,
    limit: Duration,
    f: impl AsyncFnOnce(&mut Conn) -> mysql_async::Result<T>,
) -> Result<T, String> {
    let run = async {
        let mut conn = Conn::new(opts(t)).await.map_err(|e| e.to_string())?;
        let result = f(&mut conn).await;
        let _ = conn.disconnect().await;
        result.map_err(|e| e.to_string())
    };
    tokio::time::timeout(limit, run)
        .await
        .unwrap_or_else(|_| Err(format!("{NO_ANSWER} {limit:?}")))
}

/// The limit of a session whose statements wait on the server up to the check's timeout
/// (`lock_wait_timeout`, `MASTER_GTID_WAIT`): longer, so that the server answers first.
fn beyond_lock_wait(t: &Target) -> Duration {
    t.timeout + Duration::from_secs(t.timeout.as_secs().max(1))
}

/// `KILL CONNECTION` each of `ids`; returns how many were killed (one gone meanwhile, or
/// not ours to kill, is skipped).
async fn kill_connections(conn: &mut Conn, ids: Vec<u64>) -> usize {
    let mut killed = 0;
    for id in ids {
        if conn
            .query_drop(format!("KILL CONNECTION {id}"))
            .await
            .is_ok()
        {
            killed += 1;
        }
    }
    killed
}

/// Ends the client sessions that hold row locks on a server that no longer has the writes:
/// a client cut off mid-transaction (its host's link down, a partition) leaves its session
/// open with the locks of its `UPDATE`s until `wait_timeout` (hours), and replication from
/// the new writer then waits on them until `innodb_lock_wait_timeout` stops its SQL thread
/// (error 1205). Only transactions that locked or changed rows; replication threads and the
/// check user's sessions are left alone. Returns how many were killed.
pub async fn kill_orphans(t: &Target) -> Result<usize, String> {
    with_session(t, beyond_lock_wait(t), async |conn| {
        let ids: Vec<u64> = conn
            .exec(
                "SELECT p.ID FROM information_schema.INNODB_TRX x \
                 JOIN information_schema.PROCESSLIST p ON p.ID = x.trx_mysql_thread_id \
                 WHERE p.ID <> CONNECTION_ID() AND p.USER NOT IN (?, 'system user', 'event_scheduler') \
                 AND p.COMMAND NOT IN ('Binlog Dump', 'Binlog Dump GTID', 'Daemon', 'Slave_IO', 'Slave_SQL', 'Slave_worker') \
                 AND (x.trx_rows_locked > 0 OR x.trx_rows_modified > 0)",
                (t.user.as_str(),),
            )
            .await?;
        Ok(kill_connections(conn, ids).await)
    })
    .await
}

/// Ends the binary-log dump threads of this server that serve replicas at `hosts` (replicas
/// this agent cannot reach). MariaDB (10.11) replaces the dump thread of a reconnecting
/// semi-sync replica while holding its list of threads, and waits for the semi-sync ACK
/// receiver, which sits in `poll()` on the old, half-open socket until a TCP retransmission
/// finally draws a reset: after a partition heals, the server accepts no new connection for
/// up to 12 s (measured: 11.5 s, both servers; no stall in 4 of 4 runs with the old dump
/// thread ended during the partition). The replica, once back, just reconnects. Returns
/// how many were ended.
pub async fn end_dumps_to(t: &Target, hosts: &[IpAddr]) -> Result<usize, String> {
    with_session(t, beyond_lock_wait(t), async |conn| {
        let rows: Vec<(u64, String)> = conn
            .query(
                "SELECT ID, HOST FROM information_schema.PROCESSLIST \
                 WHERE COMMAND IN ('Binlog Dump', 'Binlog Dump GTID')",
            )
            .await?;
        let ids = rows
            .into_iter()
            .filter(|(_, host)| peer_ip(host).is_some_and(|ip| hosts.contains(&ip)))
            .map(|(id, _)| id)
            .collect();
        Ok(kill_connections(conn, ids).await)
    })
    .await
}

/// The address in a `PROCESSLIST.HOST` (`10.1.1.75:50432`, `[fd00::2]:50432`, or a bare
/// address); `None` for names and `localhost`.
fn peer_ip(host: &str) -> Option<IpAddr> {
    if let Ok(ip) = host.parse() {
        return Some(ip);
    }
    let (addr, _port) = host.rsplit_once(':')?;
    addr.trim_start_matches('[')
        .trim_end_matches(']')
        .parse()
        .ok()
}

/// The self-fence of a server whose agent lost the quorum (DESIGN §7 I4): every client
/// connection killed — a commit waiting for its semi-synchronous acknowledgement then never
/// reports success to its client, and it would hold up `read_only` — then `read_only = 1`,
/// and `super_read_only = 1` where the server has it (MySQL; MariaDB has not). Replication
/// threads and the check user's own sessions (the other agent's checks) are left alone.
/// Returns how many connections were killed.
pub async fn self_fence(t: &Target) -> Result<usize, String> {
    let wait = t.timeout.as_secs().max(1);
    with_session(t, beyond_lock_wait(t), async |conn| {
        conn.query_drop(format!("SET SESSION lock_wait_timeout = {wait}"))
            .await?;
        let ids: Vec<u64> = conn
            .exec(
                "SELECT ID FROM information_schema.PROCESSLIST \
                 WHERE ID <> CONNECTION_ID() AND USER NOT IN (?, 'system user', 'event_scheduler') \
                 AND COMMAND NOT IN ('Binlog Dump', 'Binlog Dump GTID', 'Daemon', 'Slave_IO', 'Slave_SQL', 'Slave_worker')",
                (t.user.as_str(),),
            )
            .await?;
        let killed = kill_connections(conn, ids).await;
        conn.query_drop("SET GLOBAL read_only = 1").await?;
        let _ = conn.query_drop("SET GLOBAL super_read_only = 1").await;
        Ok(killed)
    })
    .await
}

#[cfg(test)]
mod processlist_tests {
    #[test]
    fn processlist_hosts_read_as_addresses() {
        for (host, want) in [
            ("10.1.1.75:50432", Some("10.1.1.75")),
            ("[fd00::2]:50432", Some("fd00::2")),
            ("10.1.1.75", Some("10.1.1.75")),
            ("localhost", None),
            ("db2.example:3306", None),
            ("", None),
        ] {
            assert_eq!(
                super::peer_ip(host),
                want.map(|w| w.parse().unwrap()),
                "{host}"
            );
        }
    }
}

#[cfg(test)]
mod semisync_tests {
    use super::SemiSync;

    fn pairs(p: &[(&str, &str)]) -> Vec<(String, String)> {
        p.iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn mariadb_and_mysql_names_read_alike() {
        let maria = SemiSync::from_pairs(&pairs(&[
            ("rpl_semi_sync_master_enabled", "ON"),
            ("rpl_semi_sync_master_wait_point", "AFTER_SYNC"),
            ("rpl_semi_sync_slave_enabled", "ON"),
            ("Rpl_semi_sync_master_status", "ON"),
            ("Rpl_semi_sync_master_clients", "1"),
        ]))
        .unwrap();
        assert_eq!(
            maria.describe(),
            "on (AFTER_SYNC, 1 replica(s) acknowledging)"
        );
        assert!(maria.replica_enabled);
        let mysql = SemiSync::from_pairs(&pairs(&[
            ("rpl_semi_sync_source_enabled", "ON"),
            ("Rpl_semi_sync_source_status", "OFF"),
        ]))
        .unwrap();
        assert!(mysql.describe().starts_with("FALLEN BACK"));
        assert_eq!(SemiSync::from_pairs(&[]), None);
        let off = SemiSync::from_pairs(&pairs(&[("rpl_semi_sync_master_enabled", "OFF")]));
        assert_eq!(off.unwrap().describe(), "off");
    }
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt;

    use super::*;

    /// The exact SQL the agent runs to re-point a replica (the README quotes it).
    #[test]
    fn repointing_statements_for_mariadb_and_mysql() {
        let login = SourceLogin::new("repl", "s3cret pw").unwrap();
        let source: SocketAddr = "10.1.1.75:3306".parse().unwrap();
        assert_eq!(
            repoint_statements(true, source, &login),
            [
                "STOP SLAVE",
                "CHANGE MASTER TO MASTER_HOST='10.1.1.75', MASTER_PORT=3306, MASTER_USER='repl', \
                 MASTER_PASSWORD='s3cret pw', MASTER_USE_GTID=slave_pos",
                "START SLAVE",
            ]
        );
        assert_eq!(
            repoint_statements(false, source, &login),
            [
                "STOP REPLICA",
                "CHANGE REPLICATION SOURCE TO SOURCE_HOST='10.1.1.75', SOURCE_PORT=3306, \
                 SOURCE_USER='repl', SOURCE_PASSWORD='s3cret pw', SOURCE_AUTO_POSITION=1",
                "START REPLICA",
            ]
        );
        for bad in ["a'b", "a\\b", "a\nb"] {
            assert!(SourceLogin::new("repl", bad).is_err(), "{bad:?}");
            assert!(SourceLogin::new(bad, "pw").is_err(), "{bad:?}");
        }
    }

    fn state(io: bool, sql: bool, behind: Option<u64>, executed: &str) -> MysqlState {
        MysqlState {
            mariadb: true,
            executed: executed.into(),
            replica: Some(Replica {
                source_host: "10.0.0.2".into(),
                io_running: io,
                sql_running: sql,
                seconds_behind: behind,
                ..Replica::default()
            }),
            ..MysqlState::default()
        }
    }

    #[test]
    fn drained_means_everything_received_is_executed() {
        let mut s = state(true, true, Some(0), "1-1-50,2-2-9");
        s.replica.as_mut().unwrap().received = "1-1-50".into();
        assert!(s.drained().is_ok());
        s.replica.as_mut().unwrap().received = "1-1-52".into();
        assert!(s.drained().unwrap_err().contains("relay log not applied"));
        assert!(
            s.caught_up_with("2-2-9").is_err(),
            "caught up needs drained"
        );
        // MySQL sets, and a server that replicates from nobody.
        let mut m = state(
            true,
            true,
            Some(0),
            "3e11fa47-71ca-11e1-9e33-c80aa9429562:1-20",
        );
        m.replica.as_mut().unwrap().received = "3e11fa47-71ca-11e1-9e33-c80aa9429562:1-21".into();
        assert!(m.drained().is_err());
        m.replica = None;
        assert!(m.drained().is_ok());
    }

    #[test]
    fn errant_means_something_in_the_binary_log_the_other_has_not_executed() {
        let sorry = |executed: &str, origin: &str| MysqlState {
            executed: executed.into(),
            origin: origin.into(),
            ..MysqlState::default()
        };
        let mut old_writer = state(true, true, Some(0), "1-1-60,2-2-90");
        // Its own domain is one ahead of what the sorry server executed from it: the commit
        // that was in its semi-sync wait when it was cut off.
        old_writer.binlog_pos = "1-1-61,2-2-90".into();
        let e = old_writer
            .errant_against(&sorry("1-1-60,2-2-95", "2"))
            .unwrap_err();
        assert!(e.starts_with("ERRANT: 1-1-61 in its binary log"), "{e}");
        // Rebuilt from the sorry server: clean, even while behind in the other's domain
        // (that is the caught-up question's, not this one's).
        old_writer.binlog_pos = "1-1-60,2-2-90".into();
        assert!(
            old_writer
                .errant_against(&sorry("1-1-60,2-2-95", "2"))
                .is_ok()
        );
        // Ahead in the sorry server's own domain: replicated from it after its state was
        // read (CI, under load: "2-2-2250 … executed 2-2-2180"), never errant.
        old_writer.binlog_pos = "1-1-60,2-2-120".into();
        assert!(
            old_writer
                .errant_against(&sorry("1-1-60,2-2-95", "2"))
                .is_ok()
        );
        // ... unless the origin is unknown: then it cannot be told apart.
        assert!(
            old_writer
                .errant_against(&sorry("1-1-60,2-2-95", ""))
                .is_err()
        );
        // MySQL sets: a transaction of its own uuid the other lacks; the sorry server's
        // own uuid never counts.
        let (w, o) = (
            "aaaaaaaa-71ca-11e1-9e33-c80aa9429562",
            "bbbbbbbb-71ca-11e1-9e33-c80aa9429562",
        );
        let mut m = state(true, true, Some(0), "");
        m.binlog_pos = format!("{w}:1-21,{o}:1-50");
        assert!(
            m.errant_against(&sorry(&format!("{w}:1-20,{o}:1-40"), o))
                .is_err()
        );
        assert!(
            m.errant_against(&sorry(&format!("{w}:1-30,{o}:1-40"), o))
                .is_ok()
        );
        assert!(m.errant_against(&sorry("garbage-", o)).is_err());
    }

    #[test]
    fn caught_up_needs_both_threads_zero_lag_and_the_position() {
        assert!(
            state(true, true, Some(0), "0-2-50")
                .caught_up_with("0-2-50")
                .is_ok()
        );
        assert!(
            state(true, true, Some(0), "0-1-40")
                .caught_up_with("0-2-50")
                .is_err()
        );
        assert!(
            state(true, true, Some(1), "0-2-50")
                .caught_up_with("0-2-50")
                .is_err()
        );
        assert!(
            state(false, true, Some(0), "0-2-50")
                .caught_up_with("0-2-50")
                .is_err()
        );
        assert!(
            state(true, true, None, "0-2-50")
                .caught_up_with("0-2-50")
                .is_err()
        );
        let mut alone = state(true, true, Some(0), "0-2-50");
        alone.replica = None;
        assert!(alone.caught_up_with("").is_err(), "not replicating at all");
    }

    #[test]
    fn replica_lag_bound() {
        let s = state(true, true, Some(3), "");
        assert!(s.replica_within(Duration::from_secs(3)).is_ok());
        assert_eq!(
            s.replica_within(Duration::from_secs(2)),
            Err("3 s behind its source (max_lag 2s)".into())
        );
    }

    #[test]
    fn world_readable_password_files_are_refused() {
        let dir = std::env::temp_dir().join(format!("lbt{}-pw", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let p = dir.join("pw");
        std::fs::write(&p, "s3cret\n").unwrap();
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o644)).unwrap();
        assert!(read_password(&p).unwrap_err().contains("mode 0644"));
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o640)).unwrap();
        assert!(read_password(&p).unwrap_err().contains("group or others"));
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o600)).unwrap();
        assert_eq!(read_password(&p).unwrap(), "s3cret");
        assert!(read_password(&dir.join("missing")).is_err());
        let _ = std::fs::remove_dir_all(&dir);
    }
}
