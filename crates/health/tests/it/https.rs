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
        tls_verify: true,
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

/// What one TLS connection brought: the SNI the client sent and the request's `Host`.
type Seen = Arc<std::sync::Mutex<Vec<(Option<String>, Option<String>)>>>;

/// A TLS server presenting `chain` (leaf first) that answers "secure ok" and records, per
/// request, the SNI and the Host header it got.
async fn start_recording_tls_app(
    chain: Vec<CertificateDer<'static>>,
    key: PrivateKeyDer<'static>,
) -> (std::net::SocketAddr, Seen) {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .expect("protocol versions")
        .with_no_client_auth()
        .with_single_cert(chain, key)
        .expect("server config");
    let acceptor = TlsAcceptor::from(Arc::new(config));
    let seen: Seen = Arc::default();
    let (listener, address) = loopback_listener().await;
    let record = Arc::clone(&seen);
    accept_each(listener, move |stream| {
        let (acceptor, record) = (acceptor.clone(), Arc::clone(&record));
        async move {
            let Ok(stream) = acceptor.accept(stream).await else {
                return;
            };
            let sni = stream.get_ref().1.server_name().map(str::to_string);
            let service = service_fn(move |request: Request<hyper::body::Incoming>| {
                let host = request
                    .headers()
                    .get("host")
                    .and_then(|h| h.to_str().ok())
                    .map(str::to_string);
                record.lock().expect("lock").push((sni.clone(), host));
                async { Ok::<_, Infallible>(Response::new(Full::new(Bytes::from("secure ok")))) }
            });
            let _ = http1::Builder::new()
                .serve_connection(TokioIo::new(stream), service)
                .await;
        }
    });
    (address, seen)
}

/// A CA, and a certificate it issues for `names` valid from `not_before` to `not_after`; the
/// CA's PEM is written to `ca_path`.
fn issue(
    names: &[&str],
    not_before: (i32, u8, u8),
    not_after: (i32, u8, u8),
    ca_path: &std::path::Path,
) -> (Vec<CertificateDer<'static>>, PrivateKeyDer<'static>) {
    let ca_key = rcgen::KeyPair::generate().expect("CA key");
    let mut ca = rcgen::CertificateParams::new(Vec::<String>::new()).expect("CA params");
    ca.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    ca.distinguished_name.push(rcgen::DnType::CommonName, "Health test CA");
    ca.key_usages = vec![
        rcgen::KeyUsagePurpose::KeyCertSign,
        rcgen::KeyUsagePurpose::DigitalSignature,
    ];
    let ca = ca.self_signed(&ca_key).expect("CA");
    std::fs::write(ca_path, ca.pem()).expect("write CA");
    let leaf_key = rcgen::KeyPair::generate().expect("leaf key");
    let mut leaf =
        rcgen::CertificateParams::new(names.iter().map(|n| n.to_string()).collect::<Vec<_>>()).expect("leaf params");
    leaf.not_before = rcgen::date_time_ymd(not_before.0, not_before.1, not_before.2);
    leaf.not_after = rcgen::date_time_ymd(not_after.0, not_after.1, not_after.2);
    let leaf = leaf.signed_by(&leaf_key, &ca, &ca_key).expect("leaf");
    let key = PrivateKeyDer::Pkcs8(rustls::pki_types::PrivatePkcs8KeyDer::from(leaf_key.serialize_der()));
    (vec![leaf.der().clone(), ca.der().clone()], key)
}

fn https_check(url: String, ca_file: Option<String>, tls_verify: bool, host: Option<&str>) -> ProbeKind {
    let mut headers = BTreeMap::new();
    if let Some(host) = host {
        headers.insert("Host".to_string(), host.to_string());
    }
    ProbeKind::Http {
        url,
        method: "GET".into(),
        expect_status: Some(200),
        body_contains: Some("secure ok".into()),
        headers,
        ca_file,
        tls_verify,
    }
}

#[tokio::test]
async fn an_expired_certificate_fails_unless_verification_is_off() {
    let dir = tempfile::tempdir().expect("temporary directory");
    let ca_path = dir.path().join("ca.pem");
    let (chain, key) = issue(&["shop.example"], (2000, 1, 1), (2001, 1, 1), &ca_path);
    let (address, seen) = start_recording_tls_app(chain, key).await;
    let url = format!("https://127.0.0.1:{}/health", address.port());
    let ca = Some(ca_path.display().to_string());

    // Verified against its CA, by the Host header's name: the dates fail it.
    let host = format!("shop.example:{}", address.port());
    let expired = probe(&spec(https_check(url.clone(), ca.clone(), true, Some(&host)))).await;
    assert!(!expired.success, "{expired:?}");
    assert!(
        expired.detail.contains("TLS handshake") && expired.detail.contains("certificate expired"),
        "{}",
        expired.detail
    );
    // Against the process's roots (no ca_file), by IP: failed too (dates are checked first).
    let unknown = probe(&spec(https_check(url.clone(), None, true, None))).await;
    assert!(
        !unknown.success && unknown.detail.contains("TLS handshake"),
        "{unknown:?}"
    );

    // tls_verify = false: any certificate (Route 53's HTTPS checks), by IP and by name.
    let unverified = probe(&spec(https_check(url.clone(), None, false, None))).await;
    assert!(unverified.success, "{unverified:?}");
    assert_eq!(unverified.detail, "HTTP 200, body contains 'secure ok'");
    let named = probe(&spec(https_check(url, None, false, Some(&host)))).await;
    assert!(named.success, "{named:?}");
    let seen = seen.lock().expect("lock").clone();
    assert_eq!(
        seen,
        vec![
            (None, Some(format!("127.0.0.1:{}", address.port()))),
            (Some("shop.example".to_string()), Some(host)),
        ],
        "no SNI for an IP address; the Host header's name, without its port, as SNI"
    );
}

#[tokio::test]
async fn the_host_header_names_the_tls_server() {
    let dir = tempfile::tempdir().expect("temporary directory");
    let ca_path = dir.path().join("ca.pem");
    // A certificate for the site's name only, reached by IP (as a vantage path maps it).
    let (chain, key) = issue(&["shop.example"], (2020, 1, 1), (2999, 1, 1), &ca_path);
    let (address, seen) = start_recording_tls_app(chain, key).await;
    let url = format!("https://127.0.0.1:{}/health", address.port());
    let ca = Some(ca_path.display().to_string());

    let by_ip = probe(&spec(https_check(url.clone(), ca.clone(), true, None))).await;
    assert!(!by_ip.success, "{by_ip:?}");
    assert!(by_ip.detail.contains("not valid for name"), "{}", by_ip.detail);

    for host in ["shop.example", "shop.example:443", "SHOP.example"] {
        let by_host = probe(&spec(https_check(url.clone(), ca.clone(), true, Some(host)))).await;
        assert!(by_host.success, "{host}: {by_host:?}");
    }
    let other = probe(&spec(https_check(url, ca, true, Some("other.example")))).await;
    assert!(!other.success, "{other:?}");
    assert!(
        other.detail.contains("as other.example") && other.detail.contains("not valid for name"),
        "{}",
        other.detail
    );
    let sni: Vec<Option<String>> = seen.lock().expect("lock").iter().map(|(sni, _)| sni.clone()).collect();
    assert_eq!(
        sni,
        vec![
            Some("shop.example".to_string()),
            Some("shop.example".to_string()),
            Some("shop.example".to_string())
        ]
    );
}
