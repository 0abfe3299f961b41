//! Example ygg-agent check plugin: is Redis answering?
//!
//! Sends `PING` in RESP (with `AUTH` first when the check's settings have a
//! `password`) to the first address of the check's target that accepts a
//! connection, and passes on `+PONG`. Any other answer is critical with the
//! server's words (`-LOADING Redis is loading the dataset in memory`).
//!
//! ```yaml
//! checks:
//!   - plugin: redis_check
//!     target: 127.0.0.1:6379     # default: the instance's endpoints
//!     settings:
//!       password: s3cret          # optional
//!       username: agent           # optional, with password (Redis 6 ACLs)
//! ```

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;

use ygg_agent_sdk::check::{Check, Outcome, Target};
use ygg_agent_sdk::{Instance, Settings};

/// Longest reply line read: a PONG or an error line, never a payload.
const MAX_LINE: u64 = 512;

struct RedisCheck;

impl Check for RedisCheck {
    fn check(
        _instance: &Instance,
        targets: &[Target],
        settings: &Settings,
    ) -> Result<Outcome, String> {
        let mut stream = connect(targets)?;
        let mut request = Vec::new();
        if let Some(password) = settings.get("password") {
            match settings.get("username") {
                Some(user) => command(&mut request, &["AUTH", user, password]),
                None => command(&mut request, &["AUTH", password]),
            }
        }
        command(&mut request, &["PING"]);
        stream
            .write_all(&request)
            .map_err(|e| format!("cannot send PING: {e}"))?;
        let mut reader = BufReader::new(stream.take(4 * MAX_LINE));
        if settings.get("password").is_some() {
            let auth = read_line(&mut reader)?;
            if auth != "+OK" {
                return Ok(Outcome::Critical(format!("AUTH refused: {auth}")));
            }
        }
        Ok(verdict(&read_line(&mut reader)?))
    }
}

/// Connects to the first resolved address that accepts.
fn connect(targets: &[Target]) -> Result<TcpStream, String> {
    let mut last = String::from("no address to connect to");
    for target in targets {
        for address in &target.resolved {
            match TcpStream::connect(address.as_str()) {
                Ok(stream) => return Ok(stream),
                Err(e) => last = format!("cannot connect to {address}: {e}"),
            }
        }
    }
    Err(last)
}

/// Appends one command as a RESP array of bulk strings.
fn command(out: &mut Vec<u8>, words: &[&str]) {
    out.extend_from_slice(format!("*{}\r\n", words.len()).as_bytes());
    for word in words {
        out.extend_from_slice(format!("${}\r\n{word}\r\n", word.len()).as_bytes());
    }
}

fn read_line(reader: &mut impl BufRead) -> Result<String, String> {
    let mut line = String::new();
    let n = reader
        .read_line(&mut line)
        .map_err(|e| format!("no answer: {e}"))?;
    if n == 0 {
        return Err("the server closed the connection without answering".into());
    }
    Ok(line.trim_end().to_owned())
}

/// `+PONG` passes; anything else is critical, with the server's words.
fn verdict(reply: &str) -> Outcome {
    match reply {
        "+PONG" => Outcome::Passing("PONG".into()),
        other => Outcome::Critical(format!(
            "expected +PONG, got {}",
            other.chars().take(200).collect::<String>()
        )),
    }
}

ygg_agent_sdk::register_check!(RedisCheck);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn commands_are_resp_arrays() {
        let mut out = Vec::new();
        command(&mut out, &["AUTH", "pw"]);
        command(&mut out, &["PING"]);
        assert_eq!(out, b"*2\r\n$4\r\nAUTH\r\n$2\r\npw\r\n*1\r\n$4\r\nPING\r\n");
    }

    #[test]
    fn only_pong_passes() {
        assert_eq!(verdict("+PONG"), Outcome::Passing("PONG".into()));
        assert_eq!(
            verdict("-LOADING Redis is loading"),
            Outcome::Critical("expected +PONG, got -LOADING Redis is loading".into())
        );
    }
}
