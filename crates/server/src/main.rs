//! `hids-server`: the binary. Thin glue over the library: configuration, logging, the
//! consumer thread, the HTTP API, and a clean stop on SIGTERM.

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use anyhow::Context as _;
use clap::{Parser, Subcommand};
use hids_detect::{RuleSet, RuleStatus};
use hids_server::config::ServerConfig;
use hids_server::consume::Consume;
use hids_server::fleet::presence::Presence;
use hids_server::fleet::Fleet;
use hids_server::http::{self, Api};
use hids_server::metrics::Metrics;
use hids_server::outputs::Outputs;
use hids_server::triage::Triage;
use hids_store::StoreConfig;

/// How `hids-server` exits. The numbers are a contract: never renumber.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
enum Exit {
    /// Stopped as asked (SIGTERM, SIGINT), or the subcommand did its job.
    Success = 0,
    /// Failed at run time (the store, Kafka, the HTTP address); the cause is on stderr.
    Failure = 1,
    /// The command line was not understood (clap exits with it).
    Usage = 2,
    /// The configuration is refused, or a rules directory cannot be read; nothing started.
    Config = 64,
}

impl Exit {
    const ALL: [Exit; 4] = [Exit::Success, Exit::Failure, Exit::Usage, Exit::Config];

    fn meaning(self) -> &'static str {
        match self {
            Exit::Success => "stopped as asked (SIGTERM, SIGINT), or the command succeeded",
            Exit::Failure => "failed at run time (the store, Kafka, the HTTP address...)",
            Exit::Usage => "the command line was not understood",
            Exit::Config => {
                "the configuration or a rules directory is refused; nothing was started"
            }
        }
    }

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

/// HIDS server: turns the agents' events into alerts.
///
/// Reads the event topics as a Kafka consumer group (run as many instances as the
/// partitions allow, with the same group), checks every event against Sigma rules and
/// the built-in pack, keeps one alert per rule, host and window with a count, stores
/// them (SQLite, or PostgreSQL shared by the instances), and serves them on
/// /api/v1/alerts; new alerts also go to a Kafka topic and webhooks.
#[derive(Debug, Parser)]
#[command(version, about, long_about, after_help = Exit::help())]
struct Cli {
    /// Configuration file (TOML); see packaging/server.toml for every key.
    #[arg(
        long,
        short,
        global = true,
        value_name = "FILE",
        default_value = "/etc/hids/server.toml"
    )]
    config: PathBuf,
    /// Log level on stderr, overriding the config: error, warn, info, debug, trace.
    #[arg(long, value_name = "LEVEL")]
    log_level: Option<String>,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Check the configuration and the rules, print what loads and what is refused
    /// (with the reason), then exit: 0 when the configuration is usable.
    CheckConfig,
    /// Manage the web console's operators (in the store named by the configuration).
    #[command(subcommand)]
    Operator(OperatorCommand),
    /// Print a one-time login link to the console for an operator (valid two minutes,
    /// once): for a script, a test browser, or a first login without a password.
    LoginLink {
        /// The operator it logs in.
        #[arg(long)]
        operator: String,
        /// The console page it opens.
        #[arg(long, default_value = "/")]
        next: String,
        /// The console's address as the browser reaches it; default: http.listen.
        #[arg(long, value_name = "URL")]
        base_url: Option<String>,
    },
}

#[derive(Debug, Subcommand)]
enum OperatorCommand {
    /// Create an operator, or set a new password (which ends their sessions). The
    /// password (12 characters or more) is read from standard input, one line; not from
    /// a terminal, where it would echo: `read -rs P; echo "$P" | hids-server operator add NAME`.
    Add { name: String },
    /// Delete an operator and end their sessions.
    Remove { name: String },
    /// List the operators.
    List,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let mut config = match ServerConfig::load(&cli.config) {
        Ok(c) => c,
        Err(e) => return config_error(&e.to_string()).into(),
    };
    if let Some(level) = cli.log_level {
        config.log_level = level;
    }
    let rules = match RuleSet::load(config.rules.builtin, &config.rules.paths) {
        Ok(r) => Arc::new(r),
        Err(e) => return config_error(&e.to_string()).into(),
    };
    let exit = match cli.command {
        Some(Command::CheckConfig) => match load_tls(&config) {
            Ok(_) => check_config(&rules),
            Err(e) => config_error(&e),
        },
        Some(Command::Operator(op)) => operators::run(&store_config(&config), op),
        Some(Command::LoginLink {
            operator,
            next,
            base_url,
        }) => {
            let scheme = if config.http.tls_cert.is_some() {
                "https"
            } else {
                "http"
            };
            let base = base_url
                .or_else(|| config.console.public_origin.clone())
                .unwrap_or_else(|| format!("{scheme}://{}", config.http.listen));
            operators::login_link(&store_config(&config), &operator, &next, &base)
        }
        None => {
            // The certificate is part of the configuration: refused before anything
            // opens, with the configuration's exit code.
            let tls = match load_tls(&config) {
                Ok(tls) => tls,
                Err(e) => return config_error(&e).into(),
            };
            init_logging(&config.log_level);
            match run(config, rules, tls) {
                Ok(()) => Exit::Success,
                Err(e) => {
                    eprintln!("hids-server: {e:#}");
                    Exit::Failure
                }
            }
        }
    };
    exit.into()
}

