//! Credentials from the config file, which must never reach a log.

use std::fmt;

/// A string that must never reach a log: Debug and Display print `<redacted>`.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    pub fn new(value: String) -> Self {
        Secret(value)
    }

    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("<redacted>")
    }
}

impl fmt::Display for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("<redacted>")
    }
}

/// `url` as logs, `/status` and metric labels may show it: scheme, host,
/// port and path kept; user info and the query (where tokens go) replaced
/// by `<redacted>`, the fragment dropped.
pub fn redact_url(url: &str) -> String {
    let (scheme, rest) = match url.split_once("://") {
        Some((scheme, rest)) => (Some(scheme), rest),
        None => (None, url),
    };
    let rest = rest.split('#').next().unwrap_or_default();
    let (rest, query) = match rest.split_once('?') {
        Some((rest, _)) => (rest, "?<redacted>"),
        None => (rest, ""),
    };
    let authority_len = rest.find('/').unwrap_or(rest.len());
    let (authority, path) = rest.split_at(authority_len);
    let authority = match authority.rsplit_once('@') {
        Some((_, host)) => format!("<redacted>@{host}"),
        None => authority.to_string(),
    };
    let scheme = scheme.map(|s| format!("{s}://")).unwrap_or_default();
    format!("{scheme}{authority}{path}{query}")
}

/// Permission bits a file holding a credential must not have: any for the
/// group or others (as ssh refuses a private key others can read).
pub const SHARED_BITS: u32 = 0o077;

/// Refuses a credential file (`what`: the config key) whose `mode` lets
/// the group or others in.
pub fn private_mode(what: &str, path: &std::path::Path, mode: u32) -> Result<(), String> {
    if mode & SHARED_BITS == 0 {
        return Ok(());
    }
    Err(format!(
        "{what} {} holds a credential and its mode is {:04o}: the group or others may read or change it; make it the agent user's alone (chmod 600 {0})",
        path.display(),
        mode & 0o7777,
    ))
}

/// [`private_mode`] of the file at `path` (following links), for the
/// config's checks.
pub fn private_file(what: &str, path: &std::path::Path) -> Result<(), String> {
    use std::os::unix::fs::PermissionsExt;
    let meta = std::fs::metadata(path).map_err(|e| format!("{}: {e}", path.display()))?;
    private_mode(what, path, meta.permissions().mode())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_keep_scheme_host_port_and_path_only() {
        let cases = [
            (
                "http://127.0.0.1:8080/health",
                "http://127.0.0.1:8080/health",
            ),
            (
                "https://db.local:8443/health?token=s3cret&x=1#frag",
                "https://db.local:8443/health?<redacted>",
            ),
            (
                "http://user:pw@[::1]:80/a/b?k=v",
                "http://<redacted>@[::1]:80/a/b?<redacted>",
            ),
            ("http://h?token=x", "http://h?<redacted>"),
            ("http://h/#t", "http://h/"),
        ];
        for (url, shown) in cases {
            assert_eq!(redact_url(url), shown, "{url}");
        }
    }

    #[test]
    fn a_credential_file_others_can_read_is_refused_with_the_fix() {
        let path = std::path::Path::new("/etc/ygg/token");
        assert!(private_mode("agent.api.tokenFile", path, 0o100600).is_ok());
        assert!(private_mode("agent.api.tokenFile", path, 0o100400).is_ok());
        let error = private_mode("agent.api.tokenFile", path, 0o100644).unwrap_err();
        assert!(
            error.contains("agent.api.tokenFile /etc/ygg/token"),
            "{error}"
        );
        assert!(error.contains("mode is 0644"), "{error}");
        assert!(error.contains("chmod 600 /etc/ygg/token"), "{error}");
        assert!(private_mode("x", path, 0o100640).is_err());
        assert!(private_mode("x", path, 0o100602).is_err());
    }
}
