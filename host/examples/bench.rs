//! The benchmark program (not a test): starts its own etcd and prints, for
//! each measurement, our figure beside a baseline measured in the same run,
//! and the budget it is held to.
//!
//!     ./scripts/bench                 # builds in release, then runs this
//!     ./scripts/bench stall plugins   # only these sections (first, many,
//!                                     # recovery, edits, stall, plugins, checks, idle)
//!     ./scripts/bench --fleet         # 200 agents against a 3-member cluster
//!                                     # (only when asked for: about 2 minutes)
//!
//! Registration figures use the registry actor in-process against raw
//! etcd-client code doing the same writes; the other rows run the real
//! binary and watch etcd from outside.

#[path = "../../tests/integration/big_component.rs"]
mod big_component;
// The benchmark uses only part of the test support.
#[allow(dead_code, unused_imports)]
#[path = "../../tests/integration/support.rs"]
mod support;

use std::collections::BTreeMap;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use etcd_client::{Client, EventType, GetOptions, PutOptions, Txn, TxnOp, WatchOptions};
use support::{Agent, ConfigFile, Etcd};
use tokio_util::task::TaskTracker;
use ygg_agent::config::RegistryConfig;
use ygg_agent::desired::{DesiredRecord, Target};
use ygg_agent::metrics::Metrics;
use ygg_agent::registry::RegistryHandle;

const FIRST_TRIALS: usize = 30;
const MANY: usize = 10_000;
const RECOVERY_INSTANCES: usize = 1_000;
const EDITS: usize = 50;
const KEEPALIVE_WINDOW: Duration = Duration::from_secs(10);
const IDLE_WINDOW: Duration = Duration::from_secs(30);

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

fn percentile(samples: &mut [Duration], p: usize) -> Duration {
    samples.sort();
    samples[(samples.len() * p / 100).min(samples.len() - 1)]
}

struct Row {
    what: String,
    ours: String,
    baseline: String,
    budget: String,
    verdict: &'static str,
}

impl Row {
    fn new(what: impl Into<String>, ours: impl Into<String>, baseline: impl Into<String>) -> Self {
        Row {
            what: what.into(),
            ours: ours.into(),
            baseline: baseline.into(),
            budget: String::new(),
            verdict: "",
        }
    }

