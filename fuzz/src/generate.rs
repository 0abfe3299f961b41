//! Structure-aware inputs built with `arbitrary`: config documents from the
//! real key names (so the fuzzer gets past YAML syntax into validation),
//! plugin outputs near the rules' edges, and record instances.
//!
//! Every choice reads one byte; when the input runs out the choice is the
//! first (most ordinary) option, so short inputs give small valid documents.

use std::collections::BTreeMap;

use arbitrary::{Result, Unstructured};
use ygg_agent::record::{Endpoint, Instance};

use crate::checks::SECRET_LINE;

fn byte(u: &mut Unstructured) -> u8 {
    u.arbitrary().unwrap_or(0)
}

/// Seven times in eight; never once the input is used up.
fn present(u: &mut Unstructured) -> bool {
    byte(u) % 8 != 0
}

/// The first item (the ordinary, valid one) four times in five, else any.
fn pick<'a>(u: &mut Unstructured, items: &[&'a str]) -> &'a str {
    match byte(u) {
        b @ 205.. => items[usize::from(b) % items.len()],
        _ => items[0],
    }
}

fn small(u: &mut Unstructured, max: u8) -> usize {
    usize::from(byte(u) % (max + 1))
}

fn any_text(u: &mut Unstructured) -> Result<String> {
    u.arbitrary()
}

// ------------------------------------------------------------ YAML tree

#[derive(Clone, Copy, Debug)]
enum Style {
    Auto,
    Double,
    Single,
}

#[derive(Clone, Debug)]
pub struct Scalar {
    text: String,
    style: Style,
}

/// A YAML node to render; `bool` is "flow style".
#[derive(Clone, Debug)]
pub enum Yaml {
    Scalar(Scalar),
    Seq(Vec<Yaml>, bool),
    Map(Vec<(Scalar, Yaml)>, bool),
}

fn plain(text: &str) -> Scalar {
    Scalar {
        text: text.to_string(),
        style: Style::Auto,
    }
}

fn scalar(u: &mut Unstructured, text: String) -> Yaml {
    let style = match byte(u) {
        0..=199 => Style::Auto,
        200..=227 => Style::Double,
        _ => Style::Single,
    };
    Yaml::Scalar(Scalar { text, style })
}

fn pick_scalar(u: &mut Unstructured, items: &[&str]) -> Yaml {
    let text = pick(u, items).to_string();
    scalar(u, text)
}

/// Printable characters that need no escape in a quoted scalar.
fn printable(c: char) -> bool {
    (' '..='~').contains(&c)
        || (c > '\u{a0}'
            && !c.is_control()
            && !c.is_whitespace()
            && c != '\u{feff}'
            && !('\u{fffe}'..='\u{ffff}').contains(&c))
}

/// Safe as a plain scalar in block and flow context.
fn safe_plain(text: &str) -> bool {
    if text == "~" {
        return true;
    }
    let mut chars = text.chars();
    let Some(first) = chars.next() else {
        return false;
    };
    let first_ok =
        first.is_alphanumeric() || "/._+".contains(first) || (first == '-' && text.len() > 1);
    first_ok
        && !text.ends_with(':')
        && text
            .chars()
            .all(|c| (c.is_alphanumeric() && printable(c)) || "._/+-~:".contains(c))
}

fn double_quoted(text: &str, out: &mut String) {
    out.push('"');
    for c in text.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\t' => out.push_str("\\t"),
            c if printable(c) => out.push(c),
            c if u32::from(c) <= 0xffff => out.push_str(&format!("\\u{:04X}", u32::from(c))),
            c => out.push_str(&format!("\\U{:08X}", u32::from(c))),
        }
    }
    out.push('"');
}

fn render_scalar(s: &Scalar, out: &mut String) {
    match s.style {
        Style::Auto if safe_plain(&s.text) => out.push_str(&s.text),
        Style::Single if s.text.chars().all(printable) => {
            out.push('\'');
            out.push_str(&s.text.replace('\'', "''"));
            out.push('\'');
        }
        _ => double_quoted(&s.text, out),
    }
}

