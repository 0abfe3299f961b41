//! Upgrade in place (SIGUSR2): what one agent process hands the next, and
//! how. The old process starts the binary at the path it was itself
//! started from ([`Launch`], resolved once at start against the start-up
//! folder and `PATH`: after a package renamed a new file over it,
//! `/proc/self/exe` is the old, deleted one) with the same arguments and
//! environment. It hands over:
//!
//! - the listening sockets (the local API socket, its TCP address, the
//!   admin listener) as inherited descriptors, so no caller is refused
//!   while the two processes overlap: the new one accepts on the very
//!   sockets the old one listens on;
//! - a [`Handover`] description (JSON) through an inherited socket pair
//!   ([`UPGRADE_FD_ENV`] names its descriptor): the lease and what was
//!   written on it (keys, values, revisions), maintenance, drains, the
//!   local API's registrations (their JSON, where their TTLs stood), and
//!   which descriptor is which listener. While it is out, a local API call
//!   that would change that state is answered 503 (retry): the new process
//!   would not see it.
//!
//! The new process validates its config, adopts the lease (a record as
//! `registry::lease_record` keeps it: keys compared by revision, nothing
//! unchanged rewritten), keeps it alive, reconciles, tells systemd it is
//! the main process now (`MAINPID=`, `READY=1`; the unit needs
//! `NotifyAccess=all`), and then writes `ready` on the same socket pair.
//! Only then does the old process stop, without deleting a key or
//! revoking the lease. If the new binary cannot be started, exits, or
//! does not say ready within [`READY_TIMEOUT`], the old process kills it
//! (SIGKILL: a SIGTERM would make it deregister the shared keys) and
//! carries on as if nothing happened (`agent/upgrade.rs`).
//!
//! Every descriptor is close-on-exec in both processes except in the one
//! `exec` of the new binary, where exactly the handed ones are cleared
//! (`pre_exec`): nothing else leaks, and the new process sets them
//! close-on-exec again as soon as it takes them.

use std::collections::BTreeSet;
use std::ffi::OsString;
use std::io::{Read, Write};
use std::net::SocketAddr;
use std::os::fd::{FromRawFd, OwnedFd, RawFd};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::registry::lease_record::LeaseRecord;
use crate::state_dir::Maintenance;

/// The environment variable naming the descriptor of the new process's end
/// of the handover socket pair.
pub const UPGRADE_FD_ENV: &str = "YGG_AGENT_UPGRADE_FD";

/// How long the old process waits for the new one to say ready (config
/// read, lease adopted and kept alive, every key reconciled) before it
/// kills it and keeps running.
pub const READY_TIMEOUT: Duration = Duration::from_secs(30);

/// What the new process writes when it has taken over.
pub const READY_LINE: &[u8] = b"ready\n";

/// The largest description read (1,000 instances take about 1 MiB).
const MAX_DESCRIPTION: u64 = 256 << 20;
/// How long the new process waits for the whole description.
const READ_TIMEOUT: Duration = Duration::from_secs(10);
const VERSION: u32 = 1;

/// What the old process hands the new one.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Handover {
    pub version: u32,
    /// The old process, for log lines.
    pub from_pid: u32,
    /// The lease and what was written on it, as the lease record keeps it.
    pub lease: Option<LeaseRecord>,
    /// How long the lease had left when handed over, as the old process
    /// knew it (the new one asks etcd anyway).
    pub lease_expires_in_ms: Option<u64>,
    /// Maintenance in force (also without `agent.stateDir`).
    pub maintenance: Maintenance,
    /// Instances drained, by `local::identity`.
    pub drained: BTreeSet<String>,
    pub node_drained: bool,
    /// Registrations made through the local API (never on disk).
    pub api: Vec<HandedRegistration>,
    /// The local API's Unix socket.
    pub api_socket: Option<HandedSocket>,
    /// The local API's TCP listener.
    pub api_tcp: Option<HandedTcp>,
    /// The admin listener.
    pub admin: Option<HandedTcp>,
}

