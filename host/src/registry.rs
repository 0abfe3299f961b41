//! The etcd session: one actor owns the client, the lease and the record of
//! what it wrote; each lease's keepalive runs in a task of its own
//! ([`keepalive`]) that the actor starts and stops and that reports to it. Everyone else holds a
//! [`RegistryHandle`], publishes the desired state through it, and reads the
//! actor's [`RegistryStatus`].
//!
//! The actor is a reconciler: whatever woke it (start, a new desired state, a
//! lost lease, a failed request, the anti-entropy timer), it makes etcd hold
//! exactly the desired records, writing only what differs. It never gives up:
//! every etcd failure is retried with capped, jittered backoff.

mod batch;
mod keepalive;

use std::collections::{BTreeMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use etcd_client::{Client, Compare, CompareOp, PutOptions, Txn, TxnOp, TxnOpResponse};
use rand::Rng;
use tokio::sync::{oneshot, watch};
use tokio::time::{Instant, sleep_until};
use tokio_util::sync::DropGuard;
use tokio_util::task::TaskTracker;
use tracing::{info, warn};

use crate::config::RegistryConfig;
use crate::etcd::{self, EtcdError, before, within};
use crate::metrics::{self, Metrics};
use batch::{MAX_TXN_BYTES, MAX_TXN_OPS, Op};
use keepalive::LeaseHealth;

/// First retry delay after a failure; it doubles up to `retryInterval`.
const FIRST_RETRY: Duration = Duration::from_millis(100);

/// One instance as it should appear in etcd.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DesiredRecord {
    /// The JSON value.
    pub value: String,
    /// `namespace/name/version`, for log lines.
    pub service: String,
    /// `scheme://address` of each endpoint, for log lines.
    pub endpoints: Vec<String>,
}

/// Everything the actor should make true: how to reach etcd and hold keys,
/// and the records by full etcd key.
#[derive(Debug, Clone, PartialEq)]
pub struct Target {
    pub config: RegistryConfig,
    pub records: BTreeMap<String, DesiredRecord>,
}

/// What the actor knows about its registrations, for `/readyz`, systemd
/// readiness and metrics.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RegistryStatus {
    /// The last etcd request succeeded.
    pub connected: bool,
    /// The lease holding our keys, while etcd confirms it alive.
    pub lease: Option<i64>,
    pub desired: usize,
    /// Desired records etcd holds as we wrote them, under a live lease.
    pub registered: usize,
    /// Every desired record is registered under a live lease.
    pub ready: bool,
}

impl RegistryStatus {
    /// `3/5 instances registered; etcd connected`: for people (`/readyz`,
    /// `systemctl status`).
    pub fn summary(&self) -> String {
        format!(
            "{}/{} instances registered; etcd {}",
            self.registered,
            self.desired,
            if self.connected {
                "connected"
            } else {
                "unreachable"
            }
        )
    }
}

/// The handle the supervisor keeps. Dropping it without [`stop`] leaves the
/// actor running until the tracker is closed; `stop` is the orderly way out.
///
/// [`stop`]: RegistryHandle::stop
pub struct RegistryHandle {
    target: watch::Sender<Arc<Target>>,
    status: watch::Receiver<RegistryStatus>,
    stop: oneshot::Sender<Instant>,
    done: oneshot::Receiver<()>,
}

impl RegistryHandle {
    /// Starts the actor on `tracker` with an initial target. Without one,
    /// the actor connects to nothing until the first [`set_target`].
    ///
    /// [`set_target`]: RegistryHandle::set_target
    pub fn spawn(
        target: Option<Target>,
        metrics: Metrics,
        tracker: &TaskTracker,
    ) -> RegistryHandle {
        let idle = target.is_none();
        let target = target.unwrap_or_else(|| Target {
            config: RegistryConfig::default(),
            records: BTreeMap::new(),
        });
        let (target_tx, mut target_rx) = watch::channel(Arc::new(target));
        if idle {
            // The placeholder is not a target: the first `set_target` is.
            target_rx.mark_unchanged();
        }
        let (status_tx, status_rx) = watch::channel(RegistryStatus::default());
        let (stop_tx, stop_rx) = oneshot::channel();
        let (done_tx, done_rx) = oneshot::channel();
        let initial = target_rx.borrow().clone();
        let actor = Actor {
            target: initial,
            target_rx,
            stop_rx,
            status_tx,
            metrics,
            session: None,
            retiring: Vec::new(),
            announced: HashSet::new(),
            failures: 0,
            next_verify: Instant::now(),
            verify_due: false,
            connected: false,
            tracker: tracker.clone(),
        };
        tracker.spawn(async move {
            actor.run(idle).await;
            let _ = done_tx.send(());
        });
        RegistryHandle {
            target: target_tx,
            status: status_rx,
            stop: stop_tx,
            done: done_rx,
        }
    }

