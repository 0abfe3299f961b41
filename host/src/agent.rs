//! The supervisor: owns the running config, turns it (and plugin output)
//! into the registry's target, and runs the shutdown sequence. Everything
//! that happens to the agent arrives here as one [`Event`] through one
//! `select!`; the actors it starts run on its [`TaskTracker`].

use std::path::PathBuf;

use tokio::sync::mpsc;
use tokio::time::Instant;
use tokio_util::task::TaskTracker;
use tracing::{error, info, warn};

use crate::config::{self, Config};
use crate::desired::{self, Clash, PluginMetadata};
use crate::metrics::{self, Metrics};
use crate::registry::RegistryHandle;

/// Requests from outside the agent: signals in production, the test in tests.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Control {
    /// Deregister and stop (SIGINT, SIGTERM).
    Shutdown,
    /// Re-read the config file now (SIGHUP).
    Reload,
}

/// Everything the supervisor reacts to.
#[derive(Debug)]
enum Event {
    Control(Control),
    /// The control channel closed: nobody can ask us to stop any more, so stop.
    ControlClosed,
}

/// What `run` needs besides the config it starts with.
pub struct RunOptions {
    /// The file to re-read on reload.
    pub config_path: PathBuf,
    pub metrics: Metrics,
}

struct Supervisor {
    options: RunOptions,
    config: Config,
    plugin_metadata: PluginMetadata,
    clashes: Vec<Clash>,
    registry: RegistryHandle,
}

/// Runs the agent until `control` says stop (or closes), then deregisters
/// within the config's `shutdownTimeout`.
pub async fn run(options: RunOptions, config: Config, mut control: mpsc::Receiver<Control>) {
    let tracker = TaskTracker::new();
    let plugin_metadata = PluginMetadata::new();
    let (target, clashes) = desired::build(&config, &plugin_metadata);
    let registry = RegistryHandle::spawn(target, options.metrics.clone(), &tracker);
    info!(
        instances = config.agent.instances.len(),
        endpoints = ?config.registry.client.endpoints,
        prefix = %config.registry.prefix,
        "agent started"
    );
    let mut supervisor = Supervisor {
        options,
        config,
        plugin_metadata,
        clashes: Vec::new(),
        registry,
    };
    supervisor.report_clashes(clashes);

    loop {
        let event = tokio::select! {
            message = control.recv() => match message {
                Some(control) => Event::Control(control),
                None => Event::ControlClosed,
            },
        };
        match event {
            Event::Control(Control::Shutdown) | Event::ControlClosed => break,
            Event::Control(Control::Reload) => supervisor.reload(),
        }
    }

    let timeout = supervisor.config.agent.shutdown_timeout;
    let deadline = Instant::now() + timeout;
    info!(timeout = ?timeout, "shutting down: deregistering every instance");
    if !supervisor.registry.stop(deadline).await {
        warn!(
            "deregistration did not finish within shutdownTimeout; the lease will expire on its own"
        );
    }
    tracker.close();
    if tokio::time::timeout_at(deadline, tracker.wait())
        .await
        .is_err()
    {
        warn!("some tasks did not stop within shutdownTimeout");
    }
    info!("agent stopped");
}

impl Supervisor {
    /// Re-reads the config file; a bad file changes nothing.
    fn reload(&mut self) {
        let path = &self.options.config_path;
        match config::load(path) {
            Ok(loaded) => {
                for warning in &loaded.warnings {
                    warn!(%warning, "config warning");
                }
                self.options
                    .metrics
                    .config_reloads
                    .get_or_create(&metrics::OK)
                    .inc();
                if loaded.config == self.config {
                    info!(path = %path.display(), "config reloaded: no change");
                    return;
                }
                info!(path = %path.display(), "config reloaded: applying the changes");
                self.config = loaded.config;
                self.publish();
            }
            Err(e) => {
                self.options
                    .metrics
                    .config_reloads
                    .get_or_create(&metrics::ERROR)
                    .inc();
                error!("config reload failed, keeping the running config: {e}");
            }
        }
    }

    fn publish(&mut self) {
        let (target, clashes) = desired::build(&self.config, &self.plugin_metadata);
        self.registry.set_target(target);
        self.report_clashes(clashes);
    }

    /// Warns about plugin clashes when they change, not on every round.
    fn report_clashes(&mut self, clashes: Vec<Clash>) {
        if clashes != self.clashes {
            for clash in clashes.iter().filter(|c| !self.clashes.contains(c)) {
                warn!(
                    key = %clash.key,
                    winner = %clash.winner,
                    loser = %clash.loser,
                    "two plugins set the same metadata key; the one whose name sorts first wins"
                );
            }
            self.clashes = clashes;
        }
    }
}
