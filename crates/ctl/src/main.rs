//! `hidsctl`: the operator's command line over the control plane (etcd).

/// `println!` and `print!` that end quietly when the reader has gone away
/// (`hidsctl agents | head`): Rust ignores SIGPIPE, and the std macros panic on EPIPE.
macro_rules! out {
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        if let Err(e) = writeln!(std::io::stdout().lock(), $($arg)*) {
            if e.kind() == std::io::ErrorKind::BrokenPipe {
                std::process::exit(0);
            }
        }
    }};
}
macro_rules! out_raw {
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        if let Err(e) = write!(std::io::stdout().lock(), $($arg)*) {
            if e.kind() == std::io::ErrorKind::BrokenPipe {
                std::process::exit(0);
            }
        }
    }};
}

mod alerts;
mod bootstrap;
mod enroll;
mod exit;
mod fleet;
mod gateways;
mod progress;
mod push;
mod reconcile;
mod rollout;
mod vulns;

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use clap::{Args, Parser, Subcommand};
use hids_control::select::{Selector, Target};
use hids_control::{EtcdSettings, Keys};
use hids_types::desired::CommandKind;

use crate::exit::Exit;

/// Operate a HIDS fleet through its etcd control plane: list agents, push signed desired
/// states to any set of hosts, stop and resume them, read the change history, and set up
/// etcd's roles and users; and read hids-server's alerts and rules.
#[derive(Debug, Parser)]
#[command(version, about, long_about, after_help = Exit::help())]
struct Cli {
    /// etcd client URLs, comma-separated.
    #[arg(
        long,
        global = true,
        env = "HIDSCTL_ENDPOINTS",
        value_delimiter = ',',
        default_value = "http://127.0.0.1:2379"
    )]
    endpoints: Vec<String>,
    /// Prefix of every key.
    #[arg(long, global = true, env = "HIDSCTL_PREFIX", default_value = hids_control::keys::DEFAULT_PREFIX)]
    prefix: String,
    /// etcd user (when etcd has authentication on).
    #[arg(long, global = true, env = "HIDSCTL_USER")]
    user: Option<String>,
    /// etcd password (with --user).
    #[arg(long, global = true, env = "HIDSCTL_PASSWORD", hide_env_values = true)]
    password: Option<String>,
    /// CA certificate (PEM) for TLS to etcd.
    #[arg(long, global = true, env = "HIDSCTL_CA_FILE")]
    ca_file: Option<PathBuf>,
    /// Client certificate (PEM) for TLS client authentication to etcd.
    #[arg(long, global = true, env = "HIDSCTL_CERT_FILE")]
    cert_file: Option<PathBuf>,
    /// Private key (PEM) of --cert-file. Not the signing key: that is --key.
    #[arg(long, global = true, env = "HIDSCTL_KEY_FILE")]
    key_file: Option<PathBuf>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Make an Ed25519 signing key pair: DIR/signing.key (secret, 0600) and
    /// DIR/signing.pub (give it to agents as control.trusted_keys).
    Keygen {
        #[arg(long, value_name = "DIR")]
        out: PathBuf,
    },
    /// List online agents (those whose presence key exists).
    Agents {
        /// Only agents whose labels match, e.g. 'env=prod,idc in (bj,sh)'.
        #[arg(long)]
        selector: Option<Selector>,
        #[arg(long)]
        json: bool,
    },
    /// Watch gateways (hids-gateway) and the agents each serves, checked against the
    /// status keys etcd holds on each gateway's lease (exit 7 when they differ).
    Gateways {
        #[arg(long)]
        json: bool,
    },
    /// Count online agents by a label.
    Stats {
        #[arg(long, value_name = "LABEL")]
        by: String,
        #[arg(long)]
        json: bool,
    },
    /// Sign and write a desired state (TOML: log_level, [[plugins]]) for the targets.
    Push {
        /// The desired settings, e.g. `[[plugins]]` `name = "process"` `enabled = false`.
        #[arg(long, value_name = "FILE")]
        file: PathBuf,
        #[command(flatten)]
        change: ChangeArgs,
    },
    /// Stop every plugin on the targets (agents stay registered and controllable).
    Stop {
        #[command(flatten)]
        change: ChangeArgs,
    },
    /// Undo `stop` on the targets.
    Resume {
        #[command(flatten)]
        change: ChangeArgs,
    },
    /// Restart one plugin on the targets (also out of quarantine).
    RestartPlugin {
        plugin: String,
        #[command(flatten)]
        change: ChangeArgs,
    },
    /// Ask one plugin on the targets for a full snapshot now (the network plugin reports
    /// every listener and connection with its owner).
    ///
    /// Besides the plugin's periodic snapshots. Its answer carries the command id,
    /// `g<generation>` (the generation is printed). Where the plugin is not running, the
    /// agent only logs that. An agent older than this command refuses every document
    /// that carries it, i.e. for the command's hour: target only upgraded agents.
    Snapshot {
        /// The plugin to ask, e.g. `network`.
        #[arg(long)]
        plugin: String,
        #[command(flatten)]
        change: ChangeArgs,
    },
    /// Roll a plugin build out in waves (1%, 10%, 50%, 100% of the stable percentage
    /// buckets): each wave waits for its hosts to run the build healthy, and the rollout
    /// halts by itself when too many fail or roll back.
    Rollout {
        #[command(subcommand)]
        command: RolloutCommand,
    },
    /// Show who changed what, when, for which targets.
    History {
        /// Most recent records to show.
        #[arg(long, default_value_t = 20)]
        limit: usize,
        #[arg(long)]
        json: bool,
    },
    /// Read Kafka topics to their end and prove, per host and plugin run, that every
    /// event produced arrived or was declared dropped. Exits 3 on undeclared loss.
    Reconcile {
        /// Kafka brokers, `host:port[,host:port...]`.
        #[arg(long)]
        brokers: String,
        /// Topic(s) to read (repeat for several).
        #[arg(long, required = true)]
        topic: Vec<String>,
        /// Extra librdkafka properties (TLS, SASL), `key=value`, repeatable.
        #[arg(long = "librdkafka", value_parser = parse_kv)]
        properties: Vec<(String, String)>,
        /// Give up when the topics are not read to their end within this.
        #[arg(long, value_parser = humantime::parse_duration, default_value = "120s")]
        timeout: Duration,
        #[arg(long)]
        json: bool,
    },
    /// Create etcd's root user and the operators' role and user, then enable
    /// authentication. Run once, against an etcd without authentication; then give each
    /// host its own credentials with `enroll`.
    Bootstrap {
        /// Password for etcd's `root` user (etcd requires it to enable authentication).
        #[arg(long, env = "HIDS_ROOT_PASSWORD", hide_env_values = true)]
        root_password: String,
        /// Password for the `hids-operator` user (everything under the prefix).
        #[arg(long, env = "HIDS_OPERATOR_PASSWORD", hide_env_values = true)]
        operator_password: String,
        /// INSECURE, for fleets not yet enrolled: also create one `hids-agent` user
        /// shared by every host, with read-write on all of `agents/`. Any host holding it
        /// can delete or forge any other host's status (and so hide from `stop --all` or
        /// fake acknowledgements). Use `enroll` instead.
        #[arg(long, requires = "agent_password")]
        insecure_shared_agent_user: bool,
        /// Password for the shared `hids-agent` user (only with
        /// --insecure-shared-agent-user).
        #[arg(
            long,
            env = "HIDS_AGENT_PASSWORD",
            hide_env_values = true,
            requires = "insecure_shared_agent_user"
        )]
        agent_password: Option<String>,
    },
    /// Alerts from hids-server: list, show, summarise, suppress.
    Alerts {
        #[command(flatten)]
        server: ServerArgs,
        #[command(subcommand)]
        command: AlertsCommand,
    },
    /// The day's hosts where the agent used the most CPU (the day's mean, % of a core)
    /// or memory (the day's peak RSS, MB), with their labels: from hids-server's daily
    /// league, to see the reach of a problem before it grows.
    Top {
        #[command(flatten)]
        server: ServerArgs,
        /// cpu or memory.
        #[arg(long, default_value = "cpu")]
        by: hids_types::fleet::TopFigure,
        /// The day, YYYY-MM-DD (UTC); today by default.
        #[arg(long)]
        day: Option<String>,
        /// How many hosts (at most 1000).
        #[arg(long, default_value_t = 20)]
        limit: usize,
        #[arg(long)]
        json: bool,
    },
    /// Vulnerabilities in the fleet, from hids-server's inventory index and the
    /// operator's feeds (Debian security tracker, OSV): which hosts a CVE affects, and
    /// the fleet's most widespread ones.
    Vulns {
        #[command(flatten)]
        server: ServerArgs,
        #[command(subcommand)]
        command: vulns::VulnsCommand,
    },
    /// Installed software across the fleet: hosts with a package in a version range,
    /// one host's inventory. (`hidsctl snapshot --plugin inventory <targets>` makes hosts
    /// re-inventory now.)
    Packages {
        #[command(flatten)]
        server: ServerArgs,
        #[command(subcommand)]
        command: vulns::PackagesCommand,
    },
    /// The detection rules hids-server loaded, and those it refused with the reason.
    Rules {
        #[command(flatten)]
        server: ServerArgs,
        /// Only the refused ones.
        #[arg(long)]
        refused: bool,
        #[arg(long)]
        json: bool,
    },
    /// Give hosts their own etcd credentials: per host a user and a role that may write
    /// only its own `agents/<id>` and read only its own `desired/<id>` and `blobs/`, and
    /// DIR/<id>.toml (mode 0600) to install on the host as control.credentials_file.
    /// Enrolling a host again rotates its password. Needs etcd's root user.
    Enroll {
        /// A host id (repeat for several).
        #[arg(long = "host-id", value_name = "ID")]
        host_ids: Vec<String>,
        /// A file of host ids, one per line (`#` comments and blank lines skipped).
        #[arg(long, value_name = "FILE")]
        hosts_file: Option<PathBuf>,
        /// Where to write <id>.toml for each host (created mode 0700 when missing).
        #[arg(long, value_name = "DIR")]
        out: PathBuf,
        /// Replace existing <id>.toml files (the old passwords stop working).
        #[arg(long)]
        force: bool,
        /// Hosts enrolled at once.
        #[arg(long, default_value_t = enroll::DEFAULT_CONCURRENCY)]
        concurrency: usize,
        #[arg(long)]
        json: bool,
    },
    /// Decommission hosts: delete their etcd users and roles (their credentials stop
    /// working) and their status and desired state. Needs etcd's root user.
    Unenroll {
        /// A host id (repeat for several).
        #[arg(long = "host-id", value_name = "ID")]
        host_ids: Vec<String>,
        /// A file of host ids, one per line.
        #[arg(long, value_name = "FILE")]
        hosts_file: Option<PathBuf>,
        /// Hosts handled at once.
        #[arg(long, default_value_t = enroll::DEFAULT_CONCURRENCY)]
        concurrency: usize,
        #[arg(long)]
        json: bool,
    },
}