    /// Replaces the desired state; the actor converges on the latest one
    /// (intermediate states published in a burst are skipped).
    pub fn set_target(&self, target: Target) {
        self.target.send_if_modified(|current| {
            if **current == target {
                false
            } else {
                *current = Arc::new(target);
                true
            }
        });
    }

    pub fn status(&self) -> watch::Receiver<RegistryStatus> {
        self.status.clone()
    }

    /// Stops renewing, deletes our keys and revokes the lease, giving up at
    /// `deadline`. Returns whether the actor finished in time.
    pub async fn stop(self, deadline: Instant) -> bool {
        if self.stop.send(deadline).is_err() {
            return true;
        }
        tokio::time::timeout_at(deadline, self.done).await.is_ok()
    }
}

/// What we wrote under one key, as etcd confirmed it.
#[derive(Debug, Clone)]
struct Written {
    value: String,
    /// `namespace/name/version`, so every log line about the key names it.
    service: String,
    /// The revision of our write: a different one means someone else wrote.
    mod_revision: i64,
    /// 0 when written without a lease.
    lease: i64,
}

struct Lease {
    id: i64,
    /// What the lease's keeper task reports.
    health: watch::Receiver<LeaseHealth>,
    /// Dropping it stops the keeper: no renewal after that.
    keeper: Option<DropGuard>,
}

impl Lease {
    /// When etcd will drop the lease unless renewed, as far as we know.
    fn expires_at(&self) -> Option<Instant> {
        self.health.borrow().expires_at()
    }
}

/// A client, the lease for it, and what it holds in etcd. A registry config
/// change starts a new session; the old one is retired once the new one
/// holds every key.
struct Session {
    config: RegistryConfig,
    client: Client,
    lease: Option<Lease>,
    written: BTreeMap<String, Written>,
    max_ops: usize,
    max_bytes: usize,
}

struct Actor {
    /// Where lease keepers run.
    tracker: TaskTracker,
    target_rx: watch::Receiver<Arc<Target>>,
    target: Arc<Target>,
    stop_rx: oneshot::Receiver<Instant>,
    status_tx: watch::Sender<RegistryStatus>,
    metrics: Metrics,
    session: Option<Session>,
    /// Sessions from before a registry config change, kept alive until the
    /// current one has written everything.
    retiring: Vec<Session>,
    /// Keys already announced with "instance registered successfully".
    announced: HashSet<String>,
    /// Consecutive failed rounds, for backoff.
    failures: u32,
    next_verify: Instant,
    verify_due: bool,
    connected: bool,
}

enum Wake {
    Stop(Instant),
    Work,
}

fn jitter(d: Duration, low: f64, high: f64) -> Duration {
    d.mul_f64(rand::rng().random_range(low..high))
}

impl Actor {
    async fn run(mut self, idle: bool) {
        if idle {
            // Nothing to hold yet: wait for the first target (or a stop,
            // with nothing to deregister).
            tokio::select! {
                _ = &mut self.stop_rx => return,
                changed = self.target_rx.changed() => {
                    if changed.is_err() {
                        return;
                    }
                    self.target = self.target_rx.borrow_and_update().clone();
                }
            }
        }
        let deadline = loop {
            self.publish_target_gauges();
            let retry_at = match self.converge().await {
                Ok(()) => {
                    self.failures = 0;
                    self.set_connected(true);
                    None
                }
                Err(error) => {
                    self.failures += 1;
                    self.set_connected(false);
                    let delay = self.retry_delay();
                    warn!(
                        error = %error,
                        attempt = self.failures,
                        retry_in = ?delay,
                        "etcd request failed; retrying"
                    );
                    Some(Instant::now() + delay)
                }
            };
            self.publish_status();
            if let Wake::Stop(deadline) = self.wait(retry_at).await {
                break deadline;
            }
        };
        self.deregister(deadline).await;
    }

    /// Capped exponential backoff with jitter: fast for a blip, at most
    /// `retryInterval` for an outage, and spread so a fleet of agents does
    /// not hit a recovering etcd in step.
    fn retry_delay(&self) -> Duration {
        let cap = self.target.config.retry_interval;
        let exp = FIRST_RETRY.saturating_mul(1 << self.failures.saturating_sub(1).min(16));
        jitter(exp.min(cap), 0.5, 1.0)
    }

