//! One way to follow a path on disk, used for the config file, the
//! plugins folder and the instances folder: watch the folders of the
//! path's symlink chain (`watch.rs`), debounce a burst of changes into one
//! scan, run one scan at a time beside the loop (and one more after it if
//! asked meanwhile), and watch again what each scan says the path resolves
//! to now (a folder that appeared is scanned once more: a change there
//! before its watch began would be missed).
//!
//! The owner of each input (the [`Reloader`](super::reload::Reloader), the
//! plugins runtime, the instances) says what a scan is; the scan comes
//! back to the supervisor as [`Found`], one event shape for all three.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::time::Duration;

use tokio::sync::mpsc;
use tokio::time::{Instant, sleep_until};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::warn;

use sha2::{Digest, Sha256};

use crate::config;
use crate::instances_dir::DirScan;
use crate::plugins::Scan;
use crate::watch::{self as folder_watch, FolderWatch, Watched};

/// A stream of signals cannot postpone a scan longer than this.
const MAX_DEBOUNCE: Duration = Duration::from_secs(1);
/// Scans finished beside the loop, waiting to be handled: one per input is
/// under way at a time, so a few slots.
pub(super) const FOUND_CAPACITY: usize = 8;

/// The three inputs on disk.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Folder {
    /// The config file (and the links to it).
    Config,
    /// `agent.plugins.dir`.
    Plugins,
    /// `agent.instancesDir`.
    Instances,
}

impl Folder {
    /// Quiet time after the last change before the scan.
    fn quiet(self) -> Duration {
        match self {
            Folder::Config | Folder::Instances => Duration::from_millis(100),
            Folder::Plugins => Duration::from_millis(200),
        }
    }

    /// What the operator can do when a folder cannot be watched.
    fn fallback(self) -> &'static str {
        match self {
            Folder::Config => "cannot watch this folder; reload with SIGHUP",
            Folder::Plugins => "cannot watch this folder; plugin changes there apply on SIGHUP",
            Folder::Instances => {
                "cannot watch this folder; instance file changes there apply on SIGHUP"
            }
        }
    }
}

/// What reading the config file found (off the loop).
#[derive(Debug)]
pub(super) struct ConfigRead {
    /// SHA-256 of the bytes read and what they parsed to, or why the file
    /// could not be read.
    pub file: Result<([u8; 32], Parsed), String>,
    /// The folders to watch for the file now (its symlink chain resolved
    /// again: a swapped link can change it).
    pub watch: BTreeSet<PathBuf>,
    /// SIGHUP: apply even when the bytes did not change.
    pub forced: bool,
}

/// A valid config, or every problem found in the file.
pub(super) type Parsed = Result<config::Loaded, Vec<String>>;

/// Reads and validates the config file. Blocking: runs off the loop.
pub(super) fn read_config(path: &Path, forced: bool) -> ConfigRead {
    let watch = folder_watch::folders_to_watch(path, Watched::File);
    let file = std::fs::read(path)
        .map_err(|error| error.to_string())
        .map(|bytes| {
            let digest: [u8; 32] = Sha256::digest(&bytes).into();
            let parsed = match String::from_utf8(bytes) {
                Err(_) => Err(vec![format!("{} is not UTF-8 text", path.display())]),
                Ok(text) => config::parse(&text, &config::base_dir(path))
                    .map_err(|issues| issues.iter().map(ToString::to_string).collect()),
            };
            (digest, parsed)
        });
    ConfigRead {
        file,
        watch,
        forced,
    }
}

/// What a scan found, by input.
#[derive(Debug)]
pub(super) enum Found {
    Config(Box<ConfigRead>),
    Plugins(Scan),
    Instances(DirScan),
}

/// Runs scans beside the loop. Cloned into each input's owner.
#[derive(Clone)]
pub(super) struct Scanner {
    pub tracker: TaskTracker,
    /// The shutdown tree's `inputs`: a scan under way ends with it.
    pub stop: CancellationToken,
    /// The supervisor's inbox holds the other end (`Inbox::found`).
    pub found: mpsc::Sender<Found>,
}

