//! Test plugin: a hostile check. Each call tries, in order, what a check
//! plugin must not be able to do, and reports each attempt:
//!
//! - `etcd`: TCP connect to the setting `etcd` (`host:port`),
//! - `other`: TCP connect to the setting `other`,
//! - `lookup`: resolve the setting `name` (default `localhost`),
//! - `listen`: listen on `127.0.0.1:<setting listen>` (default 0),
//! - `udp`: bind a UDP socket and send to the setting `udp`,
//! - `target`: TCP connect to its own target (the one thing allowed).
//!
//! Then, with the setting `then`: `hold` keeps a connection to its target
//! open and sleeps for an hour (the call's timeout must end it and close
//! the connection); `spin` loops forever (the CPU budget must end it).
//!
//! Output: `etcd=refused other=refused lookup=refused listen=refused
//! udp=refused target=connected`; each word is `refused` or `ALLOWED`
//! (`connected` or `unreachable` for the target). Passing when everything
//! but the target was refused, critical otherwise. The errors themselves
//! go to the log.

use std::net::{TcpListener, TcpStream, ToSocketAddrs, UdpSocket};

use ygg_agent_sdk::check::{Check, Outcome, Target};
use ygg_agent_sdk::{Instance, Level, Settings};

struct CheckEscape;

fn attempt(what: &str, result: std::io::Result<()>) -> (String, bool) {
    match result {
        Ok(()) => (format!("{what}=ALLOWED"), true),
        Err(error) => {
            ygg_agent_sdk::check::log(Level::Info, &format!("{what} refused: {error}"));
            (format!("{what}=refused"), false)
        }
    }
}

impl Check for CheckEscape {
    fn check(
        _instance: &Instance,
        targets: &[Target],
        settings: &Settings,
    ) -> Result<Outcome, String> {
        let connect = |setting: &str| -> std::io::Result<()> {
            let address = settings.get(setting).unwrap_or("127.0.0.1:9");
            TcpStream::connect(address).map(drop)
        };
        let attempts = [
            attempt("etcd", connect("etcd")),
            attempt("other", connect("other")),
            attempt(
                "lookup",
                (settings.get_or("name", "localhost"), 80)
                    .to_socket_addrs()
                    .map(drop),
            ),
            attempt(
                "listen",
                TcpListener::bind(("127.0.0.1", listen_port(settings))).map(drop),
            ),
            attempt(
                "udp",
                UdpSocket::bind("127.0.0.1:0").and_then(|socket| {
                    socket
                        .send_to(b"escape", settings.get_or("udp", "127.0.0.1:9"))
                        .map(drop)
                }),
            ),
        ];
        match settings.get("then") {
            Some("hold") => {
                let address = targets.first().and_then(|t| t.resolved.first());
                let held = address.map(|a| TcpStream::connect(a.as_str()));
                std::thread::sleep(std::time::Duration::from_secs(3600));
                drop(held);
            }
            #[allow(clippy::empty_loop)]
            Some("spin") => loop {},
            _ => {}
        }
        let own = targets
            .iter()
            .flat_map(|t| &t.resolved)
            .any(|address| TcpStream::connect(address.as_str()).is_ok());
        let mut words: Vec<String> = attempts.iter().map(|(word, _)| word.clone()).collect();
        words.push(format!(
            "target={}",
            if own { "connected" } else { "unreachable" }
        ));
        let output = words.join(" ");
        Ok(if attempts.iter().any(|(_, allowed)| *allowed) {
            Outcome::Critical(output)
        } else {
            Outcome::Passing(output)
        })
    }
}

fn listen_port(settings: &Settings) -> u16 {
    settings
        .get("listen")
        .and_then(|p| p.parse().ok())
        .unwrap_or(0)
}

ygg_agent_sdk::register_check!(CheckEscape);
