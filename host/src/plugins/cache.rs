//! The compile cache: plugins' machine code in a folder only the agent can
//! write, one file per plugin content and engine build, bounded by age and
//! total size (least recently used first).
//!
//! Loading an entry runs native code from it, so nothing is loaded from a
//! folder or a file another user could have written: the folder and every
//! folder above it must pass [`ownership`]'s rule (the agent creates what
//! is missing, mode 0700), and each entry must be owned by the agent's
//! effective uid and not writable by group or others, checked on the open
//! file right before it is mapped. The folder is opened once, at start,
//! and every read, write, rename and delete goes through that descriptor
//! (`openat`, `renameat`, `unlinkat`): renaming the folder, re-pointing a
//! symlink to it (systemd's `DynamicUser=` makes `$CACHE_DIRECTORY` one) or
//! putting another folder at its path later redirects nothing.

use std::collections::HashSet;
use std::fs::File;
use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};
use std::sync::{Mutex, Once};
use std::time::{Duration, SystemTime};

use rustix::fs::{AtFlags, Mode, OFlags};
use tracing::{info, warn};
use wasmtime::Engine;
use wasmtime::component::Component;

use super::ownership;

/// An entry not loaded for this long is deleted.
pub const MAX_UNUSED_AGE: Duration = Duration::from_secs(30 * 24 * 60 * 60);

/// Past this total, the least recently used entries are deleted.
pub const MAX_TOTAL_BYTES: u64 = 1 << 30;

/// A temp file of an interrupted write older than this is deleted.
pub const STALE_TEMP_AGE: Duration = Duration::from_secs(60 * 60);

/// Temp files are `.tmp` and six random letters or digits (tempfile's
/// default naming, which earlier versions of the agent used too).
const TEMP_PREFIX: &str = ".tmp";
const TEMP_RANDOM_LEN: usize = 6;
const ENTRY_SUFFIX: &str = ".cwasm";
/// Hex digits of the plugin's SHA-256 and of the engine's compatibility hash.
const DIGEST_HEX_LEN: usize = 64;
const COMPATIBILITY_HEX_LEN: usize = 16;

/// The compile cache of one engine.
pub struct CompileCache {
    /// The checked folder, symlinks resolved, as it was named at start
    /// (for messages only: nothing is opened by this path).
    dir: PathBuf,
    /// The folder itself, opened once.
    fd: OwnedFd,
    /// Engine settings and version, folded into entry names so a different
    /// agent build never loads another's compiled code.
    compatibility: String,
    euid: u32,
    swept: Once,
    /// Entries already warned about, so a bad entry is reported once.
    warned: Mutex<HashSet<PathBuf>>,
}

/// What eviction keeps: entries used within `max_unused`, newest first, up
/// to `max_bytes` in total; temp files younger than `stale_temp`.
#[derive(Debug, Clone, Copy)]
pub struct Bounds {
    pub max_unused: Duration,
    pub max_bytes: u64,
    pub stale_temp: Duration,
}

pub const BOUNDS: Bounds = Bounds {
    max_unused: MAX_UNUSED_AGE,
    max_bytes: MAX_TOTAL_BYTES,
    stale_temp: STALE_TEMP_AGE,
};

impl CompileCache {
    /// Creates `dir` (mode 0700) if it does not exist, opens it and checks
    /// that only the agent (or root) can write it or any folder above it.
    /// `None`, after one warning, when it cannot be used: the agent then
    /// compiles every plugin without a cache. `compatibility` is 16 hex
    /// digits identifying the engine build.
    pub fn open(dir: &Path, compatibility: String) -> Option<CompileCache> {
        debug_assert!(is_hex(&compatibility, COMPATIBILITY_HEX_LEN));
        match open_cache_dir(dir) {
            Ok((resolved, fd)) => Some(CompileCache {
                dir: resolved,
                fd,
                compatibility,
                euid: ownership::effective_uid(),
                swept: Once::new(),
                warned: Mutex::new(HashSet::new()),
            }),
            Err(problem) => {
                warn!(dir = %dir.display(), %problem, "not using the plugin cache folder; compiling without a cache");
                None
            }
        }
    }

