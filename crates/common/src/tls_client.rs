//! The client side of TLS between Switchyard's components: a connector for hyper-util's pooled
//! client that speaks plain TCP to `http://` URLs and TLS (rustls, ring) to `https://` ones,
//! verifying the server's certificate against a CA file (a private CA, as regions usually use)
//! or, without one, the Mozilla roots.

use std::future::Future;
use std::io;
use std::path::Path;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use hyper::Uri;
use hyper::rt::{Read, ReadBufCursor, Write};
use hyper_util::client::legacy::connect::{Connected, Connection};
use hyper_util::rt::TokioIo;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName};
use rustls::{ClientConfig, RootCertStore};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;
use tokio_rustls::client::TlsStream;

/// Certificates read from a CA file at most.
pub const CA_CERTIFICATES_MAX: usize = 1_000;
/// How long a TCP connect and TLS handshake may take together.
pub const CONNECT_TIMEOUT_MS: u64 = 5_000;

/// The TLS configuration for `https://` URLs: trusting the certificates of `ca_file`, or the
/// Mozilla roots without one.
pub fn client_config(ca_file: Option<&Path>) -> Result<Arc<ClientConfig>, String> {
    client_config_with_identity(ca_file, None)
}

static PROCESS_CONFIG: std::sync::OnceLock<Arc<ClientConfig>> = std::sync::OnceLock::new();

/// Sets what this process's own HTTPS clients (CLI commands, agents, the controller's steps
/// and alerts, drills) trust: the Mozilla roots and, with `ca_file`, a private CA too (the one
/// that signs the controller's, DNS admin's and stores' certificates). Call once at start; a
/// later call changes nothing and says so.
pub fn set_process_ca(ca_file: Option<&Path>) -> Result<(), String> {
    let mut roots = RootCertStore::empty();
    roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
    if let Some(path) = ca_file {
        for certificate in read_roots(path)?.roots {
            roots.roots.push(certificate);
        }
    }
    let config = config_with_roots(roots)?;
    PROCESS_CONFIG
        .set(config)
        .map_err(|_| "the process's TLS trust was already set".to_string())
}

/// The TLS configuration of this process's HTTPS clients: see [`set_process_ca`]; without a
/// call, the Mozilla roots.
pub fn process_config() -> Arc<ClientConfig> {
    Arc::clone(PROCESS_CONFIG.get_or_init(|| {
        let mut roots = RootCertStore::empty();
        roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
        config_with_roots(roots).expect("the ring provider supports the default protocol versions")
    }))
}

/// A client configuration (ring, the safe default protocol versions, no client certificate)
/// trusting `roots`.
pub fn config_with_roots(roots: RootCertStore) -> Result<Arc<ClientConfig>, String> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| format!("TLS setup: {e}"))?
        .with_root_certificates(roots)
        .with_no_client_auth();
    Ok(Arc::new(config))
}

/// A client certificate chain and its key, presented for mutual TLS.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ClientIdentity {
    pub cert: std::path::PathBuf,
    pub key: std::path::PathBuf,
}

/// [`client_config`], presenting `identity` to servers that ask for a client certificate.
pub fn client_config_with_identity(
    ca_file: Option<&Path>,
    identity: Option<&ClientIdentity>,
) -> Result<Arc<ClientConfig>, String> {
    let roots = match ca_file {
        Some(path) => read_roots(path)?,
        None => {
            let mut roots = RootCertStore::empty();
            roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
            roots
        }
    };
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| format!("TLS setup: {e}"))?
        .with_root_certificates(roots);
    let config = match identity {
        None => builder.with_no_client_auth(),
        Some(identity) => {
            use rustls::pki_types::PrivateKeyDer;
            let (cert, key) = (&identity.cert, &identity.key);
            let chain = CertificateDer::pem_file_iter(cert)
                .and_then(|certs| certs.collect::<Result<Vec<_>, _>>())
                .map_err(|e| format!("client certificate {}: {e}", cert.display()))?;
            if chain.is_empty() {
                return Err(format!(
                    "client certificate {} holds no PEM certificate",
                    cert.display()
                ));
            }
            let private =
                PrivateKeyDer::from_pem_file(key).map_err(|e| format!("client key {}: {e}", key.display()))?;
            builder.with_client_auth_cert(chain, private).map_err(|e| {
                format!(
                    "client certificate {} and key {} do not make an identity: {e}",
                    cert.display(),
                    key.display()
                )
            })?
        }
    };
    Ok(Arc::new(config))
}

