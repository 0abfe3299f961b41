//! What the agent offers plugins. These calls never block and never trap.
//!
//! Only callable inside the agent: in a native build (unit tests of a
//! plugin) the underlying imports do not exist and calling them panics.

use crate::bindings::ygg::agent_plugin::host as wit;
use crate::{Level, Settings, SystemSnapshot};

/// Writes a line to the agent's log, tagged with the plugin's name.
///
/// The [`trace!`](crate::trace), [`debug!`](crate::debug),
/// [`info!`](crate::info), [`warn!`](crate::warn) and
/// [`error!`](crate::error) macros wrap this with `format!` arguments.
pub fn log(level: Level, message: &str) {
    wit::log(level.to_wit(), message);
}

/// Facts about the machine (load, memory, hostname, uptime, CPUs), read by
/// the agent once per collection round and shared by every plugin.
pub fn system() -> SystemSnapshot {
    SystemSnapshot::from_wit(wit::system())
}

/// This plugin's settings from the agent's config, the same as given to
/// [`Plugin::init`](crate::Plugin::init).
pub fn settings() -> Settings {
    wit::settings().into_iter().collect()
}

/// Logs at [`Level::Trace`] with `format!` arguments:
/// `ygg_agent_sdk::trace!("state {state:?}")`.
#[macro_export]
macro_rules! trace {
    ($($arg:tt)+) => {
        $crate::log($crate::Level::Trace, &::std::format!($($arg)+))
    };
}

/// Logs at [`Level::Debug`] with `format!` arguments:
/// `ygg_agent_sdk::debug!("read {n} entries")`.
#[macro_export]
macro_rules! debug {
    ($($arg:tt)+) => {
        $crate::log($crate::Level::Debug, &::std::format!($($arg)+))
    };
}

/// Logs at [`Level::Info`] with `format!` arguments:
/// `ygg_agent_sdk::info!("ready, format {format}")`.
#[macro_export]
macro_rules! info {
    ($($arg:tt)+) => {
        $crate::log($crate::Level::Info, &::std::format!($($arg)+))
    };
}

/// Logs at [`Level::Warn`] with `format!` arguments:
/// `ygg_agent_sdk::warn!("no value for {key}, using the default")`.
#[macro_export]
macro_rules! warn {
    ($($arg:tt)+) => {
        $crate::log($crate::Level::Warn, &::std::format!($($arg)+))
    };
}

/// Logs at [`Level::Error`] with `format!` arguments:
/// `ygg_agent_sdk::error!("lookup failed: {err}")`.
#[macro_export]
macro_rules! error {
    ($($arg:tt)+) => {
        $crate::log($crate::Level::Error, &::std::format!($($arg)+))
    };
}
