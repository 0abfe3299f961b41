//! The local API socket's folder, which no other local user may prepare.
//!
//! The agent's rule ([`check_agent_folder`]): the folder and every folder
//! above it are owned by the agent's user or root and nobody else may
//! write them, except a folder above (not the socket's own) that is
//! root's and sticky, such as `/tmp` (there only an entry's owner may
//! rename or remove it). The agent creates a missing folder `0750` itself,
//! checks it, then opens it once ([`SocketDir`]): the stale socket is
//! removed, the socket bound and its mode set through that descriptor, so
//! a path swapped after start changes nothing.
//!
//! The command line's rule ([`check_client_socket`]), before it sends
//! anything: the folders above the socket's pass the same test with the
//! command line's user in place of the agent's; the socket's own folder is
//! root's or the user's, or was made by one of them (its parent lets no
//! one else write); the socket is a socket owned by root, the user or the
//! folder's owner; and after connecting, the process on the other end is
//! one of those users too.

use std::ffi::CString;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{DirBuilderExt, MetadataExt};
use std::path::{Path, PathBuf};

/// Mode of a socket folder the agent creates: its user, and its group
/// (which may reach the socket, mode 0660).
pub const FOLDER_MODE: u32 = 0o750;
const STICKY: u32 = 0o1000;
const SHARED_WRITE: u32 = 0o022;

/// The effective user id of this process.
pub fn euid() -> u32 {
    // SAFETY: geteuid cannot fail.
    unsafe { libc::geteuid() }
}

/// What to set instead of a refused folder.
const HOW_TO_FIX: &str = "remove it, or set agent.api.socket (or run under systemd with RuntimeDirectory=) to a folder only the agent's user or root can write";

/// Why `folder` (the socket's, `own`, or one above it) is not safe for a
/// process trusting `trusted` (and root), if it is not.
fn problem(folder: &Path, meta: &std::fs::Metadata, trusted: u32, own: bool) -> Option<String> {
    let mode = meta.mode();
    let owner = meta.uid();
    if !meta.is_dir() {
        return Some(format!("{} is not a folder", folder.display()));
    }
    if owner != 0 && owner != trusted {
        return Some(format!(
            "{} is owned by uid {owner}, not by uid {trusted} or root: another user may have prepared it",
            folder.display()
        ));
    }
    if mode & SHARED_WRITE != 0 && (own || owner != 0 || mode & STICKY == 0) {
        return Some(format!(
            "{} has mode {:04o}: the group or others may write it (and swap the socket)",
            folder.display(),
            mode & 0o7777
        ));
    }
    None
}

/// Checks the socket folder `folder` and every folder above it for the
/// agent (running as `euid`); the error says what is wrong and what to do.
pub fn check_agent_folder(folder: &Path) -> Result<(), String> {
    check_folder_as(folder, euid())
}

