//! The `ygg-agent` binary; everything lives in the library.

fn main() -> std::process::ExitCode {
    if let Some(code) = ygg_agent::plugins::compile_child::main_if_asked() {
        return code;
    }
    ygg_agent::cli::main()
}