#[derive(Debug, Subcommand)]
enum RolloutCommand {
    /// Start a rollout of the builds the file names (`[[plugins]]` with `version`,
    /// `url`, `sha256`). Wave k writes the settings to the targets whose bucket is below
    /// its percentage and not below the previous wave's, then waits until each of them
    /// runs every named version healthy, failed, or rolled back. Exits 6 when it halts:
    /// failures plus rollbacks above --max-failure-percent of a wave's hosts (as soon as
    /// that is certain), or a wave still has hosts pending at --wave-timeout (offline
    /// hosts stay pending).
    Start {
        /// The desired settings (as `push --file`), naming at least one build.
        #[arg(long, value_name = "FILE")]
        file: PathBuf,
        #[command(flatten)]
        sign: SignArgs,
        #[command(flatten)]
        target: TargetArgs,
        /// The waves' cumulative percentages, each above the one before.
        #[arg(long, value_delimiter = ',', default_value = "1,10,50,100")]
        waves: Vec<f64>,
        /// Halt when failed and rolled-back hosts are above this share of a wave.
        #[arg(long, default_value_t = 5.0)]
        max_failure_percent: f64,
        /// How long a wave may take (e.g. 30m, 2h).
        #[arg(long, value_parser = humantime::parse_duration, default_value = "30m")]
        wave_timeout: Duration,
        /// Print the outcome as JSON (no progress bars).
        #[arg(long)]
        json: bool,
    },
    /// Show a rollout (the latest without ID). One whose hidsctl was interrupted has its
    /// wave in progress followed to its end first, with the same halting rule.
    Status {
        id: Option<String>,
        /// Go on with the remaining waves (needs --key). Also after a halt or a timeout:
        /// the operator's decision, the next wave is written.
        #[arg(long = "continue", requires = "key")]
        go_on: bool,
        /// The signing key, for --continue.
        #[arg(long, env = "HIDSCTL_KEY", value_name = "FILE")]
        key: Option<PathBuf>,
        /// Who is making the change, for the history (default: $USER).
        #[arg(long = "as", env = "USER", default_value = "unknown")]
        operator: String,
        #[arg(long)]
        json: bool,
    },
    /// Every rollout, oldest first.
    List {
        #[arg(long)]
        json: bool,
    },
}

