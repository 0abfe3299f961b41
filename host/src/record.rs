//! What lands in etcd, as pure functions: an instance's identity key, its
//! registry key and its JSON record (SPEC §3). Nothing here does I/O.

use std::collections::BTreeMap;
use std::io;

use serde::Serialize;
use serde_json::ser::{CharEscape, Formatter};
use sha1::{Digest, Sha1};

/// Metadata key that replaces the hashed identity with an operator-chosen one.
pub const INSTANCE_ID_KEY: &str = "instance_id";

/// Longest `instance_id` accepted (and so the longest custom instance key).
pub const INSTANCE_ID_MAX_LEN: usize = 128;

/// Namespace used when an instance does not name one, as in Yggdrasil.
pub const DEFAULT_NAMESPACE: &str = "default";

/// A service instance as the operator configured it. Metadata here is the
/// configured metadata only; plugin output is merged in by [`record_value`]'s
/// caller, and never changes the instance's identity.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Instance {
    pub namespace: String,
    pub name: String,
    pub version: String,
    pub region: String,
    pub zone: String,
    pub campus: String,
    pub metadata: BTreeMap<String, String>,
    pub endpoints: Vec<Endpoint>,
}

/// One way to reach an instance (`grpc://127.0.0.1:54321`).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Endpoint {
    pub scheme: String,
    pub address: String,
    pub metadata: BTreeMap<String, String>,
}

impl Instance {
    /// The seed's example instance (registry-example.md): the sample
    /// `plugin check` runs a plugin on when no config names one.
    pub fn seed_example() -> Instance {
        let endpoint = |scheme: &str| Endpoint {
            scheme: scheme.into(),
            address: "127.0.0.1:54321".into(),
            metadata: BTreeMap::new(),
        };
        Instance {
            namespace: DEFAULT_NAMESPACE.into(),
            name: "example-registry-server".into(),
            version: "1.0.0".into(),
            region: "us-west".into(),
            zone: "us-west-1".into(),
            campus: "campus-a".into(),
            metadata: [("env", "dev"), ("pod", "pod-1234567890")]
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .into(),
            endpoints: vec![endpoint("grpc"), endpoint("http")],
        }
    }

    /// `namespace/name/version`, the way the seed's log line names a service.
    pub fn service_label(&self) -> String {
        format!("{}/{}/{}", self.namespace, self.name, self.version)
    }
}

impl std::fmt::Display for Endpoint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}://{}", self.scheme, self.address)
    }
}

/// The instance's key below `<prefix>/<namespace>/<name>/`: the configured
/// `instance_id`, or the lowercase hex SHA-1 of the identity JSON
/// (namespace, name, version and the endpoints sorted by scheme then address).
/// Region, zone, campus and metadata are deliberately not part of it, so a
/// metadata change rewrites one key instead of leaking a new one.
pub fn instance_key(instance: &Instance) -> String {
    if let Some(id) = instance.metadata.get(INSTANCE_ID_KEY) {
        return id.clone();
    }
    hex::encode(Sha1::digest(identity_json(instance).as_bytes()))
}

/// The compact JSON whose SHA-1 is the default instance key.
pub fn identity_json(instance: &Instance) -> String {
    #[derive(Serialize)]
    struct Identity<'a> {
        namespace: &'a str,
        name: &'a str,
        version: &'a str,
        endpoints: Vec<IdentityEndpoint<'a>>,
    }
    #[derive(Serialize, PartialEq, Eq, PartialOrd, Ord)]
    struct IdentityEndpoint<'a> {
        scheme: &'a str,
        address: &'a str,
    }
    let mut endpoints: Vec<IdentityEndpoint> = instance
        .endpoints
        .iter()
        .map(|e| IdentityEndpoint {
            scheme: &e.scheme,
            address: &e.address,
        })
        .collect();
    endpoints.sort();
    let identity = Identity {
        namespace: &instance.namespace,
        name: &instance.name,
        version: &instance.version,
        endpoints,
    };
    go_json(&identity)
}

