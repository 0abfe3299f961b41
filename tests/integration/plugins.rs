//! Plugins against a real etcd: metadata reaches etcd and follows the
//! plugins; the folder is live; hostile plugins are isolated while the
//! instances stay registered.

use std::time::Duration;

use crate::support::*;

#[tokio::test]
async fn example_plugins_put_the_seeds_metadata_in_etcd_and_keep_it_fresh() {
    let etcd = Etcd::start().await;
    let mut config = ConfigFile::new(etcd.endpoints());
    config.agent_extra = plugins_section("      heartbeat: {format: rfc3339}\n");
    let mut agent = Agent::prepare(&config);
    for name in ["heartbeat", "load", "hostinfo"] {
        install_plugin(&agent.plugins_dir(), name, name);
    }
    agent.spawn(&[]);
    // Registration waits at most 2 s for the loads; a cold compile in its
    // child process can take longer on a busy machine, and then the
    // metadata follows in a later write.
    let first = wait_metadata(&etcd, "every example plugin's metadata", PATIENCE, |m| {
        ["heartbeat", "load", "hostname"]
            .iter()
            .all(|k| m.contains_key(*k))
    })
    .await;
    // The configured keys, plus every example plugin's keys.
    for key in [
        "env",
        "pod",
        "started",
        "heartbeat",
        "load",
        "hostname",
        "cpu_count",
        "memory_total_bytes",
    ] {
        assert!(first.contains_key(key), "metadata lacks {key}: {first:?}");
    }
    assert_eq!(first["env"], "dev");
    assert!(
        first["load"]
            .split_once('.')
            .is_some_and(|(_, d)| d.len() == 2),
        "{}",
        first["load"]
    );
    assert!(
        first["heartbeat"].ends_with('Z') && first["heartbeat"].len() == 20,
        "{}",
        first["heartbeat"]
    );

    // The heartbeat moves on; the same key is rewritten, never duplicated.
    let later = wait_metadata(&etcd, "a newer heartbeat", Duration::from_secs(10), |m| {
        m.get("heartbeat") > first.get("heartbeat")
    })
    .await;
    assert_eq!(
        later["started"], first["started"],
        "started is when the plugin started"
    );
    let mut client = etcd.client().await;
    assert_eq!(entries(&mut client, PREFIX).await.len(), 1);
    agent.wait_for_log("instance re-registered", PATIENCE).await;
    // Registration waits for the plugins to load (so the first record
    // carries their metadata), but at most 2 s: on a machine so busy that
    // compiling them took longer, it went ahead when the wait ran out.
    let log = agent.log();
    let time_of = |needle: &str| {
        log.lines()
            .find(|l| l.contains(needle))
            .and_then(log_time)
            .unwrap_or_else(|| panic!("no {needle:?} line:\n{log}"))
    };
    let began = log.lines().find_map(log_time).unwrap();
    let registered = time_of("instance registered successfully");
    if time_of("plugin loaded") > registered {
        assert!(
            registered - began >= 1.9,
            "registered {:.3} s after start, before the plugins loaded or the wait ran out:\n{log}",
            registered - began
        );
    }
}

#[tokio::test]
async fn the_plugins_folder_is_live() {
    let etcd = Etcd::start().await;
    let mut config = ConfigFile::new(etcd.endpoints());
    config.agent_extra = plugins_section("      echo: {value: one}\n");
    let agent = Agent::start(&config);
    let dir = agent.plugins_dir();
    wait_metadata(&etcd, "registration", PATIENCE, |m| m.contains_key("env")).await;

    // Dropped in: loaded and its output appears, without a restart.
    install_plugin(&dir, "echo", "echo");
    let (_, took) = {
        let start = std::time::Instant::now();
        wait_metadata(&etcd, "echo's output", Duration::from_secs(10), |m| {
            m.get("value").map(String::as_str) == Some("one")
        })
        .await;
        ((), start.elapsed())
    };
    println!("dropped-in plugin's metadata in etcd after {took:?}");

    // Replaced by other bytes under the same name: reloaded; the old keys go.
    install_plugin(&dir, "load", "echo");
    let replaced = wait_metadata(
        &etcd,
        "replacement's output",
        Duration::from_secs(10),
        |m| m.contains_key("load"),
    )
    .await;
    assert!(
        !replaced.contains_key("value") && !replaced.contains_key("echo_instance"),
        "{replaced:?}"
    );
    agent.wait_for_log("plugin reloaded", PATIENCE).await;

    // Deleted: unloaded, and its keys removed from the record.
    std::fs::remove_file(dir.join("echo.wasm")).unwrap();
    let gone = wait_metadata(&etcd, "keys removed", Duration::from_secs(10), |m| {
        !m.contains_key("load")
    })
    .await;
    assert_eq!(gone.get("env").map(String::as_str), Some("dev"));
    agent.wait_for_log("plugin unloaded", PATIENCE).await;
}

