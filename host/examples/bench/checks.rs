//! `checks`: health checks, how fast a key goes and comes back, and their cost.

use std::time::{Duration, Instant};

use etcd_client::{EventType, WatchOptions};

use crate::common::*;
use crate::support::{self, Agent, ConfigFile, Etcd};

/// Waits for a delete (`put == false`) or a put of a key under `prefix`.
pub(crate) async fn wait_event(stream: &mut etcd_client::WatchStream, put: bool) {
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
pub(crate) async fn health_checks(etcd: &Etcd, rows: &mut Vec<Row>) {
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
