//! Config documents built from the real key names, so inputs reach the
//! validation of every field instead of stopping at YAML syntax errors.
#![no_main]

use arbitrary::Unstructured;
use libfuzzer_sys::fuzz_target;
use ygg_agent_fuzz::{checks, dump, generate};

fuzz_target!(|data: &[u8]| {
    let mut u = Unstructured::new(data);
    let Ok((text, secret)) = generate::config_doc(&mut u) else {
        return;
    };
    dump(text.as_bytes());
    checks::check_config_text(&text, secret.as_deref());
});
