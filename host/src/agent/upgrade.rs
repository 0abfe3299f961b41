//! Upgrade in place, the old process's side (SIGUSR2; the protocol is in
//! `crate::handover`). [`Upgrader::start`] starts the binary at the path
//! this process was started from, with the handed listeners left open
//! across the `exec`, and a task on the tracker gives it the description
//! and waits (at most [`READY_TIMEOUT`]) for its `ready`. The outcome
//! comes back to the supervisor as one [`UpgradeOutcome`] (its inbox holds
//! the receiver). Meanwhile this process runs as before; one upgrade at a
//! time.
//!
//! The new process is started through an intermediate process that exits
//! at once, so it is the service manager's child, not ours (systemd then
//! supervises it as the main process it announces); its pid comes back
//! on a pipe. A new process that fails is killed with SIGKILL, never
//! SIGTERM: it may already hold the shared lease, and a SIGTERM would make
//! it delete every key and revoke it.

use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::process::CommandExt;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use tokio::time::Instant;
use tracing::{error, info, warn};

use super::instances::Instances;
use super::listener::AdminListener;
use crate::handover::{Handover, Incoming, Launch, READY_LINE, READY_TIMEOUT, UPGRADE_FD_ENV};
use crate::registry::{RegistryHandle, RegistryStatus};

/// How long a new process that closed the channel has to exit before it
/// is killed (so its exit status can be reported).
const EXIT_WAIT: Duration = Duration::from_secs(1);
const EXIT_POLL: Duration = Duration::from_millis(10);

/// How an upgrade ended.
#[derive(Debug)]
pub(super) enum UpgradeOutcome {
    /// The new process (`pid`) holds everything now: this one stops
    /// without deregistering.
    Ready { pid: u32 },
    /// It did not take over (the reason, for the log); it is gone.
    Failed(String),
}

/// Upgrades: how this process was started, and the one under way.
pub(super) struct Upgrader {
    launch: Option<Launch>,
    /// The new process while it is being waited for.
    under_way: Option<u32>,
    tracker: TaskTracker,
    /// The shutdown tree's `inputs` token: a stop during an upgrade kills
    /// the new process.
    stop: CancellationToken,
    /// The wait task's end; the supervisor's inbox holds the receiver.
    outcomes: mpsc::Sender<UpgradeOutcome>,
    /// How long the new process has to say ready ([`READY_TIMEOUT`]).
    ready_timeout: Duration,
    /// This process was started by an upgrade: the channel to say ready
    /// on, until said.
    incoming: Option<Incoming>,
    /// The new process that took over (the loop ended for it).
    handed_to: Option<u32>,
}

impl Upgrader {
    pub fn new(
        launch: Option<Launch>,
        tracker: TaskTracker,
        stop: CancellationToken,
        outcomes: mpsc::Sender<UpgradeOutcome>,
    ) -> Upgrader {
        Upgrader {
            launch,
            under_way: None,
            tracker,
            stop,
            outcomes,
            ready_timeout: READY_TIMEOUT,
            incoming: None,
            handed_to: None,
        }
    }

    /// This process was started by an upgrade (`incoming`: the rest of
    /// what the previous one handed over, its channel to say ready on).
    pub fn taking_over(mut self, incoming: Option<Incoming>) -> Upgrader {
        self.incoming = incoming;
        self
    }

    /// The new process that took over, once it has.
    pub fn handed_to(&self) -> Option<u32> {
        self.handed_to
    }

    /// Started by an upgrade, and every instance is registered under the
    /// adopted lease: tells the previous process it may stop (once).
    pub fn say_ready(&mut self) {
        if let Some(incoming) = self.incoming.take() {
            say_ready(incoming);
        }
    }

    /// An upgrade is under way (its new process's pid).
    pub fn under_way(&self) -> Option<u32> {
        self.under_way
    }

    /// SIGUSR2: unless one is under way, starts the new binary and hands
    /// it what `handover` describes; logs how that went.
    pub fn begin(&mut self, handover: impl FnOnce() -> Handover) {
        if self.incoming.is_some() {
            warn!("SIGUSR2 ignored: this process is still taking over from the previous one");
            return;
        }
        if let Some(pid) = self.under_way {
            warn!(pid, "SIGUSR2 ignored: an upgrade is already under way");
            return;
        }
        let handover = handover();
        let lease = handover.lease.as_ref().map(|r| r.lease);
        let keys = handover.lease.as_ref().map_or(0, |r| r.keys.len());
        match self.start(handover) {
            Ok(pid) => info!(
                pid,
                lease,
                keys,
                "SIGUSR2: upgrade started; this agent keeps running until the new process says ready"
            ),
            Err(why) => error!(
                "upgrade failed: {why}; this agent keeps running and keeps every registration"
            ),
        }
    }

