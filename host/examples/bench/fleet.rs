//! `fleet`: 1,000 agents against a 3-member cluster (only when asked for;
//! `YGG_FLEET_AGENTS` sets another count).

use std::time::Duration;

use crate::common::*;
use crate::support::{self, Etcd};

/// Agent processes in the fleet unless `YGG_FLEET_AGENTS` says otherwise.
const DEFAULT_AGENTS: usize = 1000;

/// Every key back within this of the cluster answering (issue 21).
const BUDGET: Duration = Duration::from_secs(1);

/// 1,000 agent processes with 5 instances each (TTL 10 s, retryInterval
/// 3 s) against a 3-member cluster; every member killed for 5 s and
/// started again, with its data and then wiped.
pub(crate) async fn fleet(rows: &mut Vec<Row>) {
    let agents: usize = std::env::var("YGG_FLEET_AGENTS")
        .ok()
        .and_then(|n| n.parse().ok())
        .unwrap_or(DEFAULT_AGENTS);
    const PER_AGENT: usize = 5;
    raise_open_files();
    let mut etcd = Etcd::start_cluster(3).await;
    let fleet = support::Fleet::start(etcd.endpoints(), agents, PER_AGENT, "10s", "3s");
    let registered = fleet.wait_registered(&etcd, Duration::from_secs(300)).await;
    eprintln!(
        "bench: fleet registered {} keys in {registered:.2?}",
        fleet.keys()
    );
    tokio::time::sleep(Duration::from_secs(10)).await;
    let rss = fleet.rss_mib();
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
        explain_the_slowest(&fleet, &recovery);
        keep_logs(&fleet, what);
        let mut contact: Vec<Duration> = recovery.first_contact.iter().flatten().copied().collect();
        println!(
            "\nfleet, members restarted {what}: each agent's first successful request after the cluster answered ({} of {agents} agents; keepalive reopened or lease granted):\n{}",
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
                    "fleet: {agents} agents x {PER_AGENT} instances, all 3 members killed 5 s and restarted {what}: {} keys back (from the cluster answering {:.2?} after the restart)",
                    fleet.keys(),
                    recovery.answered_after
                ),
                format!("{:.2?}", recovery.all_back),
                format!(
                    "restart to last key {:.2?}; agents' first request after: {spread}; etcd peak {:.0} requests/s (3 members)",
                    recovery.answered_after + recovery.all_back,
                    recovery.peak_requests_per_s
                ),
            )
            .budget(format!("<= {BUDGET:?}"), recovery.all_back <= BUDGET),
        );
    }
    let wiped_back = rows.last().map(|row| row.ours.clone()).unwrap_or_default();
    drop(fleet);
    let (answered_after, raw_back) = raw_recovery(&mut etcd, agents, PER_AGENT).await;
    rows.push(
        Row::new(
            format!(
                "fleet floor: {agents} raw etcd-client clients in one process, started when the cluster (restarted wiped) answered {answered_after:.2?} after the restart: each connects, grants a lease, puts its {PER_AGENT} keys in one transaction and renews once; all keys present"
            ),
            format!("{raw_back:.2?}"),
            format!(
                "restart to last key {:.2?}; the agents' wiped recovery above: {wiped_back}",
                answered_after + raw_back
            ),
        )
        .budget(format!("<= {BUDGET:?}"), raw_back <= BUDGET),
    );
    let mean = rss.iter().sum::<f64>() / rss.len() as f64;
    let max = rss.iter().copied().fold(0.0, f64::max);
    rows.push(Row::new(
        format!("fleet: agent RSS, each of {agents} (5 instances, no plugins)"),
        format!("mean {mean:.1} MiB, max {max:.1} MiB"),
        format!("{:.0} MiB for the fleet", rss.iter().sum::<f64>()),
    ));
}

/// Each agent holds a few connections and files, each etcd member one or
/// two connections per agent: the soft open-files limit goes up to the hard
/// one (the agents and members inherit it).
fn raise_open_files() {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit/setrlimit with a valid pointer to an rlimit.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) == 0 && limit.rlim_cur < limit.rlim_max
        {
            limit.rlim_cur = limit.rlim_max;
            libc::setrlimit(libc::RLIMIT_NOFILE, &limit);
        }
    }
}

