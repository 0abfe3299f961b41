//! Shared by the benchmark modes: the table row, the sample record, percentiles, etcd and process probes.

use std::collections::BTreeMap;
use std::process::Command;
use std::time::{Duration, Instant};

use etcd_client::{Client, GetOptions, PutOptions, Txn, TxnOp};
use ygg_agent::config::RegistryConfig;
use ygg_agent::desired::{DesiredRecord, RecordKind};

use crate::support::Etcd;

pub(crate) const RECOVERY_INSTANCES: usize = 1_000;

/// A record roughly the size of the seed's.
pub(crate) fn record(i: usize) -> DesiredRecord {
    DesiredRecord {
        value: format!(
            r#"{{"namespace":"bench","name":"svc","version":"1.0.0","region":"us-west","zone":"us-west-1","campus":"campus-a","metadata":{{"env":"dev","pod":"pod-{i:010}"}},"endpoints":[{{"scheme":"grpc","address":"10.0.{}.{}:54321","metadata":null}}]}}"#,
            i / 256 % 256,
            i % 256
        )
        .into(),
        service: "bench/svc/1.0.0".into(),
        endpoints: vec![format!("grpc://10.0.0.1:{i}")].into(),
        kind: RecordKind::Instance,
        source: i as u64,
    }
}

pub(crate) fn registry_config(etcd: &Etcd, prefix: &str) -> RegistryConfig {
    let mut config = RegistryConfig::default();
    config.client.endpoints = etcd.endpoints();
    config.prefix = prefix.to_string();
    config
}

pub(crate) fn percentile(samples: &mut [Duration], p: usize) -> Duration {
    samples.sort();
    samples[(samples.len() * p / 100).min(samples.len() - 1)]
}

pub(crate) struct Row {
    pub(crate) what: String,
    pub(crate) ours: String,
    pub(crate) baseline: String,
    pub(crate) budget: String,
    pub(crate) verdict: &'static str,
}

impl Row {
    pub(crate) fn new(
        what: impl Into<String>,
        ours: impl Into<String>,
        baseline: impl Into<String>,
    ) -> Self {
        Row {
            what: what.into(),
            ours: ours.into(),
            baseline: baseline.into(),
            budget: String::new(),
            verdict: "",
        }
    }

    pub(crate) fn budget(mut self, budget: impl Into<String>, met: bool) -> Self {
        self.budget = budget.into();
        self.verdict = if met { "PASS" } else { "MISS" };
        self
    }
}

pub(crate) fn etcdctl(etcd: &Etcd, args: &[&str]) -> String {
    let output = Command::new("etcdctl")
        .env("ETCDCTL_API", "3")
        .arg(format!("--endpoints={}", etcd.endpoint()))
        .args(args)
        .output()
        .expect("etcdctl");
    assert!(
        output.status.success(),
        "etcdctl {args:?}: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8_lossy(&output.stdout).into_owned()
}

pub(crate) async fn count_keys(client: &mut Client, prefix: &str) -> usize {
    client
        .get(
            prefix,
            Some(GetOptions::new().with_prefix().with_count_only()),
        )
        .await
        .map_or(0, |r| r.count() as usize)
}

/// The floor: what any client needs to write `keys` on one lease against
/// this etcd. A fresh connection, a lease grant, then transactions of 128
/// puts (etcd's default limit), one after the other.
pub(crate) async fn floor_writes(etcd: &Etcd, keys: &[(String, String)]) -> Duration {
    let start = Instant::now();
    let mut client = Client::connect(etcd.endpoints(), None).await.unwrap();
    let lease = client.lease_grant(60, None).await.unwrap().id();
    for chunk in keys.chunks(128) {
        let ops: Vec<TxnOp> = chunk
            .iter()
            .map(|(key, value)| {
                TxnOp::put(
                    key.as_str(),
                    value.as_str(),
                    Some(PutOptions::new().with_lease(lease)),
                )
            })
            .collect();
        client.txn(Txn::new().and_then(ops)).await.unwrap();
    }
    let took = start.elapsed();
    client.lease_revoke(lease).await.unwrap();
    took
}

/// (RSS in MiB, CPU seconds) of a process, from /proc.
pub(crate) fn usage(pid: u32) -> (f64, f64) {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let rss_kib: f64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap_or(0.0);
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // Fields after the command name (which may contain spaces).
    let after = stat.rsplit_once(')').map_or("", |(_, rest)| rest);
    let fields: Vec<&str> = after.split_whitespace().collect();
    let ticks: f64 = fields
        .get(11)
        .and_then(|v| v.parse::<f64>().ok())
        .unwrap_or(0.0)
        + fields
            .get(12)
            .and_then(|v| v.parse::<f64>().ok())
            .unwrap_or(0.0);
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64;
    (rss_kib / 1024.0, ticks / hz)
}

/// Waits until the watch has seen `key` and returns when it did.
pub(crate) async fn seen(
    puts: &mut tokio::sync::mpsc::UnboundedReceiver<(String, Instant)>,
    earlier: &mut BTreeMap<String, Instant>,
    key: &str,
) -> Instant {
    loop {
        if let Some(at) = earlier.remove(key) {
            return at;
        }
        let (k, at) = tokio::time::timeout(Duration::from_secs(30), puts.recv())
            .await
            .expect("no put within 30 s")
            .expect("watch ended");
        earlier.insert(k, at);
    }
}

pub(crate) fn machine() -> String {
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let model = cpuinfo
        .lines()
        .find(|l| l.starts_with("model name"))
        .and_then(|l| l.split(':').nth(1))
        .map(str::trim)
        .unwrap_or("unknown CPU")
        .to_string();
    let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
    let etcd = Command::new("etcd")
        .arg("--version")
        .output()
        .ok()
        .and_then(|o| String::from_utf8(o.stdout).ok())
        .and_then(|s| s.lines().next().map(str::to_string))
        .unwrap_or_default();
    format!("{model}, {cores} cores; {etcd}; etcd data on tmpfs, loopback")
}
