//! Test hosts in network namespaces: a guard that creates namespaces with a unique prefix and
//! removes them (and the processes it started) on drop, also when a test panics.

#![allow(dead_code)]

pub mod dr;
pub mod etcd;
pub mod faults;
pub mod mariadb;
pub mod nspawn;
pub mod pair;
pub mod sqlclient;
pub mod timeline;

use std::{
    fs::File,
    io::{Read, Write},
    net::{SocketAddr, TcpListener, TcpStream},
    os::fd::AsRawFd,
    process::{Child, Command, Stdio},
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    thread::JoinHandle,
    time::{Duration, Instant},
};

/// Runs a command and panics with its output when it fails.
pub fn sh(args: &[&str]) -> String {
    let out = Command::new(args[0])
        .args(&args[1..])
        .output()
        .unwrap_or_else(|e| panic!("{args:?}: {e}"));
    assert!(
        out.status.success(),
        "{args:?} failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

pub struct Lab {
    pub prefix: String,
    namespaces: Vec<String>,
    children: Vec<Child>,
    threads: Vec<(Arc<AtomicBool>, JoinHandle<()>)>,
    /// `keep`: the drop leaves everything as it is.
    kept: bool,
}

/// The network namespaces whose name starts with `prefix-`.
pub fn list_namespaces(prefix: &str) -> Vec<String> {
    let out = Command::new("ip").args(["netns", "list"]).output();
    let text = out
        .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
        .unwrap_or_default();
    text.lines()
        .filter_map(|l| l.split_whitespace().next())
        .filter(|n| n.starts_with(&format!("{prefix}-")))
        .map(str::to_string)
        .collect()
}

/// SIGKILLs every process in namespace `ns` (a kept lab's, being removed).
pub fn kill_namespace_processes(ns: &str) {
    let out = Command::new("ip").args(["netns", "pids", ns]).output();
    for pid in out
        .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
        .unwrap_or_default()
        .split_whitespace()
        .filter_map(|p| p.parse::<i32>().ok())
    {
        unsafe { libc::kill(pid, libc::SIGKILL) };
    }
}

impl Lab {
    /// A lab with a prefix unique to this process and test.
    pub fn new(tag: &str) -> Lab {
        Lab::named(&format!("lbt{}{tag}", std::process::id() % 100_000))
    }

    /// A lab with exactly this prefix (one that outlives the test: `keep`). Whatever an
    /// earlier lab of that name left is removed first.
    pub fn named(prefix: &str) -> Lab {
        let stale = Lab {
            prefix: prefix.to_string(),
            namespaces: list_namespaces(prefix),
            children: vec![],
            threads: vec![],
            kept: false,
        };
        for ns in &stale.namespaces {
            kill_namespace_processes(ns);
        }
        drop(stale);
        Lab {
            prefix: prefix.to_string(),
            namespaces: vec![],
            children: vec![],
            threads: vec![],
            kept: false,
        }
    }

    /// Leaves everything running (namespaces, processes, files) when the lab drops; `Lab::named`
    /// with the same prefix, or `cargo xtask lab down`, removes it.
    pub fn keep(&mut self) {
        self.kept = true;
    }

    pub fn ns(&self, host: &str) -> String {
        format!("{}-{host}", self.prefix)
    }

    pub fn add_ns(&mut self, host: &str) -> String {
        let name = self.ns(host);
        let _ = Command::new("ip")
            .args(["netns", "del", &name])
            .stderr(Stdio::null())
            .status();
        sh(&["ip", "netns", "add", &name]);
        self.namespaces.push(name.clone());
        sh(&["ip", "-n", &name, "link", "set", "lo", "up"]);
        name
    }

    /// Runs `ip -n NS args...`.
    pub fn ip(&self, host: &str, args: &[&str]) -> String {
        let ns = self.ns(host);
        let mut v = vec!["ip", "-n", &ns];
        v.extend_from_slice(args);
        sh(&v)
    }

    /// Runs a command inside a namespace.
    pub fn exec(&self, host: &str, args: &[&str]) -> String {
        let ns = self.ns(host);
        let mut v = vec!["ip", "netns", "exec", &ns];
        v.extend_from_slice(args);
        sh(&v)
    }

    pub fn sysctl(&self, host: &str, key: &str, value: &str) {
        self.exec(host, &["sysctl", "-q", "-w", &format!("{key}={value}")]);
    }

    /// A bridge host `br` with bridge `br0`.
    pub fn bridge(&mut self) {
        self.add_ns("br");
        self.ip("br", &["link", "add", "br0", "type", "bridge"]);
        self.ip("br", &["link", "set", "br0", "up"]);
    }

    /// Host `host` with `eth0` (address `cidr`) plugged into the bridge as port `p-<host>`.
    pub fn host(&mut self, host: &str, cidr: &str) {
        let ns = self.add_ns(host);
        let port = format!("p-{host}");
        let br = self.ns("br");
        self.ip(
            "br",
            &[
                "link", "add", &port, "type", "veth", "peer", "name", "eth0", "netns", &ns,
            ],
        );
        self.ip("br", &["link", "set", &port, "master", "br0", "up"]);
        self.ip(host, &["addr", "add", cidr, "dev", "eth0"]);
        // The IPv6 link-local address is usable at once (VRRPv3 over IPv6 sends from it).
        self.sysctl(host, "net.ipv6.conf.eth0.accept_dad", "0");
        self.ip(host, &["link", "set", "eth0", "up"]);
        let _ = br;
    }

    pub fn mac(&self, host: &str, dev: &str) -> String {
        self.exec(host, &["cat", &format!("/sys/class/net/{dev}/address")])
            .trim()
            .to_string()
    }

    pub fn counter(&self, host: &str, dev: &str, name: &str) -> u64 {
        self.exec(
            host,
            &["cat", &format!("/sys/class/net/{dev}/statistics/{name}")],
        )
        .trim()
        .parse()
        .unwrap()
    }

    /// A bpffs directory for this lab's pinned data planes (removed when the lab drops).
    pub fn pin_dir(&self, host: &str) -> String {
        format!("/sys/fs/bpf/{}-{host}", self.prefix)
    }

    /// Starts a process inside a namespace's network (but the host's mounts, so that pins
    /// under /sys/fs/bpf outlive it, as they do on a real host); it is killed (by PID) when
    /// the lab drops.
    pub fn spawn(&mut self, host: &str, args: &[&str], log: &str) -> u32 {
        let mut cmd = Command::new("nsenter");
        cmd.arg(format!("--net=/run/netns/{}", self.ns(host)))
            .arg("--")
            .args(args);
        self.launch(cmd, log)
    }

    /// Starts a process from the host as it is (for programs that enter a namespace
    /// themselves, like `keepalived --namespace`); killed by PID when the lab drops.
    pub fn spawn_host(&mut self, args: &[&str], log: &str) -> u32 {
        let mut cmd = Command::new(args[0]);
        cmd.args(&args[1..]);
        self.launch(cmd, log)
    }

    /// Starts `cmd` with no stdin and its output appended to `log`; remembers it for `stop`,
    /// `kill` and the drop.
    fn launch(&mut self, mut cmd: Command, log: &str) -> u32 {
        let log = File::options().create(true).append(true).open(log).unwrap();
        let child = cmd
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .unwrap();
        let pid = child.id();
        self.children.push(child);
        pid
    }

    /// Starts `lb-agent run --config CONFIG` in `host` (output appended to `log`) and waits
    /// (bounded: 20 s) until its data plane is attached; stops it and panics with its log
    /// when it fails to start.
    pub fn start_agent(&mut self, host: &str, config: &std::path::Path, log: &str) -> u32 {
        let pid = self.spawn(
            host,
            &[
                env!("CARGO_BIN_EXE_lb-agent"),
                "run",
                "--config",
                config.to_str().unwrap(),
            ],
            log,
        );
        self.wait_for_log(log, "data plane attached", pid);
        pid
    }

    /// Waits (bounded: 20 s) until `log` holds `needle`; when the agent `pid` reported a fatal
    /// error instead, or time runs out, stops it and panics with the log.
    pub fn wait_for_log(&mut self, log: &str, needle: &str, pid: u32) {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let text = std::fs::read_to_string(log).unwrap_or_default();
            if text.contains(needle) {
                return;
            }
            if text.contains("lb-agent: ") || Instant::now() > deadline {
                self.stop(pid);
                panic!("lb-agent did not report `{needle}`:\n{text}");
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Whether `addr` is configured in `host` (on any interface).
    pub fn has_address(&self, host: &str, addr: &str) -> bool {
        self.ip(host, &["-o", "addr", "show"])
            .split_whitespace()
            .any(|w| w.split('/').next() == Some(addr))
    }

    /// Kills a process this lab started with SIGKILL, as a crash would.
    pub fn kill(&mut self, pid: u32) {
        if let Some(i) = self.children.iter().position(|c| c.id() == pid) {
            let mut child = self.children.remove(i);
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Stops a process this lab started: SIGTERM, then SIGKILL after 5 s.
    pub fn stop(&mut self, pid: u32) -> Option<std::process::ExitStatus> {
        let i = self.children.iter().position(|c| c.id() == pid)?;
        let mut child = self.children.remove(i);
        unsafe { libc::kill(pid as i32, libc::SIGTERM) };
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline {
            if let Ok(Some(status)) = child.try_wait() {
                return Some(status);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = child.kill();
        child.wait().ok()
    }

    /// A TCP server in `host` on `addr` that answers every connection with `reply` and
    /// closes.
    pub fn serve(&mut self, host: &str, addr: SocketAddr, reply: &'static str) {
        self.serve_with(host, addr, move |mut s| {
            let _ = s.write_all(reply.as_bytes());
        });
    }

    /// A TCP server in `host` on `addr` that answers each line with `name:line` for as long
    /// as the client keeps the connection (reads time out after 10 s).
    pub fn serve_echo(&mut self, host: &str, addr: SocketAddr, name: &'static str) {
        self.serve_with(host, addr, move |s| {
            std::thread::spawn(move || {
                use std::io::BufRead;
                s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
                let mut w = s.try_clone().unwrap();
                for line in std::io::BufReader::new(s).lines() {
                    let Ok(line) = line else { break };
                    if w.write_all(format!("{name}:{line}\n").as_bytes()).is_err() {
                        break;
                    }
                }
            });
        });
    }

    /// A TCP server in `host` on `addr` handing each connection to `handle`, on a thread that
    /// entered the namespace (`setns` is per thread); it stops when the lab drops.
    fn serve_with(
        &mut self,
        host: &str,
        addr: SocketAddr,
        handle: impl Fn(TcpStream) + Send + 'static,
    ) {
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        let ns = self.ns(host);
        let (tx, rx) = std::sync::mpsc::channel();
        let t = std::thread::spawn(move || {
            enter(&ns);
            let l = TcpListener::bind(addr).expect("bind in namespace");
            l.set_nonblocking(true).unwrap();
            tx.send(()).unwrap();
            while !flag.load(Ordering::Relaxed) {
                match l.accept() {
                    Ok((s, _)) => {
                        s.set_nonblocking(false).unwrap();
                        handle(s);
                    }
                    Err(_) => std::thread::sleep(Duration::from_millis(2)),
                }
            }
        });
        rx.recv_timeout(Duration::from_secs(5))
            .expect("server started");
        self.threads.push((stop, t));
    }

    /// Runs `f` on a thread inside `host`'s namespace.
    pub fn within<T: Send + 'static>(
        &self,
        host: &str,
        f: impl FnOnce() -> T + Send + 'static,
    ) -> T {
        let ns = self.ns(host);
        std::thread::spawn(move || {
            enter(&ns);
            f()
        })
        .join()
        .expect("namespace thread panicked")
    }
}

/// Runs `fut` to completion on a single-threaded tokio runtime of its own (for test threads
/// that entered a namespace).
pub fn block_on<F: std::future::Future>(fut: F) -> F::Output {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("a tokio runtime")
        .block_on(fut)
}

/// Moves the calling thread into a named network namespace.
pub fn enter(ns: &str) {
    let f = File::open(format!("/run/netns/{ns}")).expect("namespace exists");
    let rc = unsafe { libc::setns(f.as_raw_fd(), libc::CLONE_NEWNET) };
    assert_eq!(rc, 0, "setns {ns}: {}", std::io::Error::last_os_error());
}

/// A client connection opened from inside a namespace (the socket keeps its namespace).
pub fn connect_from(ns: &str, addr: SocketAddr) -> TcpStream {
    let ns = ns.to_string();
    std::thread::spawn(move || {
        enter(&ns);
        let s = TcpStream::connect_timeout(&addr, Duration::from_secs(2))
            .expect("connect through the VIP");
        s.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
        s
    })
    .join()
    .unwrap()
}

/// Sends one line and reads one line back.
pub fn round_trip(s: &mut TcpStream, line: &str) -> std::io::Result<String> {
    use std::io::BufRead;
    s.write_all(format!("{line}\n").as_bytes())?;
    let mut r = std::io::BufReader::new(s.try_clone()?);
    let mut out = String::new();
    r.read_line(&mut out)?;
    Ok(out.trim().to_string())
}

/// Connects to `addr`, reads the reply to the end (bounded by timeouts).
pub fn ask(addr: SocketAddr) -> std::io::Result<String> {
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(2))?;
    s.set_read_timeout(Some(Duration::from_secs(2)))?;
    let mut out = String::new();
    s.read_to_string(&mut out)?;
    Ok(out)
}

impl Drop for Lab {
    fn drop(&mut self) {
        if self.kept {
            for (stop, _) in &self.threads {
                stop.store(true, Ordering::Relaxed);
            }
            return;
        }
        for pid in self.children.iter().map(|c| c.id()).collect::<Vec<_>>() {
            self.stop(pid);
        }
        for (stop, _) in &self.threads {
            stop.store(true, Ordering::Relaxed);
        }
        for (_, t) in self.threads.drain(..) {
            let _ = t.join();
        }
        for ns in self.namespaces.drain(..).rev() {
            let _ = Command::new("ip").args(["netns", "del", &ns]).status();
            // keepalived --namespace keeps its pid files here.
            let _ = std::fs::remove_dir_all(format!("/run/keepalived/{ns}"));
        }
        let dir = std::env::temp_dir().join(&self.prefix);
        if std::thread::panicking() {
            keep_logs(&dir);
        }
        let _ = std::fs::remove_dir_all(&dir);
        // Pins left by a killed agent (or a failed test): every /sys/fs/bpf/<prefix>-*.
        if let Ok(entries) = std::fs::read_dir("/sys/fs/bpf") {
            let mine = format!("{}-", self.prefix);
            for e in entries.flatten() {
                if e.file_name().to_string_lossy().starts_with(&mine) {
                    let _ = std::fs::remove_dir_all(e.path());
                }
            }
        }
    }
}

/// A failed test's logs (agents, servers, etcd) outlive its lab: copied to
/// `/tmp/lb-failed/<lab>/`, and their last lines printed (CI shows them).
fn keep_logs(dir: &std::path::Path) {
    let Some(name) = dir.file_name() else { return };
    let to = std::env::temp_dir().join("lb-failed").join(name);
    let _ = std::fs::create_dir_all(&to);
    let mut logs = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).into_iter().flatten().flatten() {
            let p = e.path();
            if p.is_dir() {
                stack.push(p);
            } else if p.extension().is_some_and(|x| x == "log") {
                logs.push(p);
            }
        }
    }
    for p in logs {
        let text = std::fs::read_to_string(&p).unwrap_or_default();
        let parent = p
            .parent()
            .and_then(|d| d.file_name())
            .map(|d| d.to_string_lossy().into_owned())
            .unwrap_or_default();
        let name = format!("{parent}-{}", p.file_name().unwrap().to_string_lossy());
        let _ = std::fs::write(to.join(name), &text);
        let tail: Vec<&str> = text.lines().rev().take(25).collect();
        // Its size and age: a log that stopped early (CI once showed two agents silent for
        // their last minute, though they acted) is told from one cut short here.
        let age = std::fs::metadata(&p)
            .and_then(|m| m.modified())
            .ok()
            .and_then(|t| t.elapsed().ok())
            .map_or("?".into(), |d| format!("{:.1} s", d.as_secs_f64()));
        eprintln!(
            "--- {} (last {} lines of {}, {} bytes, last written {age} ago)",
            p.display(),
            tail.len(),
            text.lines().count(),
            text.len()
        );
        for l in tail.iter().rev() {
            eprintln!("{l}");
        }
    }
    eprintln!("--- logs kept in {}", to.display());
    // A full disk loses log lines without a word (and stalls MariaDB's binary log).
    eprintln!(
        "--- free in {}: {}",
        dir.display(),
        free_space(dir).map_or("unknown".into(), |b| format!("{} MiB", b >> 20))
    );
}

/// Bytes free for root on the file system holding `path`.
fn free_space(path: &std::path::Path) -> Option<u64> {
    let c = std::ffi::CString::new(path.as_os_str().as_encoded_bytes()).ok()?;
    // SAFETY: statvfs fills the zeroed struct; the path is a valid C string.
    let mut st: libc::statvfs = unsafe { std::mem::zeroed() };
    (unsafe { libc::statvfs(c.as_ptr(), &mut st) } == 0).then(|| st.f_bfree * st.f_frsize)
}
