//! Scanning the plugins folder, off the async workers: which `*.wasm` files
//! hold a plugin, and the SHA-256 of each. A file whose size, mtime, ctime
//! and inode are what the last scan saw keeps its digest without being read
//! again, so a rescan of an unchanged folder costs one `stat` per file.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};

use super::engine::{LoadError, MAX_PLUGIN_BYTES};
use super::ownership;
use crate::config;
use crate::watch::{self, Watched};

/// What identifies a file's content without reading it: a change to any of
/// these makes the next scan read and hash it again.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Stamp {
    device: u64,
    inode: u64,
    len: u64,
    mtime_ns: i128,
    ctime_ns: i128,
}

impl Stamp {
    fn of(metadata: &std::fs::Metadata) -> Stamp {
        let ns = |secs: i64, nanos: i64| i128::from(secs) * 1_000_000_000 + i128::from(nanos);
        Stamp {
            device: metadata.dev(),
            inode: metadata.ino(),
            len: metadata.len(),
            mtime_ns: ns(metadata.mtime(), metadata.mtime_nsec()),
            ctime_ns: ns(metadata.ctime(), metadata.ctime_nsec()),
        }
    }
}

/// One plugin file as a scan found it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ScannedFile {
    pub path: PathBuf,
    /// The content's SHA-256, or why the file cannot be used.
    pub digest: Result<([u8; 32], Stamp), LoadError>,
    /// The SHA-256 of its signature file (`<name>.wasm.minisig`), if any.
    pub signature: Option<[u8; 32]>,
}

/// What one scan of the folder found.
#[derive(Debug)]
pub struct Scan {
    /// The folder that was scanned (a reconfigure may have moved on since).
    pub dir: PathBuf,
    /// Plugin files by plugin name, or why the folder cannot be used.
    pub files: Result<BTreeMap<String, ScannedFile>, FolderError>,
    /// `.wasm` files whose name is not a plugin name.
    pub ignored: BTreeSet<PathBuf>,
    /// The folders to watch for this folder's changes (symlinks followed).
    pub watch: BTreeSet<PathBuf>,
    /// How many files were read and hashed (the others kept their digest).
    pub hashed: usize,
}

/// Why a scan found no usable plugin files.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FolderError {
    /// The folder cannot be read (missing, no permission).
    Unreadable(String),
    /// The folder, a folder above it or a file in it could have been
    /// written by another user: nothing in it is loaded.
    Refused(String),
}

/// Scans `dir`; `known` holds each plugin's digest and stamp from the last
/// scan. Blocking.
pub fn scan(dir: &Path, known: &HashMap<String, ([u8; 32], Stamp)>) -> Scan {
    let watch = watch::folders_to_watch(dir, Watched::Folder);
    let mut scan = Scan {
        dir: dir.to_path_buf(),
        files: Ok(BTreeMap::new()),
        ignored: BTreeSet::new(),
        watch,
        hashed: 0,
    };
    let entries = match std::fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(error) => {
            scan.files = Err(FolderError::Unreadable(error.to_string()));
            return scan;
        }
    };
    if let Err(problem) = ownership::check_plugins_folder(dir, ownership::effective_uid()) {
        scan.files = Err(FolderError::Refused(problem));
        return scan;
    }
    let mut files = BTreeMap::new();
    for entry in entries.flatten() {
        let path = entry.path();
        if path.extension().and_then(|e| e.to_str()) != Some("wasm") {
            continue;
        }
        let Some(stem) = path.file_stem().and_then(|s| s.to_str()) else {
            continue;
        };
        if !config::is_plugin_name(stem) {
            scan.ignored.insert(path);
            continue;
        }
        let digest = match std::fs::metadata(&path) {
            Err(error) => Err(LoadError::Read(error.to_string())),
            Ok(metadata) if !metadata.is_file() => {
                Err(LoadError::Read("not a regular file".into()))
            }
            Ok(metadata) if metadata.len() > MAX_PLUGIN_BYTES => {
                Err(LoadError::TooLarge(metadata.len()))
            }
            Ok(metadata) => {
                let stamp = Stamp::of(&metadata);
                match known.get(stem) {
                    Some((digest, seen)) if *seen == stamp => Ok((*digest, stamp)),
                    _ => {
                        scan.hashed += 1;
                        hash_file(&path).map(|digest| (digest, stamp))
                    }
                }
            }
        };
        let signature = super::signature::read_signature(&path)
            .ok()
            .flatten()
            .map(|text| Sha256::digest(text.as_bytes()).into());
        files.insert(
            stem.to_string(),
            ScannedFile {
                path,
                digest,
                signature,
            },
        );
    }
    scan.files = Ok(files);
    scan
}

