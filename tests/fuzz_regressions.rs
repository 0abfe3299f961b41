//! Replays inputs the fuzzers found (fuzz/regressions/) through the same
//! functions, so a fixed crash stays fixed.
