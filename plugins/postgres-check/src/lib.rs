//! Example ygg-agent check plugin: does PostgreSQL accept a login and
//! answer `SELECT 1`?
//!
//! Speaks the frontend/backend protocol 3.0 over plain TCP: a startup
//! message for `user` and `database`, authentication (trust, cleartext
//! password or SCRAM-SHA-256, PostgreSQL's default), then the simple query
//! `SELECT 1`, which must return one row `1`. Passing: `SELECT 1 as
//! <user>@<database>`. Critical: the server's error (`FATAL 28P01 password
//! authentication failed for user "agent"`), or any other answer.
//!
//! ```yaml
//! checks:
//!   - plugin: postgres_check
//!     target: 127.0.0.1:5432        # default: the instance's endpoints
//!     settings: {user: agent, database: app, password: s3cret}
//! ```
//!
//! TLS (`sslmode`) is not spoken: the check connects in clear, so point it
//! at a server that accepts non-TLS connections from the agent's host.

mod scram;

use std::io::{BufReader, Read, Write};
use std::net::TcpStream;

use ygg_agent_sdk::check::{Check, Outcome, Target};
use ygg_agent_sdk::{Instance, Settings};

/// A backend message larger than this is not an answer to a health check.
const MAX_MESSAGE: usize = 64 << 10;

struct PostgresCheck;

impl Check for PostgresCheck {
    fn check(
        _instance: &Instance,
        targets: &[Target],
        settings: &Settings,
    ) -> Result<Outcome, String> {
        let user = settings.get_or("user", "postgres");
        let database = settings.get_or("database", user);
        let password = settings.get("password");
        let mut session = Session {
            // One socket for both ways (`try_clone` is not supported on WASI).
            stream: BufReader::new(connect(targets)?),
        };
        session.send(None, &startup(user, database))?;
        if let Some(refused) = session.authenticate(password)? {
            return Ok(Outcome::Critical(refused));
        }
        session.send(Some(b'Q'), b"SELECT 1\0")?;
        let verdict = session.query_result()?;
        // Terminate: polite, and the server logs no "unexpected EOF".
        let _ = session.send(Some(b'X'), b"");
        Ok(match verdict {
            Ok(()) => Outcome::Passing(format!("SELECT 1 as {user}@{database}")),
            Err(why) => Outcome::Critical(why),
        })
    }
}

fn connect(targets: &[Target]) -> Result<TcpStream, String> {
    let mut last = String::from("no address to connect to");
    for address in targets.iter().flat_map(|t| &t.resolved) {
        match TcpStream::connect(address.as_str()) {
            Ok(stream) => return Ok(stream),
            Err(e) => last = format!("cannot connect to {address}: {e}"),
        }
    }
    Err(last)
}

/// The startup message's body: protocol 3.0, then `user` and `database`.
fn startup(user: &str, database: &str) -> Vec<u8> {
    let mut body = 196_608u32.to_be_bytes().to_vec();
    for (key, value) in [("user", user), ("database", database)] {
        body.extend_from_slice(key.as_bytes());
        body.push(0);
        body.extend_from_slice(value.as_bytes());
        body.push(0);
    }
    body.extend_from_slice(b"application_name\0ygg-agent-check\0\0");
    body
}

struct Session {
    stream: BufReader<TcpStream>,
}

impl Session {
    /// Sends one message: its type byte (none for the startup message),
    /// its length (itself included), its body.
    fn send(&mut self, kind: Option<u8>, body: &[u8]) -> Result<(), String> {
        let mut message = Vec::with_capacity(body.len() + 5);
        message.extend(kind);
        message.extend_from_slice(&(body.len() as u32 + 4).to_be_bytes());
        message.extend_from_slice(body);
        self.stream
            .get_mut()
            .write_all(&message)
            .map_err(|e| format!("cannot send: {e}"))
    }

    fn receive(&mut self) -> Result<(u8, Vec<u8>), String> {
        let mut head = [0u8; 5];
        self.stream
            .read_exact(&mut head)
            .map_err(|e| match e.kind() {
                std::io::ErrorKind::UnexpectedEof => "the server closed the connection".to_string(),
                _ => format!("no answer: {e}"),
            })?;
        let length = u32::from_be_bytes([head[1], head[2], head[3], head[4]]) as usize;
        if !(4..=MAX_MESSAGE).contains(&length) {
            return Err(format!("not a PostgreSQL server (message length {length})"));
        }
        let mut body = vec![0; length - 4];
        self.stream
            .read_exact(&mut body)
            .map_err(|e| format!("cut-off answer: {e}"))?;
        Ok((head[0], body))
    }

