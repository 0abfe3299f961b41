//! Pure: what the local API accepts, before anything reaches the
//! supervisor: ids, request bodies (size, UTF-8, JSON, then the config's
//! own instance rules), maintenance reasons. Fuzzed (`fuzz/`, target
//! `api_body`).

use serde::Deserialize;

use crate::config::{self, ApiInstance, CheckTiming};

/// The largest request body read.
pub const MAX_BODY: usize = 64 << 10;
/// The longest id.
pub const MAX_ID: usize = 128;
/// The longest maintenance reason.
pub const MAX_REASON: usize = 1024;

/// `[A-Za-z0-9._-]{1,128}`: safe in a path, a file and a log line.
pub fn check_id(id: &str) -> Result<(), String> {
    if id.is_empty() || id.len() > MAX_ID {
        return Err(format!("id must be 1 to {MAX_ID} characters"));
    }
    if let Some(bad) = id
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-')))
    {
        return Err(format!(
            "id may hold only letters, digits, `.`, `_` and `-` (found {:?})",
            bad
        ));
    }
    if id == "." || id == ".." {
        return Err("id cannot be `.` or `..`".into());
    }
    Ok(())
}

/// The JSON of a body, or why it is not one: not UTF-8, not JSON, not an
/// object.
fn json_object(body: &[u8]) -> Result<&str, Vec<String>> {
    if body.len() > MAX_BODY {
        return Err(vec![format!("body larger than {} KiB", MAX_BODY >> 10)]);
    }
    let text = std::str::from_utf8(body).map_err(|_| vec!["body is not UTF-8".to_string()])?;
    match serde_json::from_str::<serde_json::Value>(text) {
        Ok(serde_json::Value::Object(_)) => Ok(text),
        Ok(_) => Err(vec!["body must be a JSON object".into()]),
        Err(error) => Err(vec![format!("body is not valid JSON: {error}")]),
    }
}

/// A registration body: an instance in the config's schema, plus `ttl`.
/// Errors carry JSON paths (`endpoints[0].address`) and the config's
/// wording.
pub fn registration(body: &[u8], defaults: &CheckTiming) -> Result<ApiInstance, Vec<String>> {
    let text = json_object(body)?;
    config::parse_api_instance(text, defaults)
        .map_err(|issues| issues.iter().map(ToString::to_string).collect())
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct ReasonBody {
    #[serde(default)]
    reason: Option<String>,
}

/// A maintenance body: `{"reason": "…"}`, or empty (no reason).
pub fn reason(body: &[u8]) -> Result<String, Vec<String>> {
    if body.iter().all(u8::is_ascii_whitespace) {
        return Ok(String::new());
    }
    let text = json_object(body)?;
    let parsed: ReasonBody = serde_json::from_str(text).map_err(|e| vec![format!("body: {e}")])?;
    let reason = parsed.reason.unwrap_or_default();
    if reason.chars().count() > MAX_REASON {
        return Err(vec![format!("reason: longer than {MAX_REASON} characters")]);
    }
    if reason.chars().any(char::is_control) {
        return Err(vec!["reason: contains control characters".into()]);
    }
    Ok(reason)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_limited_to_a_safe_charset() {
        for good in ["api-1", "a", "A.b_c-9", &"x".repeat(128)] {
            assert_eq!(check_id(good), Ok(()), "{good}");
        }
        for bad in [
            "",
            "..",
            ".",
            "a/b",
            "a b",
            "é",
            "a\u{1b}",
            &"x".repeat(129),
        ] {
            assert!(check_id(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn registrations_follow_the_config_rules() {
        let defaults = CheckTiming::default();
        let ok = br#"{"name": "api", "version": "1", "ttl": "15s",
            "endpoints": [{"scheme": "http", "address": "127.0.0.1:8080"}]}"#;
        let read = registration(ok, &defaults).unwrap();
        assert_eq!(read.instance.name, "api");
        assert_eq!(read.instance.namespace, "default");
        assert_eq!(read.ttl, Some(std::time::Duration::from_secs(15)));

        let cases: &[(&[u8], &str)] = &[
            (b"not json", "body is not valid JSON"),
            (b"[1]", "body must be a JSON object"),
            (b"\xff", "body is not UTF-8"),
            (br#"{"name": "api"}"#, "endpoints: at least one endpoint"),
            (
                br#"{"name": "api", "colour": "blue", "endpoints": [{"scheme": "http", "address": "127.0.0.1:1"}]}"#,
                "colour: unknown key",
            ),
            (
                br#"{"name": "api", "endpoints": [{"scheme": "http"}]}"#,
                "endpoints[0].address: missing",
            ),
            (
                br#"{"name": "api", "ttl": "0s", "endpoints": [{"scheme": "http", "address": "127.0.0.1:1"}]}"#,
                "is below the minimum of 1s",
            ),
        ];
        for (body, wanted) in cases {
            let errors = registration(body, &defaults).unwrap_err();
            assert!(
                errors.iter().any(|e| e.contains(wanted)),
                "{:?}: {errors:?}",
                String::from_utf8_lossy(body)
            );
        }
        let huge = vec![b' '; MAX_BODY + 1];
        assert!(registration(&huge, &defaults).unwrap_err()[0].contains("larger than 64 KiB"));
    }

    #[test]
    fn reasons_are_optional_short_and_printable() {
        assert_eq!(reason(b"").unwrap(), "");
        assert_eq!(reason(br#"{"reason": "deploy"}"#).unwrap(), "deploy");
        assert!(reason(br#"{"why": "x"}"#).unwrap_err()[0].contains("unknown field"));
        assert!(reason(br#"{"reason": "a\u001b"}"#).is_err());
    }
}
