//! Talking to etcd: a client built from the config (endpoints, auth, TLS,
//! timeouts), a deadline on every request, and errors that say what went
//! wrong in words an operator can act on.

mod failover;

use std::future::Future;
use std::path::Path;
use std::time::Duration;

use etcd_client::{Certificate, Client, ConnectOptions, Identity, TlsOptions};
use tokio::time::Instant;

use crate::config::ClientConfig;

/// HTTP/2 pings on idle connections find a dead etcd between keepalive rounds.
/// etcd refuses pings more often than every 5 s (`--grpc-keepalive-min-time`).
const HTTP2_PING_INTERVAL: Duration = Duration::from_secs(10);

/// Why an etcd request failed. All of them are transient to the registry:
/// it retries, because etcd coming back (or the operator fixing the
/// password) is always possible.
#[derive(Debug, thiserror::Error)]
pub enum EtcdError {
    #[error("etcd did not answer within {0:?}")]
    Timeout(Duration),
    #[error("{}", describe(.0))]
    Client(#[from] etcd_client::Error),
    #[error("cannot read {path}: {source}")]
    TlsFile {
        path: String,
        #[source]
        source: std::io::Error,
    },
}

impl EtcdError {
    /// etcd no longer knows our lease: it expired, was revoked, or the
    /// data was wiped. The cure is a new lease, not a retry.
    pub fn is_lease_not_found(&self) -> bool {
        match self {
            EtcdError::Client(etcd_client::Error::GRpcStatus(status)) => {
                status.message().contains("requested lease not found")
            }
            EtcdError::Client(etcd_client::Error::LeaseKeepAliveError(msg)) => {
                msg.contains("lease not found")
            }
            _ => false,
        }
    }

    /// No connection to etcd: refused, reset, unreachable. A client that
    /// saw it may keep handing it out after etcd is back (tonic keeps a
    /// failed connect's error for the next request on that channel), so
    /// the registry builds a new client before trying again.
    pub fn is_unavailable(&self) -> bool {
        match self {
            EtcdError::Client(etcd_client::Error::GRpcStatus(status)) => {
                status.code() == tonic::Code::Unavailable
            }
            EtcdError::Client(etcd_client::Error::TransportError(_)) => true,
            _ => false,
        }
    }

