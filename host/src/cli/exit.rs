//! Exit codes (SPEC §6): 0 success, 1 runtime failure, 2 usage or
//! config error.

pub const EXIT_RUNTIME: u8 = 1;
pub const EXIT_USAGE: u8 = 2;
