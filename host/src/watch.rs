//! Folder watching with notify. A watcher only signals that something in a
//! folder changed; the supervisor debounces, re-reads and decides (it
//! compares content, so a spurious signal costs one read and nothing else).
//!
//! Folders rather than files are watched so that every way of saving counts:
//! in-place writes, editors saving by rename, `cp`/`mv` over the file, and
//! Kubernetes ConfigMap symlink swaps (`..data` renamed in the folder).
//! Symlinks are followed: [`folders_to_watch`] lists the folder of every
//! link along a path's chain (and of every symlinked folder on the way), so
//! editing the final file, or swapping any link, signals. The set is
//! resolved again after each change, since a swap can change the chain.

use std::collections::BTreeSet;
use std::path::{Component, Path, PathBuf};

use notify::{EventKind, RecommendedWatcher, RecursiveMode, Watcher};
use tokio::sync::mpsc;

/// Links followed before giving up (the kernel's own limit is 40).
const MAX_LINKS: usize = 40;

/// What a change to `path` can come from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Watched {
    /// A file: its folder is watched, and the folders of the links to it.
    File,
    /// A folder whose entries matter: the folder itself is watched too.
    Folder,
}

/// The folders to watch so that any change to what `path` resolves to is
/// seen: the folder holding each link of its symlink chain (a swapped link
/// is a change in that folder), the folder holding each symlinked folder
/// along the way, and the final file's folder (or, for [`Watched::Folder`],
/// the final folder itself). Canonical paths, so a folder reached two ways
/// is watched once. Folders that do not exist are left out. Blocking: call
/// it off the async workers.
pub fn folders_to_watch(path: &Path, what: Watched) -> BTreeSet<PathBuf> {
    let mut folders = BTreeSet::new();
    let mut current = std::path::absolute(path).unwrap_or_else(|_| path.to_path_buf());
    for _ in 0..MAX_LINKS {
        let parent = current
            .parent()
            .map_or_else(|| PathBuf::from("/"), Path::to_path_buf);
        add_symlinked_ancestors(&parent, &mut folders);
        if let Ok(parent) = parent.canonicalize() {
            folders.insert(parent);
        }
        match std::fs::read_link(&current) {
            Ok(target) => current = normalize(&parent.join(target)),
            Err(_) => break,
        }
    }
    if what == Watched::Folder
        && let Ok(folder) = current.canonicalize()
        && folder.is_dir()
    {
        folders.insert(folder);
    }
    folders
}

/// For every folder on `dir`'s path that is itself a symlink, the folder
/// holding that link (where a swap of it shows).
fn add_symlinked_ancestors(dir: &Path, folders: &mut BTreeSet<PathBuf>) {
    for ancestor in dir.ancestors() {
        let is_link = std::fs::symlink_metadata(ancestor).is_ok_and(|m| m.file_type().is_symlink());
        if is_link
            && let Some(holder) = ancestor.parent()
            && let Ok(holder) = holder.canonicalize()
        {
            folders.insert(holder);
        }
    }
}

/// `a/b/../c` → `a/c` without touching the file system (a link target is
/// relative to the link's folder as spelled; a symlink cannot hide where a
/// path leads).
pub(crate) fn normalize(path: &Path) -> PathBuf {
    let mut out = PathBuf::new();
    for component in path.components() {
        match component {
            Component::ParentDir => {
                out.pop();
            }
            Component::CurDir => {}
            other => out.push(other),
        }
    }
    out
}

/// A live watch on a set of folders; dropping it stops watching.
pub struct FolderWatch {
    watcher: RecommendedWatcher,
    folders: BTreeSet<PathBuf>,
}

