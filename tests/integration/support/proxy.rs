//! A fault proxy for tests: a TCP proxy on 127.0.0.1 in front of one etcd
//! member, between the agent and that member, that the test drives through
//! its handle. It passes traffic, adds latency (fixed and jittered, order
//! kept), black-holes one direction or both (connections are accepted and
//! kept open, nothing is forwarded: what a partition looks like; the bytes
//! wait in the proxy and the kernel, as TCP would retransmit them, and flow
//! when the hole closes; but the bytes of a sender that reset its
//! connection meanwhile, as an exiting agent does (`SO_LINGER` 0), are
//! dropped with it: the kernel discards them on the reset, as the sender's
//! kernel would stop retransmitting them), and resets connections (every open one at once,
//! or every one, new ones included, while in that mode). Peer traffic
//! between members never goes through it.
//!
//! It runs on a thread and runtime of its own, so test code that blocks
//! (waiting for a process to exit) cannot stall the traffic it forwards.

use std::net::SocketAddr;
use std::os::fd::AsRawFd;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, oneshot, watch};
use tokio::time::{Instant, sleep_until};

/// One direction of a proxied connection.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Direction {
    /// From the agent to etcd: requests.
    ToServer,
    /// From etcd to the agent: answers.
    ToClient,
}

/// What the proxy does to one direction of traffic.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PathFaults {
    /// Forward nothing (keep the bytes) while set.
    pub black_hole: bool,
    /// Added to every chunk of bytes, one way.
    pub latency: Duration,
    /// Plus a uniform random extra in [0, jitter); order is kept.
    pub jitter: Duration,
}

#[derive(Clone, Debug, Default, PartialEq, Eq)]
struct Faults {
    to_server: PathFaults,
    to_client: PathFaults,
    /// Reset every connection, open or new, while set.
    reset: bool,
    /// Bumped by `reset_all`: connections older than it are reset.
    epoch: u64,
}

impl Faults {
    fn path(&self, direction: Direction) -> PathFaults {
        match direction {
            Direction::ToServer => self.to_server,
            Direction::ToClient => self.to_client,
        }
    }
}