#[derive(Debug, Args)]
struct ServerArgs {
    /// hids-server's API.
    #[arg(long, env = "HIDSCTL_SERVER", default_value = "http://127.0.0.1:8080")]
    server: String,
}

#[derive(Debug, Subcommand)]
enum AlertsCommand {
    /// Alerts, newest first: one per rule, host and window, with a count.
    List {
        #[command(flatten)]
        filter: alerts::Filter,
        /// At most this many.
        #[arg(long, default_value_t = 100)]
        limit: usize,
        #[arg(long)]
        json: bool,
    },
    /// One alert with its evidence event, as JSON.
    Show { id: String },
    /// Alert counts grouped by rule_id, level, host_id, idc, project, product or any label.
    Summary {
        #[arg(long, default_value = "rule_id")]
        by: String,
        #[command(flatten)]
        filter: alerts::Filter,
        #[arg(long)]
        json: bool,
    },
    /// Accept an alert kind: matching hits are counted and no longer stored or sent.
    /// Narrow it with --host, --label and --command-line (all must hold).
    Suppress {
        #[arg(long = "rule")]
        rule_id: String,
        #[arg(long = "host")]
        host_id: Option<String>,
        /// `name=value`, repeatable.
        #[arg(long = "label", value_parser = parse_kv)]
        labels: Vec<(String, String)>,
        /// Only events whose command line starts with this text.
        #[arg(long)]
        command_line: Option<String>,
        /// Why, and who decided (kept with it).
        #[arg(long)]
        comment: String,
        #[arg(long)]
        json: bool,
    },
    /// The suppressions in force.
    Suppressions {
        #[arg(long)]
        json: bool,
    },
    /// Remove a suppression by its id.
    Unsuppress { id: i64 },
}

