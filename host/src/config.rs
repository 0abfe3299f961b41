//! The agent's configuration: the validated types the rest of the program uses
//! and [`load`], the only way to make them. This module and its children are
//! the only code that knows the file is YAML.
//!
//! Parsing is two-phase: the YAML tree (with line numbers) is walked once,
//! every problem is collected with its path, and only a file without errors
//! becomes a [`Config`].
//!
//! One child module per section holds its types, its readers and its tests:
//! `registry` (`yggdrasil`, v2 and v3 layouts), `agent`, `instances`,
//! `checks`, `plugins`, `local` (local control and the local API) and
//! `publish` (`agent.publish`, `agent.etcdNaming`); `rules` holds the checks
//! they share. Everything a caller needs is re-exported here.

mod agent;
mod checks;
mod field;
mod instances;
mod local;
mod plugins;
mod publish;
mod registry;
mod report;
mod rules;
mod secret;
mod units;
mod yaml;

use std::path::{Path, PathBuf};

use sha2::Digest;

use agent::{empty_agent, read_agent};
use registry::read_yggdrasil;
use report::{Report, YamlPath};
use yaml::{Document, Unknown, Value};

pub use agent::{AdminConfig, AgentConfig, DEFAULT_SHUTDOWN_TIMEOUT};
pub use checks::{
    CheckConfig, CheckStatus, CheckTiming, DEFAULT_CHECK_INTERVAL, DEFAULT_CHECK_TIMEOUT,
    DEFAULT_FAILURES_BEFORE_CRITICAL, DEFAULT_HTTP_METHOD, DEFAULT_INITIAL_STATUS,
    DEFAULT_SUCCESS_BEFORE_PASSING, MIN_CHECK_INTERVAL, Probe,
};
pub use instances::{InstancesFile, YGGDRASIL_DEFAULT_PROTOCOLS, parse_instances};
pub use local::{
    ApiConfig, ApiInstance, DEFAULT_DRAIN_DELAY, LocalConfig, MIN_API_TTL, parse_api_instance,
};
pub use plugins::{
    DEFAULT_PLUGIN_INTERVAL, DEFAULT_PLUGIN_MEMORY, DEFAULT_PLUGIN_TIMEOUT, DEFAULT_PLUGINS_DIR,
    MAX_PLUGIN_MEMORY, MIN_PLUGIN_INTERVAL, MIN_PLUGIN_MEMORY, MIN_PLUGIN_TIMEOUT, PluginsConfig,
    parse_public_key,
};
pub use publish::{EtcdNaming, Publish};
pub use registry::{
    ClientConfig, Credentials, DEFAULT_DIAL_TIMEOUT, DEFAULT_ENDPOINT, DEFAULT_KEEP_ALIVE,
    DEFAULT_PREFIX, DEFAULT_RETRY_INTERVAL, DEFAULT_TTL, MIN_RETRY_INTERVAL, MIN_TTL,
    RegistryConfig, TlsConfig,
};
pub use report::ConfigIssue;
pub use rules::{MAX_NAME_LEN, is_plugin_name};
pub use secret::{Secret, private_mode, redact_url};
pub use units::{parse_duration, parse_size};
pub use yaml::to_json;

/// A validated configuration file.
#[derive(Debug, Clone, PartialEq)]
pub struct Config {
    pub registry: RegistryConfig,
    pub agent: AgentConfig,
}

/// Why a config file could not be used.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config file {}: {source}", path.display())]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{} is invalid ({} error{}):\n{}", path.display(), issues.len(),
        if issues.len() == 1 { "" } else { "s" }, list(issues))]
    Invalid {
        path: PathBuf,
        issues: Vec<ConfigIssue>,
        /// Found beside the errors; not part of the message, so `check`
        /// can list them after it.
        warnings: Vec<ConfigIssue>,
    },
}

fn list(issues: &[ConfigIssue]) -> String {
    issues
        .iter()
        .map(|i| format!("  {i}"))
        .collect::<Vec<_>>()
        .join("\n")
}

/// A valid config and the warnings found on the way.
#[derive(Debug)]
pub struct Loaded {
    pub config: Config,
    pub warnings: Vec<ConfigIssue>,
    /// SHA-256 of the text this was parsed from.
    pub digest: [u8; 32],
}

/// Reads and validates the config file at `path`.
pub fn load(path: &Path) -> Result<Loaded, ConfigError> {
    let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
        path: path.to_path_buf(),
        source,
    })?;
    let mut loaded =
        validate(&text, &base_dir(path)).map_err(|(issues, warnings)| ConfigError::Invalid {
            path: path.to_path_buf(),
            issues,
            warnings,
        })?;
    if loaded.config.registry.client.credentials.is_some()
        && let Err(problem) = secret::private_file("the config file", path)
    {
        loaded.warnings.push(ConfigIssue {
            path: "yggdrasil.registry.config.client.password".into(),
            line: None,
            message: format!("the etcd password is in this file: {problem}"),
        });
    }
    Ok(loaded)
}

/// The folder relative paths in the config file at `path` are resolved
/// against: the file's own folder, made absolute.
pub fn base_dir(path: &Path) -> PathBuf {
    let base = path
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    std::path::absolute(base).unwrap_or_else(|_| base.to_path_buf())
}

/// Validates config text; relative paths in it are resolved against `base`.
pub fn parse(text: &str, base: &Path) -> Result<Loaded, Vec<ConfigIssue>> {
    validate(text, base).map_err(|(errors, _)| errors)
}

/// [`parse`], keeping the warnings when there are errors: `Err((errors,
/// warnings))`.
pub(crate) fn validate(
    text: &str,
    base: &Path,
) -> Result<Loaded, (Vec<ConfigIssue>, Vec<ConfigIssue>)> {
    if text.trim().is_empty() {
        let empty = ConfigIssue {
            path: YamlPath::default().to_string(),
            line: None,
            message: "the file is empty".into(),
        };
        return Err((vec![empty], Vec::new()));
    }
    let document = Document::parse(text).map_err(|issue| (vec![issue], Vec::new()))?;
    let report = Report::default();
    let config = read_root(document.root(&report), base, &report);
    let (errors, warnings) = report.into_issues();
    match config {
        Some(config) if errors.is_empty() => Ok(Loaded {
            config,
            warnings,
            digest: sha2::Sha256::digest(text.as_bytes()).into(),
        }),
        _ => Err((errors, warnings)),
    }
}

// The readers: one per section, each in the section's module and each a
// table of its keys in file order (the order errors are listed in). Rules
// two sections share are in `rules`.

fn read_root(root: Value, base: &Path, report: &Report) -> Option<Config> {
    let mut top = root.section().value()?;
    let registry = top.section("yggdrasil").value();
    let registry = registry.map_or_else(RegistryConfig::default, |ygg| read_yggdrasil(ygg, base));
    let agent = top.section("agent");
    if agent.is_absent() {
        let message = "no agent section: nothing to register";
        report.warning(&top.key_path("agent"), None, message);
    }
    let agent = agent.value();
    let agent = agent.map_or_else(empty_agent, |agent| read_agent(agent, base, report));
    // Other top-level keys belong to the application sharing the file.
    top.finish(Unknown::Ignore);
    Some(Config { registry, agent })
}

#[cfg(test)]
mod tests;
