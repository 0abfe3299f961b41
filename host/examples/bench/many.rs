//! `many`: many instances registered at once, beside the seed's strategy and the floor.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use etcd_client::{Client, PutOptions};
use tokio_util::task::TaskTracker;
use ygg_agent::desired::{DesiredRecord, Target};
use ygg_agent::metrics::Metrics;
use ygg_agent::registry::RegistryHandle;

use crate::common::*;
use crate::support::{self, Etcd};

pub(crate) const MANY: usize = 10_000;

pub(crate) const KEEPALIVE_WINDOW: Duration = Duration::from_secs(10);

/// A counter from etcd's own /metrics (summed over label sets).
pub(crate) async fn etcd_counter(etcd: &Etcd, name: &str, method: &str) -> f64 {
    let Some((_, body)) = support::http_get(&etcd.endpoint(), "/metrics").await else {
        return 0.0;
    };
    body.lines()
        .filter(|l| l.starts_with(name) && l.contains(&format!("grpc_method=\"{method}\"")))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

/// The seed's strategy: every instance registered on its own, each with its
/// own lease and keepalive stream (renewed at TTL/3 by a task of its own).
pub(crate) async fn seed_strategy(etcd: &Etcd, tracker: &TaskTracker) -> (Duration, Vec<i64>) {
    let client = Client::connect(etcd.endpoints(), None).await.unwrap();
    let start = Instant::now();
    let mut leases = Vec::with_capacity(MANY);
    for i in 0..MANY {
        let mut client = client.clone();
        let lease = client.lease_grant(10, None).await.unwrap().id();
        client
            .put(
                format!("/seed/many/bench/svc/{i}"),
                record(i).value.as_bytes(),
                Some(PutOptions::new().with_lease(lease)),
            )
            .await
            .unwrap();
        let (mut keeper, mut stream) = client.lease_keep_alive(lease).await.unwrap();
        tracker.spawn(async move {
            loop {
                tokio::time::sleep(Duration::from_millis(3333)).await;
                if keeper.keep_alive().await.is_err()
                    || !matches!(stream.message().await, Ok(Some(_)))
                {
                    break;
                }
            }
        });
        leases.push(lease);
    }
    (start.elapsed(), leases)
}

pub(crate) async fn many_instances(etcd: &Etcd, rows: &mut Vec<Row>) {
    let mut client = etcd.client().await;

    // Raw sequential puts on one lease.
    let raw_start = Instant::now();
    let lease = client.lease_grant(60, None).await.unwrap().id();
    for i in 0..MANY {
        client
            .put(
                format!("/raw/many/bench/svc/{i}"),
                record(i).value.as_bytes(),
                Some(PutOptions::new().with_lease(lease)),
            )
            .await
            .unwrap();
    }
    let raw_many = raw_start.elapsed();
    client.lease_revoke(lease).await.unwrap();

    // The floor: the same keys in transactions of 128 puts on one lease.
    let floor_keys: Vec<(String, String)> = (0..MANY)
        .map(|i| {
            (
                format!("/floor/many/bench/svc/{i:05}"),
                record(i).value.to_string(),
            )
        })
        .collect();
    let floor_many = floor_writes(etcd, &floor_keys).await;

    // The agent: batched transactions on one lease, one keepalive stream.
    let leases_before = client.leases().await.unwrap().leases().len();
    let streams_before = etcd_counter(etcd, "grpc_server_started_total", "LeaseKeepAlive").await;
    let records: BTreeMap<String, DesiredRecord> = (0..MANY)
        .map(|i| (format!("/agent/many/bench/svc/{i:05}"), record(i)))
        .collect();
    let tracker = TaskTracker::new();
    let target = Target {
        config: registry_config(etcd, "/agent/many"),
        records,
    };
    let start = Instant::now();
    let handle = RegistryHandle::spawn(
        Some(target),
        Metrics::new(),
        &tracker,
        tokio_util::sync::CancellationToken::new(),
    );
    handle
        .status()
        .wait_for(|s| s.registered == MANY)
        .await
        .unwrap();
    let ours_many = start.elapsed();
    tokio::time::sleep(Duration::from_secs(4)).await;
    let renewals_before =
        etcd_counter(etcd, "grpc_server_msg_received_total", "LeaseKeepAlive").await;
    tokio::time::sleep(KEEPALIVE_WINDOW).await;
    let ours_rate = (etcd_counter(etcd, "grpc_server_msg_received_total", "LeaseKeepAlive").await
        - renewals_before)
        / KEEPALIVE_WINDOW.as_secs_f64();
    let ours_leases = client.leases().await.unwrap().leases().len() - leases_before;
    let ours_streams =
        etcd_counter(etcd, "grpc_server_started_total", "LeaseKeepAlive").await - streams_before;
    handle
        .stop(tokio::time::Instant::now() + Duration::from_secs(30))
        .await;

    // The seed's strategy: a lease and a keepalive stream per instance.
    let seed_tracker = TaskTracker::new();
    let leases_before = client.leases().await.unwrap().leases().len();
    let (seed_many, seed_leases) = seed_strategy(etcd, &seed_tracker).await;
    let renewals_before =
        etcd_counter(etcd, "grpc_server_msg_received_total", "LeaseKeepAlive").await;
    tokio::time::sleep(KEEPALIVE_WINDOW).await;
    let seed_rate = (etcd_counter(etcd, "grpc_server_msg_received_total", "LeaseKeepAlive").await
        - renewals_before)
        / KEEPALIVE_WINDOW.as_secs_f64();
    let seed_lease_count = client.leases().await.unwrap().leases().len() - leases_before;
    seed_tracker.close();
    drop(seed_tracker);
    for lease in seed_leases {
        let _ = client.lease_revoke(lease).await;
    }

    let rate = |d: Duration| MANY as f64 / d.as_secs_f64();
    rows.push(
        Row::new(
            format!("{MANY} instances registered"),
            format!("{ours_many:.2?} ({:.0}/s)", rate(ours_many)),
            format!(
                "raw sequential puts {raw_many:.2?} ({:.0}/s); seed's strategy {seed_many:.2?} ({:.0}/s)",
                rate(raw_many),
                rate(seed_many)
            ),
        )
        .budget(
            format!(">= 2x raw rate (is {:.1}x)", rate(ours_many) / rate(raw_many)),
            rate(ours_many) >= 2.0 * rate(raw_many),
        ),
    );
    let floor_ratio = ours_many.as_secs_f64() / floor_many.as_secs_f64();
    rows.push(
        Row::new(
            format!("{MANY} instances registered, against the floor"),
            format!("{ours_many:.2?}"),
            format!(
                "floor: raw etcd-client, txns of 128 puts on one lease {floor_many:.2?} ({:.0}/s)",
                rate(floor_many)
            ),
        )
        .budget(
            format!("<= 1.3x floor (is {floor_ratio:.2}x)"),
            floor_ratio <= 1.3,
        ),
    );
    rows.push(
        Row::new(
            format!("{MANY} instances: leases / keepalive streams / renewals per s"),
            format!("{ours_leases} / {ours_streams:.0} / {ours_rate:.1}"),
            format!("seed's strategy {seed_lease_count} / {MANY} / {seed_rate:.0}"),
        )
        .budget("1 lease", ours_leases == 1 && ours_streams <= 1.0),
    );
}