/// What every change takes: who signs it, for which hosts, and whether to wait.
#[derive(Debug, Args)]
struct ChangeArgs {
    #[command(flatten)]
    sign: SignArgs,
    #[command(flatten)]
    target: TargetArgs,
    #[command(flatten)]
    wait: WaitArgs,
}

#[derive(Debug, Args)]
struct SignArgs {
    /// The signing key (`signing.key` from `hidsctl keygen`) that agents trust.
    #[arg(long, env = "HIDSCTL_KEY", value_name = "FILE")]
    key: PathBuf,
    /// Who is making the change, for the history (default: $USER).
    #[arg(long = "as", env = "USER", default_value = "unknown")]
    operator: String,
}

#[derive(Debug, Args)]
struct TargetArgs {
    /// Every online agent.
    #[arg(long)]
    all: bool,
    /// Agents whose labels match, e.g. 'env=prod,idc in (bj,sh)'.
    #[arg(long)]
    selector: Option<Selector>,
    /// These host ids (comma-separated), online or not.
    #[arg(long, value_delimiter = ',')]
    hosts: Vec<String>,
    /// A stable share of the hosts (0-100): the same hosts every time; a larger
    /// percentage only adds hosts.
    #[arg(long)]
    percent: Option<f64>,
}

#[derive(Debug, Args)]
struct WaitArgs {
    /// Wait this long (e.g. 30s, 2m) for the targets to acknowledge, then summarise;
    /// exit 4 when not every target applied the change.
    #[arg(long, value_parser = humantime::parse_duration)]
    wait: Option<Duration>,
    /// Print the result as JSON.
    #[arg(long)]
    json: bool,
}

impl TargetArgs {
    fn target(&self) -> anyhow::Result<Target> {
        if !self.all && self.selector.is_none() && self.hosts.is_empty() && self.percent.is_none() {
            anyhow::bail!("say which hosts: --all, --selector, --hosts and/or --percent");
        }
        if let Some(p) = self.percent {
            if !(0.0..=100.0).contains(&p) {
                anyhow::bail!("--percent {p}: give a share from 0 to 100");
            }
        }
        Ok(Target {
            hosts: self.hosts.clone(),
            selector: self.selector.clone(),
            percent: self.percent,
        })
    }
}

