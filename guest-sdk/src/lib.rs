//! Write ygg-agent metadata plugins in plain Rust.
//!
//! A plugin is a WebAssembly component the agent loads from its plugins
//! folder. Once per collection round the agent asks it, for each registered
//! instance, for a set of key/value pairs; those are merged into the
//! instance's metadata in etcd. This crate hides the component plumbing
//! (wit-bindgen, the ABI, the exports): implement [`Plugin`], call
//! [`register_plugin!`], build for `wasm32-wasip2`.
//!
//! # Example
//!
//! `Cargo.toml`:
//!
//! ```toml
//! [package]
//! name = "ygg-plugin-rack"
//! version = "0.1.0"
//! edition = "2024"
//!
//! [lib]
//! name = "rack"              # the agent knows the plugin by this name
//! crate-type = ["cdylib"]
//!
//! [dependencies]
//! ygg-agent-sdk = { path = "../../guest-sdk" }
//! ```
//!
//! `src/lib.rs`:
//!
//! ```
//! use ygg_agent_sdk::{Instance, Metadata, Plugin, Settings};
//!
//! /// Tells where the machine sits, from the plugin's settings.
//! struct Rack {
//!     rack: String,
//! }
//!
//! impl Plugin for Rack {
//!     fn init(settings: &Settings) -> Result<Self, String> {
//!         let rack = settings.get("rack").ok_or("setting `rack` is required")?;
//!         ygg_agent_sdk::info!("rack plugin ready, rack {rack}");
//!         Ok(Rack { rack: rack.to_owned() })
//!     }
//!
//!     fn collect(&mut self, instance: &Instance) -> Result<Metadata, String> {
//!         let mut out = Metadata::new();
//!         out.insert("rack".into(), self.rack.clone());
//!         out.insert("rack_instance".into(), format!("{}/{}", self.rack, instance.name));
//!         Ok(out)
//!     }
//! }
//!
//! ygg_agent_sdk::register_plugin!(Rack);
//! # fn main() {}
//! ```
//!
//! Build it with `cargo build --release --target wasm32-wasip2`; the plugin
//! is `target/wasm32-wasip2/release/rack.wasm`. The crate's `README.md`
//! covers installing it, the rules its output must follow, the sandbox and
//! the limits.
//!
//! # What the agent provides
//!
//! - [`log`] (and [`trace!`], [`debug!`], [`info!`], [`warn!`], [`error!`]):
//!   lines in the agent's log, tagged with the plugin's name.
//! - [`system`]: load, memory, hostname, uptime and CPU count.
//! - [`settings`]: the plugin's settings, also given to [`Plugin::init`].
//! - [`time`]: RFC 3339 timestamps without pulling a date crate into every
//!   plugin.
//!
//! Plugins have no filesystem, network or environment. Anything written to
//! stdout or stderr ends up in the agent's log.
#![warn(missing_docs)]

#[cfg(feature = "check")]
pub mod check;
mod host;
pub mod time;
mod types;

use std::time::Duration;

pub use host::{log, settings, system};
pub use types::{Endpoint, Instance, Level, Metadata, Settings, SystemSnapshot};

/// Bindings generated from `wit/v0.1.0/plugin.wit`. Not part of the API: only
/// [`register_plugin!`], which expands in the plugin crate, reaches in here,
/// which is why the export macro is public.
#[doc(hidden)]
#[allow(missing_docs)]
pub mod bindings {
    wit_bindgen::generate!({
        path: "wit/v0.1.0",
        world: "plugin",
        // `register_plugin!` calls `export!` from the plugin crate.
        pub_export_macro: true,
        default_bindings_module: "ygg_agent_sdk::bindings",
    });
}

/// A metadata plugin.
///
/// The agent creates one value of the implementing type per loaded plugin
/// (through [`Plugin::init`]) and then calls [`Plugin::collect`] on it for
/// every instance, every round. After a crash (panic, timeout, memory limit)
/// the agent throws the whole WebAssembly instance away and starts a new
/// one, so `init` runs again: state kept in `self` lasts until then.
///
/// Register the type with [`register_plugin!`].
pub trait Plugin: Sized + 'static {
    /// Called once with the plugin's settings
    /// (`agent.plugins.settings.<name>` in the agent's config). An error
    /// keeps the plugin from loading; the agent logs it.
    fn init(settings: &Settings) -> Result<Self, String>;

    /// The plugin's whole key/value set for this instance.
    ///
    /// Return every key each time: the output replaces the previous one, it
    /// is not merged with it. An error keeps the last good output in place.
    fn collect(&mut self, instance: &Instance) -> Result<Metadata, String>;

    /// How often the plugin wants to be asked. The agent asks every
    /// `agent.plugins.interval`, or at this interval when it is longer.
    /// `None` (the default): the agent's interval.
    fn suggested_interval() -> Option<Duration> {
        None
    }
}

