//! The registry actor: one task owns the etcd session (client, lease and
//! the record of what it wrote, in [`session`]); each lease's keepalive
//! runs in a task of its own ([`keepalive`]) that the actor starts and
//! stops and that reports to it. Everyone else holds a [`RegistryHandle`],
//! publishes the desired state ([`Target`], built by [`crate::desired`])
//! through it, and reads the actor's [`RegistryStatus`].
//!
//! The actor is a reconciler: whatever woke it (start, a new desired state, a
//! lost lease, a failed request, the anti-entropy timer), it makes etcd hold
//! exactly the desired records, writing only what differs. It never gives up:
//! every etcd failure is retried with capped, jittered backoff.

mod batch;
mod keepalive;
mod key_watch;
pub mod lease_record;
mod session;
mod status;

use std::collections::{BTreeMap, HashSet};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{oneshot, watch};
use tokio::time::{Instant, sleep_until};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{info, warn};

use crate::backoff::{Backoff, jitter};
use crate::config::RegistryConfig;
use crate::desired::Target;
use crate::etcd::{self, EtcdError};
use crate::metrics::Metrics;
use keepalive::LeaseHealth;
use key_watch::{KeyNews, Watcher};
use lease_record::{LeaseRecord, RecordWriter};
use session::Session;
pub use status::RegistryStatus;

/// First retry delay after a failure; it doubles up to `retryInterval`, and
/// each delay is multiplied by a random factor in [0.5, 1).
const FIRST_RETRY: Duration = Duration::from_millis(100);

/// The full comparison of every key with etcd, while a watch on our keys
/// reports every change at once: a safety net, jittered by U(0.8, 1).
/// Without a watch (it broke and is being restarted) the comparison runs
/// every `retryInterval`, as before watches.
const VERIFY_INTERVAL: Duration = Duration::from_secs(300);

/// A watch that lived this long was not failing: its restart starts over
/// from the first, quick delay.
const WATCH_HEALTHY_AFTER: Duration = Duration::from_secs(10);

/// The handle the supervisor keeps. Dropping it without [`stop`] leaves the
/// actor running until the tracker is closed; `stop` is the orderly way out.
///
/// [`stop`]: RegistryHandle::stop
pub struct RegistryHandle {
    target: watch::Sender<Arc<Target>>,
    status: watch::Receiver<RegistryStatus>,
    /// What the current session holds (lease, keys, revisions), after
    /// each round: what an upgrade hands the next process.
    record: watch::Receiver<Option<LeaseRecord>>,
    stop: oneshot::Sender<Stop>,
    done: oneshot::Receiver<()>,
}

/// How the actor ends.
#[derive(Debug, Clone, Copy)]
enum Stop {
    /// Delete every key and revoke the lease, giving up at the deadline.
    Deregister(Instant),
    /// An upgrade: another process holds the lease and the keys now. Stop
    /// renewing and watching, write nothing, delete nothing.
    HandOver,
}

impl RegistryHandle {
    /// Starts the actor on `tracker` with an initial target. Without one,
    /// the actor connects to nothing until the first [`set_target`].
    ///
    /// [`set_target`]: RegistryHandle::set_target
    ///
    /// Cancelling `abort` ends the actor at once, without deregistering:
    /// the backstop for a [`stop`] that overran its deadline.
    ///
    /// [`stop`]: RegistryHandle::stop
    pub fn spawn(
        target: Option<Target>,
        metrics: Metrics,
        tracker: &TaskTracker,
        abort: CancellationToken,
    ) -> RegistryHandle {
        Self::spawn_with_record(target, metrics, tracker, abort, None, None)
    }

