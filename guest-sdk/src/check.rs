//! Health-check plugins (`ygg:agent-plugin@0.2.0`, world `check`): implement
//! [`Check`] and call [`register_check!`](crate::register_check).
//!
//! A check plugin answers one question for a check of kind
//! `plugin: <name>`: is this instance healthy? The agent builds a fresh
//! WebAssembly instance for every call and drops it afterwards, so there is
//! no `init` and no state between calls, and a connection left open is
//! closed when the call ends. The only network it has is TCP to the
//! addresses in its [`Target`]s (connect with `std::net::TcpStream` to one
//! of [`Target::resolved`]); every other address, listening, UDP and name
//! resolution are refused.
//!
//! # Example
//!
//! ```
//! use std::io::{Read, Write};
//! use std::net::TcpStream;
//!
//! use ygg_agent_sdk::check::{Check, Outcome, Target};
//! use ygg_agent_sdk::{Instance, Settings};
//!
//! /// Passes when the server greets with the configured banner.
//! struct Banner;
//!
//! impl Check for Banner {
//!     fn check(_: &Instance, targets: &[Target], settings: &Settings) -> Result<Outcome, String> {
//!         let address = targets[0].resolved.first().ok_or("no address")?;
//!         let mut stream = TcpStream::connect(address.as_str()).map_err(|e| e.to_string())?;
//!         stream.write_all(b"HELLO\r\n").map_err(|e| e.to_string())?;
//!         let mut greeting = [0u8; 64];
//!         let n = stream.read(&mut greeting).map_err(|e| e.to_string())?;
//!         let greeting = String::from_utf8_lossy(&greeting[..n]).trim().to_owned();
//!         Ok(if greeting == settings.get_or("banner", "OK") {
//!             Outcome::Passing(greeting)
//!         } else {
//!             Outcome::Critical(format!("unexpected greeting {greeting:?}"))
//!         })
//!     }
//! }
//!
//! ygg_agent_sdk::register_check!(Banner);
//! # fn main() {}
//! ```
//!
//! The crate needs the SDK's `check` feature
//! (`ygg-agent-sdk = { path = "…", features = ["check"] }`), and is built
//! like a metadata plugin, but in its own `cargo build` (see the feature's
//! note in the SDK's `Cargo.toml`).
//!
//! The [`log`] here goes through the 0.2.0 contract: use it (or
//! [`check_log!`](crate::check_log)) in a check plugin rather than
//! [`crate::log`] and the [`info!`](crate::info) family, which belong to
//! metadata plugins (0.1.0) and would make the component import both.

use std::collections::BTreeMap;

use crate::{Endpoint, Instance, Level, Settings};

/// Bindings generated from `wit/v0.2.0/plugin.wit`, world `check`. Not part
/// of the API: only [`register_check!`](crate::register_check) reaches in
/// here.
#[doc(hidden)]
#[allow(missing_docs)]
pub mod bindings {
    wit_bindgen::generate!({
        path: "wit/v0.2.0",
        world: "check",
        pub_export_macro: true,
        export_macro_name: "export_check",
        default_bindings_module: "ygg_agent_sdk::check::bindings",
    });
}

use bindings::ygg::agent_plugin::host as wit_host;
use bindings::ygg::agent_plugin::types as wit_types;

/// One address a check may connect to.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct Target {
    /// `host:port` as configured (the check's `target`, or one of the
    /// instance's endpoints): the name to send where a protocol names the
    /// server (TLS SNI, HTTP `Host`).
    pub address: String,
    /// The socket addresses `address` resolved to just before the call
    /// (`127.0.0.1:6379`): the only ones a connect may reach.
    pub resolved: Vec<String>,
}

impl Target {
    /// A target whose address is already a socket address, for tests.
    pub fn new(address: &str) -> Target {
        Target {
            address: address.to_owned(),
            resolved: vec![address.to_owned()],
        }
    }