/// Makes a [`Plugin`] the plugin this crate exports.
///
/// Use it once, at the top level of the plugin crate:
///
/// ```ignore
/// ygg_agent_sdk::register_plugin!(MyPlugin);
/// ```
///
/// The plugin's name and version, as reported to the agent, are the crate's
/// library name and package version (`CARGO_CRATE_NAME`,
/// `CARGO_PKG_VERSION`). A panic anywhere in the plugin is sent to the
/// agent's log at error level, with its message and location, before the
/// plugin traps.
#[macro_export]
macro_rules! register_plugin {
    ($plugin:ty $(,)?) => {
        // An anonymous const keeps these helper items out of the plugin's
        // namespace; the exported functions are found by symbol name.
        const _: () = {
            ::std::thread_local! {
                // A component instance is single-threaded; the thread local
                // is the safe way to own the plugin without `static mut`.
                static PLUGIN: ::core::cell::RefCell<::core::option::Option<$plugin>> =
                    const { ::core::cell::RefCell::new(::core::option::Option::None) };
            }

            struct Export;

            impl $crate::__private::Guest for Export {
                fn describe() -> $crate::__private::PluginInfo {
                    $crate::__private::describe::<$plugin>(
                        ::core::env!("CARGO_CRATE_NAME"),
                        ::core::env!("CARGO_PKG_VERSION"),
                    )
                }

                fn init(
                    settings: $crate::__private::Pairs,
                ) -> ::core::result::Result<(), ::std::string::String> {
                    $crate::__private::init(&PLUGIN, settings)
                }

                fn collect(
                    instance: $crate::__private::WitInstance,
                ) -> ::core::result::Result<$crate::__private::Pairs, ::std::string::String>
                {
                    $crate::__private::collect(&PLUGIN, instance)
                }
            }

            // `with_types_in`: the bindings live in the SDK, not next to
            // this invocation.
            $crate::bindings::export! { Export with_types_in $crate::bindings }
        };
    };
}

/// What [`register_plugin!`] expands to calls into; not part of the API.
#[doc(hidden)]
pub mod __private {
    use std::cell::RefCell;
    use std::sync::Once;
    use std::thread::LocalKey;

    pub use crate::bindings::{Guest, Instance as WitInstance, Pairs, PluginInfo};
    use crate::{Instance, Level, Plugin, Settings};

    /// Where the plugin lives between calls.
    pub type Slot<T> = RefCell<Option<T>>;

    pub fn describe<T: Plugin>(name: &str, version: &str) -> PluginInfo {
        install_panic_hook();
        PluginInfo {
            name: name.to_owned(),
            version: version.to_owned(),
            suggested_interval_ms: T::suggested_interval()
                .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX)),
        }
    }

    pub fn init<T: Plugin>(
        slot: &'static LocalKey<Slot<T>>,
        settings: Pairs,
    ) -> Result<(), String> {
        install_panic_hook();
        let plugin = T::init(&Settings::from_iter(settings))?;
        slot.with(|cell| match cell.try_borrow_mut() {
            Ok(mut current) => {
                *current = Some(plugin);
                Ok(())
            }
            // Only reachable if the host re-entered the guest mid-call.
            Err(_) => Err("init called while the plugin is busy".to_owned()),
        })
    }

    pub fn collect<T: Plugin>(
        slot: &'static LocalKey<Slot<T>>,
        instance: WitInstance,
    ) -> Result<Pairs, String> {
        install_panic_hook();
        let instance = Instance::from_wit(instance);
        slot.with(|cell| {
            let mut current = cell
                .try_borrow_mut()
                .map_err(|_| "collect called while the plugin is busy".to_owned())?;
            let plugin = current
                .as_mut()
                .ok_or_else(|| "collect called before init".to_owned())?;
            Ok(plugin.collect(&instance)?.into_iter().collect())
        })
    }

    /// Routes panics to the agent's log. Without this a panic only shows up
    /// as a bare `unreachable` trap on the host side (the default hook's
    /// stderr line is easy to miss); with it the agent logs the message and
    /// where it came from. Runs at every entry point, so it is in place
    /// whichever export the host calls first.
    fn install_panic_hook() {
        static HOOK: Once = Once::new();
        HOOK.call_once(|| {
            std::panic::set_hook(Box::new(|info| {
                let message = info
                    .payload_as_str()
                    .unwrap_or("(non-string panic payload)");
                let line = match info.location() {
                    Some(at) => format!(
                        "panicked at {}:{}:{}: {message}",
                        at.file(),
                        at.line(),
                        at.column()
                    ),
                    None => format!("panicked: {message}"),
                };
                crate::log(Level::Error, &line);
            }));
        });
    }
}
