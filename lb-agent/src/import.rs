//! `lb-agent import-keepalived`: prints findings, writes the TOML, checks that it loads.

use std::{path::Path, process::ExitCode};

use lb_agent::config::{Config, keepalived};

pub fn import_keepalived(file: &Path, output: Option<&Path>, allow_partial: bool) -> ExitCode {
    let import = match keepalived::import(file) {
        Ok(i) => i,
        Err(e) => {
            eprintln!("{e}");
            return ExitCode::FAILURE;
        }
    };
    for f in &import.findings {
        eprintln!("{f}");
    }
    let header = format!(
        "# Converted from {} by `lb-agent import-keepalived`.\n\n",
        file.display()
    );
    let text = header + &import.config.to_toml();
    // What we write must load: a converter bug must not become an operator's surprise.
    if let Err(e) = Config::parse(output.unwrap_or(Path::new("<converted>")), &text) {
        eprintln!("the converted configuration does not validate: {e}");
        return ExitCode::FAILURE;
    }
    if import.is_partial() && !allow_partial {
        eprintln!(
            "{}: not converted completely (see above); nothing written. --allow-partial writes \
             what could be converted",
            file.display()
        );
        return ExitCode::FAILURE;
    }
    match output {
        Some(path) => {
            if let Err(e) = std::fs::write(path, &text) {
                eprintln!("writing {}: {e}", path.display());
                return ExitCode::FAILURE;
            }
            eprintln!("wrote {}", path.display());
        }
        None => print!("{text}"),
    }
    ExitCode::SUCCESS
}
