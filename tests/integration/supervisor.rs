//! The supervisor never waits: while a plugin takes seconds to compile, or
//! its `init` spins to its timeout, signals, config edits and the systemd
//! watchdog are handled at once. And a config file or plugins folder reached
//! through symlinks reloads whichever link or file changes.

use std::os::unix::fs::symlink;
use std::path::Path;
use std::time::Duration;

use crate::support::big_component;
use crate::support::*;

/// A copy of the echo test plugin that takes seconds to compile (about
/// 4 s on the reference machine; more on a busy one).
fn install_slow_plugin(dir: &Path, name: &str) {
    install_slow(dir, "echo", name);
}

/// Test plugin `plugin`, padded to take seconds to compile, as `name`.
fn install_slow(dir: &Path, plugin: &str, name: &str) {
    let base = std::fs::read(plugin_file(plugin)).unwrap();
    let big = big_component::padded_component(&base, 4000, 200);
    let tmp = dir.join(format!(".{name}.wasm.tmp"));
    std::fs::write(&tmp, big).unwrap();
    std::fs::rename(&tmp, dir.join(format!("{name}.wasm"))).unwrap();
}

/// How long a wait here may take: some wait for a plugin that compiles for
/// seconds at low priority, which a machine busy with other tests (or a
/// build) can stretch many times over.
const COMPILE_PATIENCE: Duration = Duration::from_secs(180);

/// The seed instance's `metadata` in etcd, once it satisfies `check`.
async fn wait_metadata(
    etcd: &Etcd,
    what: &str,
    check: impl Fn(&serde_json::Map<String, serde_json::Value>) -> bool,
) {
    let endpoints = etcd.endpoints();
    let check = &check;
    wait_for(COMPILE_PATIENCE, what, || {
        let endpoints = endpoints.clone();
        async move {
            let entries = try_entries(&endpoints, PREFIX).await?;
            let value: serde_json::Value =
                serde_json::from_str(&entries.get(SEED_KEY)?.value).ok()?;
            value["metadata"]
                .as_object()
                .filter(|m| check(m))
                .map(|_| ())
        }
    })
    .await;
}

fn env_is(value: &'static str) -> impl Fn(&serde_json::Map<String, serde_json::Value>) -> bool {
    move |m| m.get("env").and_then(|v| v.as_str()) == Some(value)
}

#[tokio::test]
async fn signals_edits_and_the_watchdog_do_not_wait_for_a_slow_compile() {
    let etcd = Etcd::start().await;
    let mut config = ConfigFile::new(etcd.endpoints());
    config.agent_extra = plugins_section("      slow: {value: compiled}\n");
    let mut agent = Agent::prepare(&config);
    let mut systemd = FakeSystemd::bind(agent.dir.path());
    agent.spawn_with_env(&[], &systemd.env());
    wait_metadata(&etcd, "the seed registered", env_is("dev")).await;

    install_slow_plugin(&agent.plugins_dir(), "slow");
    agent.wait_for_log("loading plugin", PATIENCE).await;
    systemd.pings();

    // A config edit applies while the plugin compiles.
    config.instances = SEED_INSTANCE.replace("env: dev", "env: staging");
    agent.rewrite_config(&config);
    wait_metadata(&etcd, "the edit in etcd", env_is("staging")).await;
    assert!(
        !agent.log().contains("plugin loaded"),
        "the edit waited for the compile:\n{}",
        agent.log()
    );

    // So does SIGHUP (a forced re-read of the same file).
    agent.signal(libc::SIGHUP);
    agent
        .wait_for_log("config reloaded: no change", PATIENCE)
        .await;
    assert!(!agent.log().contains("plugin loaded"));

    // The watchdog keeps pinging (every 200 ms) while the plugin compiles.
    let mut pings = systemd.pings();
    let until = std::time::Instant::now() + PATIENCE;
    while pings == 0 && std::time::Instant::now() < until {
        tokio::time::sleep(Duration::from_millis(20)).await;
        pings += systemd.pings();
    }
    assert!(pings >= 1, "no watchdog ping");
    assert!(
        !agent.log().contains("plugin loaded"),
        "the compile ended before a watchdog ping came:\n{}",
        agent.log()
    );

    // SIGTERM: deregistered and gone before the compile would have ended.
    assert_sigterm_stops_mid_compile(&mut agent, &etcd, PREFIX, "a cold compile").await;
}

