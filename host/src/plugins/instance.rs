//! An instance as plugins see it: its own module, so the runner and the
//! WIT bindings can name it without importing their parent.

use crate::record::Instance;

/// An instance as plugins see it: as configured, with its registry key.
#[derive(Debug, Clone, PartialEq)]
pub struct PluginInstance {
    pub key: String,
    pub instance: Instance,
}
