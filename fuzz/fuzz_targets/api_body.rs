//! The local API's request parsing (`api::body`: registration bodies,
//! maintenance reasons, ids) on any bytes.
#![no_main]

use libfuzzer_sys::fuzz_target;
use ygg_agent_fuzz::{checks, dump};

fuzz_target!(|data: &[u8]| {
    dump(data);
    checks::replay("api_body", data).expect("raw input");
});
