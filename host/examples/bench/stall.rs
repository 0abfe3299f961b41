//! `stall`: the supervisor's loop while a large plugin compiles cold.

use std::time::{Duration, Instant};

use crate::big_component;
use crate::common::*;
use crate::support::{self, Agent, ConfigFile, Etcd};

/// Admin requests every 10 ms until `stop`; their latencies.
pub(crate) async fn poll_admin(
    admin: String,
    stop: tokio::sync::watch::Receiver<bool>,
) -> Vec<Duration> {
    let mut latencies = Vec::new();
    while !*stop.borrow() {
        let start = Instant::now();
        support::http_get(&admin, "/healthz")
            .await
            .expect("admin answers");
        latencies.push(start.elapsed());
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    latencies
}

/// For each SIGHUP the agent logged, the time until the forced reload it
/// caused was done (the next "config reloaded" line), from the agent's
/// own timestamps: the supervisor's loop latency plus one read and parse.
pub(crate) fn sighup_latencies(log: &str) -> Vec<Duration> {
    let mut latencies = Vec::new();
    let mut pending: Option<f64> = None;
    for line in log.lines() {
        if line.contains("SIGHUP: reloading the config") {
            pending = support::log_time(line);
        } else if line.contains("config reloaded")
            && let (Some(sent), Some(done)) = (pending.take(), support::log_time(line))
        {
            latencies.push(Duration::from_secs_f64((done - sent).max(0.0)));
        }
    }
    latencies
}

/// SIGHUPs every 20 ms and admin requests every 10 ms until `until` says
/// stop (at least `min` SIGHUPs); the SIGHUP → reloaded latencies (from the
/// log lines after `log_from`) and the admin latencies.
pub(crate) async fn probe_loop(
    agent: &Agent,
    admin: &str,
    min: usize,
    until: &dyn Fn() -> bool,
) -> (Vec<Duration>, Vec<Duration>) {
    let log_from = agent.log().len();
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let poller = tokio::spawn(poll_admin(admin.to_string(), stop_rx));
    let mut sent = 0;
    while sent < min || !until() {
        agent.signal(libc::SIGHUP);
        sent += 1;
        tokio::time::sleep(Duration::from_millis(20)).await;
        if sent >= 500 {
            break;
        }
    }
    // Let the last reloads finish before reading the log.
    tokio::time::sleep(Duration::from_millis(200)).await;
    stop_tx.send(true).unwrap();
    let admin_latencies = poller.await.unwrap();
    (sighup_latencies(&agent.log()[log_from..]), admin_latencies)
}

/// The supervisor's loop while a large plugin compiles cold: SIGHUP
/// reloads and admin requests during the compile, beside the same while
/// idle.
pub(crate) async fn stall_during_compile(etcd: &Etcd, rows: &mut Vec<Row>) {
    let admin = format!("127.0.0.1:{}", support::free_port());
    let mut config = ConfigFile::new(etcd.endpoints());
    config.prefix = "/stall".into();
    config.agent_extra = format!(
        "  admin:\n    listen: {admin}\n  plugins:\n    dir: plugins\n    cacheDir: cache\n    settings:\n      big: {{value: compiled}}\n"
    );
    let agent = Agent::start(&config);
    let mut client = etcd.client().await;
    while count_keys(&mut client, "/stall/").await < 1 {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    // Idle: the same signals and requests with nothing compiling.
    let (mut idle_reload, mut idle_admin) = probe_loop(&agent, &admin, 50, &|| true).await;

    let echo = std::fs::read(support::built_plugins().join("echo.wasm")).unwrap();
    let big = big_component::padded_component(&echo, 6000, 200);
    let size = big.len();
    let tmp = agent.plugins_dir().join(".big.tmp");
    std::fs::write(&tmp, big).unwrap();
    let dropped = Instant::now();
    std::fs::rename(&tmp, agent.plugins_dir().join("big.wasm")).unwrap();
    agent
        .wait_for_log("loading plugin", Duration::from_secs(30))
        .await;
    let loaded = || agent.log().contains("plugin loaded");
    let (mut busy_reload, mut busy_admin) = probe_loop(&agent, &admin, 1, &loaded).await;
    let compiled = dropped.elapsed();
    assert!(
        !busy_reload.is_empty(),
        "no reload timed during the compile"
    );

    let max = |v: &[Duration]| v.iter().copied().max().unwrap_or_default();
    let stall = max(&busy_reload).max(max(&busy_admin));
    rows.push(
        Row::new(
            format!(
                "event loop while a {:.1} MB plugin compiles cold ({compiled:.1?} until loaded): {} SIGHUP reloads and {} admin requests during the compile",
                size as f64 / 1e6,
                busy_reload.len(),
                busy_admin.len()
            ),
            format!(
                "SIGHUP -> reloaded p50 {:.2?}, max {:.2?}; admin request p50 {:.2?}, max {:.2?}",
                percentile(&mut busy_reload, 50),
                max(&busy_reload),
                percentile(&mut busy_admin, 50),
                max(&busy_admin),
            ),
            format!(
                "idle: SIGHUP -> reloaded p50 {:.2?}, max {:.2?}; admin request p50 {:.2?}, max {:.2?}",
                percentile(&mut idle_reload, 50),
                max(&idle_reload),
                percentile(&mut idle_admin, 50),
                max(&idle_admin),
            ),
        )
        .budget(
            format!("stall <= 10 ms (longest: {stall:.1?})"),
            stall <= Duration::from_millis(10),
        ),
    );
}
