//! The agent's own lifecycle never causes a gap or a ghost (issue 21):
//! `keepAlive: false` still puts every key on a lease; a restart adopts the
//! lease its predecessor recorded in the state folder; the agent watches
//! its own keys and puts back what someone else deleted at once.
//!
//! An etcd watch on the prefix (`Deletes`) counts DELETE events: callers see
//! a DELETE as the instance gone, so "no gap" here means zero of them.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use etcd_client::{EventType, WatchOptions};

use crate::support::faults::{
    ETCD_EXPIRY_CHECK, SLACK, assert_every_key_on_a_live_lease, ms, report, seed_expected, start,
};
use crate::support::observer::Status;
use crate::support::*;

/// Counts the DELETE and PUT events under the prefix, from a watch opened
/// before the test's action.
struct Events {
    deletes: Arc<AtomicU64>,
    puts: Arc<AtomicU64>,
    task: tokio::task::JoinHandle<()>,
}

impl Events {
    async fn watch(etcd: &Etcd) -> Events {
        let mut client = etcd.client().await;
        let mut stream = client
            .watch(PREFIX, Some(WatchOptions::new().with_prefix()))
            .await
            .expect("watch the prefix");
        // The first answer says the watch exists: no event is missed after.
        let created = stream.message().await.expect("watch created");
        assert!(created.is_some_and(|r| r.created()), "watch not created");
        let deletes = Arc::new(AtomicU64::new(0));
        let puts = Arc::new(AtomicU64::new(0));
        let (d, p) = (deletes.clone(), puts.clone());
        let task = tokio::spawn(async move {
            while let Ok(Some(response)) = stream.message().await {
                for event in response.events() {
                    match event.event_type() {
                        EventType::Delete => d.fetch_add(1, Ordering::SeqCst),
                        EventType::Put => p.fetch_add(1, Ordering::SeqCst),
                    };
                }
            }
        });
        Events {
            deletes,
            puts,
            task,
        }
    }

    fn deletes(&self) -> u64 {
        self.deletes.load(Ordering::SeqCst)
    }

    fn puts(&self) -> u64 {
        self.puts.load(Ordering::SeqCst)
    }
}

