//! Registration core against a real etcd: what lands, how it is held, how it
//! comes back after etcd failures, and how it goes away on stop.

use std::time::Duration;

use crate::support::*;

/// The bound the agent promises after etcd comes back: retryInterval (1 s in
/// these tests) plus one second.
const RECOVERY: Duration = Duration::from_secs(2);

#[tokio::test]
async fn registers_the_seed_instance_exactly_as_specified() {
    let etcd = Etcd::start().await;
    let agent = Agent::start(&ConfigFile::new(etcd.endpoints()));
    let entries = wait_leased_keys(&etcd, 1).await;
    let entry = &entries[SEED_KEY];
    assert_eq!(entry.value, SEED_VALUE);
    let mut client = etcd.client().await;
    let ttl = client.lease_time_to_live(entry.lease, None).await.unwrap();
    assert!(ttl.ttl() > 0 && ttl.granted_ttl() == 4, "{ttl:?}");
    // The seed's log lines, per instance.
    agent
        .wait_for_log("instance registered successfully", PATIENCE)
        .await;
    let log = agent.log();
    for line in [
        "service: default/example-registry-server/1.0.0",
        "endpoints: 2",
        "  - grpc://127.0.0.1:54321",
        "  - http://127.0.0.1:54321",
    ] {
        assert!(log.contains(line), "log lacks {line:?}:\n{log}");
    }
}

#[tokio::test]
async fn a_trailing_slash_prefix_registers_where_a_go_app_with_it_looks() {
    // Yggdrasil's Go registry writes `prefix + "/" + namespace + …` with the
    // prefix as configured: `/yggdrasil/registry/` gives a double slash.
    let etcd = Etcd::start().await;
    let mut config = ConfigFile::new(etcd.endpoints());
    config.prefix = "/yggdrasil/registry/".into();
    let agent = Agent::start(&config);
    let entries = wait_leased_keys(&etcd, 1).await;
    let key = SEED_KEY.replace("/yggdrasil/registry/", "/yggdrasil/registry//");
    assert_eq!(entries.keys().collect::<Vec<_>>(), [&key]);
    assert_eq!(entries[&key].value, SEED_VALUE);
    agent
        .wait_for_log("`/yggdrasil/registry/` ends with `/`", PATIENCE)
        .await;
    // `list --prefix` takes the prefix as written too.
    let endpoints = etcd.endpoints().join(",");
    let (code, stdout, stderr) = run_cli(&[
        "list",
        "--endpoints",
        &endpoints,
        "--prefix",
        "/yggdrasil/registry/",
        "--namespace",
        "default",
        "--json",
    ]);
    assert_eq!(code, 0, "{stderr}");
    assert!(stdout.contains(&key), "{stdout}");
}

#[tokio::test]
async fn instances_share_one_lease_and_stay_without_rewrites() {
    let etcd = Etcd::start().await;
    let mut config = ConfigFile::new(etcd.endpoints());
    config.ttl = "2s";
    config.instances = format!("{SEED_INSTANCE}{}", instances("other", 4));
    let _agent = Agent::start(&config);
    let first = wait_leased_keys(&etcd, 5).await;
    let mut client = etcd.client().await;
    assert_eq!(
        leases(&mut client).await.len(),
        1,
        "one lease for the whole agent"
    );
    let lease = first.values().next().unwrap().lease;
    assert!(first.values().all(|e| e.lease == lease));

    // Three TTLs later: same keys, same lease, and not one write since.
    tokio::time::sleep(Duration::from_secs(7)).await;
    let later = entries(&mut client, PREFIX).await;
    assert_eq!(
        later, first,
        "keys were rewritten or lost while nothing changed"
    );
    assert!(client.lease_time_to_live(lease, None).await.unwrap().ttl() > 0);
    assert_eq!(leases(&mut client).await, vec![lease]);
}

#[tokio::test]
async fn survives_etcd_kill9_and_restart() {
    let mut etcd = Etcd::start().await;
    let _agent = Agent::start(&ConfigFile::new(etcd.endpoints()));
    let before = wait_leased_keys(&etcd, 1).await;
    etcd.kill9();
    tokio::time::sleep(Duration::from_secs(2)).await;
    etcd.restart().await;
    let endpoints = etcd.endpoints();
    let (after, took) = wait_for(RECOVERY, "keys after restart", || {
        let endpoints = endpoints.clone();
        async move {
            try_entries(&endpoints, PREFIX)
                .await
                .filter(|e| e.len() == 1)
        }
    })
    .await;
    println!("registration present {took:?} after etcd came back");
    assert_eq!(after[SEED_KEY].value, SEED_VALUE);
    // etcd keeps leases across a restart (and extends them), so the agent
    // just renews the one it has: two more TTLs later the key is the very
    // one written before the crash (same revisions, same lease), and that
    // lease is the only one and alive.
    tokio::time::sleep(Duration::from_secs(8)).await;
    let mut client = etcd.client().await;
    let later = entries(&mut client, PREFIX).await;
    assert_eq!(
        later, before,
        "the key was rewritten or moved to another lease across the restart"
    );
    let lease = before[SEED_KEY].lease;
    assert_eq!(
        leases(&mut client).await,
        vec![lease],
        "the agent granted a new lease instead of renewing its own"
    );
    assert!(
        client.lease_time_to_live(lease, None).await.unwrap().ttl() > 0,
        "the lease is no longer renewed"
    );
}

