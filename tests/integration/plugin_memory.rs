//! What a hot load costs the agent's memory: with the Python and the
//! JavaScript examples compiled cold while the agent runs (in a compile
//! child, mapped from the cache), the agent's RSS is within 20% of the
//! same agent restarted and loading both from the compile cache.

use std::time::Duration;

use crate::support::*;

const COMPILE_PATIENCE: Duration = Duration::from_secs(300);

/// `VmRSS` and `RssAnon` of `pid`, in KiB.
fn memory_of(pid: u32) -> (u64, u64) {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let field = |name: &str| -> u64 {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|rest| rest.split_whitespace().next())
            .and_then(|n| n.parse().ok())
            .unwrap_or_else(|| panic!("no {name} in /proc/{pid}/status"))
    };
    (field("VmRSS:"), field("RssAnon:"))
}

/// The agent's memory once both plugins have had a few rounds.
async fn settled_memory(agent: &Agent, loads: usize) -> (u64, u64) {
    agent
        .wait_for_log_count("plugin loaded", loads, COMPILE_PATIENCE)
        .await;
    // Rounds run every second: let each plugin run a few, so both agents
    // are measured in the same steady state.
    tokio::time::sleep(Duration::from_secs(4)).await;
    memory_of(agent.pid())
}

#[tokio::test]
async fn a_hot_load_costs_about_what_a_restart_from_the_cache_does() {
    let _heavy = heavy_test().await;
    let etcd = Etcd::start().await;
    let mut config = ConfigFile::new(etcd.endpoints());
    config.agent_extra = "  plugins:\n    dir: plugins\n    interval: 1s\n    cacheDir: cache\n    settings:\n      python-example: {threshold: \"1000\"}\n      js-example: {owner: team-a}\n".into();
    let mut agent = Agent::prepare(&config);
    agent.spawn(&[]);
    agent.wait_for_log("instance registered", PATIENCE).await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    let bare = memory_of(agent.pid());

    // Hot: dropped into the running agent, compiled cold.
    install_polyglot_plugin(&agent.plugins_dir(), "python-example", "python-example");
    install_polyglot_plugin(&agent.plugins_dir(), "js-example", "js-example");
    let hot = settled_memory(&agent, 2).await;

    // The same agent restarted: both from the compile cache.
    agent.signal(libc::SIGTERM);
    agent.wait_exit(PATIENCE);
    agent.spawn(&[]);
    let restarted = settled_memory(&agent, 4).await;

    eprintln!(
        "agent memory (KiB): no plugins RSS {} anon {}; hot-loaded RSS {} anon {}; restarted from the cache RSS {} anon {}",
        bare.0, bare.1, hot.0, hot.1, restarted.0, restarted.1
    );
    let ratio = hot.0 as f64 / restarted.0 as f64;
    assert!(
        (0.8..=1.2).contains(&ratio),
        "hot-loaded RSS {} KiB vs restarted {} KiB (ratio {ratio:.2}): the compile left memory behind",
        hot.0,
        restarted.0
    );
    let anon_ratio = (hot.1 as f64 - bare.1 as f64) / (restarted.1 as f64 - bare.1 as f64).max(1.0);
    assert!(
        anon_ratio <= 1.2,
        "private memory the plugins added: hot {} KiB vs restarted {} KiB",
        hot.1 - bare.1,
        restarted.1.saturating_sub(bare.1)
    );
}