impl Drop for Events {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// `keepAlive: false` (Yggdrasil Go's `putOnce`): the key is on a lease of
/// `ttl` that nobody renews. While the agent runs, it moves the keys to a
/// new lease before the old one ends (no gap, no DELETE); killed with -9,
/// its key is gone within `ttl` (before: written on no lease, it stayed
/// forever).
#[tokio::test]
async fn keep_alive_false_puts_keys_on_a_lease_that_ends_with_the_agent() {
    let etcd = Etcd::start().await;
    let mut config = ConfigFile::new(etcd.endpoints());
    config.keep_alive = false;
    config.ttl = "3s";
    let ttl = Duration::from_secs(3);
    let expected = seed_expected();
    let events = Events::watch(&etcd).await;
    let (mut agent, observer) = start(&etcd, &config, &expected).await;
    let mut client = etcd.client().await;
    let first = entries(&mut client, PREFIX).await[SEED_KEY].lease;
    assert_ne!(first, 0, "keepAlive: false wrote the key on no lease");
    assert_every_key_on_a_live_lease(&mut client).await;

    // Three TTLs: the first lease has ended long since; the key stayed.
    let t_ride = Instant::now();
    tokio::time::sleep(ttl * 3).await;
    let w = observer.window_from(t_ride);
    assert!(w.is_clean(), "gap while the agent ran: {:?}", w.still_bad);
    assert_eq!(events.deletes(), 0, "a DELETE while the agent ran");
    let now = entries(&mut client, PREFIX).await[SEED_KEY].lease;
    assert_ne!(now, first, "the key is still on its first lease");
    assert_every_key_on_a_live_lease(&mut client).await;
    assert_eq!(leases(&mut client).await.len(), 1, "old leases left alive");

    let t_kill = Instant::now();
    agent.kill9();
    observer
        .wait_until(PATIENCE, "the key expired", |o| {
            o.statuses()[SEED_KEY] == Status::Missing
        })
        .await;
    let gone = t_kill.elapsed();
    let bound = ttl + ETCD_EXPIRY_CHECK + SLACK;
    report(
        "keepalive-false-sigkill-expiry",
        gone,
        bound,
        "time from SIGKILL until the key written with keepAlive: false was gone",
    );
    assert!(
        gone <= bound,
        "gone after {}, bound {}",
        ms(gone),
        ms(bound)
    );
    assert!(entries(&mut client, PREFIX).await.is_empty());
    let _ = events.puts();
}

/// The last revision of every key under the prefix.
async fn revisions(client: &mut etcd_client::Client) -> BTreeMap<String, i64> {
    entries(client, PREFIX)
        .await
        .into_iter()
        .map(|(k, e)| (k, e.mod_revision))
        .collect()
}

/// A config of the seed instance and two others, its state folder in `state`.
fn adopting_config(etcd: &Etcd, state: &std::path::Path) -> (ConfigFile, BTreeMap<String, String>) {
    let mut config = ConfigFile::new(etcd.endpoints());
    config.instances = format!("{SEED_INSTANCE}{}", instances("other", 2));
    config.agent_extra = format!("  stateDir: {}\n", state.display());
    let mut expected = seed_expected();
    expected.extend(crate::support::faults::instances_expected("other", 2));
    (config, expected)
}

/// Waits until the agent's lease record names a lease and `keys` keys.
async fn wait_recorded(state: &std::path::Path, keys: usize) -> serde_json::Value {
    let file = state.join("registry.json");
    let (record, _) = wait_for(PATIENCE, "the lease record", || {
        let file = file.clone();
        async move {
            let record: serde_json::Value =
                serde_json::from_slice(&std::fs::read(&file).ok()?).ok()?;
            (record["keys"].as_object()?.len() == keys).then_some(record)
        }
    })
    .await;
    record
}

/// kill -9 (OOM killer, crash) and a restart within the TTL: the new
/// process adopts the recorded lease. No DELETE, no rewrite of an unchanged
/// key, no second lease at any moment, and the old lease kept alive after
/// its TTL.
#[tokio::test]
async fn a_restart_within_the_ttl_adopts_the_lease_without_a_delete() {
    let etcd = Etcd::start().await;
    let state = tempfile::tempdir().unwrap();
    let (config, expected) = adopting_config(&etcd, state.path());
    let events = Events::watch(&etcd).await;
    let (mut agent, observer) = start(&etcd, &config, &expected).await;
    let mut client = etcd.client().await;
    let before = revisions(&mut client).await;
    let lease = entries(&mut client, PREFIX).await[SEED_KEY].lease;
    let record = wait_recorded(state.path(), 3).await;
    assert_eq!(record["lease"], lease);
    let puts = events.puts();

    let t_kill = Instant::now();
    agent.kill9();
    agent.spawn(&[]);
    let t_spawn = Instant::now();
    agent
        .wait_for_log("adopted the lease of the previous process", PATIENCE)
        .await;
    let adopted = t_spawn.elapsed();
    // One lease at every look, from the restart until past the old TTL.
    while t_spawn.elapsed() < Duration::from_secs(4) + Duration::from_secs(2) {
        assert_eq!(leases(&mut client).await, vec![lease], "a second lease");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let w = observer.window_from(t_kill);
    report(
        "agent-sigkill-restart-adopts",
        adopted,
        Duration::from_secs(1),
        &format!(
            "time from the restart until the lease was adopted; {} DELETE, {} PUT after the kill, {}",
            events.deletes(),
            events.puts() - puts,
            crate::support::faults::describe(&w)
        ),
    );
    assert_eq!(events.deletes(), 0, "a DELETE across the restart");
    assert_eq!(events.puts(), puts, "unchanged keys were rewritten");
    assert!(
        w.is_clean(),
        "gap: {}",
        crate::support::faults::describe(&w)
    );
    assert_eq!(revisions(&mut client).await, before);
    assert_eq!(
        agent.log().matches("lease granted").count(),
        1,
        "a second lease granted"
    );
    crate::support::faults::assert_exactly(&etcd, &expected).await;
    assert_every_key_on_a_live_lease(&mut client).await;
}

/// A restart with an instance removed from the config: its key is deleted
/// at once (not left on the adopted lease, which never expires now), the
/// others are untouched.
#[tokio::test]
async fn a_restart_deletes_at_once_what_the_new_config_dropped() {
    let etcd = Etcd::start().await;
    let state = tempfile::tempdir().unwrap();
    let (config, expected) = adopting_config(&etcd, state.path());
    let (mut agent, _observer) = start(&etcd, &config, &expected).await;
    let mut client = etcd.client().await;
    wait_recorded(state.path(), 3).await;
    let before = revisions(&mut client).await;
    let events = Events::watch(&etcd).await;

    agent.kill9();
    let mut smaller = config.clone();
    smaller.instances = SEED_INSTANCE.into();
    agent.rewrite_config(&smaller);
    let t_spawn = Instant::now();
    agent.spawn(&[]);
    let (_, took) = wait_for(PATIENCE, "the dropped keys deleted", || {
        let mut client = client.clone();
        async move { (entries(&mut client, PREFIX).await.len() == 1).then_some(()) }
    })
    .await;
    let deleted = t_spawn.elapsed();
    report(
        "agent-restart-drops-removed",
        deleted,
        Duration::from_secs(2),
        &format!(
            "time from the restart until the 2 removed instances' keys were deleted (poll {})",
            ms(took)
        ),
    );
    assert!(deleted <= Duration::from_secs(2), "{}", ms(deleted));
    assert_eq!(events.deletes(), 2);
    assert_eq!(
        revisions(&mut client).await[SEED_KEY],
        before[SEED_KEY],
        "the kept key was rewritten"
    );
    crate::support::faults::assert_exactly(&etcd, &seed_expected()).await;
    assert_every_key_on_a_live_lease(&mut client).await;
}

/// SIGTERM keeps its meaning: every key deleted, the lease revoked, and
/// the record cleared, so the next start adopts nothing.
#[tokio::test]
async fn sigterm_deletes_revokes_and_clears_the_record() {
    let etcd = Etcd::start().await;
    let state = tempfile::tempdir().unwrap();
    let (config, expected) = adopting_config(&etcd, state.path());
    let (mut agent, _observer) = start(&etcd, &config, &expected).await;
    let mut client = etcd.client().await;
    wait_recorded(state.path(), 3).await;
    agent.signal(libc::SIGTERM);
    let (status, _) = agent.wait_exit(PATIENCE);
    assert_eq!(status.code(), Some(0), "log:\n{}", agent.log());
    assert!(entries(&mut client, PREFIX).await.is_empty());
    assert!(leases(&mut client).await.is_empty(), "lease not revoked");
    assert!(
        !state.path().join("registry.json").exists(),
        "the record outlived SIGTERM"
    );
}

/// A record whose lease has expired (the agent stayed down longer than the
/// TTL) is ignored and said so; the agent grants a new lease. A record
/// written for another prefix is ignored too.
#[tokio::test]
async fn an_expired_or_foreign_record_is_ignored() {
    let etcd = Etcd::start().await;
    let state = tempfile::tempdir().unwrap();
    let (config, expected) = adopting_config(&etcd, state.path());
    let (mut agent, observer) = start(&etcd, &config, &expected).await;
    let mut client = etcd.client().await;
    let first = wait_recorded(state.path(), 3).await["lease"]
        .as_i64()
        .unwrap();
    agent.kill9();
    observer
        .wait_until(PATIENCE, "every key expired", |o| {
            o.statuses().values().all(|s| *s == Status::Missing)
        })
        .await;
    agent.spawn(&[]);
    agent
        .wait_for_log("the lease of the previous process has expired", PATIENCE)
        .await;
    observer.wait_all_good(PATIENCE).await;
    // The record names the new lease once the writer has caught up.
    let file = state.path().join("registry.json");
    let (second, _) = wait_for(PATIENCE, "the new lease recorded", || {
        let file = file.clone();
        async move {
            let record: serde_json::Value =
                serde_json::from_slice(&std::fs::read(&file).ok()?).ok()?;
            let lease = record["lease"].as_i64()?;
            (lease != first && record["keys"].as_object()?.len() == 3).then_some(lease)
        }
    })
    .await;
    assert_eq!(leases(&mut client).await, vec![second]);

    // The same record, now for another prefix: not adopted.
    agent.kill9();
    let mut record: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&file).unwrap()).unwrap();
    record["prefix"] = "/elsewhere".into();
    std::fs::write(&file, serde_json::to_vec(&record).unwrap()).unwrap();
    agent.spawn(&[]);
    agent
        .wait_for_log(
            "ignoring the lease record of the previous process",
            PATIENCE,
        )
        .await;
    observer.wait_all_good(PATIENCE).await;
    assert!(!agent.log().contains("adopted the lease"));
}