    /// Sleeps until there is something to do, following the lease's health.
    async fn wait(&mut self, retry_at: Option<Instant>) -> Wake {
        loop {
            let verify_at =
                (retry_at.is_none() && self.session.is_some()).then_some(self.next_verify);
            let health = self
                .session
                .as_mut()
                .and_then(|s| s.lease.as_mut())
                .map(|l| &mut l.health);
            let has_lease = health.is_some();
            tokio::select! {
                biased;
                deadline = &mut self.stop_rx => {
                    // A dropped handle still gets an orderly stop.
                    return Wake::Stop(deadline.unwrap_or_else(|_| {
                        Instant::now() + crate::config::DEFAULT_SHUTDOWN_TIMEOUT
                    }));
                }
                changed = self.target_rx.changed() => {
                    if changed.is_err() {
                        // The supervisor is gone without stopping us.
                        return Wake::Stop(Instant::now() + crate::config::DEFAULT_SHUTDOWN_TIMEOUT);
                    }
                    self.target = self.target_rx.borrow_and_update().clone();
                    return Wake::Work;
                }
                                changed = async { health.expect("guarded").changed().await }, if has_lease => {
                    if changed.is_err() {
                        // The keeper ended without a word: nobody renews.
                        let id = self.session.as_ref().map_or(0, Session::lease_id);
                        self.lose_lease(id, "its keepalive task ended");
                        return Wake::Work;
                    }
                    if self.on_lease_health() {
                        return Wake::Work;
                    }
                }
                _ = sleep_until(retry_at.unwrap_or_else(Instant::now)), if retry_at.is_some() => {
                    return Wake::Work;
                }
                _ = sleep_until(verify_at.unwrap_or_else(Instant::now)), if verify_at.is_some() => {
                    self.verify_due = true;
                    return Wake::Work;
                }
            }
        }
    }

    /// Follows what the keeper reports about the current lease; true when
    /// the lease is lost and the actor must converge.
    fn on_lease_health(&mut self) -> bool {
        let Some(lease) = self.session.as_mut().and_then(|s| s.lease.as_mut()) else {
            return true;
        };
        let health = lease.health.borrow_and_update().clone();
        let id = lease.id;
        match health {
            LeaseHealth::Alive { .. } => {
                if !self.connected {
                    self.set_connected(true);
                }
                self.publish_status();
                false
            }
            LeaseHealth::Interrupted { .. } => {
                self.set_connected(false);
                self.publish_status();
                false
            }
            LeaseHealth::Lost { reason } => {
                self.lose_lease(id, &reason);
                true
            }
        }
    }

    fn lose_lease(&mut self, id: i64, reason: &str) {
        let Some(session) = self.session.as_mut() else {
            return;
        };
        self.metrics.lease_losses.inc();
        warn!(
            lease = id,
            reason,
            instances = self.target.records.len(),
            "lease lost; granting a new lease and registering every instance again"
        );
        session.lease = None;
        self.publish_status();
    }

    /// One round towards the target: session, lease, repair, writes.
    async fn converge(&mut self) -> Result<(), EtcdError> {
        let target = self.target.clone();
        if self
            .session
            .as_ref()
            .is_some_and(|s| s.config != target.config)
        {
            let old = self.session.take().expect("checked above");
            info!("registry settings changed: moving the registrations to a new etcd session");
            self.retiring.push(old);
        }
        if self.session.is_none() {
            let client = etcd::connect(&target.config.client).await?;
            self.session = Some(Session::new(target.config.clone(), client));
        }
        match self.converge_session(&target).await {
            Err(error) if error.is_lease_not_found() => {
                let id = self.session.as_ref().map_or(0, Session::lease_id);
                self.lose_lease(id, "etcd no longer knows it");
                self.converge_session(&target).await?;
            }
            other => other?,
        }
        for old in std::mem::take(&mut self.retiring) {
            old.retire().await;
        }
        Ok(())
    }

