//! What etcd holds under the registry prefix, and how it changes: the
//! services registered now, waits for a key, for a count of keys or for an
//! exact set of services, and `KeyWatch`, a watch that records every PUT
//! and DELETE under a prefix (to count deletions, or to prove that nothing
//! changed over a window).

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use etcd_client::{EventType, GetOptions, WatchOptions};
use tokio::sync::mpsc;

use super::{Entry, Etcd, PATIENCE, try_entries, wait_for};

/// The key prefix of the default config (`ConfigFile::new`), with its
/// trailing slash.
pub const PREFIX: &str = "/yggdrasil/registry/";

/// How many keys under `PREFIX` belong to service `service` (the key's
/// fourth segment).
pub async fn keys_of(etcd: &Etcd, service: &str) -> usize {
    try_entries(&etcd.endpoints(), PREFIX)
        .await
        .unwrap_or_default()
        .keys()
        .filter(|k| k.split('/').nth(4) == Some(service))
        .count()
}

/// Waits until service `service` has exactly `count` keys under `PREFIX`.
pub async fn wait_keys(etcd: &Etcd, service: &str, count: usize) {
    wait_for(
        PATIENCE,
        &format!("{count} keys of {service}"),
        || async move { (keys_of(etcd, service).await == count).then_some(()) },
    )
    .await;
}

/// The services registered under `PREFIX` now, by service name (the key's
/// second-to-last part). `None` while etcd does not answer.
pub async fn registered(etcd: &Etcd) -> Option<BTreeMap<String, Entry>> {
    let entries = try_entries(&etcd.endpoints(), PREFIX).await?;
    Some(
        entries
            .into_iter()
            .map(|(key, entry)| {
                let name = key.split('/').nth_back(1).unwrap_or_default().to_string();
                (name, entry)
            })
            .collect(),
    )
}

/// Waits (at most `PATIENCE`) until exactly the services `names` are
/// registered under `PREFIX`.
pub async fn wait_registered(etcd: &Etcd, names: &[&str]) -> BTreeMap<String, Entry> {
    let mut wanted: Vec<String> = names.iter().map(ToString::to_string).collect();
    wanted.sort();
    wait_for(PATIENCE, &format!("exactly {names:?} registered"), || {
        let wanted = wanted.clone();
        async move {
            registered(etcd)
                .await
                .filter(|r| r.keys().cloned().collect::<Vec<_>>() == wanted)
        }
    })
    .await
    .0
}

/// Waits (at most `PATIENCE`) until exactly `count` keys are under
/// `PREFIX`, each on a lease.
pub async fn wait_leased_keys(etcd: &Etcd, count: usize) -> BTreeMap<String, Entry> {
    let endpoints = etcd.endpoints();
    wait_for(PATIENCE, &format!("{count} registered keys"), || {
        let endpoints = endpoints.clone();
        async move {
            try_entries(&endpoints, PREFIX)
                .await
                .filter(|e| e.len() == count && e.values().all(|v| v.lease != 0))
        }
    })
    .await
    .0
}

/// Waits (at most `limit`) until `key` exists; what it holds.
pub async fn wait_key(etcd: &Etcd, key: &str, limit: Duration) -> Entry {
    let endpoints = etcd.endpoints();
    wait_for(limit, &format!("{key} in etcd"), || {
        let endpoints = endpoints.clone();
        async move { try_entries(&endpoints, key).await?.remove(key) }
    })
    .await
    .0
}

/// One change a `KeyWatch` saw.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyEvent {
    pub kind: KeyChange,
    pub key: String,
    pub revision: i64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyChange {
    Put,
    Delete,
}

#[derive(Default)]
struct Seen {
    events: Vec<KeyEvent>,
    /// The revision of the latest progress notice: every change up to it
    /// is in `events`.
    synced_to: i64,
    /// Why the watch ended, if it did.
    ended: Option<String>,
}

/// A watch on every key under a prefix, from the revision etcd was at when
/// it started: every PUT and DELETE after that, in order. The watch runs on
/// a task of the test's runtime and stops when this drops. It does not
/// survive etcd going away (`events` then panics, saying so): for changes
/// across a fault, use the gap observer (`support::observer`).
pub struct KeyWatch {
    seen: Arc<Mutex<Seen>>,
    prefix: String,
    client: etcd_client::Client,
    progress: mpsc::Sender<()>,
    task: tokio::task::JoinHandle<()>,
}

