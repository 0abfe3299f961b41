//! The rules a plugin's output must follow (SPEC §5), as a pure check.
//! A bad output is an error for that call: the plugin's last good output
//! stays in place.

use std::collections::BTreeMap;

use crate::record::INSTANCE_ID_KEY;

pub const MAX_KEYS: usize = 64;
pub const MAX_KEY_LEN: usize = 128;
pub const MAX_VALUE_BYTES: usize = 512;

/// Checks `pairs` and returns them as a map, or every problem found.
pub fn validate(pairs: Vec<(String, String)>) -> Result<BTreeMap<String, String>, String> {
    let mut problems = Vec::new();
    if pairs.len() > MAX_KEYS {
        problems.push(format!("{} keys (at most {MAX_KEYS})", pairs.len()));
    }
    let mut out = BTreeMap::new();
    for (key, value) in pairs {
        let shown = shorten(&key);
        if !key
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "._/-".contains(c))
        {
            problems.push(format!("key `{shown}` may only use A-Z a-z 0-9 . _ / -"));
        } else if key.is_empty() || key.len() > MAX_KEY_LEN {
            // ASCII only by now: bytes are characters.
            problems.push(format!(
                "key `{shown}` must be 1 to {MAX_KEY_LEN} characters"
            ));
        } else if key == INSTANCE_ID_KEY {
            problems.push(format!(
                "key `{INSTANCE_ID_KEY}` is reserved (it would change the instance's identity)"
            ));
        }
        if value.len() > MAX_VALUE_BYTES {
            problems.push(format!(
                "value of `{shown}` is {} bytes (at most {MAX_VALUE_BYTES})",
                value.len()
            ));
        }
        if out.insert(key.clone(), value).is_some() {
            problems.push(format!("key `{shown}` appears twice"));
        }
    }
    if problems.is_empty() {
        Ok(out)
    } else {
        let more = problems.len().saturating_sub(5);
        problems.truncate(5);
        let mut message = format!("invalid output: {}", problems.join("; "));
        if more > 0 {
            message.push_str(&format!("; and {more} more"));
        }
        Err(message)
    }
}

/// A key as it may be shown in a log line: escaped, then cut to 40 bytes on
/// a character boundary (escaping first, so control characters cannot make
/// it long; bytes, so four-byte characters cannot either).
fn shorten(key: &str) -> String {
    let escaped = key.escape_debug().to_string();
    if escaped.len() <= 40 {
        return escaped;
    }
    let mut end = 40;
    while !escaped.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}…", &escaped[..end])
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pairs(items: &[(&str, &str)]) -> Vec<(String, String)> {
        items
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn good_output_passes() {
        let out = validate(pairs(&[
            ("load", "0.42"),
            ("a.b/c-d_e", "x"),
            ("empty", ""),
        ]))
        .unwrap();
        assert_eq!(out.len(), 3);
        assert_eq!(out["load"], "0.42");
        assert!(validate(Vec::new()).unwrap().is_empty());
    }

    #[test]
    fn every_rule_is_enforced() {
        let long_key = "k".repeat(129);
        let cases: Vec<(Vec<(String, String)>, &str)> = vec![
            (pairs(&[("", "x")]), "must be 1 to 128"),
            (pairs(&[(&long_key, "x")]), "must be 1 to 128"),
            (pairs(&[("bad key!", "x")]), "may only use"),
            (pairs(&[("ümlaut", "x")]), "may only use"),
            (pairs(&[("instance_id", "x")]), "reserved"),
            (vec![("big".into(), "x".repeat(513))], "513 bytes"),
            (pairs(&[("dup", "1"), ("dup", "2")]), "appears twice"),
            (
                (0..65).map(|i| (format!("k{i}"), String::new())).collect(),
                "65 keys",
            ),
        ];
        for (input, needle) in cases {
            let error = validate(input).unwrap_err();
            assert!(error.contains(needle), "{error:?} lacks {needle:?}");
        }
        assert!(validate(vec![("ok".into(), "x".repeat(512))]).is_ok());
        assert!(validate(vec![("k".repeat(128), String::new())]).is_ok());
    }

    #[test]
    fn control_characters_cannot_make_reports_long() {
        // Found by fuzzing: 40 control characters escape to 240 bytes.
        let key = format!("UU{}", "\u{19}".repeat(200));
        let input = (0..70)
            .map(|i| (format!("{key}{i}"), String::new()))
            .collect();
        let error = validate(input).unwrap_err();
        assert!(error.len() < 1000, "{} bytes: {error}", error.len());
    }

    #[test]
    fn four_byte_characters_cannot_make_reports_long() {
        // Found by fuzzing: 40 characters of `𝕏` are 160 bytes.
        let input = (0..70)
            .map(|i| (format!("{}{i}", "𝕏".repeat(100)), String::new()))
            .collect();
        let error = validate(input).unwrap_err();
        assert!(error.len() < 1000, "{} bytes: {error}", error.len());
        assert!(error.contains("may only use"), "{error}");
    }

    #[test]
    fn long_reports_are_capped() {
        let input = (0..100)
            .map(|i| (format!("bad key {i}"), String::new()))
            .collect();
        let error = validate(input).unwrap_err();
        assert!(error.contains("and 96 more"), "{error}");
        assert!(error.len() < 1000);
    }
}