/// How soon a key deleted or overwritten by another client is back, with a
/// `retryInterval` (the old comparison period) far longer than that.
const WATCH_REPAIR: Duration = Duration::from_secs(3);

/// Deletes the seed key, then overwrites it, from another client; each
/// time the agent's watch on its own keys sees it and puts it back at
/// once. Returns how long each took.
async fn damage_and_time(
    etcd: &Etcd,
    observer: &crate::support::observer::Observer,
) -> Vec<Duration> {
    let mut client = etcd.client().await;
    let mut took = Vec::new();
    for overwrite in [false, true] {
        let t = Instant::now();
        if overwrite {
            client.put(SEED_KEY, "{}", None).await.unwrap();
        } else {
            client.delete(SEED_KEY, None).await.unwrap();
        }
        // Seen damaged by the observer, then good again.
        let (back, _) = wait_for(PATIENCE, "the key put back", || {
            let transitions = observer.transitions_since(t);
            let damaged = transitions.iter().any(|x| x.status != Status::Good);
            let last = transitions.last().map(|x| (x.status, x.at));
            async move {
                match last {
                    Some((Status::Good, at)) if damaged => Some(at),
                    _ => None,
                }
            }
        })
        .await;
        took.push(back.duration_since(t));
    }
    took
}

/// A key deleted by another client, then overwritten, is back well within
/// a second with `retryInterval: 10s` (before: up to one `retryInterval`,
/// the comparison period).
#[tokio::test]
async fn a_key_deleted_or_overwritten_by_another_client_is_back_at_once() {
    let etcd = Etcd::start().await;
    let mut config = ConfigFile::new(etcd.endpoints());
    config.retry_interval = "10s";
    let expected = seed_expected();
    let (agent, observer) = start(&etcd, &config, &expected).await;
    // The watch starts after the first round.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let took = damage_and_time(&etcd, &observer).await;
    report(
        "own-key-deleted-watched",
        took[0],
        WATCH_REPAIR,
        &format!(
            "deleted: back in {}, overwritten: back in {}",
            ms(took[0]),
            ms(took[1])
        ),
    );
    for t in &took {
        assert!(*t <= WATCH_REPAIR, "back after {}\n{}", ms(*t), agent.log());
    }
    let held = entries(&mut etcd.client().await, PREFIX).await;
    assert_eq!(held[SEED_KEY].value, expected[SEED_KEY], "{}", agent.log());
    crate::support::faults::assert_exactly(&etcd, &expected).await;
    assert_every_key_on_a_live_lease(&mut etcd.client().await).await;
}