    /// Lease, repair, writes. The lease's keeper opens its stream alongside
    /// the first write, so a first registration costs two round trips
    /// (grant, write) like a hand-written one.
    async fn converge_session(&mut self, target: &Target) -> Result<(), EtcdError> {
        let session = self.session.as_mut().expect("converge sets the session");
        session.grant_lease(&self.metrics, &self.tracker).await?;
        if self.verify_due {
            let repaired = session.verify().await?;
            if repaired > 0 {
                self.metrics.repairs.inc_by(repaired as u64);
            }
            self.verify_due = false;
            self.next_verify = Instant::now() + jitter(self.target.config.retry_interval, 0.8, 1.0);
        }
        session
            .reconcile(&target.records, &mut self.announced, &self.metrics)
            .await?;
        self.set_connected(true);
        self.publish_status();
        Ok(())
    }

    fn set_connected(&mut self, connected: bool) {
        self.connected = connected;
        self.metrics.etcd_connected.set(i64::from(connected));
    }

    fn publish_target_gauges(&self) {
        self.metrics
            .instances_desired
            .set(self.target.records.len() as i64);
    }

    fn publish_status(&self) {
        let now = Instant::now();
        let keep_alive = self.target.config.keep_alive;
        let (lease, registered) = match &self.session {
            Some(session) => {
                let live_lease = session
                    .lease
                    .as_ref()
                    .filter(|l| l.expires_at().is_some_and(|at| at > now))
                    .map(|l| l.id);
                let expected_lease = if keep_alive { live_lease } else { Some(0) };
                let registered = match expected_lease {
                    Some(lease_id) => self
                        .target
                        .records
                        .iter()
                        .filter(|(key, record)| {
                            session
                                .written
                                .get(*key)
                                .is_some_and(|w| w.value == record.value && w.lease == lease_id)
                        })
                        .count(),
                    None => 0,
                };
                (live_lease, registered)
            }
            None => (None, 0),
        };
        let desired = self.target.records.len();
        let status = RegistryStatus {
            connected: self.connected,
            lease,
            desired,
            registered,
            ready: self.connected && registered == desired && (lease.is_some() || !keep_alive),
        };
        self.metrics.instances_registered.set(registered as i64);
        self.status_tx.send_if_modified(|current| {
            if *current == status {
                false
            } else {
                *current = status;
                true
            }
        });
    }

    /// Stop: no renewal or write after this point (a late heartbeat must not
    /// bring back what we delete), then delete our keys and revoke the lease.
    async fn deregister(mut self, deadline: Instant) {
        for session in self.session.iter_mut().chain(self.retiring.iter_mut()) {
            if let Some(lease) = session.lease.as_mut() {
                lease.keeper = None;
            }
        }
        if self.session.is_none() {
            match tokio::time::timeout_at(deadline, etcd::connect(&self.target.config.client)).await
            {
                Ok(Ok(client)) => {
                    self.session = Some(Session::new(self.target.config.clone(), client))
                }
                Ok(Err(error)) => warn!(%error, "cannot reach etcd to deregister"),
                Err(_) => warn!("cannot reach etcd to deregister before the shutdown timeout"),
            }
        }
        let desired: Vec<String> = self.target.records.keys().cloned().collect();
        if let Some(session) = self.session.as_mut() {
            session.delete_all(&desired, deadline, &self.metrics).await;
        }
        for session in self.retiring.iter_mut() {
            session.delete_all(&[], deadline, &self.metrics).await;
        }
        let _ = self.status_tx.send(RegistryStatus::default());
        self.metrics.instances_registered.set(0);
    }
}

impl Session {
    /// A session that holds nothing yet.
    fn new(config: RegistryConfig, client: Client) -> Self {
        Session {
            config,
            client,
            lease: None,
            written: BTreeMap::new(),
            max_ops: MAX_TXN_OPS,
            max_bytes: MAX_TXN_BYTES,
        }
    }

    /// Stops the lease's keeper and revokes it (which also deletes whatever
    /// is still attached to it), giving up at `deadline`; a lease etcd no
    /// longer knows needs nothing.
    async fn revoke_lease(&mut self, deadline: Instant) {
        let Some(lease) = self.lease.take() else {
            return;
        };
        drop(lease.keeper);
        match before(deadline, self.client.lease_revoke(lease.id)).await {
            Ok(_) => info!(lease = lease.id, "lease revoked"),
            Err(error) if error.is_lease_not_found() => {}
            Err(error) => {
                warn!(lease = lease.id, %error, "cannot revoke the lease; it expires on its own")
            }
        }
    }

    fn limit(&self) -> Duration {
        self.config.client.dial_timeout
    }

