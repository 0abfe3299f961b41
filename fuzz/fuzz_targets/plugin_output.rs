//! `plugins::output::validate` on arbitrary key/value pairs near the rules'
//! edges: accepts exactly the valid outputs, with a short error otherwise.
#![no_main]

use arbitrary::Unstructured;
use libfuzzer_sys::fuzz_target;
use ygg_agent_fuzz::{checks, dump, generate};

fuzz_target!(|data: &[u8]| {
    let mut u = Unstructured::new(data);
    let Ok(pairs) = generate::output_pairs(&mut u) else {
        return;
    };
    dump(&serde_json::to_vec(&pairs).expect("pairs as JSON"));
    checks::check_plugin_output(pairs);
});