fn hash_file(path: &Path) -> Result<[u8; 32], LoadError> {
    let bytes = read_plugin_file(path)?;
    Ok(Sha256::digest(&bytes).into())
}

/// Reads a plugin file of the agent's plugins folder: the open file must
/// still be one only the agent's user or root can write (the folder was
/// checked by the scan). Blocking.
pub fn read_trusted_plugin_file(path: &Path) -> Result<Vec<u8>, LoadError> {
    use std::io::Read;
    use std::os::unix::fs::OpenOptionsExt;
    let file = std::fs::File::options()
        .read(true)
        .custom_flags(libc::O_NONBLOCK)
        .open(path)
        .map_err(|e| LoadError::Read(e.to_string()))?;
    ownership::check_open_plugin_file(&file, path, ownership::effective_uid())
        .map_err(LoadError::Untrusted)?;
    let mut bytes = Vec::new();
    file.take(MAX_PLUGIN_BYTES + 1)
        .read_to_end(&mut bytes)
        .map_err(|e| LoadError::Read(e.to_string()))?;
    if bytes.len() as u64 > MAX_PLUGIN_BYTES {
        return Err(LoadError::TooLarge(bytes.len() as u64));
    }
    Ok(bytes)
}

/// Reads a plugin file, refusing what is not a regular file or too large.
/// Blocking.
pub fn read_plugin_file(path: &Path) -> Result<Vec<u8>, LoadError> {
    let metadata = std::fs::metadata(path).map_err(|e| LoadError::Read(e.to_string()))?;
    if !metadata.is_file() {
        return Err(LoadError::Read("not a regular file".into()));
    }
    if metadata.len() > MAX_PLUGIN_BYTES {
        return Err(LoadError::TooLarge(metadata.len()));
    }
    let bytes = std::fs::read(path).map_err(|e| LoadError::Read(e.to_string()))?;
    if bytes.len() as u64 > MAX_PLUGIN_BYTES {
        return Err(LoadError::TooLarge(bytes.len() as u64));
    }
    Ok(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn known_of(scan: &Scan) -> HashMap<String, ([u8; 32], Stamp)> {
        scan.files
            .as_ref()
            .unwrap()
            .iter()
            .filter_map(|(name, file)| file.digest.clone().ok().map(|d| (name.clone(), d)))
            .collect()
    }

    #[test]
    fn an_unchanged_file_is_not_read_again() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("a.wasm"), b"one").unwrap();
        std::fs::write(dir.path().join("b.wasm"), b"two").unwrap();
        std::fs::write(dir.path().join("notes.txt"), b"x").unwrap();
        std::fs::write(dir.path().join("bad name.wasm"), b"x").unwrap();
        let first = scan(dir.path(), &HashMap::new());
        assert_eq!(first.hashed, 2);
        let files = first.files.as_ref().unwrap();
        assert_eq!(files.keys().collect::<Vec<_>>(), ["a", "b"]);
        assert_eq!(
            files["a"].digest.as_ref().unwrap().0,
            <[u8; 32]>::from(Sha256::digest(b"one"))
        );
        assert_eq!(
            first.ignored,
            BTreeSet::from([dir.path().join("bad name.wasm")])
        );

        let second = scan(dir.path(), &known_of(&first));
        assert_eq!(second.hashed, 0);

        // Replaced by rename (new inode): read again.
        std::fs::write(dir.path().join(".b.tmp"), b"three").unwrap();
        std::fs::rename(dir.path().join(".b.tmp"), dir.path().join("b.wasm")).unwrap();
        let third = scan(dir.path(), &known_of(&second));
        assert_eq!(third.hashed, 1);
        assert_eq!(
            third.files.unwrap()["b"].digest.as_ref().unwrap().0,
            <[u8; 32]>::from(Sha256::digest(b"three"))
        );
    }

    #[test]
    fn an_unreadable_folder_is_an_error_not_an_empty_folder() {
        let dir = tempfile::tempdir().unwrap();
        let scan = scan(&dir.path().join("missing"), &HashMap::new());
        assert!(scan.files.is_err());
    }

    #[test]
    fn a_folder_named_like_a_plugin_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("x.wasm")).unwrap();
        let scan = scan(dir.path(), &HashMap::new());
        assert_eq!(
            scan.files.unwrap()["x"].digest,
            Err(LoadError::Read("not a regular file".into()))
        );
    }
}
