//! Config text as raw bytes: `config::parse` never panics, and whatever it
//! accepts satisfies the validator's rules (fuzz/src/checks.rs).
#![no_main]

use libfuzzer_sys::fuzz_target;
use ygg_agent_fuzz::{checks, dump};

fuzz_target!(|data: &[u8]| {
    dump(data);
    checks::replay("config_parse", data).expect("raw input");
});
