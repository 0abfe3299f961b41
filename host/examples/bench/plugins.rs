//! `plugins` and `polyglot`: plugin call and load costs, from `ygg-agent plugin check`.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::{Duration, Instant};

use crate::common::*;
use crate::support::{self, Agent, ConfigFile, Etcd};

/// What `ygg-agent plugin check` measured of one plugin.
pub(crate) struct CheckFigures {
    pub(crate) compile: Duration,
    pub(crate) cache: Duration,
    pub(crate) median: Duration,
    pub(crate) p99: Duration,
    /// The instance's linear memory peak, in MiB.
    pub(crate) memory_mib: f64,
}

/// Runs `ygg-agent plugin check FILE --calls CALLS [--config CONFIG]`.
pub(crate) fn check_figures(file: &Path, config: Option<&Path>, calls: usize) -> CheckFigures {
    let calls = calls.to_string();
    let mut args = vec!["plugin", "check", file.to_str().unwrap(), "--calls", &calls];
    if let Some(config) = config {
        args.extend(["--config", config.to_str().unwrap()]);
    }
    let (code, stdout, stderr) = support::run_cli(&args);
    assert_eq!(code, 0, "{stderr}");
    let text_of = |prefix: &str, name: &str| -> String {
        let line = stdout
            .lines()
            .find(|l| l.trim_start().starts_with(prefix))
            .expect(prefix);
        line.split(name)
            .nth(1)
            .unwrap()
            .trim_start()
            .split([',', ' '])
            .next()
            .unwrap()
            .to_string()
    };
    let field = |prefix: &str, name: &str| parse_debug_duration(&text_of(prefix, name));
    CheckFigures {
        compile: field("timings:", "compile"),
        cache: field("timings:", "load from cache"),
        median: field("warm collect:", "median"),
        p99: field("warm collect:", "p99"),
        memory_mib: text_of("memory:", "linear memory peak")
            .parse()
            .unwrap_or(0.0),
    }
}

pub(crate) fn plugin_costs(rows: &mut Vec<Row>) {
    let echo = support::built_plugins().join("echo.wasm");
    let CheckFigures {
        compile,
        cache,
        median,
        p99,
        ..
    } = check_figures(&echo, None, 20_001);
    // The same work natively: build the output map the echo plugin returns.
    let native = {
        let start = Instant::now();
        let mut sink = 0;
        for _ in 0..20_000 {
            let mut out = BTreeMap::new();
            out.insert(
                "echo_instance".to_string(),
                std::hint::black_box("example-registry-server").to_string(),
            );
            sink += out.len();
        }
        std::hint::black_box(sink);
        start.elapsed() / 20_000
    };
    rows.push(
        Row::new(
            "plugin warm collect (echo), per call, 20,000 calls",
            format!("median {median:.2?}, p99 {p99:.2?}"),
            format!("the same output built natively {native:.2?}"),
        )
        .budget(
            "<= 10 µs host overhead",
            median.saturating_sub(native) <= Duration::from_micros(10),
        ),
    );
    let ratio = cache.as_secs_f64() / compile.as_secs_f64();
    rows.push(
        Row::new(
            "plugin load from the compile cache (echo)",
            format!("{cache:.2?}"),
            format!("cold compile {compile:.1?}"),
        )
        .budget(
            format!("<= 1/10 of cold (is 1/{:.0})", 1.0 / ratio),
            ratio <= 0.1,
        ),
    );
}

