//! TLS for the uplink: rustls with the `ring` provider, the broker checked against the
//! profile's CA, and this device proven by its client certificate.

use std::path::Path;
use std::sync::Arc;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};

#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("{}: {message}", path.display())]
    File { path: std::path::PathBuf, message: String },
    #[error("TLS set-up: {0}")]
    Rustls(#[from] rustls::Error),
}

fn file_err(path: &Path, message: impl std::fmt::Display) -> TlsError {
    TlsError::File { path: path.to_path_buf(), message: message.to_string() }
}

/// Every certificate in a PEM file; an empty file is an error.
pub fn load_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let certs = CertificateDer::pem_file_iter(path)
        .map_err(|e| file_err(path, e))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| file_err(path, e))?;
    if certs.is_empty() {
        return Err(file_err(path, "no PEM certificate in the file"));
    }
    Ok(certs)
}

/// A client configuration that trusts only `ca` and authenticates with `cert` and `key`.
pub fn client_config(ca: &Path, cert: &Path, key: &Path) -> Result<Arc<rustls::ClientConfig>, TlsError> {
    let mut roots = rustls::RootCertStore::empty();
    for c in load_certs(ca)? {
        roots.add(c).map_err(|e| file_err(ca, e))?;
    }
    let chain = load_certs(cert)?;
    let key = PrivateKeyDer::from_pem_file(key).map_err(|e| file_err(key, e))?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_root_certificates(roots)
        .with_client_auth_cert(chain, key)?;
    Ok(Arc::new(config))
}