/// The operator subcommands: they open the store and leave.
mod operators {
    use std::io::{BufRead, IsTerminal};

    use hids_server::console::auth;
    use hids_store::StoreConfig;
    use hids_types::Timestamp;

    use super::{Exit, OperatorCommand};

    pub fn run(store: &StoreConfig, command: OperatorCommand) -> Exit {
        match act(store, command) {
            Ok(()) => Exit::Success,
            Err(e) => {
                eprintln!("hids-server: {e}");
                Exit::Failure
            }
        }
    }

    fn act(store_cfg: &StoreConfig, command: OperatorCommand) -> Result<(), String> {
        let mut store = hids_store::open(store_cfg).map_err(|e| e.to_string())?;
        let now = Timestamp::now();
        match command {
            OperatorCommand::Add { name } => {
                auth::valid_name(&name)?;
                let password = read_password()?;
                let hash = auth::hash_password(&password)?;
                let created = store
                    .put_operator(&name, &hash, now)
                    .map_err(|e| e.to_string())?;
                let action = if created {
                    "operator added"
                } else {
                    "password set"
                };
                store
                    .record_change("hids-server", action, &name, now)
                    .map_err(|e| e.to_string())?;
                println!("{action}: {name}");
            }
            OperatorCommand::Remove { name } => {
                if !store.remove_operator(&name).map_err(|e| e.to_string())? {
                    return Err(format!(
                        "no operator {name:?} (`hids-server operator list`)"
                    ));
                }
                store
                    .record_change("hids-server", "operator removed", &name, now)
                    .map_err(|e| e.to_string())?;
                println!("operator removed: {name}");
            }
            OperatorCommand::List => {
                for (name, created) in store.operators().map_err(|e| e.to_string())? {
                    println!(
                        "{name:<32} created {}",
                        hids_server::console::when(&created)
                    );
                }
            }
        }
        Ok(())
    }

    /// One line from standard input; on a terminal, asked for twice without echo is
    /// beyond std, so a terminal is refused with what to do instead.
    fn read_password() -> Result<String, String> {
        let stdin = std::io::stdin();
        if stdin.is_terminal() {
            return Err(
                "give the password on standard input, e.g. `read -rs P; echo \"$P\" | hids-server operator add NAME`"
                    .into(),
            );
        }
        let mut line = String::new();
        stdin
            .lock()
            .read_line(&mut line)
            .map_err(|e| format!("reading the password: {e}"))?;
        let password = line.trim_end_matches(['\n', '\r']).to_owned();
        if password.chars().count() < 12 || password.len() > auth::MAX_PASSWORD_BYTES {
            return Err(format!(
                "a password has at least 12 characters and at most {} bytes",
                auth::MAX_PASSWORD_BYTES
            ));
        }
        Ok(password)
    }

    pub fn login_link(store_cfg: &StoreConfig, operator: &str, next: &str, base: &str) -> Exit {
        let made = (|| -> Result<String, String> {
            let mut store = hids_store::open(store_cfg).map_err(|e| e.to_string())?;
            if store
                .operator_password(operator)
                .map_err(|e| e.to_string())?
                .is_none()
            {
                return Err(format!(
                    "no operator {operator:?}: add one with `hids-server operator add {operator}`"
                ));
            }
            let token = auth::new_token();
            let now = Timestamp::now();
            store
                .create_login_link(
                    &auth::link_key(&token),
                    operator,
                    now,
                    Timestamp(now.0 + auth::LINK_LIFETIME),
                )
                .map_err(|e| e.to_string())?;
            Ok(format!(
                "{}/login/link?token={token}&next={}",
                base.trim_end_matches('/'),
                hids_server::console::query_escape(&hids_server::console::local_path(Some(next)))
            ))
        })();
        match made {
            Ok(url) => {
                println!("{url}");
                Exit::Success
            }
            Err(e) => {
                eprintln!("hids-server: {e}");
                Exit::Failure
            }
        }
    }
}