/// Python and JavaScript plugins beside the Rust echo plugin: file size,
/// cold compile, load from the compile cache, warm call and linear memory
/// (from `plugin check`), and the RSS one such plugin adds to a running
/// agent, after its cold compile and after a restart that loads it from
/// the cache.
pub(crate) async fn polyglot_costs(etcd: &Etcd, rows: &mut Vec<Row>) {
    let polyglot = support::built_polyglot_plugins();
    let plugins = [
        ("Rust", "echo", support::built_plugins().join("echo.wasm")),
        (
            "Python",
            "python-example",
            polyglot.join("python-example.wasm"),
        ),
        ("JavaScript", "js-example", polyglot.join("js-example.wasm")),
    ];
    let settings = "    settings:\n      js-example: {owner: bench}\n      echo: {value: x}\n";
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir(dir.path().join("plugins")).unwrap();
    let config_path = dir.path().join("agent.yaml");
    std::fs::write(&config_path, format!("agent:\n  plugins:\n{settings}")).unwrap();

    let mut figures = Vec::new();
    for (_, name, file) in &plugins {
        eprintln!("bench: plugin check {name}");
        figures.push(check_figures(file, Some(&config_path), 2_001));
    }

    // RSS: an agent with no plugin beside one agent per plugin, all at once.
    let mut bare = ConfigFile::new(etcd.endpoints());
    bare.prefix = "/polyglot/bare".into();
    let bare_agent = Agent::start(&bare);
    let mut agents = Vec::new();
    for (_, name, file) in &plugins {
        let mut config = bare.clone();
        config.prefix = format!("/polyglot/{name}");
        config.agent_extra =
            format!("  plugins:\n    dir: plugins\n    cacheDir: cache\n{settings}");
        let mut agent = Agent::prepare(&config);
        std::fs::copy(file, agent.plugins_dir().join(format!("{name}.wasm"))).unwrap();
        agent.spawn(&[]);
        agents.push(agent);
    }
    let settle = Duration::from_secs(5);
    let wait_loaded = async |agents: &[Agent], count: usize| {
        for agent in agents {
            agent
                .wait_for_log_count("plugin loaded", count, Duration::from_secs(300))
                .await;
        }
        tokio::time::sleep(settle).await;
    };
    wait_loaded(&agents, 1).await;
    let bare_rss = usage(bare_agent.pid()).0;
    let after_compile: Vec<f64> = agents.iter().map(|a| usage(a.pid()).0).collect();
    // Restarted: the plugin comes from the compile cache.
    for agent in &mut agents {
        agent.signal(libc::SIGTERM);
        agent.wait_exit(Duration::from_secs(30));
        agent.spawn(&[]);
    }
    wait_loaded(&agents, 2).await;
    let from_cache: Vec<f64> = agents.iter().map(|a| usage(a.pid()).0).collect();

    let rust = &figures[0];
    for (i, (language, name, file)) in plugins.iter().enumerate().skip(1) {
        let f = &figures[i];
        let size = std::fs::metadata(file).unwrap().len() as f64 / 1e6;
        let ratio = f.cache.as_secs_f64() / f.compile.as_secs_f64();
        rows.push(
            Row::new(
                format!("{language} plugin ({name}, {size:.1} MB): load from the compile cache"),
                format!("{:.2?}", f.cache),
                format!(
                    "its cold compile {:.1?}; Rust echo: cache {:.2?}, cold {:.1?}",
                    f.compile, rust.cache, rust.compile
                ),
            )
            .budget(
                format!("<= 1/10 of cold (is 1/{:.0})", 1.0 / ratio),
                ratio <= 0.1,
            ),
        );
        rows.push(Row::new(
            format!(
                "{language} plugin ({name}): warm collect per call, 2,000 calls; linear memory"
            ),
            format!(
                "median {:.2?}, p99 {:.2?}; {:.1} MiB",
                f.median, f.p99, f.memory_mib
            ),
            format!(
                "Rust echo median {:.2?}, p99 {:.2?}; {:.1} MiB",
                rust.median, rust.p99, rust.memory_mib
            ),
        ));
        rows.push(Row::new(
            format!("{language} plugin ({name}): RSS added to the agent, loaded from the cache (after its cold compile)"),
            format!(
                "+{:.1} MiB (+{:.1} MiB)",
                from_cache[i] - bare_rss,
                after_compile[i] - bare_rss
            ),
            format!(
                "agent with no plugin {bare_rss:.1} MiB; Rust echo +{:.1} MiB (+{:.1} MiB)",
                from_cache[0] - bare_rss,
                after_compile[0] - bare_rss
            ),
        ));
    }
}

/// Parses what `{:?}` prints for a Duration: `12.3µs`, `4.5ms`, `1.2s`.
pub(crate) fn parse_debug_duration(text: &str) -> Duration {
    let split = text
        .find(|c: char| c.is_alphabetic() || c == 'µ')
        .unwrap_or(text.len());
    let (number, unit) = text.split_at(split);
    let value: f64 = number.parse().unwrap_or(0.0);
    let seconds = match unit {
        "ns" => value / 1e9,
        "µs" | "us" => value / 1e6,
        "ms" => value / 1e3,
        _ => value,
    };
    Duration::from_secs_f64(seconds)
}
