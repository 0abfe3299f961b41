//! Bindings for `ygg:agent-plugin@0.2.0` (`guest-sdk/wit/v0.2.0/`) and the
//! host side of its imports. 0.2.0 adds the `check` world (health-check
//! plugins) beside a `plugin` world identical to 0.1.0's.
//!
//! Only the `check` world is bound here. A 0.2.0 metadata plugin exports
//! the same `describe`, `init` and `collect` with the same types as 0.1.0,
//! and the component model checks exports by structure, not by package
//! version: the runner calls it through `v0_1_0::PluginPre`, whose
//! constructor type-checks those exports; the linker gives it this
//! module's `host@0.2.0`. A version that changes the metadata exports gets
//! its own bindings and an enum in the runner.

use std::sync::Arc;

use wasmtime::component::{HasSelf, Linker};

use super::instance::PluginInstance;
use super::state::PluginState;
use super::system::SystemSnapshot;

wasmtime::component::bindgen!({
    path: "../guest-sdk/wit/v0.2.0",
    world: "check",
    exports: { default: async },
});

pub use ygg::agent_plugin::host::Level;
pub use ygg::agent_plugin::types::{CheckStatus, Endpoint};

/// The version string in this module's import names.
pub const VERSION: &str = "0.2.0";

/// Adds the host side of this version's imports (the same `host` interface
/// serves both of its worlds).
pub fn add_to_linker(linker: &mut Linker<PluginState>) -> wasmtime::Result<()> {
    Check::add_to_linker::<_, HasSelf<_>>(linker, |state| state)
}

super::wit_host::host_imports!();

#[cfg(test)]
mod tests {
    /// SHA-256 of `plugin.wit` as 0.2.0 was published.
    const PUBLISHED_SHA256: &str =
        "b1804c1ee82d3365c936a29e7887b2827a78c1f39801ac759ab137a35f1b70cc";

    #[test]
    fn the_published_wit_is_frozen() {
        super::super::wit_host::assert_frozen("0.2.0", PUBLISHED_SHA256, "0.3.0");
    }
}