/// The HTTPS settings when `[http]` names a certificate and its key.
fn load_tls(config: &ServerConfig) -> Result<Option<Arc<hids_server::tls::ServerConfig>>, String> {
    match (&config.http.tls_cert, &config.http.tls_key) {
        (Some(cert), Some(key)) => hids_server::tls::server_config(cert, key).map(Some),
        _ => Ok(None),
    }
}

fn config_error(msg: &str) -> Exit {
    eprintln!("hids-server: configuration error:\n{msg}");
    Exit::Config
}

fn check_config(rules: &RuleSet) -> Exit {
    for r in rules.rules() {
        let status = match &r.status {
            RuleStatus::Loaded => "loaded".to_string(),
            RuleStatus::Refused(why) => format!("refused: {why}"),
        };
        println!(
            "{:<14} {:<44} {} ({})",
            r.level.as_str(),
            r.id,
            status,
            r.source
        );
    }
    println!(
        "{} rules loaded, {} refused",
        rules.loaded(),
        rules.rules().len() - rules.loaded()
    );
    Exit::Success
}

fn init_logging(level: &str) {
    let level: tracing::Level = level.parse().unwrap_or(tracing::Level::INFO);
    let _ = tracing_subscriber::fmt()
        .with_max_level(level)
        .with_writer(std::io::stderr)
        .with_target(false)
        .with_ansi(false)
        .try_init();
}

fn store_config(config: &ServerConfig) -> StoreConfig {
    match (&config.store.url, &config.store.path) {
        (Some(url), _) => StoreConfig::Postgres(url.clone()),
        (None, Some(path)) => StoreConfig::Sqlite(path.clone()),
        // validate() refuses a config with neither.
        (None, None) => StoreConfig::Sqlite(PathBuf::from("alerts.db")),
    }
}

fn report_rules(rules: &RuleSet, metrics: &Metrics) {
    let refused = rules.rules().len() - rules.loaded();
    for r in rules.rules() {
        if let RuleStatus::Refused(why) = &r.status {
            tracing::warn!("rule {} refused ({}): {why}", r.id, r.source);
        }
    }
    tracing::info!(
        "{} rules loaded, {refused} refused (GET /api/v1/rules lists them)",
        rules.loaded()
    );
    metrics
        .rules_loaded
        .set(i64::try_from(rules.loaded()).unwrap_or(i64::MAX));
    metrics
        .rules_refused
        .set(i64::try_from(refused).unwrap_or(i64::MAX));
}

fn run(
    config: ServerConfig,
    rules: Arc<RuleSet>,
    tls: Option<Arc<hids_server::tls::ServerConfig>>,
) -> anyhow::Result<()> {
    let metrics = Arc::new(Metrics::default());
    report_rules(&rules, &metrics);
    let store_cfg = store_config(&config);
    // Two handles: the consumer's writes never wait behind an API query.
    let writer = hids_store::open(&store_cfg).context("opening the store")?;
    let reader = hids_store::open(&store_cfg).context("opening the store for the API")?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    let shutdown = Arc::new(AtomicBool::new(false));
    let outputs = runtime.block_on(async { Outputs::start(&config, metrics.clone()) })?;
    let presence = start_presence(&config, &runtime, &metrics, &shutdown)?;
    if config.kafka.topics.len() > 1 {
        tracing::warn!(
            "{} event topics: continuous reconciliation is off (a run's events and its stats can \
             travel on different topics, read by different instances); run `hidsctl reconcile` \
             over all of them instead",
            config.kafka.topics.len()
        );
    }
    let inventory = start_inventory(&config, &store_cfg, &shutdown)?;
    let console = hids_server::console::Settings::new(
        config.console.anonymous_read,
        Duration::from_secs(config.console.session_hours * 3600),
        tls.is_some(),
    )
    .with_public_origin(config.console.public_origin.clone());
    let recent = (config.console.recent_megabytes > 0).then(|| {
        Arc::new(hids_server::recent::Recent::new(
            usize::try_from(config.console.recent_megabytes << 20).unwrap_or(usize::MAX),
        ))
    });
    let control = match &config.etcd {
        Some(etcd) => Some(Arc::new(hids_server::console::control::ControlView::new(
            etcd.settings()
                .config()
                .context("etcd: the credentials file")?,
            hids_control::Keys::new(&etcd.prefix),
        ))),
        None => None,
    };
    let api = Arc::new(Api {
        control,
        console,
        recent: recent.clone(),
        inventory: Some(inventory.clone()),
        presence: presence.clone(),
        store: Mutex::new(reader),
        rules: rules.clone(),
        registry: metrics.registry(),
        metrics: metrics.clone(),
        started: SystemTime::now(),
    });
    let listener = runtime
        .block_on(tokio::net::TcpListener::bind(config.http.listen))
        .with_context(|| format!("http.listen {}: cannot listen", config.http.listen))?;
    let scheme = if tls.is_some() { "https" } else { "http" };
    tracing::info!(
        "console on {scheme}://{0}/, API on {scheme}://{0}/api/v1/alerts",
        config.http.listen
    );
    let serve_stop = shutdown.clone();
    let app = http::router(api);
    match tls {
        Some(tls) => {
            let _enter = runtime.enter();
            let listener = hids_server::tls::TlsListener::new(listener, tls)?;
            runtime.spawn(serve(listener, app, serve_stop));
        }
        None => {
            runtime.spawn(serve(listener, app, serve_stop));
        }
    }
    runtime.spawn(stop_on_signal(shutdown.clone()));
    let triage = Triage::new(
        rules,
        config.rules.max_frequency_keys,
        config.alerts.window_secs,
        config.kafka.max_event_bytes,
        metrics.clone(),
    )
    .with_fleet(
        Fleet::new(
            config.fleet.clone(),
            config.alerts.window_secs,
            config.kafka.topics.len(),
            config.etcd.is_some(),
            metrics.clone(),
        ),
        config.kafka.topics.clone(),
    )
    .with_inventory(inventory.clone());
    let triage = match recent {
        Some(recent) => triage.with_recent(recent),
        None => triage,
    };
    let consume = Consume {
        presence,
        config,
        triage,
        store: writer,
        outputs,
        metrics,
        shutdown: shutdown.clone(),
        inventory: Some(inventory),
    };
    // The consumer is CPU-bound and synchronous: its own thread, off the runtime.
    let enter = runtime.handle().clone();
    let consumer = std::thread::Builder::new()
        .name("consume".into())
        .spawn(move || {
            let _guard = enter.enter();
            consume.run()
        })?;
    let result = consumer
        .join()
        .map_err(|_| anyhow::anyhow!("the consumer thread panicked"))?;
    shutdown.store(true, Ordering::Relaxed);
    runtime.shutdown_timeout(Duration::from_secs(5));
    tracing::info!("stopped");
    result
}

