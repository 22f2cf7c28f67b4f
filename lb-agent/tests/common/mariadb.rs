//! Real MariaDB servers in a lab's namespaces (DESIGN.md §5): a data directory installed once
//! per lab and copied per server, `mariadbd` started by the lab (so killed by PID when it
//! drops), users for replication, the health check and the application, and master-master
//! GTID replication with one domain per server, semi-synchronous (`AFTER_SYNC`).

use std::{
    path::{Path, PathBuf},
    process::Command,
    time::{Duration, Instant},
};

use super::Lab;

/// The health check's login (its password file is `Db::check_password_file`).
pub const CHECK_USER: &str = "lbcheck";
pub const CHECK_PASSWORD: &str = "check-pw";
pub const APP_USER: &str = "app";
pub const APP_PASSWORD: &str = "app-pw";

#[derive(Debug, Clone)]
pub struct Db {
    pub host: String,
    pub addr: String,
    pub server_id: u32,
    pub dir: PathBuf,
    pub pid: u32,
    /// `mariadbd` options added at every start (a restart keeps them).
    pub options: Vec<String>,
}

impl Db {
    pub fn socket(&self) -> PathBuf {
        self.dir.join("mysqld.sock")
    }

    fn datadir(&self) -> PathBuf {
        self.dir.join("data")
    }

    /// Runs SQL as root over the server's Unix socket; panics with the error when it fails.
    pub fn sql(&self, q: &str) -> String {
        try_sql(&self.socket(), q).unwrap_or_else(|e| panic!("{} on {}: {e}", q, self.host))
    }

    pub fn try_sql(&self, q: &str) -> Result<String, String> {
        try_sql(&self.socket(), q)
    }
}

pub fn try_sql(socket: &Path, q: &str) -> Result<String, String> {
    let out = Command::new("mariadb")
        .args(["--no-defaults", "-uroot", "-N", "-B", "-S"])
        .arg(socket)
        .args(["-e", q])
        .output()
        .map_err(|e| e.to_string())?;
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
    } else {
        Err(String::from_utf8_lossy(&out.stderr).trim().to_string())
    }
}

/// The health check's password file (mode 0600), under the lab's temporary directory.
pub fn check_password_file(lab: &Lab) -> PathBuf {
    let p = std::env::temp_dir().join(&lab.prefix).join("check.pw");
    if !p.exists() {
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(&p, format!("{CHECK_PASSWORD}\n")).unwrap();
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o600)).unwrap();
    }
    p
}

/// The InnoDB redo log's size: MariaDB's 96 MB default is written out in full for the
/// template and again for every server copied from it (up to six per lab), a burst of
/// writes that a shared CI disk pays for while other labs commit with fsync.
const REDO_LOG: &str = "--innodb-log-file-size=16M";

/// Installs a data directory once per lab (about a second) and returns it.
fn template(lab: &Lab) -> PathBuf {
    let t = std::env::temp_dir()
        .join(&lab.prefix)
        .join("mariadb-template");
    if !t.join("mysql").exists() {
        std::fs::create_dir_all(&t).unwrap();
        super::sh(&[
            "mariadb-install-db",
            "--no-defaults",
            &format!("--datadir={}", t.display()),
            "--user=root",
            "--auth-root-authentication-method=normal",
            "--skip-test-db",
            REDO_LOG,
        ]);
    }
    t
}

impl Lab {
    /// A fresh MariaDB server in `host` (whose eth0 address is `addr`), started and ready.
    pub fn mariadb(&mut self, host: &str, addr: &str, server_id: u32) -> Db {
        self.mariadb_with(host, addr, server_id, &[])
    }

    /// The same, with `options` added to every start of its `mariadbd`.
    pub fn mariadb_with(&mut self, host: &str, addr: &str, server_id: u32, options: &[&str]) -> Db {
        let dir = std::env::temp_dir()
            .join(&self.prefix)
            .join(format!("db-{host}"));
        std::fs::create_dir_all(&dir).unwrap();
        super::sh(&[
            "cp",
            "-a",
            template(self).to_str().unwrap(),
            dir.join("data").to_str().unwrap(),
        ]);
        let mut db = Db {
            host: host.into(),
            addr: addr.into(),
            server_id,
            dir,
            pid: 0,
            options: options.iter().map(|o| o.to_string()).collect(),
        };
        self.mariadb_start(&mut db, &[]);
        // Users, not replicated (each server gets its own).
        db.sql(&format!(
            "SET sql_log_bin = 0;
             CREATE USER 'repl'@'%' IDENTIFIED BY 'repl-pw';
             GRANT REPLICATION SLAVE ON *.* TO 'repl'@'%';
             CREATE USER '{CHECK_USER}'@'%' IDENTIFIED BY '{CHECK_PASSWORD}';
             GRANT SLAVE MONITOR, BINLOG MONITOR, READ_ONLY ADMIN, PROCESS, CONNECTION ADMIN, REPLICATION SLAVE ADMIN ON *.* TO '{CHECK_USER}'@'%';
             CREATE USER '{APP_USER}'@'%' IDENTIFIED BY '{APP_PASSWORD}';
             GRANT ALL ON app.* TO '{APP_USER}'@'%';"
        ));
        db
    }

