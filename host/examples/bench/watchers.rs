//! `watchers`: `minRewriteInterval` seen by Yggdrasil-style watchers (ten minutes; only when named).

use std::time::Duration;

use etcd_client::{Client, EventType, GetOptions, WatchOptions};

use crate::common::*;
use crate::support::{self, Agent, ConfigFile, Etcd};

pub(crate) const WATCH_WINDOW: Duration = Duration::from_secs(600);

/// `minRewriteInterval` seen from the callers' side: one service of 100
/// instances with the heartbeat plugin (a new value every 30 s round), and
/// 10 watchers that read the way Yggdrasil's v3 resolver does
/// (`modules/etcd/discovery/resolver.go` at 2159f4b: every watch response
/// kicks a `Get` of the whole service prefix; kicks that arrive during a
/// `Get` coalesce into one). Three agents run side by side, each on its own
/// prefix: `minRewriteInterval` unset (the baseline: today's behaviour),
/// 30 s and 5 min. Counted over `WATCH_WINDOW` after registration: puts
/// etcd applied, and values the watchers read.
pub(crate) async fn watchers(etcd: &Etcd, rows: &mut Vec<Row>) {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicU64, Ordering};

    const INSTANCES: usize = 100;
    const WATCHERS: usize = 10;
    let settings = [("unset", ""), ("30 s", "30s"), ("5 min", "5m")];
    let mut agents = Vec::new();
    for (i, (_, min)) in settings.iter().enumerate() {
        let mut config = ConfigFile::new(etcd.endpoints());
        config.prefix = format!("/watchers/{i}");
        config.ttl = "10s";
        config.retry_interval = "3s";
        config.instances = support::instances("svc", INSTANCES);
        let min = if min.is_empty() {
            String::new()
        } else {
            format!("    minRewriteInterval: {min}\n")
        };
        config.agent_extra = format!(
            "  plugins:\n    dir: plugins\n    interval: 30s\n{min}    cacheDir: cache\n    settings:\n      heartbeat: {{format: unix}}\n"
        );
        let mut agent = Agent::prepare(&config);
        support::install_plugin(&agent.plugins_dir(), "heartbeat", "heartbeat");
        agent.spawn(&[]);
        agents.push(agent);
    }
    let mut client = etcd.client().await;
    for i in 0..settings.len() {
        while count_keys(&mut client, &format!("/watchers/{i}/")).await < INSTANCES {
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    let mut counters = Vec::new();
    for i in 0..settings.len() {
        let prefix = format!("/watchers/{i}/default/svc/");
        let (writes, reads) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
        // The writes etcd applied under the prefix.
        let mut stream = client
            .watch(prefix.as_str(), Some(WatchOptions::new().with_prefix()))
            .await
            .unwrap();
        let count = writes.clone();
        tokio::spawn(async move {
            while let Ok(Some(response)) = stream.message().await {
                let puts = response.events().iter();
                let puts = puts.filter(|e| e.event_type() == EventType::Put).count();
                count.fetch_add(puts as u64, Ordering::Relaxed);
            }
        });
        for _ in 0..WATCHERS {
            let mut watcher = Client::connect(etcd.endpoints(), None).await.unwrap();
            let (kick, mut kicked) = tokio::sync::mpsc::channel::<()>(1);
            let mut stream = watcher
                .watch(prefix.as_str(), Some(WatchOptions::new().with_prefix()))
                .await
                .unwrap();
            tokio::spawn(async move {
                while let Ok(Some(_)) = stream.message().await {
                    let _ = kick.try_send(());
                }
            });
            let (read, prefix) = (reads.clone(), prefix.clone());
            tokio::spawn(async move {
                while kicked.recv().await.is_some() {
                    let options = GetOptions::new().with_prefix();
                    if let Ok(response) = watcher.get(prefix.as_str(), Some(options)).await {
                        read.fetch_add(response.kvs().len() as u64, Ordering::Relaxed);
                    }
                }
            });
        }
        counters.push((writes, reads));
    }
    tokio::time::sleep(WATCH_WINDOW).await;
    let minutes = WATCH_WINDOW.as_secs_f64() / 60.0;
    let per_minute: Vec<(f64, f64)> = counters
        .iter()
        .map(|(w, r)| {
            let w = w.load(Ordering::Relaxed) as f64 / minutes;
            let r = r.load(Ordering::Relaxed) as f64 / minutes;
            (w, r)
        })
        .collect();
    drop(agents);
    let (base_writes, base_reads) = per_minute[0];
    for (i, (label, _)) in settings.iter().enumerate().skip(1) {
        let (writes, reads) = per_minute[i];
        rows.push(Row::new(
            format!(
                "{INSTANCES} instances, heartbeat every 30 s, {WATCHERS} Yggdrasil-style watchers, {WATCH_WINDOW:?}: minRewriteInterval {label}: etcd writes/min, values read/min"
            ),
            format!("{writes:.0} writes/min, {reads:.0} values read/min"),
            format!("minRewriteInterval unset: {base_writes:.0} writes/min, {base_reads:.0} values read/min"),
        ));
    }
}