/// The inventory index on a store handle and a thread of its own: it loads the store,
/// then follows it and the vulnerability feeds.
fn start_inventory(
    config: &ServerConfig,
    store_cfg: &StoreConfig,
    shutdown: &Arc<AtomicBool>,
) -> anyhow::Result<Arc<hids_server::inventory::Inventory>> {
    let inventory = hids_server::inventory::Inventory::new(
        hids_store::open(store_cfg).context("opening the store for the inventory index")?,
        config.vulns.clone(),
    );
    let (runner, stop) = (inventory.clone(), shutdown.clone());
    std::thread::Builder::new()
        .name("inventory".into())
        .spawn(move || runner.run(stop))?;
    Ok(inventory)
}

/// Follows the agents' presence in etcd on the runtime, when `[etcd]` is configured.
fn start_presence(
    config: &ServerConfig,
    runtime: &tokio::runtime::Runtime,
    metrics: &Arc<Metrics>,
    shutdown: &Arc<AtomicBool>,
) -> anyhow::Result<Option<Arc<Mutex<Presence>>>> {
    let Some(etcd) = &config.etcd else {
        tracing::info!("no [etcd]: presence, silence and status alerts are off");
        return Ok(None);
    };
    let connect = etcd
        .settings()
        .config()
        .context("etcd: the credentials file")?;
    let presence = Arc::new(Mutex::new(Presence::new(
        config.fleet.max_label_values,
        metrics.clone(),
    )));
    runtime.spawn(hids_server::fleet::presence::follow(
        connect,
        hids_control::Keys::new(&etcd.prefix),
        presence.clone(),
        metrics.clone(),
        shutdown.clone(),
    ));
    Ok(Some(presence))
}

/// Serves the API and the console until `stop`, letting requests in flight finish.
async fn serve<L>(listener: L, app: axum::Router, stop: Arc<AtomicBool>)
where
    L: axum::serve::Listener,
    L::Addr: std::fmt::Debug,
{
    let stopped = async move {
        while !stop.load(Ordering::Relaxed) {
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    };
    if let Err(e) = axum::serve(listener, app)
        .with_graceful_shutdown(stopped)
        .await
    {
        tracing::error!("http: {e}");
    }
}

async fn stop_on_signal(shutdown: Arc<AtomicBool>) {
    use tokio::signal::unix::{signal, SignalKind};
    let (Ok(mut term), Ok(mut int)) = (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) else {
        tracing::error!("cannot watch SIGTERM/SIGINT; stop with SIGKILL");
        return;
    };
    tokio::select! {
        _ = term.recv() => {}
        _ = int.recv() => {}
    }
    tracing::info!("stopping: finishing the batch in hand");
    shutdown.store(true, Ordering::Relaxed);
}
