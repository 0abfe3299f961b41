//! Who could have written a folder or a file: the one rule the plugins
//! folder and the compile cache share, since both hold what becomes code
//! inside the agent. A folder passes when it and every folder above it
//! (`..` of the open folder, up to `/`) is owned by the agent's user or
//! root and not writable by group or others; a folder with the sticky bit
//! (`/tmp`) may be writable by others when root owns it and the folder
//! below it in the chain is the agent's or root's, since then nobody else
//! can rename that folder away. A file passes when it is a regular file,
//! owned by the agent's user or root and not writable by group or others.
//! Checks run on open descriptors, so what is checked is what is used.

use std::fs::File;
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use rustix::fs::{Mode, OFlags};

/// The agent's effective uid.
pub fn effective_uid() -> u32 {
    rustix::process::geteuid().as_raw()
}

/// The owner and mode of something, with how to name it in a message.
struct Seen {
    uid: u32,
    mode: u32,
    dev: u64,
    ino: u64,
}

fn seen(fd: impl AsFd) -> std::io::Result<Seen> {
    let stat = rustix::fs::fstat(fd)?;
    Ok(Seen {
        uid: stat.st_uid,
        mode: stat.st_mode & 0o7777,
        dev: stat.st_dev,
        ino: stat.st_ino,
    })
}

fn owner_ok(uid: u32, euid: u32) -> bool {
    uid == euid || uid == 0
}

/// Why a thing owned by `uid` with `mode` is not private, if it is not.
fn private(uid: u32, mode: u32, euid: u32, what: &str) -> Result<(), String> {
    if !owner_ok(uid, euid) {
        return Err(format!(
            "{what} is owned by uid {uid}, and the agent runs as uid {euid} (only the agent's user or root may own it)"
        ));
    }
    if mode & 0o022 != 0 {
        return Err(format!(
            "{what} is writable by group or others (mode {mode:04o})"
        ));
    }
    Ok(())
}

/// Checks the open folder `dir` (shown as `shown`) and every folder above
/// it. `Err` says which folder and why.
pub fn check_folder_chain(dir: &OwnedFd, shown: &Path, euid: u32) -> Result<(), String> {
    let mut current = seen(dir).map_err(|e| format!("cannot stat {}: {e}", shown.display()))?;
    private(
        current.uid,
        current.mode,
        euid,
        &format!("the folder {}", shown.display()),
    )?;
    let mut path = shown.to_path_buf();
    let mut fd =
        rustix::io::dup(dir).map_err(|e| format!("cannot hold {}: {e}", shown.display()))?;
    loop {
        let parent = rustix::fs::openat(
            &fd,
            "..",
            OFlags::PATH | OFlags::DIRECTORY | OFlags::CLOEXEC,
            Mode::empty(),
        )
        .map_err(|e| format!("cannot open the folder above {}: {e}", path.display()))?;
        let above = seen(&parent)
            .map_err(|e| format!("cannot stat the folder above {}: {e}", path.display()))?;
        if above.dev == current.dev && above.ino == current.ino {
            return Ok(()); // `/`
        }
        path = path
            .parent()
            .map_or_else(|| PathBuf::from(".."), Path::to_path_buf);
        let what = format!("the folder {} (above it)", path.display());
        let sticky_shelter =
            above.mode & 0o1000 != 0 && above.uid == 0 && owner_ok(current.uid, euid);
        if !sticky_shelter {
            private(above.uid, above.mode, euid, &what)?;
        } else if !owner_ok(above.uid, euid) {
            return Err(format!("{what} is owned by uid {}", above.uid));
        }
        current = above;
        fd = parent;
    }
}

/// Opens the folder at `path` (symlinks followed: the folder they lead to
/// is the one checked and held) and checks it and every folder above it.
pub fn open_private_folder(path: &Path, euid: u32) -> Result<OwnedFd, String> {
    let fd = rustix::fs::open(
        path,
        OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC,
        Mode::empty(),
    )
    .map_err(|e| format!("cannot open the folder {}: {e}", path.display()))?;
    let resolved = std::fs::canonicalize(path).unwrap_or_else(|_| path.to_path_buf());
    check_folder_chain(&fd, &resolved, euid)?;
    Ok(fd)
}

