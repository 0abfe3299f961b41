//! Keeping one lease alive, in a task of its own: nothing the registry actor
//! waits for (a transaction stuck on a hung etcd member, a retry backoff)
//! can delay a renewal. The task reports the lease's health through a
//! `watch` it never blocks on, and stops when its guard is dropped.
//!
//! A broken or silent stream is reopened on every endpoint at once, each
//! through a client of its own, and the first member to answer wins: a
//! balanced client could hand the retry back to the member that just hung.
//! The first stream of a lease opens on the connection that has just granted
//! it (no new connection per member: with a fleet restarting after a
//! wiped cluster, those were three more connections per agent on members
//! already saturated), and on every endpoint only if that fails.

use std::time::Duration;

use etcd_client::{Client, LeaseKeepAliveStream, LeaseKeeper};
use futures_util::StreamExt;
use futures_util::stream::FuturesUnordered;
use tokio::sync::watch;
use tokio::time::{Instant, sleep, sleep_until};
use tokio_util::sync::{CancellationToken, DropGuard};
use tokio_util::task::TaskTracker;
use tracing::{debug, warn};

use crate::backoff::Backoff;
use crate::config::ClientConfig;
use crate::etcd::{self, EtcdError, within};
use crate::metrics::{self, Metrics};

/// Quick retries of a failed reopen, doubling from the first delay to the
/// cap (and at most half a renewal interval), each delay times U(0.5, 1):
/// the lease only has what is left of its TTL.
const FIRST_REOPEN_RETRY: Duration = Duration::from_millis(100);
const MAX_REOPEN_RETRY: Duration = Duration::from_millis(800);

/// What the keeper knows about its lease.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LeaseHealth {
    /// Renewed; etcd keeps it until `expires_at` without another renewal.
    Alive { expires_at: Instant },
    /// The stream broke or went quiet and is being reopened; the lease is
    /// still etcd's until `expires_at` as far as we know.
    Interrupted { expires_at: Instant, reason: String },
    /// etcd no longer has the lease (TTL 0, not found). The keeper stopped.
    Lost { reason: String },
}

impl LeaseHealth {
    pub fn expires_at(&self) -> Option<Instant> {
        match self {
            LeaseHealth::Alive { expires_at } | LeaseHealth::Interrupted { expires_at, .. } => {
                Some(*expires_at)
            }
            LeaseHealth::Lost { .. } => None,
        }
    }
}

/// Starts keeping `lease` (granted with `ttl` just now, through `granted_by`)
/// alive. Dropping the guard stops the task at its next step: nothing is
/// renewed after that.
pub fn spawn(
    client: ClientConfig,
    granted_by: Client,
    lease: i64,
    ttl: Duration,
    metrics: Metrics,
    tracker: &TaskTracker,
) -> (watch::Receiver<LeaseHealth>, DropGuard) {
    let (health_tx, health_rx) = watch::channel(LeaseHealth::Alive {
        expires_at: Instant::now() + ttl,
    });
    let stop = CancellationToken::new();
    let keeper = Keeper {
        client,
        granted_by: Some(granted_by),
        lease,
        ttl,
        metrics,
        health: health_tx,
    };
    let stopped = stop.clone();
    tracker.spawn(async move {
        tokio::select! {
            () = stopped.cancelled() => {}
            () = keeper.run() => {}
        }
    });
    (health_rx, stop.drop_guard())
}

struct Keeper {
    client: ClientConfig,
    /// Tried first for the first stream, then dropped.
    granted_by: Option<Client>,
    lease: i64,
    ttl: Duration,
    metrics: Metrics,
    health: watch::Sender<LeaseHealth>,
}

/// An open keepalive stream and the client whose connection carries it.
struct Stream {
    _client: Client,
    keeper: LeaseKeeper,
    responses: LeaseKeepAliveStream,
    next_send: Instant,
    /// When the answer to the last request is due.
    awaiting: Option<Instant>,
}

impl Stream {
    /// Just opened (which renewed the lease): the next renewal is due in
    /// `interval`.
    fn opened(
        client: Client,
        keeper: LeaseKeeper,
        responses: LeaseKeepAliveStream,
        interval: Duration,
    ) -> Stream {
        Stream {
            _client: client,
            keeper,
            responses,
            next_send: Instant::now() + interval,
            awaiting: None,
        }
    }
}

enum Event {
    Renewed(Duration),
    /// etcd answered TTL 0: the lease is gone.
    Expired,
    /// The stream failed or went quiet; the lease may still be alive.
    Broken(String),
}

impl Keeper {
    fn interval(&self) -> Duration {
        self.ttl / 3
    }

    fn expires_at(&self) -> Instant {
        self.health
            .borrow()
            .expires_at()
            .unwrap_or_else(Instant::now)
    }

    fn renewed(&self, ttl: Duration) {
        self.metrics.keepalives.get_or_create(&metrics::OK).inc();
        self.health.send_replace(LeaseHealth::Alive {
            expires_at: Instant::now() + ttl,
        });
    }

    fn interrupted(&self, reason: String) {
        self.metrics.keepalives.get_or_create(&metrics::ERROR).inc();
        let expires_at = self.expires_at();
        if !matches!(*self.health.borrow(), LeaseHealth::Interrupted { .. }) {
            warn!(lease = self.lease, %reason, "keepalive interrupted; reopening it on every endpoint");
        }
        self.health
            .send_replace(LeaseHealth::Interrupted { expires_at, reason });
    }

