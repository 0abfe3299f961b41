//! One etcd session of the registry actor: a client built from one
//! registry config, the lease its keys hang on (and that lease's keeper),
//! and what it wrote. The actor decides when to start, use and retire a
//! session; the requests are made here.

use std::collections::{BTreeMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use etcd_client::{
    Client, Compare, CompareOp, LeaseTimeToLiveOptions, PutOptions, Txn, TxnOp, TxnOpResponse,
};
use tokio::sync::watch;
use tokio::time::Instant;
use tokio_util::sync::DropGuard;
use tokio_util::task::TaskTracker;
use tracing::{debug, info, warn};

use super::batch::{self, MAX_TXN_BYTES, MAX_TXN_OPS, Op};
use super::keepalive::{self, LeaseHealth};
use super::lease_record::{LeaseRecord, RecordedKey};
use crate::config::RegistryConfig;
use crate::desired::{DesiredRecord, RecordKind};
use crate::etcd::{EtcdError, before, within};
use crate::metrics::{self, Metrics};

/// What we wrote under one key, as etcd confirmed it.
#[derive(Debug, Clone)]
struct Written {
    /// Shared with the record it was written from (see `DesiredRecord`).
    value: Arc<str>,
    /// `namespace/name/version`, so every log line about the key names it.
    service: Arc<str>,
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
    /// What the lease's keeper task reports (for a lease nobody renews,
    /// `Alive` until its TTL from the grant, from `fixed`).
    pub(super) health: watch::Receiver<LeaseHealth>,
    /// Dropping it stops the keeper: no renewal after that.
    keeper: Option<DropGuard>,
    /// `keepAlive: false`: the lease is never renewed; the sender of its
    /// fixed health, and when the actor moves the keys to a new lease.
    fixed: Option<(watch::Sender<LeaseHealth>, Instant)>,
}

impl Lease {
    /// When etcd will drop the lease unless renewed, as far as we know.
    pub(super) fn expires_at(&self) -> Option<Instant> {
        self.health.borrow().expires_at()
    }

    /// `keepAlive: false`: when the keys move to a new lease, a third of
    /// the TTL before this one ends, so they never go while we run.
    pub(super) fn rotate_at(&self) -> Option<Instant> {
        self.fixed.as_ref().map(|(_, at)| *at)
    }
}

/// A client, the lease for it, and what it holds in etcd. A registry config
/// change starts a new session; the old one is retired once the new one
/// holds every key.
pub(super) struct Session {
    pub(super) config: RegistryConfig,
    client: Client,
    pub(super) lease: Option<Lease>,
    written: WrittenKeys,
    max_ops: usize,
    max_bytes: usize,
    /// Rewrites are routine (a `keepAlive: false` lease rotation): logged
    /// at debug, not once per key every round.
    routine: bool,
    /// The revision of the last full comparison.
    verified_at: i64,
}

impl Session {
    /// A session that holds nothing yet.
    pub(super) fn new(config: RegistryConfig, client: Client) -> Self {
        Session {
            config,
            client,
            lease: None,
            written: WrittenKeys::new(),
            max_ops: MAX_TXN_OPS,
            max_bytes: MAX_TXN_BYTES,
            routine: false,
            verified_at: 0,
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

    /// Grants a lease unless we hold one. With `keepAlive: true` its keeper
    /// starts; with `false` nobody renews it (as Yggdrasil's Go `putOnce`):
    /// every key is still on a lease of `ttl`, so none outlives the agent
    /// by more than `ttl`.
    pub(super) async fn grant_lease(
        &mut self,
        metrics: &Metrics,
        tracker: &TaskTracker,
    ) -> Result<(), EtcdError> {
        if self.lease.is_some() {
            return Ok(());
        }
        let ttl = self.config.ttl;
        let asked = Instant::now();
        let granted = within(
            self.limit(),
            self.client.lease_grant(ttl.as_secs() as i64, None),
        )
        .await?;
        metrics.lease_grants.inc();
        info!(lease = granted.id(), ttl = ?ttl, "lease granted");
        if !self.config.keep_alive {
            // Counted from the request: etcd's clock started no earlier.
            let granted_ttl = Duration::from_secs(granted.ttl().max(1) as u64);
            let expires_at = asked + granted_ttl;
            let (fixed, health) = watch::channel(LeaseHealth::Alive { expires_at });
            self.lease = Some(Lease {
                id: granted.id(),
                health,
                keeper: None,
                fixed: Some((fixed, expires_at - granted_ttl / 3)),
            });
            return Ok(());
        }
        let (health, keeper) = keepalive::spawn(
            self.config.client.clone(),
            self.client.clone(),
            granted.id(),
            Duration::from_secs(granted.ttl() as u64),
            metrics.clone(),
            tracker,
        );
        self.lease = Some(Lease {
            id: granted.id(),
            health,
            keeper: Some(keeper),
            fixed: None,
        });
        Ok(())
    }

    /// `keepAlive: false`: moves every key to a new lease before the current
    /// one ends (grant, rewrite on it, revoke the old one, which then holds
    /// nothing). Returns whether it rotated.
    pub(super) async fn rotate_lease(
        &mut self,
        records: &BTreeMap<String, DesiredRecord>,
        announced: &mut HashSet<String>,
        metrics: &Metrics,
        tracker: &TaskTracker,
    ) -> Result<(), EtcdError> {
        let Some(old) = self.lease.take() else {
            return Ok(());
        };
        if let Err(error) = self.grant_lease(metrics, tracker).await {
            self.lease = Some(old);
            return Err(error);
        }
        self.routine = true;
        let rewritten = self.reconcile(records, announced, metrics).await;
        self.routine = false;
        rewritten?;
        debug!(
            old = old.id,
            new = self.lease_id(),
            "keys moved to a new lease (keepAlive: false)"
        );
        let deadline = Instant::now() + self.limit();
        match before(deadline, self.client.lease_revoke(old.id)).await {
            Ok(_) => {}
            Err(error) if error.is_lease_not_found() => {}
            Err(error) => {
                warn!(lease = old.id, %error, "cannot revoke the previous lease; it expires on its own")
            }
        }
        Ok(())
    }

    /// What this session holds, for the lease record: the lease and the
    /// keys written on it.
    pub(super) fn record(&self) -> Option<LeaseRecord> {
        let lease = self.lease.as_ref()?.id;
        let mut record = LeaseRecord::new(&self.config, lease);
        record.keys = self
            .written
            .iter()
            .filter(|(_, w)| w.lease == lease)
            .map(|(key, w)| {
                let recorded = RecordedKey {
                    value: w.value.clone(),
                    mod_revision: w.mod_revision,
                    service: w.service.clone(),
                    naming: w.kind == RecordKind::Naming,
                };
                (key.clone(), recorded)
            })
            .collect();
        Some(record)
    }

    /// A previous process's lease, from its record. `None` when etcd no
    /// longer keeps it. Otherwise a session holding it, with what etcd
    /// holds on it now (the keys attached to the lease, read back; the
    /// record's revisions spare the reads when nothing changed), and
    /// whether it can be adopted (kept alive) as it is: a lease of another
    /// TTL, or one under `keepAlive: false`, is only retired once a new
    /// lease holds the keys.
    pub(super) async fn resume(
        config: RegistryConfig,
        mut client: Client,
        record: &LeaseRecord,
        metrics: &Metrics,
        tracker: &TaskTracker,
    ) -> Result<Option<(Session, bool)>, EtcdError> {
        let limit = config.client.dial_timeout;
        let alive = match within(
            limit,
            client.lease_time_to_live(
                record.lease,
                Some(LeaseTimeToLiveOptions::new().with_keys()),
            ),
        )
        .await
        {
            Ok(alive) if alive.ttl() > 0 => alive,
            Ok(_) => return Ok(None),
            Err(error) if error.is_lease_not_found() => return Ok(None),
            Err(error) => return Err(error),
        };
        let id = record.lease;
        let mut session = Session::new(config, client);
        let attached: Vec<String> = alive
            .keys()
            .iter()
            .filter_map(|k| String::from_utf8(k.clone()).ok())
            .collect();
        session.read_back(id, &attached, record).await?;
        let granted = Duration::from_secs(alive.granted_ttl().max(1) as u64);
        let adoptable = session.config.keep_alive && granted == session.config.ttl;
        let lease = if adoptable {
            let (health, keeper) = keepalive::spawn(
                session.config.client.clone(),
                session.client.clone(),
                id,
                granted,
                metrics.clone(),
                tracker,
            );
            Lease {
                id,
                health,
                keeper: Some(keeper),
                fixed: None,
            }
        } else {
            let expires_at = Instant::now() + Duration::from_secs(alive.ttl() as u64);
            let (fixed, health) = watch::channel(LeaseHealth::Alive { expires_at });
            Lease {
                id,
                health,
                keeper: None,
                fixed: Some((fixed, expires_at)),
            }
        };
        session.lease = Some(lease);
        Ok(Some((session, adoptable)))
    }

    /// Fills `written` with what etcd holds under `keys` on lease `id`:
    /// one transaction per batch checks the recorded revisions; only when
    /// one differs (or a key is not in the record: the record may lag
    /// behind the last writes) does etcd send the keys back.
    async fn read_back(
        &mut self,
        id: i64,
        keys: &[String],
        record: &LeaseRecord,
    ) -> Result<(), EtcdError> {
        let chunk_size = self.max_ops;
        for chunk in keys.chunks(chunk_size) {
            let compares: Vec<Compare> = chunk
                .iter()
                .map(|key| {
                    let rev = record.keys.get(key).map_or(0, |r| r.mod_revision);
                    Compare::mod_revision(key.as_str(), CompareOp::Equal, rev)
                })
                .collect();
            let gets: Vec<TxnOp> = chunk
                .iter()
                .map(|key| TxnOp::get(key.as_str(), None))
                .collect();
            let response = within(
                self.limit(),
                self.client.txn(Txn::new().when(compares).or_else(gets)),
            )
            .await?;
            let mut held: Vec<(String, Arc<str>, i64)> = Vec::with_capacity(chunk.len());
            if response.succeeded() {
                // Every key as recorded (one not recorded compared with
                // revision 0: it is gone).
                for key in chunk {
                    if let Some(r) = record.keys.get(key) {
                        held.push((key.clone(), r.value.clone(), r.mod_revision));
                    }
                }
            } else {
                for (key, op) in chunk.iter().zip(response.op_responses()) {
                    let TxnOpResponse::Get(get) = op else {
                        continue;
                    };
                    if let Some(kv) = get.kvs().first().filter(|kv| kv.lease() == id) {
                        let value: Arc<str> = String::from_utf8_lossy(kv.value()).into();
                        held.push((key.clone(), value, kv.mod_revision()));
                    }
                }
            }
            for (key, value, mod_revision) in held {
                let recorded = record.keys.get(&key);
                let written = Written {
                    value,
                    service: recorded.map(|r| r.service.clone()).unwrap_or_default(),
                    mod_revision,
                    lease: id,
                    kind: if recorded.is_some_and(|r| r.naming) {
                        RecordKind::Naming
                    } else {
                        RecordKind::Instance
                    },
                };
                self.written.insert(key, written);
            }
        }
        Ok(())
    }

    /// The keys to watch, each with the revision to watch after: our last
    /// write of it, or the last full comparison if that is later (a watch
    /// from before it may have been compacted away).
    /// Changes when a key is written or gone (unique across sessions).
    pub(super) fn written_stamp(&self) -> u64 {
        self.written.stamp
    }

    pub(super) fn watch_list(&self) -> Vec<(String, i64)> {
        self.written
            .iter()
            .map(|(k, w)| (k.clone(), w.mod_revision.max(self.verified_at)))
            .collect()
    }

    pub(super) fn client(&self) -> Client {
        self.client.clone()
    }

    /// A watch saw `key` written (`value` on `lease`) or deleted (`None`)
    /// at `revision`. Our own writes are not newer than what we recorded;
    /// a newer write of the same content on our lease is adopted. Anything
    /// else is damage: forgotten, so the next reconcile puts the key back.
    /// Returns whether it was damage.
    pub(super) fn note_change(
        &mut self,
        key: &str,
        revision: i64,
        value: Option<(Vec<u8>, i64)>,
    ) -> bool {
        let lease_id = self.lease_id();
        let Some(written) = self.written.get_mut(key) else {
            return false;
        };
        if revision <= written.mod_revision {
            return false;
        }
        let what = written.what();
        match value {
            Some((value, lease)) if value == written.value.as_bytes() && lease == lease_id => {
                written.mod_revision = revision;
                return false;
            }
            Some(_) => {
                warn!(key = %key, service = %written.service, "{what} was changed by someone else; putting it back")
            }
            None => {
                warn!(key = %key, service = %written.service, "{what} was deleted by someone else; putting it back")
            }
        }
        self.written.remove(key);
        true
    }

    /// The keys this session holds.
    pub(super) fn written_count(&self) -> usize {
        self.written.len()
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
        let mut verified_at = i64::MAX;
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
            if let Some(header) = response.header() {
                // The earliest of the batches: each key was as we wrote it
                // at that revision or later.
                verified_at = verified_at.min(header.revision());
            }
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
        if verified_at != i64::MAX {
            self.verified_at = verified_at;
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
                        TxnOp::put(key.as_str(), &*records[key].value, options)
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
                            for endpoint in record.endpoints.iter() {
                                info!(key = %key, %service, "  - {endpoint}");
                            }
                        } else if self.routine {
                            debug!(key = %key, service = %record.service, "instance moved to a new lease");
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

/// What a session wrote, by key, and a stamp that moves whenever a key
/// comes or goes: the watch on our keys follows them only when it moved.
/// Reads go to the map; every change of its keys goes through here.
struct WrittenKeys {
    keys: BTreeMap<String, Written>,
    stamp: u64,
}

impl WrittenKeys {
    fn new() -> WrittenKeys {
        WrittenKeys {
            keys: BTreeMap::new(),
            stamp: next_stamp(),
        }
    }

    fn insert(&mut self, key: String, written: Written) {
        if self.keys.insert(key, written).is_none() {
            self.stamp = next_stamp();
        }
    }

    fn remove(&mut self, key: &str) -> Option<Written> {
        let removed = self.keys.remove(key);
        if removed.is_some() {
            self.stamp = next_stamp();
        }
        removed
    }

    /// Changes what was written of a key, never which keys there are.
    fn get_mut(&mut self, key: &str) -> Option<&mut Written> {
        self.keys.get_mut(key)
    }
}

impl std::ops::Deref for WrittenKeys {
    type Target = BTreeMap<String, Written>;

    fn deref(&self) -> &Self::Target {
        &self.keys
    }
}

/// A stamp for `WrittenKeys`, never given twice in a process.
fn next_stamp() -> u64 {
    static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1);
    NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
}
