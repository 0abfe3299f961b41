//! Bindings for `ygg:agent-plugin@0.1.0` (`guest-sdk/wit/v0.1.0/`, frozen)
//! and the host side of its imports. One module per supported WIT version,
//! each listed in `engine::WIT_VERSIONS`: a new version gets a sibling
//! module and folder, and this one stays for plugins built against 0.1.0.

use std::sync::Arc;

use wasmtime::component::{HasSelf, Linker};

use super::instance::PluginInstance;
use super::state::PluginState;
use super::system::SystemSnapshot;

wasmtime::component::bindgen!({
    path: "../guest-sdk/wit/v0.1.0",
    world: "plugin",
    exports: { default: async },
});

pub use ygg::agent_plugin::host::Level;
pub use ygg::agent_plugin::types::Endpoint;

/// The version string in this module's import names.
pub const VERSION: &str = "0.1.0";

/// Adds the host side of this version's imports.
pub fn add_to_linker(linker: &mut Linker<PluginState>) -> wasmtime::Result<()> {
    Plugin::add_to_linker::<_, HasSelf<_>>(linker, |state| state)
}

super::wit_host::host_imports!();

#[cfg(test)]
mod tests {
    /// SHA-256 of `plugin.wit` as 0.1.0 was published.
    const PUBLISHED_SHA256: &str =
        "46b4cafdbfee626cbc64d3a1e5f492bcf025f2bf56fa66609bd614b56ba4a500";

    #[test]
    fn the_published_wit_is_frozen() {
        super::super::wit_host::assert_frozen("0.1.0", PUBLISHED_SHA256, "0.2.0");
    }
}