#[tokio::test]
async fn a_half_written_file_is_retried_when_it_completes() {
    let etcd = Etcd::start().await;
    let mut config = ConfigFile::new(etcd.endpoints());
    config.agent_extra = plugins_section("      echo: {value: complete}\n");
    let agent = Agent::start(&config);
    wait_metadata(&etcd, "registration", PATIENCE, |m| m.contains_key("env")).await;
    let bytes = std::fs::read(plugin_file("echo")).unwrap();
    let target = agent.plugins_dir().join("echo.wasm");
    std::fs::write(&target, &bytes[..bytes.len() / 2]).unwrap();
    agent.wait_for_log("plugin not loaded", PATIENCE).await;
    std::fs::write(&target, &bytes).unwrap();
    wait_metadata(
        &etcd,
        "echo after the file completed",
        Duration::from_secs(10),
        |m| m.get("value").map(String::as_str) == Some("complete"),
    )
    .await;
}

#[tokio::test]
async fn hostile_plugins_are_isolated_and_the_instance_stays_registered() {
    let etcd = Etcd::start().await;
    let mut config = ConfigFile::new(etcd.endpoints());
    config.agent_extra = plugins_section("      echo: {value: fine}\n");
    let mut agent = Agent::prepare(&config);
    let dir = agent.plugins_dir();
    install_plugin(&dir, "echo", "echo");
    for name in [
        "trap_init",
        "trap_collect",
        "spin",
        "memory_bomb",
        "big_output",
        "bad_keys",
        "sandbox_probe",
        "sleepy",
        "wrong_version",
    ] {
        install_plugin(&dir, name, name);
    }
    std::fs::write(dir.join("not_wasm.wasm"), "this is not webassembly\n").unwrap();
    // The smallest valid core module: magic and version 1.
    std::fs::write(dir.join("core_module.wasm"), b"\0asm\x01\0\0\0").unwrap();
    agent.spawn(&[]);

    // The good plugin's output lands; the sandbox probe reports every door shut.
    let metadata = wait_metadata(&etcd, "good plugin output", PATIENCE, |m| {
        m.get("value").map(String::as_str) == Some("fine") && m.contains_key("fs")
    })
    .await;
    for key in ["fs", "dir", "env_count", "net"] {
        assert_eq!(metadata[key], "denied", "sandbox probe {key}: {metadata:?}");
    }
    // The probe's `env` key loses to the configured `env` (config wins).
    assert_eq!(metadata["env"], "dev");
    // Each failure is logged on a line naming the plugin. A spinning plugin
    // is stopped by its CPU budget or its wall-clock timeout, whichever
    // fires first (both are `timeout`).
    let expectations: &[(&str, &[&str])] = &[
        ("not_wasm", &["not a WebAssembly file"]),
        (
            "core_module",
            &["a core WebAssembly module, not a component"],
        ),
        (
            "wrong_version",
            &[
                "built for ygg:agent-plugin@0.3.0; this agent supports ygg:agent-plugin@0.1.0 and ygg:agent-plugin@0.2.0",
            ],
        ),
        ("trap_init", &["boom in init"]),
        ("trap_collect", &["boom in collect"]),
        (
            "spin",
            &["CPU budget exhausted", "ran past the 500ms timeout"],
        ),
        ("memory_bomb", &["memory limit exceeded"]),
        ("big_output", &["(at most 512)"]),
        ("bad_keys", &["may only use A-Z a-z 0-9"]),
        ("sleepy", &["ran past the 500ms timeout"]),
    ];
    for (plugin, lines) in expectations {
        let named = |log: &str| {
            log.lines().any(|l| {
                l.contains(&format!("plugin={plugin}")) && lines.iter().any(|line| l.contains(line))
            })
        };
        let (_, _) = wait_for(
            PATIENCE,
            &format!("a log line naming {plugin} with one of {lines:?}"),
            || {
                let log = agent.log();
                async move { named(&log).then_some(()) }
            },
        )
        .await;
    }
    // Failed plugins are rebuilt (with backoff) and fail again; the
    // instance never leaves etcd and keeps the good output throughout.
    agent
        .wait_for_log_count("boom in collect", 2, PATIENCE)
        .await;
    let mut client = etcd.client().await;
    let now = entries(&mut client, PREFIX).await;
    assert_eq!(now.len(), 1);
    assert_eq!(metadata_of(&now, SEED_KEY).unwrap()["value"], "fine");
    // Stop is still graceful with plugins stuck in calls.
    agent.signal(libc::SIGTERM);
    let (status, _) = agent.wait_exit(Duration::from_secs(10));
    assert_eq!(status.code(), Some(0));
    assert!(entries(&mut client, PREFIX).await.is_empty());
}

