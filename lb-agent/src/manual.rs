//! `lb-agent generate`: the manual pages and shell completions a package installs —
//! lb-agent(8) from the command line's own definition (clap_mangen), lb-agent.toml(5) from
//! the README's "Configuration" section (the one reference of the file format), completions
//! from the same definition (clap_complete). Generated, so they cannot drift from the code.

use std::{
    io::Write,
    path::{Path, PathBuf},
};

use clap::ValueEnum;

#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum Generated {
    /// lb-agent(8).
    Man,
    /// lb-agent.toml(5).
    ConfigMan,
    Bash,
    Zsh,
    Fish,
}

/// The README's "Configuration" section, up to the next section.
const README: &str = include_str!("../../README.md");

pub fn generate(what: Generated, mut cli: clap::Command) {
    let mut out = std::io::stdout().lock();
    let shell = match what {
        Generated::Man => {
            let man = clap_mangen::Man::new(for_pages(cli)).section("8");
            let _ = man.render(&mut out);
            return;
        }
        Generated::ConfigMan => {
            let _ = out.write_all(config_page(README).as_bytes());
            return;
        }
        Generated::Bash => clap_complete::Shell::Bash,
        Generated::Zsh => clap_complete::Shell::Zsh,
        Generated::Fish => clap_complete::Shell::Fish,
    };
    clap_complete::generate(shell, &mut cli, "lb-agent", &mut out);
}

/// The command as the pages show it: named `lb-agent` (not the test binary's name), without
/// clap's `help` subcommand (it would be listed as a page that does not exist), built so
/// that every subcommand carries its full name (`lb-agent-run`).
fn for_pages(cli: clap::Command) -> clap::Command {
    let mut cli = cli.name("lb-agent").disable_help_subcommand(true);
    cli.build();
    cli
}

/// lb-agent(8) and a page for each visible subcommand (`lb-agent-run.8` …), all in section
/// 8: the main page lists them by those names. Returns the files written.
pub fn write_man_pages(cli: clap::Command, dir: &Path) -> std::io::Result<Vec<PathBuf>> {
    fn write(cmd: clap::Command, dir: &Path, done: &mut Vec<PathBuf>) -> std::io::Result<()> {
        for sub in cmd.get_subcommands().filter(|s| !s.is_hide_set()) {
            write(sub.clone(), dir, done)?;
        }
        done.push(clap_mangen::Man::new(cmd).section("8").generate_to(dir)?);
        Ok(())
    }
    let mut done = Vec::new();
    write(for_pages(cli), dir, &mut done)?;
    Ok(done)
}

/// lb-agent.toml(5) in roff: the README's "## Configuration" section, its `###` headings as
/// subsections, fenced blocks as literal text, the prose as paragraphs.
pub fn config_page(readme: &str) -> String {
    let section = readme
        .split("\n## ")
        .find(|s| s.starts_with("Configuration\n"))
        .unwrap_or("Configuration\n(the README has no Configuration section)\n");
    let mut out = String::from(
        ".TH LB-AGENT.TOML 5 \"\" \"lb-agent\" \"File formats\"\n\
         .SH NAME\nlb-agent.toml \\- configuration of lb-agent, the XDP load balancer agent\n\
         .SH DESCRIPTION\n",
    );
    let mut literal = false;
    for line in section.lines().skip(1) {
        if line.starts_with("```") {
            out.push_str(if literal {
                ".fi\n.RE\n"
            } else {
                ".RS 2\n.nf\n"
            });
            literal = !literal;
            continue;
        }
        if literal {
            out.push_str(&escape(line));
            out.push('\n');
        } else if let Some(h) = line.strip_prefix("### ") {
            out.push_str(&format!(".SS {}\n", escape(h)));
        } else if line.trim().is_empty() {
            out.push_str(".PP\n");
        } else {
            // Markdown's marks (code, bold, an escaped backtick) are not roff's.
            let prose = line
                .replace("\\`", "`")
                .replace(['`'], "")
                .replace("**", "");
            out.push_str(&escape(&prose));
            out.push('\n');
        }
    }
    if literal {
        out.push_str(".fi\n.RE\n");
    }
    out.push_str(".SH SEE ALSO\nlb-agent(8), keepalived.conf(5)\n");
    out
}

/// Text safe in roff: backslashes doubled, a line's leading `.` or `'` (a request) guarded.
fn escape(line: &str) -> String {
    let s = line.replace('\\', "\\e");
    if s.starts_with('.') || s.starts_with('\'') {
        format!("\\&{s}")
    } else {
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_config_page_is_the_readme_section_in_roff() {
        let page = config_page(README);
        assert!(page.starts_with(".TH LB-AGENT.TOML 5"), "{page}");
        // The reference's keys, from the README's annotated example.
        for key in [
            "metrics_listen",
            "pin_dir",
            "virtual_router_id",
            "failback",
            "sorry_server",
        ] {
            assert!(page.contains(key), "{key} missing");
        }
        // Balanced literal blocks; no line starts a roff request by accident.
        assert_eq!(page.matches(".nf\n").count(), page.matches(".fi\n").count());
        for l in page.lines() {
            if let Some(req) = l.strip_prefix('.') {
                let name = req.split_whitespace().next().unwrap_or_default();
                assert!(
                    ["TH", "SH", "SS", "PP", "RS", "RE", "nf", "fi"].contains(&name),
                    "a stray request: {l}"
                );
            }
        }
        assert!(escape(".x").starts_with("\\&") && escape("a\\b") == "a\\eb");
    }
}