/// What kept the agents: every failed request logged after the cluster
/// answered, by its error, and the slowest agent's own lines since then.
fn explain_the_slowest(fleet: &support::Fleet, recovery: &support::Recovery) {
    let after = |line: &&str| support::log_time(line).is_some_and(|t| t >= recovery.answered_at);
    let mut errors = std::collections::BTreeMap::<String, usize>::new();
    for agent in &fleet.agents {
        for line in agent.log().lines().filter(after) {
            if let Some((_, error)) = line.split_once("etcd request failed; retrying error=") {
                let kind: String = error.chars().take(70).collect();
                *errors.entry(kind).or_default() += 1;
            }
        }
    }
    eprintln!("bench: failed requests after the cluster answered, by error: {errors:#?}");
    let Some((slowest, _)) = recovery
        .first_contact
        .iter()
        .enumerate()
        .max_by_key(|(_, c)| **c)
    else {
        return;
    };
    let log = fleet.agents[slowest].log();
    let lines: Vec<&str> = log
        .lines()
        .filter(|l| support::log_time(l).is_some_and(|t| t >= recovery.answered_at - 2.0))
        .filter(|l| l.contains("WARN") || l.contains("lease") || l.contains("keepalive"))
        .filter(|l| !l.contains("putting it back"))
        .collect();
    eprintln!(
        "bench: the slowest agent (a{slowest}) from 2 s before the cluster answered (at {:.3} s of the day):\n{}",
        recovery.answered_at,
        lines[lines.len().saturating_sub(20)..].join("\n")
    );
}

/// With `YGG_FLEET_LOGS=DIR`, every agent's log after an outage is copied to
/// `DIR/<outage>/a<i>.log`, for a closer look than the slowest agent's.
fn keep_logs(fleet: &support::Fleet, outage: &str) {
    let Some(dir) = std::env::var_os("YGG_FLEET_LOGS") else {
        return;
    };
    let dir = std::path::Path::new(&dir).join(outage.replace(' ', "-"));
    std::fs::create_dir_all(&dir).expect("YGG_FLEET_LOGS: create the directory");
    for (i, agent) in fleet.agents.iter().enumerate() {
        std::fs::write(dir.join(format!("a{i}.log")), agent.log()).expect("YGG_FLEET_LOGS: write");
    }
    eprintln!("bench: agents' logs in {}", dir.display());
}

/// The floor of the wiped recovery on this machine: the same writes by raw
/// etcd-client (one client per agent, all in this process, so far less
/// client CPU than agent processes), started at once when the cluster
/// answers, a failed one tried again after 50 ms. Returns (restart to
/// answer, answer to every key present).
async fn raw_recovery(etcd: &mut Etcd, clients: usize, per_client: usize) -> (Duration, Duration) {
    let limit = Duration::from_secs(120);
    let restart = support::kill_and_restart(etcd, Duration::from_secs(5), true).await;
    let answered = support::wait_fleet_answer(etcd, restart, limit).await;
    let endpoints = etcd.endpoints();
    let tasks: Vec<_> = (0..clients)
        .map(|c| {
            let endpoints = endpoints.clone();
            tokio::spawn(async move {
                loop {
                    match raw_register(&endpoints, c, per_client).await {
                        Ok(kept) => return kept,
                        Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
                    }
                }
            })
        })
        .collect();
    let all_back = support::wait_fleet_keys(etcd, clients * per_client, answered, limit).await;
    for task in tasks {
        task.abort();
    }
    (answered.at.duration_since(restart), all_back)
}

/// One raw client's registration: kept alive (client, keeper, stream) until
/// the measurement ends.
async fn raw_register(
    endpoints: &[String],
    c: usize,
    per_client: usize,
) -> Result<
    (
        etcd_client::Client,
        etcd_client::LeaseKeeper,
        etcd_client::LeaseKeepAliveStream,
    ),
    etcd_client::Error,
> {
    use etcd_client::{PutOptions, Txn, TxnOp};
    let mut client = etcd_client::Client::connect(endpoints, None).await?;
    let lease = client.lease_grant(10, None).await?.id();
    let ops: Vec<TxnOp> = (0..per_client)
        .map(|i| {
            TxnOp::put(
                format!("{}/raw/c{c}/{i}", support::FLEET_PREFIX),
                record(c * per_client + i).value.to_string(),
                Some(PutOptions::new().with_lease(lease)),
            )
        })
        .collect();
    client.txn(Txn::new().and_then(ops)).await?;
    let (mut keeper, mut stream) = client.lease_keep_alive(lease).await?;
    keeper.keep_alive().await?;
    stream.message().await?;
    Ok((client, keeper, stream))
}