#[tokio::test]
async fn a_failing_plugin_keeps_its_last_good_output() {
    let etcd = Etcd::start().await;
    let mut config = ConfigFile::new(etcd.endpoints());
    config.agent_extra = plugins_section("      flaky: {value: good}\n");
    let mut agent = Agent::prepare(&config);
    install_plugin(&agent.plugins_dir(), "echo", "flaky");
    agent.spawn(&[]);
    wait_metadata(&etcd, "good output", PATIENCE, |m| {
        m.get("value").map(String::as_str) == Some("good")
    })
    .await;
    // A new version that loads fine but traps on every collect.
    install_plugin(&agent.plugins_dir(), "trap_collect", "flaky");
    agent.wait_for_log("boom in collect", PATIENCE).await;
    agent
        .wait_for_log_count("boom in collect", 2, PATIENCE)
        .await;
    // The failure line names the instance as registry lines do.
    let log = agent.log();
    let line = log
        .lines()
        .find(|l| l.contains("plugin failed; keeping its last good output"))
        .unwrap();
    assert!(
        line.contains(&format!("key={SEED_KEY}"))
            && line.contains("service=default/example-registry-server/1.0.0"),
        "{line}"
    );
    let mut client = etcd.client().await;
    let kept = metadata_of(&entries(&mut client, PREFIX).await, SEED_KEY).unwrap();
    assert_eq!(
        kept.get("value").map(String::as_str),
        Some("good"),
        "last good output dropped: {kept:?}"
    );
}

#[tokio::test]
async fn a_plugin_that_grows_memory_across_calls_is_recycled_before_the_limit() {
    let etcd = Etcd::start().await;
    let mut config = ConfigFile::new(etcd.endpoints());
    // slow_leak keeps 1 MiB more on every call.
    config.agent_extra =
        plugins_section("      none: {}\n").replace("interval: 1s", "interval: 200ms");
    let mut agent = Agent::prepare(&config);
    install_plugin(&agent.plugins_dir(), "slow_leak", "slow_leak");
    agent.spawn(&[]);
    wait_metadata(&etcd, "leak of 4 MiB", PATIENCE, |m| {
        m.get("leaked_mib")
            .and_then(|v| v.parse::<u32>().ok())
            .is_some_and(|v| v >= 4)
    })
    .await;
    // Rebuilt fresh before it reaches the 16 MiB limit: the count starts over.
    wait_metadata(&etcd, "a fresh instance", Duration::from_secs(20), |m| {
        m.get("leaked_mib").map(String::as_str) == Some("1")
    })
    .await;
    assert!(
        !agent.log().contains("memory limit exceeded"),
        "{}",
        agent.log()
    );
}

#[tokio::test]
async fn a_plugin_that_changes_every_call_is_followed_without_trouble() {
    let etcd = Etcd::start().await;
    let mut config = ConfigFile::new(etcd.endpoints());
    config.agent_extra =
        plugins_section("      none: {}\n").replace("interval: 1s", "interval: 100ms");
    let mut agent = Agent::prepare(&config);
    install_plugin(&agent.plugins_dir(), "flappy", "flappy");
    agent.spawn(&[]);
    let first = wait_metadata(&etcd, "flap", PATIENCE, |m| m.contains_key("flap")).await;
    let n: u64 = first["flap"].parse().unwrap();
    wait_metadata(&etcd, "flap moved on by 10", Duration::from_secs(10), |m| {
        m.get("flap")
            .and_then(|v| v.parse::<u64>().ok())
            .is_some_and(|v| v >= n + 10)
    })
    .await;
    let mut client = etcd.client().await;
    assert_eq!(entries(&mut client, PREFIX).await.len(), 1);
}

