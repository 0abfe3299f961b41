//! `api`: local API registrations, beside raw etcd puts of the same records.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use etcd_client::{Client, EventType, PutOptions, WatchOptions};

use crate::common::*;
use crate::support::{Agent, ConfigFile, Etcd};

pub(crate) const API_TRIALS: usize = 200;

pub(crate) const API_SUSTAINED: usize = 1_000;

pub(crate) const API_CLIENTS: usize = 8;

/// Every PUT under `prefix`, with when the watch saw it, until `count`
/// keys were seen (or `limit` passed).
pub(crate) fn watch_puts(
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

pub(crate) fn api_body(i: usize) -> Vec<u8> {
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
pub(crate) async fn api_registrations(etcd: &Etcd, rows: &mut Vec<Row>) {
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
    // CPU seconds of the agent, the clients (this process) and etcd.
    let cpu = || {
        [
            usage(agent.pid()).1,
            usage(std::process::id()).1,
            usage(etcd.members[0].pid()).1,
        ]
    };
    let cpu_before = cpu();
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
    let ours_cpu: Vec<f64> = cpu().iter().zip(cpu_before).map(|(a, b)| a - b).collect();
    let cpu_before = cpu();

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
    let raw_cpu: Vec<f64> = cpu().iter().zip(cpu_before).map(|(a, b)| a - b).collect();
    let ms = |s: f64| format!("{:.0} ms", s * 1000.0);
    rows.push(
        Row::new(
            format!("API registrations per second, {API_SUSTAINED} from {API_CLIENTS} clients (agent ends holding {})", API_TRIALS + API_SUSTAINED),
            format!(
                "{ours_rate:.0}/s (all answered in {answered:.2?}, all in etcd after {ours:.2?}; CPU: agent {}, clients {}, etcd {})",
                ms(ours_cpu[0]), ms(ours_cpu[1]), ms(ours_cpu[2])
            ),
            format!(
                "raw etcd puts, {API_CLIENTS} writers: {raw_rate:.0}/s (CPU: writers {}, etcd {})",
                ms(raw_cpu[1]), ms(raw_cpu[2])
            ),
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
