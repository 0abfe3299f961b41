//! `parse_duration` and `parse_size` on any text; `a|b` also checks sums.
#![no_main]

use libfuzzer_sys::fuzz_target;
use ygg_agent_fuzz::{checks, dump};

fuzz_target!(|data: &[u8]| {
    dump(data);
    checks::replay("durations", data).expect("raw input");
});
