//! `record_value`, `identity_json`, `instance_key` and `registry_key` on
//! arbitrary instances: valid JSON holding exactly the input strings.
#![no_main]

use arbitrary::Unstructured;
use libfuzzer_sys::fuzz_target;
use ygg_agent_fuzz::{checks, dump, generate};

fuzz_target!(|data: &[u8]| {
    let mut u = Unstructured::new(data);
    let Ok((prefix, instance, merged)) = generate::record_case(&mut u) else {
        return;
    };
    let canonical = checks::record_case_to_json(&prefix, &instance, &merged);
    dump(canonical.to_string().as_bytes());
    checks::check_record(&prefix, &instance, &merged);
});
