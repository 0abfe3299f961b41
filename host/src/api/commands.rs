//! The command line's local-control commands (`instances`, `register`,
//! `deregister`, `pass`, `maint`, `drain`): each is one request to the
//! running agent's socket ([`client`](super::client)), printed for people
//! (control characters escaped) or as JSON.
//!
//! Exit codes: 0 done, 1 the agent cannot be reached or failed (5xx),
//! 2 the request was refused (4xx) or the input file is unusable.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use serde_json::Value;

use super::body;
use super::client;
use crate::status::{self, escape};

pub const EXIT_OK: u8 = 0;
pub const EXIT_UNREACHABLE: u8 = 1;
pub const EXIT_REFUSED: u8 = 2;

/// One local-control command.
#[derive(Debug, Clone)]
pub enum Command {
    Instances {
        json: bool,
    },
    Register {
        file: PathBuf,
        id: Option<String>,
    },
    Deregister {
        id: String,
    },
    Pass {
        id: String,
    },
    Maintenance {
        enable: bool,
        id: Option<String>,
        reason: Option<String>,
    },
    Drain {
        id: Option<String>,
    },
}

/// Runs `command` against the agent on `socket` (default: where the agent
/// puts it), prints the outcome, and returns the exit code.
pub fn run(socket: Option<PathBuf>, command: Command) -> u8 {
    let socket = socket.unwrap_or_else(super::default_socket);
    // What `register` found wrong in its file, at the file's own lines:
    // printed instead of the agent's reasons if the agent refuses it too.
    let local_problems = match &command {
        Command::Register { file, .. } => std::fs::read_to_string(file)
            .ok()
            .and_then(|text| registration_problems(file, &text)),
        _ => None,
    };
    let (method, path, body) = match request(&command) {
        Ok(request) => request,
        Err(error) => {
            eprintln!("error: {error}");
            return EXIT_REFUSED;
        }
    };
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("error: cannot start the async runtime: {error}");
            return EXIT_UNREACHABLE;
        }
    };
    match runtime.block_on(client::call(&socket, method, &path, body)) {
        Err(error) => {
            eprintln!("error: cannot reach the agent: {}", escape(&error));
            EXIT_UNREACHABLE
        }
        Ok((status, answer)) if (200..300).contains(&status) => {
            match &command {
                Command::Instances { json: true } => {
                    println!(
                        "{}",
                        serde_json::to_string_pretty(&answer).unwrap_or_default()
                    )
                }
                Command::Instances { json: false } => print!("{}", table(&answer)),
                _ => println!("{}", summary(&command, &answer)),
            }
            EXIT_OK
        }
        Ok((400, _)) if local_problems.is_some() => {
            eprintln!("error: {}", local_problems.unwrap_or_default());
            EXIT_REFUSED
        }
        Ok((status, answer)) => {
            eprintln!(
                "error: the agent answered {status}: {}",
                describe_error(&answer)
            );
            if status >= 500 {
                EXIT_UNREACHABLE
            } else {
                EXIT_REFUSED
            }
        }
    }
}

/// The HTTP request a command makes.
fn request(command: &Command) -> Result<(&'static str, String, Option<Vec<u8>>), String> {
    let id_path = |id: &str| -> Result<String, String> {
        body::check_id(id)?;
        Ok(format!("/v1/instances/{id}"))
    };
    let reason_body = |reason: &Option<String>| {
        reason
            .as_ref()
            .map(|r| serde_json::json!({ "reason": r }).to_string().into_bytes())
    };
    Ok(match command {
        Command::Instances { .. } => ("GET", "/v1/instances".into(), None),
        Command::Register { file, id } => {
            let id = match id {
                Some(id) => id.clone(),
                None => file_id(file)?,
            };
            let text = std::fs::read_to_string(file)
                .map_err(|e| format!("cannot read {}: {e}", file.display()))?;
            let json = registration_json(file, &text)?;
            ("PUT", id_path(&id)?, Some(json.to_string().into_bytes()))
        }
        Command::Deregister { id } => ("DELETE", id_path(id)?, None),
        Command::Pass { id } => ("PUT", format!("{}/pass", id_path(id)?), None),
        Command::Maintenance { enable, id, reason } => {
            let path = match id {
                Some(id) => format!("{}/maintenance", id_path(id)?),
                None => "/v1/maintenance".into(),
            };
            if *enable {
                ("PUT", path, reason_body(reason))
            } else {
                ("DELETE", path, None)
            }
        }
        Command::Drain { id: Some(id) } => ("POST", format!("{}/drain", id_path(id)?), None),
        Command::Drain { id: None } => ("POST", "/v1/drain".into(), None),
    })
}