#[tokio::test]
async fn comes_back_after_etcd_is_wiped() {
    let mut etcd = Etcd::start().await;
    let agent = Agent::start(&ConfigFile::new(etcd.endpoints()));
    let before = wait_leased_keys(&etcd, 1).await;
    etcd.wipe_and_restart().await;
    let endpoints = etcd.endpoints();
    let (after, took) = wait_for(RECOVERY, "keys after the wipe", || {
        let endpoints = endpoints.clone();
        async move {
            try_entries(&endpoints, PREFIX)
                .await
                .filter(|e| e.len() == 1)
        }
    })
    .await;
    println!("registration back {took:?} after a wiped etcd came up");
    assert_eq!(after[SEED_KEY].value, SEED_VALUE);
    assert_ne!(
        after[SEED_KEY].lease, before[SEED_KEY].lease,
        "a new lease was granted"
    );
    let mut client = etcd.client().await;
    assert_eq!(leases(&mut client).await, vec![after[SEED_KEY].lease]);
    agent.wait_for_log("lease lost", PATIENCE).await;
}

#[tokio::test]
async fn a_deleted_or_overwritten_key_is_put_back() {
    let etcd = Etcd::start().await;
    let _agent = Agent::start(&ConfigFile::new(etcd.endpoints()));
    wait_leased_keys(&etcd, 1).await;
    let mut client = etcd.client().await;

    client.delete(SEED_KEY, None).await.unwrap();
    let endpoints = etcd.endpoints();
    let (_, took) = wait_for(RECOVERY, "deleted key put back", || {
        let endpoints = endpoints.clone();
        async move {
            try_entries(&endpoints, PREFIX)
                .await
                .filter(|e| e.contains_key(SEED_KEY))
        }
    })
    .await;
    println!("deleted key back after {took:?}");

    client
        .put(SEED_KEY, r#"{"name":"impostor"}"#, None)
        .await
        .unwrap();
    let (restored, took) = wait_for(RECOVERY, "overwritten key restored", || {
        let endpoints = endpoints.clone();
        async move {
            try_entries(&endpoints, PREFIX).await.filter(|e| {
                e.get(SEED_KEY)
                    .is_some_and(|v| v.value == SEED_VALUE && v.lease != 0)
            })
        }
    })
    .await;
    println!("overwritten key restored after {took:?}");
    assert_eq!(restored[SEED_KEY].value, SEED_VALUE);
}

#[tokio::test]
async fn sigterm_deletes_keys_revokes_the_lease_and_exits_zero() {
    let etcd = Etcd::start().await;
    let mut config = ConfigFile::new(etcd.endpoints());
    config.instances = format!("{SEED_INSTANCE}{}", instances("other", 2));
    let mut agent = Agent::start(&config);
    wait_leased_keys(&etcd, 3).await;
    agent.signal(libc::SIGTERM);
    let (status, took) = agent.wait_exit(Duration::from_secs(10));
    assert_eq!(status.code(), Some(0), "log:\n{}", agent.log());
    assert!(
        took < Duration::from_secs(5),
        "took {took:?}, beyond shutdownTimeout"
    );
    let mut client = etcd.client().await;
    assert!(
        entries(&mut client, PREFIX).await.is_empty(),
        "keys left after stop"
    );
    assert!(leases(&mut client).await.is_empty(), "lease not revoked");
    let log = agent.log();
    assert!(
        log.contains("instance deregistered") && log.contains("lease revoked"),
        "{log}"
    );
}

#[tokio::test]
async fn registers_once_etcd_comes_up() {
    // Reserve ports, start the agent against nothing, then start etcd there.
    let mut etcd = Etcd::start().await;
    etcd.kill9();
    let agent = Agent::start(&ConfigFile::new(etcd.endpoints()));
    agent.wait_for_log("retrying", PATIENCE).await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    etcd.restart().await;
    let endpoints = etcd.endpoints();
    let (entries, took) = wait_for(RECOVERY, "registration once etcd is up", || {
        let endpoints = endpoints.clone();
        async move {
            try_entries(&endpoints, PREFIX)
                .await
                .filter(|e| e.len() == 1)
        }
    })
    .await;
    println!("registered {took:?} after etcd came up");
    assert_eq!(entries[SEED_KEY].value, SEED_VALUE);
}

/// `keepAlive: false` still puts the key on a lease (of `ttl`, never
/// renewed; its expiry after a kill is `lifecycle::keep_alive_false_…`),
/// and a graceful stop deletes it and revokes the lease.
#[tokio::test]
async fn keep_alive_false_writes_on_a_lease_and_deletes_on_stop() {
    let etcd = Etcd::start().await;
    let mut config = ConfigFile::new(etcd.endpoints());
    config.keep_alive = false;
    let mut agent = Agent::start(&config);
    let endpoints = etcd.endpoints();
    let (entries_now, _) = wait_for(PATIENCE, "the key", || {
        let endpoints = endpoints.clone();
        async move {
            try_entries(&endpoints, PREFIX)
                .await
                .filter(|e| e.len() == 1)
        }
    })
    .await;
    let lease = entries_now[SEED_KEY].lease;
    assert_ne!(lease, 0, "keepAlive: false wrote the key on no lease");
    let mut client = etcd.client().await;
    assert_eq!(leases(&mut client).await, vec![lease]);

    agent.signal(libc::SIGTERM);
    let (status, _) = agent.wait_exit(Duration::from_secs(10));
    assert_eq!(status.code(), Some(0));
    assert!(entries(&mut client, PREFIX).await.is_empty());
    assert!(leases(&mut client).await.is_empty(), "lease not revoked");
}

/// A stop held by a hung etcd (the graceful stop itself, bounded by
/// shutdownTimeout, is `faults::sigterm_with_etcd_paused_…`): a second
/// signal cuts the wait short and exits 1 at once.
#[tokio::test]
async fn a_second_signal_during_a_stop_held_by_a_hung_etcd_exits_at_once() {
    let etcd = Etcd::start().await;
    let mut config = ConfigFile::new(etcd.endpoints());
    config.shutdown_timeout = "3s";
    let mut agent = Agent::start(&config);
    wait_leased_keys(&etcd, 1).await;
    etcd.pause();
    agent.signal(libc::SIGTERM);
    // The second signal must arrive once the agent is stopping, not before
    // it took the first one.
    agent
        .wait_for_log("stopping (send the signal again", PATIENCE)
        .await;
    agent.signal(libc::SIGINT);
    let (status, took) = agent.wait_exit(Duration::from_secs(10));
    etcd.resume();
    assert_eq!(status.code(), Some(1), "log:\n{}", agent.log());
    assert!(took < Duration::from_secs(2), "second signal took {took:?}");
    assert!(agent.log().contains("second signal"));
}

#[tokio::test]
async fn a_pause_longer_than_the_ttl_loses_the_lease_and_the_agent_recovers() {
    let etcd = Etcd::start().await;
    let mut config = ConfigFile::new(etcd.endpoints());
    config.ttl = "2s";
    let agent = Agent::start(&config);
    let before = wait_leased_keys(&etcd, 1).await;
    etcd.pause();
    tokio::time::sleep(Duration::from_secs(5)).await;
    etcd.resume();
    let endpoints = etcd.endpoints();
    // Once etcd notices the expired lease and the agent notices the loss,
    // the key is back on a new lease.
    let (after, took) = wait_for(Duration::from_secs(10), "key on a new lease", || {
        let endpoints = endpoints.clone();
        let old = before[SEED_KEY].lease;
        async move {
            try_entries(&endpoints, PREFIX).await.filter(|e| {
                e.get(SEED_KEY)
                    .is_some_and(|v| v.lease != old && v.lease != 0)
            })
        }
    })
    .await;
    println!("back on a new lease {took:?} after the pause ended");
    assert_eq!(after[SEED_KEY].value, SEED_VALUE);
    agent.wait_for_log("lease lost", PATIENCE).await;
}

#[tokio::test]
async fn a_killed_agent_leaves_keys_to_expire_and_a_restart_reuses_them() {
    let etcd = Etcd::start().await;
    let mut config = ConfigFile::new(etcd.endpoints());
    config.ttl = "2s";
    config.instances = format!("{SEED_INSTANCE}{}", instances("other", 2));
    let mut agent = Agent::start(&config);
    let first = wait_leased_keys(&etcd, 3).await;

    // Killed at once: nothing deregisters, the lease expires the keys.
    agent.kill9();
    let took = wait_prefix_empty(&etcd, PREFIX, Duration::from_secs(6), "keys expired").await;
    println!("keys expired {took:?} after the agent was killed (ttl 2s)");

    // Restarted: the same keys come back, and nothing else.
    agent.spawn(&[]);
    let second = wait_leased_keys(&etcd, 3).await;
    assert_eq!(
        second.keys().collect::<Vec<_>>(),
        first.keys().collect::<Vec<_>>()
    );

    // Killed and restarted before the old lease expires: still one key per
    // instance, on the new lease, after the old lease is gone.
    agent.kill9();
    agent.spawn(&[]);
    agent
        .wait_for_log_count("instance registered successfully", 9, PATIENCE)
        .await;
    let mut client = etcd.client().await;
    let (lease, _) = wait_for(PATIENCE, "the old lease expired", || {
        let mut client = client.clone();
        async move {
            let leases = leases(&mut client).await;
            (leases.len() == 1).then(|| leases[0])
        }
    })
    .await;
    let third = entries(&mut client, PREFIX).await;
    assert!(third.values().all(|e| e.lease == lease), "{third:?}");
    assert_eq!(
        third.keys().collect::<Vec<_>>(),
        first.keys().collect::<Vec<_>>(),
        "duplicates or losses"
    );
    assert_eq!(leases(&mut client).await.len(), 1);
}