fn render_flow(y: &Yaml, out: &mut String) {
    match y {
        Yaml::Scalar(s) => render_scalar(s, out),
        Yaml::Seq(items, _) => {
            out.push('[');
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.push_str(", ");
                }
                render_flow(item, out);
            }
            out.push(']');
        }
        Yaml::Map(entries, _) => {
            out.push('{');
            for (i, (key, value)) in entries.iter().enumerate() {
                if i > 0 {
                    out.push_str(", ");
                }
                render_scalar(key, out);
                out.push_str(": ");
                render_flow(value, out);
            }
            out.push('}');
        }
    }
}

fn is_block(y: &Yaml) -> bool {
    match y {
        Yaml::Scalar(_) => false,
        Yaml::Seq(items, flow) => !flow && !items.is_empty(),
        Yaml::Map(entries, flow) => !flow && !entries.is_empty(),
    }
}

fn render_block(y: &Yaml, indent: usize, out: &mut String) {
    let pad = " ".repeat(indent);
    match y {
        Yaml::Map(entries, _) if is_block(y) => {
            for (key, value) in entries {
                out.push_str(&pad);
                render_scalar(key, out);
                out.push(':');
                if is_block(value) {
                    out.push('\n');
                    render_block(value, indent + 2, out);
                } else {
                    out.push(' ');
                    render_flow(value, out);
                    out.push('\n');
                }
            }
        }
        Yaml::Seq(items, _) if is_block(y) => {
            for item in items {
                match item {
                    Yaml::Map(..) if is_block(item) => {
                        // Compact form: `- key: value` then the other keys.
                        let mut inner = String::new();
                        render_block(item, indent + 2, &mut inner);
                        out.push_str(&pad);
                        out.push_str("- ");
                        out.push_str(&inner[indent + 2..]);
                    }
                    _ if is_block(item) => {
                        out.push_str(&pad);
                        out.push_str("-\n");
                        render_block(item, indent + 2, out);
                    }
                    _ => {
                        out.push_str(&pad);
                        out.push_str("- ");
                        render_flow(item, out);
                        out.push('\n');
                    }
                }
            }
        }
        _ => {
            out.push_str(&pad);
            render_flow(y, out);
            out.push('\n');
        }
    }
}

/// The YAML text of a document.
pub fn render(doc: &Yaml) -> String {
    let mut out = String::new();
    render_block(doc, 0, &mut out);
    out
}

// ------------------------------------------------------------ values

/// Any node: the wrong type for most fields.
fn any(u: &mut Unstructured, depth: u8) -> Result<Yaml> {
    let flow = byte(u) >= 200;
    Ok(match byte(u) % 5 {
        0 => {
            let text = any_text(u)?;
            scalar(u, text)
        }
        1 => Yaml::Scalar(plain(pick(u, &["~", "null", "true", "0", "x"]))),
        2 if depth > 0 => {
            let n = small(u, 3);
            let mut items = Vec::with_capacity(n);
            for _ in 0..n {
                items.push(any(u, depth - 1)?);
            }
            Yaml::Seq(items, flow)
        }
        3 if depth > 0 => {
            let n = small(u, 3);
            let mut entries = Vec::with_capacity(n);
            for _ in 0..n {
                let key = plain(&any_text(u)?);
                let value = any(u, depth - 1)?;
                if !entries
                    .iter()
                    .any(|(k, _): &(Scalar, Yaml)| k.text == key.text)
                {
                    entries.push((key, value));
                }
            }
            Yaml::Map(entries, flow)
        }
        _ => Yaml::Map(Vec::new(), true),
    })
}

/// Mostly what `good` makes; sometimes any text, or a node of the wrong type.
fn value(
    u: &mut Unstructured,
    good: impl FnOnce(&mut Unstructured) -> Result<Yaml>,
) -> Result<Yaml> {
    match byte(u) {
        0..=247 => good(u),
        248..=251 => {
            let text = any_text(u)?;
            Ok(scalar(u, text))
        }
        _ => any(u, 2),
    }
}

