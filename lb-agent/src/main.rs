//! `lb-agent`: command line. `run` is the daemon; `check-config` validates a file.

mod daemon;
mod import;
mod manual;

use std::{path::PathBuf, process::ExitCode};

use clap::{Parser, Subcommand};
use lb_agent::{config::Config, control::Request};

#[derive(Parser)]
#[command(version, about = "XDP direct-routing load balancer agent")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Clone, Copy, clap::ValueEnum)]
enum OnOff {
    On,
    Off,
}

#[derive(Subcommand)]
enum Command {
    /// Print a manual page or shell completions (for packaging): `man` is lb-agent(8),
    /// `config-man` lb-agent.toml(5), the others a completion script for that shell.
    #[command(hide = true)]
    Generate {
        #[arg(value_enum)]
        what: manual::Generated,
        /// With `man`: write lb-agent.8 and a page per subcommand into this directory.
        #[arg(long)]
        dir: Option<PathBuf>,
    },
    /// Load the XDP program, fill its maps from the config, and forward until SIGINT/SIGTERM.
    Run {
        #[arg(long, short)]
        config: PathBuf,
        /// Instead of running: detach and unpin the data plane a killed agent left behind.
        #[arg(long)]
        cleanup: bool,
    },
    /// Show services, real servers and counters of the running agent (over its control
    /// socket; root only).
    Status {
        /// JSON instead of a table.
        #[arg(long)]
        json: bool,
        /// The agent's configuration, to find its control socket.
        #[arg(long, short)]
        config: Option<PathBuf>,
        /// The control socket (default: from --config, else /run/lb-agent/control.sock).
        #[arg(long)]
        socket: Option<PathBuf>,
    },
    /// Hand a service's traffic back from its sorry server to its real servers (services with
    /// `failback = "manual"`; refused while they fail their checks).
    Failback {
        /// The virtual server's name (as `status` shows it).
        service: String,
        #[arg(long, short)]
        config: Option<PathBuf>,
        #[arg(long)]
        socket: Option<PathBuf>,
    },
    /// Make the running agent read its configuration file again and apply it (what SIGHUP
    /// does); fails, with the reason, when the agent refuses the new file (it then keeps the
    /// running configuration). The unit's `ExecReload`.
    Reload {
        #[arg(long, short)]
        config: Option<PathBuf>,
        #[arg(long)]
        socket: Option<PathBuf>,
    },
    /// Prepare a hitless restart: the agent's next stop (within a minute) leaves the data
    /// plane forwarding, pinned, with the VIPs in place, for the next agent to adopt — instead
    /// of resigning and detaching. `lb-agent prepare-restart && systemctl restart lb-agent`;
    /// the package's upgrade does this.
    PrepareRestart {
        #[arg(long, short)]
        config: Option<PathBuf>,
        #[arg(long)]
        socket: Option<PathBuf>,
    },
    /// Move a service's writes to its sorry server by plan (the writer fenced, its clients
    /// disconnected; the flip once the sorry server has everything the writer committed;
    /// replicas re-pointed), or back to its writer with `--to WRITER` (the graceful
    /// handover). Waits until it is done or failed. Run it on the agent that decides the
    /// writer (the VRRP master of the service's address, or the quorum's leader).
    Switchover {
        service: String,
        /// The server to take the writes: the sorry server (the default) or the writer.
        #[arg(long)]
        to: Option<std::net::IpAddr>,
        #[arg(long, short)]
        config: Option<PathBuf>,
        #[arg(long)]
        socket: Option<PathBuf>,
    },
    /// Drain a server for maintenance (`on`: out of writer pools, weight 0 in the others so
    /// established connections go on; a replica is not re-pointed meanwhile) or end it
    /// (`off`: back once it replicates with both threads running and no lag). Refused for
    /// the server that has a service's writes. Applies to this agent: run it on both.
    Maintenance {
        server: std::net::IpAddr,
        #[arg(value_enum)]
        state: OnOff,
        #[arg(long, short)]
        config: Option<PathBuf>,
        #[arg(long)]
        socket: Option<PathBuf>,
    },
    /// Set this host up as a DR real server (what the recipe's realserver.sh does): the VIPs
    /// on `lo`, `arp_ignore=1` and `arp_announce=2`; or back (`down`). Idempotent.
    Realserver {
        #[arg(value_enum)]
        action: RealserverAction,
        /// Take the VIPs from this configuration's virtual servers.
        #[arg(long, short)]
        config: Option<PathBuf>,
        /// VIPs to use (instead of, or besides, --config).
        #[arg(long = "vip")]
        vips: Vec<std::net::IpAddr>,
    },
    /// Validate a config file: exit 0 when it is valid, 1 with the error otherwise.
    CheckConfig { file: PathBuf },
    /// Convert a keepalived.conf (with its includes) to this agent's TOML, on stdout or into
    /// `--output`. What cannot be converted is listed on stderr with its line, and the exit
    /// status is 1, unless `--allow-partial`.
    ImportKeepalived {
        file: PathBuf,
        #[arg(long, short)]
        output: Option<PathBuf>,
        #[arg(long)]
        allow_partial: bool,
    },
}

