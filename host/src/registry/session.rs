//! One etcd session of the registry actor: a client built from one
//! registry config, the lease its keys hang on (and that lease's keeper),
//! and what it wrote. The actor decides when to start, use and retire a
//! session; the requests are made here.

use std::collections::{BTreeMap, HashSet};
use std::time::Duration;

use etcd_client::{Client, Compare, CompareOp, PutOptions, Txn, TxnOp, TxnOpResponse};
use tokio::sync::watch;
use tokio::time::Instant;
use tokio_util::sync::DropGuard;
use tokio_util::task::TaskTracker;
use tracing::{info, warn};

use super::batch::{self, MAX_TXN_BYTES, MAX_TXN_OPS, Op};
use super::keepalive::{self, LeaseHealth};
use crate::config::RegistryConfig;
use crate::desired::{DesiredRecord, RecordKind};
use crate::etcd::{EtcdError, before, within};
use crate::metrics::{self, Metrics};

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
    kind: RecordKind,
}

impl Written {
    /// What a log line calls the key.
    fn what(&self) -> &'static str {
        match self.kind {
            RecordKind::Instance => "instance key",
            RecordKind::Naming => "etcd-naming key",
        }
    }

    fn log_removed(&self, key: &str) {
        match self.kind {
            RecordKind::Instance => {
                info!(key = %key, service = %self.service, "instance deregistered")
            }
            RecordKind::Naming => {
                info!(key = %key, service = %self.service, "etcd-naming endpoint removed")
            }
        }
    }
}

pub(super) struct Lease {
    pub(super) id: i64,
    /// What the lease's keeper task reports.
    pub(super) health: watch::Receiver<LeaseHealth>,
    /// Dropping it stops the keeper: no renewal after that.
    keeper: Option<DropGuard>,
}

impl Lease {
    /// When etcd will drop the lease unless renewed, as far as we know.
    pub(super) fn expires_at(&self) -> Option<Instant> {
        self.health.borrow().expires_at()
    }
}

/// A client, the lease for it, and what it holds in etcd. A registry config
/// change starts a new session; the old one is retired once the new one
/// holds every key.
pub(super) struct Session {
    pub(super) config: RegistryConfig,
    client: Client,
    pub(super) lease: Option<Lease>,
    written: BTreeMap<String, Written>,
    max_ops: usize,
    max_bytes: usize,
}

impl Session {
    /// A session that holds nothing yet.
    pub(super) fn new(config: RegistryConfig, client: Client) -> Self {
        Session {
            config,
            client,
            lease: None,
            written: BTreeMap::new(),
            max_ops: MAX_TXN_OPS,
            max_bytes: MAX_TXN_BYTES,
        }
    }

    /// Sends the requests from now on through `client` (a new connection to
    /// the same cluster); the lease and what we wrote stay.
    pub(super) fn replace_client(&mut self, client: Client) {
        self.client = client;
    }

    /// Stops the lease's keeper: nothing is renewed after this, so a late
    /// renewal cannot keep alive what is about to be deleted.
    pub(super) fn stop_renewing(&mut self) {
        if let Some(lease) = self.lease.as_mut() {
            lease.keeper = None;
        }
    }

    /// Whether etcd holds `record` under `key` as we wrote it, on `lease_id`
    /// (0: without a lease).
    pub(super) fn holds(&self, key: &str, record: &DesiredRecord, lease_id: i64) -> bool {
        self.written
            .get(key)
            .is_some_and(|w| w.value == record.value && w.lease == lease_id)
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
    pub(super) async fn grant_lease(
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

    pub(super) fn lease_id(&self) -> i64 {
        self.lease.as_ref().map_or(0, |l| l.id)
    }

    /// Anti-entropy: one transaction per batch compares every key's revision
    /// with the one we wrote; only when something differs does etcd send the
    /// keys back, and we forget what it no longer holds as we wrote it, so
    /// the next reconcile puts it back. Returns the number of such keys.
    pub(super) async fn verify(&mut self) -> Result<usize, EtcdError> {
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
                        let what = written.what();
                        warn!(key = %key, service = %written.service, "{what} is missing from etcd; putting it back");
                        damaged.push(key.clone());
                    }
                    Some(kv)
                        if kv.value() != written.value.as_bytes() || kv.lease() != lease_id =>
                    {
                        let what = written.what();
                        warn!(key = %key, service = %written.service, "{what} was changed by someone else; putting it back");
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
    pub(super) async fn reconcile(
        &mut self,
        records: &BTreeMap<String, DesiredRecord>,
        announced: &mut HashSet<String>,
        metrics: &Metrics,
    ) -> Result<(), EtcdError> {
        let lease_id = self.lease_id();
        let puts: Vec<(String, usize)> = records
            .iter()
            .filter(|(key, record)| !self.holds(key, record, lease_id))
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
                        if record.kind == RecordKind::Naming {
                            let first = announced.insert(key.clone());
                            let endpoint = record.endpoints.join(",");
                            let message = if first {
                                "etcd-naming endpoint published"
                            } else {
                                "etcd-naming endpoint re-published"
                            };
                            info!(key = %key, service = %record.service, %endpoint, "{message}");
                        } else if announced.insert(key.clone()) {
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
                                kind: record.kind,
                            },
                        );
                    }
                    Op::Delete(key) => {
                        if let Some(written) = self.written.remove(&key) {
                            written.log_removed(&key);
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
    pub(super) async fn retire(mut self) {
        self.stop_renewing();
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
    pub(super) async fn delete_all(
        &mut self,
        also: &[String],
        deadline: Instant,
        metrics: &Metrics,
    ) {
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
                            written.log_removed(key);
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