    fn entry_name(&self, digest: &str) -> String {
        format!("{digest}-{}{ENTRY_SUFFIX}", self.compatibility)
    }

    #[cfg(test)]
    fn entry_path(&self, digest: &str) -> PathBuf {
        self.dir.join(self.entry_name(digest))
    }

    /// The machine code cached for the plugin whose SHA-256 is `digest`
    /// (hex), if there is a trustworthy entry; loading it marks it used.
    pub fn load(&self, engine: &Engine, digest: &str) -> Option<Component> {
        let name = self.entry_name(digest);
        let path = self.dir.join(&name);
        let file = match open_private_file(&self.fd, &name, self.euid) {
            Ok(Some(file)) => file,
            Ok(None) => return None,
            Err(problem) => {
                self.warn_once(&path, || {
                    warn!(file = %path.display(), %problem, "not loading this plugin cache entry: only files the agent's user alone can write are loaded; compiling the plugin instead");
                });
                return None;
            }
        };
        // SAFETY: `file` is an open regular file (not a symlink) owned by
        // the agent's user and writable by no one else, in a folder with
        // the same property, named by the SHA-256 of the source and this
        // engine's compatibility hash: only `Component::serialize` of this
        // build, run by this agent's user, wrote it. Entries are replaced
        // by rename and deleted by unlink, never rewritten in place, so the
        // mapped pages stay what was checked.
        match unsafe { deserialize_open_file(engine, &file) } {
            Ok(component) => {
                if let Err(error) = file.set_modified(SystemTime::now()) {
                    tracing::debug!(file = %path.display(), %error, "cannot mark a cache entry used");
                }
                Some(component)
            }
            Err(error) => {
                warn!(file = %path.display(), error = %format!("{error:#}"), "unusable cache entry; recompiling");
                None
            }
        }
    }

    /// Writes `component`'s machine code as the entry for `digest`, then
    /// evicts what the bounds no longer allow.
    pub fn store(&self, digest: &str, component: &Component) {
        let name = self.entry_name(digest);
        match component.serialize() {
            Ok(compiled) => {
                let write = |file: &mut File| std::io::Write::write_all(file, &compiled);
                if let Err(error) = write_atomically(&self.fd, &name, write) {
                    warn!(path = %self.dir.join(&name).display(), %error, "cannot write the plugin cache");
                }
            }
            Err(error) => warn!(%error, "cannot serialise a compiled plugin"),
        }
        self.evict();
    }

    /// Writes the compiled code in `code` (a compile child's output) as
    /// the entry for `digest`, copied in the kernel, then evicts what the
    /// bounds no longer allow.
    pub fn store_code(&self, digest: &str, code: &File) {
        let name = self.entry_name(digest);
        let copy = |file: &mut File| {
            let mut code = code;
            std::io::Seek::rewind(&mut code)?;
            std::io::copy(&mut code, file).map(drop)
        };
        if let Err(error) = write_atomically(&self.fd, &name, copy) {
            warn!(path = %self.dir.join(&name).display(), %error, "cannot write the plugin cache");
        }
        self.evict();
    }

    /// Evicts once per engine, before its first lookup: the sweep at start.
    pub fn sweep_once(&self) {
        self.swept.call_once(|| self.evict());
    }

    fn evict(&self) {
        match evict(&self.fd, self.euid, SystemTime::now(), BOUNDS) {
            Ok(evicted) if evicted.files > 0 => info!(
                dir = %self.dir.display(),
                files = evicted.files,
                bytes = evicted.bytes,
                "deleted plugin cache entries unused for {} days or beyond {} MiB in total",
                MAX_UNUSED_AGE.as_secs() / 86_400,
                MAX_TOTAL_BYTES >> 20
            ),
            Ok(_) => {}
            Err(error) => warn!(dir = %self.dir.display(), %error, "cannot clean the plugin cache"),
        }
    }