/// `<prefix>/<namespace>/<name>/<instanceKey>`, the prefix as written (a
/// trailing `/` makes a double slash, as in Yggdrasil's Go registry).
pub fn registry_key(prefix: &str, instance: &Instance) -> String {
    format!(
        "{}/{}/{}/{}",
        prefix,
        instance.namespace,
        instance.name,
        instance_key(instance)
    )
}

/// The scheme of the endpoints published in etcd's gRPC naming format.
pub const NAMING_SCHEME: &str = "grpc";

/// The keys of `instance` in etcd's gRPC naming format
/// (`go.etcd.io/etcd/client/v3/naming/endpoints`): `<target>/<address>`
/// for each grpc endpoint, which is what `Manager.AddEndpoint` requires
/// (a key under `<target>/`) and what gRPC's `etcd:///<target>` resolver
/// lists.
pub fn naming_keys(target: &str, instance: &Instance) -> Vec<String> {
    instance
        .endpoints
        .iter()
        .filter(|e| e.scheme == NAMING_SCHEME)
        .map(|e| format!("{target}/{}", e.address))
        .collect()
}

/// The value under a naming key: what `endpoints.Manager.AddEndpoint`
/// writes for `Endpoint{Addr: address}`, the JSON of etcd's
/// `internal.Update{Op: Add, Addr, Metadata: nil}` by Go's `json.Marshal`
/// (etcd-io/etcd `client/v3/naming/endpoints/endpoints_impl.go`).
pub fn naming_value(address: &str) -> String {
    #[derive(Serialize)]
    #[serde(rename_all = "PascalCase")]
    struct Update<'a> {
        op: u8,
        addr: &'a str,
        metadata: Option<()>,
    }
    go_json(&Update {
        op: 0,
        addr: address,
        metadata: None,
    })
}

/// The record stored under the registry key: compact JSON with the seed's
/// field order, sorted map keys, and `null` for an empty map. `metadata` is
/// the instance's full metadata (configured plus plugin output).
pub fn record_value(instance: &Instance, metadata: &BTreeMap<String, String>) -> String {
    #[derive(Serialize)]
    struct Record<'a> {
        namespace: &'a str,
        name: &'a str,
        version: &'a str,
        region: &'a str,
        zone: &'a str,
        campus: &'a str,
        metadata: Option<&'a BTreeMap<String, String>>,
        endpoints: Vec<RecordEndpoint<'a>>,
    }
    #[derive(Serialize)]
    struct RecordEndpoint<'a> {
        scheme: &'a str,
        address: &'a str,
        metadata: Option<&'a BTreeMap<String, String>>,
    }
    fn non_empty(map: &BTreeMap<String, String>) -> Option<&BTreeMap<String, String>> {
        (!map.is_empty()).then_some(map)
    }
    let record = Record {
        namespace: &instance.namespace,
        name: &instance.name,
        version: &instance.version,
        region: &instance.region,
        zone: &instance.zone,
        campus: &instance.campus,
        metadata: non_empty(metadata),
        endpoints: instance
            .endpoints
            .iter()
            .map(|e| RecordEndpoint {
                scheme: &e.scheme,
                address: &e.address,
                metadata: non_empty(&e.metadata),
            })
            .collect(),
    };
    go_json(&record)
}

/// Compact JSON with exactly the bytes Go's `encoding/json` (`json.Marshal`)
/// writes for the same value, so a record is byte-identical to the one a Go
/// app registers. The difference from `serde_json` is string escaping only;
/// see `GoFormatter`.
pub fn go_json<T: Serialize + ?Sized>(value: &T) -> String {
    let mut out = Vec::new();
    let mut serializer = serde_json::Serializer::with_formatter(&mut out, GoFormatter);
    value
        .serialize(&mut serializer)
        .expect("maps with string keys and plain structs always serialise");
    String::from_utf8(out).expect("serde_json writes UTF-8")
}