/// One local API registration: the JSON it was made with and where its
/// TTL stood.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HandedRegistration {
    pub id: String,
    pub body: String,
    /// Time left before its TTL runs out (none: no TTL, or run out).
    pub ttl_left_ms: Option<u64>,
    /// Its TTL ran out: held out until the next `pass`.
    pub expired: bool,
}

/// A Unix listening socket: its descriptor, path and inode (the new
/// process removes the file at its own stop only if it is still that one).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HandedSocket {
    pub fd: RawFd,
    pub path: PathBuf,
    pub inode: u64,
}

/// A TCP listening socket: its descriptor and the address it was asked
/// for (`agent.admin.listen`, `agent.api.listen`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HandedTcp {
    pub fd: RawFd,
    pub listen: SocketAddr,
}

impl Handover {
    pub fn new() -> Handover {
        Handover {
            version: VERSION,
            from_pid: std::process::id(),
            ..Handover::default()
        }
    }

    /// The descriptors to leave open across the `exec`.
    pub fn fds(&self) -> Vec<RawFd> {
        let mut fds = Vec::new();
        fds.extend(self.api_socket.as_ref().map(|s| s.fd));
        fds.extend(self.api_tcp.as_ref().map(|s| s.fd));
        fds.extend(self.admin.as_ref().map(|s| s.fd));
        fds
    }
}

/// How this process was started, so an upgrade starts the same way: the
/// program resolved to an absolute path once, at start, and the arguments.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Launch {
    pub program: PathBuf,
    pub args: Vec<OsString>,
}

impl Launch {
    /// `argv[0]` resolved against the folder and `PATH` of now (call it at
    /// start), and the arguments after it. `None` when it cannot be
    /// resolved (an upgrade then says so).
    pub fn at_start() -> Option<Launch> {
        let mut args = std::env::args_os();
        let argv0 = args.next()?;
        let cwd = std::env::current_dir().ok()?;
        let path = std::env::var_os("PATH");
        let program = resolve(Path::new(&argv0), &cwd, path.as_deref())?;
        Some(Launch {
            program,
            args: args.collect(),
        })
    }
}

/// Where `argv0` names a program: with a `/`, relative to `cwd`; without,
/// the first executable file of that name in `path` (as the shell found
/// it).
pub fn resolve(argv0: &Path, cwd: &Path, path: Option<&std::ffi::OsStr>) -> Option<PathBuf> {
    use std::os::unix::ffi::OsStrExt;
    use std::os::unix::fs::PermissionsExt;
    if argv0.as_os_str().is_empty() {
        return None;
    }
    if argv0.as_os_str().as_bytes().contains(&b'/') {
        return Some(cwd.join(argv0));
    }
    std::env::split_paths(path?)
        .map(|dir| cwd.join(dir).join(argv0))
        .find(|candidate| {
            std::fs::metadata(candidate)
                .is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
        })
}

/// The new process's side: the description and the descriptors it names,
/// taken over, and the channel to say ready on.
#[derive(Debug)]
pub struct Incoming {
    pub handover: Handover,
    pub listeners: Inherited,
    channel: UnixStream,
}

/// The listening sockets handed over, owned (close-on-exec again).
#[derive(Debug, Default)]
pub struct Inherited {
    pub api_socket: Option<(OwnedFd, HandedSocket)>,
    pub api_tcp: Option<(OwnedFd, HandedTcp)>,
    pub admin: Option<(OwnedFd, HandedTcp)>,
}