#[tokio::test]
async fn registration_does_not_wait_for_a_slow_compile_at_start() {
    let etcd = Etcd::start().await;
    let mut config = ConfigFile::new(etcd.endpoints());
    config.agent_extra = plugins_section("      slow: {value: compiled}\n");
    let mut agent = Agent::prepare(&config);
    install_slow_plugin(&agent.plugins_dir(), "slow");
    agent.spawn(&[]);
    wait_metadata(&etcd, "the seed registered", |_| true).await;
    assert!(
        !agent.log().contains("plugin loaded"),
        "registration waited for the compile:\n{}",
        agent.log()
    );
    // The plugin's metadata follows once it has compiled.
    wait_metadata(&etcd, "the slow plugin's metadata", |m| {
        m.get("value").and_then(|v| v.as_str()) == Some("compiled")
    })
    .await;
}

/// The seed record's `flap` (the flappy plugin's call count), if any.
async fn flap(etcd: &Etcd) -> Option<u64> {
    let entries = try_entries(&etcd.endpoints(), PREFIX).await?;
    let value: serde_json::Value = serde_json::from_str(&entries.get(SEED_KEY)?.value).ok()?;
    value["metadata"]["flap"].as_str()?.parse().ok()
}

#[tokio::test]
async fn a_replaced_plugin_serves_until_its_new_version_is_ready() {
    let etcd = Etcd::start().await;
    let mut config = ConfigFile::new(etcd.endpoints());
    config.agent_extra = plugins_section("");
    let mut agent = Agent::prepare(&config);
    // flappy answers with its call count: a new number every round (1 s).
    install_plugin(&agent.plugins_dir(), "flappy", "flappy");
    agent.spawn(&[]);
    let (first, _) = wait_for(PATIENCE, "flappy's first answers", || async {
        flap(&etcd).await.filter(|n| *n >= 1)
    })
    .await;

    // Replaced by a plugin with other keys that takes seconds to compile.
    install_slow(&agent.plugins_dir(), "hostinfo", "flappy");
    agent.wait_for_log("loading plugin", PATIENCE).await;
    // While it compiles, the old version keeps answering rounds.
    let (during, _) = wait_for(PATIENCE, "the old version answering on", || async {
        flap(&etcd).await.filter(|n| *n > first)
    })
    .await;
    assert!(
        !agent.log().contains("plugin reloaded"),
        "the swap came before the old version answered again:\n{}",
        agent.log()
    );
    assert!(during > first);
    // Then the new version takes over: its keys, and the old output is
    // replaced by the new version's first answer.
    wait_metadata(&etcd, "the new version's output", |m| {
        m.contains_key("hostname") && !m.contains_key("flap")
    })
    .await;
    agent
        .wait_for_log("plugin reloaded", COMPILE_PATIENCE)
        .await;
}

#[tokio::test]
async fn sigterm_does_not_wait_for_an_init_that_spins() {
    let etcd = Etcd::start().await;
    let mut config = ConfigFile::new(etcd.endpoints());
    // The init may spin for 20 s before the agent gives up on it.
    config.agent_extra =
        plugins_section("      spin: {phase: init}\n").replace("timeout: 500ms", "timeout: 20s");
    let mut agent = Agent::start(&config);
    wait_metadata(&etcd, "the seed registered", env_is("dev")).await;
    install_plugin(&agent.plugins_dir(), "spin", "spin");
    agent.wait_for_log("spinning in init", PATIENCE).await;

    config.instances = SEED_INSTANCE.replace("env: dev", "env: staging");
    agent.rewrite_config(&config);
    wait_metadata(&etcd, "the edit in etcd", env_is("staging")).await;

    agent.signal(libc::SIGTERM);
    let (status, took) = agent.wait_exit(Duration::from_secs(15));
    assert!(status.success(), "{status:?}");
    eprintln!("SIGTERM during a spinning init: deregistered and exited in {took:?}");
    assert!(took < Duration::from_secs(2), "took {took:?} to stop");
    let mut client = etcd.client().await;
    assert!(entries(&mut client, PREFIX).await.is_empty());
}

/// Replaces `link` by a symlink to `target` atomically (a new link renamed
/// over the old one), as `ln -sfn` and Kubernetes do.
fn swap_link(target: &str, link: &Path) {
    let name = link.file_name().unwrap().to_str().unwrap();
    let tmp = link.with_file_name(format!(".{name}.new-link"));
    symlink(target, &tmp).unwrap();
    std::fs::rename(&tmp, link).unwrap();
}

