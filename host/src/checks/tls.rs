//! TLS for the probes: the system's trust roots (`rustls-native-certs`,
//! which honours `SSL_CERT_FILE`/`SSL_CERT_DIR`), read once, on a blocking
//! thread of the supervisor's tracker, the first time a check needs them;
//! the rustls client configs (verifying, or `tlsSkipVerify`).

use std::sync::Arc;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::{CryptoProvider, WebPkiSupportedAlgorithms};
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{ClientConfig, DigitallySignedStruct, RootCertStore, SignatureScheme};
use tokio::sync::OnceCell;
use tokio_util::task::TaskTracker;

/// The system's roots, shared by every probe (clones share one load).
#[derive(Clone)]
pub struct TlsRoots {
    tracker: TaskTracker,
    roots: Arc<OnceCell<Arc<RootCertStore>>>,
}

impl TlsRoots {
    pub fn new(tracker: TaskTracker) -> Self {
        TlsRoots {
            tracker,
            roots: Arc::new(OnceCell::new()),
        }
    }

    /// The roots, read on the first call. Certificates the system store
    /// holds but rustls cannot parse are skipped; an empty store makes
    /// every verifying handshake fail with `UnknownIssuer`.
    pub async fn get(&self) -> Result<Arc<RootCertStore>, String> {
        self.roots
            .get_or_try_init(|| async {
                let load = self.tracker.spawn_blocking(|| {
                    let found = rustls_native_certs::load_native_certs();
                    let mut store = RootCertStore::empty();
                    store.add_parsable_certificates(found.certs);
                    if store.is_empty() {
                        tracing::warn!(
                            errors = ?found.errors,
                            "no TLS root certificates found on this system: https and TLS gRPC checks that verify will fail"
                        );
                    }
                    Arc::new(store)
                });
                load.await
                    .map_err(|e| format!("loading the system's TLS roots failed: {e}"))
            })
            .await
            .cloned()
    }
}

fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// A client config for `alpn` (e.g. `http/1.1`): verifying against
/// `roots`, or (`roots` = `None`, `tlsSkipVerify`) accepting any
/// certificate while still checking the handshake's signatures.
pub fn client_config(
    roots: Option<Arc<RootCertStore>>,
    alpn: &[u8],
) -> Result<Arc<ClientConfig>, String> {
    let provider = provider();
    let builder = ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(|e| format!("TLS set-up: {e}"))?;
    let mut config = match roots {
        Some(roots) => builder.with_root_certificates(roots).with_no_client_auth(),
        None => builder
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(SkipVerify(
                provider.signature_verification_algorithms,
            )))
            .with_no_client_auth(),
    };
    config.alpn_protocols = vec![alpn.to_vec()];
    Ok(Arc::new(config))
}

/// `tlsSkipVerify`: any certificate, any name; the handshake's signatures
/// are still checked (so the peer holds the key of what it presented).
#[derive(Debug)]
struct SkipVerify(WebPkiSupportedAlgorithms);

impl ServerCertVerifier for SkipVerify {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.0)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.0)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.supported_schemes()
    }
}

#[cfg(test)]
impl TlsRoots {
    /// Roots given by a test instead of the system's.
    pub fn preloaded(tracker: TaskTracker, roots: RootCertStore) -> Self {
        TlsRoots {
            tracker,
            roots: Arc::new(OnceCell::new_with(Some(Arc::new(roots)))),
        }
    }
}
