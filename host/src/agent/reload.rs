//! Reload: one path whatever triggered it (SIGHUP, an edit, a rename, a
//! ConfigMap swap, a swapped symlink). The [`Reloader`] owns the config
//! file's path, its [`FolderInput`] and what the last read found; it reads
//! and validates off the loop and decides: the running config stays
//! ([`ReloadOutcome::Unchanged`], [`ReloadOutcome::Refused`]) or a
//! [`ConfigDiff`] says what the supervisor's `apply` changes.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use tracing::{error, info, warn};

use super::input::{ConfigRead, Folder, FolderInput, Found, Scanner, read_config};
use crate::config::{Config, LocalConfig, PluginsConfig};
use crate::metrics::{self, Metrics};
use crate::watch::{self as folder_watch, Watched};

/// What a reload did, for logs and tests.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ReloadOutcome {
    /// The new config is running.
    Applied,
    /// The same bytes as last time, or a valid file equal to the running
    /// config: nothing to do.
    Unchanged,
    /// Unreadable or invalid: the running config stays, for these reasons.
    Refused(Vec<String>),
}

/// What a new valid config changes: `apply` consumes it.
#[derive(Debug)]
pub(super) struct ConfigDiff {
    pub new: Config,
    /// `agent.plugins` as it was, when it changed.
    pub plugins: Option<Option<PluginsConfig>>,
    /// The admin address the new config wants, when it changed.
    pub admin: Option<Option<SocketAddr>>,
    /// The registry settings changed (every key may move).
    pub registry: bool,
    /// The configured instances changed.
    pub instances: bool,
    /// The local sections (`instancesDir`, `checks`, `api`, `stateDir`) as
    /// they were.
    pub local: LocalConfig,
}

impl ConfigDiff {
    fn between(old: &Config, new: Config) -> ConfigDiff {
        ConfigDiff {
            plugins: (new.agent.plugins != old.agent.plugins).then(|| old.agent.plugins.clone()),
            admin: (new.agent.admin != old.agent.admin)
                .then(|| new.agent.admin.as_ref().map(|a| a.listen)),
            registry: new.registry != old.registry,
            instances: new.agent.instances != old.agent.instances,
            local: old.agent.local.clone(),
            new,
        }
    }

    /// Every key can move: the configured instances or the registry changed.
    pub fn moves_keys(&self) -> bool {
        self.instances || self.registry
    }
}

/// The config file: its path, its input on disk and what the last read
/// found.
pub(super) struct Reloader {
    path: PathBuf,
    input: FolderInput,
    /// What the last read of the config file found: the SHA-256 of its
    /// bytes (good or bad config), or why it could not be read. A watcher
    /// signal that changes neither costs one read and nothing else.
    last_read: Result<[u8; 32], String>,
    metrics: Metrics,
}

impl Reloader {
    /// Watches `path` (read at start with SHA-256 `digest`).
    pub fn new(path: PathBuf, digest: [u8; 32], metrics: Metrics) -> Reloader {
        let mut input = FolderInput::new(Folder::Config, &path);
        input.watch(&folder_watch::folders_to_watch(&path, Watched::File));
        Reloader {
            path,
            input,
            last_read: Ok(digest),
            metrics,
        }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn input(&mut self) -> &mut FolderInput {
        &mut self.input
    }

    /// Reads the file beside the loop (one read at a time; one asked for
    /// meanwhile follows it). `forced` (SIGHUP) applies even when the
    /// bytes did not change.
    pub fn read(&mut self, forced: bool, scanner: &Scanner) {
        let path = self.path.clone();
        self.input.scan(forced, scanner, move |forced| {
            Found::Config(Box::new(read_config(&path, forced)))
        });
    }

    /// Takes a finished read: watches what the file resolves to now (and
    /// reads again if asked meanwhile), and decides. `clashes` says which
    /// instances of a new config another source holds already.
    pub fn finish(
        &mut self,
        read: ConfigRead,
        running: &Config,
        scanner: &Scanner,
        clashes: impl FnOnce(&Config) -> Vec<String>,
    ) -> (ReloadOutcome, Option<ConfigDiff>) {
        if let Some(forced) = self.input.finished(&read.watch) {
            self.read(forced, scanner);
        }
        self.decide(read, running, clashes)
    }

    fn decide(
        &mut self,
        read: ConfigRead,
        running: &Config,
        clashes: impl FnOnce(&Config) -> Vec<String>,
    ) -> (ReloadOutcome, Option<ConfigDiff>) {
        let path = self.path.display().to_string();
        let (digest, parsed) = match read.file {
            Ok(file) => file,
            Err(error) => {
                // Deleted, replaced by a folder, unreadable: keep running on
                // what we have; the next good save applies normally.
                let problems = vec![format!("cannot read config file {path}: {error}")];
                if read.forced || self.last_read.as_ref().err() != Some(&error) {
                    self.failed(&problems);
                }
                self.last_read = Err(error);
                return (ReloadOutcome::Refused(problems), None);
            }
        };
        if !read.forced && self.last_read == Ok(digest) {
            return (ReloadOutcome::Unchanged, None);
        }
        self.last_read = Ok(digest);
        let loaded = match parsed {
            Ok(loaded) => loaded,
            Err(problems) => {
                self.failed(&problems);
                return (ReloadOutcome::Refused(problems), None);
            }
        };
        for warning in &loaded.warnings {
            warn!(%warning, "config warning");
        }
        self.metrics
            .config_reloads
            .get_or_create(&metrics::OK)
            .inc();
        if loaded.config == *running {
            info!(path = %path, "config reloaded: no change");
            return (ReloadOutcome::Unchanged, None);
        }
        let clashes = clashes(&loaded.config);
        if !clashes.is_empty() {
            self.failed(&clashes);
            return (ReloadOutcome::Refused(clashes), None);
        }
        let diff = ConfigDiff::between(running, loaded.config);
        (ReloadOutcome::Applied, Some(diff))
    }

    /// Logs a failed reload: one line saying so, then one line per problem.
    fn failed(&self, problems: &[String]) {
        self.metrics
            .config_reloads
            .get_or_create(&metrics::ERROR)
            .inc();
        let path = self.path.display();
        error!(path = %path, errors = problems.len(), "config reload failed; the running config stays in force");
        for problem in problems {
            error!(path = %path, "config error: {problem}");
        }
    }
}