impl Scanner {
    /// Runs `job` on a blocking thread and sends what it found.
    fn spawn(&self, job: impl FnOnce() -> Found + Send + 'static) {
        let (stop, found) = (self.stop.clone(), self.found.clone());
        self.tracker.spawn(async move {
            let scan = tokio::task::spawn_blocking(job);
            tokio::select! {
                () = stop.cancelled() => {}
                Ok(scan) = scan => {
                    let _ = found.send(scan).await;
                }
            }
        });
    }
}

/// Debounces a burst of signals into one action.
#[derive(Debug, Default)]
pub(super) struct Debounce {
    pub due: Option<Instant>,
    first: Option<Instant>,
}

impl Debounce {
    pub fn touch(&mut self, quiet: Duration) {
        let now = Instant::now();
        let first = *self.first.get_or_insert(now);
        self.due = Some((now + quiet).min(first + MAX_DEBOUNCE));
    }

    pub fn take(&mut self) {
        self.due = None;
        self.first = None;
    }
}

/// `sleep_until(due)`, or never.
pub(super) async fn until(due: Option<Instant>) {
    match due {
        Some(due) => sleep_until(due).await,
        None => std::future::pending().await,
    }
}

/// One input on disk: its watch, its debounce and its scans.
pub(super) struct FolderInput {
    folder: Folder,
    watch: Option<FolderWatch>,
    /// The other end is held by the `FolderWatch`'s notify callback: one
    /// signal per change (a full channel means one is pending already).
    signals: mpsc::Receiver<()>,
    debounce: Debounce,
    /// A scan is under way.
    scanning: bool,
    /// Another scan was asked for meanwhile: `Some(forced)`.
    again: Option<bool>,
}

impl FolderInput {
    /// An input watching nothing yet (the first scan says what to watch,
    /// or [`FolderInput::watch`]). `path` is for the message when no
    /// watcher can be had: changes then apply on SIGHUP.
    pub fn new(folder: Folder, path: &Path) -> FolderInput {
        let (tx, signals) = mpsc::channel(1);
        let watch = match FolderWatch::new(tx) {
            Ok(watch) => Some(watch),
            Err(error) => {
                warn!(path = %path.display(), %error, "cannot watch for changes; they apply on SIGHUP");
                None
            }
        };
        FolderInput {
            folder,
            watch,
            signals,
            debounce: Debounce::default(),
            scanning: false,
            again: None,
        }
    }

    /// Watches exactly `folders` from now on (each that cannot be is
    /// logged). True when a folder was added.
    pub fn watch(&mut self, folders: &BTreeSet<PathBuf>) -> bool {
        let Some(watch) = self.watch.as_mut() else {
            return false;
        };
        let added = folders.difference(watch.folders()).count() > 0;
        for (folder, error) in watch.set(folders) {
            warn!(dir = %folder.display(), %error, "{}", self.folder.fallback());
        }
        added
    }

    /// Resolves once a burst of changes has settled (the debounce ran
    /// out). Cancel-safe: `next_event` selects on it.
    pub async fn settled(&mut self) {
        loop {
            let due = self.debounce.due;
            tokio::select! {
                signal = self.signals.recv(), if self.watch.is_some() => match signal {
                    Some(()) => self.debounce.touch(self.folder.quiet()),
                    // The watcher's callback went: nothing more to hear.
                    None => self.watch = None,
                },
                () = until(due) => {
                    self.debounce.take();
                    return;
                }
            }
        }
    }

    /// Starts `job` beside the loop unless a scan is under way; then one
    /// more runs after it (asked for again by [`FolderInput::finished`]).
    /// `forced` (SIGHUP) is passed to the job.
    pub fn scan(
        &mut self,
        forced: bool,
        scanner: &Scanner,
        job: impl FnOnce(bool) -> Found + Send + 'static,
    ) {
        self.debounce.take();
        if self.scanning {
            self.again = Some(self.again.unwrap_or(false) || forced);
            return;
        }
        self.scanning = true;
        scanner.spawn(move || job(forced));
    }

