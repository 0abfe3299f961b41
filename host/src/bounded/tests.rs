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