/// A mapping under construction.
struct Fields {
    entries: Vec<(Scalar, Yaml)>,
}

impl Fields {
    fn new() -> Self {
        Fields {
            entries: Vec::new(),
        }
    }

    fn field(
        &mut self,
        u: &mut Unstructured,
        key: &str,
        good: impl FnOnce(&mut Unstructured) -> Result<Yaml>,
    ) -> Result<()> {
        if present(u) {
            let value = value(u, good)?;
            self.entries.push((plain(key), value));
        }
        Ok(())
    }

    /// Unknown keys (typos of real ones, or anything) and, rarely, a
    /// duplicate key; then the mapping, block or flow.
    fn finish(mut self, u: &mut Unstructured, typos: &[&str]) -> Result<Yaml> {
        if byte(u) >= 240 {
            for _ in 0..=small(u, 1) {
                let key = if byte(u) < 160 && !typos.is_empty() {
                    pick(u, typos).to_string()
                } else {
                    any_text(u)?
                };
                let value = any(u, 1)?;
                if !self.entries.iter().any(|(k, _)| k.text == key) {
                    self.entries.push((plain(&key), value));
                }
            }
        }
        // Not 0x00 or 0xff, which libFuzzer's mutations produce often.
        if byte(u) == 0xa5 && !self.entries.is_empty() {
            let i = usize::from(byte(u)) % self.entries.len();
            let copy = self.entries[i].clone();
            self.entries.push(copy);
        }
        if byte(u) >= 248 && self.entries.len() > 1 {
            let i = usize::from(byte(u)) % self.entries.len();
            self.entries.swap(0, i);
        }
        let flow = byte(u) >= 232;
        Ok(Yaml::Map(self.entries, flow))
    }
}

fn list(
    u: &mut Unstructured,
    max: u8,
    mut item: impl FnMut(&mut Unstructured) -> Result<Yaml>,
) -> Result<Yaml> {
    let flow = byte(u) >= 200;
    let n = small(u, max);
    let mut items = Vec::with_capacity(n);
    for _ in 0..n {
        items.push(item(u)?);
    }
    Ok(Yaml::Seq(items, flow))
}

const NUMBERS: &[&str] = &[
    "1",
    "5",
    "10",
    "2",
    "0",
    "100",
    "30",
    "1.5",
    ".5",
    "5.",
    "2.0000000004",
    "1.9999999996",
    "0.0000000001",
    "999999999",
    "8760",
    "8761",
    "525600",
    "31536000",
    "9007199254740993",
    "00000000000000000000001",
    "1..5",
];

fn duration(u: &mut Unstructured) -> Result<Yaml> {
    if byte(u) < 160 {
        return Ok(pick_scalar(
            u,
            &[
                "5s",
                "10s",
                "2s",
                "1s",
                "3s",
                "1.5s",
                "500ms",
                "100ms",
                "99ms",
                "10ms",
                "9ms",
                "0",
                "0s",
                "1m30s",
                "8760h",
                "8761h",
                "-5s",
                "+5s",
                "10",
                "ten",
                "",
                "5d",
                "1h1m1s1ms1us1ns",
                "2.5s",
            ],
        ));
    }
    let mut text = String::new();
    match byte(u) % 8 {
        0 => text.push('+'),
        1 => text.push('-'),
        _ => {}
    }
    for _ in 0..=small(u, 2) {
        text.push_str(pick(u, NUMBERS));
        text.push_str(pick(
            u,
            &[
                "s", "ms", "m", "h", "ns", "us", "µs", "μs", "", "d", " s", "S",
            ],
        ));
    }
    Ok(scalar(u, text))
}