fn parse_kv(s: &str) -> Result<(String, String), String> {
    s.split_once('=')
        .map(|(k, v)| (k.trim().to_owned(), v.trim().to_owned()))
        .ok_or_else(|| format!("{s:?}: expected key=value"))
}

impl Cli {
    fn etcd(&self) -> EtcdSettings {
        EtcdSettings {
            endpoints: self.endpoints.clone(),
            credentials_file: None,
            user: self.user.clone(),
            password: self.password.clone(),
            ca_file: self.ca_file.clone(),
            cert_file: self.cert_file.clone(),
            key_file: self.key_file.clone(),
        }
    }
}

fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        // What clap's own exit does, with the code named: help and version are not
        // errors.
        Err(e) => {
            let _ = e.print();
            return if e.use_stderr() {
                Exit::Usage
            } else {
                Exit::Success
            }
            .into();
        }
    };
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("hidsctl: {e}");
            return Exit::Error.into();
        }
    };
    match runtime.block_on(run(cli)) {
        Ok(exit) => exit.into(),
        Err(e) => {
            eprintln!("hidsctl: {e:#}");
            Exit::Error.into()
        }
    }
}

async fn run(cli: Cli) -> anyhow::Result<Exit> {
    let keys = Keys::new(&cli.prefix);
    let etcd = cli.etcd();
    let connect = || async { anyhow::Ok(etcd.config()?.connect().await?) };
    match cli.command {
        Command::Keygen { out } => keygen(&out),
        Command::Reconcile {
            brokers,
            topic,
            properties,
            timeout,
            json,
        } => reconcile::run(&brokers, &topic, &properties, timeout, json).await,
        Command::Agents { selector, json } => {
            fleet::agents(&mut connect().await?, &keys, selector.as_ref(), json).await
        }
        Command::Gateways { json } => gateways::gateways(&mut connect().await?, &keys, json).await,
        Command::Stats { by, json } => fleet::stats(&mut connect().await?, &keys, &by, json).await,
        Command::Rollout { command } => {
            rollout_command(&mut connect().await?, &keys, command).await
        }
        Command::History { limit, json } => {
            fleet::history(&mut connect().await?, &keys, limit, json).await
        }
        Command::Bootstrap {
            root_password,
            operator_password,
            insecure_shared_agent_user: _,
            agent_password,
        } => {
            let passwords = bootstrap::Passwords {
                root: root_password,
                operator: operator_password,
                shared_agent: agent_password,
            };
            bootstrap::run(&mut connect().await?, &keys, &passwords).await
        }
        Command::Enroll {
            host_ids,
            hosts_file,
            out,
            force,
            concurrency,
            json,
        } => {
            let request = enroll::Request {
                hosts: enroll::host_ids(&host_ids, hosts_file.as_deref())?,
                out,
                force,
                concurrency,
                json,
            };
            enroll::enroll(&connect().await?, &keys, request).await
        }
        Command::Unenroll {
            host_ids,
            hosts_file,
            concurrency,
            json,
        } => {
            let hosts = enroll::host_ids(&host_ids, hosts_file.as_deref())?;
            enroll::unenroll(&connect().await?, &keys, &hosts, concurrency, json).await
        }
        c @ (Command::Alerts { .. }
        | Command::Vulns { .. }
        | Command::Packages { .. }
        | Command::Rules { .. }
        | Command::Top { .. }) => server_command(c).await,
        Command::Push { file, change } => {
            let request = change.request(push::Change::settings_from(&file)?)?;
            push::run(&mut connect().await?, &keys, request).await
        }
        Command::Stop { change } => {
            let request = change.request(push::Change::Command(CommandKind::StopAll, None))?;
            push::run(&mut connect().await?, &keys, request).await
        }
        Command::Resume { change } => {
            let request = change.request(push::Change::Command(CommandKind::Resume, None))?;
            push::run(&mut connect().await?, &keys, request).await
        }
        Command::RestartPlugin { plugin, change } => {
            let c = push::Change::Command(CommandKind::RestartPlugin, Some(plugin));
            push::run(&mut connect().await?, &keys, change.request(c)?).await
        }
        Command::Snapshot { plugin, change } => {
            let c = push::Change::Command(CommandKind::Snapshot, Some(plugin));
            push::run(&mut connect().await?, &keys, change.request(c)?).await
        }
    }
}

