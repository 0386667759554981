//! `hids-agent`: the master process of the HIDS agent.
//!
//! It supervises plugins (each a child process speaking frames over its stdin/stdout),
//! forwards their events to the sinks, and reports its status. It holds no detection
//! logic. Without a control plane it runs standalone on built-in defaults.

mod cgroups;
mod config;
mod events;
mod guard;
mod internal_events;
mod logging;
mod master;
mod pipeline;
mod plugins;
mod queue;
mod status;
mod supervisor;
mod update;

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use clap::{Parser, Subcommand};

use crate::config::Config;
use crate::master::Master;

/// How `hids-agent` exits. The numbers are a contract (scripts, the systemd unit,
/// `--help`): never renumber.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
enum Exit {
    /// Stopped as asked (SIGTERM, SIGINT), or the subcommand did its job.
    Success = 0,
    /// Failed at run time: an output or the spool cannot be opened, the status cannot
    /// be read, ...; the cause chain is on stderr.
    Failure = 1,
    /// The command line was not understood (clap exits with it before anything runs).
    Usage = 2,
    /// The configuration is refused (EX_USAGE, as linkerd2-proxy does); nothing was
    /// started. Every problem found is on stderr.
    Config = 64,
}

impl Exit {
    const ALL: [Exit; 4] = [Exit::Success, Exit::Failure, Exit::Usage, Exit::Config];

    /// The line `--help` prints for it.
    fn meaning(self) -> &'static str {
        match self {
            Exit::Success => "stopped as asked (SIGTERM, SIGINT), or the command succeeded",
            Exit::Failure => "failed at run time (an output, the spool, the status file...)",
            Exit::Usage => "the command line was not understood",
            Exit::Config => "the configuration is refused; nothing was started",
        }
    }

    /// The table `--help` ends with.
    fn help() -> String {
        let codes: Vec<(u8, &str)> = Exit::ALL.iter().map(|e| (*e as u8, e.meaning())).collect();
        hids_types::text::exit_codes(&codes)
    }
}

impl From<Exit> for ExitCode {
    fn from(e: Exit) -> ExitCode {
        ExitCode::from(e as u8)
    }
}

/// HIDS agent: watches what runs on this host and reports it as ECS JSON events.
///
/// With no arguments it runs standalone on built-in defaults: the process plugin,
/// events as JSON lines on stdout, logs on stderr. Needs root (the kernel's process
/// events require CAP_NET_ADMIN).
#[derive(Debug, Parser)]
#[command(version, about, long_about, after_help = Exit::help())]
struct Cli {
    /// Configuration file (TOML); see packaging/agent.toml for every key.
    #[arg(long, short, global = true, value_name = "FILE")]
    config: Option<PathBuf>,
    /// Log level on stderr, overriding the config: error, warn, info, debug, trace.
    #[arg(long, value_name = "LEVEL")]
    log_level: Option<String>,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Show the running agent's status (from <state_dir>/status.json).
    Status {
        /// Print the status document as JSON.
        #[arg(long)]
        json: bool,
        /// Read the status from this directory instead of the config's state_dir.
        #[arg(long, value_name = "DIR")]
        state_dir: Option<PathBuf>,
    },
    /// Check the configuration and print the plugins it would run, then exit.
    CheckConfig,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let config = match &cli.config {
        Some(path) => match Config::load(path) {
            Ok(c) => c,
            Err(e) => {
                if cli.command.is_none() {
                    launch_despite(path);
                }
                return config_error(&e.to_string()).into();
            }
        },
        None => Config::default(),
    };
    let exit = match cli.command {
        Some(Command::Status { json, state_dir }) => {
            let dir = state_dir.unwrap_or_else(|| config.state_dir.clone());
            show_status(&dir, json, config.status_interval_secs)
        }
        Some(Command::CheckConfig) => check_config(&config),
        None => run(config, cli.log_level),
    };
    exit.into()
}