    /// Starts the new binary and hands it `handover`. `Err`: it could not
    /// be started (the reason); nothing changed.
    pub fn start(&mut self, handover: Handover) -> Result<u32, String> {
        let launch = self.launch.as_ref().ok_or(
            "cannot tell which binary this agent was started from (argv[0] did not resolve at start)",
        )?;
        let program = launch.program.display().to_string();
        let description = serde_json::to_vec(&handover)
            .map_err(|e| format!("cannot write the handover description: {e}"))?;
        let (ours, theirs) = std::os::unix::net::UnixStream::pair()
            .map_err(|e| format!("cannot make the handover channel: {e}"))?;
        let mut kept = handover.fds();
        kept.push(theirs.as_raw_fd());
        // The new process's pid, written by the intermediate process.
        let (pid_read, pid_write) =
            pipe().map_err(|e| format!("cannot make the handover channel: {e}"))?;
        let pid_write_fd = pid_write.as_raw_fd();
        let mut command = std::process::Command::new(&launch.program);
        command
            .args(&launch.args)
            .env(UPGRADE_FD_ENV, theirs.as_raw_fd().to_string())
            // Its own pid is not ours: it reads WATCHDOG_USEC alone.
            .env_remove("WATCHDOG_PID");
        // SAFETY: between fork and exec the closure calls only
        // async-signal-safe functions (signal, fcntl, fork, write, _exit) on
        // descriptors this process holds open until `spawn` returns (the
        // listeners' duplicates, the channel, the pid pipe); no allocation.
        unsafe {
            command.pre_exec(move || {
                // `systemctl kill -s USR2` signals every process of the
                // unit, and may find the new one already started: ignored
                // (a disposition `exec` keeps) until its own handler is
                // installed, which then ignores it until it took over.
                libc::signal(libc::SIGUSR2, libc::SIG_IGN);
                for fd in &kept {
                    if libc::fcntl(*fd, libc::F_SETFD, 0) < 0 {
                        return Err(std::io::Error::last_os_error());
                    }
                }
                // Forked once more, and this intermediate exits at once:
                // the new process is then the child of the service
                // manager (PID 1, or the nearest subreaper), not ours, so
                // systemd supervises it fully once it says MAINPID= (a
                // main process that is not systemd's child is one it
                // "will most likely not notice" exiting, and on a stop it
                // does not wait for it before SIGKILL).
                match libc::fork() {
                    -1 => Err(std::io::Error::last_os_error()),
                    0 => Ok(()),
                    pid => {
                        let bytes = pid.to_ne_bytes();
                        libc::write(pid_write_fd, bytes.as_ptr().cast(), bytes.len());
                        libc::_exit(0);
                    }
                }
            });
        }
        // Returns once the new binary's exec succeeded (or with its error:
        // missing, not executable).
        let spawned = command.spawn();
        drop(pid_write);
        let mut intermediate =
            spawned.map_err(|e| format!("cannot start the new binary {program}: {e}"))?;
        let _ = intermediate.wait();
        drop(theirs);
        let mut bytes = [0u8; 4];
        std::io::Read::read_exact(&mut std::fs::File::from(pid_read), &mut bytes)
            .map_err(|e| format!("cannot learn the new process's pid: {e}"))?;
        let pid = i32::from_ne_bytes(bytes) as u32;
        ours.set_nonblocking(true)
            .map_err(|e| format!("handover channel: {e}"))?;
        let channel =
            tokio::net::UnixStream::from_std(ours).map_err(|e| format!("handover channel: {e}"))?;
        self.under_way = Some(pid);
        let (stop, outcomes) = (self.stop.clone(), self.outcomes.clone());
        let limit = self.ready_timeout;
        self.tracker.spawn(async move {
            let outcome = follow(pid, channel, description, program, limit, stop).await;
            let _ = outcomes.send(outcome).await;
        });
        Ok(pid)
    }