    /// The server refused a transaction as too big; a smaller batch will do.
    pub fn is_request_too_large(&self) -> bool {
        match self {
            EtcdError::Client(etcd_client::Error::GRpcStatus(status)) => {
                let msg = status.message();
                msg.contains("too many operations in txn request")
                    || msg.contains("request is too large")
                    || status.code() == tonic::Code::ResourceExhausted
            }
            _ => false,
        }
    }
}

/// The error and its causes on one line: tonic's "transport error" alone
/// says nothing, its sources say "connection refused".
fn describe(error: &etcd_client::Error) -> String {
    let (mut text, mut source): (String, Option<&(dyn std::error::Error + 'static)>) = match error {
        etcd_client::Error::GRpcStatus(status) => {
            let text = match status.code() {
                // tonic reports a failed connection as a synthetic status.
                tonic::Code::Unavailable => format!("etcd unavailable: {}", status.message()),
                _ if status.message().contains("authentication failed") => format!(
                    "etcd refused the credentials: {} (check the username and password)",
                    status.message()
                ),
                tonic::Code::Unauthenticated => format!(
                    "etcd refused the credentials: {} (check the username and password)",
                    status.message()
                ),
                tonic::Code::PermissionDenied => format!(
                    "etcd denied the request: {} (the user needs a role granting read/write on the prefix)",
                    status.message()
                ),
                code => format!("etcd answered {code:?}: {}", status.message()),
            };
            (text, std::error::Error::source(status))
        }
        etcd_client::Error::TransportError(e) => (
            format!("cannot connect to etcd: {e}"),
            std::error::Error::source(e),
        ),
        other => (other.to_string(), None),
    };
    while let Some(cause) = source {
        let cause_text = cause.to_string();
        if !text.contains(&cause_text) {
            text.push_str(": ");
            text.push_str(&cause_text);
        }
        source = cause.source();
    }
    text
}

/// Runs one etcd request, giving up after `limit`.
pub async fn within<T>(
    limit: Duration,
    request: impl Future<Output = Result<T, etcd_client::Error>>,
) -> Result<T, EtcdError> {
    match tokio::time::timeout(limit, request).await {
        Ok(result) => result.map_err(EtcdError::from),
        Err(_) => Err(EtcdError::Timeout(limit)),
    }
}

/// Runs one etcd request, giving up at `deadline` (shutdown uses this).
pub async fn before<T>(
    deadline: Instant,
    request: impl Future<Output = Result<T, etcd_client::Error>>,
) -> Result<T, EtcdError> {
    within(deadline.saturating_duration_since(Instant::now()), request).await
}

/// Builds a client. With credentials this authenticates, so it can fail on
/// a wrong password; without, the connection is made by the first request.
pub async fn connect(config: &ClientConfig) -> Result<Client, EtcdError> {
    // The connect timeout is the channel's (`failover`), so that a member
    // not answering within it counts as refused.
    let mut options = ConnectOptions::new()
        .with_keep_alive(HTTP2_PING_INTERVAL, config.dial_timeout)
        .with_keep_alive_while_idle(true);
    if let Some(credentials) = &config.credentials {
        options = options
            .with_user(
                credentials.username.clone(),
                credentials.password.expose().to_string(),
            )
            .with_auto_token_refresh(true);
    }
    if let Some(tls) = &config.tls {
        let mut tls_options = TlsOptions::new()
            .ca_certificate(Certificate::from_pem(read_tls_file(&tls.ca_file).await?));
        if let Some((cert, key)) = &tls.identity {
            let (cert, key) = tokio::try_join!(read_tls_file(cert), read_tls_file(key))?;
            tls_options = tls_options.identity(Identity::from_pem(cert, key));
        }
        options = options.with_tls(tls_options);
    }
    within(
        config.dial_timeout,
        Client::connect_with_balanced_channel(
            &config.endpoints,
            Some(options),
            failover::Failover {
                connect_timeout: Some(config.dial_timeout),
            },
        ),
    )
    .await
}

/// Reads a TLS file on tokio's blocking pool, not on an async worker. The
/// files are read each time a client is built (a new registry session, each
/// keepalive reopen, `list`), so a certificate replaced on disk is used by
/// the next client built; a client keeps the bytes it was built with.
async fn read_tls_file(path: &Path) -> Result<Vec<u8>, EtcdError> {
    tokio::fs::read(path)
        .await
        .map_err(|source| EtcdError::TlsFile {
            path: path.display().to_string(),
            source,
        })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::TlsConfig;

    fn config(tls: TlsConfig) -> ClientConfig {
        ClientConfig {
            endpoints: vec!["127.0.0.1:1".into()],
            dial_timeout: Duration::from_secs(1),
            credentials: None,
            tls: Some(tls),
        }
    }

    /// Each TLS file, missing or a folder: the error names it and says why,
    /// before any connection is tried.
    #[tokio::test]
    async fn an_unreadable_tls_file_is_named_with_the_reason() {
        let dir = tempfile::tempdir().unwrap();
        let present = dir.path().join("present.pem");
        std::fs::write(&present, "-----BEGIN CERTIFICATE-----\n").unwrap();
        let missing = dir.path().join("missing.pem");
        let folder = dir.path().to_path_buf();
        let tls = |ca: &Path, identity: Option<(&Path, &Path)>| TlsConfig {
            ca_file: ca.to_path_buf(),
            identity: identity.map(|(c, k)| (c.to_path_buf(), k.to_path_buf())),
        };
        for (tls, culprit, reason) in [
            (tls(&missing, None), &missing, "No such file"),
            (tls(&folder, None), &folder, "directory"),
            (
                tls(&present, Some((&missing, &present))),
                &missing,
                "No such file",
            ),
            (
                tls(&present, Some((&present, &missing))),
                &missing,
                "No such file",
            ),
        ] {
            let Err(error) = connect(&config(tls)).await else {
                panic!("connected without reading {}", culprit.display());
            };
            let text = error.to_string();
            assert!(
                text.starts_with(&format!("cannot read {}: ", culprit.display()))
                    && text.contains(reason),
                "{text}"
            );
        }
    }
}
