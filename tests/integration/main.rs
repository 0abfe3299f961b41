//! The integration tests: one binary (one link of wasmtime), one module per
//! area, all sharing `support`. Tests run as threads of this one process;
//! heavy ones take `support::heavy_test()` so they run one at a time.

mod support;

mod check_plugins;
mod checks;
mod config_errors;
mod faults;
mod fuzz_regressions;
mod hostile;
mod lifecycle;
mod local_api;
mod local_control;
mod netfaults;
mod operations;
mod operator;
mod plugin_memory;
mod plugin_trust;
mod plugins;
mod polyglot;
mod registration;
mod reload;
mod shutdown;
mod status_page;
mod straggler;
mod supervisor;
mod upgrade;
