//! `ygg-agent list`: reads the registry the way Yggdrasil's resolver does
//! (prefix, namespace, service; endpoints filtered by scheme if asked) and
//! prints the instances as a table or as JSON. A record that is not valid
//! JSON is reported, not fatal.

use std::collections::BTreeSet;
use std::fmt::Write;

use etcd_client::GetOptions;
use serde::{Deserialize, Serialize};

use crate::config::ClientConfig;
use crate::etcd::{self, EtcdError, within};
use crate::status;

/// Keys fetched per request, so a large registry never hits gRPC's
/// message size limit.
const PAGE: i64 = 500;

/// What to list.
pub struct Query {
    pub prefix: String,
    pub namespace: Option<String>,
    pub service: Option<String>,
    pub scheme: Option<String>,
}

/// One instance record as Yggdrasil writes it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Record {
    #[serde(default)]
    pub namespace: String,
    #[serde(default)]
    pub name: String,
    #[serde(default)]
    pub version: String,
    #[serde(default)]
    pub region: String,
    #[serde(default)]
    pub zone: String,
    #[serde(default)]
    pub campus: String,
    #[serde(default)]
    pub metadata: Option<std::collections::BTreeMap<String, String>>,
    #[serde(default)]
    pub endpoints: Vec<RecordEndpoint>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RecordEndpoint {
    pub scheme: String,
    pub address: String,
    #[serde(default)]
    pub metadata: Option<std::collections::BTreeMap<String, String>>,
}

/// A key under the prefix and what it holds.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Listed {
    pub key: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub instance: Option<Record>,
    /// Why the value is not an instance record.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

impl Query {
    /// `<prefix>/[<namespace>/[<service>/]]`
    fn range_prefix(&self) -> String {
        let mut range = format!("{}/", self.prefix);
        if let Some(namespace) = &self.namespace {
            range.push_str(namespace);
            range.push('/');
            if let Some(service) = &self.service {
                range.push_str(service);
                range.push('/');
            }
        }
        range
    }

    /// Whether a key (and its record) is asked for; the namespace filter
    /// is already in the range, the service filter may not be.
    fn wants(&self, key: &str, record: Option<&Record>) -> bool {
        let rest = key
            .strip_prefix(&format!("{}/", self.prefix))
            .unwrap_or(key);
        let mut segments = rest.split('/');
        let (namespace, service) = (segments.next(), segments.next());
        if self.namespace.is_some() && namespace != self.namespace.as_deref() {
            return false;
        }
        if self.service.is_some() && service != self.service.as_deref() {
            return false;
        }
        match (&self.scheme, record) {
            (Some(scheme), Some(record)) => record.endpoints.iter().any(|e| &e.scheme == scheme),
            _ => true,
        }
    }
}

/// Reads every matching key, a page at a time.
pub async fn fetch(client_config: &ClientConfig, query: &Query) -> Result<Vec<Listed>, EtcdError> {
    let mut client = etcd::connect(client_config).await?;
    let limit = client_config.dial_timeout;
    let range = query.range_prefix();
    let end = prefix_end(range.as_bytes());
    let mut start = range.clone().into_bytes();
    let mut out = Vec::new();
    loop {
        let options = GetOptions::new().with_range(end.clone()).with_limit(PAGE);
        let response = within(limit, client.get(start.clone(), Some(options))).await?;
        for kv in response.kvs() {
            let key = String::from_utf8_lossy(kv.key()).into_owned();
            let (instance, error) = match serde_json::from_slice::<Record>(kv.value()) {
                Ok(mut record) => {
                    if let Some(scheme) = &query.scheme {
                        record.endpoints.retain(|e| &e.scheme == scheme);
                    }
                    (Some(record), None)
                }
                Err(e) => (None, Some(format!("not a valid instance record: {e}"))),
            };
            if query.wants(&key, instance.as_ref()) {
                out.push(Listed {
                    key,
                    instance,
                    error,
                });
            }
        }
        match (response.more(), response.kvs().last()) {
            (true, Some(last)) => {
                start = last.key().to_vec();
                start.push(0);
            }
            _ => break,
        }
    }
    Ok(out)
}

/// The first key after every key starting with `prefix`.
fn prefix_end(prefix: &[u8]) -> Vec<u8> {
    let mut end = prefix.to_vec();
    while let Some(last) = end.pop() {
        if last < 0xff {
            end.push(last + 1);
            return end;
        }
    }
    vec![0]
}

