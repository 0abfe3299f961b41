//! systemd integration for `Type=notify` units: `READY=1` once every
//! instance is registered, a `STATUS=` line that follows the registry,
//! `STOPPING=1` at shutdown, and watchdog pings when `WatchdogSec=` is set.
//! Without `NOTIFY_SOCKET` (not under systemd) every call is a no-op.
//! Also where the unit's `RuntimeDirectory=`, `StateDirectory=` and
//! `CacheDirectory=` folders are ([`directory`]).

use std::path::PathBuf;
use std::time::Duration;

use sd_notify::NotifyState;
use tracing::debug;

use crate::registry::RegistryStatus;

pub struct Notifier {
    ready_sent: bool,
    /// Started by an upgrade: readiness also says this process is the
    /// service's main process now (`MAINPID=`; the unit needs
    /// `NotifyAccess=all`, the sender not being the main process yet).
    taking_over: bool,
    last_status: String,
    /// Half the watchdog timeout, when systemd asked for pings.
    pub watchdog_every: Option<Duration>,
}

impl Notifier {
    /// Reads `WATCHDOG_USEC`; `NOTIFY_SOCKET` is read at each notification.
    pub fn from_env() -> Self {
        let watchdog_every = watchdog_timeout().map(|timeout| timeout / 2);
        Notifier {
            ready_sent: false,
            taking_over: false,
            last_status: String::new(),
            watchdog_every,
        }
    }

    /// Sends `states` as one datagram, without waiting: a notification
    /// socket whose queue is full (a service manager that does not read)
    /// drops it rather than stalling the supervisor's loop.
    fn send(states: &[NotifyState]) {
        let Some(path) = std::env::var_os("NOTIFY_SOCKET") else {
            return;
        };
        let message: String = states.iter().map(|s| format!("{s}\n")).collect();
        let sent = std::os::unix::net::UnixDatagram::unbound().and_then(|socket| {
            socket.set_nonblocking(true)?;
            socket.connect(&path)?;
            socket.send(message.as_bytes())
        });
        if let Err(error) = sent {
            debug!(%error, "cannot notify systemd");
        }
    }

    /// This process was started by an upgrade: its readiness makes it the
    /// main process.
    pub fn take_over(&mut self) {
        self.taking_over = true;
    }

    /// Follows the registry: readiness the first time every instance is
    /// registered, and a status line whenever the picture changes.
    pub fn registry(&mut self, status: &RegistryStatus) {
        let text = status.summary();
        if status.ready && !self.ready_sent {
            self.ready_sent = true;
            if self.taking_over {
                Self::send(&[
                    NotifyState::MainPid(std::process::id()),
                    NotifyState::Ready,
                    NotifyState::Status(&text),
                ]);
            } else {
                Self::send(&[NotifyState::Ready, NotifyState::Status(&text)]);
            }
        } else if text != self.last_status {
            Self::send(&[NotifyState::Status(&text)]);
        }
        self.last_status = text;
    }

    pub fn stopping(&self) {
        Self::send(&[NotifyState::Stopping, NotifyState::Status("deregistering")]);
    }

    pub fn watchdog(&self) {
        Self::send(&[NotifyState::Watchdog]);
    }
}

/// `WATCHDOG_USEC`, as libsystemd's `sd_watchdog_enabled` reads it: when
/// `WATCHDOG_PID` is set it must be this process.
fn watchdog_timeout() -> Option<Duration> {
    let usec: u64 = std::env::var("WATCHDOG_USEC").ok()?.parse().ok()?;
    if let Ok(pid) = std::env::var("WATCHDOG_PID")
        && pid.parse::<u32>().ok() != Some(std::process::id())
    {
        return None;
    }
    (usec > 0).then(|| Duration::from_micros(usec))
}

/// The folder systemd names in `variable` (`RUNTIME_DIRECTORY`,
/// `STATE_DIRECTORY`, `CACHE_DIRECTORY`): the first of its `:`-separated
/// list, or `None` when unset or empty (not under systemd, or no such
/// directive in the unit).
pub fn directory(variable: &str) -> Option<PathBuf> {
    let dirs = std::env::var_os(variable).filter(|v| !v.is_empty())?;
    let first = dirs
        .to_string_lossy()
        .split(':')
        .next()
        .unwrap_or_default()
        .to_string();
    Some(PathBuf::from(first))
}
