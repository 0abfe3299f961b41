//! Support for ygg-agent's fuzz targets: input generators and the
//! invariant checks (shared with the stable regression test).

use std::path::PathBuf;
use std::sync::OnceLock;

pub mod checks;
pub mod generate;

/// When `YGG_FUZZ_DUMP` names a file, writes the input's canonical form
/// there before it is checked. `scripts/fuzz` replays a crash this way to
/// turn it into a regression file that the stable test can read.
pub fn dump(canonical: &[u8]) {
    static TARGET: OnceLock<Option<PathBuf>> = OnceLock::new();
    if let Some(path) = TARGET.get_or_init(|| std::env::var_os("YGG_FUZZ_DUMP").map(PathBuf::from))
    {
        std::fs::write(path, canonical).expect("write YGG_FUZZ_DUMP");
    }
}