async fn rollout_command(
    client: &mut etcd_client::Client,
    keys: &Keys,
    command: RolloutCommand,
) -> anyhow::Result<Exit> {
    match command {
        RolloutCommand::Start {
            file,
            sign,
            target,
            waves,
            max_failure_percent,
            wave_timeout,
            json,
        } => {
            let args = rollout::StartArgs {
                file,
                target: target.target()?,
                waves,
                max_failure_percent,
                wave_timeout,
                key: hids_control::SigningKey::load(&sign.key)?,
                operator: sign.operator,
                json,
            };
            rollout::start(client, keys, args).await
        }
        RolloutCommand::Status {
            id,
            go_on,
            key,
            operator,
            json,
        } => {
            let go_on = match (go_on, key) {
                (false, _) => None,
                (true, None) => anyhow::bail!("--continue needs --key"),
                (true, Some(key)) => Some(rollout::GoOn {
                    key: hids_control::SigningKey::load(&key)?,
                    operator,
                }),
            };
            rollout::status(client, keys, id.as_deref(), go_on, json).await
        }
        RolloutCommand::List { json } => rollout::list(client, keys, json).await,
    }
}

/// The commands that ask hids-server's HTTP API.
async fn server_command(command: Command) -> anyhow::Result<Exit> {
    match command {
        Command::Alerts { server, command } => {
            alerts_command(&alerts::Api::new(&server.server)?, command).await
        }
        Command::Vulns { server, command } => {
            vulns::vulns(&alerts::Api::new(&server.server)?, command).await
        }
        Command::Packages { server, command } => {
            vulns::packages(&alerts::Api::new(&server.server)?, command).await
        }
        Command::Rules {
            server,
            refused,
            json,
        } => alerts::rules(&alerts::Api::new(&server.server)?, refused, json).await,
        Command::Top {
            server,
            by,
            day,
            limit,
            json,
        } => {
            let api = alerts::Api::new(&server.server)?;
            alerts::top(&api, by, day.as_deref(), limit, json).await
        }
        _ => unreachable!("server_command is called with the API's commands only"),
    }
}

async fn alerts_command(api: &alerts::Api, command: AlertsCommand) -> anyhow::Result<Exit> {
    match command {
        AlertsCommand::List {
            filter,
            limit,
            json,
        } => alerts::list(api, &filter, limit, json).await,
        AlertsCommand::Show { id } => alerts::show(api, &id).await,
        AlertsCommand::Summary { by, filter, json } => {
            alerts::summary(api, &filter, &by, json).await
        }
        AlertsCommand::Suppress {
            rule_id,
            host_id,
            labels,
            command_line,
            comment,
            json,
        } => {
            let s = hids_types::alert::Suppression {
                id: 0,
                rule_id,
                host_id,
                labels: labels.into_iter().collect(),
                command_line,
                comment,
                created_at: None,
            };
            alerts::suppress(api, s, json).await
        }
        AlertsCommand::Suppressions { json } => alerts::suppressions(api, json).await,
        AlertsCommand::Unsuppress { id } => alerts::unsuppress(api, id).await,
    }
}

/// `keygen`: a new signing key pair in `out`.
fn keygen(out: &Path) -> anyhow::Result<Exit> {
    std::fs::create_dir_all(out)?;
    let key = hids_control::SigningKey::generate()?;
    let (secret, public) = key.save(out)?;
    out!(
        "secret key: {} (keep it safe: it can steer the fleet)",
        secret.display()
    );
    out!(
        "public key: {} (list it in the agents' control.trusted_keys)",
        public.display()
    );
    out!("key id:     {}", key.key_id());
    Ok(Exit::Success)
}

impl ChangeArgs {
    /// The whole request, checked before any work: every change is signed, written and
    /// awaited the same way.
    fn request(self, change: push::Change) -> anyhow::Result<push::Request> {
        let ChangeArgs { sign, target, wait } = self;
        let target = target.target()?;
        Ok(push::Request {
            key: hids_control::SigningKey::load(&sign.key)?,
            operator: sign.operator,
            target,
            change,
            wait: wait.wait,
            json: wait.json,
        })
    }
}