    /// With `keepAlive: true`, grants a lease unless we hold one, and starts
    /// its keeper.
    async fn grant_lease(
        &mut self,
        metrics: &Metrics,
        tracker: &TaskTracker,
    ) -> Result<(), EtcdError> {
        if !self.config.keep_alive || self.lease.is_some() {
            return Ok(());
        }
        let ttl = self.config.ttl;
        let granted = within(
            self.limit(),
            self.client.lease_grant(ttl.as_secs() as i64, None),
        )
        .await?;
        metrics.lease_grants.inc();
        info!(lease = granted.id(), ttl = ?ttl, "lease granted");
        let (health, keeper) = keepalive::spawn(
            self.config.client.clone(),
            granted.id(),
            Duration::from_secs(granted.ttl() as u64),
            metrics.clone(),
            tracker,
        );
        self.lease = Some(Lease {
            id: granted.id(),
            health,
            keeper: Some(keeper),
        });
        Ok(())
    }

    fn lease_id(&self) -> i64 {
        self.lease.as_ref().map_or(0, |l| l.id)
    }

    /// Anti-entropy: one transaction per batch compares every key's revision
    /// with the one we wrote; only when something differs does etcd send the
    /// keys back, and we forget what it no longer holds as we wrote it, so
    /// the next reconcile puts it back. Returns the number of such keys.
    async fn verify(&mut self) -> Result<usize, EtcdError> {
        let lease_id = self.lease_id();
        let keys: Vec<(String, i64)> = self
            .written
            .iter()
            .map(|(k, w)| (k.clone(), w.mod_revision))
            .collect();
        let mut damaged = Vec::new();
        for chunk in keys.chunks(self.max_ops) {
            let compares: Vec<Compare> = chunk
                .iter()
                .map(|(key, rev)| Compare::mod_revision(key.as_str(), CompareOp::Equal, *rev))
                .collect();
            let gets: Vec<TxnOp> = chunk
                .iter()
                .map(|(key, _)| TxnOp::get(key.as_str(), None))
                .collect();
            let response = within(
                self.limit(),
                self.client.txn(Txn::new().when(compares).or_else(gets)),
            )
            .await?;
            if response.succeeded() {
                continue;
            }
            for ((key, _), op) in chunk.iter().zip(response.op_responses()) {
                let TxnOpResponse::Get(get) = op else {
                    continue;
                };
                let written = &self.written[key];
                match get.kvs().first() {
                    None => {
                        warn!(key = %key, service = %written.service, "instance key is missing from etcd; putting it back");
                        damaged.push(key.clone());
                    }
                    Some(kv)
                        if kv.value() != written.value.as_bytes() || kv.lease() != lease_id =>
                    {
                        warn!(key = %key, service = %written.service, "instance key was changed by someone else; putting it back");
                        damaged.push(key.clone());
                    }
                    Some(kv) => {
                        // Same content rewritten by someone: adopt the revision.
                        let rev = kv.mod_revision();
                        if let Some(w) = self.written.get_mut(key) {
                            w.mod_revision = rev;
                        }
                    }
                }
            }
        }
        for key in &damaged {
            self.written.remove(key);
        }
        Ok(damaged.len())
    }