    fn warn_once(&self, path: &Path, warn: impl FnOnce()) {
        let mut warned = self.warned.lock().unwrap_or_else(|e| e.into_inner());
        if warned.insert(path.to_path_buf()) {
            warn();
        }
    }
}

/// What one eviction deleted.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Evicted {
    pub files: usize,
    pub bytes: u64,
}

/// Deletes, in the folder `dir`, temp files older than
/// `bounds.stale_temp`, entries unused (not modified) for
/// `bounds.max_unused`, then the least recently used entries until the rest
/// fit in `bounds.max_bytes`. Only regular files named like the agent's own
/// entries or temp files and owned by `euid` are ever deleted, or counted.
pub fn evict(
    dir: &OwnedFd,
    euid: u32,
    now: SystemTime,
    bounds: Bounds,
) -> std::io::Result<Evicted> {
    let mut evicted = Evicted::default();
    let mut kept = Vec::new();
    for entry in rustix::fs::Dir::read_from(dir)? {
        let entry = entry?;
        let Ok(name) = entry.file_name().to_str().map(str::to_owned) else {
            continue;
        };
        let temp = is_temp_name(&name);
        if !temp && !is_entry_name(&name) {
            continue;
        }
        let Ok(stat) = rustix::fs::statat(dir, name.as_str(), AtFlags::SYMLINK_NOFOLLOW) else {
            continue;
        };
        let is_file =
            rustix::fs::FileType::from_raw_mode(stat.st_mode) == rustix::fs::FileType::RegularFile;
        if !is_file || stat.st_uid != euid {
            continue;
        }
        let len = u64::try_from(stat.st_size).unwrap_or(0);
        let used = SystemTime::UNIX_EPOCH
            + Duration::new(
                u64::try_from(stat.st_mtime).unwrap_or(0),
                u32::try_from(stat.st_mtime_nsec).unwrap_or(0),
            );
        let unused_for = now.duration_since(used).unwrap_or_default();
        let limit = if temp {
            bounds.stale_temp
        } else {
            bounds.max_unused
        };
        if unused_for > limit {
            remove(dir, &name, len, &mut evicted);
        } else if !temp {
            kept.push((used, len, name));
        }
    }
    kept.sort();
    let mut total: u64 = kept.iter().map(|(_, len, _)| len).sum();
    for (_, len, name) in kept {
        if total <= bounds.max_bytes {
            break;
        }
        remove(dir, &name, len, &mut evicted);
        total -= len;
    }
    Ok(evicted)
}

fn remove(dir: &OwnedFd, name: &str, len: u64, evicted: &mut Evicted) {
    match rustix::fs::unlinkat(dir, name, AtFlags::empty()) {
        Ok(()) => {
            evicted.files += 1;
            evicted.bytes += len;
        }
        Err(rustix::io::Errno::NOENT) => {}
        Err(error) => warn!(file = %name, %error, "cannot delete a plugin cache entry"),
    }
}

/// `<sha256 hex>-<compatibility hex>.cwasm`
fn is_entry_name(name: &str) -> bool {
    name.strip_suffix(ENTRY_SUFFIX)
        .and_then(|stem| stem.split_once('-'))
        .is_some_and(|(digest, compatibility)| {
            is_hex(digest, DIGEST_HEX_LEN) && is_hex(compatibility, COMPATIBILITY_HEX_LEN)
        })
}

fn is_temp_name(name: &str) -> bool {
    name.strip_prefix(TEMP_PREFIX).is_some_and(|random| {
        random.len() == TEMP_RANDOM_LEN && random.bytes().all(|b| b.is_ascii_alphanumeric())
    })
}

fn is_hex(s: &str, len: usize) -> bool {
    s.len() == len && s.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
}

