//! Watching the keys we wrote, in a task of its own, so a delete or an
//! overwrite by anyone is seen at once instead of at the next comparison
//! (go-zero #4960: a key deleted out of band while the lease lives).
//!
//! One watch stream carries one watch per key, each from the revision
//! after our write of it, so nothing between the write and the watch is
//! missed. The task forwards every event to the registry actor over a
//! bounded channel; the actor alone decides what is damage (an event newer
//! than our write) and repairs it. A stream that breaks, or a watch that
//! etcd cancels (compaction), ends the task with `Lost`: the actor then
//! compares every key and watches again. Dropping the guard stops the task.

use std::collections::HashMap;

use etcd_client::{Client, EventType, WatchOptions};
use tokio::sync::mpsc;
use tokio_util::sync::{CancellationToken, DropGuard};
use tokio_util::task::TaskTracker;

/// Events waiting for the actor; the task waits when it is full.
pub const NEWS_CAPACITY: usize = 256;

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

/// Starts watch number `generation` on `keys`, each from its revision
/// (exclusive). News goes to `news`; dropping the guard stops the task.
pub fn spawn(
    generation: u64,
    mut client: Client,
    keys: Vec<(String, i64)>,
    news: mpsc::Sender<KeyNews>,
    tracker: &TaskTracker,
) -> DropGuard {
    let stop = CancellationToken::new();
    let stopped = stop.clone();
    tracker.spawn(async move {
        let watched = async {
            let reason = watch(&mut client, &keys, &news).await;
            let _ = news.send(KeyNews::Lost(generation, reason)).await;
        };
        tokio::select! {
            () = stopped.cancelled() => {}
            () = watched => {}
        }
    });
    stop.drop_guard()
}

/// Runs the watches until the stream ends; returns why it ended.
async fn watch(
    client: &mut Client,
    keys: &[(String, i64)],
    news: &mpsc::Sender<KeyNews>,
) -> String {
    let Some(((first, first_rev), rest)) = keys.split_first() else {
        return "no keys to watch".into();
    };
    let options = |rev: i64| WatchOptions::new().with_start_revision(rev + 1);
    let mut stream = match client
        .watch(first.as_str(), Some(options(*first_rev)))
        .await
    {
        Ok(stream) => stream,
        Err(error) => return format!("cannot watch our keys: {error}"),
    };
    for (key, rev) in rest {
        if let Err(error) = stream.watch(key.as_str(), Some(options(*rev))).await {
            return format!("cannot watch our keys: {error}");
        }
    }
    // Watch ids in creation order, so a cancel names its key.
    let mut created = 0usize;
    let mut ids: HashMap<i64, &str> = HashMap::new();
    loop {
        let response = match stream.message().await {
            Ok(Some(response)) => response,
            Ok(None) => return "the watch stream was closed by etcd".into(),
            Err(error) => return format!("the watch stream broke: {error}"),
        };
        if response.created() {
            if let Some((key, _)) = keys.get(created) {
                ids.insert(response.watch_id(), key);
            }
            created += 1;
        }
        if response.canceled() {
            let key = ids.get(&response.watch_id()).copied().unwrap_or("?");
            return if response.compact_revision() > 0 {
                format!(
                    "the watch of {key} was cancelled: etcd compacted up to revision {}",
                    response.compact_revision()
                )
            } else {
                format!(
                    "the watch of {key} was cancelled: {}",
                    response.cancel_reason()
                )
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
