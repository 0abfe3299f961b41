//! The command line (SPEC §6): parsing, logging set-up, signals, and exit
//! codes. 0 success, 1 runtime failure, 2 usage or config error.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::{Parser, Subcommand, ValueEnum};
use tokio::signal::unix::{SignalKind, signal};
use tokio::sync::mpsc;
use tracing::{info, warn};

use crate::agent::{self, Control, RunOptions};
use crate::api::commands::Command as LocalCommand;
use crate::config::{self, ConfigError};
use crate::metrics::Metrics;

mod exit;
mod plugin_check;

pub use exit::{EXIT_RUNTIME, EXIT_USAGE};
use plugin_check::plugin_check;

#[derive(Debug, Parser)]
#[command(
    name = "ygg-agent",
    version,
    about = "Keeps service instances registered in etcd, with WebAssembly metadata plugins"
)]
struct Cli {
    /// Log format: human-readable text, or one JSON object per line.
    #[arg(long, value_enum, default_value_t = LogFormat::Text, global = true)]
    log_format: LogFormat,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum LogFormat {
    Text,
    Json,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the agent: register the configured instances and keep them registered.
    Run {
        /// The YAML config file.
        #[arg(long, short)]
        config: PathBuf,
    },
    /// Validate a config file and print every error (exit 0 valid, 2 invalid).
    Check {
        /// The YAML config file.
        #[arg(long, short)]
        config: PathBuf,
    },
    /// Read the registry and print the instances it holds (exit 0, or 1 if
    /// etcd is unreachable).
    List {
        /// Take the etcd connection (endpoints, auth, TLS) and prefix from
        /// this config file; default: 127.0.0.1:2379 and /yggdrasil/registry.
        #[arg(long, short)]
        config: Option<PathBuf>,
        /// etcd endpoints, comma-separated (overrides the config's).
        #[arg(long, value_delimiter = ',')]
        endpoints: Option<Vec<String>>,
        /// Key prefix (overrides the config's), used as written like the
        /// config's: `/yggdrasil/registry/` reads `/yggdrasil/registry//…`.
        #[arg(long)]
        prefix: Option<String>,
        /// Only this namespace.
        #[arg(long, short)]
        namespace: Option<String>,
        /// Only endpoints of this scheme (grpc, http, ...); instances without one are left out.
        #[arg(long)]
        scheme: Option<String>,
        /// Print JSON (one array of {key, instance} or {key, error}).
        #[arg(long)]
        json: bool,
        /// Only this service.
        service: Option<String>,
    },
    /// Ask a running agent (through its admin listener) where each
    /// instance stands (registered, pending, withheld, ttl-expired,
    /// maintenance, drained) and why, each check's last result, the
    /// plugins and the etcd session; with ID, that one instance's whole
    /// story (exit 0, 1 if the agent does not answer or has no instance
    /// ID, 2 usage).
    Status {
        /// One instance: its id (`ygg-agent instances` lists them) or key.
        id: Option<String>,
        /// Find the admin listener in this config file (`agent.admin.listen`).
        #[arg(long, short)]
        config: Option<PathBuf>,
        /// The admin listener's address (overrides the config's).
        #[arg(long)]
        admin: Option<std::net::SocketAddr>,
        /// Print the JSON the agent serves at /status.
        #[arg(long)]
        json: bool,
    },
    /// Work with plugins.
    Plugin {
        #[command(subcommand)]
        command: PluginCommand,
    },
    /// List every instance of the running agent with its source (config,
    /// file, api) and state (local API; exit 0, 1 unreachable).
    Instances {
        #[command(flatten)]
        socket: SocketArg,
        /// Print the agent's JSON.
        #[arg(long)]
        json: bool,
    },
    /// Register an instance (a YAML or JSON file in the agent.instances[]
    /// schema, optionally with `ttl`) through the local API (exit 0
    /// registered, 1 agent unreachable or failing, 2 refused or unusable
    /// file).
    Register {
        #[command(flatten)]
        socket: SocketArg,
        /// Its id, `[A-Za-z0-9._-]{1,128}` (default: the file name without
        /// its extension).
        #[arg(long)]
        id: Option<String>,
        /// The instance: one mapping as in agent.instances[] (YAML or JSON).
        file: PathBuf,
    },
    /// Deregister an instance registered through the local API (exit 0
    /// done, 1 agent unreachable or failing, 2 refused: unknown id, or an
    /// instance from the config or a file).
    Deregister {
        #[command(flatten)]
        socket: SocketArg,
        /// The id it was registered with (`ygg-agent instances` lists them).
        id: String,
    },
    /// Renew the TTL of an API registration (exit 0 done, 1 agent
    /// unreachable or failing, 2 refused: unknown id or no `ttl`).
    Pass {
        #[command(flatten)]
        socket: SocketArg,
        /// The id it was registered with.
        id: String,
    },
    /// Take an instance (or, without ID, the node) out of rotation and keep
    /// it out across restarts, or put it back (exit 0 done, 1 agent
    /// unreachable or failing, 2 refused: unknown id).
    Maint {
        #[command(flatten)]
        socket: SocketArg,
        action: MaintAction,
        /// The instance's id as `ygg-agent instances` lists it; without it,
        /// the whole node.
        id: Option<String>,
        /// Why, shown by `instances` and kept with the maintenance (enable only).
        #[arg(long)]
        reason: Option<String>,
    },
    /// Delete the key of an instance (or, without ID, every key) now and keep
    /// it out until `maint disable`, without stopping the agent (exit 0
    /// done, 1 agent unreachable or failing, 2 refused: unknown id).
    Drain {
        #[command(flatten)]
        socket: SocketArg,
        /// The instance's id as `ygg-agent instances` lists it; without it,
        /// every instance.
        id: Option<String>,
    },
}

/// Where the running agent's local API socket is.
#[derive(Debug, clap::Args)]
struct SocketArg {
    /// The agent's socket (default: $RUNTIME_DIRECTORY/agent.sock, else
    /// /run/ygg-agent/agent.sock if that folder exists, else
    /// $XDG_RUNTIME_DIR/ygg-agent/agent.sock, else
    /// $TMPDIR/ygg-agent-<uid>/agent.sock).
    #[arg(long, env = "YGG_AGENT_SOCKET")]
    socket: Option<PathBuf>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum MaintAction {
    Enable,
    Disable,
}

#[derive(Debug, Subcommand)]
enum PluginCommand {
    /// Load a plugin, run describe, init and one collect on a sample
    /// instance, and print the output (exit 0 ok, 1 plugin failed, 2 the
    /// --config file is missing or invalid).
    Check {
        /// The plugin component (.wasm).
        file: PathBuf,
        /// Take the plugin's settings, limits and the sample instance (the
        /// first configured one) from this config file.
        #[arg(long, short)]
        config: Option<PathBuf>,
        /// Call collect this many times on the same instance and print how
        /// long the warm calls took.
        #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..=1_000_000))]
        calls: u32,
    },
}

/// Entry point of the binary.
pub fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => {
            // --help and --version are not errors.
            let code = if e.use_stderr() { EXIT_USAGE } else { 0 };
            let _ = e.print();
            return ExitCode::from(code);
        }
    };
    init_logging(cli.log_format);
    match cli.command {
        Command::Check { config } => check(&config),
        Command::Run { config } => run(&config),
        Command::List {
            config,
            endpoints,
            prefix,
            namespace,
            scheme,
            json,
            service,
        } => list(
            config.as_deref(),
            endpoints,
            prefix,
            namespace,
            service,
            scheme,
            json,
        ),
        Command::Status {
            id,
            config,
            admin,
            json,
        } => status(config.as_deref(), admin, id.as_deref(), json),
        Command::Plugin {
            command:
                PluginCommand::Check {
                    file,
                    config,
                    calls,
                },
        } => plugin_check(&file, config.as_deref(), calls as usize),
        Command::Instances { socket, json } => local(socket, LocalCommand::Instances { json }),
        Command::Register { socket, id, file } => {
            local(socket, LocalCommand::Register { file, id })
        }
        Command::Deregister { socket, id } => local(socket, LocalCommand::Deregister { id }),
        Command::Pass { socket, id } => local(socket, LocalCommand::Pass { id }),
        Command::Maint {
            socket,
            action,
            id,
            reason,
        } => {
            let enable = action == MaintAction::Enable;
            local(socket, LocalCommand::Maintenance { enable, id, reason })
        }
        Command::Drain { socket, id } => local(socket, LocalCommand::Drain { id }),
    }
}

