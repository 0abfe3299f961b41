//! Attackers on the node for the flood tests and the flood benchmark:
//! another local user (`ygg-hostile`, created on first use when running
//! as root) holding half-sent requests to the agent's listeners from
//! threads that take that user's credentials, and the agent's
//! `RLIMIT_NOFILE` 1,024.

use std::time::Duration;

use super::*;

/// Sets this process's soft open-files limit to at least `wanted` (within
/// the hard limit); the limit in force afterwards.
pub fn raise_own_open_files(wanted: u64) -> u64 {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit/setrlimit on a local struct.
    unsafe {
        libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit);
        if limit.rlim_cur < wanted {
            limit.rlim_cur = wanted.min(limit.rlim_max);
            libc::setrlimit(libc::RLIMIT_NOFILE, &limit);
        }
        libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit);
    }
    limit.rlim_cur
}

/// Runs the agent with `RLIMIT_NOFILE` 1,024 (soft and hard), systemd's
/// default for a service.
pub fn open_files_1024(command: &mut std::process::Command) {
    use std::os::unix::process::CommandExt;
    // SAFETY: only setrlimit (async-signal-safe) between fork and exec.
    unsafe {
        command.pre_exec(|| {
            let limit = libc::rlimit {
                rlim_cur: 1024,
                rlim_max: 1024,
            };
            if libc::setrlimit(libc::RLIMIT_NOFILE, &limit) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
}

/// Where an attacker connects.
#[derive(Clone)]
pub enum Target {
    Tcp(String),
    Unix(std::path::PathBuf),
}

/// One attacker connection.
pub enum Stream {
    Tcp(std::net::TcpStream),
    Unix(std::os::unix::net::UnixStream),
}

impl Stream {
    /// Connects and sends a request line and a header, never the end.
    fn half_sent(target: &Target) -> std::io::Result<Stream> {
        use std::io::Write;
        let head = b"GET /v1/instances HTTP/1.1\r\nHost: x\r\nX-Never: ";
        let stream = match target {
            Target::Tcp(address) => {
                let mut s = std::net::TcpStream::connect(address)?;
                let _ = s.write_all(head);
                s.set_nonblocking(true)?;
                Stream::Tcp(s)
            }
            Target::Unix(path) => {
                let mut s = std::os::unix::net::UnixStream::connect(path)?;
                let _ = s.write_all(head);
                s.set_nonblocking(true)?;
                Stream::Unix(s)
            }
        };
        Ok(stream)
    }

    /// Whether the agent has closed it.
    fn closed(&mut self) -> bool {
        use std::io::Read;
        let mut buf = [0u8; 64];
        let read = match self {
            Stream::Tcp(s) => s.read(&mut buf),
            Stream::Unix(s) => s.read(&mut buf),
        };
        !matches!(read, Err(e) if e.kind() == std::io::ErrorKind::WouldBlock)
    }
}

/// Makes the calling thread (only it: raw system calls, not libc's
/// process-wide wrappers) the user `uid` with the group `gid` alone, so
/// the sockets it opens are that user's (`SO_PEERCRED` at connect, the
/// owner `/proc/net/tcp` and sock_diag show).
pub fn become_user(uid: u32, gid: u32) {
    let groups = [gid];
    // SAFETY: the raw credential calls of this thread, with a valid array.
    unsafe {
        assert_eq!(libc::syscall(libc::SYS_setgroups, 1, groups.as_ptr()), 0);
        assert_eq!(libc::syscall(libc::SYS_setresgid, gid, gid, gid), 0);
        assert_eq!(libc::syscall(libc::SYS_setresuid, uid, uid, uid), 0);
    }
}

/// A local user (`user`: another one's uid and gid; `None`: this
/// process's) holding `held` half-sent requests to `target` until `stop`:
/// every 100 ms the ones the agent closed are opened again (in a tight
/// loop with `churn`: a new one all the time, the oldest dropped). Counts
/// the connections it opened in `opened`.
pub fn attacker(
    user: Option<(u32, u32)>,
    target: Target,
    held: usize,
    churn: bool,
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    opened: std::sync::Arc<std::sync::atomic::AtomicUsize>,
) -> std::thread::JoinHandle<()> {
    use std::sync::atomic::Ordering;
    std::thread::spawn(move || {
        if let Some((uid, gid)) = user {
            become_user(uid, gid);
        }
        let mut streams: std::collections::VecDeque<Stream> = Default::default();
        while !stop.load(Ordering::Relaxed) {
            if !churn {
                streams.retain_mut(|s| !s.closed());
            }
            while streams.len() < held && !stop.load(Ordering::Relaxed) {
                match Stream::half_sent(&target) {
                    Ok(stream) => {
                        streams.push_back(stream);
                        opened.fetch_add(1, Ordering::Relaxed);
                    }
                    Err(_) => std::thread::sleep(Duration::from_millis(1)),
                }
            }
            if churn {
                streams.pop_front();
            } else {
                std::thread::sleep(Duration::from_millis(100));
            }
        }
    })
}

/// The second user's primary group.
pub fn other_group() -> u32 {
    let out = std::process::Command::new("id")
        .args(["-g", "ygg-hostile"])
        .output()
        .expect("id -g ygg-hostile");
    String::from_utf8_lossy(&out.stdout)
        .trim()
        .parse()
        .expect("a gid")
}

/// The second, unprivileged local user (`ygg-hostile`, created on first
/// use): its uid, or `None` (the reason printed) when not running as root.
pub fn other_user(test: &str) -> Option<u32> {
    static USER: std::sync::OnceLock<Result<u32, String>> = std::sync::OnceLock::new();
    let user = USER.get_or_init(|| {
        // SAFETY: geteuid cannot fail.
        if unsafe { libc::geteuid() } != 0 {
            return Err("not running as root: cannot act as a second local user".into());
        }
        let uid = || {
            let out = std::process::Command::new("id")
                .args(["-u", "ygg-hostile"])
                .output()
                .ok()?;
            String::from_utf8_lossy(&out.stdout).trim().parse().ok()
        };
        if let Some(uid) = uid() {
            return Ok(uid);
        }
        let status = std::process::Command::new("useradd")
            .args([
                "--system",
                "--no-create-home",
                "--shell",
                "/usr/sbin/nologin",
                "ygg-hostile",
            ])
            .status()
            .map_err(|e| format!("useradd: {e}"))?;
        if !status.success() {
            return Err(format!("useradd ygg-hostile: {status}"));
        }
        uid().ok_or_else(|| "useradd made no ygg-hostile".to_string())
    });
    match user {
        Ok(uid) => Some(*uid),
        Err(why) => {
            eprintln!("SKIPPED the second-user part of {test}: {why}");
            None
        }
    }
}

/// A folder like `/tmp`: root's, everyone may make entries, sticky.
pub fn shared_tmp() -> tempfile::TempDir {
    use std::os::unix::fs::PermissionsExt;
    let base = tempfile::Builder::new()
        .prefix("ygg-tmp-")
        .tempdir()
        .unwrap();
    std::fs::set_permissions(base.path(), std::fs::Permissions::from_mode(0o1777)).unwrap();
    base
}

/// An agent for the flood: a TCP-checked instance `steady` (its service
/// kept up here), the admin listener, the API socket and the API's TCP
/// listener, `RLIMIT_NOFILE` 1,024. With `hostile` (the second user's uid
/// and gid) the agent's group is the second user's and the socket sits in
/// a `/tmp`-like folder, so that user can reach it as a member of the group
/// the socket is shared with (0750, 0660) would.
pub struct FloodedAgent {
    pub agent: Agent,
    pub socket: std::path::PathBuf,
    pub admin: String,
    pub api_tcp: String,
    _base: tempfile::TempDir,
    _service: tokio::task::JoinHandle<()>,
}

impl FloodedAgent {
    pub async fn start(etcd: &Etcd, hostile: Option<(u32, u32)>) -> FloodedAgent {
        let port = free_port();
        let service = accept_and_drop(port).await;
        let (admin, api_tcp) = (
            format!("127.0.0.1:{}", free_port()),
            format!("127.0.0.1:{}", free_port()),
        );
        let mut config = ConfigFile::new(etcd.endpoints());
        config.instances = format!(
            "    - name: steady\n      version: \"1\"\n      endpoints: [{{scheme: tcp, address: \"127.0.0.1:{port}\"}}]\n      checks:\n        - tcp: ~\n"
        );
        let mut agent = Agent::prepare(&config);
        let dir = agent.dir.path().to_path_buf();
        let base = shared_tmp();
        let socket = base.path().join("ygg").join("agent.sock");
        let token = dir.join("token");
        std::fs::write(&token, "s3cret\n").unwrap();
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&token, std::fs::Permissions::from_mode(0o600)).unwrap();
        config.agent_extra = format!(
            "  checks: {{interval: 500ms, timeout: 400ms, failuresBeforeCritical: 2}}\n  admin:\n    listen: {admin}\n  stateDir: {}\n  api:\n    socket: {}\n    listen: {api_tcp}\n    tokenFile: {}\n",
            dir.join("state").display(),
            socket.display(),
            token.display()
        );
        agent.rewrite_config(&config);
        agent.spawn_configured(&[], |command| {
            open_files_1024(command);
            if let Some((_, gid)) = hostile {
                use std::os::unix::process::CommandExt;
                command.gid(gid);
            }
        });
        agent.wait_for_log("local API listening", PATIENCE).await;
        FloodedAgent {
            agent,
            socket,
            admin,
            api_tcp,
            _base: base,
            _service: service,
        }
    }

    /// The three listeners, as attackers reach them.
    pub fn targets(&self) -> [Target; 3] {
        [
            Target::Tcp(self.admin.clone()),
            Target::Tcp(self.api_tcp.clone()),
            Target::Unix(self.socket.clone()),
        ]
    }
}

/// Attackers running: one thread per target.
pub struct Flood {
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    counters: Vec<std::sync::Arc<std::sync::atomic::AtomicUsize>>,
    threads: Vec<std::thread::JoinHandle<()>>,
}

impl Flood {
    /// `held` half-sent requests held against each of `targets` by `user`
    /// (see [`attacker`]); returns once each target got that many.
    pub async fn start(
        user: Option<(u32, u32)>,
        targets: &[Target],
        held: usize,
        churn: bool,
    ) -> Flood {
        use std::sync::atomic::Ordering;
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let counters: Vec<std::sync::Arc<std::sync::atomic::AtomicUsize>> =
            targets.iter().map(|_| Default::default()).collect();
        let threads = (targets.iter().zip(&counters))
            .map(|(target, opened)| {
                attacker(
                    user,
                    target.clone(),
                    held,
                    churn,
                    stop.clone(),
                    opened.clone(),
                )
            })
            .collect();
        let flood = Flood {
            stop,
            counters,
            threads,
        };
        wait_for(
            PATIENCE,
            "the half-sent requests to each listener",
            || async {
                flood
                    .counters
                    .iter()
                    .all(|c| c.load(Ordering::Relaxed) >= held)
                    .then_some(())
            },
        )
        .await;
        flood
    }

    /// Stops the attackers; the connections each opened.
    pub fn stop(self) -> Vec<usize> {
        use std::sync::atomic::Ordering;
        self.stop.store(true, Ordering::Relaxed);
        for thread in self.threads {
            thread.join().unwrap();
        }
        self.counters
            .iter()
            .map(|c| c.load(Ordering::Relaxed))
            .collect()
    }
}

/// `calls` runs of the operator's `ygg-agent instances` on `socket`, 100 ms
/// apart; panics unless each succeeds and lists `instance`. Their times,
/// sorted.
pub async fn operator_calls(
    socket: &std::path::Path,
    instance: &str,
    calls: usize,
) -> Vec<Duration> {
    let mut took = Vec::with_capacity(calls);
    for _ in 0..calls {
        let socket = socket.to_str().unwrap().to_string();
        let began = std::time::Instant::now();
        let (code, stdout, stderr) =
            tokio::task::spawn_blocking(move || run_cli(&["instances", "--socket", &socket]))
                .await
                .unwrap();
        took.push(began.elapsed());
        assert_eq!(
            code, 0,
            "the operator's command line failed: {stdout}{stderr}"
        );
        assert!(stdout.contains(instance), "{stdout}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    took.sort();
    took
}

/// One call on the API socket by this process, timed in its parts: a
/// blocking connect (as the command line's: it waits in the kernel for
/// room in the agent's backlog), the request sent, the first byte of the
/// answer, the whole answer (`Connection: close`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct Timed {
    /// connect() to the answer's end: the agent's answer time.
    pub total: Duration,
    /// connect() alone: waiting for room in the backlog.
    pub connect: Duration,
    /// From the request sent to the answer's first byte: waiting behind
    /// queued connections for the accept, and the agent's work.
    pub first_byte: Duration,
}

/// `GET path` on `socket` (blocking), timed; the answer's text.
pub fn timed_socket_call(socket: &std::path::Path, path: &str) -> std::io::Result<(Timed, String)> {
    use std::io::{Read, Write};
    let began = std::time::Instant::now();
    let mut stream = std::os::unix::net::UnixStream::connect(socket)?;
    let connect = began.elapsed();
    stream.set_read_timeout(Some(Duration::from_secs(10)))?;
    stream.write_all(
        format!("GET {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n").as_bytes(),
    )?;
    let sent = std::time::Instant::now();
    let mut answer = Vec::new();
    let mut buf = [0u8; 16 * 1024];
    let mut first_byte = None;
    loop {
        let n = stream.read(&mut buf)?;
        if n == 0 {
            break;
        }
        first_byte.get_or_insert_with(|| sent.elapsed());
        answer.extend_from_slice(&buf[..n]);
    }
    let total = began.elapsed();
    Ok((
        Timed {
            total,
            connect,
            first_byte: first_byte.unwrap_or_default(),
        },
        String::from_utf8_lossy(&answer).into_owned(),
    ))
}

/// `calls` timed `GET /v1/instances` of this process on `socket` (see
/// [`timed_socket_call`]), 100 ms apart, each on a thread of its own as
/// the command line's connect is; panics unless each answers 200 and lists
/// `instance`. Sorted by total.
pub async fn socket_calls(socket: &std::path::Path, instance: &str, calls: usize) -> Vec<Timed> {
    let mut took = Vec::with_capacity(calls);
    for _ in 0..calls {
        let socket = socket.to_path_buf();
        let (timed, answer) =
            tokio::task::spawn_blocking(move || timed_socket_call(&socket, "/v1/instances"))
                .await
                .unwrap()
                .expect("a call on the API socket");
        assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
        assert!(answer.contains(instance), "{answer}");
        took.push(timed);
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    took.sort();
    took
}

/// Median / p99 / max of the totals of `took` (sorted), and the connect
/// and first-byte parts of the slowest, in ms.
pub fn timed_figures(took: &[Timed]) -> String {
    let ms = |d: Duration| d.as_secs_f64() * 1000.0;
    let at = |p: usize| took[((took.len() * p).div_ceil(100)).clamp(1, took.len()) - 1].total;
    let slowest = took[took.len() - 1];
    format!(
        "{:.1} / {:.1} / {:.1} ms (slowest: connect {:.1} ms, first byte {:.1} ms)",
        ms(at(50)),
        ms(at(99)),
        ms(slowest.total),
        ms(slowest.connect),
        ms(slowest.first_byte)
    )
}