/// Owned by `euid` and not writable by group or others: what ssh's
/// StrictModes asks of `authorized_keys`.
fn private_to(stat: &rustix::fs::Stat, euid: u32) -> Result<(), String> {
    if stat.st_uid != euid {
        return Err(format!(
            "the file is owned by uid {}, and the agent runs as uid {euid}",
            stat.st_uid
        ));
    }
    let mode = stat.st_mode & 0o7777;
    if mode & 0o022 != 0 {
        return Err(format!(
            "the file is writable by group or others (mode {mode:04o})"
        ));
    }
    Ok(())
}

/// Opens `name` in the folder `dir` without following a symlink and checks
/// the open file itself (so it cannot be swapped between check and read).
/// `Ok(None)` when there is no such file; `Err` says what is wrong with it.
fn open_private_file(dir: &OwnedFd, name: &str, euid: u32) -> Result<Option<File>, String> {
    // O_NONBLOCK: a FIFO planted under an entry's name must not hang us.
    let flags = OFlags::RDONLY | OFlags::NOFOLLOW | OFlags::NONBLOCK | OFlags::CLOEXEC;
    let fd = match rustix::fs::openat(dir, name, flags, Mode::empty()) {
        Ok(fd) => fd,
        Err(rustix::io::Errno::NOENT) => return Ok(None),
        Err(rustix::io::Errno::LOOP) => return Err("it is a symbolic link".into()),
        Err(error) => return Err(format!("cannot open it: {error}")),
    };
    let stat = rustix::fs::fstat(&fd).map_err(|error| format!("cannot stat it: {error}"))?;
    if rustix::fs::FileType::from_raw_mode(stat.st_mode) != rustix::fs::FileType::RegularFile {
        return Err("it is not a regular file".into());
    }
    private_to(&stat, euid)?;
    Ok(Some(File::from(fd)))
}

/// Creates the cache folder (missing folders mode 0700), opens it and
/// checks it and the folders above it; returns it with its resolved path.
fn open_cache_dir(dir: &Path) -> Result<(PathBuf, OwnedFd), String> {
    use std::os::unix::fs::DirBuilderExt;
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .map_err(|error| format!("cannot create {}: {error}", dir.display()))?;
    let fd = ownership::open_private_folder(dir, ownership::effective_uid()).map_err(|problem| {
        format!("{problem} (the cache must be private to the agent's user: set agent.plugins.cacheDir to a folder only it can write, or let the agent create one, mode 0700)")
    })?;
    let resolved = std::fs::canonicalize(dir).unwrap_or_else(|_| dir.to_path_buf());
    Ok((resolved, fd))
}

/// What `ygg-agent check` says of the cache folder `dir`: `Ok` when the
/// agent would use it (or create it under folders that pass), else why not
/// and what to set. Creates nothing.
pub fn check_cache_dir(dir: &Path) -> Result<(), String> {
    let mut existing = dir;
    while !existing.exists() {
        match existing.parent() {
            Some(parent) => existing = parent,
            None => break,
        }
    }
    ownership::open_private_folder(existing, ownership::effective_uid())
        .map(drop)
        .map_err(|problem| {
            format!("the plugin cache folder {}: {problem}; the agent would compile every plugin without a cache: set agent.plugins.cacheDir to a folder owned by the agent's user, mode 0700, under folders only it or root can write", dir.display())
        })
}

/// Writes (with `write`) to a temp file in the folder `dir` (mode 0600), then renames it
/// to `name`, so a crash never leaves a half-written entry under its final
/// name.
fn write_atomically(
    dir: &OwnedFd,
    name: &str,
    write: impl FnOnce(&mut File) -> std::io::Result<()>,
) -> std::io::Result<()> {
    use rand::Rng;
    let flags = OFlags::WRONLY | OFlags::CREATE | OFlags::EXCL | OFlags::NOFOLLOW | OFlags::CLOEXEC;
    let mut attempts = 0;
    let (temp, fd) = loop {
        let random: String = rand::rng()
            .sample_iter(rand::distr::Alphanumeric)
            .take(TEMP_RANDOM_LEN)
            .map(char::from)
            .collect();
        let temp = format!("{TEMP_PREFIX}{random}");
        match rustix::fs::openat(dir, temp.as_str(), flags, Mode::from_raw_mode(0o600)) {
            Ok(fd) => break (temp, fd),
            Err(rustix::io::Errno::EXIST) if attempts < 16 => attempts += 1,
            Err(error) => return Err(error.into()),
        }
    };
    let written = write(&mut File::from(fd))
        .and_then(|()| rustix::fs::renameat(dir, temp.as_str(), dir, name).map_err(Into::into));
    if written.is_err() {
        let _ = rustix::fs::unlinkat(dir, temp.as_str(), AtFlags::empty());
    }
    written
}

