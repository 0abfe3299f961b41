//! What the fault tests (`faults.rs`, `netfaults.rs`) share: the bounds
//! they assert, the one `FAULT` line each scenario prints, the expected keys
//! computed from SPEC §3, and the checks every scenario ends with.

use std::collections::BTreeMap;
use std::time::Duration;

use sha1::{Digest, Sha1};

use super::observer::{Observer, Window};
use super::{Agent, ConfigFile, Etcd, PATIENCE, PREFIX, SEED_KEY, SEED_VALUE, entries, leases};

/// After etcd is healthy again: one retryInterval for the agent's next
/// attempt (its backoff is capped there) plus one second for the requests
/// and scheduling on a loaded machine.
pub const RECOVERY: Duration = Duration::from_secs(2);

/// etcd's lessor looks for expired leases every 500 ms, so an expired lease
/// (and its keys) goes up to this much after its deadline.
pub const ETCD_EXPIRY_CHECK: Duration = Duration::from_millis(500);

/// Scheduling slack on a loaded 2-core machine: our own polling (10 ms), the
/// observer's event delivery, a process being descheduled.
pub const SLACK: Duration = Duration::from_millis(500);

pub fn ms(d: Duration) -> String {
    format!("{}ms", d.as_millis())
}

/// Prints the one line a run's numbers are collected from, and a detail line.
pub fn report(scenario: &str, measured: Duration, bound: Duration, detail: &str) {
    // A line of its own even after libtest's "test name ... " prefix.
    println!(
        "\nFAULT {scenario}: window {} (bound {})",
        ms(measured),
        ms(bound)
    );
    println!("      {scenario}: {detail}");
}

pub fn describe(w: &Window) -> String {
    format!(
        "{} bad interval(s), {} bad in total{}, observer blind {}{}",
        w.intervals,
        ms(w.bad_total),
        if w.inexact {
            " (some from unobservable time, counted pessimistically)"
        } else {
            ""
        },
        ms(w.blind),
        if w.still_bad.is_empty() {
            String::new()
        } else {
            format!(", still bad: {:?}", w.still_bad)
        }
    )
}

pub fn seed_expected() -> BTreeMap<String, String> {
    BTreeMap::from([(SEED_KEY.to_string(), SEED_VALUE.to_string())])
}

/// The keys and values `support::instances(service, n)` must produce,
/// computed here from SPEC §3 (not with the agent's own code).
pub fn instances_expected(service: &str, n: usize) -> BTreeMap<String, String> {
    (0..n)
        .map(|i| {
            let address = format!("10.0.0.1:{}", 10000 + i);
            let identity = format!(
                r#"{{"namespace":"default","name":"{service}","version":"1","endpoints":[{{"scheme":"http","address":"{address}"}}]}}"#
            );
            let key = format!(
                "/yggdrasil/registry/default/{service}/{}",
                hex::encode(Sha1::digest(identity.as_bytes()))
            );
            let value = format!(
                r#"{{"namespace":"default","name":"{service}","version":"1","region":"","zone":"","campus":"","metadata":null,"endpoints":[{{"scheme":"http","address":"{address}","metadata":null}}]}}"#
            );
            (key, value)
        })
        .collect()
}

/// Starts the agent and the observer and waits until every key is good.
pub async fn start(
    etcd: &Etcd,
    config: &ConfigFile,
    expected: &BTreeMap<String, String>,
) -> (Agent, Observer) {
    let agent = Agent::start(config);
    let observer = Observer::start(etcd.endpoints(), PREFIX, expected.clone()).await;
    observer.wait_all_good(PATIENCE).await;
    (agent, observer)
}

/// A client of the running members only (a balanced client that still
/// lists a killed member sends some requests there).
pub async fn live_client(etcd: &Etcd) -> etcd_client::Client {
    let endpoints: Vec<String> = etcd
        .members
        .iter()
        .filter(|m| m.is_running())
        .map(|m| m.endpoint())
        .collect();
    etcd_client::Client::connect(endpoints, None)
        .await
        .expect("etcd client")
}

/// etcd holds exactly `expected` under the prefix, every key on one lease,
/// and that lease is the only one.
pub async fn assert_exactly(etcd: &Etcd, expected: &BTreeMap<String, String>) {
    let mut client = live_client(etcd).await;
    let held = entries(&mut client, PREFIX).await;
    assert_eq!(
        held.len(),
        expected.len(),
        "etcd holds {} keys under the prefix, expected {}",
        held.len(),
        expected.len()
    );
    for (key, value) in expected {
        let entry = held.get(key).unwrap_or_else(|| panic!("{key} is missing"));
        assert_eq!(&entry.value, value, "{key} holds another value");
    }
    let lease = held.values().next().map(|e| e.lease).unwrap_or(0);
    assert!(
        held.values().all(|e| e.lease == lease && lease != 0),
        "keys are not all on one lease"
    );
    assert_eq!(
        leases(&mut client).await,
        vec![lease],
        "one lease per agent"
    );
}

/// Asserts the window and that nothing unexpected appeared under the prefix.
pub fn assert_window(observer: &Observer, w: &Window, bound: Duration, what: &str) {
    assert!(
        w.still_bad.is_empty(),
        "{what}: keys still missing or stale: {:?}\n{}",
        w.still_bad,
        observer.notes()
    );
    assert!(
        w.window <= bound,
        "{what}: window {} exceeds the bound {} ({})\n{}",
        ms(w.window),
        ms(bound),
        describe(w),
        observer.notes()
    );
    assert!(
        observer.unexpected_seen().is_empty(),
        "{what}: keys we did not expect appeared under the prefix: {:?}",
        observer.unexpected_seen()
    );
}

/// The lease guard, called at the end of every scenario here and in
/// `netfaults.rs`: every key under the prefix is on a lease that etcd still
/// keeps (a key on no lease, or on a dead one, would never go).
pub(crate) async fn assert_every_key_on_a_live_lease(client: &mut etcd_client::Client) {
    let mut live = std::collections::HashSet::new();
    for (key, entry) in entries(client, PREFIX).await {
        assert_ne!(
            entry.lease, 0,
            "{key} is on no lease: it would never expire"
        );
        if live.contains(&entry.lease) {
            continue;
        }
        let ttl = client
            .lease_time_to_live(entry.lease, None)
            .await
            .expect("lease time-to-live")
            .ttl();
        if ttl <= 0 {
            // The lease went after the keys were read (a revoke the agent
            // sent before a pause, answered now, or its TTL ran out): etcd
            // deletes its keys in the same revision, so the key must be
            // gone now; if it is still there, it outlives its lease.
            let again = client.get(key.as_str(), None).await.expect("get");
            assert!(
                again.kvs().iter().all(|kv| kv.lease() != entry.lease),
                "{key} is on lease {} that etcd no longer keeps (TTL {ttl})",
                entry.lease
            );
            continue;
        }
        live.insert(entry.lease);
    }
}
