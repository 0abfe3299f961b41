//! The lease record (`registry.json` in the state folder): the lease the
//! agent holds and what it wrote on it (keys, values, revisions), with the
//! etcd endpoints and prefix it was written for. A process that starts
//! while that lease is alive adopts it instead of granting another, so a
//! crash or a restart costs callers no DELETE and leaves no second lease
//! (etcd-io/etcd #7166: "a reasonable feature requirement").
//!
//! The registry actor publishes the record after each round that changed
//! it; one writer task writes it atomically (a temporary file in the same
//! folder, fsync, rename) and the `watch` between them coalesces a burst
//! into at most one write per 250 ms, never an fsync per key. The record may lag behind etcd:
//! adoption trusts etcd (the keys attached to the lease, their revisions),
//! the record only spares rewriting what did not change.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tokio::sync::{Notify, watch};
use tokio::task::JoinHandle;
use tracing::{info, warn};

use crate::config::RegistryConfig;

const RECORD_FILE: &str = "registry.json";
const VERSION: u32 = 1;

/// What one process wrote, as the file holds it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LeaseRecord {
    pub version: u32,
    pub endpoints: Vec<String>,
    pub prefix: String,
    pub lease: i64,
    /// Key → what we wrote there and the revision etcd gave that write.
    pub keys: BTreeMap<String, RecordedKey>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RecordedKey {
    pub value: Arc<str>,
    pub mod_revision: i64,
    /// `namespace/name/version`, for the log lines about the key.
    #[serde(default)]
    pub service: Arc<str>,
    /// An etcd-naming key rather than a Yggdrasil record.
    #[serde(default)]
    pub naming: bool,
}

impl LeaseRecord {
    pub fn new(config: &RegistryConfig, lease: i64) -> Self {
        LeaseRecord {
            version: VERSION,
            endpoints: config.client.endpoints.clone(),
            prefix: config.prefix.clone(),
            lease,
            keys: BTreeMap::new(),
        }
    }

    /// Why this record cannot be adopted under `config`, if it cannot.
    pub fn mismatch(&self, config: &RegistryConfig) -> Option<String> {
        if self.version != VERSION {
            return Some(format!("record version {} is not {VERSION}", self.version));
        }
        if self.endpoints != config.client.endpoints {
            return Some(format!(
                "written for the etcd endpoints {:?}, now {:?}",
                self.endpoints, config.client.endpoints
            ));
        }
        if self.prefix != config.prefix {
            return Some(format!(
                "written for the prefix {}, now {}",
                self.prefix, config.prefix
            ));
        }
        None
    }
}

/// Reads the record of `dir`. Blocking. Missing: `None`; unreadable or
/// corrupt: logged, `None` (the agent starts as if there were none).
pub fn load(dir: &Path) -> Option<LeaseRecord> {
    let path = dir.join(RECORD_FILE);
    match std::fs::read(&path) {
        Ok(bytes) => match serde_json::from_slice(&bytes) {
            Ok(record) => Some(record),
            Err(error) => {
                warn!(path = %path.display(), %error, "cannot parse the lease record; ignoring it");
                None
            }
        },
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => None,
        Err(error) => {
            warn!(path = %path.display(), %error, "cannot read the lease record; ignoring it");
            None
        }
    }
}

/// Writes `record` to `dir` atomically, or removes the file for `None`.
/// Blocking.
pub fn save(dir: &Path, record: Option<&LeaseRecord>) -> std::io::Result<()> {
    let path = dir.join(RECORD_FILE);
    let Some(record) = record else {
        return match std::fs::remove_file(&path) {
            Err(error) if error.kind() != std::io::ErrorKind::NotFound => Err(error),
            _ => Ok(()),
        };
    };
    use std::os::unix::fs::DirBuilderExt;
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)?;
    let bytes = serde_json::to_vec(record).map_err(std::io::Error::other)?;
    let mut temp = tempfile::NamedTempFile::new_in(dir)?;
    temp.write_all(&bytes)?;
    temp.as_file().sync_all()?;
    temp.persist(path).map_err(|e| e.error)?;
    Ok(())
}

