//! `agent.plugins`: the plugins folder, the limits of a plugin call and each
//! plugin's settings.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use super::rules::{folder, plugin_name};
use super::yaml::{Section, Unknown};

pub const DEFAULT_PLUGINS_DIR: &str = "plugins";
pub const DEFAULT_PLUGIN_INTERVAL: Duration = Duration::from_secs(30);
pub const MIN_PLUGIN_INTERVAL: Duration = Duration::from_millis(100);
pub const DEFAULT_PLUGIN_TIMEOUT: Duration = Duration::from_secs(1);
/// The epoch ticker runs every 10 ms; a shorter budget could not be enforced.
pub const MIN_PLUGIN_TIMEOUT: Duration = Duration::from_millis(10);
pub const DEFAULT_PLUGIN_MEMORY: u64 = 32 << 20;
/// A Rust component needs about 1.1 MiB of linear memory just to start.
pub const MIN_PLUGIN_MEMORY: u64 = 2 << 20;
pub const MAX_PLUGIN_MEMORY: u64 = 4 << 30;

/// `agent.plugins`.
#[derive(Debug, Clone, PartialEq)]
pub struct PluginsConfig {
    /// Absolute path of the plugins folder.
    pub dir: PathBuf,
    pub interval: Duration,
    pub timeout: Duration,
    pub memory_limit: u64,
    /// Settings by plugin name, handed to the plugin's `init`.
    pub settings: BTreeMap<String, BTreeMap<String, String>>,
    /// Where compiled plugins are cached; `None` = the agent's default.
    pub cache_dir: Option<PathBuf>,
    /// A record change only plugin output caused is written at most this
    /// often per instance; `None`: whenever a round changes it (at most
    /// once per `interval`).
    pub min_rewrite_interval: Option<Duration>,
}

pub(super) fn read_plugins(mut map: Section, base: &Path) -> PluginsConfig {
    #[rustfmt::skip]
    let config = PluginsConfig {
        dir: map.path("dir", base).default(base.join(DEFAULT_PLUGINS_DIR)).check(|d| folder(d)).or_default(),
        interval: map.duration("interval").min(MIN_PLUGIN_INTERVAL).or(DEFAULT_PLUGIN_INTERVAL),
        timeout: map.duration("timeout").min(MIN_PLUGIN_TIMEOUT).or(DEFAULT_PLUGIN_TIMEOUT),
        memory_limit: map.size("memoryLimit")
            .within(MIN_PLUGIN_MEMORY..=MAX_PLUGIN_MEMORY, "must be between 2MiB and 4GiB").or(DEFAULT_PLUGIN_MEMORY),
        settings: map.section("settings").value().map(read_settings).unwrap_or_default(),
        cache_dir: map.path("cacheDir", base).value(),
        min_rewrite_interval: map.duration("minRewriteInterval").nonzero().value(),
    };
    map.finish(Unknown::Error);
    config
}

/// `settings.<plugin>`: a mapping of plain values (or null) per plugin.
fn read_settings(settings: Section) -> BTreeMap<String, BTreeMap<String, String>> {
    let mut out = BTreeMap::new();
    for (name, values) in settings.entries() {
        if let Some(name) = name.check(|name| plugin_name(name)).valid()
            && let Some(values) = values.string_map().value()
        {
            out.insert(name, values);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;
    use crate::config::tests::{SEED, assert_has, errors, ok};

    #[test]
    fn min_rewrite_interval_is_read_and_off_by_default() {
        let plugins = |config: &Config| config.agent.plugins.clone().unwrap();
        assert_eq!(plugins(&ok(SEED).config).min_rewrite_interval, None);
        let text = SEED.replace(
            "    interval: 30s\n",
            "    interval: 30s\n    minRewriteInterval: 5m\n",
        );
        assert_eq!(
            plugins(&ok(&text).config).min_rewrite_interval,
            Some(Duration::from_secs(300))
        );
        let text = SEED.replace(
            "    interval: 30s\n",
            "    interval: 30s\n    minRewriteInterval: 0s\n",
        );
        assert_has(
            &errors(&text),
            "agent.plugins.minRewriteInterval: must be longer than 0 (line 28)",
        );
    }
}