#[tokio::test]
async fn guest_output_is_logged_with_the_plugin_name_and_compiled_code_is_cached() {
    let etcd = Etcd::start().await;
    let mut config = ConfigFile::new(etcd.endpoints());
    config.agent_extra = plugins_section("      echo: {value: x}\n");
    let mut agent = Agent::prepare(&config);
    install_plugin(&agent.plugins_dir(), "echo", "echo");
    agent.spawn(&[]);
    agent
        .wait_for_log("echo plugin says hello on stderr", PATIENCE)
        .await;
    let log = agent.log();
    for needle in [
        "echo plugin says hello on stderr",
        "echo plugin says hello on stdout",
        "echo initialised",
    ] {
        assert!(
            log.lines()
                .any(|l| l.contains(needle) && l.contains("plugin=") && l.contains("echo")),
            "{needle:?} not logged with the plugin name:\n{log}"
        );
    }
    // The compiled plugin is in the agent's cache folder, not the plugins folder.
    let cache = agent.dir.path().join("cache");
    let cached: Vec<_> = std::fs::read_dir(&cache).unwrap().flatten().collect();
    assert_eq!(cached.len(), 1, "{cached:?}");
    // A precompiled file dropped into the plugins folder is never loaded.
    std::fs::copy(cached[0].path(), agent.plugins_dir().join("sneaky.wasm")).unwrap();
    agent.wait_for_log("not a WebAssembly file", PATIENCE).await;
    assert!(
        agent
            .log()
            .lines()
            .any(|l| l.contains("sneaky") && l.contains("not a WebAssembly file"))
    );
}

#[tokio::test]
async fn thousands_of_junk_files_do_not_hurt() {
    let etcd = Etcd::start().await;
    let mut config = ConfigFile::new(etcd.endpoints());
    config.agent_extra = plugins_section("      echo: {value: survived}\n");
    let mut agent = Agent::prepare(&config);
    let dir = agent.plugins_dir();
    for i in 0..3000 {
        let name = match i % 3 {
            0 => format!("junk{i}.wasm"),
            1 => format!("junk{i}.txt"),
            _ => format!("bad name {i}.wasm"),
        };
        std::fs::write(dir.join(name), format!("junk {i}")).unwrap();
    }
    install_plugin(&dir, "echo", "echo");
    agent.spawn(&[]);
    wait_metadata(&etcd, "good plugin among junk", PATIENCE, |m| {
        m.get("value").map(String::as_str) == Some("survived")
    })
    .await;
}

#[test]
fn plugin_check_runs_a_plugin_once() {
    let (code, stdout, stderr) =
        run_cli(&["plugin", "check", plugin_file("load").to_str().unwrap()]);
    assert_eq!(code, 0, "{stdout}{stderr}");
    assert!(
        stdout.contains("describe: name load, version 0.1.0"),
        "{stdout}"
    );
    assert!(stdout.contains("load = "), "{stdout}");

    // Every door of the sandbox is shut.
    let (code, stdout, stderr) = run_cli(&[
        "plugin",
        "check",
        plugin_file("sandbox_probe").to_str().unwrap(),
    ]);
    assert_eq!(code, 0, "{stderr}");
    for key in ["fs", "dir", "env", "env_count", "net"] {
        assert!(
            stdout.contains(&format!("{key} = denied")),
            "{key} not denied:\n{stdout}"
        );
    }

    let (code, _, stderr) = run_cli(&[
        "plugin",
        "check",
        plugin_file("trap_init").to_str().unwrap(),
    ]);
    assert_eq!(code, 1);
    assert!(
        stderr.contains("boom in init") && stderr.contains("failed: init trapped"),
        "{stderr}"
    );

    let (code, _, stderr) = run_cli(&[
        "plugin",
        "check",
        plugin_file("wrong_version").to_str().unwrap(),
    ]);
    assert_eq!(code, 1);
    assert!(
        stderr.contains("built for ygg:agent-plugin@0.3.0"),
        "{stderr}"
    );

    // Settings and the sample instance come from --config.
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir(dir.path().join("plugins")).unwrap();
    let config = dir.path().join("agent.yaml");
    std::fs::write(
        &config,
        "agent:\n  instances:\n    - name: from-config\n      endpoints: [{scheme: http, address: 'h:1'}]\n  plugins:\n    settings:\n      echo: {greeting: hi}\n",
    )
    .unwrap();
    let (code, stdout, stderr) = run_cli(&[
        "plugin",
        "check",
        plugin_file("echo").to_str().unwrap(),
        "--config",
        config.to_str().unwrap(),
    ]);
    assert_eq!(code, 0, "{stderr}");
    assert!(
        stdout.contains("greeting = hi") && stdout.contains("echo_instance = from-config"),
        "{stdout}"
    );
}