fn size(u: &mut Unstructured) -> Result<Yaml> {
    if byte(u) < 160 {
        return Ok(pick_scalar(
            u,
            &[
                "32MiB",
                "2MiB",
                "1MiB",
                "4GiB",
                "5GiB",
                "2097152",
                "2097151",
                "4294967296",
                "4294967297",
                "0",
                "32Mi",
                "32MB",
                "12XB",
                "lots",
                "99999999999999999999GiB",
                " 32 MiB",
                "18446744073709551615",
                "18446744073709551616",
            ],
        ));
    }
    let number: u32 = u.arbitrary()?;
    let unit = pick(
        u,
        &[
            "MiB", "", "B", "KiB", "Ki", "Mi", "GiB", "Gi", "KB", "kB", "K", "k", "MB", "M", "GB",
            "G", "TiB",
        ],
    );
    Ok(scalar(u, format!("{number}{unit}")))
}

fn boolean(u: &mut Unstructured) -> Result<Yaml> {
    Ok(pick_scalar(
        u,
        &["true", "false", "True", "FALSE", "yes", "no", "1", "on", ""],
    ))
}

fn etcd_endpoint(u: &mut Unstructured) -> Result<Yaml> {
    if byte(u) < 192 {
        return Ok(pick_scalar(
            u,
            &[
                "127.0.0.1:2379",
                "localhost:2379",
                "http://127.0.0.1:2379",
                "https://127.0.0.1:2379",
                "etcd",
                "127.0.0.1:0",
                "127.0.0.1:65536",
                ":2379",
                "a/b:1",
                "u@h:1",
                "http://h:1/",
                "h:x",
                "http://https://h:1",
                "[::1]:2379",
            ],
        ));
    }
    let mut text = String::new();
    text.push_str(pick(u, &["", "http://", "https://", "ftp://", "HTTP://"]));
    text.push_str(pick(
        u,
        &[
            "127.0.0.1",
            "localhost",
            "[::1]",
            "",
            "a b",
            "a\tb",
            "h",
            "a\u{0}b",
            "é",
        ],
    ));
    text.push_str(pick(u, &[":", "", "::"]));
    text.push_str(pick(
        u,
        &[
            "2379", "0", "1", "65535", "65536", "-1", "", "x", "+1", "02379",
        ],
    ));
    text.push_str(pick(u, &["", "/", "//"]));
    Ok(scalar(u, text))
}

fn long(c: char, n: usize) -> String {
    std::iter::repeat_n(c, n).collect()
}

fn text_from(u: &mut Unstructured, items: &[&str]) -> Result<Yaml> {
    match byte(u) {
        0..=231 => Ok(pick_scalar(u, items)),
        232..=243 => {
            let n = [127, 128, 129, 64][small(u, 3)];
            let c = pick(u, &["x", "é", "/", " "]).chars().next().unwrap_or('x');
            Ok(scalar(u, long(c, n)))
        }
        _ => {
            let text = any_text(u)?;
            Ok(scalar(u, text))
        }
    }
}

fn string_map(
    u: &mut Unstructured,
    keys: &[&str],
    values: impl Fn(&mut Unstructured, &str) -> Result<Yaml>,
) -> Result<Yaml> {
    let mut fields = Fields::new();
    for _ in 0..small(u, 3) {
        let key = if byte(u) < 220 {
            pick(u, keys).to_string()
        } else {
            any_text(u)?
        };
        if fields.entries.iter().any(|(k, _)| k.text == key) {
            continue;
        }
        let value = if byte(u) < 240 {
            values(u, &key)?
        } else {
            any(u, 1)?
        };
        fields.entries.push((plain(&key), value));
    }
    fields.finish(u, &[])
}

fn metadata_value(u: &mut Unstructured, key: &str) -> Result<Yaml> {
    if key == "instance_id" {
        text_from(
            u,
            &[
                "id-1",
                "id-2",
                "",
                "a/b",
                "a b",
                ".",
                "..",
                "~",
                "5b51df33a06ef6bde3a81b1ad8d1792ed24de006",
            ],
        )
    } else {
        text_from(u, &["dev", "", "x", "~", "a\u{7}b"])
    }
}

// ------------------------------------------------------------ config

