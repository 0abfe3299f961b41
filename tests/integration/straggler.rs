//! No straggler after a whole-cluster restart (issue 21, item 5): a fleet of
//! agents against a 3-member cluster whose members all die; when the
//! cluster answers again, every agent's keys are back within a bound
//! measured from that answer, even while one member is still not
//! listening (its port refuses connections).
//!
//! Before the fix, a request through the client's balanced channel could
//! be handed to the member that refused the connection and fail at once;
//! the agent then waited a whole backoff step (up to `retryInterval`)
//! before trying again, while the two other members answered.

use std::time::{Duration, Instant};

use crate::support::faults::{ms, report};
use crate::support::*;

/// Agents in the fleet, and instances each.
const AGENTS: usize = 10;
const PER_AGENT: usize = 5;

/// Long enough that one backoff step (`retryInterval` × U(0.5, 1), at
/// least 2.5 s) shows far above the bound.
const RETRY_INTERVAL: &str = "5s";

/// From the cluster answering until every key is back: the keepalive's
/// reopen (at most 800 ms apart) finds the lease gone, then one grant and
/// one write. The budget is 1 s (the release bench); a debug build
/// on a busy machine gets twice that, still below one backoff step.
const BOUND: Duration = Duration::from_secs(2);

/// Every member killed for 2 s, then two of the three started again with
/// their data deleted; the third stays down, so connections to it are
/// refused. The two form the cluster (a quorum of the three), and every
/// agent must have its keys back on a new lease within [`BOUND`] of the
/// cluster answering.
#[tokio::test]
async fn keys_are_back_at_once_while_one_member_still_refuses_connections() {
    let _heavy = heavy_test().await;
    let mut etcd = Etcd::start_cluster(3).await;
    let fleet = Fleet::start(etcd.endpoints(), AGENTS, PER_AGENT, "10s", RETRY_INTERVAL);
    fleet.wait_registered(&etcd, PATIENCE).await;
    let keys = fleet.keys();

    etcd.kill9();
    // Long enough for every agent's retries to reach `retryInterval`.
    tokio::time::sleep(Duration::from_secs(4)).await;
    let restart = Instant::now();
    etcd.members[0].start_wiped();
    etcd.members[1].start_wiped();
    let live: Vec<String> = etcd.members[..2].iter().map(|m| m.endpoint()).collect();
    while count_at(&live).await.is_none() {
        assert!(
            restart.elapsed() < PATIENCE,
            "the two members never answered"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let answered = Instant::now();
    let mut held = 0;
    while answered.elapsed() < PATIENCE {
        held = count_at(&live).await.unwrap_or(0);
        if held == keys {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let all_back = answered.elapsed();
    // The slowest agent's story, for a reader of the output.
    let slowest = fleet
        .agents
        .iter()
        .map(|a| a.log())
        .max_by_key(|log| log.matches("etcd request failed").count())
        .unwrap_or_default();
    let tail: Vec<&str> = slowest
        .lines()
        .filter(|l| l.contains("WARN") || l.contains("lease"))
        .filter(|l| !l.contains("putting it back"))
        .collect();
    eprintln!(
        "the agent with the most failed requests, its last lines:\n{}",
        tail[tail.len().saturating_sub(8)..].join("\n")
    );
    report(
        "fleet-member-refusing",
        all_back,
        BOUND,
        &format!(
            "{AGENTS} agents x {PER_AGENT} instances, retryInterval {RETRY_INTERVAL}; {held} of {keys} keys back; the two members answered {} after their start",
            ms(answered.duration_since(restart))
        ),
    );
    assert_eq!(held, keys, "keys back {} after the answer", ms(all_back));
    assert!(
        all_back <= BOUND,
        "the last key came back {} after the cluster answered (bound {})",
        ms(all_back),
        ms(BOUND)
    );
}

/// One etcd with 20 agents (retryInterval 1 s, TTL 10 s), killed for 5 s
/// and started again, with its data and then wiped: every key back within
/// [`BOUND`] of etcd answering. The issue saw a fleet like this come back
/// in step 2.8 s after etcd answered.
#[tokio::test]
async fn a_fleet_on_one_etcd_is_back_at_once_after_its_restart() {
    let _heavy = heavy_test().await;
    let mut etcd = Etcd::start().await;
    let fleet = Fleet::start(etcd.endpoints(), 20, PER_AGENT, "10s", "1s");
    fleet.wait_registered(&etcd, PATIENCE).await;
    for wipe in [false, true] {
        let recovery = fleet
            .outage(&mut etcd, Duration::from_secs(5), wipe, PATIENCE)
            .await;
        let mut contact: Vec<Duration> = recovery.first_contact.iter().flatten().copied().collect();
        contact.sort();
        let failed_after: usize = fleet
            .agents
            .iter()
            .map(|a| {
                a.log()
                    .lines()
                    .filter(|l| l.contains("etcd request failed"))
                    .filter(|l| log_time(l).is_some_and(|t| t >= recovery.answered_at))
                    .count()
            })
            .sum();
        report(
            if wipe {
                "fleet-one-etcd-wiped"
            } else {
                "fleet-one-etcd-restart"
            },
            recovery.all_back,
            BOUND,
            &format!(
                "{} keys; etcd answered {} after its start; agents back in touch: {} of 20, last {}; {failed_after} failed requests after the answer",
                fleet.keys(),
                ms(recovery.answered_after),
                contact.len(),
                contact.last().map_or("-".into(), |d| ms(*d)),
            ),
        );
        assert!(recovery.all_back <= BOUND, "{}", ms(recovery.all_back));
    }
}
