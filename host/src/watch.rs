//! Folder watching with notify. A watcher only signals that something in a
//! folder changed; the supervisor debounces, re-reads and decides (it
//! compares content, so a spurious signal costs one read and nothing else).
//!
//! Folders rather than files are watched so that every way of saving counts:
//! in-place writes, editors saving by rename, `cp`/`mv` over the file, and
//! Kubernetes ConfigMap symlink swaps (`..data` renamed in the folder).

use std::path::{Path, PathBuf};

use notify::{EventKind, RecommendedWatcher, RecursiveMode, Watcher};
use tokio::sync::mpsc;

/// A live watch; dropping it stops watching.
pub struct FolderWatch {
    _watcher: RecommendedWatcher,
    pub dir: PathBuf,
}

impl FolderWatch {
    /// Watches `dir` (not recursively). Each change sends a signal; a full
    /// channel means a signal is already pending, which is all the
    /// supervisor needs to know.
    pub fn new(dir: &Path, signals: mpsc::Sender<()>) -> notify::Result<Self> {
        let mut watcher =
            notify::recommended_watcher(move |event: notify::Result<notify::Event>| {
                let relevant = match &event {
                    Ok(event) => !matches!(event.kind, EventKind::Access(_)),
                    // An error (e.g. the inotify queue overflowed) may hide a
                    // change: have the supervisor look.
                    Err(_) => true,
                };
                if relevant {
                    let _ = signals.try_send(());
                }
            })?;
        watcher.watch(dir, RecursiveMode::NonRecursive)?;
        Ok(FolderWatch {
            _watcher: watcher,
            dir: dir.to_path_buf(),
        })
    }
}
