//! `edits`: config edits and plugin drop-ins until etcd shows them.

use std::path::Path;
use std::time::{Duration, Instant};

use etcd_client::{EventType, WatchOptions};

use crate::common::*;
use crate::support::{self, Agent, ConfigFile, Etcd};

pub(crate) const EDITS: usize = 50;

/// Waits for a PUT of `key` whose value contains `marker`.
pub(crate) async fn wait_put(stream: &mut etcd_client::WatchStream, key: &str, marker: &str) {
    loop {
        let response = tokio::time::timeout(Duration::from_secs(30), stream.message())
            .await
            .expect("no change reached etcd in 30 s")
            .unwrap()
            .unwrap();
        for event in response.events() {
            if event.event_type() == EventType::Put
                && let Some(kv) = event.kv()
                && kv.key_str().ok() == Some(key)
                && kv.value_str().is_ok_and(|v| v.contains(marker))
            {
                return;
            }
        }
    }
}

pub(crate) fn replace_atomically(path: &Path, text: &str) {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, text).unwrap();
    std::fs::rename(&tmp, path).unwrap();
}

pub(crate) async fn edits_and_drop_ins(etcd: &Etcd, rows: &mut Vec<Row>) {
    let plugins_dir = support::built_plugins();
    let mut config = ConfigFile::new(etcd.endpoints());
    config.prefix = "/edits".into();
    config.agent_extra = "  plugins:\n    dir: plugins\n    cacheDir: cache\n".into();
    let agent = Agent::start(&config);
    let key = support::SEED_KEY.replace("/yggdrasil/registry", "/edits");
    let mut client = etcd.client().await;
    while count_keys(&mut client, "/edits/").await < 1 {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let mut watch = client
        .watch("/edits/", Some(WatchOptions::new().with_prefix()))
        .await
        .unwrap();

    // Config edits: the metadata changes, timed from the write to etcd.
    let mut edit_times = Vec::new();
    for i in 0..EDITS {
        let marker = format!("edit-{i}");
        config.instances = support::SEED_INSTANCE.replace("env: dev", &format!("env: {marker}"));
        let start = Instant::now();
        replace_atomically(&agent.config_path, &config.render());
        wait_put(&mut watch, &key, &format!("\"env\":\"{marker}\"")).await;
        edit_times.push(start.elapsed());
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // The floor: a raw put of the same value.
    let mut puts = Vec::new();
    for i in 0..EDITS {
        let start = Instant::now();
        client
            .put(format!("/floor/put/{i}"), record(i).value.as_bytes(), None)
            .await
            .unwrap();
        puts.push(start.elapsed());
    }
    let (p50, p99) = (
        percentile(&mut edit_times, 50),
        percentile(&mut edit_times, 99),
    );
    rows.push(
        Row::new(
            format!("config edit -> etcd, {EDITS} edits (100 ms debounce included)"),
            format!("p50 {p50:.1?}, p99 {p99:.1?}"),
            format!("raw put p50 {:.2?}", percentile(&mut puts, 50)),
        )
        .budget("p50 <= 300 ms", p50 <= Duration::from_millis(300)),
    );

    // Plugin drop-ins: a new plugin's key in etcd, timed from the rename.
    let mut drop_times = Vec::new();
    for i in 0..5 {
        let name = format!("echo{i}");
        let marker = format!("dropped-{i}");
        config.agent_extra = format!(
            "  plugins:\n    dir: plugins\n    cacheDir: cache\n    settings:\n{}",
            (0..=i)
                .map(|j| format!("      echo{j}: {{drop{j}: dropped-{j}}}\n"))
                .collect::<String>()
        );
        replace_atomically(&agent.config_path, &config.render());
        tokio::time::sleep(Duration::from_millis(500)).await;
        let tmp = agent.plugins_dir().join(format!(".{name}.tmp"));
        std::fs::copy(plugins_dir.join("echo.wasm"), &tmp).unwrap();
        let start = Instant::now();
        std::fs::rename(&tmp, agent.plugins_dir().join(format!("{name}.wasm"))).unwrap();
        wait_put(&mut watch, &key, &marker).await;
        drop_times.push(start.elapsed());
    }
    rows.push(Row::new(
        "plugin dropped into the folder -> its metadata in etcd (median of 5)",
        format!("{:.1?}", percentile(&mut drop_times, 50)),
        format!("config edit p50 {p50:.1?}"),
    ));
}