impl FolderWatch {
    /// Starts a watcher that watches nothing yet. Each change sends a signal;
    /// a full channel means a signal is already pending, which is all the
    /// supervisor needs to know.
    pub fn new(signals: mpsc::Sender<()>) -> notify::Result<Self> {
        let watcher = notify::recommended_watcher(move |event: notify::Result<notify::Event>| {
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
        Ok(FolderWatch {
            watcher,
            folders: BTreeSet::new(),
        })
    }

    /// Watches exactly `folders` (not recursively) from now on. Returns the
    /// folders that could not be watched, with why.
    pub fn set(&mut self, folders: &BTreeSet<PathBuf>) -> Vec<(PathBuf, notify::Error)> {
        for gone in self.folders.difference(folders) {
            let _ = self.watcher.unwatch(gone);
        }
        let mut failed = Vec::new();
        let mut watching = BTreeSet::new();
        for folder in folders {
            if self.folders.contains(folder) {
                watching.insert(folder.clone());
                continue;
            }
            match self.watcher.watch(folder, RecursiveMode::NonRecursive) {
                Ok(()) => {
                    watching.insert(folder.clone());
                }
                Err(error) => failed.push((folder.clone(), error)),
            }
        }
        self.folders = watching;
        failed
    }

    pub fn folders(&self) -> &BTreeSet<PathBuf> {
        &self.folders
    }
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::symlink;

    use super::*;

    fn canonical(path: &Path) -> PathBuf {
        path.canonicalize().unwrap()
    }

    #[test]
    fn a_plain_file_needs_its_folder_only() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("agent.yaml"), "x").unwrap();
        let folders = folders_to_watch(&dir.path().join("agent.yaml"), Watched::File);
        assert_eq!(folders, BTreeSet::from([canonical(dir.path())]));
    }

    #[test]
    fn a_missing_file_still_watches_its_folder() {
        let dir = tempfile::tempdir().unwrap();
        let folders = folders_to_watch(&dir.path().join("agent.yaml"), Watched::File);
        assert_eq!(folders, BTreeSet::from([canonical(dir.path())]));
    }

    #[test]
    fn every_folder_of_a_two_level_chain_is_watched() {
        let root = tempfile::tempdir().unwrap();
        for d in ["etc", "mid", "real"] {
            std::fs::create_dir(root.path().join(d)).unwrap();
        }
        std::fs::write(root.path().join("real/agent.yaml"), "x").unwrap();
        symlink("../real/agent.yaml", root.path().join("mid/agent.yaml")).unwrap();
        symlink("../mid/agent.yaml", root.path().join("etc/agent.yaml")).unwrap();
        let folders = folders_to_watch(&root.path().join("etc/agent.yaml"), Watched::File);
        let expected: BTreeSet<PathBuf> = ["etc", "mid", "real"]
            .iter()
            .map(|d| canonical(&root.path().join(d)))
            .collect();
        assert_eq!(folders, expected);
    }

    #[test]
    fn a_configmap_layout_watches_the_folder_holding_the_data_link() {
        // Kubernetes: agent.yaml -> ..data/agent.yaml, ..data -> ..2026_12_01
        let root = tempfile::tempdir().unwrap();
        let cfg = root.path().join("cfg");
        std::fs::create_dir_all(cfg.join("..2026_12_01")).unwrap();
        std::fs::write(cfg.join("..2026_12_01/agent.yaml"), "x").unwrap();
        symlink("..2026_12_01", cfg.join("..data")).unwrap();
        symlink("..data/agent.yaml", cfg.join("agent.yaml")).unwrap();
        let folders = folders_to_watch(&cfg.join("agent.yaml"), Watched::File);
        assert_eq!(
            folders,
            BTreeSet::from([canonical(&cfg), canonical(&cfg.join("..2026_12_01"))])
        );
    }

    #[test]
    fn a_symlinked_folder_is_watched_with_the_folder_holding_the_link() {
        let root = tempfile::tempdir().unwrap();
        std::fs::create_dir(root.path().join("plugins-v2")).unwrap();
        symlink("plugins-v2", root.path().join("plugins")).unwrap();
        let folders = folders_to_watch(&root.path().join("plugins"), Watched::Folder);
        assert_eq!(
            folders,
            BTreeSet::from([
                canonical(root.path()),
                canonical(&root.path().join("plugins-v2"))
            ])
        );
    }

    #[test]
    fn a_link_loop_ends() {
        let root = tempfile::tempdir().unwrap();
        symlink("b", root.path().join("a")).unwrap();
        symlink("a", root.path().join("b")).unwrap();
        let folders = folders_to_watch(&root.path().join("a"), Watched::File);
        assert_eq!(folders, BTreeSet::from([canonical(root.path())]));
    }

    #[test]
    fn dot_dot_in_a_link_target_is_resolved_against_the_link_folder() {
        assert_eq!(
            normalize(Path::new("/a/b/../c/./d")),
            PathBuf::from("/a/c/d")
        );
    }
}