fn tls(u: &mut Unstructured) -> Result<Yaml> {
    let files = &[
        "ca.pem",
        "cert.pem",
        "key.pem",
        "missing.pem",
        "plugins",
        "/",
        "",
    ];
    let mut f = Fields::new();
    f.field(u, "caFile", |u| Ok(pick_scalar(u, files)))?;
    f.field(u, "certFile", |u| Ok(pick_scalar(u, files)))?;
    f.field(u, "keyFile", |u| Ok(pick_scalar(u, files)))?;
    f.finish(u, &["cafile", "insecure", "certfile"])
}

fn client(u: &mut Unstructured, secret: &mut Option<String>) -> Result<Yaml> {
    let mut f = Fields::new();
    f.field(u, "endpoints", |u| list(u, 3, etcd_endpoint))?;
    f.field(u, "dialTimeout", duration)?;
    f.field(u, "username", |u| text_from(u, &["root", "", "user", "~"]))?;
    f.field(u, "password", |u| {
        if byte(u) < 220 {
            let token = format!("pw-{:016x}", u.arbitrary::<u64>()?);
            *secret = Some(token.clone());
            Ok(scalar(u, token))
        } else {
            Ok(pick_scalar(u, &["", "~"]))
        }
    })?;
    f.field(u, "tls", tls)?;
    f.finish(u, &["endpoint", "dialtimeout", "user", "Password"])
}

fn registry_config(u: &mut Unstructured, secret: &mut Option<String>) -> Result<Yaml> {
    let mut f = Fields::new();
    f.field(u, "client", |u| client(u, secret))?;
    f.field(u, "prefix", |u| {
        text_from(
            u,
            &[
                "/yggdrasil/registry",
                "/",
                "//",
                "/a/",
                "a/b",
                "/a//b",
                "/a b",
                "/x/y/z/",
                "",
                "/a\u{85}b",
                "/é",
            ],
        )
    })?;
    f.field(u, "ttl", duration)?;
    f.field(u, "keepAlive", boolean)?;
    f.field(u, "retryInterval", duration)?;
    f.finish(
        u,
        &["ttL", "keepalive", "retryIntervall", "prefixx", "clients"],
    )
}

fn yggdrasil(u: &mut Unstructured, secret: &mut Option<String>) -> Result<Yaml> {
    let mut f = Fields::new();
    f.field(u, "registry", |u| {
        let mut r = Fields::new();
        r.field(u, "type", |u| {
            Ok(pick_scalar(u, &["etcd", "zookeeper", "Etcd", ""]))
        })?;
        r.field(u, "config", |u| registry_config(u, secret))?;
        r.finish(u, &["typ", "configs"])
    })?;
    f.finish(u, &["application", "logger", "registy"])
}

fn endpoint(u: &mut Unstructured) -> Result<Yaml> {
    let mut f = Fields::new();
    f.field(u, "scheme", |u| {
        text_from(
            u,
            &[
                "grpc", "http", "tcp", "h2c+tls", "1x", "", "gr pc", "g_rpc", "HTTP", "~",
            ],
        )
    })?;
    f.field(u, "address", |u| {
        text_from(
            u,
            &[
                "127.0.0.1:54321",
                "10.0.0.1:8080",
                "",
                "a b",
                "x",
                "[::1]:1",
                "h\u{0}",
                "~",
            ],
        )
    })?;
    f.field(u, "metadata", |u| {
        string_map(u, &["path", "weight", ""], |u, _| {
            text_from(u, &["/api", "1", ""])
        })
    })?;
    f.finish(u, &["schema", "addr", "Address"])
}

fn instance(u: &mut Unstructured) -> Result<Yaml> {
    let mut f = Fields::new();
    f.field(u, "namespace", |u| {
        text_from(
            u,
            &["default", "", "prod", ".", "..", "a/b", "a b", "~", "é"],
        )
    })?;
    f.field(u, "name", |u| {
        text_from(
            u,
            &[
                "svc",
                "example-registry-server",
                "",
                ".",
                "..",
                "a/b",
                "x y",
                "é",
                "a\u{7}",
            ],
        )
    })?;
    f.field(u, "version", |u| {
        text_from(u, &["1.0.0", "", "1.0.1", "v\u{7}", "~"])
    })?;
    f.field(u, "region", |u| text_from(u, &["us-west", "", "r\n"]))?;
    f.field(u, "zone", |u| text_from(u, &["us-west-1", ""]))?;
    f.field(u, "campus", |u| text_from(u, &["campus-a", ""]))?;
    f.field(u, "metadata", |u| {
        string_map(u, &["env", "instance_id", "pod", "", "a b"], metadata_value)
    })?;
    f.field(u, "endpoints", |u| list(u, 3, endpoint))?;
    f.finish(u, &["endpoint", "metdata", "Name", "plugins"])
}

