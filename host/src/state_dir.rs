//! The agent's state folder (`agent.stateDir`): what must survive a
//! restart. Today that is maintenance only (`maintenance.json`), so an
//! instance taken out of rotation stays out after the agent restarts. API
//! registrations are deliberately not kept here (README: apps register
//! again; a registration that outlives its app is a ghost).
//!
//! Writes are atomic (a temporary file in the same folder, fsync, rename)
//! and done by one writer task fed through a `watch`, so bursts coalesce,
//! writes never run on the supervisor's loop, and the last state wins.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{error, warn};

use crate::systemd;

const MAINTENANCE_FILE: &str = "maintenance.json";

/// Maintenance in force: the node's, and each instance's by id.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Maintenance {
    /// The whole node is out of rotation, for this reason.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node: Option<String>,
    /// Instance id → reason.
    #[serde(default)]
    pub instances: BTreeMap<String, String>,
}

/// `agent.stateDir` if set, else systemd's `$STATE_DIRECTORY` (its first
/// entry), else `$XDG_STATE_HOME/ygg-agent`, else `~/.local/state/ygg-agent`.
pub fn resolve(configured: Option<&Path>) -> Option<PathBuf> {
    if let Some(dir) = configured {
        return Some(dir.to_path_buf());
    }
    if let Some(dir) = systemd::directory("STATE_DIRECTORY") {
        return Some(dir);
    }
    let env = |name: &str| std::env::var_os(name).filter(|v| !v.is_empty());
    if let Some(state) = env("XDG_STATE_HOME") {
        return Some(PathBuf::from(state).join("ygg-agent"));
    }
    env("HOME").map(|home| PathBuf::from(home).join(".local/state/ygg-agent"))
}

/// Reads the maintenance file of `dir`. Blocking. A missing file is no
/// maintenance; an unreadable or corrupt one is logged and ignored (the
/// agent must start), and is overwritten on the next change.
pub fn load(dir: &Path) -> Maintenance {
    let path = dir.join(MAINTENANCE_FILE);
    match std::fs::read(&path) {
        Ok(bytes) => serde_json::from_slice(&bytes).unwrap_or_else(|error| {
            error!(path = %path.display(), %error, "cannot parse the maintenance file; starting without maintenance");
            Maintenance::default()
        }),
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => Maintenance::default(),
        Err(error) => {
            error!(path = %path.display(), %error, "cannot read the maintenance file; starting without maintenance");
            Maintenance::default()
        }
    }
}

/// Writes `maintenance` to `dir` atomically. Blocking.
pub fn save(dir: &Path, maintenance: &Maintenance) -> std::io::Result<()> {
    use std::os::unix::fs::DirBuilderExt;
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)?;
    let bytes = serde_json::to_vec_pretty(maintenance).map_err(std::io::Error::other)?;
    let mut temp = tempfile::NamedTempFile::new_in(dir)?;
    temp.write_all(&bytes)?;
    temp.as_file().sync_all()?;
    temp.persist(dir.join(MAINTENANCE_FILE))
        .map_err(|e| e.error)?;
    Ok(())
}

/// Starts the writer task on `tracker`: each new value of the returned
/// sender is written (the latest wins when several come at once). The task
/// ends when the sender drops or `stop` is cancelled, after writing what
/// it holds.
pub fn writer(
    dir: PathBuf,
    initial: Maintenance,
    tracker: &TaskTracker,
    stop: CancellationToken,
) -> watch::Sender<Maintenance> {
    let (tx, mut rx) = watch::channel(initial);
    tracker.spawn(async move {
        loop {
            let last = tokio::select! {
                changed = rx.changed() => changed.is_err(),
                () = stop.cancelled() => true,
            };
            // A value not written yet is written before the task ends.
            if last && !rx.has_changed().unwrap_or(false) {
                break;
            }
            let state = rx.borrow_and_update().clone();
            let target = dir.clone();
            let written = tokio::task::spawn_blocking(move || save(&target, &state)).await;
            if let Ok(Err(error)) = written {
                warn!(dir = %dir.display(), %error, "cannot write the maintenance file; it applies until the agent restarts");
            }
            if last {
                break;
            }
        }
    });
    tx
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn maintenance_survives_a_save_and_load() {
        let dir = tempfile::tempdir().unwrap();
        let state = dir.path().join("state");
        assert_eq!(load(&state), Maintenance::default());
        let maintenance = Maintenance {
            node: Some("kernel upgrade".into()),
            instances: BTreeMap::from([("api-1".into(), "deploy".into())]),
        };
        save(&state, &maintenance).unwrap();
        assert_eq!(load(&state), maintenance);
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&state).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o700);
        // Only the file is left: the temporary one was renamed over it.
        assert_eq!(std::fs::read_dir(&state).unwrap().count(), 1);
        // A corrupt file is ignored, not fatal.
        std::fs::write(state.join(MAINTENANCE_FILE), "{oops").unwrap();
        assert_eq!(load(&state), Maintenance::default());
    }
}