/// Starts an agent whose config file is `link` (inside the agent's folder),
/// reached through symlinks the test made.
async fn agent_on(etcd: &Etcd, agent: &mut Agent, link: &str) {
    agent.config_path = agent.dir.path().join(link);
    agent.spawn(&[]);
    wait_metadata(etcd, "the seed registered", env_is("dev")).await;
}

fn seed_config(etcd: &Etcd, env: &str) -> String {
    let mut config = ConfigFile::new(etcd.endpoints());
    config.instances = SEED_INSTANCE.replace("env: dev", &format!("env: {env}"));
    config.render()
}

#[tokio::test]
async fn a_symlinked_config_reloads_when_its_target_is_edited_in_place_or_replaced() {
    let etcd = Etcd::start().await;
    let mut agent = Agent::prepare(&ConfigFile::new(etcd.endpoints()));
    let root = agent.dir.path().to_path_buf();
    std::fs::create_dir_all(root.join("etc")).unwrap();
    std::fs::create_dir_all(root.join("real")).unwrap();
    std::fs::write(root.join("real/agent.yaml"), seed_config(&etcd, "dev")).unwrap();
    symlink("../real/agent.yaml", root.join("etc/agent.yaml")).unwrap();
    agent_on(&etcd, &mut agent, "etc/agent.yaml").await;

    // In place: same inode.
    std::fs::write(root.join("real/agent.yaml"), seed_config(&etcd, "in-place")).unwrap();
    wait_metadata(&etcd, "the in-place edit", env_is("in-place")).await;

    // Saved by rename, as editors do.
    std::fs::write(
        root.join("real/.agent.yaml.swp"),
        seed_config(&etcd, "renamed"),
    )
    .unwrap();
    std::fs::rename(
        root.join("real/.agent.yaml.swp"),
        root.join("real/agent.yaml"),
    )
    .unwrap();
    wait_metadata(&etcd, "the save by rename", env_is("renamed")).await;
}

#[tokio::test]
async fn a_config_reached_through_two_links_reloads_when_either_link_is_swapped() {
    let etcd = Etcd::start().await;
    let mut agent = Agent::prepare(&ConfigFile::new(etcd.endpoints()));
    let root = agent.dir.path().to_path_buf();
    for dir in ["etc", "alternatives", "real"] {
        std::fs::create_dir_all(root.join(dir)).unwrap();
    }
    for env in ["dev", "second", "third"] {
        std::fs::write(
            root.join(format!("real/{env}.yaml")),
            seed_config(&etcd, env),
        )
        .unwrap();
    }
    // etc/agent.yaml -> alternatives/agent.yaml -> real/dev.yaml
    symlink("../real/dev.yaml", root.join("alternatives/agent.yaml")).unwrap();
    symlink("../alternatives/agent.yaml", root.join("etc/agent.yaml")).unwrap();
    agent_on(&etcd, &mut agent, "etc/agent.yaml").await;

    // The second link of the chain is swapped.
    swap_link("../real/second.yaml", &root.join("alternatives/agent.yaml"));
    wait_metadata(&etcd, "the second link swapped", env_is("second")).await;

    // The first link is swapped to a new chain.
    std::fs::create_dir_all(root.join("other")).unwrap();
    symlink("../real/third.yaml", root.join("other/agent.yaml")).unwrap();
    swap_link("../other/agent.yaml", &root.join("etc/agent.yaml"));
    wait_metadata(&etcd, "the first link swapped", env_is("third")).await;

    // The new chain is watched: editing its target reloads.
    std::fs::write(root.join("real/third.yaml"), seed_config(&etcd, "edited")).unwrap();
    wait_metadata(&etcd, "the new target edited", env_is("edited")).await;
}

#[tokio::test]
async fn a_configmap_data_swap_reloads() {
    let etcd = Etcd::start().await;
    let mut agent = Agent::prepare(&ConfigFile::new(etcd.endpoints()));
    let cfg = agent.dir.path().join("cfg");
    // Kubernetes: agent.yaml -> ..data/agent.yaml, ..data -> ..<timestamp>
    std::fs::create_dir_all(cfg.join("..2026_12_01_1")).unwrap();
    std::fs::write(
        cfg.join("..2026_12_01_1/agent.yaml"),
        seed_config(&etcd, "dev"),
    )
    .unwrap();
    symlink("..2026_12_01_1", cfg.join("..data")).unwrap();
    symlink("..data/agent.yaml", cfg.join("agent.yaml")).unwrap();
    agent_on(&etcd, &mut agent, "cfg/agent.yaml").await;

    std::fs::create_dir_all(cfg.join("..2026_12_01_2")).unwrap();
    std::fs::write(
        cfg.join("..2026_12_01_2/agent.yaml"),
        seed_config(&etcd, "swapped"),
    )
    .unwrap();
    swap_link("..2026_12_01_2", &cfg.join("..data"));
    std::fs::remove_dir_all(cfg.join("..2026_12_01_1")).unwrap();
    wait_metadata(&etcd, "the ..data swap", env_is("swapped")).await;

    // And the next swap too (the watch followed the first one).
    std::fs::create_dir_all(cfg.join("..2026_12_01_3")).unwrap();
    std::fs::write(
        cfg.join("..2026_12_01_3/agent.yaml"),
        seed_config(&etcd, "again"),
    )
    .unwrap();
    swap_link("..2026_12_01_3", &cfg.join("..data"));
    wait_metadata(&etcd, "the second ..data swap", env_is("again")).await;
}