fn local(socket: SocketArg, command: LocalCommand) -> ExitCode {
    ExitCode::from(crate::api::commands::run(socket.socket, command))
}

fn init_logging(format: LogFormat) {
    use tracing_subscriber::EnvFilter;
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()));
    match format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().flatten_event(true).init(),
    }
}

fn print_config_error(error: &ConfigError) {
    eprintln!("error: {error}");
}

fn check(path: &Path) -> ExitCode {
    match config::load(path) {
        Ok(loaded) => {
            for warning in &loaded.warnings {
                eprintln!("warning: {warning}");
            }
            if let Some(api) = &loaded.config.agent.local.api {
                let socket = api
                    .socket
                    .clone()
                    .unwrap_or_else(crate::api::default_socket);
                // A warning: `check` may run as another user than the agent.
                if let Err(problem) = crate::socket_dir::check_for_config(&socket) {
                    // Root checking a packaged agent's config: the folder
                    // is the agent's user's, which is as it should be.
                    let owner = crate::socket_dir::owner_who_could_use(&socket).map(|uid| {
                        let name = crate::socket_dir::user_name(uid)
                            .map_or(String::new(), |name| format!(" ({name})"));
                        format!(" (run as uid {uid}{name}, the folder's owner, the agent would accept it)")
                    });
                    eprintln!(
                        "warning: agent.api.socket: the agent, run as uid {}, would refuse it{}: {problem}",
                        crate::socket_dir::euid(),
                        owner.unwrap_or_default()
                    );
                }
            }
            let agent = &loaded.config.agent;
            let (files, refused) = check_instances_dir(&agent.local);
            if refused > 0 {
                eprintln!(
                    "error: {}: {refused} of {files} instance file{} in agent.instancesDir refused (above)",
                    path.display(),
                    if files == 1 { "" } else { "s" }
                );
                return ExitCode::from(EXIT_USAGE);
            }
            println!(
                "{}: valid ({} instance{}, etcd {}, prefix {})",
                path.display(),
                agent.instances.len(),
                if agent.instances.len() == 1 { "" } else { "s" },
                loaded.config.registry.client.endpoints.join(","),
                loaded.config.registry.prefix,
            );
            if let Some(plugins) = &agent.plugins {
                let (error, warning) = crate::plugins::check_folders(plugins);
                if let Some(warning) = warning {
                    eprintln!("warning: {warning}");
                }
                if let Some(error) = error {
                    eprintln!("error: {error}");
                    return ExitCode::from(EXIT_USAGE);
                }
            }
            ExitCode::SUCCESS
        }
        Err(error) => {
            eprintln!("{}", problems(&error));
            ExitCode::from(EXIT_USAGE)
        }
    }
}

