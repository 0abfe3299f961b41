//! The rules two or more sections share: pure checks of one value, each
//! with its message.

use std::net::SocketAddr;
use std::path::Path;

/// Longest namespace or service name: it becomes one segment of an etcd key.
pub const MAX_NAME_LEN: usize = 128;

pub(super) fn readable_file(path: &Path) -> Result<(), String> {
    if path.is_file() {
        Ok(())
    } else {
        Err(format!("{} is not a readable file", path.display()))
    }
}

/// A folder, or nothing yet (the agent watches for it to appear).
pub(super) fn folder_or_missing(path: &Path) -> Result<(), String> {
    match std::fs::metadata(path) {
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => Ok(()),
        _ => folder(path),
    }
}

pub(super) fn folder(path: &Path) -> Result<(), String> {
    if path.is_dir() {
        Ok(())
    } else {
        Err(format!("{} is not a folder", path.display()))
    }
}

pub(super) fn socket_address(text: String) -> Result<SocketAddr, String> {
    text.parse()
        .map_err(|_| format!("`{text}` is not an IP address and port (e.g. 127.0.0.1:9901)"))
}

/// A namespace or service name becomes one segment of an etcd key.
pub(super) fn check_segment(what: &str, value: &str) -> Result<(), String> {
    if value.is_empty() {
        return Err(format!("{what} is empty"));
    }
    if value.len() > MAX_NAME_LEN {
        return Err(format!("{what} is longer than {MAX_NAME_LEN} bytes"));
    }
    if value.contains('/') || value == "." || value == ".." {
        return Err(format!(
            "{what} `{value}` cannot contain `/` or be `.` or `..` (it is one segment of the etcd key)"
        ));
    }
    if value.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err(format!("{what} `{value}` contains white space"));
    }
    Ok(())
}

pub(super) fn printable(value: &str) -> Result<(), String> {
    if value.chars().any(char::is_control) {
        Err("contains control characters".into())
    } else {
        Ok(())
    }
}

pub(super) fn plugin_name(name: &str) -> Result<(), String> {
    if is_plugin_name(name) {
        Ok(())
    } else {
        Err("not a plugin name (letters, digits, `_`, `-`, `.`)".into())
    }
}

/// Plugin names are file stems: `load` for `load.wasm`.
pub fn is_plugin_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= MAX_NAME_LEN
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "_-.".contains(c))
        && !name.starts_with('.')
}
