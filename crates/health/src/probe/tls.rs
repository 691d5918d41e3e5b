//! TLS for HTTPS and DynamoDB probes: rustls with the ring provider, verified against the
//! process's trust (the Mozilla roots plus `--ca-file`, see `common::tls_client`) or, for a
//! check with a `ca_file`, that file's certificates only — or, for a check with
//! `tls_verify = false`, not verified at all (Route 53's HTTPS health checks do not validate
//! certificates either; HAProxy's `verify none`). The handshake's own signatures are still
//! checked, so the server must hold the key of the certificate it shows.

use std::sync::{Arc, OnceLock};

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{ClientConfig, DigitallySignedStruct, RootCertStore, SignatureScheme};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;
use tokio_rustls::client::TlsStream;

use crate::spec::host_header_name;

/// Certificates read from a `ca_file` at most.
const CA_CERTIFICATES_MAX: usize = 1000;

/// How a probe's TLS handshake is set up.
#[derive(Debug, Clone, Copy)]
pub(super) struct Settings<'a> {
    /// Trust only this PEM file's certificates (instead of the process's trust).
    pub(super) ca_file: Option<&'a str>,
    /// Verify the server's certificate (chain, validity dates, name).
    pub(super) verify: bool,
    /// The name sent as SNI and verified against the certificate, when it is not the host the
    /// probe connects to: the name of a configured `Host` header (HAProxy's `check-sni`).
    pub(super) server_name: Option<&'a str>,
}

impl Default for Settings<'_> {
    fn default() -> Self {
        Settings {
            ca_file: None,
            verify: true,
            server_name: None,
        }
    }
}

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

/// Accepts any certificate, for `tls_verify = false`; the handshake signatures are verified
/// with the provider's algorithms as usual.
#[derive(Debug)]
struct AnyCertificate(Arc<CryptoProvider>);

impl ServerCertVerifier for AnyCertificate {
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
        certificate: &CertificateDer<'_>,
        signature: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            certificate,
            signature,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        certificate: &CertificateDer<'_>,
        signature: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            certificate,
            signature,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

/// The configuration of checks with `tls_verify = false`, built once.
fn unverified_config() -> Result<Arc<ClientConfig>, String> {
    static CONFIG: OnceLock<Arc<ClientConfig>> = OnceLock::new();
    if let Some(config) = CONFIG.get() {
        return Ok(Arc::clone(config));
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = ClientConfig::builder_with_provider(Arc::clone(&provider))
        .with_safe_default_protocol_versions()
        .map_err(|e| format!("TLS setup: {e}"))?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(AnyCertificate(provider)))
        .with_no_client_auth();
    Ok(Arc::clone(CONFIG.get_or_init(|| Arc::new(config))))
}

/// Runs the TLS handshake over `stream` to `host` (the host the probe connected to), sending
/// and verifying `settings.server_name` instead when one is given.
pub(super) async fn connect(
    stream: TcpStream,
    host: &str,
    settings: Settings<'_>,
) -> Result<TlsStream<TcpStream>, String> {
    let config = match (settings.verify, settings.ca_file) {
        (false, _) => unverified_config()?,
        (true, Some(path)) => file_config(path)?,
        (true, None) => common::tls_client::process_config(),
    };
    let host = host.trim_start_matches('[').trim_end_matches(']');
    let name = settings.server_name.map_or(host, host_header_name);
    let server_name = ServerName::try_from(name.to_string()).map_err(|e| format!("TLS server name '{name}': {e}"))?;
    let shown = if name == host {
        host.to_string()
    } else {
        format!("{host} (as {name})")
    };
    TlsConnector::from(config)
        .connect(server_name, stream)
        .await
        .map_err(|e| format!("TLS handshake with {shown}: {e}"))
}

#[cfg(test)]
mod tests {
    use crate::spec::host_header_name;

    #[test]
    fn host_header_names_lose_their_port() {
        for (value, name) in [
            ("shop.example", "shop.example"),
            ("shop.example:8443", "shop.example"),
            (" Shop.Example ", "Shop.Example"),
            ("192.0.2.7:443", "192.0.2.7"),
            ("[2001:db8::1]:443", "2001:db8::1"),
            ("[2001:db8::1]", "2001:db8::1"),
            ("2001:db8::1", "2001:db8::1"),
        ] {
            assert_eq!(host_header_name(value), name, "{value}");
        }
    }
}