    /// The host part of [`Target::address`] (brackets of an IPv6 literal
    /// removed): `db.internal` for `db.internal:5432`.
    pub fn host(&self) -> &str {
        let host = self
            .address
            .rsplit_once(':')
            .map_or(self.address.as_str(), |(host, _)| host);
        host.strip_prefix('[')
            .and_then(|h| h.strip_suffix(']'))
            .unwrap_or(host)
    }
}

/// What a check found: passing or critical, with a short line of output.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// Healthy; the text is shown in `ygg-agent status` (`PONG`).
    Passing(String),
    /// Unhealthy; the text says why (`LOADING Redis is loading`).
    Critical(String),
}

/// A health-check plugin.
///
/// [`Check::check`] is called with the instance, where to reach it and
/// the check's settings (`agent.instances[].checks[].settings`). Return
/// `Err` when the check could not tell (no answer, bad settings): the agent
/// counts it as critical and shows the message.
pub trait Check: 'static {
    /// Checks `instance` through `targets` (never empty).
    fn check(
        instance: &Instance,
        targets: &[Target],
        settings: &Settings,
    ) -> Result<Outcome, String>;
}

/// Writes a line to the agent's log, tagged with the plugin's name (the
/// check plugin's version of [`crate::log`]).
pub fn log(level: Level, message: &str) {
    let level = match level {
        Level::Trace => wit_host::Level::Trace,
        Level::Debug => wit_host::Level::Debug,
        Level::Info => wit_host::Level::Info,
        Level::Warn => wit_host::Level::Warn,
        Level::Error => wit_host::Level::Error,
    };
    wit_host::log(level, message);
}

/// The plugin's own settings (`agent.plugins.settings.<name>`), shared by
/// every check that uses it; a check's settings come as an argument.
pub fn plugin_settings() -> Settings {
    wit_host::settings().into_iter().collect()
}

/// Logs from a check plugin with `format!` arguments:
/// `ygg_agent_sdk::check_log!(Warn, "slow answer: {ms} ms")`.
#[macro_export]
macro_rules! check_log {
    ($level:ident, $($arg:tt)+) => {
        $crate::check::log($crate::Level::$level, &::std::format!($($arg)+))
    };
}

/// Makes a [`Check`] the check this crate exports.
///
/// ```ignore
/// ygg_agent_sdk::register_check!(MyCheck);
/// ```
///
/// A panic is logged (message and location) through the agent before the
/// call traps; the trap counts as a critical result.
#[macro_export]
macro_rules! register_check {
    ($check:ty $(,)?) => {
        const _: () = {
            struct Export;

            impl $crate::check::__private::Guest for Export {
                fn check(
                    instance: $crate::check::__private::WitInstance,
                    target: ::std::vec::Vec<$crate::check::__private::WitTarget>,
                    settings: $crate::check::__private::Pairs,
                ) -> ::core::result::Result<
                    $crate::check::__private::WitOutcome,
                    ::std::string::String,
                > {
                    $crate::check::__private::check::<$check>(instance, target, settings)
                }
            }

            $crate::check::bindings::export_check! { Export with_types_in $crate::check::bindings }
        };
    };
}

/// What [`register_check!`](crate::register_check) expands to calls into;
/// not part of the API.
#[doc(hidden)]
pub mod __private {
    use std::sync::Once;

    pub use super::bindings::Guest;
    pub use super::wit_types::{
        CheckOutcome as WitOutcome, Instance as WitInstance, Pairs, Target as WitTarget,
    };
    use super::{Check, Outcome, Target, wit_types};
    use crate::{Level, Settings};

