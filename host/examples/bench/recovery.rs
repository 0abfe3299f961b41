//! `recovery`: re-registration after a wiped etcd.

use std::time::{Duration, Instant};

use etcd_client::GetOptions;

use crate::common::*;
use crate::support::{self, Agent, ConfigFile, Etcd};

pub(crate) async fn recovery(rows: &mut Vec<Row>) {
    let mut etcd = Etcd::start().await;
    let mut config = ConfigFile::new(etcd.endpoints());
    config.ttl = "10s";
    config.retry_interval = "3s";
    config.prefix = "/recovery".into();
    config.instances = support::instances("svc", RECOVERY_INSTANCES);
    let agent = Agent::start_with(&config, &[]);
    let mut client = etcd.client().await;
    while count_keys(&mut client, "/recovery/").await < RECOVERY_INSTANCES {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    etcd.wipe_and_restart().await;
    let back_from = Instant::now();
    let mut client = etcd.client().await;
    while count_keys(&mut client, "/recovery/").await < RECOVERY_INSTANCES {
        assert!(
            back_from.elapsed() < Duration::from_secs(60),
            "registrations never came back:\n{}",
            agent.log()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let ours = back_from.elapsed();
    // The floor: writing the same keys once, one put at a time.
    let start = Instant::now();
    for i in 0..RECOVERY_INSTANCES {
        client
            .put(format!("/floor/{i}"), record(i).value.as_bytes(), None)
            .await
            .unwrap();
    }
    let floor = start.elapsed();
    // The floor: the agent's own 1,000 keys and values (read back from
    // etcd), written again in txns of 128 puts on one lease.
    let written: Vec<(String, String)> = client
        .get("/recovery/", Some(GetOptions::new().with_prefix()))
        .await
        .unwrap()
        .kvs()
        .iter()
        .map(|kv| {
            (
                format!("/floor-recovery{}", kv.key_str().unwrap()),
                kv.value_str().unwrap().to_string(),
            )
        })
        .collect();
    let txn_floor = floor_writes(&etcd, &written).await;
    rows.push(
        Row::new(
            format!("etcd wiped and restarted: {RECOVERY_INSTANCES} registrations back (from etcd healthy)"),
            format!("{ours:.2?}"),
            format!(
                "raw sequential re-put of the same keys {floor:.2?}; floor (connect, lease, txns of 128 puts) {txn_floor:.2?}"
            ),
        )
        .budget(
            format!(
                "<= retryInterval + 1 s = 4 s (is {:.1}x the floor, which depends on where the agent's retry backoff stood when etcd came back)",
                ours.as_secs_f64() / txn_floor.as_secs_f64()
            ),
            ours <= Duration::from_secs(4),
        ),
    );
}
