//! A receiver's `tls` and `auth`: the files they name, and loading them, which both the
//! validation at load time and the receivers' reloads use, so that `check` refuses exactly
//! what a running receiver would.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::RootCertStore;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::WebPkiClientVerifier;
use serde::{Deserialize, Serialize};

use super::Secret;

/// Server TLS for a receiver; `client_ca_file` also requires client certificates (mTLS).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServerTlsConfig {
    /// PEM certificate chain the receiver presents, leaf first.
    pub cert_file: PathBuf,
    /// PEM private key of that certificate.
    pub key_file: PathBuf,
    /// PEM CA(s) a client's certificate must be signed by; clients without one are refused.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client_ca_file: Option<PathBuf>,
}

/// Bearer-token authentication for a receiver's span intake.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ReceiverAuthConfig {
    /// File holding the token clients send as `Authorization: Bearer <token>`; re-read
    /// when it changes, so a rotation needs no restart.
    pub bearer_token_file: PathBuf,
}

/// A file of a receiver's `tls` or `auth` that cannot be used: which key, and why.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{field}: {message}")]
pub struct SecurityFileError {
    /// The key under `tls` or `auth`, e.g. `key_file`.
    pub field: &'static str,
    /// What is wrong and what to do; names the file, never its contents.
    pub message: String,
}

impl SecurityFileError {
    fn new(field: &'static str, message: String) -> Self {
        Self { field, message }
    }
}

impl ReceiverAuthConfig {
    /// The token in `bearer_token_file`, surrounding whitespace (the final newline) trimmed.
    pub fn read_token(&self) -> Result<Secret, SecurityFileError> {
        let field = "bearer_token_file";
        let path = &self.bearer_token_file;
        let bytes = std::fs::read(path).map_err(|e| {
            SecurityFileError::new(
                field,
                format!(
                    "cannot read {}: {e}; point bearer_token_file at a file the agent can read",
                    path.display()
                ),
            )
        })?;
        let token = bytes.trim_ascii();
        if token.is_empty() {
            return Err(SecurityFileError::new(
                field,
                format!(
                    "{} holds no token; write the token into it (surrounding whitespace is ignored)",
                    path.display()
                ),
            ));
        }
        if token.iter().any(|b| !b.is_ascii_graphic()) {
            return Err(SecurityFileError::new(
                field,
                format!(
                    "the token in {} holds spaces or characters a header cannot carry; use printable ASCII only",
                    path.display()
                ),
            ));
        }
        // Only ASCII graphic bytes are left, so this is the text as written.
        Ok(Secret::new(String::from_utf8_lossy(token)))
    }
}

impl ServerTlsConfig {
    /// The files this config is made of, to watch for changes.
    pub fn files(&self) -> Vec<PathBuf> {
        let mut files = vec![self.cert_file.clone(), self.key_file.clone()];
        files.extend(self.client_ca_file.clone());
        files
    }

    /// Reads the files into a server config offering HTTP/2 and HTTP/1.1 by ALPN: fails
    /// when a file cannot be read or parsed, or the key is not the certificate's.
    pub fn load(&self) -> Result<rustls::ServerConfig, SecurityFileError> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let certs = read_certs("cert_file", &self.cert_file)?;
        let key = read_key(&self.key_file)?;
        let builder = rustls::ServerConfig::builder_with_provider(Arc::clone(&provider))
            .with_safe_default_protocol_versions()
            .map_err(|e| SecurityFileError::new("cert_file", format!("cannot set up TLS: {e}")))?;
        let builder = match &self.client_ca_file {
            None => builder.with_no_client_auth(),
            Some(ca_file) => {
                let field = "client_ca_file";
                let mut roots = RootCertStore::empty();
                for cert in read_certs(field, ca_file)? {
                    roots.add(cert).map_err(|e| {
                        SecurityFileError::new(
                            field,
                            format!(
                                "{} holds an unusable CA certificate: {e}",
                                ca_file.display()
                            ),
                        )
                    })?;
                }
                let verifier =
                    WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider)
                        .build()
                        .map_err(|e| {
                            SecurityFileError::new(
                                field,
                                format!(
                                    "cannot verify clients with the CA(s) in {}: {e}",
                                    ca_file.display()
                                ),
                            )
                        })?;
                builder.with_client_cert_verifier(verifier)
            }
        };
        let mut config = builder.with_single_cert(certs, key).map_err(|e| {
            let message = match e {
                rustls::Error::InconsistentKeys(_) => format!(
                    "the key in {} is not the key of the certificate in {}; give the key the certificate was issued for",
                    self.key_file.display(),
                    self.cert_file.display()
                ),
                e => format!(
                    "{} cannot be used with the certificate in {}: {e}",
                    self.key_file.display(),
                    self.cert_file.display()
                ),
            };
            SecurityFileError::new("key_file", message)
        })?;
        config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
        Ok(config)
    }
}

fn read_file(field: &'static str, path: &Path) -> Result<Vec<u8>, SecurityFileError> {
    std::fs::read(path).map_err(|e| {
        SecurityFileError::new(
            field,
            format!(
                "cannot read {}: {e}; point {field} at a PEM file the agent can read",
                path.display()
            ),
        )
    })
}

fn read_certs(
    field: &'static str,
    path: &Path,
) -> Result<Vec<CertificateDer<'static>>, SecurityFileError> {
    let pem = read_file(field, path)?;
    let certs: Vec<_> = CertificateDer::pem_slice_iter(&pem)
        .collect::<Result<_, _>>()
        .map_err(|e| {
            SecurityFileError::new(
                field,
                format!("{} is not a PEM certificate file: {e}", path.display()),
            )
        })?;
    if certs.is_empty() {
        return Err(SecurityFileError::new(
            field,
            format!(
                "{} holds no PEM certificate (-----BEGIN CERTIFICATE-----)",
                path.display()
            ),
        ));
    }
    Ok(certs)
}

fn read_key(path: &Path) -> Result<PrivateKeyDer<'static>, SecurityFileError> {
    let field = "key_file";
    let pem = read_file(field, path)?;
    PrivateKeyDer::from_pem_slice(&pem).map_err(|e| {
        SecurityFileError::new(
            field,
            format!("{} holds no usable PEM private key: {e}", path.display()),
        )
    })
}
