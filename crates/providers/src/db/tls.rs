//! TLS from the promotion steps to their databases (`mysql_promote`, `postgres_promote`,
//! `redis_promote`): `tls = true` in the step's table, with `ca_file` (a PEM file of the CA
//! certificates that sign the servers' certificates; without it the public Mozilla roots, or
//! for Redis the system's store) and, for servers that require a client certificate,
//! `cert_file` and `key_file` together. The server's certificate is always verified, host
//! name (or IP address) included; there is no switch to turn that off.
//!
//! Every client is rustls on ring: mysql_async's `rustls-tls` (given the files' paths),
//! redis's `tokio-rustls-comp` (given their PEM bytes), and for tokio-postgres our own
//! [`PostgresTls`] connector over tokio-rustls with the configuration of
//! [`common::tls_client::client_config_with_identity`], which also checks the files when the
//! configuration is checked.

use std::future::Future;
use std::io;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use common::tls_client::{ClientIdentity, client_config_with_identity};
use rustls::ClientConfig;
use rustls::pki_types::ServerName;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use toml::Spanned;

use crate::Checker;

/// Largest certificate or key file read, in bytes.
pub const PEM_FILE_BYTES_MAX: u64 = 1024 * 1024;

/// The TLS keys of a step's table (each step's `Settings` has the same four fields, since
/// serde's `flatten` loses toml's spans and `deny_unknown_fields`).
#[derive(Clone, Debug, Default)]
pub struct TlsSettings {
    /// Connect with TLS (the server's certificate verified against `ca_file`).
    pub tls: Option<Spanned<bool>>,
    /// PEM file of CA certificates, relative to the config file's folder.
    pub ca_file: Option<Spanned<PathBuf>>,
    /// Client certificate (PEM chain) for servers that require one; with `key_file`.
    pub cert_file: Option<Spanned<PathBuf>>,
    /// The client certificate's private key (PEM); with `cert_file`.
    pub key_file: Option<Spanned<PathBuf>>,
}

/// Checked TLS settings: the files' absolute paths.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Tls {
    pub ca_file: Option<PathBuf>,
    pub identity: Option<ClientIdentity>,
}

impl TlsSettings {
    /// `Some(None)`: plain TCP; `Some(Some(tls))`: TLS; `None`: a problem was reported.
    pub fn check(&self, what: &str, checker: &mut dyn Checker) -> Option<Option<Tls>> {
        let folder = checker.folder().to_path_buf();
        let resolve = |path: &Spanned<PathBuf>| {
            let p = path.get_ref();
            if p.is_absolute() { p.clone() } else { folder.join(p) }
        };
        let enabled = self.tls.as_ref().is_some_and(|t| *t.get_ref());
        let mut ok = true;
        if !enabled {
            for (key, value) in [
                ("ca_file", &self.ca_file),
                ("cert_file", &self.cert_file),
                ("key_file", &self.key_file),
            ] {
                if let Some(value) = value {
                    checker.error(
                        value.span(),
                        format!("{what}: {key} is set but tls is not on"),
                        format!("add tls = true to connect with TLS, or remove {key}"),
                    );
                    ok = false;
                }
            }
            return ok.then_some(None);
        }
        let identity = match (&self.cert_file, &self.key_file) {
            (Some(cert), Some(key)) => Some(ClientIdentity {
                cert: resolve(cert),
                key: resolve(key),
            }),
            (None, None) => None,
            (Some(one), None) | (None, Some(one)) => {
                checker.error(
                    one.span(),
                    format!("{what}: cert_file and key_file come together"),
                    "give both the client certificate (cert_file) and its key (key_file), or neither".into(),
                );
                return None;
            }
        };
        let ca_file = self.ca_file.as_ref().map(resolve);
        for (key, path) in [
            ("ca_file", self.ca_file.as_ref()),
            ("cert_file", self.cert_file.as_ref()),
            ("key_file", self.key_file.as_ref()),
        ] {
            let Some(path) = path else { continue };
            let resolved = resolve(path);
            match std::fs::metadata(&resolved) {
                Ok(meta) if meta.is_file() && meta.len() <= PEM_FILE_BYTES_MAX => {}
                Ok(meta) if meta.is_file() => {
                    checker.error(
                        path.span(),
                        format!(
                            "{what}: {key} {} is {} bytes, more than {PEM_FILE_BYTES_MAX}",
                            resolved.display(),
                            meta.len()
                        ),
                        format!("point {key} at a PEM file"),
                    );
                    ok = false;
                }
                _ => {
                    checker.error(
                        path.span(),
                        format!("{what}: {key} {} does not exist or is not a file", resolved.display()),
                        format!(
                            "point {key} at a readable PEM file (relative paths start at the config file's folder)"
                        ),
                    );
                    ok = false;
                }
            }
        }
        if !ok {
            return None;
        }
        // Reads and parses every file as the connections will.
        if let Err(problem) = client_config_with_identity(ca_file.as_deref(), identity.as_ref()) {
            let span = self
                .ca_file
                .as_ref()
                .or(self.cert_file.as_ref())
                .map(|v| v.span())
                .or(self.tls.as_ref().map(|v| v.span()))
                .unwrap_or(0..0);
            checker.error(
                span,
                format!("{what}: {problem}"),
                "give PEM files: ca_file with CA certificates, cert_file with the client certificate chain, key_file with its private key".into(),
            );
            return None;
        }
        Some(Some(Tls { ca_file, identity }))
    }
}