    fn budget(mut self, budget: impl Into<String>, met: bool) -> Self {
        self.budget = budget.into();
        self.verdict = if met { "PASS" } else { "MISS" };
        self
    }
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

fn etcdctl(etcd: &Etcd, args: &[&str]) -> String {
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

/// `etcdctl lease grant` + `etcdctl put --lease`: what a shell registrator does.
fn etcdctl_first_registration(etcd: &Etcd, key: &str, value: &str) -> Duration {
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

async fn count_keys(client: &mut Client, prefix: &str) -> usize {
    client
        .get(
            prefix,
            Some(GetOptions::new().with_prefix().with_count_only()),
        )
        .await
        .map_or(0, |r| r.count() as usize)
}

/// A counter from etcd's own /metrics (summed over label sets).
async fn etcd_counter(etcd: &Etcd, name: &str, method: &str) -> f64 {
    let Some((_, body)) = support::http_get(&etcd.endpoint(), "/metrics").await else {
        return 0.0;
    };
    body.lines()
        .filter(|l| l.starts_with(name) && l.contains(&format!("grpc_method=\"{method}\"")))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

async fn first_registration(etcd: &Etcd, rows: &mut Vec<Row>) {
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

/// The seed's strategy: every instance registered on its own, each with its
/// own lease and keepalive stream (renewed at TTL/3 by a task of its own).
async fn seed_strategy(etcd: &Etcd, tracker: &TaskTracker) -> (Duration, Vec<i64>) {
    let client = Client::connect(etcd.endpoints(), None).await.unwrap();
    let start = Instant::now();
    let mut leases = Vec::with_capacity(MANY);
    for i in 0..MANY {
        let mut client = client.clone();
        let lease = client.lease_grant(10, None).await.unwrap().id();
        client
            .put(
                format!("/seed/many/bench/svc/{i}"),
                record(i).value,
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

/// The floor: what any client needs to write `keys` on one lease against
/// this etcd. A fresh connection, a lease grant, then transactions of 128
/// puts (etcd's default limit), one after the other.
async fn floor_writes(etcd: &Etcd, keys: &[(String, String)]) -> Duration {
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

async fn many_instances(etcd: &Etcd, rows: &mut Vec<Row>) {
    let mut client = etcd.client().await;

    // Raw sequential puts on one lease.
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

    // The floor: the same keys in transactions of 128 puts on one lease.
    let floor_keys: Vec<(String, String)> = (0..MANY)
        .map(|i| (format!("/floor/many/bench/svc/{i:05}"), record(i).value))
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
    let handle = RegistryHandle::spawn(Some(target), Metrics::new(), &tracker);
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

async fn recovery(rows: &mut Vec<Row>) {
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
            .put(format!("/floor/{i}"), record(i).value, None)
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

/// Waits for a PUT of `key` whose value contains `marker`.
async fn wait_put(stream: &mut etcd_client::WatchStream, key: &str, marker: &str) {
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

fn replace_atomically(path: &Path, text: &str) {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, text).unwrap();
    std::fs::rename(&tmp, path).unwrap();
}

async fn edits_and_drop_ins(etcd: &Etcd, rows: &mut Vec<Row>) {
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
            .put(format!("/floor/put/{i}"), record(i).value, None)
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

/// Admin requests every 10 ms until `stop`; their latencies.
async fn poll_admin(admin: String, stop: tokio::sync::watch::Receiver<bool>) -> Vec<Duration> {
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
fn sighup_latencies(log: &str) -> Vec<Duration> {
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
async fn probe_loop(
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
async fn stall_during_compile(etcd: &Etcd, rows: &mut Vec<Row>) {
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

fn plugin_costs(rows: &mut Vec<Row>) {
    let echo = support::built_plugins().join("echo.wasm");
    let (code, stdout, stderr) = support::run_cli(&[
        "plugin",
        "check",
        echo.to_str().unwrap(),
        "--calls",
        "20001",
    ]);
    assert_eq!(code, 0, "{stderr}");
    let field = |prefix: &str, name: &str| -> Duration {
        let line = stdout
            .lines()
            .find(|l| l.trim_start().starts_with(prefix))
            .expect(prefix);
        let text = line
            .split(name)
            .nth(1)
            .unwrap()
            .trim_start()
            .split([',', ' '])
            .next()
            .unwrap();
        parse_debug_duration(text)
    };
    let compile = field("timings:", "compile");
    let cache = field("timings:", "load from cache");
    let median = field("warm collect:", "median");
    let p99 = field("warm collect:", "p99");
    // The same work natively: build the output map the echo plugin returns.
    let native = {
        let start = Instant::now();
        let mut sink = 0;
        for _ in 0..20_000 {
            let mut out = BTreeMap::new();
            out.insert(
                "echo_instance".to_string(),
                std::hint::black_box("example-registry-server").to_string(),
            );
            sink += out.len();
        }
        std::hint::black_box(sink);
        start.elapsed() / 20_000
    };
    rows.push(
        Row::new(
            "plugin warm collect (echo), per call, 20,000 calls",
            format!("median {median:.2?}, p99 {p99:.2?}"),
            format!("the same output built natively {native:.2?}"),
        )
        .budget(
            "<= 10 µs host overhead",
            median.saturating_sub(native) <= Duration::from_micros(10),
        ),
    );
    let ratio = cache.as_secs_f64() / compile.as_secs_f64();
    rows.push(
        Row::new(
            "plugin load from the compile cache (echo)",
            format!("{cache:.2?}"),
            format!("cold compile {compile:.1?}"),
        )
        .budget(
            format!("<= 1/10 of cold (is 1/{:.0})", 1.0 / ratio),
            ratio <= 0.1,
        ),
    );
}

/// Parses what `{:?}` prints for a Duration: `12.3µs`, `4.5ms`, `1.2s`.
fn parse_debug_duration(text: &str) -> Duration {
    let split = text
        .find(|c: char| c.is_alphabetic() || c == 'µ')
        .unwrap_or(text.len());
    let (number, unit) = text.split_at(split);
    let value: f64 = number.parse().unwrap_or(0.0);
    let seconds = match unit {
        "ns" => value / 1e9,
        "µs" | "us" => value / 1e6,
        "ms" => value / 1e3,
        _ => value,
    };
    Duration::from_secs_f64(seconds)
}

/// (RSS in MiB, CPU seconds) of a process, from /proc.
fn usage(pid: u32) -> (f64, f64) {
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

/// Waits for a delete (`put == false`) or a put of a key under `prefix`.
async fn wait_event(stream: &mut etcd_client::WatchStream, put: bool) {
    loop {
        let response = tokio::time::timeout(Duration::from_secs(60), stream.message())
            .await
            .expect("no change reached etcd in 60 s")
            .unwrap()
            .unwrap();
        let wanted = if put {
            EventType::Put
        } else {
            EventType::Delete
        };
        if response.events().iter().any(|e| e.event_type() == wanted) {
            return;
        }
    }
}

/// Health checks: how fast a killed service's key goes and comes back,
/// and what 1,000 checks at a 1 s interval cost.
async fn health_checks(etcd: &Etcd, rows: &mut Vec<Row>) {
    const KILLS: usize = 20;
    let (interval, timeout, failures) =
        (Duration::from_millis(500), Duration::from_millis(200), 3u32);
    let port = support::free_port();
    let mut config = ConfigFile::new(etcd.endpoints());
    config.prefix = "/checks/one".into();
    config.instances = format!(
        "    - name: svc\n      version: \"1\"\n      endpoints: [{{scheme: grpc, address: \"127.0.0.1:{port}\"}}]\n      checks:\n        - tcp: ~\n"
    );
    config.agent_extra = format!(
        "  checks: {{interval: {}ms, timeout: {}ms, failuresBeforeCritical: {failures}}}\n",
        interval.as_millis(),
        timeout.as_millis()
    );
    let mut server = support::accept_and_drop(port).await;
    let _agent = Agent::start(&config);
    let mut client = etcd.client().await;
    while count_keys(&mut client, "/checks/one/").await < 1 {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let mut watch = client
        .watch("/checks/one/", Some(WatchOptions::new().with_prefix()))
        .await
        .unwrap();
    let (mut gone, mut back) = (Vec::new(), Vec::new());
    for _ in 0..KILLS {
        let killed = Instant::now();
        server.abort();
        let _ = server.await;
        wait_event(&mut watch, false).await;
        gone.push(killed.elapsed());
        let started = Instant::now();
        server = support::accept_and_drop(port).await;
        wait_event(&mut watch, true).await;
        back.push(started.elapsed());
    }
    server.abort();
    let gone_bound = interval * failures + timeout + Duration::from_secs(1);
    let back_bound = interval + Duration::from_secs(1);
    let (gone_p50, gone_p99) = (percentile(&mut gone, 50), percentile(&mut gone, 99));
    let (back_p50, back_p99) = (percentile(&mut back, 50), percentile(&mut back, 99));
    rows.push(
        Row::new(
            format!(
                "service killed -> its key gone, {KILLS} kills (tcp check every {interval:?}, timeout {timeout:?}, {failures} failures)"
            ),
            format!("p50 {} ms, p99 {} ms", gone_p50.as_millis(), gone_p99.as_millis()),
            format!("bound interval x failures + timeout + 1 s = {gone_bound:?}"),
        )
        .budget(format!("p99 <= {gone_bound:?}"), gone_p99 <= gone_bound),
    );
    rows.push(
        Row::new(
            format!("service back -> its key back, {KILLS} restarts"),
            format!(
                "p50 {} ms, p99 {} ms",
                back_p50.as_millis(),
                back_p99.as_millis()
            ),
            format!("bound interval x successBeforePassing + 1 s = {back_bound:?}"),
        )
        .budget(format!("p99 <= {back_bound:?}"), back_p99 <= back_bound),
    );

    // 1,000 instances, each with a tcp check every second, against one
    // listener; beside the same instances without checks.
    const N: usize = 1000;
    let target = support::free_port();
    let _listener = support::accept_and_drop(target).await;
    let instances = |checks: bool| -> String {
        (0..N)
            .map(|i| {
                let check = if checks {
                    format!("      checks: [{{tcp: \"127.0.0.1:{target}\"}}]\n")
                } else {
                    String::new()
                };
                format!(
                    "    - name: many\n      version: \"1\"\n      endpoints: [{{scheme: grpc, address: \"10.0.0.1:{}\"}}]\n{check}",
                    20000 + i
                )
            })
            .collect()
    };
    let mut checked = ConfigFile::new(etcd.endpoints());
    checked.prefix = "/checks/many".into();
    checked.instances = instances(true);
    checked.agent_extra =
        "  checks: {interval: 1s, timeout: 500ms, initialStatus: passing}\n".into();
    let mut bare = checked.clone();
    bare.prefix = "/checks/bare".into();
    bare.instances = instances(false);
    bare.agent_extra = String::new();
    let checked_agent = Agent::start(&checked);
    let bare_agent = Agent::start(&bare);
    while count_keys(&mut client, "/checks/many/").await < N
        || count_keys(&mut client, "/checks/bare/").await < N
    {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // Let the first runs (spread over the first second) settle.
    tokio::time::sleep(Duration::from_secs(3)).await;
    const WINDOW: Duration = Duration::from_secs(20);
    let pids = [checked_agent.pid(), bare_agent.pid()];
    let before: Vec<(f64, f64)> = pids.iter().map(|p| usage(*p)).collect();
    tokio::time::sleep(WINDOW).await;
    let after: Vec<(f64, f64)> = pids.iter().map(|p| usage(*p)).collect();
    let cpu = |i: usize| (after[i].1 - before[i].1) / WINDOW.as_secs_f64() * 100.0;
    let still = count_keys(&mut client, "/checks/many/").await;
    rows.push(
        Row::new(
            format!(
                "{N} instances, each with a tcp check every 1 s ({still} registered): RSS / CPU"
            ),
            format!("{:.1} MiB / {:.2}%", after[0].0, cpu(0)),
            format!(
                "the same {N} instances without checks: {:.1} MiB / {:.2}%",
                after[1].0,
                cpu(1)
            ),
        )
        .budget(
            "RSS <= 60 MB, CPU <= 5% of a core",
            after[0].0 * 1.048_576 <= 60.0 && cpu(0) <= 5.0,
        ),
    );
}

async fn idle_footprint(etcd: &Etcd, rows: &mut Vec<Row>) {
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

/// 200 agent processes with 5 instances each (TTL 10 s, retryInterval 3 s)
/// against a 3-member cluster; every member killed for 5 s and started
/// again, with its data and then wiped.
async fn fleet(rows: &mut Vec<Row>) {
    const AGENTS: usize = 200;
    const PER_AGENT: usize = 5;
    let retry_interval = Duration::from_secs(3);
    let mut etcd = Etcd::start_cluster(3).await;
    let fleet = support::Fleet::start(etcd.endpoints(), AGENTS, PER_AGENT, "10s", "3s");
    let registered = fleet.wait_registered(&etcd, Duration::from_secs(300)).await;
    eprintln!(
        "bench: fleet registered {} keys in {registered:.2?}",
        fleet.keys()
    );
    tokio::time::sleep(Duration::from_secs(10)).await;
    let rss = fleet.rss_mib();
    let budget = retry_interval + Duration::from_secs(1);
    for wipe in [false, true] {
        let what = if wipe { "wiped" } else { "with their data" };
        let recovery = fleet
            .outage(
                &mut etcd,
                Duration::from_secs(5),
                wipe,
                Duration::from_secs(120),
            )
            .await;
        let mut contact: Vec<Duration> = recovery.first_contact.iter().flatten().copied().collect();
        println!(
            "\nfleet, members restarted {what}: each agent's first successful request after the cluster answered ({} of {AGENTS} agents; keepalive reopened or lease granted):\n{}",
            contact.len(),
            support::histogram(&contact, Duration::from_millis(250))
        );
        let spread = if contact.is_empty() {
            "no agent logged one".to_string()
        } else {
            format!(
                "p10 {:.0?}, p50 {:.0?}, p90 {:.0?}, max {:.0?} ({} agents)",
                percentile(&mut contact, 10),
                percentile(&mut contact, 50),
                percentile(&mut contact, 90),
                percentile(&mut contact, 100),
                contact.len()
            )
        };
        rows.push(
            Row::new(
                format!(
                    "fleet: {AGENTS} agents x {PER_AGENT} instances, all 3 members killed 5 s and restarted {what}: {} keys back (from the cluster answering {:.0?} after the restart)",
                    fleet.keys(),
                    recovery.answered_after
                ),
                format!("{:.2?}", recovery.all_back),
                format!(
                    "agents' first request after: {spread}; etcd peak {:.0} requests/s (3 members)",
                    recovery.peak_requests_per_s
                ),
            )
            .budget(
                format!("<= retryInterval + 1 s = {budget:?}"),
                recovery.all_back <= budget,
            ),
        );
    }
    let mean = rss.iter().sum::<f64>() / rss.len() as f64;
    let max = rss.iter().copied().fold(0.0, f64::max);
    rows.push(Row::new(
        format!("fleet: agent RSS, each of {AGENTS} (5 instances, no plugins)"),
        format!("mean {mean:.1} MiB, max {max:.1} MiB"),
        format!("{:.0} MiB for the fleet", rss.iter().sum::<f64>()),
    ));
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
    let etcd = Command::new("etcd")
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
    // `./scripts/bench [SECTION...]` runs only the sections named.
    // `--fleet` (or `fleet`) runs the fleet, which no default run includes.
    let only: Vec<String> = std::env::args()
        .skip(1)
        .map(|a| a.trim_start_matches("--").to_string())
        .collect();
    let wanted = |section: &str| {
        (only.is_empty() && section != "fleet") || only.iter().any(|o| o == section)
    };
    println!("ygg-agent benchmark — {}", machine());
    let etcd = Etcd::start().await;
    let mut rows = Vec::new();
    if wanted("first") {
        eprintln!("bench: first registration");
        first_registration(&etcd, &mut rows).await;
    }
    if wanted("many") {
        eprintln!("bench: {MANY} instances (about 40 s)");
        many_instances(&etcd, &mut rows).await;
    }
    if wanted("recovery") {
        eprintln!("bench: recovery after a wiped etcd");
        recovery(&mut rows).await;
    }
    if wanted("edits") {
        eprintln!("bench: config edits and plugin drop-ins");
        edits_and_drop_ins(&etcd, &mut rows).await;
    }
    if wanted("stall") {
        eprintln!("bench: the event loop during a cold compile");
        stall_during_compile(&etcd, &mut rows).await;
    }
    if wanted("plugins") {
        eprintln!("bench: plugin call and load costs");
        plugin_costs(&mut rows);
    }
    if wanted("checks") {
        eprintln!("bench: health checks (about 2 minutes)");
        health_checks(&etcd, &mut rows).await;
    }
    if wanted("fleet") {
        eprintln!("bench: a fleet of 200 agents (about 2 minutes)");
        fleet(&mut rows).await;
    }
    if wanted("idle") {
        eprintln!("bench: idle footprint ({IDLE_WINDOW:?})");
        idle_footprint(&etcd, &mut rows).await;
    }

    println!();
    println!("| measurement | ygg-agent | baseline (same run) | budget | |");
    println!("|---|---|---|---|---|");
    for row in &rows {
        println!(
            "| {} | {} | {} | {} | {} |",
            row.what, row.ours, row.baseline, row.budget, row.verdict
        );
    }
}