#[derive(Clone, Copy, clap::ValueEnum)]
enum RealserverAction {
    Up,
    Down,
}

fn realserver(
    action: RealserverAction,
    config: Option<PathBuf>,
    mut vips: Vec<std::net::IpAddr>,
) -> ExitCode {
    if let Some(c) = config {
        match Config::load(&c) {
            Ok(cfg) => {
                for vs in &cfg.services {
                    let a = vs.address;
                    if !vips.contains(&a) {
                        vips.push(a);
                    }
                }
            }
            Err(e) => {
                eprintln!("{e}");
                return ExitCode::FAILURE;
            }
        }
    }
    if vips.is_empty() {
        eprintln!("lb-agent realserver: no VIPs (give --config FILE or --vip ADDRESS)");
        return ExitCode::FAILURE;
    }
    let rt = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("lb-agent realserver: {e}");
            return ExitCode::FAILURE;
        }
    };
    let result = rt.block_on(async {
        match action {
            RealserverAction::Up => lb_agent::realserver::up(&vips).await,
            RealserverAction::Down => lb_agent::realserver::down(&vips).await,
        }
    });
    match result {
        Ok(done) => {
            for line in done {
                println!("{line}");
            }
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("lb-agent realserver: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::Generate {
            what: manual::Generated::Man,
            dir: Some(dir),
        } => match manual::write_man_pages(<Cli as clap::CommandFactory>::command(), &dir) {
            Ok(pages) => {
                for page in pages {
                    println!("{}", page.display());
                }
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("lb-agent generate man: writing into {}: {e}", dir.display());
                ExitCode::FAILURE
            }
        },
        Command::Generate { what, dir: None } => {
            manual::generate(what, <Cli as clap::CommandFactory>::command());
            ExitCode::SUCCESS
        }
        Command::Generate { dir: Some(_), .. } => {
            eprintln!("lb-agent generate: --dir goes with `man` only");
            ExitCode::from(2)
        }
        Command::CheckConfig { file } => match Config::load(&file) {
            Ok(cfg) => {
                for w in &cfg.warnings {
                    eprintln!("{}: warning: {w}", file.display());
                }
                println!("{}: OK", file.display());
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("{e}");
                ExitCode::FAILURE
            }
        },
        Command::Status {
            json,
            config,
            socket,
        } => status(json, config, socket),
        Command::Failback {
            service,
            config,
            socket,
        } => ask(config, socket, Request::Failback { service }, "done"),
        Command::Reload { config, socket } => ask(config, socket, Request::Reload, "reloaded"),
        Command::Maintenance {
            server,
            state,
            config,
            socket,
        } => ask(
            config,
            socket,
            Request::Maintenance {
                server,
                on: matches!(state, OnOff::On),
            },
            "done",
        ),
        Command::Switchover {
            service,
            to,
            config,
            socket,
        } => switchover(service, to, config, socket),
        Command::PrepareRestart { config, socket } => {
            ask(config, socket, Request::PrepareRestart, "prepared")
        }
        Command::Realserver {
            action,
            config,
            vips,
        } => realserver(action, config, vips),
        Command::ImportKeepalived {
            file,
            output,
            allow_partial,
        } => import::import_keepalived(&file, output.as_deref(), allow_partial),
        Command::Run { config, cleanup } => match if cleanup {
            daemon::cleanup(&config)
        } else {
            daemon::run(&config)
        } {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("lb-agent: {e:#}");
                ExitCode::FAILURE
            }
        },
    }
}