/// `check`: the files of `agent.instancesDir` too, with the agent's own
/// reader (every error and warning printed with the file's path). Returns
/// (files read, files refused).
fn check_instances_dir(local: &config::LocalConfig) -> (usize, usize) {
    let Some(dir) = local.instances_dir.as_deref() else {
        return (0, 0);
    };
    let scan = crate::instances_dir::scan(dir, &local.check_defaults);
    if let Some(error) = &scan.error {
        eprintln!("error: agent.instancesDir: {error}");
        return (0, 1);
    }
    let mut refused = 0;
    for (file, read) in &scan.files {
        match read {
            Ok(instances) => {
                for warning in &instances.warnings {
                    eprintln!("warning: {}: {warning}", file.display());
                }
            }
            Err(problems) => {
                refused += 1;
                for problem in problems {
                    eprintln!("error: {}: {problem}", file.display());
                }
            }
        }
    }
    (scan.files.len(), refused)
}

/// What `check` prints for a file it cannot use: the error (every problem,
/// each with its path and line), then the warnings found beside them, so
/// they are fixed in one pass rather than met after the errors.
fn problems(error: &ConfigError) -> String {
    let mut text = format!("error: {error}");
    if let ConfigError::Invalid { warnings, .. } = error {
        for warning in warnings {
            text.push_str(&format!("\nwarning: {warning}"));
        }
    }
    text
}