/// `serde_json`'s compact formatter with Go's string escaping (`appendString`
/// in Go's `src/encoding/json/encode.go`, with HTML escaping on, as
/// `json.Marshal` does): `&`, `<`, `>` as `\u0026`, `\u003c`, `\u003e`;
/// U+2028 and U+2029 as `\u2028`, `\u2029`; `"` and `\` backslashed;
/// `\b \f \n \r \t` as short escapes; every other byte below 0x20 as
/// `\u00xx` in lowercase hex. 0x7f and all other characters are written raw.
/// (Go also writes invalid UTF-8 as `\ufffd`; a Rust string has none.)
struct GoFormatter;

impl Formatter for GoFormatter {
    /// A run of characters `serde_json` does not escape: escape the ones Go
    /// does on top.
    fn write_string_fragment<W>(&mut self, writer: &mut W, fragment: &str) -> io::Result<()>
    where
        W: ?Sized + io::Write,
    {
        let mut start = 0;
        for (at, c) in fragment.char_indices() {
            let escaped: &[u8] = match c {
                '&' => b"\\u0026",
                '<' => b"\\u003c",
                '>' => b"\\u003e",
                '\u{2028}' => b"\\u2028",
                '\u{2029}' => b"\\u2029",
                _ => continue,
            };
            writer.write_all(&fragment.as_bytes()[start..at])?;
            writer.write_all(escaped)?;
            start = at + c.len_utf8();
        }
        writer.write_all(&fragment.as_bytes()[start..])
    }

