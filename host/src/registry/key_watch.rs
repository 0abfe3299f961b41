//! Watching the keys we wrote, in a task of its own, so a delete or an
//! overwrite by anyone is seen at once instead of at the next comparison
//! (go-zero #4960: a key deleted out of band while the lease lives).
//!
//! One watch stream carries one watch per key, each from the revision
//! after our write of it, so nothing between the write and the watch is
//! missed. The stream lives as long as the session's keys are watched: a
//! key written adds one watch to it, a key gone cancels its watch
//! ([`KeyWatch::follow`]), so a registration costs one watch request, not
//! one per key held. The task forwards every event to the registry actor
//! over a bounded channel; the actor alone decides what is damage (an
//! event newer than our write) and repairs it. A stream that breaks, or a
//! watch that etcd cancels (compaction), ends the task with `Lost`: the
//! actor then compares every key and watches again. Dropping the
//! [`KeyWatch`] stops the task.

use std::collections::{HashMap, HashSet, VecDeque};
use std::time::Duration;

use etcd_client::{Client, EventType, WatchOptions};
use tokio::sync::mpsc;
use tokio::time::Instant;
use tokio_util::sync::{CancellationToken, DropGuard};
use tokio_util::task::TaskTracker;

use crate::backoff::Backoff;

/// Events waiting for the actor; the task waits when it is full.
const NEWS_CAPACITY: usize = 256;

/// What the watch saw.
#[derive(Debug)]
pub enum KeyNews {
    /// `key` was written (`value` and `lease`) or deleted (`None`) at
    /// `revision`, by anyone (us included).
    Changed {
        key: String,
        revision: i64,
        value: Option<(Vec<u8>, i64)>,
    },
    /// Watch number `.0` ended (why: `.1`); nothing is watched until the
    /// actor starts another.
    Lost(u64, String),
}

/// A running watch on a session's keys: what it covers, and the way to
/// change that without starting over.
pub struct KeyWatch {
    started: Instant,
    watched: HashSet<String>,
    changes: mpsc::UnboundedSender<Change>,
    _stop: DropGuard,
}

/// Keys to start watching (each from its revision, exclusive) and keys
/// to stop watching.
#[derive(Debug, Default)]
struct Change {
    add: Vec<(String, i64)>,
    remove: Vec<String>,
}

impl KeyWatch {
    /// Starts watch number `generation` on `keys`, each from its revision
    /// (exclusive). News goes to `news`; dropping the handle stops the task.
    pub fn spawn(
        generation: u64,
        client: Client,
        keys: Vec<(String, i64)>,
        news: mpsc::Sender<KeyNews>,
        tracker: &TaskTracker,
    ) -> KeyWatch {
        let watched = keys.iter().map(|(key, _)| key.clone()).collect();
        let (changes, changes_rx) = mpsc::unbounded_channel();
        let _ = changes.send(Change {
            add: keys,
            remove: Vec::new(),
        });
        let stop = CancellationToken::new();
        let stopped = stop.clone();
        tracker.spawn(async move {
            let watched = async {
                let reason = watch(client, changes_rx, &news).await;
                let _ = news.send(KeyNews::Lost(generation, reason)).await;
            };
            tokio::select! {
                () = stopped.cancelled() => {}
                () = watched => {}
            }
        });
        KeyWatch {
            started: Instant::now(),
            watched,
            changes,
            _stop: stop.drop_guard(),
        }
    }

    /// Makes the watch cover exactly `keys` (each new one from its
    /// revision, exclusive): one request per key added or gone.
    pub fn follow(&mut self, keys: &[(String, i64)]) {
        let mut change = Change::default();
        let now: HashSet<&str> = keys.iter().map(|(key, _)| key.as_str()).collect();
        self.watched.retain(|key| {
            let keep = now.contains(key.as_str());
            if !keep {
                change.remove.push(key.clone());
            }
            keep
        });
        for (key, revision) in keys {
            if !self.watched.contains(key) {
                self.watched.insert(key.clone());
                change.add.push((key.clone(), *revision));
            }
        }
        if !change.add.is_empty() || !change.remove.is_empty() {
            // A closed channel means the task ended: its `Lost` is on the
            // way and the actor starts over.
            let _ = self.changes.send(change);
        }
    }
}

/// The actor's side of the watch on its keys: the running watch (if any),
/// the channel its news comes on, and the backoff between restarts of a
/// watch that keeps failing.
pub struct Watcher {
    running: Option<KeyWatch>,
    /// The session's `written_stamp` the running watch last followed.
    followed: u64,
    /// The number of the last watch started: a `Lost` from an older one
    /// (already replaced) is not about the current one.
    generation: u64,
    /// The watch task's end and ours.
    news_tx: mpsc::Sender<KeyNews>,
    news_rx: mpsc::Receiver<KeyNews>,
    retry: Backoff,
    retry_at: Instant,
}

impl Watcher {
    pub fn new(first_retry: Duration, retry_interval: Duration) -> Watcher {
        let (news_tx, news_rx) = mpsc::channel(NEWS_CAPACITY);
        Watcher {
            running: None,
            followed: 0,
            generation: 0,
            news_tx,
            news_rx,
            retry: Backoff::new(first_retry, retry_interval).with_jitter(0.5, 1.0),
            retry_at: Instant::now(),
        }
    }

    pub fn is_running(&self) -> bool {
        self.running.is_some()
    }

    /// Stops the running watch (the session it watched is gone or stops).
    pub fn stop(&mut self) {
        self.running = None;
    }

    /// When a stopped watch may start again.
    pub fn retry_at(&self) -> Instant {
        self.retry_at
    }