    /// A scan came back: watches what it found the path resolves to.
    /// `Some(forced)`: scan again now (asked for meanwhile, or a folder
    /// was added).
    pub fn finished(&mut self, folders: &BTreeSet<PathBuf>) -> Option<bool> {
        self.scanning = false;
        let mut again = self.again.take();
        if self.watch(folders) {
            again.get_or_insert(false);
        }
        again
    }

    /// No scan under way or asked for.
    pub fn is_idle(&self) -> bool {
        !self.scanning && self.again.is_none()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn a_burst_of_signals_is_debounced_but_never_for_long() {
        let quiet = Folder::Config.quiet();
        let mut debounce = Debounce::default();
        let start = Instant::now();
        debounce.touch(quiet);
        assert_eq!(debounce.due, Some(start + quiet));
        // A signal every 50 ms keeps pushing it back by the quiet time...
        for _ in 0..10 {
            tokio::time::advance(Duration::from_millis(50)).await;
            debounce.touch(quiet);
        }
        assert_eq!(
            debounce.due,
            Some(start + Duration::from_millis(500) + quiet)
        );
        // ...but never past MAX_DEBOUNCE after the first.
        for _ in 0..20 {
            tokio::time::advance(Duration::from_millis(50)).await;
            debounce.touch(quiet);
        }
        assert_eq!(debounce.due, Some(start + MAX_DEBOUNCE));
        debounce.take();
        assert_eq!(debounce.due, None);
        debounce.touch(quiet);
        assert_eq!(debounce.due, Some(Instant::now() + quiet));
    }

    fn scanner() -> (Scanner, mpsc::Receiver<Found>) {
        let (found, rx) = mpsc::channel(FOUND_CAPACITY);
        let scanner = Scanner {
            tracker: TaskTracker::new(),
            stop: CancellationToken::new(),
            found,
        };
        (scanner, rx)
    }

    fn empty_scan(dir: &Path, watch: BTreeSet<PathBuf>) -> Found {
        Found::Instances(DirScan {
            dir: dir.to_path_buf(),
            files: Default::default(),
            error: None,
            watch,
        })
    }

    #[tokio::test]
    async fn one_scan_at_a_time_and_one_more_if_asked_meanwhile() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().to_path_buf();
        let (scanner, mut found) = scanner();
        let mut input = FolderInput::new(Folder::Instances, &path);
        let job = |path: PathBuf| move |_forced| empty_scan(&path, BTreeSet::new());
        input.scan(false, &scanner, job(path.clone()));
        input.scan(false, &scanner, job(path.clone()));
        input.scan(true, &scanner, job(path.clone()));
        assert!(!input.is_idle());
        let first = found.recv().await.unwrap();
        // Only one ran; the two asked for meanwhile are one more, forced.
        assert!(found.try_recv().is_err());
        let Found::Instances(first) = first else {
            panic!("an instances scan")
        };
        assert_eq!(input.finished(&first.watch), Some(true));
        assert!(input.is_idle());
        // A folder that appears is watched and scanned once more.
        let watched = BTreeSet::from([path.canonicalize().unwrap()]);
        input.scan(false, &scanner, job(path.clone()));
        found.recv().await.unwrap();
        assert_eq!(input.finished(&watched), Some(false));
        assert_eq!(input.finished(&watched), None, "already watched");
    }

    #[tokio::test]
    async fn a_change_in_a_watched_folder_settles_once_after_the_burst() {
        let dir = tempfile::tempdir().unwrap();
        let mut input = FolderInput::new(Folder::Instances, dir.path());
        input.watch(&BTreeSet::from([dir.path().canonicalize().unwrap()]));
        for i in 0..3 {
            std::fs::write(dir.path().join(format!("{i}.yaml")), "x").unwrap();
        }
        tokio::time::timeout(Duration::from_secs(10), input.settled())
            .await
            .expect("the changes settle");
        assert_eq!(input.debounce.due, None);
    }
}