    /// The upgrade under way ended: `Some(pid)` when the new process
    /// took over (this one stops without deregistering).
    pub fn ended(&mut self, outcome: UpgradeOutcome) -> Option<u32> {
        self.under_way = None;
        match outcome {
            UpgradeOutcome::Ready { pid } => {
                info!(
                    pid,
                    "upgrade: the new process is ready and holds every registration; this one stops without deregistering"
                );
                self.handed_to = Some(pid);
                Some(pid)
            }
            UpgradeOutcome::Failed(why) => {
                error!(
                    "upgrade failed: {why}; this agent keeps running and keeps every registration"
                );
                None
            }
        }
    }

    /// The agent stops: a new process still being waited for is killed at
    /// once, before anything is deregistered.
    pub fn abandon(&mut self) {
        if let Some(pid) = self.under_way.take() {
            kill(pid);
        }
    }
}

/// What an upgrade hands the new process: the lease and what was
/// written under it, maintenance and drains, the local API's
/// registrations and every listening socket.
pub(super) fn handover(
    registry: &RegistryHandle,
    registry_status: &RegistryStatus,
    instances: &Instances,
    admin: &AdminListener,
) -> Handover {
    let mut handover = Handover::new();
    handover.lease = registry.record();
    let now = Instant::now();
    handover.lease_expires_in_ms = (registry_status.lease_expires_at)
        .map(|at| at.saturating_duration_since(now).as_millis() as u64);
    let local = instances.local();
    handover.maintenance = local.maintenance.clone();
    handover.drained = local.drained.clone();
    handover.node_drained = local.node_drained;
    handover.api = instances.registrations_handed();
    (handover.api_socket, handover.api_tcp) = instances.api_handed();
    handover.admin = admin.handed();
    handover
}

/// The new process's side, once everything is registered under the
/// adopted lease: tells the previous process it may stop.
fn say_ready(mut incoming: Incoming) {
    let from = incoming.handover.from_pid;
    match incoming.ready() {
        Ok(()) => info!(
            from,
            "upgrade: ready; the previous process stops without deregistering"
        ),
        Err(error) => warn!(
            from,
            %error,
            "upgrade: cannot tell the previous process this one is ready (it may have given up and killed this one)"
        ),
    }
}

/// A pipe, both ends close-on-exec.
fn pipe() -> std::io::Result<(OwnedFd, OwnedFd)> {
    let mut fds = [0; 2];
    // SAFETY: pipe2 fills the two descriptors it opens; checked.
    if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: both were just opened and are owned by nothing else.
    Ok(unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) })
}

/// Whether `pid` still runs (a zombie does not).
fn alive(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|stat| {
        !stat
            .rsplit(')')
            .next()
            .is_some_and(|rest| rest.trim_start().starts_with('Z'))
    })
}

/// SIGKILL to the new process if it still runs. It is not our child (see
/// `start`), so it is checked first: a pid is not reused while its
/// process runs or waits to be reaped.
fn kill(pid: u32) {
    if alive(pid) {
        // SAFETY: kill(2) with a pid and a signal number; no memory.
        unsafe {
            libc::kill(pid as libc::pid_t, libc::SIGKILL);
        }
    }
}

/// Gives the new process its description and waits for its `ready`; on
/// anything else it is killed if still alive (its service manager reaps
/// it; its own log lines say why it failed).
async fn follow(
    pid: u32,
    mut channel: tokio::net::UnixStream,
    description: Vec<u8>,
    program: String,
    limit: Duration,
    stop: CancellationToken,
) -> UpgradeOutcome {
    let said = tokio::select! {
        said = tokio::time::timeout(limit, converse(&mut channel, &description)) => said,
        () = stop.cancelled() => Ok(Err(std::io::Error::other("this agent is stopping"))),
    };
    let why = match said {
        Ok(Ok(true)) => return UpgradeOutcome::Ready { pid },
        Ok(Ok(false)) => "closed the handover channel without saying ready".to_string(),
        Ok(Err(error)) => format!("handover channel: {error}"),
        Err(_) => format!("did not say ready within {limit:?}"),
    };
    drop(channel);
    // Closed early: it is probably exiting; give it a moment.
    let deadline = tokio::time::Instant::now() + EXIT_WAIT;
    while alive(pid) && tokio::time::Instant::now() < deadline {
        tokio::time::sleep(EXIT_POLL).await;
    }
    let how = if alive(pid) {
        kill(pid);
        "killed it"
    } else {
        "it exited (its own lines above say why)"
    };
    UpgradeOutcome::Failed(format!("the new binary {program} (pid {pid}) {why}; {how}"))
}