impl KeyWatch {
    pub async fn start(etcd: &Etcd, prefix: &str) -> KeyWatch {
        let mut client = etcd.client().await;
        let revision = client
            .get(
                prefix,
                Some(GetOptions::new().with_prefix().with_keys_only()),
            )
            .await
            .expect("etcd get")
            .header()
            .expect("a response header")
            .revision();
        let mut stream = client
            .watch(
                prefix,
                Some(
                    WatchOptions::new()
                        .with_prefix()
                        .with_start_revision(revision + 1),
                ),
            )
            .await
            .expect("etcd watch");
        let seen = Arc::new(Mutex::new(Seen {
            synced_to: revision,
            ..Seen::default()
        }));
        let (progress, mut progress_asked) = mpsc::channel::<()>(1);
        let record = seen.clone();
        let task = tokio::spawn(async move {
            let ended = loop {
                tokio::select! {
                    Some(()) = progress_asked.recv() => {
                        if let Err(error) = stream.request_progress().await {
                            break format!("progress request failed: {error}");
                        }
                    }
                    message = stream.message() => {
                        let response = match message {
                            Ok(Some(response)) => response,
                            Ok(None) => break "the watch stream ended".to_string(),
                            Err(error) => break format!("the watch failed: {error}"),
                        };
                        if response.canceled() {
                            break format!("the watch was cancelled: {}", response.cancel_reason());
                        }
                        let mut seen = record.lock().unwrap();
                        if !response.created() && response.events().is_empty() {
                            // A progress notice: everything up to its
                            // revision was sent before it.
                            if let Some(header) = response.header() {
                                seen.synced_to = seen.synced_to.max(header.revision());
                            }
                        }
                        for event in response.events() {
                            let Some(kv) = event.kv() else { continue };
                            seen.events.push(KeyEvent {
                                kind: match event.event_type() {
                                    EventType::Put => KeyChange::Put,
                                    EventType::Delete => KeyChange::Delete,
                                },
                                key: kv.key_str().unwrap_or_default().to_string(),
                                revision: kv.mod_revision(),
                            });
                        }
                    }
                }
            };
            record.lock().unwrap().ended = Some(ended);
        });
        KeyWatch {
            seen,
            prefix: prefix.to_string(),
            client,
            progress,
            task,
        }
    }

    /// Every change seen so far.
    pub fn events(&self) -> Vec<KeyEvent> {
        let seen = self.seen.lock().unwrap();
        if let Some(ended) = &seen.ended {
            panic!("the watch on {} ended: {ended}", self.prefix);
        }
        seen.events.clone()
    }

    /// How many changes of `kind` were seen so far.
    pub fn count(&self, kind: KeyChange) -> usize {
        self.events().iter().filter(|e| e.kind == kind).count()
    }

    /// Waits (at most `limit`) until at least `n` changes of `kind` were
    /// seen; how long that took.
    pub async fn wait_count(&self, kind: KeyChange, n: usize, limit: Duration) -> Duration {
        wait_for(
            limit,
            &format!("{n} {kind:?} events under {}", self.prefix),
            || async { (self.count(kind) >= n).then_some(()) },
        )
        .await
        .1
    }

    /// Waits until the watch has delivered every change etcd made up to
    /// now (etcd answers a progress request once the watch has caught up).
    pub async fn sync(&self) {
        let mut client = self.client.clone();
        let now = client
            .get(
                self.prefix.as_str(),
                Some(GetOptions::new().with_prefix().with_keys_only()),
            )
            .await
            .expect("etcd get")
            .header()
            .expect("a response header")
            .revision();
        let start = Instant::now();
        let mut asked = None::<Instant>;
        loop {
            let synced_to = {
                let seen = self.seen.lock().unwrap();
                if let Some(ended) = &seen.ended {
                    panic!("the watch on {} ended: {ended}", self.prefix);
                }
                seen.synced_to
            };
            if synced_to >= now {
                return;
            }
            assert!(
                start.elapsed() < PATIENCE,
                "the watch on {} did not catch up with revision {now} within {PATIENCE:?}",
                self.prefix
            );
            // etcd sends progress only while every watcher of the stream
            // is synced: ask again until it answers.
            if asked.is_none_or(|at| at.elapsed() > Duration::from_millis(200)) {
                let _ = self.progress.try_send(());
                asked = Some(Instant::now());
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Watches `window` longer, then asserts that nothing under the prefix
    /// changed since the watch started: no PUT (not even one writing the
    /// same value again) and no DELETE.
    pub async fn assert_unchanged_for(&self, window: Duration, what: &str) {
        tokio::time::sleep(window).await;
        self.sync().await;
        let events = self.events();
        assert!(
            events.is_empty(),
            "{what}: etcd changed under {}: {events:?}",
            self.prefix
        );
    }
}

impl Drop for KeyWatch {
    fn drop(&mut self) {
        self.task.abort();
    }
}
