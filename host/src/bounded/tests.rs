use std::time::Duration;

use axum::routing::get;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

use super::*;

#[test]
fn the_budget_keeps_the_reserve_and_splits_the_rest() {
    // systemd's default soft limit: (1024 - 512) / 3 - 16 = 154, capped at 64.
    assert_eq!(open_files_budget(1024), MAX_CONNECTIONS);
    assert_eq!(open_files_budget(1 << 20), MAX_CONNECTIONS);
    assert_eq!(open_files_budget(512 + 3 * (10 + 16)), 10);
    // Even a tiny limit leaves each listener a few.
    assert_eq!(open_files_budget(256), MIN_CONNECTIONS);
    assert_eq!(open_files_budget(0), MIN_CONNECTIONS);
}

fn limits(max_connections: usize) -> Limits {
    Limits {
        max_connections,
        header_read_timeout: Duration::from_millis(300),
        max_header_bytes: MAX_HEADER_BYTES,
        max_age: Duration::from_secs(30),
    }
}

/// A server of `/` → `ok` under `limits`; its address and its stop token.
async fn server(limits: Limits) -> (String, CancellationToken, TaskTracker) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap().to_string();
    let router = Router::new().route("/", get(|| async { "ok" }));
    let stop = CancellationToken::new();
    let tracker = TaskTracker::new();
    tracker.spawn(serve(
        listener,
        router,
        limits,
        "test",
        stop.clone(),
        tracker.clone(),
    ));
    (address, stop, tracker)
}

/// `GET /` on a new connection: the answer's status line.
async fn get_root(address: &str) -> std::io::Result<String> {
    let mut stream = TcpStream::connect(address).await?;
    stream
        .write_all(b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        .await?;
    let mut answer = String::new();
    stream.read_to_string(&mut answer).await?;
    Ok(answer.lines().next().unwrap_or_default().to_string())
}

/// Sends `request` on `stream` and reads until the server closes it
/// (within 5 s): everything it answered.
async fn answer_to<S>(stream: &mut S, request: &[u8]) -> String
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    stream.write_all(request).await.unwrap();
    let mut answer = String::new();
    tokio::time::timeout(Duration::from_secs(5), stream.read_to_string(&mut answer))
        .await
        .expect("answered, then closed")
        .unwrap();
    answer
}

/// Whether the server has closed `stream` (reads to its end, or fails).
async fn closed_within(stream: &mut TcpStream, limit: Duration) -> bool {
    let mut buf = [0u8; 1024];
    let read = async {
        loop {
            match stream.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(_) => {}
            }
        }
    };
    tokio::time::timeout(limit, read).await.is_ok()
}

#[tokio::test]
async fn a_full_listener_closes_the_oldest_half_sent_request_for_a_new_client() {
    let (address, stop, _tracker) = server(limits(4)).await;
    let mut half_sent = Vec::new();
    for _ in 0..4 {
        let mut stream = TcpStream::connect(&address).await.unwrap();
        stream.write_all(b"GET / HT").await.unwrap();
        half_sent.push(stream);
    }
    // Served at once, though four connections fill the listener (the
    // half-sent ones had their time: a new client replaces one).
    tokio::time::sleep(EVICTABLE_AFTER).await;
    let began = Instant::now();
    let answer = tokio::time::timeout(Duration::from_secs(5), get_root(&address))
        .await
        .expect("answered")
        .unwrap();
    assert_eq!(answer, "HTTP/1.1 200 OK");
    assert!(
        began.elapsed() < Duration::from_secs(1),
        "{:?}",
        began.elapsed()
    );
    // The oldest half-sent one made room.
    assert!(closed_within(&mut half_sent[0], Duration::from_millis(250)).await);
    stop.cancel();
}

#[tokio::test]
async fn a_client_sending_a_byte_at_a_time_is_closed_at_the_header_deadline() {
    let (address, stop, _tracker) = server(limits(8)).await;
    let mut stream = TcpStream::connect(&address).await.unwrap();
    let began = Instant::now();
    let request =
        b"GET / HTTP/1.1\r\nHost: x\r\nX-Slow: aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa\r\n\r\n";
    let mut closed = false;
    for byte in request {
        if stream.write_all(&[*byte]).await.is_err() {
            closed = true;
            break;
        }
        if closed_within(&mut stream, Duration::from_millis(50)).await {
            closed = true;
            break;
        }
    }
    let took = began.elapsed();
    assert!(closed, "the slow client was served");
    // 300 ms deadline; a busy machine may add some.
    assert!(took >= Duration::from_millis(290), "{took:?}");
    assert!(took < Duration::from_secs(2), "{took:?}");
    stop.cancel();
}