    /// Writes what differs between `records` and what we hold in etcd, and
    /// deletes what is no longer wanted, in as few transactions as fit.
    async fn reconcile(
        &mut self,
        records: &BTreeMap<String, DesiredRecord>,
        announced: &mut HashSet<String>,
        metrics: &Metrics,
    ) -> Result<(), EtcdError> {
        let lease_id = self.lease_id();
        let puts: Vec<(String, usize)> = records
            .iter()
            .filter(|(key, record)| {
                !self
                    .written
                    .get(*key)
                    .is_some_and(|w| w.value == record.value && w.lease == lease_id)
            })
            .map(|(key, record)| (key.clone(), key.len() + record.value.len()))
            .collect();
        let deletes: Vec<(String, usize)> = self
            .written
            .keys()
            .filter(|key| !records.contains_key(*key))
            .map(|key| (key.clone(), key.len()))
            .collect();
        if puts.is_empty() && deletes.is_empty() {
            return Ok(());
        }
        for ops in batch::plan(deletes, puts, self.max_ops, self.max_bytes) {
            let txn_ops: Vec<TxnOp> = ops
                .iter()
                .map(|op| match op {
                    Op::Put(key) => {
                        let options =
                            (lease_id != 0).then(|| PutOptions::new().with_lease(lease_id));
                        TxnOp::put(key.as_str(), records[key].value.as_str(), options)
                    }
                    Op::Delete(key) => TxnOp::delete(key.as_str(), None),
                })
                .collect();
            let puts_in_batch = ops.iter().filter(|op| matches!(op, Op::Put(_))).count() as u64;
            let response =
                match within(self.limit(), self.client.txn(Txn::new().and_then(txn_ops))).await {
                    Ok(response) => response,
                    Err(error) => {
                        metrics
                            .registrations
                            .get_or_create(&metrics::ERROR)
                            .inc_by(puts_in_batch);
                        if error.is_request_too_large() && self.max_ops > 2 {
                            self.max_ops /= 2;
                            self.max_bytes /= 2;
                            warn!(
                                max_ops = self.max_ops,
                                "etcd refused the transaction as too large; using smaller ones"
                            );
                        }
                        return Err(error);
                    }
                };
            let revision = response.header().map_or(0, |h| h.revision());
            for op in ops {
                match op {
                    Op::Put(key) => {
                        let record = &records[&key];
                        if announced.insert(key.clone()) {
                            let service = &record.service;
                            info!(key = %key, %service, "instance registered successfully");
                            info!(key = %key, %service, "service: {service}");
                            info!(key = %key, %service, "endpoints: {}", record.endpoints.len());
                            for endpoint in &record.endpoints {
                                info!(key = %key, %service, "  - {endpoint}");
                            }
                        } else {
                            info!(key = %key, service = %record.service, "instance re-registered");
                        }
                        self.written.insert(
                            key,
                            Written {
                                value: record.value.clone(),
                                service: record.service.clone(),
                                mod_revision: revision,
                                lease: lease_id,
                            },
                        );
                    }
                    Op::Delete(key) => {
                        if let Some(written) = self.written.remove(&key) {
                            info!(key = %key, service = %written.service, "instance deregistered");
                        }
                        announced.remove(&key);
                        metrics.deregistrations.get_or_create(&metrics::OK).inc();
                    }
                }
            }
            metrics
                .registrations
                .get_or_create(&metrics::OK)
                .inc_by(puts_in_batch);
        }
        Ok(())
    }

    /// After a registry config change: deletes the keys this session wrote
    /// that nobody rewrote since (a new session on the same cluster rewrote
    /// the ones it keeps), and revokes the lease.
    async fn retire(mut self) {
        if let Some(lease) = self.lease.as_mut() {
            lease.keeper = None;
        }
        let deadline = Instant::now() + self.limit();
        let keys: Vec<(String, i64)> = self
            .written
            .iter()
            .map(|(k, w)| (k.clone(), w.mod_revision))
            .collect();
        for chunk in keys.chunks(self.max_ops) {
            let guarded: Vec<TxnOp> = chunk
                .iter()
                .map(|(key, rev)| {
                    TxnOp::txn(
                        Txn::new()
                            .when([Compare::mod_revision(key.as_str(), CompareOp::Equal, *rev)])
                            .and_then([TxnOp::delete(key.as_str(), None)]),
                    )
                })
                .collect();
            if let Err(error) =
                before(deadline, self.client.txn(Txn::new().and_then(guarded))).await
            {
                warn!(%error, "cannot remove the registrations of the previous settings; their lease will expire");
                break;
            }
        }
        self.revoke_lease(deadline).await;
    }

    /// Deletes every key we wrote plus `also` (keys we may have written
    /// without hearing back), then revokes the lease, giving up at `deadline`.
    async fn delete_all(&mut self, also: &[String], deadline: Instant, metrics: &Metrics) {
        let mut keys: Vec<String> = self.written.keys().cloned().collect();
        keys.extend(
            also.iter()
                .filter(|k| !self.written.contains_key(*k))
                .cloned(),
        );
        for chunk in keys.chunks(self.max_ops) {
            let deletes: Vec<TxnOp> = chunk
                .iter()
                .map(|k| TxnOp::delete(k.as_str(), None))
                .collect();
            match before(deadline, self.client.txn(Txn::new().and_then(deletes))).await {
                Ok(_) => {
                    for key in chunk {
                        if let Some(written) = self.written.remove(key) {
                            info!(key = %key, service = %written.service, "instance deregistered");
                        }
                        metrics.deregistrations.get_or_create(&metrics::OK).inc();
                    }
                }
                Err(error) => {
                    metrics
                        .deregistrations
                        .get_or_create(&metrics::ERROR)
                        .inc_by(chunk.len() as u64);
                    warn!(%error, keys = chunk.len(), "cannot delete instance keys; they expire with the lease");
                    break;
                }
            }
        }
        self.revoke_lease(deadline).await;
    }
}