/// `register FILE` without `--id`: the file's name without its extension.
fn file_id(file: &Path) -> Result<String, String> {
    let id = file
        .file_stem()
        .and_then(|s| s.to_str())
        .ok_or_else(|| format!("cannot take an id from {}: give --id", file.display()))?;
    body::check_id(id).map_err(|problem| {
        format!(
            "the id `{}` comes from the file name {}: {problem}; give one with --id",
            escape(id),
            file.display()
        )
    })?;
    Ok(id.to_string())
}

/// The body `register` sends for `file`: its one instance as JSON. A list
/// of instances (an instances-folder file) is refused here with what to do
/// instead.
fn registration_json(file: &Path, text: &str) -> Result<Value, String> {
    let name = file.display();
    if is_instances_list(text) {
        return Err(format!(
            "{name} is a list of instances, the format of the instances folder (agent.instancesDir): \
             `register` takes one instance, a mapping (`name: …`, `endpoints: […]`); \
             register each item from a file of its own, or put this file in the instances folder"
        ));
    }
    crate::config::to_json(text).map_err(|e| format!("{name}: {e}"))
}

/// What the config's readers find wrong in `file` (with the file's own
/// lines; the agent checks the JSON it is sent, whose lines are not the
/// file's). Checked with the default `agent.checks` timings: the agent's
/// own may accept what these refuse, so the agent decides.
fn registration_problems(file: &Path, text: &str) -> Option<String> {
    let defaults = crate::config::CheckTiming::default();
    let issues = crate::config::parse_api_instance(text, &defaults).err()?;
    let mut message = format!("{}: invalid instance:", file.display());
    for issue in issues {
        let _ = write!(message, "\n  {}", escape(&issue.to_string()));
    }
    Some(message)
}

/// Whether `text` is a YAML list at its top level whose items are
/// mappings: the instances folder's format.
fn is_instances_list(text: &str) -> bool {
    match crate::config::parse_instances(text, &crate::config::CheckTiming::default()) {
        Ok(_) => true,
        // Refused for its shape (not a list) or its syntax: not a list.
        Err(issues) => !issues
            .iter()
            .any(|i| i.path.is_empty() || i.path == "(syntax)"),
    }
}

fn describe_error(answer: &Value) -> String {
    let mut text = escape(answer["error"].as_str().unwrap_or("(no message)"));
    if let Some(problems) = answer["problems"].as_array() {
        for problem in problems {
            let _ = write!(text, "\n  {}", escape(problem.as_str().unwrap_or_default()));
        }
    }
    text
}

fn summary(command: &Command, answer: &Value) -> String {
    let id = escape(answer["id"].as_str().unwrap_or("the node"));
    match command {
        Command::Register { .. } => format!(
            "registered {id} ({})",
            escape(answer["key"].as_str().unwrap_or_default())
        ),
        Command::Deregister { .. } => format!("deregistered {id}"),
        Command::Pass { .. } => format!("passed {id}"),
        Command::Maintenance { enable: true, .. } => {
            let kept = if answer["persisted"] == true {
                ""
            } else {
                " (not persisted: no state folder)"
            };
            format!("maintenance on for {id}{kept}")
        }
        Command::Maintenance { enable: false, .. } => format!("maintenance off for {id}"),
        Command::Drain { .. } => {
            format!("drained {id}: its key is deleted and stays out until maintenance is ended")
        }
        Command::Instances { .. } => String::new(),
    }
}

/// The listing as a table: one instance per line, every cell escaped.
pub fn table(answer: &Value) -> String {
    let headers = ["ID", "SOURCE", "STATE", "SERVICE", "REASON"];
    let empty = Vec::new();
    let rows: Vec<[String; 5]> = answer["instances"]
        .as_array()
        .unwrap_or(&empty)
        .iter()
        .map(|i| {
            let cell = |name: &str| i[name].as_str().unwrap_or_default().to_string();
            // A refused file has no id: its path stands in.
            let id = match i["id"].as_str() {
                Some(id) => id.to_string(),
                None => cell("origin"),
            };
            [
                id,
                cell("source"),
                cell("state"),
                cell("service"),
                cell("reason"),
            ]
        })
        .collect();
    let mut out = status::table(headers, &rows);
    if let Some(reason) = answer["maintenance"].as_str() {
        let _ = writeln!(out, "node in maintenance: {}", escape(reason));
    }
    if answer["drained"] == true {
        let _ = writeln!(out, "node drained");
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_table_escapes_what_apps_sent() {
        let answer = serde_json::json!({
            "instances": [{"id": "a", "source": "api", "state": "maintenance",
                "service": "default/\u{1b}]0;pwned\u{7}/1", "reason": "\u{1b}[2J"}],
            "maintenance": "x\u{9b}",
        });
        let table = table(&answer);
        assert!(
            !table.chars().any(|c| c.is_control() && c != '\n'),
            "{table:?}"
        );
        assert!(table.contains("default/\\u{1b}]0;pwned\\u{7}/1"), "{table}");
    }
}