fn run(path: &Path) -> ExitCode {
    // Before anything else: the folder and PATH this process started with.
    let launch = crate::handover::Launch::at_start();
    // Started by an upgrade: take what the old process hands over before
    // the config is read (a refused config then exits with the sockets
    // still the old process's alone).
    let incoming = match crate::handover::take_incoming() {
        None => None,
        Some(Ok(incoming)) => Some(incoming),
        Some(Err(error)) => {
            eprintln!("error: upgrade: {error}");
            return ExitCode::from(EXIT_RUNTIME);
        }
    };
    let loaded = match config::load(path) {
        Ok(loaded) => loaded,
        Err(error) => {
            print_config_error(&error);
            return ExitCode::from(EXIT_USAGE);
        }
    };
    for warning in &loaded.warnings {
        warn!(%warning, "config warning");
    }
    match crate::bounded::raise_open_files_limit() {
        Ok(limit) => info!(
            open_files = limit,
            reserved = crate::bounded::RESERVED_FILES,
            connections_per_listener = crate::bounded::open_files_budget(limit),
            "open-files limit"
        ),
        Err(error) => warn!(%error, "cannot raise the open-files limit to its hard limit"),
    }
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("error: cannot start the async runtime: {error}");
            return ExitCode::from(EXIT_RUNTIME);
        }
    };
    let code = runtime.block_on(async {
        let (control_tx, control_rx) = mpsc::channel(8);
        let options = RunOptions {
            config_path: path.to_path_buf(),
            config_digest: loaded.digest,
            metrics: Metrics::new(),
            launch,
            incoming,
        };
        tokio::select! {
            () = agent::run(options, loaded.config, control_rx) => ExitCode::SUCCESS,
            result = forward_signals(control_tx) => match result {
                Ok(never) => match never {},
                Err(error) => {
                    eprintln!("error: cannot install signal handlers: {error}");
                    ExitCode::from(EXIT_RUNTIME)
                }
            },
        }
    });
    // A plugin compile still running on a blocking thread (the agent was
    // stopped while it compiled) must not hold the exit: its result is
    // not wanted any more.
    runtime.shutdown_background();
    code
}

fn status(
    config_path: Option<&Path>,
    admin: Option<std::net::SocketAddr>,
    id: Option<&str>,
    json: bool,
) -> ExitCode {
    let listen = match admin {
        Some(admin) => admin,
        None => {
            let Some(path) = config_path else {
                eprintln!("error: give --config FILE (its agent.admin.listen) or --admin ADDRESS");
                return ExitCode::from(EXIT_USAGE);
            };
            let loaded = match config::load(path) {
                Ok(loaded) => loaded,
                Err(error) => {
                    print_config_error(&error);
                    return ExitCode::from(EXIT_USAGE);
                }
            };
            match loaded.config.agent.admin {
                Some(admin) => admin.listen,
                None => {
                    eprintln!(
                        "error: {} has no agent.admin.listen: `status` asks the agent through its admin listener",
                        path.display()
                    );
                    return ExitCode::from(EXIT_USAGE);
                }
            }
        }
    };
    let address = crate::status::reachable(listen);
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("error: cannot start the async runtime: {error}");
            return ExitCode::from(EXIT_RUNTIME);
        }
    };
    match runtime.block_on(crate::status::fetch(address)) {
        Ok(status) if id.is_some() => {
            let id = id.unwrap_or_default();
            let Some(instance) = status.instance(id) else {
                let known: Vec<String> = (status.instances.iter())
                    .map(|i| crate::status::escape(&i.id))
                    .collect();
                eprintln!(
                    "error: the agent has no instance {} (its instances: {})",
                    crate::status::escape(id),
                    if known.is_empty() {
                        "none".to_string()
                    } else {
                        known.join(", ")
                    }
                );
                return ExitCode::from(EXIT_RUNTIME);
            };
            if json {
                match serde_json::to_string_pretty(instance) {
                    Ok(text) => println!("{text}"),
                    Err(error) => {
                        eprintln!("error: {error}");
                        return ExitCode::from(EXIT_RUNTIME);
                    }
                }
            } else {
                print!("{}", status.explain(instance));
            }
            ExitCode::SUCCESS
        }
        Ok(status) => {
            if json {
                match serde_json::to_string_pretty(&status) {
                    Ok(text) => println!("{text}"),
                    Err(error) => {
                        eprintln!("error: {error}");
                        return ExitCode::from(EXIT_RUNTIME);
                    }
                }
            } else {
                print!("{}", status.table());
            }
            ExitCode::SUCCESS
        }
        Err(error) => {
            eprintln!("error: cannot get the status from the agent at {address}: {error}");
            ExitCode::from(EXIT_RUNTIME)
        }
    }
}

