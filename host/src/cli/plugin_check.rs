//! `ygg-agent plugin check FILE`: loads one plugin as the agent would,
//! calls it, and reports its time and memory against the limits.

use std::path::Path;
use std::process::ExitCode;

use super::exit::{EXIT_RUNTIME, EXIT_USAGE};
use crate::config;

pub(super) fn plugin_check(file: &Path, config_path: Option<&Path>, calls: usize) -> ExitCode {
    use crate::plugins::{Limits, PluginInstance};
    use crate::record::{self, Instance};

    let config = match config_path.map(config::load).transpose() {
        Ok(loaded) => loaded.map(|l| l.config),
        Err(error) => {
            eprintln!("error: {error}");
            return ExitCode::from(EXIT_USAGE);
        }
    };
    let name = file
        .file_stem()
        .and_then(|s| s.to_str())
        .unwrap_or_default()
        .to_string();
    let plugins = config.as_ref().and_then(|c| c.agent.plugins.as_ref());
    let settings = crate::plugins::settings_for(plugins, &name);
    let limits = Limits::of(plugins);
    let prefix = config
        .as_ref()
        .map_or(config::DEFAULT_PREFIX, |c| c.registry.prefix.as_str());
    let instance = config
        .as_ref()
        .and_then(|c| c.agent.instances.first().cloned())
        .unwrap_or_else(Instance::seed_example);
    let sample = PluginInstance {
        key: record::registry_key(prefix, &instance),
        instance,
    };
    let label = sample.instance.service_label();
    if let Some(plugins) = plugins {
        let (refused, _) = crate::plugins::check_folders(plugins);
        let in_folder = std::fs::canonicalize(file)
            .ok()
            .zip(std::fs::canonicalize(&plugins.dir).ok())
            .is_some_and(|(file, dir)| file.parent() == Some(dir.as_path()));
        if let Some(refused) = refused.filter(|_| in_folder) {
            eprintln!("error: plugin {name} ({}): {refused}", file.display());
            return ExitCode::from(EXIT_RUNTIME);
        }
    }
    let trusted_keys = plugins
        .map(crate::plugins::trusted_keys)
        .unwrap_or_default();
    match crate::plugins::check_signature(file, trusted_keys) {
        None => {}
        Some(Ok(signature)) => println!(
            "plugin {name}: signature {} verified by a key in agent.plugins.trustedKeys",
            signature.display()
        ),
        Some(Err(problem)) => {
            eprintln!(
                "error: plugin {name} ({}) is untrusted, the agent would refuse it: {problem}",
                file.display()
            );
            return ExitCode::from(EXIT_RUNTIME);
        }
    }
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("error: cannot start the async runtime: {error}");
            return ExitCode::from(EXIT_RUNTIME);
        }
    };
    match runtime.block_on(crate::plugins::check_file(
        file, settings, limits, sample, calls,
    )) {
        Ok(report) => {
            let (info, output) = (&report.info, &report.output);
            println!("plugin {name} ({}): ok", file.display());
            println!(
                "  describe: name {}, version {}, suggested interval {}",
                info.name,
                info.version,
                info.suggested_interval
                    .map_or("none".to_string(), |d| format!("{d:?}"))
            );
            println!(
                "  collect for {label}: {} key{}",
                output.len(),
                if output.len() == 1 { "" } else { "s" }
            );
            for (key, value) in output {
                println!("    {key} = {value}");
            }
            println!(
                "  timings: compile {:?}, load from cache {:?}, instantiate+init {:?}",
                report.compile, report.cache_load, report.instantiate
            );
            if let Some(median) = report.warm_calls.get(report.warm_calls.len() / 2) {
                let p99 = report.warm_calls[report.warm_calls.len() * 99 / 100];
                println!(
                    "  warm collect: median {median:?}, p99 {p99:?}, min {:?} over {} calls",
                    report.warm_calls[0],
                    report.warm_calls.len()
                );
            }
            println!(
                "  memory: linear memory peak {}, memoryLimit {}",
                mib(report.memory_peak),
                mib(limits.memory)
            );
            if crate::plugins::wears_out(report.memory_peak, limits.memory) {
                println!(
                    "  note: over half of memoryLimit, so the agent rebuilds the instance after every round; a memoryLimit of at least {} avoids that",
                    mib(report.memory_peak * 2)
                );
            }
            ExitCode::SUCCESS
        }
        Err(error) => {
            eprintln!("error: plugin {name} ({}) failed: {error}", file.display());
            if error.contains("memory limit exceeded") {
                eprintln!(
                    "hint: give it more with agent.plugins.memoryLimit (and pass that config with --config), or make it use less; a Python or JavaScript plugin starts at 9-13 MiB (guest-sdk/README.md)"
                );
            }
            ExitCode::from(EXIT_RUNTIME)
        }
    }
}

/// Bytes as MiB with one decimal, as the memory limiter words them.
fn mib(bytes: u64) -> String {
    format!("{:.1} MiB", bytes as f64 / f64::from(1 << 20))
}
