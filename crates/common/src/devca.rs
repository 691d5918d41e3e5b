//! A private certificate authority for a lab or a benchmark on one machine: a CA certificate
//! and one certificate it signs for every address the components listen on, usable both as a
//! server certificate and as a client certificate (mutual TLS between regions).
//!
//! Never for production: the CA's key sits on disk next to the certificates, and everything
//! shares one leaf. Production uses the operator's own CA (see the README's security model).
//! ECDSA P-256 keys (rcgen on ring, the provider rustls already uses here).

use std::io::Write;
use std::path::{Path, PathBuf};

/// Names (IP addresses or DNS names) one certificate may carry at most.
pub const SUBJECT_NAMES_MAX: usize = 256;
/// The certificates are valid this long from their creation.
pub const VALIDITY_DAYS: i64 = 365;

/// The files [`generate`] writes into its folder.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DevCaFiles {
    /// The CA certificate: what clients trust (`--ca-file`, `--peer-ca`, `--peer-client-ca`).
    pub ca_cert: PathBuf,
    /// The leaf certificate chain (leaf, then CA) for every address.
    pub cert: PathBuf,
    /// The leaf's private key (mode 0600).
    pub key: PathBuf,
}

impl DevCaFiles {
    /// Where the files of a CA in `dir` are (whether or not they exist yet).
    pub fn in_dir(dir: &Path) -> DevCaFiles {
        DevCaFiles {
            ca_cert: dir.join("ca.pem"),
            cert: dir.join("cert.pem"),
            key: dir.join("key.pem"),
        }
    }

    /// All three files exist.
    pub fn exist(&self) -> bool {
        self.ca_cert.is_file() && self.cert.is_file() && self.key.is_file()
    }
}

/// Creates a CA and a certificate for `names` (each an IP address or a DNS name) in `dir`,
/// replacing any files of an earlier call. The CA's key is not kept: nothing else can be
/// signed with it later.
pub fn generate(dir: &Path, names: &[String]) -> Result<DevCaFiles, String> {
    if names.is_empty() || names.len() > SUBJECT_NAMES_MAX {
        return Err(format!(
            "a certificate needs 1 to {SUBJECT_NAMES_MAX} names, not {}",
            names.len()
        ));
    }
    let now = time::OffsetDateTime::now_utc();
    let not_before = now - time::Duration::days(1);
    let not_after = now + time::Duration::days(VALIDITY_DAYS);
    let fail = |what: &str, e: rcgen::Error| format!("{what}: {e}");

    let ca_key = rcgen::KeyPair::generate().map_err(|e| fail("generating the CA key", e))?;
    let mut ca = rcgen::CertificateParams::default();
    ca.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Constrained(0));
    ca.distinguished_name
        .push(rcgen::DnType::CommonName, "Switchyard development CA");
    ca.key_usages = vec![
        rcgen::KeyUsagePurpose::KeyCertSign,
        rcgen::KeyUsagePurpose::CrlSign,
        rcgen::KeyUsagePurpose::DigitalSignature,
    ];
    ca.not_before = not_before;
    ca.not_after = not_after;
    let ca_cert = ca.self_signed(&ca_key).map_err(|e| fail("signing the CA", e))?;

    let mut leaf = rcgen::CertificateParams::new(names.to_vec()).map_err(|e| fail("the certificate's names", e))?;
    leaf.distinguished_name
        .push(rcgen::DnType::CommonName, names[0].clone());
    leaf.key_usages = vec![
        rcgen::KeyUsagePurpose::DigitalSignature,
        rcgen::KeyUsagePurpose::KeyEncipherment,
    ];
    leaf.extended_key_usages = vec![
        rcgen::ExtendedKeyUsagePurpose::ServerAuth,
        rcgen::ExtendedKeyUsagePurpose::ClientAuth,
    ];
    leaf.not_before = not_before;
    leaf.not_after = not_after;
    let leaf_key = rcgen::KeyPair::generate().map_err(|e| fail("generating the certificate's key", e))?;
    let leaf_cert = leaf
        .signed_by(&leaf_key, &ca_cert, &ca_key)
        .map_err(|e| fail("signing the certificate", e))?;

    std::fs::create_dir_all(dir).map_err(|e| format!("creating {}: {e}", dir.display()))?;
    let files = DevCaFiles::in_dir(dir);
    write(&files.ca_cert, ca_cert.pem().as_bytes(), 0o644)?;
    write(
        &files.cert,
        format!("{}{}", leaf_cert.pem(), ca_cert.pem()).as_bytes(),
        0o644,
    )?;
    write(&files.key, leaf_key.serialize_pem().as_bytes(), 0o600)?;
    Ok(files)
}

/// Writes a file whole through a temporary name, so a reader never sees half of it.
fn write(path: &Path, contents: &[u8], mode: u32) -> Result<(), String> {
    let temporary = path.with_extension("tmp");
    let result = (|| {
        let mut options = std::fs::OpenOptions::new();
        options.write(true).create(true).truncate(true);
        #[cfg(unix)]
        std::os::unix::fs::OpenOptionsExt::mode(&mut options, mode);
        let mut file = options.open(&temporary)?;
        file.write_all(contents)?;
        file.sync_all()?;
        std::fs::rename(&temporary, path)
    })();
    result.map_err(|e| format!("writing {}: {e}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use rustls::client::danger::ServerCertVerifier;
    use rustls::pki_types::pem::PemObject;

    #[test]
    fn the_certificate_verifies_against_the_ca_for_each_of_its_names() {
        let dir = tempfile::tempdir().expect("temp dir");
        let names = vec!["127.0.0.1".to_string(), "localhost".to_string()];
        let files = generate(dir.path(), &names).expect("generate");
        assert!(files.exist());
        let roots = crate::tls_client::read_roots(&files.ca_cert).expect("the CA reads back");
        let chain: Vec<_> = rustls::pki_types::CertificateDer::pem_file_iter(&files.cert)
            .expect("cert file")
            .collect::<Result<_, _>>()
            .expect("certificates");
        assert_eq!(chain.len(), 2, "leaf then CA");
        let provider = std::sync::Arc::new(rustls::crypto::ring::default_provider());
        let verifier =
            rustls::client::WebPkiServerVerifier::builder_with_provider(std::sync::Arc::new(roots), provider)
                .build()
                .expect("verifier");
        let now = rustls::pki_types::UnixTime::now();
        for name in ["127.0.0.1", "localhost"] {
            let server = rustls::pki_types::ServerName::try_from(name).expect("name");
            verifier
                .verify_server_cert(&chain[0], &chain[1..], &server, &[], now)
                .unwrap_or_else(|e| panic!("{name}: {e}"));
        }
        let other = rustls::pki_types::ServerName::try_from("127.0.0.2").expect("name");
        assert!(
            verifier
                .verify_server_cert(&chain[0], &chain[1..], &other, &[], now)
                .is_err()
        );
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(&files.key).expect("key").permissions().mode();
            assert_eq!(mode & 0o077, 0, "the key is private: {mode:o}");
        }
    }

    #[test]
    fn no_names_or_too_many_are_refused() {
        let dir = tempfile::tempdir().expect("temp dir");
        assert!(generate(dir.path(), &[]).is_err());
        let many: Vec<String> = (0..=SUBJECT_NAMES_MAX).map(|i| format!("h{i}.example")).collect();
        assert!(generate(dir.path(), &many).is_err());
    }
}