/// While records keep coming (a burst of registrations), the file is
/// written at most this often: each write serialises every key and syncs
/// the file, which cost about a quarter of the agent's CPU when it ran
/// back to back. The record may lag etcd anyway (adoption reads back what
/// etcd holds on the lease); a clear or a hand-over skips the wait.
const WRITE_GAP: Duration = Duration::from_millis(250);

/// The registry actor's end of the writer task.
pub struct RecordWriter {
    tx: watch::Sender<Option<LeaseRecord>>,
    /// Ends the wait between two writes (a clear or a finish is due).
    urgent: Arc<Notify>,
    task: JoinHandle<()>,
}

impl RecordWriter {
    /// Starts the writer task for `dir`. The latest value is written, at
    /// most once per [`WRITE_GAP`] (the latest wins when several come).
    pub fn start(dir: PathBuf) -> RecordWriter {
        let (tx, mut rx) = watch::channel::<Option<LeaseRecord>>(None);
        rx.mark_unchanged();
        let urgent = Arc::new(Notify::new());
        let hurry = urgent.clone();
        // Not on the agent's tracker: `finish` awaits it, so it never
        // outlives the actor.
        let task = tokio::spawn(async move {
            while rx.changed().await.is_ok() {
                let record = rx.borrow_and_update().clone();
                let target = dir.clone();
                let written =
                    tokio::task::spawn_blocking(move || save(&target, record.as_ref())).await;
                if let Ok(Err(error)) = written {
                    warn!(dir = %dir.display(), %error, "cannot write the lease record; a restart will grant a new lease");
                }
                if rx.has_changed().is_err() {
                    // Cleared or finished: nothing more comes.
                    break;
                }
                tokio::select! {
                    () = tokio::time::sleep(WRITE_GAP) => {}
                    () = hurry.notified() => {}
                }
            }
        });
        RecordWriter { tx, urgent, task }
    }

    /// Publishes `record` unless it is what was last published.
    pub fn publish(&self, record: LeaseRecord) {
        self.tx.send_if_modified(|current| {
            if current.as_ref() == Some(&record) {
                false
            } else {
                *current = Some(record);
                true
            }
        });
    }

    /// Stops the writer without touching the file (an upgrade hands it to
    /// the next process): a write under way finishes first.
    pub async fn finish(self) {
        drop(self.tx);
        self.urgent.notify_one();
        let _ = self.task.await;
    }

    /// Removes the record (after a deregistration) and waits for the
    /// writer to be done, so no older record is written after.
    pub async fn clear(self) {
        let _ = self.tx.send(None);
        drop(self.tx);
        self.urgent.notify_one();
        if self.task.await.is_ok() {
            info!("lease record cleared");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_record_survives_a_save_and_load_and_clear() {
        let dir = tempfile::tempdir().unwrap();
        let state = dir.path().join("state");
        assert_eq!(load(&state), None);
        let mut record = LeaseRecord::new(&RegistryConfig::default(), 42);
        record.keys.insert(
            "/k".into(),
            RecordedKey {
                value: "v".into(),
                mod_revision: 7,
                service: "default/a/1".into(),
                naming: false,
            },
        );
        save(&state, Some(&record)).unwrap();
        assert_eq!(load(&state), Some(record.clone()));
        assert_eq!(record.mismatch(&RegistryConfig::default()), None);
        let other = RegistryConfig {
            prefix: "/elsewhere".into(),
            ..Default::default()
        };
        assert!(record.mismatch(&other).unwrap().contains("prefix"));
        let mut other = RegistryConfig::default();
        other.client.endpoints = vec!["10.0.0.9:2379".into()];
        assert!(record.mismatch(&other).unwrap().contains("endpoints"));
        save(&state, None).unwrap();
        assert_eq!(load(&state), None);
        save(&state, None).unwrap();
        std::fs::write(state.join(RECORD_FILE), "{oops").unwrap();
        assert_eq!(load(&state), None);
    }
}