impl Tls {
    /// The rustls configuration (for the PostgreSQL connector).
    pub fn client_config(&self) -> Result<Arc<ClientConfig>, String> {
        client_config_with_identity(self.ca_file.as_deref(), self.identity.as_ref())
    }

    /// mysql_async's options: the CA file as its only roots when given.
    pub fn mysql(&self) -> mysql_async::SslOpts {
        let mut options = mysql_async::SslOpts::default();
        if let Some(ca) = &self.ca_file {
            options = options
                .with_root_certs(vec![ca.clone().into()])
                .with_disable_built_in_roots(true);
        }
        if let Some(identity) = &self.identity {
            options = options.with_client_identity(Some(mysql_async::ClientIdentity::new(
                identity.cert.clone().into(),
                identity.key.clone().into(),
            )));
        }
        options
    }

    /// redis's certificates (PEM bytes, read now: a renewed file is used by the next connection).
    pub fn redis(&self) -> Result<redis::TlsCertificates, String> {
        let read = |path: &Path| -> Result<Vec<u8>, String> {
            std::fs::read(path).map_err(|e| format!("cannot read {}: {e}", path.display()))
        };
        let client_tls = match &self.identity {
            Some(identity) => Some(redis::ClientTlsConfig {
                client_cert: read(&identity.cert)?,
                client_key: read(&identity.key)?,
            }),
            None => None,
        };
        let root_cert = self.ca_file.as_deref().map(read).transpose()?;
        Ok(redis::TlsCertificates { client_tls, root_cert })
    }
}

/// tokio-postgres's TLS: rustls through tokio-rustls, verifying the server's name as given in
/// the step's `servers` (a name or an IP address).
#[derive(Clone)]
pub struct PostgresTls {
    config: Arc<ClientConfig>,
    host: String,
}

/// [`PostgresTls`] for one connection's host.
#[derive(Clone)]
pub struct PostgresMakeTls {
    config: Arc<ClientConfig>,
}

impl PostgresMakeTls {
    pub fn new(config: Arc<ClientConfig>) -> PostgresMakeTls {
        PostgresMakeTls { config }
    }
}

impl<S> tokio_postgres::tls::MakeTlsConnect<S> for PostgresMakeTls
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    type Stream = PostgresTlsStream<S>;
    type TlsConnect = PostgresTls;
    type Error = io::Error;

    fn make_tls_connect(&mut self, domain: &str) -> io::Result<PostgresTls> {
        Ok(PostgresTls {
            config: Arc::clone(&self.config),
            host: domain.to_string(),
        })
    }
}

