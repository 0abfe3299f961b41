//! The `ygg-agent` binary; everything lives in the library.

fn main() -> std::process::ExitCode {
    ygg_agent::cli::main()
}