/// Sends one request to the running agent and prints its answer (`ok`, or `done` when it
/// says nothing); a refusal is printed on stderr and fails the command.
fn ask(config: Option<PathBuf>, socket: Option<PathBuf>, request: Request, done: &str) -> ExitCode {
    let Some(socket) = socket_of(config, socket) else {
        return ExitCode::FAILURE;
    };
    match lb_agent::control::ask(&socket, &request) {
        Ok(v) => {
            println!("{}", v.get("ok").and_then(|o| o.as_str()).unwrap_or(done));
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("{e:#}");
            ExitCode::FAILURE
        }
    }
}

/// `lb-agent switchover`: the request, then `status` until the switch is done or failed
/// (bounded: the agent gives up after `switchover::TIMEOUT`; the way back, a handover, is
/// followed as long).
fn switchover(
    service: String,
    to: Option<std::net::IpAddr>,
    config: Option<PathBuf>,
    socket: Option<PathBuf>,
) -> ExitCode {
    let Some(socket) = socket_of(config, socket) else {
        return ExitCode::FAILURE;
    };
    let request = Request::Switchover {
        service: service.clone(),
        to,
    };
    match lb_agent::control::ask(&socket, &request) {
        Ok(v) => println!("{}", v.get("ok").and_then(|o| o.as_str()).unwrap_or("")),
        Err(e) => {
            eprintln!("{e:#}");
            return ExitCode::FAILURE;
        }
    }
    let deadline = std::time::Instant::now()
        + lb_agent::health::switchover::TIMEOUT
        + std::time::Duration::from_secs(20);
    let mut last = String::new();
    while std::time::Instant::now() < deadline {
        std::thread::sleep(std::time::Duration::from_millis(200));
        let Ok(s) = lb_agent::control::ask(&socket, &Request::Status) else {
            continue;
        };
        let Some(svc) = s["services"]
            .as_array()
            .and_then(|a| a.iter().find(|svc| svc["name"] == service.as_str()))
        else {
            continue;
        };
        let state = svc["switchover"].as_str().unwrap_or_default().to_string();
        let on_sorry = svc["using_sorry_server"] == true;
        if state != last && !state.is_empty() {
            println!("{state}");
            last = state.clone();
        }
        if state.starts_with("failed") {
            return ExitCode::FAILURE;
        }
        let done = match to {
            // Back on the writer: no longer switched, out of the sorry server.
            Some(_) if !state.starts_with("switched") => !on_sorry,
            Some(_) => false,
            None => state.starts_with("switched"),
        };
        if done {
            println!("done");
            return ExitCode::SUCCESS;
        }
    }
    eprintln!("{service}: not done in time; see `lb-agent status`");
    ExitCode::FAILURE
}

/// The control socket: given, from the configuration, or the default.
fn socket_of(config: Option<PathBuf>, socket: Option<PathBuf>) -> Option<PathBuf> {
    Some(match (socket, config) {
        (Some(s), _) => s,
        (None, Some(c)) => match Config::load(&c) {
            Ok(cfg) => lb_agent::control::socket_path(cfg.global.control_socket.as_deref()),
            Err(e) => {
                eprintln!("{e}");
                return None;
            }
        },
        (None, None) => lb_agent::control::socket_path(None),
    })
}

fn status(json: bool, config: Option<PathBuf>, socket: Option<PathBuf>) -> ExitCode {
    let Some(socket) = socket_of(config, socket) else {
        return ExitCode::FAILURE;
    };
    match lb_agent::control::ask(&socket, &lb_agent::control::Request::Status) {
        Ok(v) if json => {
            println!("{}", serde_json::to_string_pretty(&v).unwrap_or_default());
            ExitCode::SUCCESS
        }
        Ok(v) => match serde_json::from_value::<lb_agent::control::status::Status>(v) {
            Ok(s) => {
                print!("{}", lb_agent::control::status::render(&s));
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("lb-agent status: unexpected reply: {e}");
                ExitCode::FAILURE
            }
        },
        Err(e) => {
            eprintln!("{e:#}");
            ExitCode::FAILURE
        }
    }
}