    /// [`spawn`], keeping the lease record in `record_dir` (see
    /// [`lease_record`]): a lease recorded there by a previous process is
    /// adopted if etcd still keeps it. `handed`: the record the previous
    /// process handed over on an upgrade (`crate::handover`), adopted the
    /// same way and preferred to the file's.
    ///
    /// [`spawn`]: RegistryHandle::spawn
    pub fn spawn_with_record(
        target: Option<Target>,
        metrics: Metrics,
        tracker: &TaskTracker,
        abort: CancellationToken,
        record_dir: Option<PathBuf>,
        handed: Option<LeaseRecord>,
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
        let (record_tx, record_rx) = watch::channel(None);
        let (stop_tx, stop_rx) = oneshot::channel();
        let (done_tx, done_rx) = oneshot::channel();
        let initial = target_rx.borrow().clone();
        let retry = Backoff::new(FIRST_RETRY, initial.config.retry_interval).with_jitter(0.5, 1.0);
        let key_watch = Watcher::new(FIRST_RETRY, initial.config.retry_interval);
        let actor = Actor {
            target: initial,
            target_rx,
            stop_rx,
            status_tx,
            metrics,
            session: None,
            retiring: Vec::new(),
            announced: HashSet::new(),
            retry,
            next_verify: Instant::now(),
            verify_due: false,
            last_verify: None,
            connected: false,
            reconnect: false,
            tracker: tracker.clone(),
            record_dir,
            recorded: handed,
            record_tx,
            record_writer: None,
            key_watch,
        };
        tracker.spawn(async move {
            tokio::select! {
                () = actor.run(idle) => {}
                () = abort.cancelled() => {}
            }
            let _ = done_tx.send(());
        });
        RegistryHandle {
            target: target_tx,
            status: status_rx,
            record: record_rx,
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
        if self.stop.send(Stop::Deregister(deadline)).is_err() {
            return true;
        }
        tokio::time::timeout_at(deadline, self.done).await.is_ok()
    }

    /// What the current session holds now (`None` before a lease), for
    /// an upgrade's handover.
    pub fn record(&self) -> Option<LeaseRecord> {
        self.record.borrow().clone()
    }

    /// An upgrade handed the lease and the keys to a new process: stop
    /// renewing and watching at once, delete nothing, revoke nothing (the
    /// lease record file, if any, stays for the new process). Waits (at
    /// most until `deadline`) for the actor to be done.
    pub async fn hand_over(self, deadline: Instant) -> bool {
        if self.stop.send(Stop::HandOver).is_err() {
            return true;
        }
        tokio::time::timeout_at(deadline, self.done).await.is_ok()
    }
}

/// When to try again after a round that started at `started` and failed
/// at `failed`: `delay` from the start of the round, not from its failure.
/// A request that hung until its deadline (`dialTimeout`) has waited that
/// long already; without this, an agent that met a hung member after an
/// outage waited `dialTimeout` plus a whole backoff step (measured at 1,000
/// agents: 2 s + up to 3 s). Attempts still start at most `delay` apart,
/// and a round is never retried before it has failed.
fn next_attempt(started: Instant, failed: Instant, delay: Duration) -> Instant {
    (started + delay).max(failed)
}

struct Actor {
    /// Where lease keepers run.
    tracker: TaskTracker,
    target_rx: watch::Receiver<Arc<Target>>,
    target: Arc<Target>,
    stop_rx: oneshot::Receiver<Stop>,
    status_tx: watch::Sender<RegistryStatus>,
    metrics: Metrics,
    session: Option<Session>,
    /// Sessions from before a registry config change, kept alive until the
    /// current one has written everything.
    retiring: Vec<Session>,
    /// Keys already announced with "instance registered successfully".
    announced: HashSet<String>,
    /// Consecutive failed rounds and the delay before the next one.
    retry: Backoff,
    next_verify: Instant,
    verify_due: bool,
    last_verify: Option<(std::time::SystemTime, usize)>,
    connected: bool,
    /// The last round could not connect: the next one builds a new client
    /// for the session (see `EtcdError::is_unavailable`).
    reconnect: bool,
    /// Where the lease record is kept; `None`: nowhere.
    record_dir: Option<PathBuf>,
    /// A previous process's record, until the first session decides
    /// whether to adopt its lease.
    recorded: Option<LeaseRecord>,
    /// The current session's record after each round (the handle reads it).
    record_tx: watch::Sender<Option<LeaseRecord>>,
    record_writer: Option<RecordWriter>,
    /// The watch on the current session's keys.
    key_watch: Watcher,
}

enum Wake {
    Stop(Stop),
    Work,
}

impl Actor {
    async fn run(mut self, idle: bool) {
        if let Some(dir) = self.record_dir.clone() {
            let on_file = tokio::task::spawn_blocking({
                let dir = dir.clone();
                move || lease_record::load(&dir)
            })
            .await
            .ok()
            .flatten();
            // A handed-over record is newer than the file's.
            if self.recorded.is_none() {
                self.recorded = on_file;
            }
            self.record_writer = Some(RecordWriter::start(dir));
        }
        if idle {
            // Nothing to hold yet: wait for the first target (or a stop,
            // with nothing to deregister).
            tokio::select! {
                stop = &mut self.stop_rx => {
                    if let Ok(Stop::HandOver) = stop {
                        return self.hand_over().await;
                    }
                    return self.clear_record().await;
                }
                changed = self.target_rx.changed() => {
                    if changed.is_err() {
                        return self.clear_record().await;
                    }
                    self.target = self.target_rx.borrow_and_update().clone();
                }
            }
        }
        if let Some(record) = self.recorded.take() {
            match record.mismatch(&self.target.config) {
                Some(why) => {
                    info!(lease = record.lease, %why, "ignoring the lease record of the previous process")
                }
                None => self.recorded = Some(record),
            }
        }
        let stop = loop {
            self.publish_target_gauges();
            let started = Instant::now();
            let converged = self.converge().await;
            self.save_record();
            let retry_at = match converged {
                Ok(()) => {
                    self.retry.reset();
                    self.set_connected(true);
                    self.ensure_key_watch();
                    None
                }
                Err(error) => {
                    self.set_connected(false);
                    self.reconnect = error.is_unavailable();
                    let delay = self.retry_delay();
                    let now = Instant::now();
                    let retry_at = next_attempt(started, now, delay);
                    warn!(
                        error = %error,
                        attempt = self.retry.failures(),
                        retry_in = ?retry_at.saturating_duration_since(now),
                        "etcd request failed; retrying"
                    );
                    Some(retry_at)
                }
            };
            self.publish_status();
            if let Wake::Stop(stop) = self.wait(retry_at).await {
                break stop;
            }
        };
        match stop {
            Stop::Deregister(deadline) => self.deregister(deadline).await,
            Stop::HandOver => self.hand_over().await,
        }
    }