#[tokio::test]
async fn an_unreadable_plugins_folder_unloads_nothing() {
    let etcd = Etcd::start().await;
    let mut config = ConfigFile::new(etcd.endpoints());
    config.agent_extra = plugins_section("      echo: {value: kept}\n");
    let mut agent = Agent::prepare(&config);
    install_plugin(&agent.plugins_dir(), "echo", "echo");
    agent.spawn(&[]);
    wait_metadata(&etcd, "echo output", PATIENCE, |m| {
        m.get("value").map(String::as_str) == Some("kept")
    })
    .await;
    // The folder is swapped for a file: reading it fails.
    let dir = agent.plugins_dir();
    std::fs::rename(&dir, agent.dir.path().join("plugins.moved")).unwrap();
    std::fs::write(&dir, "not a folder").unwrap();
    let watch = KeyWatch::start(&etcd, PREFIX).await;
    agent.signal(libc::SIGHUP);
    agent
        .wait_for_log("cannot read the plugins folder", PATIENCE)
        .await;
    watch
        .assert_unchanged_for(Duration::from_secs(2), "plugins folder unreadable")
        .await;
    assert!(!agent.log().contains("plugin unloaded"), "{}", agent.log());
    let mut client = etcd.client().await;
    let now = metadata_of(&entries(&mut client, PREFIX).await, SEED_KEY).unwrap();
    assert_eq!(now.get("value").map(String::as_str), Some("kept"));
}

#[tokio::test]
async fn min_rewrite_interval_spaces_out_plugin_only_rewrites_and_writes_the_newest() {
    use etcd_client::{EventType, WatchOptions};

    let etcd = Etcd::start().await;
    let mut config = ConfigFile::new(etcd.endpoints());
    // A heartbeat in whole seconds changes on every 1 s round; at most one
    // rewrite per 3 s may reach etcd.
    config.agent_extra = plugins_section("      heartbeat: {format: unix}\n").replace(
        "    interval: 1s\n",
        "    interval: 1s\n    minRewriteInterval: 3s\n",
    );
    let mut agent = Agent::prepare(&config);
    install_plugin(&agent.plugins_dir(), "heartbeat", "heartbeat");
    agent.spawn(&[]);
    wait_metadata(&etcd, "the first heartbeat", PATIENCE, |m| {
        m.contains_key("heartbeat")
    })
    .await;

    let mut client = etcd.client().await;
    let mut stream = client
        .watch(SEED_KEY, Some(WatchOptions::new()))
        .await
        .unwrap();
    let window = Duration::from_secs(10);
    let end = tokio::time::Instant::now() + window;
    let mut puts: Vec<(tokio::time::Instant, u64)> = Vec::new();
    while let Ok(Ok(Some(response))) = tokio::time::timeout_at(end, stream.message()).await {
        for event in response.events() {
            if event.event_type() == EventType::Put {
                let value: serde_json::Value =
                    serde_json::from_str(event.kv().unwrap().value_str().unwrap()).unwrap();
                let beat = value["metadata"]["heartbeat"]
                    .as_str()
                    .unwrap()
                    .parse()
                    .unwrap();
                puts.push((tokio::time::Instant::now(), beat));
            }
        }
    }
    // Unthrottled this would be about ten rewrites; throttled, at most one
    // per 3 s (plus one at each edge of the window), and they do happen.
    assert!(
        (2..=5).contains(&puts.len()),
        "{} rewrites in {window:?}: {puts:?}",
        puts.len()
    );
    for pair in puts.windows(2) {
        let gap = pair[1].0 - pair[0].0;
        // Seen through a watch on a busy machine: half the interval at least.
        assert!(
            gap >= Duration::from_millis(1500),
            "rewrites {gap:?} apart: {puts:?}"
        );
        // What goes out when due is a newer heartbeat (the newest one, as
        // the unit tests check).
        assert!(pair[1].1 > pair[0].1, "{puts:?}");
    }
    agent.signal(libc::SIGTERM);
    agent.wait_exit(PATIENCE);
}