fn list(
    config_path: Option<&Path>,
    endpoints: Option<Vec<String>>,
    prefix: Option<String>,
    namespace: Option<String>,
    service: Option<String>,
    scheme: Option<String>,
    json: bool,
) -> ExitCode {
    let registry = match config_path.map(config::load).transpose() {
        Ok(loaded) => loaded.map(|l| l.config.registry).unwrap_or_default(),
        Err(error) => {
            print_config_error(&error);
            return ExitCode::from(EXIT_USAGE);
        }
    };
    let mut client = registry.client;
    if let Some(endpoints) = endpoints {
        client.endpoints = endpoints;
    }
    if let Some(warning) = prefix.as_deref().and_then(prefix_warning) {
        eprintln!("warning: {warning}");
    }
    let query = crate::list::Query {
        prefix: prefix.unwrap_or(registry.prefix),
        namespace,
        service,
        scheme,
    };
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("error: cannot start the async runtime: {error}");
            return ExitCode::from(EXIT_RUNTIME);
        }
    };
    match runtime.block_on(crate::list::fetch(&client, &query)) {
        Ok(listed) => {
            for invalid in listed.iter().filter(|l| l.error.is_some()) {
                eprintln!(
                    "warning: {}: {}",
                    crate::status::escape(&invalid.key),
                    crate::status::escape(invalid.error.as_deref().unwrap_or_default())
                );
            }
            if json {
                println!(
                    "{}",
                    serde_json::to_string_pretty(&listed).expect("listing serialises")
                );
            } else {
                print!("{}", crate::list::render_table(&listed));
            }
            ExitCode::SUCCESS
        }
        Err(error) => {
            eprintln!(
                "error: cannot read the registry from {}: {error}",
                client.endpoints.join(",")
            );
            ExitCode::from(EXIT_RUNTIME)
        }
    }
}

/// `list --prefix` is read as written; one without a leading `/` (which
/// the config refuses) finds nothing the agent wrote, so say why.
fn prefix_warning(prefix: &str) -> Option<String> {
    (!prefix.is_empty() && !prefix.starts_with('/')).then(|| {
        format!(
            "--prefix `{}` does not start with `/`, so it matches no key the agent writes (the config refuses such a prefix); did you mean `/{}`?",
            crate::status::escape(prefix),
            crate::status::escape(prefix)
        )
    })
}

/// SIGINT/SIGTERM ask for a graceful stop, a second one exits at once;
/// SIGHUP asks for a config reload.
async fn forward_signals(
    control: mpsc::Sender<Control>,
) -> std::io::Result<std::convert::Infallible> {
    let mut interrupt = signal(SignalKind::interrupt())?;
    let mut terminate = signal(SignalKind::terminate())?;
    let mut hangup = signal(SignalKind::hangup())?;
    let mut upgrade = signal(SignalKind::user_defined2())?;
    let mut stopping = false;
    loop {
        let name = tokio::select! {
            _ = interrupt.recv() => "SIGINT",
            _ = terminate.recv() => "SIGTERM",
            _ = hangup.recv() => {
                info!("SIGHUP: reloading the config");
                let _ = control.try_send(Control::Reload);
                continue;
            }
            _ = upgrade.recv() => {
                info!("SIGUSR2: upgrading in place");
                let _ = control.try_send(Control::Upgrade);
                continue;
            }
        };
        if stopping {
            warn!(
                signal = name,
                "second signal: exiting now without deregistering"
            );
            std::process::exit(i32::from(EXIT_RUNTIME));
        }
        stopping = true;
        info!(
            signal = name,
            "stopping (send the signal again to exit at once)"
        );
        let _ = control.send(Control::Shutdown).await;
    }
}

#[cfg(test)]
mod tests;
