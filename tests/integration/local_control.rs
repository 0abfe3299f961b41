//! Local control against a real etcd (#12): drain on SIGTERM, and control
//! characters in registry data never reaching the operator's terminal.

use std::time::{Duration, Instant};

use crate::support::*;

const PREFIX: &str = "/yggdrasil/registry/";

/// `agent.drainDelay`: on SIGTERM every key goes first while the lease
/// stays alive, and the agent exits (revoking the lease) only `drainDelay`
/// after the deletes.
#[tokio::test]
async fn sigterm_with_drain_delay_deletes_keys_first_and_exits_that_much_later() {
    let etcd = Etcd::start().await;
    let mut config = ConfigFile::new(etcd.endpoints());
    config.instances = format!("{SEED_INSTANCE}{}", instances("other", 2));
    config.agent_extra = "  drainDelay: 3s\n".into();
    let mut agent = Agent::start(&config);
    let endpoints = etcd.endpoints();
    wait_for(PATIENCE, "3 keys", || {
        let endpoints = endpoints.clone();
        async move {
            try_entries(&endpoints, PREFIX)
                .await
                .filter(|e| e.len() == 3)
        }
    })
    .await;

    agent.signal(libc::SIGTERM);
    let (_, took) = wait_for(Duration::from_secs(5), "keys deleted", || {
        let endpoints = endpoints.clone();
        async move {
            try_entries(&endpoints, PREFIX)
                .await
                .filter(|e| e.is_empty())
        }
    })
    .await;
    let keys_gone = Instant::now();
    println!("keys deleted {took:?} after SIGTERM");
    // Still running, and still holding its lease: only the keys went.
    let mut client = etcd.client().await;
    assert_eq!(leases(&mut client).await.len(), 1, "lease revoked early");
    assert!(!agent.log().contains("agent stopped"), "{}", agent.log());

    let (status, _) = agent.wait_exit(Duration::from_secs(15));
    let drained = keys_gone.elapsed();
    assert_eq!(status.code(), Some(0), "log:\n{}", agent.log());
    // The keys were gone at `keys_gone` at the latest, so the exit came at
    // least the whole delay after the deletes (less the poll's slack).
    assert!(
        drained >= Duration::from_millis(2800),
        "exited {drained:?} after the keys went, drainDelay is 3s"
    );
    assert!(leases(&mut client).await.is_empty(), "lease not revoked");
    // The agent's own clock agrees: from the confirmed deletes to the stop.
    let log = agent.log();
    let time_of = |needle: &str| {
        log.lines()
            .find(|l| l.contains(needle))
            .and_then(log_time)
            .unwrap_or_else(|| panic!("no {needle:?} in the log:\n{log}"))
    };
    let waited = time_of("agent stopped") - time_of("drain: every key deleted");
    assert!(waited >= 3.0, "waited {waited}s between deletes and exit");
}

/// A second signal during the drain exits at once.
#[tokio::test]
async fn a_second_signal_during_the_drain_exits_at_once() {
    let etcd = Etcd::start().await;
    let mut config = ConfigFile::new(etcd.endpoints());
    config.agent_extra = "  drainDelay: 60s\n".into();
    let mut agent = Agent::start(&config);
    agent
        .wait_for_log("instance registered successfully", PATIENCE)
        .await;
    agent.signal(libc::SIGTERM);
    agent
        .wait_for_log("drain: every key deleted", PATIENCE)
        .await;
    agent.signal(libc::SIGTERM);
    let (status, took) = agent.wait_exit(Duration::from_secs(5));
    assert_eq!(status.code(), Some(1), "log:\n{}", agent.log());
    assert!(took < Duration::from_secs(2), "took {took:?}");
}

/// Anyone who can write a record under the prefix must not be able to
/// drive the operator's terminal through `ygg-agent list`.
#[tokio::test]
async fn list_escapes_control_characters_from_etcd() {
    let etcd = Etcd::start().await;
    let mut client = etcd.client().await;
    let record = serde_json::json!({
        "namespace": "default",
        "name": "\u{1b}]0;pwned\u{7}",
        "version": "1",
        "endpoints": [{"scheme": "http", "address": "\u{1b}[2J"}],
    });
    client
        .put(
            format!("{PREFIX}default/evil\u{1b}[31m/abc"),
            record.to_string(),
            None,
        )
        .await
        .unwrap();
    client
        .put(format!("{PREFIX}default/bad\u{7}/def"), "not json", None)
        .await
        .unwrap();
    let (code, stdout, stderr) = run_cli(&["list", "--endpoints", &etcd.endpoint()]);
    assert_eq!(code, 0, "{stderr}");
    for output in [&stdout, &stderr] {
        assert!(
            !output.contains('\u{1b}') && !output.contains('\u{7}'),
            "raw control characters in {output:?}"
        );
    }
    assert!(stdout.contains("\\u{1b}]0;pwned\\u{7}"), "{stdout}");
    assert!(stdout.contains("http://\\u{1b}[2J"), "{stdout}");
    assert!(stderr.contains("bad\\u{7}/def"), "{stderr}");
}