/// A plain table, one instance per line, then a summary.
pub fn render_table(listed: &[Listed]) -> String {
    let headers = [
        "NAMESPACE",
        "SERVICE",
        "VERSION",
        "ENDPOINTS",
        "LOCATION",
        "INSTANCE",
    ];
    let rows: Vec<[String; 6]> = listed
        .iter()
        .filter_map(|l| {
            let record = l.instance.as_ref()?;
            let instance_key = l.key.rsplit('/').next().unwrap_or_default();
            let location: Vec<&str> = [&record.region, &record.zone, &record.campus]
                .into_iter()
                .filter(|s| !s.is_empty())
                .map(String::as_str)
                .collect();
            // Every cell is data anyone able to write under the prefix
            // chose: `status::table` shows its control characters escaped,
            // never sends them to the operator's terminal.
            Some([
                record.namespace.clone(),
                record.name.clone(),
                record.version.clone(),
                record
                    .endpoints
                    .iter()
                    .map(|e| format!("{}://{}", e.scheme, e.address))
                    .collect::<Vec<_>>()
                    .join(","),
                location.join("/"),
                instance_key.to_string(),
            ])
        })
        .collect();
    let mut out = status::table(headers, &rows);
    let services: BTreeSet<(&str, &str)> = listed
        .iter()
        .filter_map(|l| l.instance.as_ref())
        .map(|r| (r.namespace.as_str(), r.name.as_str()))
        .collect();
    let invalid = listed.iter().filter(|l| l.error.is_some()).count();
    let _ = write!(
        out,
        "{} instance{} of {} service{}",
        rows.len(),
        if rows.len() == 1 { "" } else { "s" },
        services.len(),
        if services.len() == 1 { "" } else { "s" }
    );
    if invalid > 0 {
        let _ = write!(
            out,
            "; {invalid} invalid record{}",
            if invalid == 1 { "" } else { "s" }
        );
    }
    out.push('\n');
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn query(namespace: Option<&str>, service: Option<&str>) -> Query {
        Query {
            prefix: "/yggdrasil/registry".into(),
            namespace: namespace.map(Into::into),
            service: service.map(Into::into),
            scheme: None,
        }
    }

    #[test]
    fn ranges_narrow_with_the_filters() {
        assert_eq!(query(None, None).range_prefix(), "/yggdrasil/registry/");
        assert_eq!(
            query(Some("prod"), None).range_prefix(),
            "/yggdrasil/registry/prod/"
        );
        assert_eq!(
            query(Some("prod"), Some("api")).range_prefix(),
            "/yggdrasil/registry/prod/api/"
        );
        // A service without a namespace filters every namespace by service.
        let q = query(None, Some("api"));
        assert!(q.wants("/yggdrasil/registry/dev/api/k", None));
        assert!(!q.wants("/yggdrasil/registry/dev/apis/k", None));
    }

    #[test]
    fn a_trailing_slash_prefix_is_used_as_written() {
        // The keys a Go app configured with `/yggdrasil/registry/` writes.
        let q = Query {
            prefix: "/yggdrasil/registry/".into(),
            ..query(Some("prod"), Some("api"))
        };
        assert_eq!(q.range_prefix(), "/yggdrasil/registry//prod/api/");
        assert!(q.wants("/yggdrasil/registry//prod/api/k", None));
        let every = Query {
            prefix: "/yggdrasil/registry/".into(),
            ..query(None, Some("api"))
        };
        assert_eq!(every.range_prefix(), "/yggdrasil/registry//");
        assert!(every.wants("/yggdrasil/registry//dev/api/k", None));
        assert!(!every.wants("/yggdrasil/registry//dev/apis/k", None));
    }

    #[test]
    fn prefix_end_is_the_next_key() {
        assert_eq!(prefix_end(b"/a/"), b"/a0".to_vec());
        assert_eq!(prefix_end(b"a\xff"), b"b".to_vec());
    }

    #[test]
    fn the_table_lists_instances_and_counts_invalid_records() {
        let record: Record = serde_json::from_str(
            r#"{"namespace":"default","name":"svc","version":"1","region":"r","zone":"z","campus":"","metadata":null,"endpoints":[{"scheme":"grpc","address":"a:1","metadata":null}]}"#,
        )
        .unwrap();
        let listed = vec![
            Listed {
                key: "/p/default/svc/5b51df33a06ef6bde3a81b1ad8d1792ed24de006".into(),
                instance: Some(record.clone()),
                error: None,
            },
            // Configured ids that share their first 12 characters.
            Listed {
                key: "/p/default/svc/payments-worker-1".into(),
                instance: Some(record.clone()),
                error: None,
            },
            Listed {
                key: "/p/default/svc/payments-worker-2".into(),
                instance: Some(record),
                error: None,
            },
            Listed {
                key: "/p/default/svc/bad".into(),
                instance: None,
                error: Some("x".into()),
            },
        ];
        let table = render_table(&listed);
        assert!(
            table.starts_with("NAMESPACE  SERVICE  VERSION  ENDPOINTS   LOCATION  INSTANCE\n"),
            "{table}"
        );
        // The whole id, as in the key: it can be pasted into etcdctl, and
        // instances whose ids start alike stay apart.
        for id in [
            "5b51df33a06ef6bde3a81b1ad8d1792ed24de006",
            "payments-worker-1",
            "payments-worker-2",
        ] {
            assert!(
                table.contains(&format!(
                    "default    svc      1        grpc://a:1  r/z       {id}\n"
                )),
                "{table}"
            );
        }
        assert!(
            table.ends_with("3 instances of 1 service; 1 invalid record\n"),
            "{table}"
        );
    }

    #[test]
    fn the_table_shows_control_characters_escaped() {
        let record: Record = serde_json::from_value(serde_json::json!({
            "namespace": "default",
            "name": "\u{1b}]0;pwned\u{7}",
            "endpoints": [{"scheme": "http", "address": "\u{1b}[2J"}],
        }))
        .unwrap();
        let listed = [Listed {
            key: "/yggdrasil/registry/default/x/k\u{9b}".into(),
            instance: Some(record),
            error: None,
        }];
        let table = render_table(&listed);
        assert!(
            !table.chars().any(|c| c.is_control() && c != '\n'),
            "{table:?}"
        );
        assert!(table.contains("\\u{1b}]0;pwned\\u{7}"), "{table}");
        assert!(table.contains("http://\\u{1b}[2J"), "{table}");
        assert!(table.contains("k\\u{9b}"), "{table}");
    }
}
