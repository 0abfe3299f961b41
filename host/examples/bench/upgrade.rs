//! `upgrade`: an upgrade in place (SIGUSR2) with 1,000 instances, beside a
//! fresh start of the same agent: how long from the signal until the new
//! process says ready, the DELETE events a watcher sees (budget 0), and
//! the requests etcd receives (its own `grpc_server_msg_received_total`,
//! every method) during each.

use std::time::{Duration, Instant};

use crate::common::*;
use crate::support::{
    self, Agent, ConfigFile, Etcd, KeyChange, KeyWatch, PATIENCE, log_time, send_signal,
};

pub(crate) const UPGRADE_INSTANCES: usize = 1_000;

/// Every request etcd received so far (unary requests and stream messages).
async fn requests(etcd: &Etcd) -> f64 {
    let Some((_, body)) = support::http_get(&etcd.endpoint(), "/metrics").await else {
        return 0.0;
    };
    body.lines()
        .filter(|l| l.starts_with("grpc_server_msg_received_total"))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

/// The time of the first log line containing `needle` after `skip` of them.
fn logged_at(agent: &Agent, needle: &str, skip: usize) -> Option<f64> {
    let log = agent.log();
    let line = log.lines().filter(|l| l.contains(needle)).nth(skip)?;
    log_time(line)
}

async fn wait_logged(agent: &Agent, needle: &str, skip: usize) -> f64 {
    let start = Instant::now();
    loop {
        if let Some(at) = logged_at(agent, needle, skip) {
            return at;
        }
        assert!(
            start.elapsed() < PATIENCE,
            "no {needle:?} in the agent's log"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn install(from: &std::path::Path, dir: &std::path::Path) -> std::path::PathBuf {
    let target = dir.join("ygg-agent");
    let temp = dir.join(".ygg-agent.new");
    std::fs::copy(from, &temp).unwrap();
    std::fs::rename(&temp, &target).unwrap();
    target
}

pub(crate) async fn upgrade_in_place(rows: &mut Vec<Row>) {
    // An etcd of its own: its counters are this agent's requests alone.
    let etcd = Etcd::start().await;
    let mut config = ConfigFile::new(etcd.endpoints());
    config.ttl = "10s";
    config.retry_interval = "3s";
    config.instances = support::instances("up", UPGRADE_INSTANCES);
    let mut agent = Agent::prepare(&config);
    let bin = agent.dir.path().join("bin");
    std::fs::create_dir(&bin).unwrap();
    let program = install(&support::agent_binary(), &bin);
    let mut client = etcd.client().await;

    // A fresh start: spawn to the last key written.
    let before_start = requests(&etcd).await;
    let spawned = Instant::now();
    agent.spawn_program(&program, &[], |_| {});
    while count_keys(&mut client, "/yggdrasil/registry/default/up/").await < UPGRADE_INSTANCES {
        assert!(spawned.elapsed() < PATIENCE, "the agent did not register");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let fresh = spawned.elapsed();
    // Settled: the first keepalive and the watches are up.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let fresh_requests = requests(&etcd).await - before_start;

    let watch = KeyWatch::start(&etcd, "/yggdrasil/registry/").await;
    install(&support::agent_binary(), &bin);
    let before_upgrade = requests(&etcd).await;
    agent.signal(libc::SIGUSR2);
    let signalled = wait_logged(&agent, "SIGUSR2: upgrading in place", 0).await;
    let ready = wait_logged(&agent, "upgrade: ready; the previous process stops", 0).await;
    agent.wait_exit(PATIENCE);
    // Settled the same 2 s: the new process's keepalive and watches are up.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let upgrade_requests = requests(&etcd).await - before_upgrade;
    watch.sync().await;
    let deletes = watch.count(KeyChange::Delete);
    let puts = watch.count(KeyChange::Put);
    let keys = count_keys(&mut client, "/yggdrasil/registry/default/up/").await;

    // The new process, started by the old one: stopped by pid.
    let log = agent.log();
    let pid: u32 = log
        .lines()
        .find(|l| l.contains("SIGUSR2: upgrade started"))
        .and_then(|l| l.split_whitespace().find_map(|f| f.strip_prefix("pid=")))
        .and_then(|p| p.parse().ok())
        .expect("the new pid in the log");
    send_signal(pid, libc::SIGTERM);
    let stopping = Instant::now();
    while count_keys(&mut client, "/yggdrasil/registry/").await > 0 && stopping.elapsed() < PATIENCE
    {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    let took = Duration::from_secs_f64((ready - signalled).max(0.0));
    rows.push(
        Row::new(
            "upgrade in place, 1,000 instances: SIGUSR2 to the new agent ready (its log); DELETE / PUT events; etcd requests in the 2 s after",
            format!(
                "{} ms; {deletes} DELETE, {puts} PUT ({keys} keys after); {upgrade_requests:.0} requests",
                took.as_millis()
            ),
            format!(
                "fresh start: {} ms to the 1,000th key; {fresh_requests:.0} requests in the same 2 s after",
                fresh.as_millis()
            ),
        )
        .budget(
            "0 DELETE, all keys kept",
            deletes == 0 && keys == UPGRADE_INSTANCES,
        ),
    );
}
