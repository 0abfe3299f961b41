//! The benchmark program (not a test): starts its own etcd and prints, for
//! each measurement, our figure beside a baseline measured in the same run,
//! and the budget it is held to.
//!
//!     ./scripts/bench                 # builds in release, then runs this
//!     ./scripts/bench stall plugins   # only these sections (first, many,
//!                                     # recovery, edits, stall, plugins,
//!                                     # polyglot, checks, checkplugin, idle, api)
//!     ./scripts/bench watchers        # 10 minutes; only when named
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
use ygg_agent::desired::{DesiredRecord, RecordKind, Target};
use ygg_agent::metrics::Metrics;
use ygg_agent::registry::RegistryHandle;

const FIRST_TRIALS: usize = 30;
const MANY: usize = 10_000;
const RECOVERY_INSTANCES: usize = 1_000;
const EDITS: usize = 50;
const KEEPALIVE_WINDOW: Duration = Duration::from_secs(10);
const IDLE_WINDOW: Duration = Duration::from_secs(30);
const WATCH_WINDOW: Duration = Duration::from_secs(600);
const API_TRIALS: usize = 200;
const API_SUSTAINED: usize = 1_000;
const API_CLIENTS: usize = 8;

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
        kind: RecordKind::Instance,
        source: i as u64,
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
    let handle = RegistryHandle::spawn(
        Some(target),
        Metrics::new(),
        &tracker,
        tokio_util::sync::CancellationToken::new(),
    );
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

/// What `ygg-agent plugin check` measured of one plugin.
struct CheckFigures {
    compile: Duration,
    cache: Duration,
    median: Duration,
    p99: Duration,
    /// The instance's linear memory peak, in MiB.
    memory_mib: f64,
}

/// Runs `ygg-agent plugin check FILE --calls CALLS [--config CONFIG]`.
fn check_figures(file: &Path, config: Option<&Path>, calls: usize) -> CheckFigures {
    let calls = calls.to_string();
    let mut args = vec!["plugin", "check", file.to_str().unwrap(), "--calls", &calls];
    if let Some(config) = config {
        args.extend(["--config", config.to_str().unwrap()]);
    }
    let (code, stdout, stderr) = support::run_cli(&args);
    assert_eq!(code, 0, "{stderr}");
    let text_of = |prefix: &str, name: &str| -> String {
        let line = stdout
            .lines()
            .find(|l| l.trim_start().starts_with(prefix))
            .expect(prefix);
        line.split(name)
            .nth(1)
            .unwrap()
            .trim_start()
            .split([',', ' '])
            .next()
            .unwrap()
            .to_string()
    };
    let field = |prefix: &str, name: &str| parse_debug_duration(&text_of(prefix, name));
    CheckFigures {
        compile: field("timings:", "compile"),
        cache: field("timings:", "load from cache"),
        median: field("warm collect:", "median"),
        p99: field("warm collect:", "p99"),
        memory_mib: text_of("memory:", "linear memory peak")
            .parse()
            .unwrap_or(0.0),
    }
}