#[tokio::test]
async fn a_symlinked_plugins_folder_follows_its_link_and_its_content() {
    let etcd = Etcd::start().await;
    let mut config = ConfigFile::new(etcd.endpoints());
    let admin = format!("127.0.0.1:{}", free_port());
    config.agent_extra = format!(
        "  admin:\n    listen: {admin}\n{}",
        plugins_section("      echo: {value: v1}\n      other: {value: v2}\n")
    );
    let mut agent = Agent::prepare(&config);
    let root = agent.dir.path().to_path_buf();
    std::fs::remove_dir(root.join("plugins")).unwrap();
    std::fs::create_dir_all(root.join("plugins-v1")).unwrap();
    std::fs::create_dir_all(root.join("plugins-v2")).unwrap();
    symlink("plugins-v1", root.join("plugins")).unwrap();
    agent.spawn(&[]);
    wait_metadata(&etcd, "the seed registered", env_is("dev")).await;

    // A plugin dropped into the link's target loads.
    install_plugin(&root.join("plugins-v1"), "echo", "echo");
    wait_metadata(&etcd, "echo's metadata", |m| {
        m.get("value").and_then(|v| v.as_str()) == Some("v1")
    })
    .await;

    // The link swapped to another folder: its plugins replace the old ones.
    install_plugin(&root.join("plugins-v2"), "echo", "other");
    swap_link("plugins-v2", &root.join("plugins"));
    wait_metadata(&etcd, "the other folder's plugin", |m| {
        m.get("value").and_then(|v| v.as_str()) == Some("v2")
    })
    .await;
    agent.wait_for_log("plugin unloaded", PATIENCE).await;

    // The unloaded plugin leaves no metric series behind.
    let (_, metrics) = http_get(&admin, "/metrics").await.expect("metrics");
    assert!(metrics.contains("plugin=\"other\""), "{metrics}");
    assert!(!metrics.contains("plugin=\"echo\""), "{metrics}");
}

#[tokio::test]
async fn the_admin_listener_moves_to_an_overlapping_address_and_survives_a_failed_move() {
    let etcd = Etcd::start().await;
    let port = free_port();
    let mut config = ConfigFile::new(etcd.endpoints());
    config.agent_extra = format!("  admin:\n    listen: 127.0.0.1:{port}\n");
    let agent = Agent::start(&config);
    let loopback = format!("127.0.0.1:{port}");
    wait_for(PATIENCE, "the admin server", || {
        let loopback = loopback.clone();
        async move { http_get(&loopback, "/healthz").await }
    })
    .await;

    // The same port on every address overlaps the old listener: it must
    // close first, then the new one binds.
    config.agent_extra = format!("  admin:\n    listen: 0.0.0.0:{port}\n");
    agent.rewrite_config(&config);
    agent
        .wait_for_log(&format!("listen=0.0.0.0:{port}"), PATIENCE)
        .await;
    assert!(http_get(&loopback, "/healthz").await.is_some());
    assert!(
        !agent.log().contains("cannot move the admin server"),
        "{}",
        agent.log()
    );

    // A port someone else holds: the reason is logged, the old one serves.
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let taken_addr = taken.local_addr().unwrap();
    config.agent_extra = format!("  admin:\n    listen: {taken_addr}\n");
    agent.rewrite_config(&config);
    agent
        .wait_for_log(
            "cannot move the admin server; it keeps serving on the old address",
            PATIENCE,
        )
        .await;
    assert!(
        agent.log().contains("Address already in use"),
        "{}",
        agent.log()
    );
    let (status, _) = http_get(&loopback, "/healthz")
        .await
        .expect("the old address serves");
    assert_eq!(status, 200);
}
