//! HTTPS probes against a rustls server whose certificate a private CA made with `openssl` issued.

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::sync::Arc;

use bytes::Bytes;
use http_body_util::Full;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use tokio_rustls::TlsAcceptor;

use health::ProbeKind;
use health::probe::probe;

use crate::support::{accept_each, find_binary, loopback_listener, skip, spec};

async fn start_tls_app(cert: &std::path::Path, key: &std::path::Path) -> std::net::SocketAddr {
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(cert)
        .expect("read certificate")
        .collect::<Result<_, _>>()
        .expect("parse certificate");
    let key = PrivateKeyDer::from_pem_file(key).expect("read key");
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .expect("protocol versions")
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .expect("server config");
    let acceptor = TlsAcceptor::from(Arc::new(config));
    let (listener, address) = loopback_listener().await;
    accept_each(listener, move |stream| {
        let acceptor = acceptor.clone();
        async move {
            let Ok(stream) = acceptor.accept(stream).await else {
                return;
            };
            let service = service_fn(|_request: Request<hyper::body::Incoming>| async {
                Ok::<_, Infallible>(Response::new(Full::new(Bytes::from("secure ok"))))
            });
            let _ = http1::Builder::new()
                .serve_connection(TokioIo::new(stream), service)
                .await;
        }
    });
    address
}

fn https(url: String, ca_file: Option<String>) -> ProbeKind {
    ProbeKind::Http {
        url,
        method: "GET".into(),
        expect_status: Some(200),
        body_contains: Some("secure ok".into()),
        headers: BTreeMap::new(),
        ca_file,
    }
}

#[tokio::test]
async fn https_probe_verifies_the_certificate() {
    let Some(openssl) = find_binary("openssl") else {
        return skip("openssl", "openssl");
    };
    let dir = tempfile::tempdir().expect("temporary directory");
    let path = |name: &str| dir.path().join(name).display().to_string();
    let (cert, key) = (dir.path().join("cert.pem"), dir.path().join("key.pem"));
    std::fs::write(
        dir.path().join("leaf.ext"),
        "subjectAltName=DNS:localhost,IP:127.0.0.1\nbasicConstraints=CA:FALSE\n",
    )
    .expect("write extensions");
    let ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"];
    // A private CA, and a server certificate it issues.
    let steps: Vec<Vec<String>> = vec![
        ["req", "-x509"]
            .iter()
            .chain(&ec)
            .map(|s| s.to_string())
            .chain(
                [
                    "-subj",
                    "/CN=Switchyard Test CA",
                    "-days",
                    "2",
                    "-keyout",
                    &path("ca.key"),
                    "-out",
                    &path("ca.pem"),
                ]
                .map(String::from),
            )
            .collect(),
        ["req"]
            .iter()
            .chain(&ec)
            .map(|s| s.to_string())
            .chain(
                [
                    "-subj",
                    "/CN=localhost",
                    "-keyout",
                    &path("key.pem"),
                    "-out",
                    &path("leaf.csr"),
                ]
                .map(String::from),
            )
            .collect(),
        [
            "x509",
            "-req",
            "-in",
            &path("leaf.csr"),
            "-CA",
            &path("ca.pem"),
            "-CAkey",
            &path("ca.key"),
            "-CAcreateserial",
            "-days",
            "2",
            "-extfile",
            &path("leaf.ext"),
            "-out",
            &path("cert.pem"),
        ]
        .map(String::from)
        .to_vec(),
    ];
    for step in steps {
        let output = std::process::Command::new(&openssl)
            .args(&step)
            .output()
            .expect("run openssl");
        assert!(
            output.status.success(),
            "openssl {step:?}: {}",
            String::from_utf8_lossy(&output.stderr)
        );
    }
    let address = start_tls_app(&cert, &key).await;
    let ca_file = Some(path("ca.pem"));

    let trusted = probe(&spec(https(
        format!("https://127.0.0.1:{}/", address.port()),
        ca_file.clone(),
    )))
    .await;
    assert!(trusted.success, "{trusted:?}");
    assert_eq!(trusted.detail, "HTTP 200, body contains 'secure ok'");
    let by_name = probe(&spec(https(format!("https://localhost:{}/", address.port()), ca_file))).await;
    assert!(by_name.success, "{by_name:?}");

    // The Mozilla roots do not know a self-signed certificate.
    let untrusted = probe(&spec(https(format!("https://127.0.0.1:{}/", address.port()), None))).await;
    assert!(!untrusted.success);
    assert!(untrusted.detail.contains("TLS handshake"), "{}", untrusted.detail);
    assert!(untrusted.detail.contains("UnknownIssuer"), "{}", untrusted.detail);

    let missing = probe(&spec(https(
        format!("https://127.0.0.1:{}/", address.port()),
        Some(dir.path().join("nope.pem").display().to_string()),
    )))
    .await;
    assert!(!missing.success);
    assert!(missing.detail.contains("nope.pem"), "{}", missing.detail);
}