impl Inherited {
    /// The inherited Unix socket if it listens at `path`.
    pub fn take_api_socket(
        &mut self,
        path: &Path,
    ) -> Option<(std::os::unix::net::UnixListener, u64)> {
        let (fd, handed) = self.api_socket.take()?;
        let listener = std::os::unix::net::UnixListener::from(fd);
        // A Unix socket (bound through the folder's descriptor, so its
        // own address names `/proc/self/fd/…`, not the path).
        listener.local_addr().ok()?;
        if handed.path != path {
            tracing::info!(socket = %path.display(), handed = %handed.path.display(), "the handed local API socket is not the configured one; binding anew");
            return None;
        }
        listener.set_nonblocking(true).ok()?;
        Some((listener, handed.inode))
    }

    /// The inherited local API TCP listener if it was asked for `listen`.
    pub fn take_api_tcp(&mut self, listen: SocketAddr) -> Option<std::net::TcpListener> {
        take_tcp(self.api_tcp.take(), listen)
    }

    /// The inherited admin listener if it was asked for `listen`.
    pub fn take_admin(&mut self, listen: SocketAddr) -> Option<std::net::TcpListener> {
        take_tcp(self.admin.take(), listen)
    }
}

fn take_tcp(
    handed: Option<(OwnedFd, HandedTcp)>,
    listen: SocketAddr,
) -> Option<std::net::TcpListener> {
    let (fd, handed) = handed?;
    if handed.listen != listen {
        tracing::info!(%listen, handed = %handed.listen, "the handed listener is not for the configured address; binding anew");
        return None;
    }
    let listener = std::net::TcpListener::from(fd);
    listener.local_addr().ok()?;
    listener.set_nonblocking(true).ok()?;
    Some(listener)
}

impl Incoming {
    /// Tells the old process it may stop. Called once.
    pub fn ready(&mut self) -> std::io::Result<()> {
        self.channel.write_all(READY_LINE)?;
        self.channel.flush()
    }
}

/// The handover this process was started with, if it was started by an
/// upgrade ([`UPGRADE_FD_ENV`] set): reads the whole description (blocking;
/// call it before the runtime starts) and takes the descriptors it names.
/// `Err` says why it cannot be used; the process must then exit (binding
/// the sockets anew would take them from the old process).
pub fn take_incoming() -> Option<Result<Incoming, String>> {
    let value = std::env::var_os(UPGRADE_FD_ENV)?;
    Some(read_incoming(&value))
}

fn read_incoming(value: &std::ffi::OsStr) -> Result<Incoming, String> {
    let fd: RawFd = value
        .to_str()
        .and_then(|v| v.parse().ok())
        .filter(|fd| *fd > 2)
        .ok_or_else(|| format!("{UPGRADE_FD_ENV}={value:?} is not a descriptor number"))?;
    let channel = UnixStream::from(own(fd)?);
    channel
        .set_read_timeout(Some(READ_TIMEOUT))
        .map_err(|e| format!("handover channel: {e}"))?;
    let mut bytes = Vec::new();
    (&channel)
        .take(MAX_DESCRIPTION)
        .read_to_end(&mut bytes)
        .map_err(|e| format!("cannot read the handover description: {e}"))?;
    let handover: Handover = serde_json::from_slice(&bytes)
        .map_err(|e| format!("cannot parse the handover description: {e}"))?;
    if handover.version != VERSION {
        return Err(format!(
            "handover version {} is not {VERSION}",
            handover.version
        ));
    }
    let listeners = Inherited {
        api_socket: take(handover.api_socket.as_ref(), |s| s.fd)?,
        api_tcp: take(handover.api_tcp.as_ref(), |s| s.fd)?,
        admin: take(handover.admin.as_ref(), |s| s.fd)?,
    };
    Ok(Incoming {
        handover,
        listeners,
        channel,
    })
}

fn take<T: Clone>(
    handed: Option<&T>,
    fd: impl Fn(&T) -> RawFd,
) -> Result<Option<(OwnedFd, T)>, String> {
    handed.map(|h| Ok((own(fd(h))?, h.clone()))).transpose()
}