    fn lost(&self, reason: String) {
        self.metrics.keepalives.get_or_create(&metrics::ERROR).inc();
        self.health.send_replace(LeaseHealth::Lost { reason });
    }

    /// Renews at TTL/3 until the lease is lost (or the task is stopped).
    async fn run(mut self) {
        let mut stream: Option<Stream> = None;
        // Jittered: a fleet whose connections broke at the same instant (a
        // whole cluster killed) must not retry in step (found by
        // `./scripts/bench --fleet`: without it, 143 of 200 agents came
        // back within the same 250 ms).
        let mut retry = Backoff::new(
            FIRST_REOPEN_RETRY,
            MAX_REOPEN_RETRY.min(self.interval() / 2),
        )
        .with_jitter(0.5, 1.0);
        loop {
            if stream.is_none() {
                let opened = match self.granted_by.take() {
                    Some(client) => match self.open_on(client).await {
                        Err(error) if !error.is_lease_not_found() => {
                            debug!(lease = self.lease, %error, "keepalive: the granting connection did not open the stream; trying every endpoint");
                            self.open().await
                        }
                        first => first,
                    },
                    None => self.open().await,
                };
                match opened {
                    Ok(opened) => {
                        retry.reset();
                        // Opening the stream renewed the lease.
                        self.renewed(self.ttl);
                        stream = Some(opened);
                    }
                    Err(error) if error.is_lease_not_found() => {
                        return self.lost(format!("etcd no longer knows it ({error})"));
                    }
                    Err(error) => {
                        self.interrupted(error.to_string());
                        sleep(retry.fail()).await;
                        continue;
                    }
                }
            }
            let current = stream.as_mut().expect("opened above");
            match self.next_event(current).await {
                Event::Renewed(ttl) => self.renewed(ttl),
                Event::Expired => {
                    return self.lost("etcd answered the keepalive with TTL 0".into());
                }
                Event::Broken(reason) => {
                    self.interrupted(reason);
                    stream = None;
                }
            }
        }
    }

    /// Opens a keepalive stream for the lease on every endpoint at once and
    /// keeps the first that answers. "Not found" from any member is final:
    /// keepalives go through the leader, so a member saying so speaks for
    /// the cluster.
    async fn open(&self) -> Result<Stream, EtcdError> {
        let limit = self.client.dial_timeout;
        let mut attempts: FuturesUnordered<_> = self
            .client
            .endpoints
            .iter()
            .map(|endpoint| {
                let mut single = self.client.clone();
                single.endpoints = vec![endpoint.clone()];
                let lease = self.lease;
                async move {
                    let mut client = etcd::connect(&single).await?;
                    let (keeper, responses) = within(limit, client.lease_keep_alive(lease)).await?;
                    debug!(lease, endpoint = %single.endpoints[0], "keepalive stream open");
                    Ok::<_, EtcdError>((client, keeper, responses))
                }
            })
            .collect();
        let mut last_error = None;
        while let Some(attempt) = attempts.next().await {
            match attempt {
                Ok((client, keeper, responses)) => {
                    return Ok(Stream::opened(client, keeper, responses, self.interval()));
                }
                Err(error) if error.is_lease_not_found() => return Err(error),
                Err(error) => last_error = Some(error),
            }
        }
        Err(last_error.unwrap_or(EtcdError::Timeout(limit)))
    }

    /// Opens the stream through `client` alone, waiting at most a renewal
    /// interval (the lease was granted just now: a member that does not
    /// answer must not cost more than the first renewal's slack).
    async fn open_on(&self, mut client: Client) -> Result<Stream, EtcdError> {
        let limit = self.interval().min(self.client.dial_timeout);
        let (keeper, responses) = within(limit, client.lease_keep_alive(self.lease)).await?;
        debug!(lease = self.lease, "keepalive stream open");
        Ok(Stream::opened(client, keeper, responses, self.interval()))
    }

    /// Renews at TTL/3 and waits for the answer under a deadline of TTL/3,
    /// so a half-open connection is found long before the lease can expire.
    async fn next_event(&self, stream: &mut Stream) -> Event {
        let interval = self.interval();
        loop {
            let wake = stream.awaiting.unwrap_or(stream.next_send);
            tokio::select! {
                message = stream.responses.message() => match message {
                    Ok(Some(response)) if response.ttl() > 0 => {
                        stream.awaiting = None;
                        stream.next_send = Instant::now() + interval;
                        return Event::Renewed(Duration::from_secs(response.ttl() as u64));
                    }
                    Ok(Some(_)) => return Event::Expired,
                    Ok(None) => return Event::Broken("keepalive stream closed by etcd".into()),
                    Err(e) => return Event::Broken(EtcdError::from(e).to_string()),
                },
                () = sleep_until(wake) => {
                    if stream.awaiting.is_some() {
                        return Event::Broken(format!("no keepalive answer within {interval:?}"));
                    }
                    if let Err(e) = stream.keeper.keep_alive().await {
                        return Event::Broken(EtcdError::from(e).to_string());
                    }
                    stream.awaiting = Some(Instant::now() + interval);
                }
            }
        }
    }
}