#[tokio::test]
async fn a_request_head_over_the_cap_is_refused() {
    let (address, stop, _tracker) = server(limits(8)).await;
    let mut stream = TcpStream::connect(&address).await.unwrap();
    let big = format!(
        "GET / HTTP/1.1\r\nHost: x\r\nX-Big: {}\r\n\r\n",
        "a".repeat(MAX_HEADER_BYTES + 1024)
    );
    let _ = stream.write_all(big.as_bytes()).await;
    let mut answer = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(5), stream.read_to_end(&mut answer)).await;
    let answer = String::from_utf8_lossy(&answer);
    assert!(
        answer.is_empty() || answer.starts_with("HTTP/1.1 431"),
        "{answer}"
    );
    assert_eq!(get_root(&address).await.unwrap(), "HTTP/1.1 200 OK");
    stop.cancel();
}

#[tokio::test]
async fn stopping_closes_the_listener_at_once() {
    let (address, stop, tracker) = server(limits(8)).await;
    let mut idle = TcpStream::connect(&address).await.unwrap();
    idle.write_all(b"GET / HT").await.unwrap();
    stop.cancel();
    tracker.close();
    tokio::time::timeout(STOP_GRACE + Duration::from_secs(3), tracker.wait())
        .await
        .expect("every task ends");
    assert!(TcpStream::connect(&address).await.is_err());
}