/// The configuration is refused, maybe for keys only a newer build of the agent knows
/// (an operator set them after a self-update): the launcher still starts the agent's
/// current build, from the state directory read leniently, and that build judges the
/// file. Returns when there is no such build (or this is it): the refusal stands.
fn launch_despite(path: &Path) {
    let state_dir = std::fs::read_to_string(path)
        .ok()
        .and_then(|text| text.parse::<toml::Table>().ok())
        .and_then(|t| t.get("state_dir")?.as_str().map(PathBuf::from))
        .unwrap_or_else(|| Config::default().state_dir);
    let _log = logging::init("info");
    // A build on trial is not started on a file the installed binary refuses: a typo
    // must not cost it its counted starts and brand it bad.
    let slot = update::store::Slot::open(&state_dir.join("versions"), update::launch::AGENT_SLOT);
    if slot.manifest.trial {
        return;
    }
    update::launch::launch(&state_dir);
}

fn show_status(state_dir: &Path, json: bool, interval_secs: u64) -> Exit {
    match status::read(state_dir) {
        Ok(s) if json => match serde_json::to_string_pretty(&s) {
            Ok(text) => println!("{text}"),
            Err(e) => return fail(&e.into()),
        },
        Ok(s) => print!("{}", status::render(&s, interval_secs)),
        Err(e) => return fail(&e),
    }
    Exit::Success
}

fn check_config(config: &Config) -> Exit {
    match config.validate(&agent_dir()) {
        Ok(specs) => {
            for s in specs {
                println!(
                    "{:<16} {:<8} {} {}",
                    s.name,
                    if s.enabled { "enabled" } else { "disabled" },
                    s.path.display(),
                    s.args.join(" ")
                );
            }
            Exit::Success
        }
        Err(e) => config_error(&e.to_string()),
    }
}

fn config_error(msg: &str) -> Exit {
    eprintln!("hids-agent: configuration error:\n{msg}");
    Exit::Config
}

fn fail(e: &anyhow::Error) -> Exit {
    eprintln!("hids-agent: {e:#}");
    Exit::Failure
}

/// Where built-in plugins live: next to the installed binary (also when an updated
/// build of the agent runs, from `<state_dir>/versions/agent/`).
fn agent_dir() -> PathBuf {
    update::launch::installed_exe()
        .ok()
        .and_then(|p| p.parent().map(Path::to_path_buf))
        .unwrap_or_else(|| PathBuf::from("."))
}

/// Runs the master on a single-threaded runtime until it is told to stop.
fn run(mut config: Config, log_level: Option<String>) -> Exit {
    if let Some(level) = log_level {
        config.log_level = level;
    }
    let log = logging::init(&config.log_level);
    // Which build of the agent runs: may exec an updated one (and not return). Before
    // the checks below, so an updated build judges the configuration with its own code.
    let launched = update::launch::launch(&config.state_dir);
    let specs = match config.validate(&agent_dir()) {
        Ok(specs) => specs,
        Err(e) => return config_error(&e.to_string()),
    };
    let host_id = match config
        .host_id
        .clone()
        .map_or_else(hids_procfs::host::machine_id, Ok)
    {
        Ok(id) => id,
        Err(e) => {
            return config_error(&format!(
                "no host_id in the config and /etc/machine-id is unreadable ({e}); set host_id"
            ))
        }
    };
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => return fail(&e.into()),
    };
    let result = runtime.block_on(async {
        Master::start(config, specs, host_id, log, launched)?
            .run()
            .await
    });
    // Whatever is still running (a plugin task past its deadline) is dropped, which
    // kills its child; never wait on it.
    runtime.shutdown_timeout(Duration::from_millis(200));
    match result {
        Ok(master::Ending::Stopped) => Exit::Success,
        Ok(master::Ending::Relaunch) => {
            let e = update::launch::reexec();
            // The service manager starts the launcher anyway.
            tracing::error!("cannot start the launcher to choose the agent's build: {e}");
            Exit::Failure
        }
        Err(e) => {
            tracing::error!("{e:#}");
            Exit::Failure
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn help_ends_with_the_exit_codes() {
        let help = Cli::command().render_long_help().to_string();
        assert!(
            help.contains("  64  the configuration is refused; nothing was started"),
            "{help}"
        );
        assert!(help.contains("  0   stopped as asked"), "{help}");
    }
}