/// Loads the machine code in the already-open, already-checked `file`
/// with its pages mapped from the file (no copy into the heap), which
/// `Component::deserialize_file` does for a path: the path given is
/// `/proc/self/fd/<n>`, which opens the very inode `file` holds whatever
/// happened to its name since. Without `/proc`, the file is read through
/// the same descriptor and copied.
///
/// # Safety
/// As `Component::deserialize_file`: `file` must hold what
/// `Component::serialize` of this engine wrote, and must not be modified
/// while the component lives.
pub(super) unsafe fn deserialize_open_file(
    engine: &Engine,
    file: &File,
) -> wasmtime::Result<Component> {
    use std::os::fd::AsRawFd;
    let by_descriptor = PathBuf::from(format!("/proc/self/fd/{}", file.as_raw_fd()));
    if by_descriptor.exists() {
        // SAFETY: the caller's promise, for the same inode.
        return unsafe { Component::deserialize_file(engine, &by_descriptor) };
    }
    let mut compiled = Vec::new();
    std::io::Read::read_to_end(&mut &*file, &mut compiled)?;
    // SAFETY: the caller's promise.
    unsafe { Component::deserialize(engine, &compiled) }
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt;

    use super::*;

    const COMPATIBILITY: &str = "0123456789abcdef";
    const HOUR: Duration = Duration::from_secs(60 * 60);
    const DAY: Duration = Duration::from_secs(24 * 60 * 60);

    fn component(engine: &Engine, export: &str) -> Component {
        let wat = format!(
            r#"(component
                (core module $m (func (export "f")))
                (core instance $i (instantiate $m))
                (func (export "{export}") (canon lift (core func $i "f"))))"#
        );
        Component::new(engine, wat).unwrap()
    }

    fn exports(engine: &Engine, component: &Component) -> Vec<String> {
        let ty = component.component_type();
        ty.exports(engine)
            .map(|(name, _)| name.to_string())
            .collect()
    }

    fn digest(n: u8) -> String {
        hex::encode([n; 32])
    }

    fn entry_name(n: u8) -> String {
        format!("{}-{COMPATIBILITY}.cwasm", digest(n))
    }

    /// A file of `len` bytes last modified `age` before `now`.
    fn file(dir: &Path, name: &str, len: u64, now: SystemTime, age: Duration) -> PathBuf {
        let path = dir.join(name);
        let file = File::create(&path).unwrap();
        file.set_len(len).unwrap();
        file.set_modified(now - age).unwrap();
        path
    }

    fn chown(path: &Path, uid: u32) {
        let path = std::ffi::CString::new(path.as_os_str().as_encoded_bytes()).unwrap();
        // SAFETY: a valid C string; -1 keeps the group.
        let rc = unsafe { libc::lchown(path.as_ptr(), uid, u32::MAX) };
        assert_eq!(rc, 0, "chown: {}", std::io::Error::last_os_error());
    }

    fn names(dir: &Path) -> Vec<String> {
        let mut names: Vec<String> = std::fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        names
    }

    const NOBODY: u32 = 65534;

    fn held(dir: &Path) -> OwnedFd {
        rustix::fs::open(
            dir,
            OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC,
            Mode::empty(),
        )
        .unwrap()
    }

    #[test]
    fn a_folder_under_one_another_user_owns_is_not_used() {
        let tmp = tempfile::tempdir().unwrap();
        let parent = tmp.path().join("theirs");
        std::fs::create_dir(&parent).unwrap();
        let dir = parent.join("cache");
        std::fs::create_dir(&dir).unwrap();
        chown(&parent, NOBODY);
        assert!(CompileCache::open(&dir, COMPATIBILITY.into()).is_none());
        let problem = check_cache_dir(&dir).unwrap_err();
        assert!(problem.contains("owned by uid 65534"), "{problem}");
        assert!(problem.contains("agent.plugins.cacheDir"), "{problem}");
        // Not yet created: the folders it would be created under are checked.
        assert!(check_cache_dir(&parent.join("later/cache")).is_err());
        chown(&parent, ownership::effective_uid());
        assert_eq!(check_cache_dir(&parent.join("later/cache")), Ok(()));
    }

    #[test]
    fn a_folder_swapped_after_start_changes_nothing() {
        let engine = Engine::default();
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("cache");
        let cache = CompileCache::open(&dir, COMPATIBILITY.into()).unwrap();
        cache.store(&digest(1), &component(&engine, "one"));
        // Someone moves the folder away and puts their own in its place,
        // holding B's code under A's name.
        let moved = tmp.path().join("moved");
        std::fs::rename(&dir, &moved).unwrap();
        std::fs::create_dir(&dir).unwrap();
        let theirs = CompileCache::open(&dir, COMPATIBILITY.into()).unwrap();
        theirs.store(&digest(1), &component(&engine, "planted"));
        theirs.store(&digest(2), &component(&engine, "planted"));

        let loaded = cache
            .load(&engine, &digest(1))
            .expect("from the held folder");
        assert_eq!(exports(&engine, &loaded), ["one"]);
        assert!(cache.load(&engine, &digest(2)).is_none());
        cache.store(&digest(3), &component(&engine, "three"));
        assert!(moved.join(entry_name(3)).is_file());
        assert!(!dir.join(entry_name(3)).exists());
    }

    #[test]
    fn a_stored_component_loads_from_the_cache_and_is_marked_used() {
        let engine = Engine::default();
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("cache");
        let cache = CompileCache::open(&dir, COMPATIBILITY.into()).expect("a private folder");
        assert_eq!(
            std::fs::metadata(&dir).unwrap().permissions().mode() & 0o777,
            0o700
        );
        assert!(cache.load(&engine, &digest(1)).is_none());
        cache.store(&digest(1), &component(&engine, "one"));
        let path = dir.join(entry_name(1));
        let month_ago = SystemTime::now() - 29 * DAY;
        File::options()
            .write(true)
            .open(&path)
            .unwrap()
            .set_modified(month_ago)
            .unwrap();

        let loaded = cache
            .load(&engine, &digest(1))
            .expect("loaded from the cache");
        assert_eq!(exports(&engine, &loaded), ["one"]);
        let used = std::fs::metadata(&path).unwrap().modified().unwrap();
        assert!(
            used > SystemTime::now() - HOUR,
            "a load marks the entry used: {used:?}"
        );
    }

    #[test]
    fn a_folder_others_can_write_is_not_used() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("cache");
        std::fs::create_dir(&dir).unwrap();
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o777)).unwrap();
        assert!(CompileCache::open(&dir, COMPATIBILITY.into()).is_none());
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o720)).unwrap();
        assert!(CompileCache::open(&dir, COMPATIBILITY.into()).is_none());
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755)).unwrap();
        assert!(CompileCache::open(&dir, COMPATIBILITY.into()).is_some());
    }

    #[test]
    fn a_folder_owned_by_another_user_is_not_used() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("cache");
        std::fs::create_dir(&dir).unwrap();
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o700)).unwrap();
        chown(&dir, NOBODY);
        assert!(CompileCache::open(&dir, COMPATIBILITY.into()).is_none());
    }

    #[test]
    fn a_symlinked_folder_is_resolved_once_and_the_target_checked() {
        let tmp = tempfile::tempdir().unwrap();
        let real = tmp.path().join("real");
        let link = tmp.path().join("link");
        std::fs::create_dir(&real).unwrap();
        std::os::unix::fs::symlink(&real, &link).unwrap();
        let cache = CompileCache::open(&link, COMPATIBILITY.into()).expect("a private target");
        assert_eq!(cache.dir, std::fs::canonicalize(&real).unwrap());

        std::fs::set_permissions(&real, std::fs::Permissions::from_mode(0o777)).unwrap();
        assert!(CompileCache::open(&link, COMPATIBILITY.into()).is_none());
    }

    /// Plants `planted`'s machine code under `digest(1)`'s name and returns
    /// the entry's path.
    fn plant(cache: &CompileCache, engine: &Engine, planted: &str) -> PathBuf {
        cache.store(&digest(1), &component(engine, planted));
        cache.entry_path(&digest(1))
    }

    #[test]
    fn entries_others_could_have_written_are_not_loaded() {
        let engine = Engine::default();
        let tmp = tempfile::tempdir().unwrap();
        let cache = CompileCache::open(tmp.path(), COMPATIBILITY.into()).unwrap();

        let path = plant(&cache, &engine, "planted");
        chown(&path, NOBODY);
        assert!(cache.load(&engine, &digest(1)).is_none(), "owned by nobody");

        let path = plant(&cache, &engine, "planted");
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o666)).unwrap();
        assert!(cache.load(&engine, &digest(1)).is_none(), "mode 0666");

        let elsewhere = tmp.path().join("elsewhere.bin");
        std::fs::rename(plant(&cache, &engine, "planted"), &elsewhere).unwrap();
        std::os::unix::fs::symlink(&elsewhere, &path).unwrap();
        assert!(cache.load(&engine, &digest(1)).is_none(), "a symlink");

        // Storing replaces a bad entry (the symlink itself, not its target).
        cache.store(&digest(1), &component(&engine, "right"));
        let loaded = cache.load(&engine, &digest(1)).expect("the replaced entry");
        assert_eq!(exports(&engine, &loaded), ["right"]);
        assert!(std::fs::symlink_metadata(&path).unwrap().is_file());
    }

    #[test]
    fn eviction_deletes_unused_entries_and_stale_temp_files_it_owns() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path();
        let now = SystemTime::now();
        let euid = ownership::effective_uid();
        file(dir, &entry_name(1), 10, now, 31 * DAY);
        file(dir, &entry_name(2), 10, now, 29 * DAY);
        file(dir, ".tmpAb12Cd", 10, now, 2 * HOUR);
        file(dir, ".tmpXy34Zw", 10, now, HOUR / 2);
        // Not ours by name, owner or kind: never deleted, however old.
        file(dir, "notes.txt", 10, now, 400 * DAY);
        file(dir, &format!("{}.bak", entry_name(3)), 10, now, 400 * DAY);
        file(dir, &entry_name(4).to_uppercase(), 10, now, 400 * DAY);
        let foreign = file(dir, &entry_name(5), 10, now, 400 * DAY);
        chown(&foreign, NOBODY);
        let target = file(dir, "target", 10, now, 400 * DAY);
        std::os::unix::fs::symlink(&target, dir.join(entry_name(6))).unwrap();
        std::fs::create_dir(dir.join(entry_name(7))).unwrap();

        let evicted = evict(&held(dir), euid, now, BOUNDS).unwrap();
        assert_eq!(
            evicted,
            Evicted {
                files: 2,
                bytes: 20
            }
        );
        let mut expected = vec![
            entry_name(2),
            ".tmpXy34Zw".to_string(),
            "notes.txt".into(),
            format!("{}.bak", entry_name(3)),
            entry_name(4).to_uppercase(),
            entry_name(5),
            "target".into(),
            entry_name(6),
            entry_name(7),
        ];
        expected.sort();
        assert_eq!(names(dir), expected);
    }

    #[test]
    fn past_the_size_bound_the_least_recently_used_go_first() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path();
        let now = SystemTime::now();
        for (n, age_hours) in [(1, 4), (2, 1), (3, 3), (4, 2)] {
            file(dir, &entry_name(n), 100, now, HOUR * age_hours);
        }
        let bounds = Bounds {
            max_bytes: 250,
            ..BOUNDS
        };
        let evicted = evict(&held(dir), ownership::effective_uid(), now, bounds).unwrap();
        assert_eq!(
            evicted,
            Evicted {
                files: 2,
                bytes: 200
            }
        );
        assert_eq!(names(dir), [entry_name(2), entry_name(4)]);
        // Within the bound nothing more goes.
        assert_eq!(
            evict(&held(dir), ownership::effective_uid(), now, bounds).unwrap(),
            Evicted::default()
        );
    }

    #[test]
    fn the_first_sweep_cleans_a_cache_left_by_an_earlier_run() {
        let tmp = tempfile::tempdir().unwrap();
        let now = SystemTime::now();
        file(tmp.path(), &entry_name(1), 10, now, 40 * DAY);
        file(tmp.path(), &entry_name(2), 10, now, DAY);
        let cache = CompileCache::open(tmp.path(), COMPATIBILITY.into()).unwrap();
        assert_eq!(names(tmp.path()).len(), 2, "opening deletes nothing");
        cache.sweep_once();
        assert_eq!(names(tmp.path()), [entry_name(2)]);
    }

    /// Times loading every entry of the cache folder `$YGG_MEASURE_CACHE`
    /// (made by an agent of this build) mapped, as the agent does, beside
    /// reading it into memory first, as it did before: `cargo test -p
    /// ygg-agent --lib measure_cache_load -- --ignored --nocapture`.
    #[test]
    #[ignore = "a measurement: needs YGG_MEASURE_CACHE"]
    fn measure_cache_load() {
        let dir = PathBuf::from(std::env::var_os("YGG_MEASURE_CACHE").expect("YGG_MEASURE_CACHE"));
        let engine = Engine::new(&super::super::engine::engine_config()).unwrap();
        for entry in std::fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            let mut mapped = Vec::new();
            let mut copied = Vec::new();
            for _ in 0..5 {
                let started = std::time::Instant::now();
                let file = File::open(&path).unwrap();
                // SAFETY: an entry this build's agent wrote.
                let component = unsafe { deserialize_open_file(&engine, &file) }.unwrap();
                mapped.push(started.elapsed());
                drop(component);
                let started = std::time::Instant::now();
                let bytes = std::fs::read(&path).unwrap();
                // SAFETY: as above.
                let component = unsafe { Component::deserialize(&engine, &bytes) }.unwrap();
                copied.push(started.elapsed());
                drop(component);
            }
            mapped.sort();
            copied.sort();
            eprintln!(
                "{} ({:.1} MB): mapped median {:?} (min {:?}); read and copied median {:?} (min {:?})",
                path.display(),
                std::fs::metadata(&path).unwrap().len() as f64 / 1e6,
                mapped[2],
                mapped[0],
                copied[2],
                copied[0]
            );
        }
    }

    #[test]
    fn names_are_told_apart() {
        assert!(is_entry_name(&entry_name(0xab)));
        assert!(!is_entry_name(&format!(
            "{}-{COMPATIBILITY}.wasm",
            digest(1)
        )));
        assert!(!is_entry_name(&format!(
            "{}-{COMPATIBILITY}.cwasm",
            &digest(1)[1..]
        )));
        assert!(!is_entry_name("-.cwasm"));
        assert!(is_temp_name(".tmpA1b2C3"));
        assert!(!is_temp_name(".tmpA1b2C"));
        assert!(!is_temp_name(".tmpA1b2C3.cwasm"));
        assert!(!is_temp_name("tmpA1b2C3"));
    }
}