    /// What `serde_json` escapes (`"`, `\`, bytes below 0x20), spelled
    /// the way Go spells it, written out here so the contract does not rest
    /// on `serde_json`'s defaults.
    fn write_char_escape<W>(&mut self, writer: &mut W, char_escape: CharEscape) -> io::Result<()>
    where
        W: ?Sized + io::Write,
    {
        const HEX: &[u8; 16] = b"0123456789abcdef";
        let short = |c: u8| [b'\\', c];
        match char_escape {
            CharEscape::Quote => writer.write_all(&short(b'"')),
            CharEscape::ReverseSolidus => writer.write_all(&short(b'\\')),
            // serde_json never asks for `\/`; Go writes `/` raw.
            CharEscape::Solidus => writer.write_all(b"/"),
            CharEscape::Backspace => writer.write_all(&short(b'b')),
            CharEscape::FormFeed => writer.write_all(&short(b'f')),
            CharEscape::LineFeed => writer.write_all(&short(b'n')),
            CharEscape::CarriageReturn => writer.write_all(&short(b'r')),
            CharEscape::Tab => writer.write_all(&short(b't')),
            CharEscape::AsciiControl(byte) => writer.write_all(&[
                b'\\',
                b'u',
                b'0',
                b'0',
                HEX[usize::from(byte >> 4)],
                HEX[usize::from(byte & 0xf)],
            ]),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn map(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    fn seed_instance() -> Instance {
        Instance::seed_example()
    }

    #[test]
    fn seed_identity_json_and_key() {
        let instance = seed_instance();
        assert_eq!(
            identity_json(&instance),
            r#"{"namespace":"default","name":"example-registry-server","version":"1.0.0","endpoints":[{"scheme":"grpc","address":"127.0.0.1:54321"},{"scheme":"http","address":"127.0.0.1:54321"}]}"#
        );
        // Computed independently: printf '%s' '<the JSON above>' | sha1sum
        assert_eq!(
            instance_key(&instance),
            "5b51df33a06ef6bde3a81b1ad8d1792ed24de006"
        );
        assert_eq!(
            registry_key("/yggdrasil/registry", &instance),
            "/yggdrasil/registry/default/example-registry-server/5b51df33a06ef6bde3a81b1ad8d1792ed24de006"
        );
    }

    #[test]
    fn seed_record_has_the_seed_field_order() {
        let instance = seed_instance();
        let mut metadata = instance.metadata.clone();
        metadata.insert("started".into(), "2024-01-26T10:00:00Z".into());
        assert_eq!(
            record_value(&instance, &metadata),
            r#"{"namespace":"default","name":"example-registry-server","version":"1.0.0","region":"us-west","zone":"us-west-1","campus":"campus-a","metadata":{"env":"dev","pod":"pod-1234567890","started":"2024-01-26T10:00:00Z"},"endpoints":[{"scheme":"grpc","address":"127.0.0.1:54321","metadata":null},{"scheme":"http","address":"127.0.0.1:54321","metadata":null}]}"#
        );
    }

    #[test]
    fn naming_keys_and_values_are_etcds() {
        let instance = seed_instance();
        // Only the grpc endpoint: etcd's naming resolver dials what it lists.
        assert_eq!(
            naming_keys("default/example-registry-server", &instance),
            vec!["default/example-registry-server/127.0.0.1:54321"]
        );
        // etcd's `internal.Update` has no JSON tags: Go writes the field
        // names as declared (Op, Addr, Metadata), `Op` 0 for Add and a nil
        // `Metadata` as null; strings get Go's escaping.
        assert_eq!(
            naming_value("127.0.0.1:54321"),
            r#"{"Op":0,"Addr":"127.0.0.1:54321","Metadata":null}"#
        );
        assert_eq!(
            naming_value("[::1]:80&<>"),
            r#"{"Op":0,"Addr":"[::1]:80\u0026\u003c\u003e","Metadata":null}"#
        );
    }

    #[test]
    fn empty_maps_are_null_and_maps_are_sorted() {
        let mut instance = seed_instance();
        instance.endpoints[1].metadata = map(&[("z", "1"), ("a", "2")]);
        let value = record_value(&instance, &BTreeMap::new());
        assert!(value.contains(r#""metadata":null,"endpoints""#), "{value}");
        assert!(value.contains(r#""metadata":{"a":"2","z":"1"}"#), "{value}");
    }

    #[test]
    fn identity_ignores_metadata_and_location_and_endpoint_order() {
        let a = seed_instance();
        let mut b = seed_instance();
        b.metadata.insert("load".into(), "0.42".into());
        b.region = "eu-central".into();
        b.zone = "z".into();
        b.campus = "c".into();
        b.endpoints.reverse();
        b.endpoints[0].metadata = map(&[("path", "/api")]);
        assert_eq!(instance_key(&a), instance_key(&b));
    }

    #[test]
    fn identity_changes_with_version_endpoints_namespace_and_name() {
        let base = instance_key(&seed_instance());
        let mut v = seed_instance();
        v.version = "1.0.1".into();
        let mut e = seed_instance();
        e.endpoints[0].address = "127.0.0.1:54322".into();
        let mut n = seed_instance();
        n.namespace = "prod".into();
        let mut s = seed_instance();
        s.name = "other".into();
        for changed in [v, e, n, s] {
            assert_ne!(instance_key(&changed), base);
        }
    }

    #[test]
    fn instance_id_overrides_the_hash() {
        let mut instance = seed_instance();
        instance
            .metadata
            .insert(INSTANCE_ID_KEY.into(), "my-custom-instance-id".into());
        assert_eq!(instance_key(&instance), "my-custom-instance-id");
        assert_eq!(
            registry_key("/p", &instance),
            "/p/default/example-registry-server/my-custom-instance-id"
        );
    }

    /// Go's `encoding/json` string escaping, as `json.Marshal` writes it.
    /// Every expectation follows `appendString` in `src/encoding/json/encode.go`
    /// of golang/go at commit 956bcd2963222dd5b981090f4cb66b547bad9c31 (Go
    /// 1.24 or later: it has `omitzero`). `\b` and `\f` are short escapes
    /// since Go 1.22 (before, `\u0008` and `\u000c`). The comment on each
    /// row names the branch of `appendString` that produces it.
    #[test]
    fn strings_are_escaped_exactly_like_go() {
        let table: &[(&str, &str)] = &[
            // `htmlSafeSet` excludes `&`, `<`, `>`: the `default:` branch
            // writes `\u00` + lowercase `hex` digits.
            ("&<>", r#""\u0026\u003c\u003e""#),
            ("/api?a=1&b=<2>", r#""/api?a=1\u0026b=\u003c2\u003e""#),
            // `if c == '\u2028' || c == '\u2029'`: `\u202` + hex[c&0xF].
            ("\u{2028}\u{2029}", r#""\u2028\u2029""#),
            // `case '\b'` and `case '\f'` short escapes; other bytes below
            // 0x20 via `default:` (lowercase hex); 0x7f is in `htmlSafeSet`,
            // so it is written raw.
            (
                "\u{8} \u{c} \u{1} \u{1f} \u{7f}",
                "\"\\b \\f \\u0001 \\u001f \u{7f}\"",
            ),
            ("\u{0}\u{1b}", r#""\u0000\u001b""#),
            // `case '\n'`, `case '\r'`, `case '\t'`.
            ("\n\r\t", r#""\n\r\t""#),
            // `case '\\', '"'`: a backslash before the byte itself.
            (r#"say "hi""#, r#""say \"hi\"""#),
            (r"back\slash", r#""back\\slash""#),
            // Multi-byte runes other than U+2028/U+2029 are copied as is
            // (`i += size`), and `/` is in `htmlSafeSet`.
            ("é 日本 😀 a/b", "\"é 日本 😀 a/b\""),
        ];
        for (input, go) in table {
            assert_eq!(go_json(input), *go, "escaping {input:?}");
        }
        // Map keys go through the same `appendString` (`mapEncoder.encode`).
        assert_eq!(
            go_json(&map(&[("a&b", "<c>")])),
            r#"{"a\u0026b":"\u003cc\u003e"}"#
        );
    }

    #[test]
    fn record_holds_go_bytes_for_metadata_with_html_characters() {
        let instance = seed_instance();
        let mut metadata = instance.metadata.clone();
        metadata.insert("path".into(), "/api?a=1&b=<2>".into());
        let value = record_value(&instance, &metadata);
        assert_eq!(
            value,
            r#"{"namespace":"default","name":"example-registry-server","version":"1.0.0","region":"us-west","zone":"us-west-1","campus":"campus-a","metadata":{"env":"dev","path":"/api?a=1\u0026b=\u003c2\u003e","pod":"pod-1234567890"},"endpoints":[{"scheme":"grpc","address":"127.0.0.1:54321","metadata":null},{"scheme":"http","address":"127.0.0.1:54321","metadata":null}]}"#
        );
        // Still the same JSON to any reader.
        let parsed: serde_json::Value = serde_json::from_str(&value).unwrap();
        assert_eq!(parsed["metadata"]["path"], "/api?a=1&b=<2>");
        // Metadata is not part of the identity: the seed key.
        assert_eq!(
            instance_key(&instance),
            "5b51df33a06ef6bde3a81b1ad8d1792ed24de006"
        );
    }

    #[test]
    fn identity_hash_is_over_go_bytes() {
        let mut instance = seed_instance();
        instance.version = "1.0.0-rc&<2>".into();
        let identity = identity_json(&instance);
        assert_eq!(
            identity,
            r#"{"namespace":"default","name":"example-registry-server","version":"1.0.0-rc\u0026\u003c2\u003e","endpoints":[{"scheme":"grpc","address":"127.0.0.1:54321"},{"scheme":"http","address":"127.0.0.1:54321"}]}"#
        );
        // printf '%s' '<the JSON above>' | sha1sum; over serde_json's raw
        // `&<>` it would be 279e12d7e5943a46f74543e4cad321ba1b2bebd6.
        assert_eq!(
            instance_key(&instance),
            "a8678daefbf7a4f917bdc188b3b8d1e37ebf06cb"
        );
    }

    #[test]
    fn key_is_forty_lowercase_hex() {
        let key = instance_key(&seed_instance());
        assert_eq!(key.len(), 40);
        assert!(
            key.chars()
                .all(|c| c.is_ascii_digit() || ('a'..='f').contains(&c))
        );
    }
}
