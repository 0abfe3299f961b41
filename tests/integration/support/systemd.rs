//! A datagram socket standing in for systemd's notify socket: what an
//! agent started with `NOTIFY_SOCKET` (and a watchdog) tells systemd.

use std::os::unix::net::UnixDatagram;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use super::PATIENCE;

pub struct FakeSystemd {
    pub path: PathBuf,
    socket: UnixDatagram,
    /// Every message received so far, in order (`clear` empties it).
    pub heard: Vec<String>,
}

impl FakeSystemd {
    /// Bound at `dir/notify.sock`.
    pub fn bind(dir: &Path) -> FakeSystemd {
        let path = dir.join("notify.sock");
        let socket = UnixDatagram::bind(&path).unwrap();
        socket.set_nonblocking(true).unwrap();
        FakeSystemd {
            path,
            socket,
            heard: Vec::new(),
        }
    }

    /// The environment systemd gives a `Type=notify` service with a
    /// watchdog of 400 ms (so a ping every 200 ms).
    pub fn env(&self) -> [(&'static str, &str); 2] {
        [
            ("NOTIFY_SOCKET", self.path.to_str().unwrap()),
            ("WATCHDOG_USEC", "400000"),
        ]
    }

    /// Takes every message waiting; returns how many came.
    fn receive(&mut self) -> usize {
        let mut buf = [0u8; 4096];
        let before = self.heard.len();
        while let Ok(n) = self.socket.recv(&mut buf) {
            self.heard
                .push(String::from_utf8_lossy(&buf[..n]).into_owned());
        }
        self.heard.len() - before
    }

    /// Listens for `window`, keeping what comes.
    pub fn listen_for(&mut self, window: Duration) {
        let until = Instant::now() + window;
        while Instant::now() < until {
            self.receive();
            std::thread::sleep(Duration::from_millis(10));
        }
        self.receive();
    }

    /// Listens until what was heard satisfies `until` (panics after
    /// `PATIENCE`, saying what was heard).
    pub fn listen_until(&mut self, until: impl Fn(&[String]) -> bool) {
        let start = Instant::now();
        loop {
            self.receive();
            if until(&self.heard) {
                return;
            }
            assert!(
                start.elapsed() < PATIENCE,
                "systemd heard only {:?}",
                self.heard
            );
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// Watchdog pings received since the last call to anything here.
    pub fn pings(&mut self) -> usize {
        let new = self.receive();
        self.heard[self.heard.len() - new..]
            .iter()
            .map(|m| m.matches("WATCHDOG=1").count())
            .sum()
    }

    /// Whether any message so far contains `needle`.
    pub fn heard_any(&self, needle: &str) -> bool {
        self.heard.iter().any(|m| m.contains(needle))
    }
}