impl<S> tokio_postgres::tls::TlsConnect<S> for PostgresTls
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    type Stream = PostgresTlsStream<S>;
    type Error = io::Error;
    type Future = Pin<Box<dyn Future<Output = io::Result<PostgresTlsStream<S>>> + Send>>;

    fn connect(self, stream: S) -> Self::Future {
        Box::pin(async move {
            let name = ServerName::try_from(self.host.clone()).map_err(|e| {
                io::Error::new(
                    io::ErrorKind::InvalidInput,
                    format!("'{}' is not a valid TLS server name: {e}", self.host),
                )
            })?;
            let stream = tokio_rustls::TlsConnector::from(self.config)
                .connect(name, stream)
                .await?;
            Ok(PostgresTlsStream(stream))
        })
    }
}

/// A TLS stream to PostgreSQL (no channel binding: SCRAM-SHA-256 without `-PLUS`).
pub struct PostgresTlsStream<S>(tokio_rustls::client::TlsStream<S>);

impl<S: AsyncRead + AsyncWrite + Unpin> tokio_postgres::tls::TlsStream for PostgresTlsStream<S> {
    fn channel_binding(&self) -> tokio_postgres::tls::ChannelBinding {
        tokio_postgres::tls::ChannelBinding::none()
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> AsyncRead for PostgresTlsStream<S> {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().0).poll_read(cx, buf)
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> AsyncWrite for PostgresTlsStream<S> {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().0).poll_write(cx, buf)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().0).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().0).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::db::test_support::Collect;

    fn check(text: &str, folder: &Path) -> (Option<Option<Tls>>, Vec<String>) {
        let settings: crate::db::redis::Settings =
            toml::from_str(&format!("servers = {{ eu = [\"127.0.0.1\"] }}\n{text}")).expect("parses");
        let mut checker = Collect::new(&["eu"]);
        checker.folder = folder.to_path_buf();
        let tls = TlsSettings {
            tls: settings.tls.clone(),
            ca_file: settings.ca_file.clone(),
            cert_file: settings.cert_file.clone(),
            key_file: settings.key_file.clone(),
        }
        .check("redis_promote step 'cache'", &mut checker);
        (tls, checker.errors)
    }

    #[test]
    fn tls_settings_are_checked_with_the_files() {
        let folder = tempfile::tempdir().expect("tempdir");
        let files = common::devca::generate(folder.path(), &["127.0.0.1".to_string()]).expect("CA");
        assert_eq!(files.ca_cert, folder.path().join("ca.pem"));
        std::fs::write(folder.path().join("junk.pem"), "not a certificate").expect("write");

        assert_eq!(check("", folder.path()), (Some(None), vec![]));
        let (tls, errors) = check("tls = true\nca_file = \"ca.pem\"", folder.path());
        assert_eq!(errors, Vec::<String>::new());
        assert_eq!(
            tls.flatten().and_then(|t| t.ca_file),
            Some(folder.path().join("ca.pem"))
        );
        let (tls, errors) = check(
            "tls = true\ncert_file = \"cert.pem\"\nkey_file = \"key.pem\"",
            folder.path(),
        );
        assert_eq!(errors, Vec::<String>::new());
        assert!(
            tls.flatten()
                .is_some_and(|t| t.identity.is_some() && t.ca_file.is_none())
        );

        let (tls, errors) = check("ca_file = \"ca.pem\"", folder.path());
        assert!(
            tls.is_none() && errors[0].contains("ca_file is set but tls is not on"),
            "{errors:?}"
        );
        let (tls, errors) = check("tls = true\ncert_file = \"ca.pem\"", folder.path());
        assert!(
            tls.is_none() && errors[0].contains("cert_file and key_file come together"),
            "{errors:?}"
        );
        let (tls, errors) = check("tls = true\nca_file = \"missing.pem\"", folder.path());
        assert!(tls.is_none() && errors[0].contains("does not exist"), "{errors:?}");
        let (tls, errors) = check("tls = true\nca_file = \"junk.pem\"", folder.path());
        assert!(tls.is_none() && errors[0].contains("junk.pem"), "{errors:?}");
    }
}
