//! TLS for HTTPS and DynamoDB probes: rustls with the ring provider, verified against the
//! process's trust (the Mozilla roots plus `--ca-file`, see `common::tls_client`) or, for a
//! check with a `ca_file`, that file's certificates only.

use std::sync::Arc;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName};
use rustls::{ClientConfig, RootCertStore};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;
use tokio_rustls::client::TlsStream;

/// Certificates read from a `ca_file` at most.
const CA_CERTIFICATES_MAX: usize = 1000;

/// A configuration trusting only the certificates of `ca_file` (read on every probe, so a
/// rotated file is picked up).
fn file_config(ca_file: &str) -> Result<Arc<ClientConfig>, String> {
    let mut roots = RootCertStore::empty();
    let certificates = CertificateDer::pem_file_iter(ca_file).map_err(|e| format!("ca_file '{ca_file}': {e}"))?;
    for certificate in certificates.take(CA_CERTIFICATES_MAX) {
        let certificate = certificate.map_err(|e| format!("ca_file '{ca_file}': {e}"))?;
        roots
            .add(certificate)
            .map_err(|e| format!("ca_file '{ca_file}': {e}"))?;
    }
    if roots.is_empty() {
        return Err(format!("ca_file '{ca_file}' holds no PEM certificate"));
    }
    common::tls_client::config_with_roots(roots)
}

/// Runs the TLS handshake over `stream`, verifying the certificate for `host`.
pub(super) async fn connect(
    stream: TcpStream,
    host: &str,
    ca_file: Option<&str>,
) -> Result<TlsStream<TcpStream>, String> {
    let config = match ca_file {
        Some(path) => file_config(path)?,
        None => common::tls_client::process_config(),
    };
    let host = host.trim_start_matches('[').trim_end_matches(']');
    let name = ServerName::try_from(host.to_string()).map_err(|e| format!("TLS server name '{host}': {e}"))?;
    TlsConnector::from(config)
        .connect(name, stream)
        .await
        .map_err(|e| format!("TLS handshake with {host}: {e}"))
}
