//! `idle`: the agent's footprint when nothing changes.

use std::process::{Command, Stdio};
use std::time::Duration;

use crate::common::*;
use crate::support::{self, Agent, ConfigFile, Etcd};

pub(crate) const IDLE_WINDOW: Duration = Duration::from_secs(30);

pub(crate) async fn idle_footprint(etcd: &Etcd, rows: &mut Vec<Row>) {
    let plugins = support::built_plugins();
    let mut bare = ConfigFile::new(etcd.endpoints());
    bare.prefix = "/idle/bare".into();
    bare.ttl = "10s";
    bare.retry_interval = "3s";
    let mut with_plugins = bare.clone();
    with_plugins.prefix = "/idle/plugins".into();
    with_plugins.agent_extra = "  plugins:\n    dir: plugins\n    cacheDir: cache\n".into();
    let bare_agent = Agent::start(&bare);
    let mut plugin_agent = Agent::prepare(&with_plugins);
    for name in ["heartbeat", "load", "hostinfo"] {
        std::fs::copy(
            plugins.join(format!("{name}.wasm")),
            plugin_agent.plugins_dir().join(format!("{name}.wasm")),
        )
        .unwrap();
    }
    plugin_agent.spawn(&[]);
    let granted = etcdctl(etcd, &["lease", "grant", "10"]);
    let lease = granted.split_whitespace().nth(1).unwrap().to_string();
    etcdctl(
        etcd,
        &[
            "put",
            &format!("--lease={lease}"),
            "/idle/etcdctl/k",
            &record(0).value,
        ],
    );
    let mut keeper = Command::new("etcdctl")
        .env("ETCDCTL_API", "3")
        .arg(format!("--endpoints={}", etcd.endpoint()))
        .args(["lease", "keep-alive", &lease])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    tokio::time::sleep(Duration::from_secs(5)).await;
    let pids = [bare_agent.pid(), plugin_agent.pid(), keeper.id()];
    let before: Vec<(f64, f64)> = pids.iter().map(|p| usage(*p)).collect();
    tokio::time::sleep(IDLE_WINDOW).await;
    let after: Vec<(f64, f64)> = pids.iter().map(|p| usage(*p)).collect();
    let cpu = |i: usize| (after[i].1 - before[i].1) / IDLE_WINDOW.as_secs_f64() * 100.0;
    let _ = keeper.kill();
    let _ = keeper.wait();
    rows.push(
        Row::new(
            "idle agent, 1 instance, 0 plugins: RSS / CPU",
            format!("{:.1} MiB / {:.2}%", after[0].0, cpu(0)),
            format!(
                "etcdctl lease keep-alive {:.1} MiB / {:.2}%",
                after[2].0,
                cpu(2)
            ),
        )
        .budget("CPU <= 1%", cpu(0) <= 1.0),
    );
    rows.push(
        Row::new(
            "idle agent, 1 instance, 3 example plugins: RSS / CPU",
            format!("{:.1} MiB / {:.2}%", after[1].0, cpu(1)),
            format!(
                "etcdctl lease keep-alive {:.1} MiB / {:.2}%",
                after[2].0,
                cpu(2)
            ),
        )
        .budget(
            "RSS <= 50 MB, CPU <= 1%",
            after[1].0 * 1.048_576 <= 50.0 && cpu(1) <= 1.0,
        ),
    );
}
