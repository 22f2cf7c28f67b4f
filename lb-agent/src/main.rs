//! `lb-agent`: command line. `run` is the daemon; `check-config` validates a file.

mod run;

use std::{path::PathBuf, process::ExitCode};

use clap::{Parser, Subcommand};
use lb_agent::config::Config;

#[derive(Parser)]
#[command(version, about = "XDP direct-routing load balancer agent")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Load the XDP program, fill its maps from the config, and forward until SIGINT/SIGTERM.
    Run {
        #[arg(long, short)]
        config: PathBuf,
    },
    /// Validate a config file: exit 0 when it is valid, 1 with the error otherwise.
    CheckConfig { file: PathBuf },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::CheckConfig { file } => match Config::load(&file) {
            Ok(_) => {
                println!("{}: OK", file.display());
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("{e}");
                ExitCode::FAILURE
            }
        },
        Command::Run { config } => match run::run(&config) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("lb-agent: {e:#}");
                ExitCode::FAILURE
            }
        },
    }
}
