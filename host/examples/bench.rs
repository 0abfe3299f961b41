//! The benchmark program (not a test): starts its own etcd and prints, for
//! each measurement, our figure beside a baseline measured in the same run.
//!
//!     ./scripts/bench            # builds in release, then runs this
//!
//! Registration figures use the registry actor in-process against raw
//! etcd-client code doing the same writes; the "agent process" rows run the
//! real binary (logging included) and watch etcd from outside.

#[path = "../../tests/support.rs"]
mod support;

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use etcd_client::{Client, GetOptions, PutOptions};
use support::{ConfigFile, Etcd};
use tokio_util::task::TaskTracker;
use ygg_agent::config::RegistryConfig;
use ygg_agent::metrics::Metrics;
use ygg_agent::registry::{DesiredRecord, RegistryHandle, Target};

const FIRST_TRIALS: usize = 30;
const MANY: usize = 10_000;

/// A record roughly the size of the seed's.
fn record(i: usize) -> DesiredRecord {
    DesiredRecord {
        value: format!(
            r#"{{"namespace":"bench","name":"svc","version":"1.0.0","region":"us-west","zone":"us-west-1","campus":"campus-a","metadata":{{"env":"dev","pod":"pod-{i:010}"}},"endpoints":[{{"scheme":"grpc","address":"10.0.{}.{}:54321","metadata":null}}]}}"#,
            i / 256 % 256,
            i % 256
        ),
        service: "bench/svc/1.0.0".into(),
        endpoints: vec![format!("grpc://10.0.0.1:{i}")],
    }
}

fn registry_config(etcd: &Etcd, prefix: &str) -> RegistryConfig {
    let mut config = RegistryConfig::default();
    config.client.endpoints = etcd.endpoints();
    config.prefix = prefix.to_string();
    config
}

fn median(samples: &mut [Duration]) -> Duration {
    samples.sort();
    samples[samples.len() / 2]
}

fn p90(samples: &mut [Duration]) -> Duration {
    samples.sort();
    samples[samples.len() * 9 / 10]
}

/// Runs the registry actor on `records` and returns the time until etcd
/// confirmed every one; the actor is stopped (untimed) afterwards.
async fn agent_register(
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
    let handle = RegistryHandle::spawn(target, Metrics::new(), &tracker);
    let mut status = handle.status();
    status
        .wait_for(|s| s.registered == count)
        .await
        .expect("registry actor stopped");
    let took = start.elapsed();
    handle
        .stop(tokio::time::Instant::now() + Duration::from_secs(30))
        .await;
    took
}

async fn raw_first_registration(etcd: &Etcd, key: &str, value: &str) -> Duration {
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

async fn count_keys(client: &mut Client, prefix: &str) -> i64 {
    client
        .get(
            prefix,
            Some(GetOptions::new().with_prefix().with_count_only()),
        )
        .await
        .map(|r| r.count())
        .unwrap_or(0)
}

/// etcd's own count of LeaseKeepAlive streams opened, from its /metrics.
async fn keepalive_streams_opened(etcd: &Etcd) -> u64 {
    let Some((_, body)) = support::http_get(&etcd.endpoint(), "/metrics").await else {
        return 0;
    };
    body.lines()
        .filter(|l| l.starts_with("grpc_server_started_total") && l.contains("LeaseKeepAlive"))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .map(|v| v as u64)
        .sum()
}

struct Row {
    what: String,
    ours: String,
    baseline: String,
    ratio: String,
    budget: String,
    verdict: &'static str,
}

fn verdict(ok: bool) -> &'static str {
    if ok { "PASS" } else { "MISS" }
}

fn machine() -> String {
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let model = cpuinfo
        .lines()
        .find(|l| l.starts_with("model name"))
        .and_then(|l| l.split(':').nth(1))
        .map(str::trim)
        .unwrap_or("unknown CPU")
        .to_string();
    let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
    let etcd = std::process::Command::new("etcd")
        .arg("--version")
        .output()
        .ok()
        .and_then(|o| String::from_utf8(o.stdout).ok())
        .and_then(|s| s.lines().next().map(str::to_string))
        .unwrap_or_default();
    format!("{model}, {cores} cores; {etcd}; etcd data on tmpfs, loopback")
}