/// Takes descriptor `fd` (open, inherited) and makes it close-on-exec.
fn own(fd: RawFd) -> Result<OwnedFd, String> {
    // SAFETY: fcntl on a descriptor number only reads and sets its flags;
    // F_GETFD fails with EBADF for one that is not open.
    let flags = unsafe { libc::fcntl(fd, libc::F_GETFD) };
    if fd <= 2 || flags < 0 {
        return Err(format!("descriptor {fd} was not handed over (not open)"));
    }
    // SAFETY: as above, on an open descriptor.
    if unsafe { libc::fcntl(fd, libc::F_SETFD, flags | libc::FD_CLOEXEC) } < 0 {
        return Err(format!(
            "descriptor {fd}: {}",
            std::io::Error::last_os_error()
        ));
    }
    // SAFETY: the descriptor is open, was handed to this process alone,
    // and nothing else in it owns it (taken once, at start).
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn argv0_resolves_like_the_shell_did() {
        let dir = tempfile::tempdir().unwrap();
        let bin = dir.path().join("bin");
        std::fs::create_dir(&bin).unwrap();
        let program = bin.join("ygg-agent");
        std::fs::write(&program, "").unwrap();
        let cwd = Path::new("/srv");
        // A path with a slash: relative to the start-up folder.
        assert_eq!(
            resolve(Path::new("./ygg-agent"), cwd, None),
            Some(PathBuf::from("/srv/./ygg-agent"))
        );
        assert_eq!(
            resolve(Path::new("/usr/bin/x"), cwd, None),
            Some(PathBuf::from("/usr/bin/x"))
        );
        // A bare name: the first executable file on PATH.
        let path = std::env::join_paths([dir.path().join("none"), bin.clone()]).unwrap();
        assert_eq!(
            resolve(Path::new("ygg-agent"), cwd, Some(&path)),
            None,
            "not executable"
        );
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&program, std::fs::Permissions::from_mode(0o755)).unwrap();
        assert_eq!(
            resolve(Path::new("ygg-agent"), cwd, Some(&path)),
            Some(program)
        );
        assert_eq!(resolve(Path::new("ygg-agent"), cwd, None), None);
        assert_eq!(resolve(Path::new(""), cwd, None), None);
    }

    #[test]
    fn a_description_and_its_descriptors_are_taken_over() {
        let (mut old, new) = UnixStream::pair().unwrap();
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let local = listener.local_addr().unwrap();
        let fd: OwnedFd = listener.into();
        let raw = std::os::fd::IntoRawFd::into_raw_fd(fd);
        let mut handover = Handover::new();
        handover.node_drained = true;
        handover.admin = Some(HandedTcp {
            fd: raw,
            listen: local,
        });
        assert_eq!(handover.fds(), vec![raw]);
        old.write_all(&serde_json::to_vec(&handover).unwrap())
            .unwrap();
        old.shutdown(std::net::Shutdown::Write).unwrap();
        let new_fd = std::os::fd::IntoRawFd::into_raw_fd(OwnedFd::from(new));
        let mut incoming = read_incoming(std::ffi::OsStr::new(&new_fd.to_string())).unwrap();
        assert_eq!(incoming.handover, handover);
        // Another address: not used (and closed).
        let other: SocketAddr = "127.0.0.1:1".parse().unwrap();
        let mut again = Inherited::default();
        std::mem::swap(&mut again.admin, &mut incoming.listeners.admin);
        let kept = again.admin.as_ref().map(|(_, h)| h.clone());
        assert!(take_tcp(again.admin.take(), other).is_none());
        assert_eq!(kept.unwrap().listen, local);
        incoming.ready().unwrap();
        let mut line = [0u8; 6];
        old.read_exact(&mut line).unwrap();
        assert_eq!(&line, READY_LINE);
        // Garbage is refused with the reason.
        assert!(read_incoming(std::ffi::OsStr::new("x")).is_err());
        assert!(
            read_incoming(std::ffi::OsStr::new("987654"))
                .unwrap_err()
                .contains("not open")
        );
    }
}
