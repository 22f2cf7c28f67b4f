//! A three-member etcd cluster for the quorum tests: one member in each DB host's namespace
//! and one in a witness namespace, as the README's witness setup runs it (Debian's
//! `etcd-server`); started, killed and wiped by the tests, by PID.

use std::{
    path::PathBuf,
    time::{Duration, Instant},
};

use super::Lab;

/// The client port of every member.
pub const CLIENT_PORT: u16 = 2379;

/// One member: its host (namespace), address and process.
pub struct Member {
    pub host: &'static str,
    pub addr: &'static str,
    pub pid: Option<u32>,
}

pub struct Cluster {
    pub members: Vec<Member>,
    dir: PathBuf,
    /// Bumped when the cluster is created anew (data lost): a new cluster token.
    generation: u32,
}

impl Cluster {
    /// `members`: (host, address); nothing runs yet (`start_all`).
    pub fn new(lab: &Lab, members: &[(&'static str, &'static str)]) -> Cluster {
        let dir = std::env::temp_dir().join(&lab.prefix).join("etcd");
        std::fs::create_dir_all(&dir).unwrap();
        Cluster {
            members: members
                .iter()
                .map(|&(host, addr)| Member {
                    host,
                    addr,
                    pid: None,
                })
                .collect(),
            dir,
            generation: 0,
        }
    }

    /// The client URLs, for `[quorum] endpoints`.
    pub fn endpoints(&self) -> Vec<String> {
        self.members
            .iter()
            .map(|m| format!("http://{}:{CLIENT_PORT}", m.addr))
            .collect()
    }

    fn initial_cluster(&self) -> String {
        self.members
            .iter()
            .map(|m| format!("{}=http://{}:2380", m.host, m.addr))
            .collect::<Vec<_>>()
            .join(",")
    }

    /// Starts (or restarts, with its data) the member in `host`.
    pub fn start(&mut self, lab: &mut Lab, host: &str) {
        let initial = self.initial_cluster();
        let token = format!("{}-{}", lab.prefix, self.generation);
        let i = self.index(host);
        let m = &self.members[i];
        let data = self.dir.join(format!("{}-{}", m.host, self.generation));
        let log = self
            .dir
            .join(format!("{}.log", m.host))
            .to_string_lossy()
            .into_owned();
        let client = format!("http://{}:{CLIENT_PORT}", m.addr);
        let peer = format!("http://{}:2380", m.addr);
        let args = [
            "etcd".to_string(),
            format!("--name={}", m.host),
            format!("--data-dir={}", data.display()),
            format!("--listen-client-urls={client}"),
            format!("--advertise-client-urls={client}"),
            format!("--listen-peer-urls={peer}"),
            format!("--initial-advertise-peer-urls={peer}"),
            format!("--initial-cluster={initial}"),
            format!("--initial-cluster-token={token}"),
            "--initial-cluster-state=new".into(),
            // etcd's defaults (100 ms heartbeat, 1 s election): a member cut off loses its
            // leader within a second, and the minimum lease TTL is 1.5 s.
            "--heartbeat-interval=100".into(),
            "--election-timeout=1000".into(),
            // A member back from a cut would otherwise force an election with its raised
            // term and leave the cluster leaderless for a moment (3.4's default is off).
            "--pre-vote=true".into(),
            "--quota-backend-bytes=67108864".into(),
        ];
        let refs: Vec<&str> = args.iter().map(String::as_str).collect();
        let host = m.host;
        let pid = lab.spawn(host, &refs, &log);
        self.members[i].pid = Some(pid);
    }

    pub fn start_all(&mut self, lab: &mut Lab) {
        let hosts: Vec<&'static str> = self.members.iter().map(|m| m.host).collect();
        for h in hosts {
            self.start(lab, h);
        }
    }

    /// SIGKILLs the member in `host`.
    pub fn kill(&mut self, lab: &mut Lab, host: &str) {
        let i = self.index(host);
        if let Some(pid) = self.members[i].pid.take() {
            lab.kill(pid);
        }
    }

    /// Every member killed and its data gone; a new cluster (new token) started in its
    /// place, empty.
    pub fn lose_all_data(&mut self, lab: &mut Lab) {
        let hosts: Vec<&'static str> = self.members.iter().map(|m| m.host).collect();
        for h in &hosts {
            self.kill(lab, h);
        }
        for e in std::fs::read_dir(&self.dir).unwrap().flatten() {
            if e.path().is_dir() {
                let _ = std::fs::remove_dir_all(e.path());
            }
        }
        self.generation += 1;
        self.start_all(lab);
    }

    /// Waits (bounded) until the member in `host` answers as part of a cluster with a leader.
    pub fn wait_healthy(&self, lab: &Lab, host: &str, limit: Duration) -> bool {
        let m = &self.members[self.index(host)];
        let url = format!("{}:{CLIENT_PORT}", m.addr);
        let start = Instant::now();
        while start.elapsed() < limit {
            // etcd's /health says {"health":"true"} once the member has a leader.
            let (addr, port) = url.split_once(':').unwrap();
            let script = format!(
                "exec 3<>/dev/tcp/{addr}/{port} && printf 'GET /health HTTP/1.0\\r\\n\\r\\n' >&3 && cat <&3"
            );
            let out = std::process::Command::new("nsenter")
                .arg(format!("--net=/run/netns/{}", lab.ns(host)))
                .args(["--", "timeout", "1", "bash", "-c", &script])
                .output();
            if out.is_ok_and(|o| String::from_utf8_lossy(&o.stdout).contains("\"true\"")) {
                return true;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        false
    }

    fn index(&self, host: &str) -> usize {
        self.members
            .iter()
            .position(|m| m.host == host)
            .unwrap_or_else(|| panic!("no etcd member in {host}"))
    }
}