#[tokio::main]
async fn main() {
    println!("ygg-agent benchmark — {}", machine());
    let etcd = Etcd::start().await;
    let mut client = etcd.client().await;
    let mut rows = Vec::new();

    // Warm up both paths once (connection set-up, etcd's first writes).
    raw_first_registration(&etcd, "/warm/raw", "x").await;
    agent_register(
        &etcd,
        "/warm/agent",
        [("/warm/agent/ns/svc/k".to_string(), record(0))].into(),
    )
    .await;

    // 1. First registration: connect, grant a lease, write one record.
    let mut raw = Vec::new();
    let mut ours = Vec::new();
    for trial in 0..FIRST_TRIALS {
        let value = record(trial).value;
        raw.push(raw_first_registration(&etcd, &format!("/raw/first/{trial}"), &value).await);
        let prefix = format!("/agent/first{trial}");
        let key = format!("{prefix}/bench/svc/{trial}");
        ours.push(agent_register(&etcd, &prefix, [(key, record(trial))].into()).await);
    }
    let (raw_med, ours_med) = (median(&mut raw), median(&mut ours));
    let ratio = ours_med.as_secs_f64() / raw_med.as_secs_f64();
    rows.push(Row {
        what: format!(
            "first registration (median of {FIRST_TRIALS}; p90 ours {:?}, raw {:?})",
            p90(&mut ours),
            p90(&mut raw)
        ),
        ours: format!("{ours_med:?}"),
        baseline: format!("{raw_med:?} raw etcd-client connect+grant+put"),
        ratio: format!("{ratio:.2}x"),
        budget: "<= 1.5x raw".into(),
        verdict: verdict(ratio <= 1.5),
    });

    // 2. Many instances: the agent's batched transactions against raw
    // sequential puts on one lease.
    let raw_start = Instant::now();
    let lease = client.lease_grant(60, None).await.unwrap().id();
    for i in 0..MANY {
        client
            .put(
                format!("/raw/many/bench/svc/{i}"),
                record(i).value,
                Some(PutOptions::new().with_lease(lease)),
            )
            .await
            .unwrap();
    }
    let raw_many = raw_start.elapsed();
    client.lease_revoke(lease).await.unwrap();

    let leases_before = client.leases().await.unwrap().leases().len();
    let streams_before = keepalive_streams_opened(&etcd).await;
    let records: BTreeMap<String, DesiredRecord> = (0..MANY)
        .map(|i| (format!("/agent/many/bench/svc/{i:05}"), record(i)))
        .collect();
    let tracker = TaskTracker::new();
    let target = Target {
        config: registry_config(&etcd, "/agent/many"),
        records,
    };
    let start = Instant::now();
    let handle = RegistryHandle::spawn(target, Metrics::new(), &tracker);
    let mut status = handle.status();
    status.wait_for(|s| s.registered == MANY).await.unwrap();
    let ours_many = start.elapsed();
    // Let a few keepalive rounds pass before counting leases and streams.
    tokio::time::sleep(Duration::from_secs(8)).await;
    let leases_used = client.leases().await.unwrap().leases().len() - leases_before;
    let streams_used = keepalive_streams_opened(&etcd).await - streams_before;
    handle
        .stop(tokio::time::Instant::now() + Duration::from_secs(30))
        .await;

    let raw_rate = MANY as f64 / raw_many.as_secs_f64();
    let ours_rate = MANY as f64 / ours_many.as_secs_f64();
    rows.push(Row {
        what: format!("{MANY} instances, in-process"),
        ours: format!("{ours_many:.2?} ({ours_rate:.0}/s)"),
        baseline: format!("{raw_many:.2?} ({raw_rate:.0}/s) raw sequential puts"),
        ratio: format!("{:.1}x rate", ours_rate / raw_rate),
        budget: ">= 2x raw rate".into(),
        verdict: verdict(ours_rate >= 2.0 * raw_rate),
    });
    rows.push(Row {
        what: format!("leases / keepalive streams for {MANY} instances"),
        ours: format!("{leases_used} / {streams_used}"),
        baseline: "raw run: 1 lease, no keepalive".into(),
        ratio: String::new(),
        budget: "1 lease".into(),
        verdict: verdict(leases_used == 1 && streams_used <= 1),
    });

    // 3. The real binary, logging included: process start to all keys in etcd.
    let mut config = ConfigFile::new(etcd.endpoints());
    config.prefix = "/agent/process".into();
    config.instances = support::instances("svc", MANY);
    let start = Instant::now();
    let mut agent = support::Agent::start(&config);
    loop {
        if count_keys(&mut client, "/agent/process/").await as usize == MANY {
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(120),
            "agent process never registered {MANY}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let process_many = start.elapsed();
    agent.signal(libc::SIGTERM);
    agent.wait_exit(Duration::from_secs(60));
    let process_rate = MANY as f64 / process_many.as_secs_f64();
    rows.push(Row {
        what: format!("{MANY} instances, agent process (start, parse, log, write)"),
        ours: format!("{process_many:.2?} ({process_rate:.0}/s)"),
        baseline: format!("{raw_many:.2?} ({raw_rate:.0}/s) raw sequential puts"),
        ratio: format!("{:.1}x rate", process_rate / raw_rate),
        budget: "(context)".into(),
        verdict: "",
    });

    println!();
    println!("| measurement | ygg-agent | baseline (same run) | ratio | budget | |");
    println!("|---|---|---|---|---|---|");
    for row in &rows {
        println!(
            "| {} | {} | {} | {} | {} | {} |",
            row.what, row.ours, row.baseline, row.ratio, row.budget, row.verdict
        );
    }
}