/// Writes the description, then reads: true once the new process wrote
/// [`READY_LINE`], false if it closed the channel without it.
async fn converse(
    channel: &mut tokio::net::UnixStream,
    description: &[u8],
) -> std::io::Result<bool> {
    channel.write_all(description).await?;
    channel.shutdown().await?;
    let mut said = Vec::with_capacity(READY_LINE.len());
    let mut buffer = [0u8; 16];
    while said.len() < READY_LINE.len() {
        let n = channel.read(&mut buffer).await?;
        if n == 0 {
            return Ok(false);
        }
        said.extend_from_slice(&buffer[..n]);
    }
    Ok(said.starts_with(READY_LINE))
}

/// Why a state-changing local API call is refused while an upgrade is
/// under way (the new process took the state it starts from already).
pub(super) const BUSY: &str =
    "the agent is handing over to a new binary (upgrade in place); retry in a moment";

#[cfg(test)]
mod tests {
    use super::*;

    /// An upgrader whose "new binary" is `bash -c script` (the handover
    /// channel's descriptor in `$YGG_AGENT_UPGRADE_FD`).
    fn with_script(script: &str, limit: Duration) -> (Upgrader, mpsc::Receiver<UpgradeOutcome>) {
        let (tx, rx) = mpsc::channel(1);
        let launch = Launch {
            program: "/bin/bash".into(),
            args: vec!["-c".into(), script.into()],
        };
        let mut upgrader = Upgrader::new(
            Some(launch),
            TaskTracker::new(),
            CancellationToken::new(),
            tx,
        );
        upgrader.ready_timeout = limit;
        (upgrader, rx)
    }

    #[tokio::test]
    async fn a_process_that_reads_the_description_and_says_ready_takes_over() {
        // Reads the whole description, then says ready on the same
        // channel, if it started with SIGUSR2 ignored (`systemctl kill -s
        // USR2` may reach it before it has a handler).
        let script = r#"fd=$YGG_AGENT_UPGRADE_FD; cat <&$fd >/dev/null
            ignored=$((16#$(sed -n 's/^SigIgn:\s*//p' /proc/$$/status)))
            (( ignored & (1 << (12 - 1)) )) || exit 7
            echo ready >&$fd; sleep 5"#;
        let (mut upgrader, mut outcomes) = with_script(script, Duration::from_secs(20));
        let pid = upgrader.start(Handover::new()).unwrap();
        assert_eq!(upgrader.under_way(), Some(pid));
        // A grandchild: not ours (its parent exited), so systemd's own.
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
        let ppid: u32 = stat
            .rsplit(')')
            .next()
            .unwrap()
            .split_whitespace()
            .nth(1)
            .unwrap()
            .parse()
            .unwrap();
        assert_ne!(ppid, std::process::id());
        match outcomes.recv().await.unwrap() {
            UpgradeOutcome::Ready { pid: ready } => assert_eq!(ready, pid),
            other => panic!("{other:?}"),
        }
        kill(pid);
    }

    #[tokio::test]
    async fn a_process_that_exits_or_hangs_is_reported_and_gone() {
        let (mut upgrader, mut outcomes) = with_script("exit 4", Duration::from_secs(20));
        let pid = upgrader.start(Handover::new()).unwrap();
        match outcomes.recv().await.unwrap() {
            UpgradeOutcome::Failed(why) => assert!(why.contains("it exited"), "{why}"),
            other => panic!("{other:?}"),
        }
        assert!(!alive(pid));

        // Never says ready: killed at the bound.
        let (mut upgrader, mut outcomes) = with_script("exec sleep 30", Duration::from_millis(300));
        let pid = upgrader.start(Handover::new()).unwrap();
        match outcomes.recv().await.unwrap() {
            UpgradeOutcome::Failed(why) => {
                assert!(why.contains("did not say ready within 300ms"), "{why}");
                assert!(why.contains("killed it"), "{why}");
            }
            other => panic!("{other:?}"),
        }
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while alive(pid) {
            assert!(std::time::Instant::now() < deadline, "still running");
            std::thread::sleep(Duration::from_millis(10));
        }

        // Missing: refused at once, nothing under way.
        let (mut upgrader, _outcomes) = with_script("true", Duration::from_secs(1));
        upgrader.launch.as_mut().unwrap().program = "/nonexistent/ygg-agent".into();
        let why = upgrader.start(Handover::new()).unwrap_err();
        assert!(why.contains("No such file"), "{why}");
        assert_eq!(upgrader.under_way(), None);
    }
}
