//! The integration tests: one binary (one link of wasmtime), one module per
//! area, all sharing `support`. Tests run as threads of this one process;
//! heavy ones take `support::heavy_test()` so they run one at a time.

mod support;

mod big_component;
mod checks;
mod config_errors;
mod faults;
mod fuzz_regressions;
mod netfaults;
mod observer;
mod operations;
mod plugins;
mod registration;
mod reload;
mod supervisor;