    pub fn check<T: Check>(
        instance: WitInstance,
        targets: Vec<WitTarget>,
        settings: Pairs,
    ) -> Result<WitOutcome, String> {
        install_panic_hook();
        let instance = super::instance_from_wit(instance);
        let targets: Vec<Target> = targets
            .into_iter()
            .map(|t| Target {
                address: t.address,
                resolved: t.resolved,
            })
            .collect();
        let settings = Settings::from_iter(settings);
        Ok(match T::check(&instance, &targets, &settings)? {
            Outcome::Passing(output) => WitOutcome {
                status: wit_types::CheckStatus::Passing,
                output,
            },
            Outcome::Critical(output) => WitOutcome {
                status: wit_types::CheckStatus::Critical,
                output,
            },
        })
    }

    /// As the metadata plugins' hook, through the 0.2.0 log.
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
                super::log(Level::Error, &line);
            }));
        });
    }
}

fn instance_from_wit(i: wit_types::Instance) -> Instance {
    let pairs = |p: Vec<(String, String)>| p.into_iter().collect::<BTreeMap<_, _>>();
    Instance {
        namespace: i.namespace,
        name: i.name,
        version: i.version,
        region: i.region,
        zone: i.zone,
        campus: i.campus,
        metadata: pairs(i.metadata),
        endpoints: i
            .endpoints
            .into_iter()
            .map(|e| Endpoint {
                scheme: e.scheme,
                address: e.address,
                metadata: pairs(e.metadata),
            })
            .collect(),
        key: i.key,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Passes on a setting `up = yes`, fails on a missing target.
    struct Fake;

    impl Check for Fake {
        fn check(
            instance: &Instance,
            targets: &[Target],
            settings: &Settings,
        ) -> Result<Outcome, String> {
            let target = targets.first().ok_or("no target")?;
            let line = format!("{} via {}", instance.name, target.resolved.join(","));
            Ok(match settings.get("up") {
                Some("yes") => Outcome::Passing(line),
                _ => Outcome::Critical(line),
            })
        }
    }

    fn wit_instance(name: &str) -> wit_types::Instance {
        wit_types::Instance {
            namespace: "default".into(),
            name: name.into(),
            version: "1".into(),
            region: String::new(),
            zone: String::new(),
            campus: String::new(),
            metadata: vec![("k".into(), "v".into())],
            endpoints: vec![wit_types::Endpoint {
                scheme: "redis".into(),
                address: "127.0.0.1:6379".into(),
                metadata: Vec::new(),
            }],
            key: "/k".into(),
        }
    }

    #[test]
    fn the_export_passes_the_call_through_and_maps_the_outcome() {
        let target = || {
            vec![wit_types::Target {
                address: "cache:6379".into(),
                resolved: vec!["10.0.0.5:6379".into()],
            }]
        };
        let up = __private::check::<Fake>(
            wit_instance("cache"),
            target(),
            vec![("up".into(), "yes".into())],
        )
        .unwrap();
        assert_eq!(up.status, wit_types::CheckStatus::Passing);
        assert_eq!(up.output, "cache via 10.0.0.5:6379");
        let down = __private::check::<Fake>(wit_instance("cache"), target(), Vec::new()).unwrap();
        assert_eq!(down.status, wit_types::CheckStatus::Critical);
        assert_eq!(
            __private::check::<Fake>(wit_instance("cache"), Vec::new(), Vec::new()).unwrap_err(),
            "no target"
        );
    }

    #[test]
    fn the_instance_arrives_whole() {
        let instance = instance_from_wit(wit_instance("cache"));
        assert_eq!(instance.name, "cache");
        assert_eq!(instance.metadata.get("k").map(String::as_str), Some("v"));
        assert_eq!(instance.endpoints[0].address, "127.0.0.1:6379");
        assert_eq!(instance.key, "/k");
    }

    #[test]
    fn a_target_names_its_host() {
        assert_eq!(Target::new("127.0.0.1:6379").host(), "127.0.0.1");
        assert_eq!(Target::new("[::1]:6379").host(), "::1");
        let named = Target {
            address: "db.internal:5432".into(),
            resolved: vec!["10.0.0.5:5432".into()],
        };
        assert_eq!(named.host(), "db.internal");
    }
}
