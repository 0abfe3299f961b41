//! A fleet of agents against one etcd cluster, for the fleet test
//! (`netfaults.rs`) and `./scripts/bench --fleet`: N agent processes with
//! M instances each, every member killed and started again (with or
//! without its data), and what the recovery looked like: when the cluster
//! answered, when every key was back, each agent's first successful request
//! after that (from its log), etcd's peak request rate (from the members'
//! `/metrics`) and the agents' memory.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use etcd_client::{Client, ConnectOptions, GetOptions};

use super::{Agent, ConfigFile, Etcd, http_get, instances, log_time};

pub const FLEET_PREFIX: &str = "/fleet";

/// Log lines that show an agent's request reaching etcd again after an
/// outage: a keepalive stream reopened (kept data), or a new lease granted
/// (wiped data).
const BACK_IN_TOUCH: [&str; 2] = ["keepalive stream open", "lease granted"];

pub struct Fleet {
    pub agents: Vec<Agent>,
    pub per_agent: usize,
}

/// What one outage of the whole cluster did to the fleet.
pub struct Recovery {
    /// From the restart of the members until a linearizable read answered.
    pub answered_after: Duration,
    /// From that answer until every key was present.
    pub all_back: Duration,
    /// Per agent, its first successful request after the restart, counted
    /// from the answer (0 when it came before our read answered; None: no
    /// such line in its log).
    pub first_contact: Vec<Option<Duration>>,
    /// The highest request rate over a 1 s window, all members together.
    pub peak_requests_per_s: f64,
    /// When the cluster answered, seconds of the day (UTC, as the agents'
    /// log lines are stamped).
    pub answered_at: f64,
}

fn seconds_of_day() -> f64 {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default();
    (now.as_secs() % 86_400) as f64 + f64::from(now.subsec_nanos()) / 1e9
}

impl Fleet {
    /// Starts `agents` agents, agent `i` registering `per_agent` instances
    /// of service `a{i}` under `/fleet`, with `ttl` and `retry_interval`.
    pub fn start(
        endpoints: Vec<String>,
        agents: usize,
        per_agent: usize,
        ttl: &'static str,
        retry_interval: &'static str,
    ) -> Fleet {
        let agents = (0..agents)
            .map(|i| {
                let mut config = ConfigFile::new(endpoints.clone());
                config.prefix = FLEET_PREFIX.into();
                config.ttl = ttl;
                config.retry_interval = retry_interval;
                config.instances = instances(&format!("a{i}"), per_agent);
                let mut agent = Agent::prepare(&config);
                agent.spawn_with_env(
                    &[],
                    &[("RUST_LOG", "info,ygg_agent::registry::keepalive=debug")],
                );
                agent
            })
            .collect();
        Fleet { agents, per_agent }
    }

    pub fn keys(&self) -> usize {
        self.agents.len() * self.per_agent
    }

    /// RSS of each agent, MiB.
    pub fn rss_mib(&self) -> Vec<f64> {
        self.agents
            .iter()
            .map(|a| super::rss_mib(a.pid()))
            .collect()
    }