    /// (Re)starts `db`'s `mariadbd` with the same data; `extra` arguments are added.
    pub fn mariadb_start(&mut self, db: &mut Db, extra: &[&str]) {
        let log = db.dir.join("mariadbd.log").to_string_lossy().into_owned();
        let mut args: Vec<String> = vec![
            "mariadbd".into(),
            "--no-defaults".into(),
            "--user=root".into(),
            format!("--datadir={}", db.datadir().display()),
            format!("--socket={}", db.socket().display()),
            format!("--pid-file={}", db.dir.join("mysqld.pid").display()),
            "--bind-address=0.0.0.0".into(),
            "--port=3306".into(),
            format!("--server-id={}", db.server_id),
            format!("--gtid-domain-id={}", db.server_id),
            "--log-bin=mysql-bin".into(),
            "--log-slave-updates".into(),
            "--binlog-format=ROW".into(),
            "--auto-increment-increment=2".into(),
            format!("--auto-increment-offset={}", db.server_id),
            "--skip-name-resolve".into(),
            "--innodb-buffer-pool-size=8M".into(),
            REDO_LOG.into(),
            "--slave-net-timeout=5".into(),
            // Semi-synchronous both ways, lossless wait point (configs/db1.toml's recipe): a
            // commit is acknowledged only once the other server has it in its relay log. The
            // timeout bounds the stall when the other server is gone (then asynchronous until
            // it is back); as a replica at start-up, a crashed former writer truncates what
            // it wrote to its binlog but nobody acknowledged.
            "--rpl-semi-sync-master-enabled=ON".into(),
            "--rpl-semi-sync-slave-enabled=ON".into(),
            "--rpl-semi-sync-master-wait-point=AFTER_SYNC".into(),
            "--rpl-semi-sync-master-timeout=1000".into(),
        ];
        args.extend(db.options.iter().cloned());
        args.extend(extra.iter().map(|s| s.to_string()));
        let refs: Vec<&str> = args.iter().map(String::as_str).collect();
        db.pid = self.spawn(&db.host.clone(), &refs, &log);
        let deadline = Instant::now() + Duration::from_secs(20);
        while try_sql(&db.socket(), "SELECT 1").is_err() {
            assert!(
                Instant::now() < deadline,
                "mariadbd in {} did not start:\n{}",
                db.host,
                std::fs::read_to_string(&log).unwrap_or_default()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

/// Master-master GTID replication between `a` and `b` (each replicates the other).
pub fn replicate_both_ways(a: &Db, b: &Db) {
    for (db, source) in [(a, b), (b, a)] {
        db.sql(&format!(
            "CHANGE MASTER TO MASTER_HOST='{}', MASTER_USER='repl', MASTER_PASSWORD='repl-pw',
             MASTER_USE_GTID=slave_pos, MASTER_CONNECT_RETRY=1; START SLAVE;",
            source.addr
        ));
    }
}

/// Per domain, the sequence number of a MariaDB GTID position (`1-1-60,2-2-90`).
pub fn seqs(pos: &str) -> std::collections::BTreeMap<u32, u64> {
    pos.split(',')
        .filter_map(|g| {
            let mut p = g.trim().split('-');
            Some((p.next()?.parse().ok()?, p.nth(1)?.parse().ok()?))
        })
        .collect()
}

/// The transactions in `db`'s binary log that `other` has not executed, by domain (domain,
/// its seq, other's seq): errant transactions.
pub fn errant(db: &Db, other: &Db) -> Vec<(u32, u64, u64)> {
    let theirs = seqs(&other.sql("SELECT @@gtid_current_pos"));
    seqs(&db.sql("SELECT @@gtid_binlog_pos"))
        .into_iter()
        .filter_map(|(d, seq)| {
            let t = theirs.get(&d).copied().unwrap_or(0);
            (seq > t).then_some((d, seq, t))
        })
        .collect()
}

/// The operator's repair of a server with errant transactions (README: Errant
/// transactions): its data replaced by a consistent dump of `source` (not binlogged), its
/// binary log restarted at the dump's position — the errant transactions gone with it — and
/// replication from `source` resumed from there.
pub fn rebuild_from(db: &Db, source: &Db) {
    let out = Command::new("mariadb-dump")
        .args(["--no-defaults", "-uroot", "-S"])
        .arg(source.socket())
        .args([
            "--single-transaction",
            "--gtid",
            "--master-data=2",
            "--databases",
            "app",
        ])
        .output()
        .expect("mariadb-dump runs");
    assert!(
        out.status.success(),
        "mariadb-dump: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let dump = String::from_utf8_lossy(&out.stdout);
    let pos = dump
        .lines()
        .find_map(|l| {
            let rest = l.split("gtid_slave_pos='").nth(1)?;
            Some(rest.split('\'').next()?.to_string())
        })
        .expect("the dump names its GTID position");
    let file = db.dir.join("rebuild.sql");
    std::fs::write(&file, format!("SET SESSION sql_log_bin = 0;\n{dump}")).unwrap();
    db.sql("STOP SLAVE");
    db.sql(&format!("SOURCE {}", file.display()));
    db.sql(&format!(
        "RESET MASTER; SET GLOBAL gtid_binlog_state = '{pos}'; \
         SET GLOBAL gtid_slave_pos = '{pos}'; START SLAVE;"
    ));
}

/// Waits (bounded) until both servers have executed the same GTIDs.
pub fn wait_converged(a: &Db, b: &Db, limit: Duration) -> bool {
    let deadline = Instant::now() + limit;
    while Instant::now() < deadline {
        let pos = |d: &Db| d.try_sql("SELECT @@gtid_current_pos").unwrap_or_default();
        let (pa, pb) = (pos(a), pos(b));
        if !pa.is_empty() && pa == pb {
            return true;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    false
}
