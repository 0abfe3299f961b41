//! The status page the admin server serves at `/`: one HTML document with
//! its style and script inline (no other request but `/status`, no
//! external asset: it works offline), under a Content-Security-Policy that
//! allows exactly that style and that script, by their SHA-256, and
//! fetches to the same origin only. The script polls `/status` (every
//! 400 ms while visible) and renders every value with `textContent`;
//! Trusted Types are required, so an `innerHTML` assignment would throw.
//!
//! Polling, not server-sent events: the page then needs nothing from the
//! supervisor but the status request it already answers (no change
//! notification to thread through the event loop), and "the agent stopped
//! answering" is simply a poll that fails or times out (2 s).

use std::sync::LazyLock;

use axum::http::{HeaderName, HeaderValue, header};
use base64::Engine as _;
use sha2::{Digest, Sha256};

const STYLE: &str = include_str!("page.css");
const SCRIPT: &str = include_str!("page.js");

/// The page and its policy, built once.
pub struct Page {
    pub html: String,
    pub policy: String,
}

pub static PAGE: LazyLock<Page> = LazyLock::new(|| {
    let hash = |text: &str| {
        base64::engine::general_purpose::STANDARD.encode(Sha256::digest(text.as_bytes()))
    };
    let policy = format!(
        "default-src 'none'; script-src 'sha256-{}'; style-src 'sha256-{}'; \
         connect-src 'self'; img-src 'none'; base-uri 'none'; form-action 'none'; \
         frame-ancestors 'none'; require-trusted-types-for 'script'; trusted-types 'none'",
        hash(SCRIPT),
        hash(STYLE)
    );
    let html = format!(
        r#"<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<meta name="referrer" content="no-referrer">
<title>ygg-agent status</title>
<style>{STYLE}</style>
</head>
<body>
<header><h1>ygg-agent</h1><span id="live" class="down">connecting</span><span id="updated" class="muted"></span></header>
<main>
<div id="node"></div>
<h2>Instances</h2>
<table>
<thead><tr><th>service, endpoints, metadata</th><th>id</th><th>state</th><th>why</th><th>checks (last runs, oldest first)</th><th>source</th><th>key, lease</th></tr></thead>
<tbody id="instances"></tbody>
</table>
<h2>Plugins</h2>
<table>
<thead><tr><th>name</th><th>kind</th><th>version</th><th>state</th><th>loaded</th><th>last call</th><th>calls</th><th>errors</th><th>last error</th><th>memory</th></tr></thead>
<tbody id="plugins"></tbody>
</table>
<h2>etcd session</h2>
<dl id="etcd"></dl>
</main>
<script>{SCRIPT}</script>
</body>
</html>
"#
    );
    Page { html, policy }
});

/// The headers every admin answer carries: no sniffing, no framing, no
/// caching, no referrer.
pub fn common_headers() -> [(HeaderName, HeaderValue); 4] {
    [
        (
            header::X_CONTENT_TYPE_OPTIONS,
            HeaderValue::from_static("nosniff"),
        ),
        (header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY")),
        (header::CACHE_CONTROL, HeaderValue::from_static("no-store")),
        (
            header::REFERRER_POLICY,
            HeaderValue::from_static("no-referrer"),
        ),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_policy_names_the_inline_script_and_style_and_nothing_else() {
        let page = &*PAGE;
        let digest = |text: &str| {
            base64::engine::general_purpose::STANDARD.encode(Sha256::digest(text.as_bytes()))
        };
        assert!(page.html.contains(&format!("<script>{SCRIPT}</script>")));
        assert!(page.html.contains(&format!("<style>{STYLE}</style>")));
        assert!(
            page.policy.starts_with("default-src 'none';"),
            "{}",
            page.policy
        );
        assert!(
            page.policy
                .contains(&format!("script-src 'sha256-{}'", digest(SCRIPT)))
        );
        assert!(
            page.policy
                .contains(&format!("style-src 'sha256-{}'", digest(STYLE)))
        );
        assert!(page.policy.contains("frame-ancestors 'none'"));
        assert!(!page.policy.contains("unsafe"), "{}", page.policy);
        // No handler attribute (` onload=`, ` onerror=`, …).
        let handler = page.html.match_indices(" on").any(|(at, _)| {
            let rest = &page.html[at + 3..];
            let name = rest.len()
                - rest
                    .trim_start_matches(|c: char| c.is_ascii_alphabetic())
                    .len();
            name > 0 && rest[name..].starts_with('=')
        });
        assert!(!handler, "an event handler attribute in the page");
        // One script, one style, no external URL.
        assert_eq!(page.html.matches("<script").count(), 1);
        assert_eq!(page.html.matches("<style").count(), 1);
        for forbidden in [
            "innerHTML",
            "outerHTML",
            "insertAdjacentHTML",
            "document.write",
            "eval(",
            "http:",
            "https:",
            "src=",
        ] {
            let hits = page.html.matches(forbidden).count();
            assert_eq!(hits, 0, "{forbidden:?} appears {hits} times in the page");
        }
    }
}