/// [`check_agent_folder`] for an agent running as `trusted`.
fn check_folder_as(folder: &Path, trusted: u32) -> Result<(), String> {
    let folder = folder
        .canonicalize()
        .map_err(|e| format!("socket folder {}: {e}", folder.display()))?;
    for (depth, dir) in folder.ancestors().enumerate() {
        let meta = std::fs::metadata(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
        if let Some(problem) = problem(dir, &meta, trusted, depth == 0) {
            return Err(format!(
                "unsafe socket folder {}: {problem}; {HOW_TO_FIX}",
                folder.display()
            ));
        }
    }
    Ok(())
}

/// What `ygg-agent check` says about the socket at `socket`: `Ok` when the
/// agent could use it (a missing folder is judged by the nearest folder
/// that exists, which the agent would create it in).
pub fn check_for_config(socket: &Path) -> Result<(), String> {
    check_for_config_as(socket, euid())
}

/// [`check_for_config`] for an agent running as `trusted`.
pub fn check_for_config_as(socket: &Path, trusted: u32) -> Result<(), String> {
    let folder = socket.parent().unwrap_or(Path::new("/"));
    let existing = nearest_existing(folder);
    if existing == folder {
        check_folder_as(folder, trusted)
    } else {
        // Created by the agent, 0750: only the folders above matter; the
        // nearest is judged like one above the socket's own.
        let canonical = existing
            .canonicalize()
            .map_err(|e| format!("{}: {e}", existing.display()))?;
        for dir in canonical.ancestors() {
            let meta = std::fs::metadata(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
            if let Some(problem) = problem(dir, &meta, trusted, false) {
                return Err(format!(
                    "unsafe socket folder {}: {problem}; {HOW_TO_FIX}",
                    folder.display()
                ));
            }
        }
        Ok(())
    }
}

/// The socket's folder, or the nearest folder above it that exists.
fn nearest_existing(folder: &Path) -> &Path {
    let mut existing = folder;
    while !existing.exists() {
        match existing.parent() {
            Some(parent) => existing = parent,
            None => break,
        }
    }
    existing
}

/// The user other than root and this process's that owns the socket's
/// folder (or the nearest one above it that exists), and under whom
/// [`check_for_config_as`] passes: the agent's user, when `check` runs as
/// root beside a packaged agent (whose folder is its user's).
pub fn owner_who_could_use(socket: &Path) -> Option<u32> {
    let folder = nearest_existing(socket.parent().unwrap_or(Path::new("/")));
    let owner = std::fs::metadata(folder).ok()?.uid();
    (owner != 0 && owner != euid() && check_for_config_as(socket, owner).is_ok()).then_some(owner)
}

/// The name of user `uid` in `/etc/passwd`, if it is there.
pub fn user_name(uid: u32) -> Option<String> {
    let passwd = std::fs::read_to_string("/etc/passwd").ok()?;
    passwd.lines().find_map(|line| {
        let mut fields = line.split(':');
        let name = fields.next()?;
        let id: u32 = fields.nth(1)?.parse().ok()?;
        (id == uid).then(|| name.to_string())
    })
}

/// The command line's checks of `socket` before it connects; `Ok(the
/// users the agent may run as)`, for [`check_peer`].
pub fn check_client_socket(socket: &Path) -> Result<Vec<u32>, String> {
    let me = euid();
    let refuse = |why: String| {
        Err(format!(
            "refusing to talk to {}: {why} (is it the agent's? check the folder's owner and mode, or pass --socket)",
            socket.display()
        ))
    };
    let name = socket
        .file_name()
        .ok_or("the socket path has no file name")?;
    let folder = socket.parent().unwrap_or(Path::new("/"));
    let folder = folder
        .canonicalize()
        .map_err(|e| format!("cannot reach {}: {e}", socket.display()))?;
    let folder_meta =
        std::fs::metadata(&folder).map_err(|e| format!("{}: {e}", folder.display()))?;
    for dir in folder.ancestors().skip(1) {
        let meta = std::fs::metadata(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
        if let Some(problem) = problem(dir, &meta, me, false) {
            return refuse(problem);
        }
    }
    // Its own folder: root's or ours; or another user's (the agent's)
    // made where only root or we could have made it.
    let parent = folder.parent().unwrap_or(Path::new("/"));
    let parent_meta =
        std::fs::metadata(parent).map_err(|e| format!("{}: {e}", parent.display()))?;
    let owner = folder_meta.uid();
    let made_by_trusted = parent_meta.mode() & SHARED_WRITE == 0;
    let trusted = if owner == 0 || owner == me || made_by_trusted {
        owner
    } else {
        me
    };
    if let Some(problem) = problem(&folder, &folder_meta, trusted, true) {
        return refuse(problem);
    }
    let path = folder.join(name);
    let meta = match std::fs::symlink_metadata(&path) {
        Ok(meta) => meta,
        Err(e) => return Err(format!("cannot reach {}: {e}", socket.display())),
    };
    if !std::os::unix::fs::FileTypeExt::is_socket(&meta.file_type()) {
        return refuse(format!("{} is not a socket", path.display()));
    }
    let allowed = vec![0, me, owner];
    if !allowed.contains(&meta.uid()) {
        return refuse(format!(
            "the socket is owned by uid {}, not by root, uid {me} or the folder's owner (uid {owner})",
            meta.uid()
        ));
    }
    Ok(allowed)
}

/// Refuses a connected peer whose user is not one of `allowed`.
pub fn check_peer(stream: &tokio::net::UnixStream, allowed: &[u32]) -> Result<(), String> {
    let peer = stream
        .peer_cred()
        .map_err(|e| format!("cannot tell who serves the socket: {e}"))?;
    if allowed.contains(&peer.uid()) {
        Ok(())
    } else {
        Err(format!(
            "refusing to talk to the socket: it is served by uid {}, not by root, the folder's owner or you",
            peer.uid()
        ))
    }
}

/// The socket's folder, checked and opened once.
pub struct SocketDir {
    fd: OwnedFd,
    path: PathBuf,
}

fn c_name(name: &std::ffi::OsStr) -> std::io::Result<CString> {
    CString::new(name.as_bytes()).map_err(|_| std::io::Error::other("a NUL in the socket name"))
}

impl SocketDir {
    /// Creates `folder` if missing (`0750`, parents too), checks it (see
    /// the module) and opens it; the descriptor's folder is the checked one.
    pub fn open(folder: &Path) -> std::io::Result<SocketDir> {
        if !folder.exists() {
            std::fs::DirBuilder::new()
                .recursive(true)
                .mode(FOLDER_MODE)
                .create(folder)?;
        }
        check_agent_folder(folder).map_err(std::io::Error::other)?;
        let path = folder.canonicalize()?;
        let c_path = c_name(path.as_os_str())?;
        // SAFETY: open(2) with a NUL-terminated path; the result is checked.
        let fd = unsafe {
            libc::open(
                c_path.as_ptr(),
                libc::O_RDONLY | libc::O_DIRECTORY | libc::O_NOFOLLOW | libc::O_CLOEXEC,
            )
        };
        if fd < 0 {
            return Err(std::io::Error::last_os_error());
        }
        // SAFETY: a descriptor we just opened and own.
        let fd = unsafe { OwnedFd::from_raw_fd(fd) };
        let opened = std::fs::File::from(fd.try_clone()?).metadata()?;
        let checked = std::fs::metadata(&path)?;
        if (opened.dev(), opened.ino()) != (checked.dev(), checked.ino()) {
            return Err(std::io::Error::other(format!(
                "{} changed while it was being opened",
                path.display()
            )));
        }
        if let Some(problem) = problem(&path, &opened, euid(), true) {
            return Err(std::io::Error::other(format!(
                "unsafe socket folder: {problem}; {HOW_TO_FIX}"
            )));
        }
        Ok(SocketDir { fd, path })
    }

    /// `name` in the folder, as a path through the open descriptor (the
    /// folder opened, whatever its path names now).
    fn through_fd(&self, name: &std::ffi::OsStr) -> PathBuf {
        let proc = PathBuf::from(format!("/proc/self/fd/{}", self.fd.as_raw_fd()));
        if proc.is_dir() {
            proc.join(name)
        } else {
            // No /proc: the checked path (the folder is ours alone).
            self.path.join(name)
        }
    }

    fn stat_at(&self, name: &CString) -> std::io::Result<libc::stat> {
        // SAFETY: fstatat on our descriptor with a NUL-terminated name and
        // a zeroed stat buffer it fills.
        unsafe {
            let mut stat: libc::stat = std::mem::zeroed();
            if libc::fstatat(
                self.fd.as_raw_fd(),
                name.as_ptr(),
                &mut stat,
                libc::AT_SYMLINK_NOFOLLOW,
            ) != 0
            {
                return Err(std::io::Error::last_os_error());
            }
            Ok(stat)
        }
    }

    fn unlink_at(&self, name: &CString) -> std::io::Result<()> {
        // SAFETY: unlinkat on our descriptor with a NUL-terminated name.
        if unsafe { libc::unlinkat(self.fd.as_raw_fd(), name.as_ptr(), 0) } != 0 {
            return Err(std::io::Error::last_os_error());
        }
        Ok(())
    }

    /// Binds the socket `name` in the folder with `mode`: a stale socket
    /// there is removed (anything else is left and refused). Returns the
    /// listener and the socket's inode (for [`SocketDir::remove`]).
    pub fn bind(
        &self,
        name: &std::ffi::OsStr,
        mode: u32,
    ) -> std::io::Result<(tokio::net::UnixListener, u64)> {
        let c = c_name(name)?;
        match self.stat_at(&c) {
            Ok(stat) if stat.st_mode & libc::S_IFMT == libc::S_IFSOCK => self.unlink_at(&c)?,
            Ok(_) => {
                return Err(std::io::Error::new(
                    std::io::ErrorKind::AlreadyExists,
                    format!(
                        "{} exists and is not a socket",
                        self.path.join(name).display()
                    ),
                ));
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(e),
        }
        let listener = tokio::net::UnixListener::bind(self.through_fd(name))?;
        // SAFETY: fchmodat on our descriptor with a NUL-terminated name (the
        // socket just bound, in a folder no one else can write).
        if unsafe { libc::fchmodat(self.fd.as_raw_fd(), c.as_ptr(), mode, 0) } != 0 {
            return Err(std::io::Error::last_os_error());
        }
        let inode = self.stat_at(&c)?.st_ino;
        Ok((listener, inode))
    }

    /// Removes the socket `name` if it is still the one bound (`inode`).
    pub fn remove(&self, name: &std::ffi::OsStr, inode: u64) {
        let Ok(c) = c_name(name) else { return };
        if self.stat_at(&c).is_ok_and(|stat| stat.st_ino == inode) {
            let _ = self.unlink_at(&c);
        }
    }
}

#[cfg(test)]
#[path = "socket_dir/tests.rs"]
mod tests;
