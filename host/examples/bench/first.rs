//! `first`: the first registration, beside raw etcd-client and etcdctl.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use etcd_client::{Client, PutOptions};
use tokio_util::task::TaskTracker;
use ygg_agent::desired::{DesiredRecord, Target};
use ygg_agent::metrics::Metrics;
use ygg_agent::registry::RegistryHandle;

use crate::common::*;
use crate::support::Etcd;

pub(crate) const FIRST_TRIALS: usize = 30;

/// Runs the registry actor on `records` and returns the time until etcd
/// confirmed every one; the actor is stopped (untimed) afterwards.
pub(crate) async fn agent_register(
    etcd: &Etcd,
    prefix: &str,
    records: BTreeMap<String, DesiredRecord>,
) -> Duration {
    let tracker = TaskTracker::new();
    let count = records.len();
    let target = Target {
        config: registry_config(etcd, prefix),
        records,
    };
    let start = Instant::now();
    let handle = RegistryHandle::spawn(Some(target), Metrics::new(), &tracker);
    handle
        .status()
        .wait_for(|s| s.registered == count)
        .await
        .expect("registry actor stopped");
    let took = start.elapsed();
    handle
        .stop(tokio::time::Instant::now() + Duration::from_secs(30))
        .await;
    took
}

pub(crate) async fn raw_first_registration(etcd: &Etcd, key: &str, value: &str) -> Duration {
    let start = Instant::now();
    let mut client = Client::connect(etcd.endpoints(), None).await.unwrap();
    let lease = client.lease_grant(10, None).await.unwrap();
    client
        .put(key, value, Some(PutOptions::new().with_lease(lease.id())))
        .await
        .unwrap();
    let took = start.elapsed();
    client.lease_revoke(lease.id()).await.unwrap();
    took
}

/// `etcdctl lease grant` + `etcdctl put --lease`: what a shell registrator does.
pub(crate) fn etcdctl_first_registration(etcd: &Etcd, key: &str, value: &str) -> Duration {
    let start = Instant::now();
    let granted = etcdctl(etcd, &["lease", "grant", "10"]);
    let lease = granted
        .split_whitespace()
        .nth(1)
        .expect("lease id")
        .to_string();
    etcdctl(etcd, &["put", &format!("--lease={lease}"), key, value]);
    let took = start.elapsed();
    etcdctl(etcd, &["lease", "revoke", &lease]);
    took
}

pub(crate) async fn first_registration(etcd: &Etcd, rows: &mut Vec<Row>) {
    raw_first_registration(etcd, "/warm/raw", "x").await;
    agent_register(
        etcd,
        "/warm/agent",
        [("/warm/agent/ns/svc/k".to_string(), record(0))].into(),
    )
    .await;
    let (mut raw, mut ours, mut shell) = (Vec::new(), Vec::new(), Vec::new());
    for trial in 0..FIRST_TRIALS {
        let value = record(trial).value;
        raw.push(raw_first_registration(etcd, &format!("/raw/first/{trial}"), &value).await);
        let prefix = format!("/agent/first{trial}");
        ours.push(
            agent_register(
                etcd,
                &prefix,
                [(format!("{prefix}/bench/svc/{trial}"), record(trial))].into(),
            )
            .await,
        );
        shell.push(etcdctl_first_registration(
            etcd,
            &format!("/shell/first/{trial}"),
            &value,
        ));
    }
    let (raw50, ours50, shell50) = (
        percentile(&mut raw, 50),
        percentile(&mut ours, 50),
        percentile(&mut shell, 50),
    );
    let ratio = ours50.as_secs_f64() / raw50.as_secs_f64();
    rows.push(
        Row::new(
            format!("first registration, median of {FIRST_TRIALS} (connect, lease, write)"),
            format!("{ours50:.2?} (p90 {:.2?})", percentile(&mut ours, 90)),
            format!(
                "raw etcd-client {raw50:.2?} (p90 {:.2?}); etcdctl grant+put {shell50:.1?}",
                percentile(&mut raw, 90)
            ),
        )
        .budget(format!("<= 1.5x raw (is {ratio:.2}x)"), ratio <= 1.5),
    );
}