/// A list of instances, some copies of earlier ones (same key) with a
/// field or two changed.
fn instances(u: &mut Unstructured) -> Result<Yaml> {
    let flow = byte(u) >= 220;
    let n = small(u, 4);
    let mut items: Vec<Yaml> = Vec::with_capacity(n);
    for _ in 0..n {
        if !items.is_empty() && byte(u) < 64 {
            let i = usize::from(byte(u)) % items.len();
            let mut copy = items[i].clone();
            if let Yaml::Map(entries, _) = &mut copy {
                for (key, value) in entries.iter_mut() {
                    if byte(u) < 48 {
                        *value = match key.text.as_str() {
                            "version" => text_from(u, &["1.0.1", "2"])?,
                            "metadata" => string_map(u, &["instance_id", "env"], metadata_value)?,
                            "endpoints" => list(u, 3, endpoint)?,
                            _ => continue,
                        };
                    }
                }
            }
            items.push(copy);
        } else {
            items.push(value(u, instance)?);
        }
    }
    Ok(Yaml::Seq(items, flow))
}

fn plugins(u: &mut Unstructured) -> Result<Yaml> {
    let mut f = Fields::new();
    f.field(u, "dir", |u| {
        text_from(u, &["plugins", ".", "missing", "ca.pem", "/", "", "~"])
    })?;
    f.field(u, "interval", duration)?;
    f.field(u, "timeout", duration)?;
    f.field(u, "memoryLimit", size)?;
    f.field(u, "settings", |u| {
        string_map(
            u,
            &["heartbeat", "load", ".hidden", "a b", "", "x.y-z_1"],
            |u, _| match byte(u) % 3 {
                0 => Ok(Yaml::Scalar(plain("~"))),
                1 => string_map(u, &["format", "k", ""], |u, _| {
                    text_from(u, &["rfc3339", "", "~"])
                }),
                _ => text_from(u, &["x", ""]),
            },
        )
    })?;
    f.field(u, "cacheDir", |u| text_from(u, &["cache", "/tmp/x", ""]))?;
    f.finish(u, &["memorylimit", "cachedir", "intervall", "Dir"])
}

fn agent(u: &mut Unstructured) -> Result<Yaml> {
    let mut f = Fields::new();
    f.field(u, "instances", instances)?;
    f.field(u, "plugins", plugins)?;
    f.field(u, "admin", |u| {
        let mut a = Fields::new();
        a.field(u, "listen", |u| {
            text_from(
                u,
                &[
                    "127.0.0.1:9901",
                    "[::1]:0",
                    "0.0.0.0:80",
                    "localhost:9901",
                    "9901",
                    "127.0.0.1:99999",
                    "",
                ],
            )
        })?;
        a.finish(u, &["port", "Listen"])
    })?;
    f.field(u, "shutdownTimeout", duration)?;
    f.finish(u, &["instance", "plugin", "shutdowntimeout"])
}

/// A config document and the password in it, if any (`SECRET_LINE` first).
pub fn config_doc(u: &mut Unstructured) -> Result<(String, Option<String>)> {
    let mut secret = None;
    let mut f = Fields::new();
    f.field(u, "yggdrasil", |u| yggdrasil(u, &mut secret))?;
    f.field(u, "agent", agent)?;
    let doc = f.finish(u, &["app", "server", "Agent", "yggdrasil2"])?;
    let mut text = String::new();
    if let Some(secret) = &secret {
        text.push_str(SECRET_LINE);
        text.push_str(secret);
        text.push('\n');
    }
    text.push_str(&render(&doc));
    Ok((text, secret))
}