    /// Logs in. `Ok(Some(why))`: the server refused (a health verdict);
    /// `Err`: the exchange itself failed.
    fn authenticate(&mut self, password: Option<&str>) -> Result<Option<String>, String> {
        let mut scram: Option<scram::Client> = None;
        loop {
            let (kind, body) = self.receive()?;
            match kind {
                b'E' => return Ok(Some(error_text(&body))),
                b'R' => {}
                other => {
                    return Err(format!(
                        "unexpected message {:?} during login",
                        other as char
                    ));
                }
            }
            let code =
                u32::from_be_bytes(body.get(..4).ok_or("short message")?.try_into().unwrap());
            let data = &body[4..];
            let need = || {
                password.ok_or(
                    "the server asks for a password: set `password` in the check's settings"
                        .to_string(),
                )
            };
            match code {
                0 => return self.until_ready(),
                3 => {
                    let mut reply = need()?.as_bytes().to_vec();
                    reply.push(0);
                    self.send(Some(b'p'), &reply)?;
                }
                10 => {
                    let mechanisms: Vec<&[u8]> = data.split(|b| *b == 0).collect();
                    if !mechanisms.contains(&&b"SCRAM-SHA-256"[..]) {
                        return Err("the server offers no SASL mechanism this check speaks (SCRAM-SHA-256)".into());
                    }
                    let client = scram::Client::new(need()?);
                    let first = client.first_message();
                    let mut reply = b"SCRAM-SHA-256\0".to_vec();
                    reply.extend_from_slice(&(first.len() as u32).to_be_bytes());
                    reply.extend_from_slice(first.as_bytes());
                    self.send(Some(b'p'), &reply)?;
                    scram = Some(client);
                }
                11 => {
                    let client = scram.as_mut().ok_or("SASL continue before SASL start")?;
                    let text = std::str::from_utf8(data).map_err(|_| "SASL message not UTF-8")?;
                    let last = client.final_message(text)?;
                    self.send(Some(b'p'), last.as_bytes())?;
                }
                12 => {
                    let client = scram.as_ref().ok_or("SASL final before SASL start")?;
                    let text = std::str::from_utf8(data).map_err(|_| "SASL message not UTF-8")?;
                    client.verify_server(text)?;
                }
                5 => return Err("the server asks for an MD5 password, which this check does not speak: store the user's password as SCRAM-SHA-256".into()),
                other => return Err(format!("unsupported authentication method {other}")),
            }
        }
    }

    /// After AuthenticationOk: parameters, key data, then ReadyForQuery.
    fn until_ready(&mut self) -> Result<Option<String>, String> {
        loop {
            match self.receive()? {
                (b'Z', _) => return Ok(None),
                (b'E', body) => return Ok(Some(error_text(&body))),
                _ => {}
            }
        }
    }

    /// The answer to `SELECT 1`: one row holding `1`, then ReadyForQuery.
    fn query_result(&mut self) -> Result<Result<(), String>, String> {
        let mut value = None;
        let mut error = None;
        loop {
            match self.receive()? {
                (b'D', body) => value = Some(first_column(&body)),
                (b'E', body) => error = Some(error_text(&body)),
                (b'Z', _) => break,
                _ => {}
            }
        }
        Ok(match (error, value) {
            (Some(error), _) => Err(error),
            (None, Some(Some(v))) if v == "1" => Ok(()),
            (None, other) => Err(format!("SELECT 1 returned {other:?}")),
        })
    }
}

/// The first column of a DataRow, as text (`None`: NULL or no column).
fn first_column(body: &[u8]) -> Option<String> {
    let columns = u16::from_be_bytes([*body.first()?, *body.get(1)?]);
    if columns == 0 {
        return None;
    }
    let length = i32::from_be_bytes(body.get(2..6)?.try_into().ok()?);
    let length = usize::try_from(length).ok()?;
    Some(String::from_utf8_lossy(body.get(6..6 + length)?).into_owned())
}

/// An ErrorResponse as `SEVERITY CODE message`.
fn error_text(body: &[u8]) -> String {
    let mut severity = "";
    let mut code = "";
    let mut message = "";
    for field in body.split(|b| *b == 0) {
        let Some((&kind, text)) = field.split_first() else {
            continue;
        };
        let text = std::str::from_utf8(text).unwrap_or("");
        match kind {
            b'S' => severity = text,
            b'C' => code = text,
            b'M' => message = text,
            _ => {}
        }
    }
    format!("{severity} {code} {message}")
}

ygg_agent_sdk::register_check!(PostgresCheck);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_startup_message_names_user_and_database() {
        let body = startup("agent", "app");
        assert_eq!(&body[..4], &[0, 3, 0, 0]);
        assert_eq!(
            &body[4..],
            b"user\0agent\0database\0app\0application_name\0ygg-agent-check\0\0"
        );
    }

    #[test]
    fn errors_read_as_severity_code_message() {
        let body = b"SFATAL\0VFATAL\0C28P01\0Mpassword authentication failed for user \"x\"\0\0";
        assert_eq!(
            error_text(body),
            "FATAL 28P01 password authentication failed for user \"x\""
        );
    }

    #[test]
    fn a_data_row_gives_its_first_column() {
        assert_eq!(first_column(&[0, 1, 0, 0, 0, 1, b'1']), Some("1".into()));
        assert_eq!(first_column(&[0, 1, 255, 255, 255, 255]), None);
        assert_eq!(first_column(&[0, 0]), None);
    }
}