    /// The next news from the running watch (waits forever without one).
    pub async fn news(&mut self) -> Option<KeyNews> {
        self.news_rx.recv().await
    }

    /// Makes the watch cover exactly `keys()`, the keys written as of
    /// `stamp` (see `Session::written_stamp`): a running watch follows them
    /// (nothing to do while the stamp has not moved); otherwise one starts
    /// on `client()`, unless its restart is backing off. No keys: no watch.
    pub fn ensure(
        &mut self,
        stamp: u64,
        keys: impl FnOnce() -> Vec<(String, i64)>,
        client: impl FnOnce() -> Client,
        tracker: &TaskTracker,
    ) {
        if self.running.is_some() && stamp == self.followed {
            return;
        }
        let keys = keys();
        if keys.is_empty() {
            self.running = None;
            return;
        }
        if let Some(watch) = self.running.as_mut() {
            watch.follow(&keys);
            self.followed = stamp;
            return;
        }
        if Instant::now() < self.retry_at {
            return;
        }
        self.generation += 1;
        self.followed = stamp;
        self.running = Some(KeyWatch::spawn(
            self.generation,
            client(),
            keys,
            self.news_tx.clone(),
            tracker,
        ));
    }

    /// Watch number `generation` ended: when it is the running one, it is
    /// dropped and its restart scheduled; returns the delay before it.
    pub fn lost(
        &mut self,
        generation: u64,
        healthy_after: Duration,
        retry_interval: Duration,
    ) -> Option<Duration> {
        if generation != self.generation {
            // A watch we had already replaced.
            return None;
        }
        let lost = self.running.take()?;
        if lost.started.elapsed() >= healthy_after {
            self.retry.reset();
        }
        self.retry.set_cap(retry_interval);
        let delay = self.retry.fail();
        self.retry_at = Instant::now() + delay;
        Some(delay)
    }
}

/// Runs the watches until the stream ends; returns why it ended.
async fn watch(
    mut client: Client,
    mut changes: mpsc::UnboundedReceiver<Change>,
    news: &mpsc::Sender<KeyNews>,
) -> String {
    let options = |rev: i64| WatchOptions::new().with_start_revision(rev + 1);
    let Some(first_change) = changes.recv().await else {
        return "the registry stopped watching".into();
    };
    let mut queued: VecDeque<(String, i64)> = first_change.add.into();
    let Some((first, first_rev)) = queued.pop_front() else {
        return "no keys to watch".into();
    };
    let stream = match client.watch(first.as_str(), Some(options(first_rev))).await {
        Ok(stream) => stream,
        Err(error) => return format!("cannot watch our keys: {error}"),
    };
    let (mut requests, mut responses) = stream.split();
    // Keys whose watch was asked for, in order: etcd answers the creates
    // of one stream in the order they were sent, so a created response
    // names the front one.
    let mut creating: VecDeque<String> = VecDeque::from([first]);
    let mut ids: HashMap<i64, String> = HashMap::new();
    let mut by_key: HashMap<String, i64> = HashMap::new();
    // Keys let go of before their watch was created: cancelled when it is.
    let mut unwanted: HashSet<String> = HashSet::new();
    loop {
        // Send what is queued (one request each), then wait for news.
        while let Some((key, rev)) = queued.pop_front() {
            unwanted.remove(&key);
            if let Err(error) = requests.watch(key.as_str(), Some(options(rev))).await {
                return format!("cannot watch our keys: {error}");
            }
            creating.push_back(key);
        }
        tokio::select! {
            change = changes.recv() => {
                let Some(change) = change else {
                    return "the registry stopped watching".into();
                };
                for key in change.remove {
                    queued.retain(|(queued_key, _)| *queued_key != key);
                    match by_key.remove(&key) {
                        Some(id) => {
                            ids.remove(&id);
                            if let Err(error) = requests.cancel(id).await {
                                return format!("cannot stop watching {key}: {error}");
                            }
                        }
                        None if creating.contains(&key) => {
                            unwanted.insert(key);
                        }
                        None => {}
                    }
                }
                queued.extend(change.add);
            }
            response = responses.message() => {
                let response = match response {
                    Ok(Some(response)) => response,
                    Ok(None) => return "the watch stream was closed by etcd".into(),
                    Err(error) => return format!("the watch stream broke: {error}"),
                };
                let id = response.watch_id();
                if response.created()
                    && let Some(key) = creating.pop_front()
                {
                    if unwanted.remove(&key) {
                        if let Err(error) = requests.cancel(id).await {
                            return format!("cannot stop watching {key}: {error}");
                        }
                        continue;
                    }
                    ids.insert(id, key.clone());
                    by_key.insert(key, id);
                }
                if response.canceled() {
                    let Some(key) = ids.get(&id) else {
                        // One we cancelled ourselves.
                        continue;
                    };
                    return if response.compact_revision() > 0 {
                        format!(
                            "the watch of {key} was cancelled: etcd compacted up to revision {}",
                            response.compact_revision()
                        )
                    } else {
                        format!("the watch of {key} was cancelled: {}", response.cancel_reason())
                    };
                }
                for event in response.events() {
                    let Some(kv) = event.kv() else { continue };
                    let Ok(key) = kv.key_str() else { continue };
                    let value = match event.event_type() {
                        EventType::Put => Some((kv.value().to_vec(), kv.lease())),
                        EventType::Delete => None,
                    };
                    let changed = KeyNews::Changed {
                        key: key.to_string(),
                        revision: kv.mod_revision(),
                        value,
                    };
                    if news.send(changed).await.is_err() {
                        return "the registry stopped listening".into();
                    }
                }
            }
        }
    }
}