/// A running proxy; it stops (and its connections close) when dropped.
pub struct FaultProxy {
    address: SocketAddr,
    control: watch::Sender<Faults>,
    accepted: Arc<AtomicU64>,
    resets: Arc<AtomicU64>,
    stop: Option<oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl FaultProxy {
    /// A proxy on a free loopback port forwarding to `upstream`
    /// (`127.0.0.1:PORT`), passing everything.
    pub fn start(upstream: &str) -> FaultProxy {
        let upstream: SocketAddr = upstream.parse().expect("upstream is 127.0.0.1:PORT");
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("proxy port");
        listener.set_nonblocking(true).unwrap();
        let address = listener.local_addr().unwrap();
        let (control, _) = watch::channel(Faults::default());
        let accepted = Arc::new(AtomicU64::new(0));
        let resets = Arc::new(AtomicU64::new(0));
        let (stop_tx, stop_rx) = oneshot::channel();
        let (rx, counts) = (control.subscribe(), (accepted.clone(), resets.clone()));
        let thread = std::thread::Builder::new()
            .name("fault-proxy".into())
            .spawn(move || {
                let runtime = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .expect("proxy runtime");
                runtime.block_on(async move {
                    let listener = TcpListener::from_std(listener).unwrap();
                    tokio::select! {
                        _ = stop_rx => {}
                        () = serve(listener, upstream, rx, counts.0, counts.1) => {}
                    }
                });
            })
            .expect("proxy thread");
        FaultProxy {
            address,
            control,
            accepted,
            resets,
            stop: Some(stop_tx),
            thread: Some(thread),
        }
    }

    /// Where clients connect: `127.0.0.1:PORT`.
    pub fn endpoint(&self) -> String {
        self.address.to_string()
    }

    /// Back to passing everything at once (what is held flows now).
    pub fn pass(&self) {
        self.control.send_modify(|f| {
            f.to_server = PathFaults::default();
            f.to_client = PathFaults::default();
            f.reset = false;
        });
    }

    /// `one_way` (plus up to `jitter`) on every chunk, each direction: a
    /// round trip costs twice that.
    pub fn latency(&self, one_way: Duration, jitter: Duration) {
        self.control.send_modify(|f| {
            for path in [&mut f.to_server, &mut f.to_client] {
                path.latency = one_way;
                path.jitter = jitter;
            }
        });
    }

    /// Forward nothing either way; connections stay open, new ones are
    /// accepted.
    pub fn black_hole(&self) {
        self.control.send_modify(|f| {
            f.to_server.black_hole = true;
            f.to_client.black_hole = true;
        });
    }

    /// Forward nothing in `direction` only.
    pub fn black_hole_one_way(&self, direction: Direction) {
        self.control.send_modify(|f| match direction {
            Direction::ToServer => f.to_server.black_hole = true,
            Direction::ToClient => f.to_client.black_hole = true,
        });
    }

    /// Resets every open connection now, and every new one until `pass`.
    pub fn reset_mode(&self) {
        self.control.send_modify(|f| f.reset = true);
    }

    /// Resets every open connection now; new ones pass.
    pub fn reset_all(&self) {
        self.control.send_modify(|f| f.epoch += 1);
    }

    /// Connections accepted so far.
    pub fn accepted(&self) -> u64 {
        self.accepted.load(Ordering::Relaxed)
    }

    /// Connections reset by the proxy so far.
    pub fn resets(&self) -> u64 {
        self.resets.load(Ordering::Relaxed)
    }
}

impl Drop for FaultProxy {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

async fn serve(
    listener: TcpListener,
    upstream: SocketAddr,
    control: watch::Receiver<Faults>,
    accepted: Arc<AtomicU64>,
    resets: Arc<AtomicU64>,
) {
    loop {
        let Ok((client, _)) = listener.accept().await else {
            continue;
        };
        accepted.fetch_add(1, Ordering::Relaxed);
        if control.borrow().reset {
            resets.fetch_add(1, Ordering::Relaxed);
            abort(&client);
            continue;
        }
        tokio::spawn(connection(
            client,
            upstream,
            control.clone(),
            resets.clone(),
        ));
    }
}

/// Closes with a reset (RST) instead of a FIN when `stream` drops.
fn abort(stream: &TcpStream) {
    let _ = stream.set_zero_linger();
}

async fn connection(
    client: TcpStream,
    upstream: SocketAddr,
    mut control: watch::Receiver<Faults>,
    resets: Arc<AtomicU64>,
) {
    let epoch = control.borrow_and_update().epoch;
    // etcd down: the client sees its connection reset, as if refused.
    let Ok(Ok(server)) =
        tokio::time::timeout(Duration::from_secs(5), TcpStream::connect(upstream)).await
    else {
        abort(&client);
        return;
    };
    let _ = client.set_nodelay(true);
    let _ = server.set_nodelay(true);
    let forward = futures_util::future::try_join(
        pump(&client, &server, Direction::ToServer, control.clone()),
        pump(&server, &client, Direction::ToClient, control.clone()),
    );
    let reset = async {
        loop {
            if control.changed().await.is_err() {
                std::future::pending::<()>().await;
            }
            let faults = control.borrow_and_update();
            if faults.reset || faults.epoch != epoch {
                return;
            }
        }
    };
    tokio::select! {
        result = forward => {
            // A side that reset its end has the other side reset too.
            if result.is_err() {
                abort(&client);
                abort(&server);
            }
        }
        () = reset => {
            resets.fetch_add(1, Ordering::Relaxed);
            abort(&client);
            abort(&server);
        }
    }
}

/// Forwards `from` → `to` under the faults of `direction` until `from`
/// ends (then half-closes `to`) or either fails.
async fn pump(
    from: &TcpStream,
    to: &TcpStream,
    direction: Direction,
    control: watch::Receiver<Faults>,
) -> std::io::Result<()> {
    let (tx, mut rx) = mpsc::unbounded_channel::<(Instant, Vec<u8>)>();
    let mut reader_control = control.clone();
    let reader = async move {
        let mut last = Instant::now();
        let mut buf = vec![0u8; 64 * 1024];
        loop {
            open(&mut reader_control, direction).await;
            let n = read_some(from, &mut buf).await?;
            if n == 0 {
                return Ok::<(), std::io::Error>(());
            }
            let path = reader_control.borrow().path(direction);
            let extra = if path.jitter.is_zero() {
                Duration::ZERO
            } else {
                path.jitter.mul_f64(rand::random::<f64>())
            };
            let at = (Instant::now() + path.latency + extra).max(last);
            last = at;
            let _ = tx.send((at, buf[..n].to_vec()));
        }
    };
    let mut writer_control = control;
    let writer = async move {
        while let Some((at, data)) = rx.recv().await {
            sleep_until(at).await;
            open(&mut writer_control, direction).await;
            write_all(to, &data).await?;
        }
        // SAFETY: shutdown(2) on a socket this function borrows.
        unsafe { libc::shutdown(to.as_raw_fd(), libc::SHUT_WR) };
        Ok(())
    };
    futures_util::future::try_join(reader, writer)
        .await
        .map(|_| ())
}

/// Waits while `direction` is black-holed.
async fn open(control: &mut watch::Receiver<Faults>, direction: Direction) {
    let _ = control.wait_for(|f| !f.path(direction).black_hole).await;
}

async fn read_some(stream: &TcpStream, buf: &mut [u8]) -> std::io::Result<usize> {
    loop {
        stream.readable().await?;
        match stream.try_read(buf) {
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => continue,
            other => return other,
        }
    }
}

async fn write_all(stream: &TcpStream, mut data: &[u8]) -> std::io::Result<()> {
    while !data.is_empty() {
        stream.writable().await?;
        match stream.try_write(data) {
            Ok(n) => data = &data[n..],
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => continue,
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    /// An echo server on loopback; returns its address and a count of the
    /// bytes it received.
    async fn echo_server() -> (String, Arc<AtomicU64>) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = listener.local_addr().unwrap().to_string();
        let received = Arc::new(AtomicU64::new(0));
        let count = received.clone();
        tokio::spawn(async move {
            while let Ok((mut socket, _)) = listener.accept().await {
                let count = count.clone();
                tokio::spawn(async move {
                    let mut buf = [0u8; 1024];
                    while let Ok(n) = socket.read(&mut buf).await {
                        if n == 0 {
                            break;
                        }
                        count.fetch_add(n as u64, Ordering::Relaxed);
                        if socket.write_all(&buf[..n]).await.is_err() {
                            break;
                        }
                    }
                });
            }
        });
        (address, received)
    }

    async fn round_trip(stream: &mut TcpStream, limit: Duration) -> Option<Duration> {
        let start = std::time::Instant::now();
        stream.write_all(b"ping").await.ok()?;
        let mut buf = [0u8; 4];
        tokio::time::timeout(limit, stream.read_exact(&mut buf))
            .await
            .ok()?
            .ok()?;
        assert_eq!(&buf, b"ping");
        Some(start.elapsed())
    }

    /// Two clients send into a black hole; one resets its connection (a
    /// process exiting with `SO_LINGER` 0), the other half-closes it (FIN).
    /// When the hole closes, the half-closed one's bytes flow and its end
    /// follows; the reset one's bytes are dropped and etcd's side is reset.
    #[tokio::test]
    async fn bytes_of_a_sender_that_reset_in_the_hole_are_dropped() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let upstream = listener.local_addr().unwrap().to_string();
        // Each upstream connection reports what it received once it ends.
        let (done_tx, mut done) = mpsc::unbounded_channel::<Vec<u8>>();
        tokio::spawn(async move {
            while let Ok((mut socket, _)) = listener.accept().await {
                let done_tx = done_tx.clone();
                tokio::spawn(async move {
                    let mut got = Vec::new();
                    let mut buf = [0u8; 64];
                    while let Ok(n) = socket.read(&mut buf).await {
                        if n == 0 {
                            break;
                        }
                        got.extend_from_slice(&buf[..n]);
                    }
                    let _ = done_tx.send(got);
                });
            }
        });
        let proxy = FaultProxy::start(&upstream);
        proxy.black_hole();
        let mut aborted = TcpStream::connect(proxy.endpoint()).await.unwrap();
        aborted.write_all(b"renew").await.unwrap();
        let mut closed = TcpStream::connect(proxy.endpoint()).await.unwrap();
        closed.write_all(b"delete").await.unwrap();
        closed.shutdown().await.unwrap();
        let start = std::time::Instant::now();
        while proxy.accepted() < 2 {
            assert!(start.elapsed() < Duration::from_secs(5), "not accepted");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        aborted.set_zero_linger().unwrap();
        drop(aborted);
        proxy.pass();
        let mut seen = Vec::new();
        for _ in 0..2 {
            let got = tokio::time::timeout(Duration::from_secs(5), done.recv())
                .await
                .expect("both upstream connections end")
                .unwrap();
            seen.push(String::from_utf8(got).unwrap());
        }
        seen.sort();
        assert_eq!(seen, ["", "delete"]);
    }

    /// Pass, latency, a black hole in both directions and in one (bytes
    /// held, then delivered in order), and resets of open and new
    /// connections.
    #[tokio::test]
    async fn the_proxy_passes_delays_holds_and_resets_as_told() {
        let (upstream, received) = echo_server().await;
        let proxy = FaultProxy::start(&upstream);
        let mut stream = TcpStream::connect(proxy.endpoint()).await.unwrap();
        let quick = round_trip(&mut stream, Duration::from_secs(5))
            .await
            .unwrap();
        assert!(quick < Duration::from_millis(200), "{quick:?}");

        proxy.latency(Duration::from_millis(150), Duration::from_millis(50));
        let slow = round_trip(&mut stream, Duration::from_secs(5))
            .await
            .unwrap();
        assert!(slow >= Duration::from_millis(300), "{slow:?}");
        proxy.pass();

        proxy.black_hole();
        let before = received.load(Ordering::Relaxed);
        assert_eq!(
            round_trip(&mut stream, Duration::from_millis(300)).await,
            None
        );
        assert_eq!(received.load(Ordering::Relaxed), before, "a request passed");
        // A new connection is accepted and hangs as well.
        let mut fresh = TcpStream::connect(proxy.endpoint()).await.unwrap();
        assert_eq!(
            round_trip(&mut fresh, Duration::from_millis(300)).await,
            None
        );
        proxy.pass();
        // What was held arrives, in order.
        let mut buf = [0u8; 4];
        stream.read_exact(&mut buf).await.unwrap();
        assert_eq!(&buf, b"ping");
        fresh.read_exact(&mut buf).await.unwrap();
        assert_eq!(&buf, b"ping");

        // Answers lost, requests delivered.
        proxy.black_hole_one_way(Direction::ToClient);
        let before = received.load(Ordering::Relaxed);
        assert_eq!(
            round_trip(&mut stream, Duration::from_millis(300)).await,
            None
        );
        assert_eq!(received.load(Ordering::Relaxed), before + 4);
        proxy.pass();
        stream.read_exact(&mut buf).await.unwrap();

        proxy.reset_all();
        let error = stream.read(&mut buf).await;
        assert!(
            matches!(&error, Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset),
            "{error:?}"
        );
        let mut after = TcpStream::connect(proxy.endpoint()).await.unwrap();
        assert!(
            round_trip(&mut after, Duration::from_secs(5))
                .await
                .is_some()
        );

        proxy.reset_mode();
        assert!(after.read(&mut buf).await.is_err());
        // A new connection is reset, maybe before connect returns.
        if let Ok(mut refused) = TcpStream::connect(proxy.endpoint()).await {
            assert_eq!(round_trip(&mut refused, Duration::from_secs(1)).await, None);
        }
        assert!(proxy.resets() >= 3);
        proxy.pass();
        let mut healed = TcpStream::connect(proxy.endpoint()).await.unwrap();
        assert!(
            round_trip(&mut healed, Duration::from_secs(5))
                .await
                .is_some()
        );
        assert!(proxy.accepted() >= 5);
    }
}