// ------------------------------------------------------------ plugin output

const KEY_CHARS: &[u8] = b"abcXYZ019._/-";

fn output_key(u: &mut Unstructured) -> Result<String> {
    Ok(match byte(u) % 8 {
        0..=3 => {
            let n = [1, 8, 40, 41, 127, 128, 129, 0][small(u, 7)];
            (0..n)
                .map(|_| char::from(KEY_CHARS[usize::from(byte(u)) % KEY_CHARS.len()]))
                .collect()
        }
        4 => pick(
            u,
            &["instance_id", "load", "a.b/c-d_e", "", "bad key", "ümlaut"],
        )
        .to_string(),
        // Long keys of one character that is wide in UTF-8 or in its escaped
        // form: how an error message shows a key must stay short.
        5 => {
            let c = pick(u, &["é", "\u{1d54f}", "\u{1}", "\u{10ffff}", "\u{85}"]);
            c.repeat([41, 40, 129, 64][small(u, 3)])
        }
        _ => any_text(u)?,
    })
}

fn output_value(u: &mut Unstructured) -> Result<String> {
    Ok(match byte(u) % 4 {
        0 => long('x', [0, 511, 512, 513][small(u, 3)]),
        1 => long('é', [255, 256, 257][small(u, 2)]),
        _ => any_text(u)?,
    })
}

/// Plugin output pairs near the rules' edges: key lengths 0/1/128/129,
/// reserved and duplicate keys, 64 or 65 keys, values around 512 bytes.
pub fn output_pairs(u: &mut Unstructured) -> Result<Vec<(String, String)>> {
    let n = match byte(u) % 8 {
        0 => 60 + small(u, 10),
        _ => u.arbitrary_len::<(String, String)>()?.min(80),
    };
    let mut pairs: Vec<(String, String)> = Vec::with_capacity(n);
    for _ in 0..n {
        let key = if !pairs.is_empty() && byte(u) < 16 {
            pairs[usize::from(byte(u)) % pairs.len()].0.clone()
        } else {
            output_key(u)?
        };
        pairs.push((key, output_value(u)?));
    }
    Ok(pairs)
}

// ------------------------------------------------------------ records

fn string_pairs(u: &mut Unstructured) -> Result<BTreeMap<String, String>> {
    let mut map: BTreeMap<String, String> = u.arbitrary()?;
    if byte(u) < 48 {
        map.insert("instance_id".into(), any_text(u)?);
    }
    Ok(map)
}

/// An instance with arbitrary strings, possibly repeated endpoints, the
/// merged metadata and a registry prefix.
pub fn record_case(u: &mut Unstructured) -> Result<(String, Instance, BTreeMap<String, String>)> {
    let prefix = if byte(u) < 128 {
        "/yggdrasil/registry".to_string()
    } else {
        any_text(u)?
    };
    let n = small(u, 5);
    let mut endpoints: Vec<Endpoint> = Vec::with_capacity(n);
    for _ in 0..n {
        if !endpoints.is_empty() && byte(u) < 48 {
            let mut copy = endpoints[usize::from(byte(u)) % endpoints.len()].clone();
            copy.metadata = u.arbitrary()?;
            endpoints.push(copy);
        } else {
            endpoints.push(Endpoint {
                scheme: any_text(u)?,
                address: any_text(u)?,
                metadata: u.arbitrary()?,
            });
        }
    }
    let instance = Instance {
        namespace: any_text(u)?,
        name: any_text(u)?,
        version: any_text(u)?,
        region: any_text(u)?,
        zone: any_text(u)?,
        campus: any_text(u)?,
        metadata: string_pairs(u)?,
        endpoints,
    };
    let merged = if byte(u) < 128 {
        let mut merged = instance.metadata.clone();
        merged.extend(string_pairs(u)?);
        merged
    } else {
        u.arbitrary()?
    };
    Ok((prefix, instance, merged))
}