fn plugin_costs(rows: &mut Vec<Row>) {
    let echo = support::built_plugins().join("echo.wasm");
    let CheckFigures {
        compile,
        cache,
        median,
        p99,
        ..
    } = check_figures(&echo, None, 20_001);
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

/// Python and JavaScript plugins beside the Rust echo plugin: file size,
/// cold compile, load from the compile cache, warm call and linear memory
/// (from `plugin check`), and the RSS one such plugin adds to a running
/// agent, after its cold compile and after a restart that loads it from
/// the cache.
async fn polyglot_costs(etcd: &Etcd, rows: &mut Vec<Row>) {
    let polyglot = support::built_polyglot_plugins();
    let plugins = [
        ("Rust", "echo", support::built_plugins().join("echo.wasm")),
        (
            "Python",
            "python-example",
            polyglot.join("python-example.wasm"),
        ),
        ("JavaScript", "js-example", polyglot.join("js-example.wasm")),
    ];
    let settings = "    settings:\n      js-example: {owner: bench}\n      echo: {value: x}\n";
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir(dir.path().join("plugins")).unwrap();
    let config_path = dir.path().join("agent.yaml");
    std::fs::write(&config_path, format!("agent:\n  plugins:\n{settings}")).unwrap();

    let mut figures = Vec::new();
    for (_, name, file) in &plugins {
        eprintln!("bench: plugin check {name}");
        figures.push(check_figures(file, Some(&config_path), 2_001));
    }

    // RSS: an agent with no plugin beside one agent per plugin, all at once.
    let mut bare = ConfigFile::new(etcd.endpoints());
    bare.prefix = "/polyglot/bare".into();
    let bare_agent = Agent::start(&bare);
    let mut agents = Vec::new();
    for (_, name, file) in &plugins {
        let mut config = bare.clone();
        config.prefix = format!("/polyglot/{name}");
        config.agent_extra =
            format!("  plugins:\n    dir: plugins\n    cacheDir: cache\n{settings}");
        let mut agent = Agent::prepare(&config);
        std::fs::copy(file, agent.plugins_dir().join(format!("{name}.wasm"))).unwrap();
        agent.spawn(&[]);
        agents.push(agent);
    }
    let settle = Duration::from_secs(5);
    let wait_loaded = async |agents: &[Agent], count: usize| {
        for agent in agents {
            agent
                .wait_for_log_count("plugin loaded", count, Duration::from_secs(300))
                .await;
        }
        tokio::time::sleep(settle).await;
    };
    wait_loaded(&agents, 1).await;
    let bare_rss = usage(bare_agent.pid()).0;
    let after_compile: Vec<f64> = agents.iter().map(|a| usage(a.pid()).0).collect();
    // Restarted: the plugin comes from the compile cache.
    for agent in &mut agents {
        agent.signal(libc::SIGTERM);
        agent.wait_exit(Duration::from_secs(30));
        agent.spawn(&[]);
    }
    wait_loaded(&agents, 2).await;
    let from_cache: Vec<f64> = agents.iter().map(|a| usage(a.pid()).0).collect();

    let rust = &figures[0];
    for (i, (language, name, file)) in plugins.iter().enumerate().skip(1) {
        let f = &figures[i];
        let size = std::fs::metadata(file).unwrap().len() as f64 / 1e6;
        let ratio = f.cache.as_secs_f64() / f.compile.as_secs_f64();
        rows.push(
            Row::new(
                format!("{language} plugin ({name}, {size:.1} MB): load from the compile cache"),
                format!("{:.2?}", f.cache),
                format!(
                    "its cold compile {:.1?}; Rust echo: cache {:.2?}, cold {:.1?}",
                    f.compile, rust.cache, rust.compile
                ),
            )
            .budget(
                format!("<= 1/10 of cold (is 1/{:.0})", 1.0 / ratio),
                ratio <= 0.1,
            ),
        );
        rows.push(Row::new(
            format!(
                "{language} plugin ({name}): warm collect per call, 2,000 calls; linear memory"
            ),
            format!(
                "median {:.2?}, p99 {:.2?}; {:.1} MiB",
                f.median, f.p99, f.memory_mib
            ),
            format!(
                "Rust echo median {:.2?}, p99 {:.2?}; {:.1} MiB",
                rust.median, rust.p99, rust.memory_mib
            ),
        ));
        rows.push(Row::new(
            format!("{language} plugin ({name}): RSS added to the agent, loaded from the cache (after its cold compile)"),
            format!(
                "+{:.1} MiB (+{:.1} MiB)",
                from_cache[i] - bare_rss,
                after_compile[i] - bare_rss
            ),
            format!(
                "agent with no plugin {bare_rss:.1} MiB; Rust echo +{:.1} MiB (+{:.1} MiB)",
                from_cache[0] - bare_rss,
                after_compile[0] - bare_rss
            ),
        ));
    }
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

/// `minRewriteInterval` seen from the callers' side: one service of 100
/// instances with the heartbeat plugin (a new value every 30 s round), and
/// 10 watchers that read the way Yggdrasil's v3 resolver does
/// (`modules/etcd/discovery/resolver.go` at 2159f4b: every watch response
/// kicks a `Get` of the whole service prefix; kicks that arrive during a
/// `Get` coalesce into one). Three agents run side by side, each on its own
/// prefix: `minRewriteInterval` unset (the baseline: today's behaviour),
/// 30 s and 5 min. Counted over `WATCH_WINDOW` after registration: puts
/// etcd applied, and values the watchers read.
async fn watchers(etcd: &Etcd, rows: &mut Vec<Row>) {
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

const CHECK_PLUGIN_CALLS: usize = 2_000;

/// Median and p99 of `calls` runs of `run`, each timed alone.
async fn time_calls<F, Fut>(calls: usize, mut run: F) -> (Duration, Duration)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = ()>,
{
    let mut samples = Vec::with_capacity(calls);
    for _ in 0..calls {
        let start = Instant::now();
        run().await;
        samples.push(start.elapsed());
    }
    (percentile(&mut samples, 50), percentile(&mut samples, 99))
}

/// A check plugin call (`redis_check`: a fresh instance, connect, PING,
/// +PONG) against a local `redis-server`, beside the built-in `tcp` check
/// of the same server and the same PING written in plain Rust.
async fn check_plugin_call(rows: &mut Vec<Row>) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use ygg_agent::checks::Prober;
    use ygg_agent::config::Probe;
    use ygg_agent::plugins::{self, CheckPlugins, Limits};

    let port = support::free_port();
    let mut redis = Command::new("redis-server")
        .args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
        .args(["--save", "", "--appendonly", "no"])
        .stdout(Stdio::null())
        .spawn()
        .expect("redis-server (scripts/ensure-deps installs it)");
    let address = format!("127.0.0.1:{port}");
    support::wait_for(support::PATIENCE, "redis-server", || async {
        tokio::net::TcpStream::connect(&address).await.ok()
    })
    .await;

    let file = support::built_plugins().join("redis_check.wasm");
    let limits = Limits {
        timeout: Duration::from_secs(1),
        memory: 32 << 20,
    };
    let plugin = plugins::load_check_plugin(&file, Vec::new(), limits)
        .await
        .expect("load redis_check");
    let map: CheckPlugins =
        std::sync::Arc::new(BTreeMap::from([("redis_check".to_string(), plugin)]));
    let (_keep, checks) = tokio::sync::watch::channel(map);
    let prober = Prober::new(TaskTracker::new(), checks);
    let instance = ygg_agent::record::Instance {
        namespace: "bench".into(),
        name: "cache".into(),
        version: "7".into(),
        region: String::new(),
        zone: String::new(),
        campus: String::new(),
        metadata: BTreeMap::new(),
        endpoints: Vec::new(),
    };
    let by_plugin = Probe::Plugin {
        plugin: "redis_check".into(),
        targets: vec![address.clone()],
        settings: BTreeMap::new(),
        instance: Box::new(instance),
    };
    let tcp = Probe::Tcp {
        address: address.clone(),
    };
    let timeout = Duration::from_secs(1);
    let probe = |probe: &Probe| {
        let (prober, probe) = (prober.clone(), probe.clone());
        async move {
            let output = prober.probe(&probe, timeout).await;
            assert!(output.is_ok(), "{output:?}");
        }
    };
    // Warm up: the first calls fault in the compiled code and the stacks.
    for _ in 0..50 {
        probe(&by_plugin).await;
    }
    let (plugin_median, plugin_p99) = time_calls(CHECK_PLUGIN_CALLS, || probe(&by_plugin)).await;
    let (tcp_median, _) = time_calls(CHECK_PLUGIN_CALLS, || probe(&tcp)).await;
    let (native_median, native_p99) = time_calls(CHECK_PLUGIN_CALLS, || async {
        let mut stream = tokio::net::TcpStream::connect(&address).await.unwrap();
        stream.write_all(b"*1\r\n$4\r\nPING\r\n").await.unwrap();
        let mut reply = [0u8; 7];
        stream.read_exact(&mut reply).await.unwrap();
        assert_eq!(&reply, b"+PONG\r\n");
    })
    .await;
    let _ = redis.kill();
    let _ = redis.wait();

    let overhead = plugin_median.saturating_sub(native_median);
    rows.push(
        Row::new(
            format!("check plugin call (redis_check: fresh instance, connect, PING -> +PONG, local redis), {CHECK_PLUGIN_CALLS} calls"),
            format!("median {plugin_median:.0?}, p99 {plugin_p99:.0?}"),
            format!(
                "native Rust RESP PING (connect, PING, +PONG) median {native_median:.0?}, p99 {native_p99:.0?}; built-in tcp check (connect only) median {tcp_median:.0?}"
            ),
        )
        .budget(
            format!("<= 1 ms over native (is {overhead:.0?})"),
            overhead <= Duration::from_millis(1),
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
    if wanted("polyglot") {
        eprintln!("bench: Python and JavaScript plugins (about 2 minutes)");
        polyglot_costs(&etcd, &mut rows).await;
    }
    if wanted("checks") {
        eprintln!("bench: health checks (about 2 minutes)");
        health_checks(&etcd, &mut rows).await;
    }
    // Ten minutes: run only when named.
    if only.iter().any(|o| o == "watchers") {
        eprintln!("bench: minRewriteInterval and Yggdrasil-style watchers ({WATCH_WINDOW:?})");
        watchers(&etcd, &mut rows).await;
    }
    if wanted("checkplugin") {
        eprintln!("bench: a check plugin call against a local redis");
        check_plugin_call(&mut rows).await;
    }
    if wanted("fleet") {
        eprintln!("bench: a fleet of 200 agents (about 2 minutes)");
        fleet(&mut rows).await;
    }
    if wanted("idle") {
        eprintln!("bench: idle footprint ({IDLE_WINDOW:?})");
        idle_footprint(&etcd, &mut rows).await;
    }

    if wanted("api") {
        eprintln!(
            "bench: local API registrations ({API_TRIALS} one by one, then {API_SUSTAINED} from {API_CLIENTS} clients)"
        );
        api_registrations(&etcd, &mut rows).await;
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

/// Every PUT under `prefix`, with when the watch saw it, until `count`
/// keys were seen (or `limit` passed).
fn watch_puts(
    etcd: &Etcd,
    prefix: &str,
) -> tokio::sync::mpsc::UnboundedReceiver<(String, Instant)> {
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
    let (endpoints, prefix) = (etcd.endpoints(), prefix.to_string());
    let (ready_tx, ready_rx) = std::sync::mpsc::channel();
    tokio::spawn(async move {
        let mut client = Client::connect(endpoints, None).await.unwrap();
        let mut stream = client
            .watch(prefix, Some(WatchOptions::new().with_prefix()))
            .await
            .unwrap();
        let _ = ready_tx.send(());
        while let Ok(Some(response)) = stream.message().await {
            let now = Instant::now();
            for event in response.events() {
                if event.event_type() == EventType::Put
                    && let Some(kv) = event.kv()
                    && tx
                        .send((kv.key_str().unwrap_or_default().to_string(), now))
                        .is_err()
                {
                    return;
                }
            }
        }
    });
    let _ = ready_rx.recv_timeout(Duration::from_secs(10));
    rx
}

/// Waits until the watch has seen `key` and returns when it did.
async fn seen(
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

fn api_body(i: usize) -> Vec<u8> {
    serde_json::json!({
        "namespace": "bench", "name": "api", "version": "1.0.0",
        "metadata": {"env": "dev", "pod": format!("pod-{i:010}")},
        "endpoints": [{"scheme": "grpc", "address": format!("10.1.{}.{}:54321", i / 256 % 256, i % 256)}],
    })
    .to_string()
    .into_bytes()
}

/// Local API: one registration → its key in etcd (p50/p99), and 1,000
/// registrations from several clients per second, beside raw etcd puts of
/// the same records measured the same way (a watch on the prefix).
async fn api_registrations(etcd: &Etcd, rows: &mut Vec<Row>) {
    use ygg_agent::api::client::call;
    let mut config = ConfigFile::new(etcd.endpoints());
    config.instances = String::new();
    config.prefix = "/api-bench".into();
    let mut agent = Agent::prepare(&config);
    let socket = agent.dir.path().join("agent.sock");
    config.agent_extra = format!(
        "  stateDir: {}\n  api:\n    socket: {}\n",
        agent.dir.path().join("state").display(),
        socket.display()
    );
    agent.rewrite_config(&config);
    agent.spawn(&[]);
    agent
        .wait_for_log("agent started", Duration::from_secs(30))
        .await;

    // One at a time: request sent → the watch sees the key.
    let mut puts = watch_puts(etcd, "/api-bench/");
    let mut earlier = BTreeMap::new();
    let mut ours = Vec::new();
    for i in 0..API_TRIALS {
        let start = Instant::now();
        let (status, answer) = call(
            &socket,
            "PUT",
            &format!("/v1/instances/lat-{i}"),
            Some(api_body(i)),
        )
        .await
        .expect("the agent answers");
        assert_eq!(status, 200, "{answer}");
        let key = answer["key"].as_str().unwrap().to_string();
        ours.push(seen(&mut puts, &mut earlier, &key).await - start);
    }
    let mut raw = Vec::new();
    let mut client = Client::connect(etcd.endpoints(), None).await.unwrap();
    let lease = client.lease_grant(10, None).await.unwrap().id();
    let mut raw_puts = watch_puts(etcd, "/raw-api/");
    let mut raw_earlier = BTreeMap::new();
    for i in 0..API_TRIALS {
        let key = format!("/raw-api/bench/api/{i}");
        let start = Instant::now();
        client
            .put(
                key.as_str(),
                api_body(i),
                Some(PutOptions::new().with_lease(lease)),
            )
            .await
            .unwrap();
        raw.push(seen(&mut raw_puts, &mut raw_earlier, &key).await - start);
    }
    let (ours50, ours99) = (percentile(&mut ours, 50), percentile(&mut ours, 99));
    let (raw50, raw99) = (percentile(&mut raw, 50), percentile(&mut raw, 99));
    rows.push(
        Row::new(
            format!("API register → key in etcd, {API_TRIALS} one by one (socket, validate, supervisor, registry actor)"),
            format!("p50 {ours50:.2?}, p99 {ours99:.2?}"),
            format!("raw etcd put → watch: p50 {raw50:.2?}, p99 {raw99:.2?}"),
        )
        .budget(
            format!("p99 <= 5 ms (is {:.2} ms)", ours99.as_secs_f64() * 1000.0),
            ours99 <= Duration::from_millis(5),
        ),
    );

    // Sustained: API_SUSTAINED more from API_CLIENTS clients at once, until
    // the last key is in etcd (the agent then holds API_TRIALS + that).
    let start = Instant::now();
    let mut clients = Vec::new();
    for c in 0..API_CLIENTS {
        let socket = socket.clone();
        clients.push(tokio::spawn(async move {
            let mut keys = Vec::new();
            for i in (c..API_SUSTAINED).step_by(API_CLIENTS) {
                let (status, answer) = call(
                    &socket,
                    "PUT",
                    &format!("/v1/instances/many-{i}"),
                    Some(api_body(API_TRIALS + i)),
                )
                .await
                .expect("the agent answers");
                assert_eq!(status, 200, "{answer}");
                keys.push(answer["key"].as_str().unwrap().to_string());
            }
            keys
        }));
    }
    let mut keys = Vec::new();
    for client in clients {
        keys.extend(client.await.unwrap());
    }
    let answered = start.elapsed();
    let mut last = start;
    for key in &keys {
        last = last.max(seen(&mut puts, &mut earlier, key).await);
    }
    let ours = last - start;
    let ours_rate = API_SUSTAINED as f64 / ours.as_secs_f64();

    let start = Instant::now();
    let mut writers = Vec::new();
    for c in 0..API_CLIENTS {
        let mut client = client.clone();
        writers.push(tokio::spawn(async move {
            for i in (c..API_SUSTAINED).step_by(API_CLIENTS) {
                client
                    .put(
                        format!("/raw-api/many/{i}"),
                        api_body(API_TRIALS + i),
                        Some(PutOptions::new().with_lease(lease)),
                    )
                    .await
                    .unwrap();
            }
        }));
    }
    for writer in writers {
        writer.await.unwrap();
    }
    let mut raw_last = start;
    for i in 0..API_SUSTAINED {
        raw_last = raw_last.max(
            seen(
                &mut raw_puts,
                &mut raw_earlier,
                &format!("/raw-api/many/{i}"),
            )
            .await,
        );
    }
    let raw_rate = API_SUSTAINED as f64 / (raw_last - start).as_secs_f64();
    rows.push(
        Row::new(
            format!("API registrations per second, {API_SUSTAINED} from {API_CLIENTS} clients (agent ends holding {})", API_TRIALS + API_SUSTAINED),
            format!("{ours_rate:.0}/s (all answered in {answered:.2?}, all in etcd after {ours:.2?})"),
            format!("raw etcd puts, {API_CLIENTS} writers: {raw_rate:.0}/s"),
        )
        .budget(
            format!(">= 0.5x raw (is {:.2}x)", ours_rate / raw_rate),
            ours_rate >= 0.5 * raw_rate,
        ),
    );
    client.lease_revoke(lease).await.unwrap();
    agent.signal(libc::SIGTERM);
    agent.wait_exit(Duration::from_secs(30));
}