/// The watch of an adopted lease's keys starts from revisions etcd has
/// compacted away: etcd cancels it; the agent compares every key, watches
/// again from the comparison, and a delete is still repaired at once.
#[tokio::test]
async fn a_watch_from_a_compacted_revision_is_restarted() {
    let etcd = Etcd::start().await;
    let state = tempfile::tempdir().unwrap();
    let (mut config, expected) = adopting_config(&etcd, state.path());
    config.retry_interval = "10s";
    let (mut agent, observer) = start(&etcd, &config, &expected).await;
    wait_recorded(state.path(), 3).await;
    agent.kill9();
    let mut client = etcd.client().await;
    for i in 0..5 {
        client
            .put("/unrelated", format!("{i}"), None)
            .await
            .unwrap();
    }
    let revision = client
        .get("/unrelated", None)
        .await
        .unwrap()
        .header()
        .unwrap()
        .revision();
    client.compact(revision, None).await.unwrap();
    agent.spawn(&[]);
    agent
        .wait_for_log("adopted the lease of the previous process", PATIENCE)
        .await;
    agent.wait_for_log("compacted", PATIENCE).await;
    // Watching again after a short backoff.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let took = damage_and_time(&etcd, &observer).await;
    report(
        "own-key-watch-after-compaction",
        took[0],
        WATCH_REPAIR,
        &format!(
            "deleted: back in {}, overwritten: back in {}",
            ms(took[0]),
            ms(took[1])
        ),
    );
    for t in &took {
        assert!(*t <= WATCH_REPAIR, "back after {}\n{}", ms(*t), agent.log());
    }
    crate::support::faults::assert_exactly(&etcd, &expected).await;
}

