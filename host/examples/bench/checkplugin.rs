//! `checkplugin`: a check plugin call against a local redis.

use std::collections::BTreeMap;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use tokio_util::task::TaskTracker;

use crate::common::*;
use crate::support::{self};

pub(crate) const CHECK_PLUGIN_CALLS: usize = 2_000;

/// Median and p99 of `calls` runs of `run`, each timed alone.
pub(crate) async fn time_calls<F, Fut>(calls: usize, mut run: F) -> (Duration, Duration)
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
pub(crate) async fn check_plugin_call(rows: &mut Vec<Row>) {
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