/// The CA certificates of a PEM file (at most [`CA_CERTIFICATES_MAX`]); an error names the file.
pub fn read_roots(path: &Path) -> Result<RootCertStore, String> {
    let mut roots = RootCertStore::empty();
    let shown = path.display();
    let certificates = CertificateDer::pem_file_iter(path)
        .map_err(|e| format!("CA file {shown}: {e}; give a PEM file of CA certificates"))?;
    for certificate in certificates.take(CA_CERTIFICATES_MAX) {
        let certificate = certificate.map_err(|e| format!("CA file {shown}: {e}"))?;
        roots.add(certificate).map_err(|e| format!("CA file {shown}: {e}"))?;
    }
    if roots.is_empty() {
        return Err(format!("CA file {shown} holds no PEM certificate"));
    }
    Ok(roots)
}

/// A connection made by [`Connector`]: plain TCP or TLS over TCP.
pub enum Stream {
    Plain(TokioIo<TcpStream>),
    Tls(Box<TokioIo<TlsStream<TcpStream>>>),
}

impl Read for Stream {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: ReadBufCursor<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Plain(stream) => Pin::new(stream).poll_read(cx, buf),
            Stream::Tls(stream) => Pin::new(stream.as_mut()).poll_read(cx, buf),
        }
    }
}

impl Write for Stream {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Stream::Plain(stream) => Pin::new(stream).poll_write(cx, buf),
            Stream::Tls(stream) => Pin::new(stream.as_mut()).poll_write(cx, buf),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Plain(stream) => Pin::new(stream).poll_flush(cx),
            Stream::Tls(stream) => Pin::new(stream.as_mut()).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Plain(stream) => Pin::new(stream).poll_shutdown(cx),
            Stream::Tls(stream) => Pin::new(stream.as_mut()).poll_shutdown(cx),
        }
    }
}

impl Connection for Stream {
    fn connected(&self) -> Connected {
        Connected::new()
    }
}

/// Connects to `http://` URLs in plain TCP and to `https://` ones with TLS, verified by `tls`.
#[derive(Clone)]
pub struct Connector {
    tls: Arc<ClientConfig>,
    connect_timeout_ms: u64,
}

impl Connector {
    /// A connector whose TCP connect and TLS handshake take at most [`CONNECT_TIMEOUT_MS`].
    pub fn new(tls: Arc<ClientConfig>) -> Connector {
        Connector {
            tls,
            connect_timeout_ms: CONNECT_TIMEOUT_MS,
        }
    }

    /// The same with another bound on connect and handshake together (a drill's clients must
    /// see a dead region fast).
    pub fn with_connect_timeout_ms(mut self, timeout_ms: u64) -> Connector {
        self.connect_timeout_ms = timeout_ms.max(1);
        self
    }
}

impl tower_service::Service<Uri> for Connector {
    type Response = Stream;
    type Error = io::Error;
    type Future = Pin<Box<dyn Future<Output = Result<Stream, io::Error>> + Send>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), io::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, uri: Uri) -> Self::Future {
        let tls = Arc::clone(&self.tls);
        let timeout_ms = self.connect_timeout_ms;
        Box::pin(async move {
            let https = match uri.scheme_str() {
                Some("https") => true,
                Some("http") => false,
                other => {
                    return Err(io::Error::new(
                        io::ErrorKind::InvalidInput,
                        format!("scheme {other:?} of {uri}: use http:// or https://"),
                    ));
                }
            };
            let host = uri
                .host()
                .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, format!("{uri} names no host")))?
                .trim_start_matches('[')
                .trim_end_matches(']')
                .to_string();
            let port = uri.port_u16().unwrap_or(if https { 443 } else { 80 });
            let connect = async {
                let tcp = TcpStream::connect((host.as_str(), port)).await?;
                tcp.set_nodelay(true)?;
                if !https {
                    return Ok(Stream::Plain(TokioIo::new(tcp)));
                }
                let name = ServerName::try_from(host.clone()).map_err(|e| {
                    io::Error::new(io::ErrorKind::InvalidInput, format!("TLS server name '{host}': {e}"))
                })?;
                let stream = TlsConnector::from(tls)
                    .connect(name, tcp)
                    .await
                    .map_err(|e| io::Error::new(e.kind(), format!("TLS handshake with {host}:{port}: {e}")))?;
                Ok(Stream::Tls(Box::new(TokioIo::new(stream))))
            };
            tokio::time::timeout(Duration::from_millis(timeout_ms), connect)
                .await
                .map_err(|_| {
                    io::Error::new(
                        io::ErrorKind::TimedOut,
                        format!("{host}:{port}: no connection within {timeout_ms} ms"),
                    )
                })?
        })
    }
}