#[tokio::test]
async fn a_connection_accepted_before_the_stop_has_its_request_answered() {
    let (address, stop, tracker) = server(limits(8)).await;
    let mut stream = TcpStream::connect(&address).await.unwrap();
    // Accepted: its task runs beside the accept loop's.
    let accepted = Instant::now();
    while tracker.len() < 2 {
        assert!(
            accepted.elapsed() < Duration::from_secs(10),
            "never accepted"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    // The stop is seen (the accept loop has ended) before the request is
    // sent: the connection has not started one.
    stop.cancel();
    while tracker.len() > 1 {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let answer = answer_to(&mut stream, b"GET / HTTP/1.1\r\nHost: x\r\n\r\n").await;
    assert!(answer.starts_with("HTTP/1.1 200 OK"), "{answer:?}");
    assert!(answer.ends_with("ok"), "{answer:?}");
    tracker.close();
    tokio::time::timeout(STOP_GRACE + Duration::from_secs(3), tracker.wait())
        .await
        .expect("every task ends");
}

/// An open connection of `peer`, opened `age` before `now`, idle or busy.
fn open_one(peer: Peer, now: Instant, age: Duration, busy: bool) -> Open {
    Open {
        opened: now - age,
        peer,
        busy: Arc::new(AtomicUsize::new(usize::from(busy))),
        close: CancellationToken::new(),
        ended: CancellationToken::new(),
    }
}

#[test]
fn another_user_gets_a_quarter_and_never_the_reserved_slots() {
    let cap = 64;
    assert_eq!((user_share(cap), reserved_slots(cap)), (16, 16));
    assert_eq!((user_share(4), reserved_slots(4)), (1, 1));
    let now = Instant::now();
    let young = Duration::from_millis(10);
    // One user holding its share: its next connection is closed at once.
    let mut open: Vec<Open> = (0..16)
        .map(|_| open_one(Peer::User(1000), now, young, false))
        .collect();
    assert!(over_share(&open, Peer::User(1000), cap));
    assert!(!over_share(&open, Peer::User(1001), cap));
    assert!(!over_share(&open, Peer::Trusted, cap));
    assert!(!over_share(&open, Peer::Unknown, cap));
    // Three users (and unknown peers) fill all but the reserved quarter.
    for uid in [1001, 1002] {
        open.extend((0..16).map(|_| open_one(Peer::User(uid), now, young, false)));
    }
    assert_eq!(
        admit(&open, Peer::User(1003), false, cap, true, now),
        Admit::Probation
    );
    assert_eq!(
        admit(&open, Peer::Unknown, false, cap, false, now),
        Admit::Close("full")
    );
    // A request already there replaces the oldest idle one of theirs.
    assert_eq!(
        admit(&open, Peer::User(1003), true, cap, true, now),
        Admit::Serve(Some(0))
    );
    // Root and the agent's user take the reserve.
    assert_eq!(
        admit(&open, Peer::Trusted, false, cap, false, now),
        Admit::Serve(None)
    );
}

#[test]
fn a_full_listener_makes_room_for_root_at_once() {
    let cap = 8;
    let now = Instant::now();
    let young = Duration::from_millis(10);
    let mut open: Vec<Open> = (0..6)
        .map(|_| open_one(Peer::Trusted, now, young, true))
        .collect();
    open.push(open_one(Peer::User(1000), now, young, true));
    open.push(open_one(Peer::User(1001), now, young, false));
    // Another user's idle connection goes, however young.
    assert_eq!(
        admit(&open, Peer::Trusted, false, cap, true, now),
        Admit::Serve(Some(7))
    );
    // All busy: root's new one waits on probation like anyone's.
    open[7].busy.store(1, Ordering::Release);
    assert_eq!(
        admit(&open, Peer::Trusted, false, cap, true, now),
        Admit::Probation
    );
    assert_eq!(
        admit(&open, Peer::Trusted, true, cap, true, now),
        Admit::Close("full")
    );
}

/// Another user's connections over its share of a Unix socket are closed
/// at once and counted (when running as root: the other user is `nobody`,
/// on a thread of its own); root still gets in while it holds the rest.
#[tokio::test]
async fn a_unix_socket_closes_a_users_connections_over_its_share() {
    use std::os::unix::fs::PermissionsExt;
    // SAFETY: geteuid cannot fail.
    if unsafe { libc::geteuid() } != 0 {
        eprintln!("SKIPPED: not root, cannot connect as another user");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let path = dir.path().join("s.sock");
    let listener = tokio::net::UnixListener::bind(&path).unwrap();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o666)).unwrap();
    let router = Router::new().route("/", get(|| async { "ok" }));
    let stop = CancellationToken::new();
    let tracker = TaskTracker::new();
    tracker.spawn(serve(
        listener,
        router,
        limits(8),
        "local API (socket)",
        stop.clone(),
        tracker.clone(),
    ));
    let counted = || {
        closed_connections()
            .get_or_create(&ClosedLabel {
                listener: "api_socket",
                reason: "user_share",
            })
            .get()
    };
    let before = counted();
    // `nobody` opens five: two (its share of eight) stay open.
    let nobody = {
        let path = path.clone();
        std::thread::spawn(move || {
            // SAFETY: this thread's own credentials (raw calls, not libc's
            // process-wide wrappers).
            unsafe {
                assert_eq!(libc::syscall(libc::SYS_setresgid, 65534, 65534, 65534), 0);
                assert_eq!(libc::syscall(libc::SYS_setresuid, 65534, 65534, 65534), 0);
            }
            (0..5)
                .map(|_| std::os::unix::net::UnixStream::connect(&path).unwrap())
                .collect::<Vec<_>>()
        })
        .join()
        .unwrap()
    };
    let deadline = Instant::now() + Duration::from_secs(10);
    while counted() < before + 3 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(counted(), before + 3);
    let mut open = 0;
    for mut stream in nobody {
        stream.set_nonblocking(true).unwrap();
        let mut buf = [0u8; 1];
        if matches!(std::io::Read::read(&mut stream, &mut buf), Err(e) if e.kind() == std::io::ErrorKind::WouldBlock)
        {
            open += 1;
        }
    }
    assert_eq!(open, 2);
    // Root fills the rest with idle connections and is still served.
    let mut held = Vec::new();
    for _ in 0..6 {
        held.push(tokio::net::UnixStream::connect(&path).await.unwrap());
    }
    let mut stream = tokio::net::UnixStream::connect(&path).await.unwrap();
    let answer = answer_to(
        &mut stream,
        b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert!(answer.starts_with("HTTP/1.1 200 OK"), "{answer}");
    stop.cancel();
}