/// Checks one plugin file: opened following symlinks, the file reached
/// must be a regular file only the agent's user or root can write; a
/// symlink's target folder (and those above it) must pass the folder rule.
pub fn check_plugin_file(path: &Path, euid: u32) -> Result<(), String> {
    let file = File::options()
        .read(true)
        .custom_flags(libc::O_NONBLOCK)
        .open(path)
        .map_err(|e| format!("cannot open {}: {e}", path.display()))?;
    if !file.metadata().is_ok_and(|m| m.is_file()) {
        // Not a plugin at all (the scan says so for that file alone).
        return Ok(());
    }
    check_open_plugin_file(&file, path, euid)?;
    let link = std::fs::symlink_metadata(path)
        .map_err(|e| format!("cannot stat {}: {e}", path.display()))?;
    if link.file_type().is_symlink() {
        let target = std::fs::canonicalize(path)
            .map_err(|e| format!("cannot resolve the symlink {}: {e}", path.display()))?;
        let folder = target.parent().unwrap_or(Path::new("/"));
        let fd = open_private_folder(folder, euid).map_err(|problem| {
            format!(
                "{} is a symlink to {}, and {problem}",
                path.display(),
                target.display()
            )
        })?;
        // The file the link leads to now must be the one checked above.
        let now = rustix::fs::statat(
            &fd,
            target.file_name().unwrap_or_default(),
            rustix::fs::AtFlags::empty(),
        )
        .map_err(|e| format!("cannot stat {}: {e}", target.display()))?;
        let opened = file.metadata().map_err(|e| e.to_string())?;
        if now.st_ino != opened.ino() || now.st_dev != opened.dev() {
            return Err(format!("{} changed while it was checked", path.display()));
        }
    }
    Ok(())
}

/// Checks an open plugin file (`path` names it in messages).
pub fn check_open_plugin_file(file: &File, path: &Path, euid: u32) -> Result<(), String> {
    let metadata = file
        .metadata()
        .map_err(|e| format!("cannot stat {}: {e}", path.display()))?;
    if !metadata.file_type().is_file() {
        return Err(format!("{} is not a regular file", path.display()));
    }
    private(
        metadata.uid(),
        metadata.mode() & 0o7777,
        euid,
        &format!("the file {}", path.display()),
    )
}

/// Checks the plugins folder at `dir` and every `*.wasm` file in it: the
/// whole folder is refused (`Err`, naming the first problem and how to fix
/// it) if any of them could have been written by someone else.
pub fn check_plugins_folder(dir: &Path, euid: u32) -> Result<(), String> {
    let advice = "make it owned by the agent's user or root and not writable by group or others (chmod go-w), or point agent.plugins.dir elsewhere";
    open_private_folder(dir, euid).map_err(|problem| format!("{problem}: {advice}"))?;
    let entries = std::fs::read_dir(dir)
        .map_err(|e| format!("cannot read the folder {}: {e}", dir.display()))?;
    let mut files: Vec<PathBuf> = entries
        .flatten()
        .map(|entry| entry.path())
        .filter(|path| path.extension().and_then(|e| e.to_str()) == Some("wasm"))
        .collect();
    files.sort();
    for path in files {
        check_plugin_file(&path, euid).map_err(|problem| format!("{problem}: {advice}"))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt;

    use super::*;

    fn chmod(path: &Path, mode: u32) {
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).unwrap();
    }

    #[test]
    fn a_private_folder_under_tmp_passes_and_a_shared_one_does_not() {
        let euid = effective_uid();
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("plugins");
        std::fs::create_dir(&dir).unwrap();
        chmod(&dir, 0o755);
        chmod(tmp.path(), 0o700);
        assert_eq!(check_plugins_folder(&dir, euid), Ok(()));
        chmod(&dir, 0o777);
        let problem = check_plugins_folder(&dir, euid).unwrap_err();
        assert!(
            problem.contains("writable by group or others (mode 0777)"),
            "{problem}"
        );
        chmod(&dir, 0o755);
        chmod(tmp.path(), 0o775);
        let problem = check_plugins_folder(&dir, euid).unwrap_err();
        assert!(problem.contains("above it"), "{problem}");
    }
}