/// The Watch messages etcd received (each watch created or cancelled is
/// one), from its own counters.
async fn watch_messages(etcd: &Etcd) -> f64 {
    let (_, body) = http_get(&etcd.endpoint(), "/metrics")
        .await
        .expect("etcd serves /metrics");
    body.lines()
        .filter(|l| l.starts_with("grpc_server_msg_received_total"))
        .filter(|l| l.contains("grpc_method=\"Watch\""))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

/// Keys written one at a time (API registrations) each add one watch to
/// the running stream instead of a new stream over every key held (which
/// cost one request per key held, per registration: O(n²) for a burst);
/// a key added later is still put back at once when someone deletes it.
#[tokio::test]
async fn each_new_key_adds_one_watch_and_is_still_repaired_at_once() {
    use ygg_agent::api::client::call;
    const ADDED: usize = 20;
    let etcd = Etcd::start().await;
    let mut config = ConfigFile::new(etcd.endpoints());
    // Only the watch repairs within the test's bound.
    config.retry_interval = "10s";
    let mut agent = Agent::prepare(&config);
    let socket = agent.dir.path().join("agent.sock");
    config.agent_extra = format!("  api:\n    socket: {}\n", socket.display());
    agent.rewrite_config(&config);
    agent.spawn(&[]);
    agent.wait_for_log("local API listening", PATIENCE).await;
    wait_keys(&etcd, "example-registry-server", 1).await;

    let before = watch_messages(&etcd).await;
    let mut keys = Vec::new();
    for i in 0..ADDED {
        let body = serde_json::json!({
            "name": "watched",
            "version": "1",
            "endpoints": [{"scheme": "http", "address": format!("127.0.0.1:{}", 20_000 + i)}],
        });
        let (status, answer) = call(
            &socket,
            "PUT",
            &format!("/v1/instances/w-{i}"),
            Some(body.to_string().into_bytes()),
        )
        .await
        .expect("the agent answers");
        assert_eq!(status, 200, "{answer}");
        keys.push(answer["key"].as_str().unwrap().to_string());
        wait_keys(&etcd, "watched", i + 1).await;
    }
    // One create per key added (and the seed key's watch, if it was still
    // being created). Restarting the stream per key would be about
    // ADDED * (ADDED + 3) / 2 = 230.
    let sent = watch_messages(&etcd).await - before;
    assert!(
        sent <= (2 * ADDED) as f64,
        "{sent} watch messages for {ADDED} keys added\n{}",
        agent.log()
    );

    let mut client = etcd.client().await;
    let victim = &keys[ADDED / 2];
    let t = Instant::now();
    client.delete(victim.as_str(), None).await.unwrap();
    wait_for(WATCH_REPAIR, "a key added later put back", || {
        let mut client = client.clone();
        async move {
            let got = client.get(victim.as_str(), None).await.ok()?;
            (!got.kvs().is_empty()).then_some(())
        }
    })
    .await;
    report(
        "own-key-added-later-watched",
        t.elapsed(),
        WATCH_REPAIR,
        &format!("{sent} watch messages for {ADDED} keys added one by one"),
    );
    assert_every_key_on_a_live_lease(&mut etcd.client().await).await;
}