    /// Waits until every key is in etcd; panics after `limit`.
    pub async fn wait_registered(&self, etcd: &Etcd, limit: Duration) -> Duration {
        let start = Instant::now();
        while count(etcd).await != Some(self.keys()) {
            assert!(
                start.elapsed() < limit,
                "the fleet's {} keys not all registered within {limit:?}",
                self.keys()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        start.elapsed()
    }

    /// Kills every member, waits `down`, starts them again (wiped when
    /// `wipe`) and measures the fleet's recovery. Panics if the keys are
    /// not all back within `limit` of the cluster answering.
    pub async fn outage(
        &self,
        etcd: &mut Etcd,
        down: Duration,
        wipe: bool,
        limit: Duration,
    ) -> Recovery {
        let restart = kill_and_restart(etcd, down, wipe).await;
        let restart_at = seconds_of_day();
        let endpoints = etcd.endpoints();
        let peak = Arc::new(AtomicU64::new(0));
        let scrape = tokio::spawn(peak_rate(endpoints, peak.clone()));
        let answer = wait_fleet_answer(etcd, restart, limit).await;
        let answered = answer.at;
        let answered_at = seconds_of_day();
        let all_back = wait_fleet_keys(etcd, self.keys(), answer, limit).await;
        // Let the stragglers' keepalives reopen and the rate settle.
        tokio::time::sleep(Duration::from_secs(3)).await;
        scrape.abort();
        let peak = f64::from_bits(peak.load(Ordering::Relaxed));
        let first_contact = self
            .agents
            .iter()
            .map(|a| {
                a.log()
                    .lines()
                    .filter(|l| BACK_IN_TOUCH.iter().any(|n| l.contains(n)))
                    .filter_map(log_time)
                    .find(|t| *t >= restart_at)
                    .map(|t| Duration::from_secs_f64((t - answered_at).max(0.0)))
            })
            .collect();
        Recovery {
            answered_after: answered.duration_since(restart),
            all_back,
            first_contact,
            peak_requests_per_s: peak,
            answered_at,
        }
    }
}

/// Kills every member, waits `down` and starts them again (wiped when
/// `wipe`), not waiting for them: returns when they were started.
pub async fn kill_and_restart(etcd: &mut Etcd, down: Duration, wipe: bool) -> Instant {
    etcd.kill9();
    tokio::time::sleep(down).await;
    let restart = Instant::now();
    if wipe {
        etcd.wipe();
    } else {
        etcd.respawn();
    }
    restart
}

/// The cluster's first answer after a restart: when, and how many keys
/// under the fleet's prefix it counted.
#[derive(Debug, Clone, Copy)]
pub struct Answer {
    pub at: Instant,
    pub keys: usize,
}

/// Waits until the cluster answers a read (at most `limit` after
/// `restart`).
pub async fn wait_fleet_answer(etcd: &Etcd, restart: Instant, limit: Duration) -> Answer {
    loop {
        if let Some(keys) = count(etcd).await {
            return Answer {
                at: Instant::now(),
                keys,
            };
        }
        assert!(restart.elapsed() < limit, "the cluster never answered");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Waits until `keys` keys are under the fleet's prefix (at most `limit`
/// after the answer): how long after the answer they were; zero when the
/// answer counted them all (with their data, the keys never left; a read
/// slowed by a busy cluster does not count against the agents).
pub async fn wait_fleet_keys(
    etcd: &Etcd,
    keys: usize,
    answer: Answer,
    limit: Duration,
) -> Duration {
    if answer.keys == keys {
        return Duration::ZERO;
    }
    let answered = answer.at;
    while count(etcd).await != Some(keys) {
        assert!(
            answered.elapsed() < limit,
            "{} of {keys} keys back {limit:?} after the cluster answered",
            count(etcd).await.unwrap_or(0),
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    answered.elapsed()
}

/// Keys under the fleet's prefix, by a linearizable read; None while the
/// cluster does not answer.
pub async fn count(etcd: &Etcd) -> Option<usize> {
    count_at(&etcd.endpoints()).await
}

/// [`count`] through these endpoints only (members known to be up).
pub async fn count_at(endpoints: &[String]) -> Option<usize> {
    let options = ConnectOptions::new().with_connect_timeout(Duration::from_millis(500));
    let mut client = tokio::time::timeout(
        Duration::from_secs(1),
        Client::connect(endpoints, Some(options)),
    )
    .await
    .ok()?
    .ok()?;
    let response = tokio::time::timeout(
        Duration::from_secs(1),
        client.get(
            FLEET_PREFIX,
            Some(GetOptions::new().with_prefix().with_count_only()),
        ),
    )
    .await
    .ok()?
    .ok()?;
    Some(response.count() as usize)
}

/// Requests the members received: every gRPC message (unary requests and
/// stream messages such as keepalives), summed over the members.
async fn requests_received(endpoints: &[String]) -> f64 {
    let mut total = 0.0;
    for endpoint in endpoints {
        if let Some((_, body)) = http_get(endpoint, "/metrics").await {
            total += body
                .lines()
                .filter(|l| l.starts_with("grpc_server_msg_received_total"))
                .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
                .sum::<f64>();
        }
    }
    total
}

/// Samples the members' request counters every 250 ms and keeps the
/// highest increase over 1 s in `peak` (the bits of an f64).
async fn peak_rate(endpoints: Vec<String>, peak: Arc<AtomicU64>) {
    let mut samples: Vec<(Instant, f64)> = Vec::new();
    loop {
        let now = Instant::now();
        let total = requests_received(&endpoints).await;
        samples.push((now, total));
        if let Some((_, before)) = samples
            .iter()
            .rev()
            .find(|(t, _)| now.duration_since(*t) >= Duration::from_secs(1))
        {
            let rate = (total - before).max(0.0);
            let highest = f64::from_bits(peak.load(Ordering::Relaxed)).max(rate);
            peak.store(highest.to_bits(), Ordering::Relaxed);
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

/// A text histogram of `samples` in buckets of `bucket`, one line each.
pub fn histogram(samples: &[Duration], bucket: Duration) -> String {
    let Some(max) = samples.iter().max() else {
        return "(no samples)".into();
    };
    let buckets = (max.as_secs_f64() / bucket.as_secs_f64()) as usize + 1;
    let mut counts = vec![0usize; buckets];
    for s in samples {
        counts[(s.as_secs_f64() / bucket.as_secs_f64()) as usize] += 1;
    }
    counts
        .iter()
        .enumerate()
        .map(|(i, n)| {
            let from = bucket * i as u32;
            format!(
                "  {:>5}–{:<5} ms {:>4} {}",
                from.as_millis(),
                (from + bucket).as_millis(),
                n,
                "#".repeat(*n)
            )
        })
        .collect::<Vec<_>>()
        .join("\n")
}