    /// Capped exponential backoff with jitter: fast for a blip, at most
    /// `retryInterval` for an outage, and spread so a fleet of agents does
    /// not hit a recovering etcd in step. The cap is read at each failure,
    /// so a reloaded `retryInterval` applies at once.
    fn retry_delay(&mut self) -> Duration {
        self.retry.set_cap(self.target.config.retry_interval);
        self.retry.fail()
    }

    /// Sleeps until there is something to do, following the lease's health.
    async fn wait(&mut self, retry_at: Option<Instant>) -> Wake {
        loop {
            let verify_at =
                (retry_at.is_none() && self.session.is_some()).then_some(self.next_verify);
            let rotate_at = retry_at
                .is_none()
                .then(|| self.session.as_ref()?.lease.as_ref()?.rotate_at())
                .flatten();
            // A watch to restart once its backoff is over (a round does it).
            let watch_wanted = retry_at.is_none()
                && !self.key_watch.is_running()
                && self.session.as_ref().is_some_and(|s| s.written_count() > 0);
            let health = self
                .session
                .as_mut()
                .and_then(|s| s.lease.as_mut())
                .map(|l| &mut l.health);
            let has_lease = health.is_some();
            let watch_retry_at = self.key_watch.retry_at();
            tokio::select! {
                biased;
                stop = &mut self.stop_rx => {
                    // A dropped handle still gets an orderly stop.
                    return Wake::Stop(stop.unwrap_or_else(|_| {
                        Stop::Deregister(Instant::now() + crate::config::DEFAULT_SHUTDOWN_TIMEOUT)
                    }));
                }
                changed = self.target_rx.changed() => {
                    if changed.is_err() {
                        // The supervisor is gone without stopping us.
                        return Wake::Stop(Stop::Deregister(
                            Instant::now() + crate::config::DEFAULT_SHUTDOWN_TIMEOUT,
                        ));
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
                _ = sleep_until(rotate_at.unwrap_or_else(Instant::now)), if rotate_at.is_some() => {
                    return Wake::Work;
                }
                Some(news) = self.key_watch.news() => {
                    if self.on_key_news(news) {
                        return Wake::Work;
                    }
                }
                _ = sleep_until(watch_retry_at), if watch_wanted => {
                    return Wake::Work;
                }
            }
        }
    }

    /// Follows what the watch on our keys reports; true when something must
    /// be repaired (or the watch restarted) by a round.
    fn on_key_news(&mut self, news: KeyNews) -> bool {
        match news {
            KeyNews::Changed {
                key,
                revision,
                value,
            } => {
                let Some(session) = self.session.as_mut() else {
                    return false;
                };
                if !session.note_change(&key, revision, value) {
                    return false;
                }
                self.metrics.repairs.inc();
                self.publish_status();
                true
            }
            KeyNews::Lost(generation, reason) => {
                let Some(delay) = self.key_watch.lost(
                    generation,
                    WATCH_HEALTHY_AFTER,
                    self.target.config.retry_interval,
                ) else {
                    return false;
                };
                warn!(%reason, retry_in = ?delay, "the watch on our keys ended; comparing every key and watching again");
                // Blind meanwhile: compare now, and poll until watched.
                self.verify_due = true;
                true
            }
        }
    }

    /// Watches the current session's keys: a running watch follows them
    /// (a watch added per new key, cancelled per key gone); otherwise one
    /// starts, unless its restart is backing off.
    fn ensure_key_watch(&mut self) {
        let Some(session) = self.session.as_ref() else {
            return;
        };
        self.key_watch.ensure(
            session.written_stamp(),
            || session.watch_list(),
            || session.client(),
            &self.tracker,
        );
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
            instances = self.target.instances(),
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
            // The watch was the old session's (maybe another cluster).
            self.key_watch.stop();
        }
        if self.session.is_none() {
            let client = etcd::connect(&target.config.client).await?;
            let mut session = None;
            if let Some(record) = self.recorded.take() {
                session = self.resume(record, &client).await?;
            }
            self.session =
                Some(session.unwrap_or_else(|| Session::new(target.config.clone(), client)));
        } else if self.reconnect {
            // An old client can keep failing with the error of its last
            // failed connect after etcd is back (found by the fleet test:
            // two retry rounds lost after a whole-cluster restart).
            let client = etcd::connect(&target.config.client).await?;
            if let Some(session) = self.session.as_mut() {
                session.replace_client(client);
            }
        }
        self.reconnect = false;
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

    /// Takes over the lease of the previous process's record if etcd still
    /// keeps it: the returned session holds it and what etcd holds on it.
    /// A lease that cannot be kept as it is (another TTL, `keepAlive:
    /// false`) is retired once a new lease holds the keys; an expired one
    /// is ignored. On an etcd error the record is kept for the next round.
    async fn resume(
        &mut self,
        record: LeaseRecord,
        client: &etcd_client::Client,
    ) -> Result<Option<Session>, EtcdError> {
        let config = self.target.config.clone();
        let resumed = match Session::resume(
            config,
            client.clone(),
            &record,
            &self.metrics,
            &self.tracker,
        )
        .await
        {
            Ok(resumed) => resumed,
            Err(error) => {
                self.recorded = Some(record);
                return Err(error);
            }
        };
        match resumed {
            None => {
                info!(
                    lease = record.lease,
                    "the lease of the previous process has expired; ignoring its record"
                );
                Ok(None)
            }
            Some((session, true)) => {
                info!(
                    lease = record.lease,
                    keys = session.written_count(),
                    "adopted the lease of the previous process"
                );
                Ok(Some(session))
            }
            Some((session, false)) => {
                info!(
                    lease = record.lease,
                    "the previous process's lease does not fit the settings (TTL or keepAlive); moving its keys to a new lease"
                );
                self.retiring.push(session);
                Ok(None)
            }
        }
    }

    /// Publishes the current session's record to the handle and the writer.
    fn save_record(&self) {
        let Some(record) = self.session.as_ref().and_then(Session::record) else {
            return;
        };
        self.record_tx.send_if_modified(|current| {
            if current.as_ref() == Some(&record) {
                false
            } else {
                *current = Some(record.clone());
                true
            }
        });
        if let Some(writer) = &self.record_writer {
            writer.publish(record);
        }
    }

    async fn clear_record(&mut self) {
        if let Some(writer) = self.record_writer.take() {
            writer.clear().await;
        }
    }

    /// Lease, repair, writes. The lease's keeper opens its stream alongside
    /// the first write, so a first registration costs two round trips
    /// (grant, write) like a hand-written one.
    async fn converge_session(&mut self, target: &Target) -> Result<(), EtcdError> {
        let session = self.session.as_mut().expect("converge sets the session");
        if session
            .lease
            .as_ref()
            .and_then(|l| l.rotate_at())
            .is_some_and(|at| at <= Instant::now())
        {
            session
                .rotate_lease(
                    &target.records,
                    &mut self.announced,
                    &self.metrics,
                    &self.tracker,
                )
                .await?;
        }
        session.grant_lease(&self.metrics, &self.tracker).await?;
        if self.verify_due {
            let repaired = session.verify().await?;
            self.last_verify = Some((std::time::SystemTime::now(), repaired));
            if repaired > 0 {
                self.metrics.repairs.inc_by(repaired as u64);
            }
            self.verify_due = false;
            let every = if self.key_watch.is_running() {
                VERIFY_INTERVAL
            } else {
                self.target.config.retry_interval
            };
            self.next_verify = Instant::now() + jitter(every, 0.8, 1.0);
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
            .set(self.target.instances() as i64);
    }

    fn publish_status(&self) {
        let status = RegistryStatus::of(
            self.session.as_ref(),
            &self.target,
            self.connected,
            self.last_verify,
        );
        self.metrics
            .instances_registered
            .set(status.registered as i64);
        self.status_tx.send_if_modified(|current| {
            if *current == status {
                false
            } else {
                *current = status;
                true
            }
        });
    }

    /// Upgrade: the new process holds the lease now. No renewal, watch or
    /// write after this point, and nothing deleted or revoked; the record
    /// file is left to the new process (the writer finishes a write under
    /// way, then stops).
    async fn hand_over(mut self) {
        self.key_watch.stop();
        for session in self.session.iter_mut().chain(self.retiring.iter_mut()) {
            session.stop_renewing();
        }
        if let Some(writer) = self.record_writer.take() {
            writer.finish().await;
        }
        info!(
            lease = self.session.as_ref().map_or(0, Session::lease_id),
            "registrations handed over to the new process: nothing deleted, lease not revoked"
        );
        let _ = self.status_tx.send(RegistryStatus::default());
    }

    /// Stop: no renewal or write after this point (a late heartbeat must not
    /// bring back what we delete), then delete our keys and revoke the lease.
    async fn deregister(mut self, deadline: Instant) {
        self.key_watch.stop();
        for session in self.session.iter_mut().chain(self.retiring.iter_mut()) {
            session.stop_renewing();
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
        let _ = tokio::time::timeout_at(deadline, self.clear_record()).await;
        let _ = self.status_tx.send(RegistryStatus::default());
        self.metrics.instances_registered.set(0);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: Duration = Duration::from_secs(1);

    /// A quick failure waits its whole delay; one that hung for part of
    /// the delay waits the rest; one that hung longer than the delay is
    /// retried at once.
    #[tokio::test(start_paused = true)]
    async fn the_retry_delay_counts_from_the_start_of_the_failed_round() {
        let started = Instant::now();
        let quick = started + S / 100;
        assert_eq!(next_attempt(started, quick, 3 * S), started + 3 * S);
        let hung = started + 2 * S;
        assert_eq!(next_attempt(started, hung, 3 * S), started + 3 * S);
        assert_eq!(next_attempt(started, hung, S), hung);
    }
}
