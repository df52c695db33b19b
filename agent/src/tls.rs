//! How the agent trusts the servers it calls over `https://` URLs
//! (DESIGN.md §8): the system's root certificates, plus a private CA (PEM,
//! one or more certificates).
//!
//! - The controller, with `--controller-ca`: the gRPC channel (enrolment,
//!   the sync stream, credential renewal) and artifact downloads.
//! - Peers that requests are forwarded to, with `--peer-ca` (by default the
//!   controller's CA: a fleet's private CA usually signs both).
//!
//! Plain `http://` URLs are used as they are. The agent's own servers are
//! configured by `flotilla_tls`.

use std::path::Path;
use std::sync::Arc;

use tonic::transport::{Certificate, ClientTlsConfig, Endpoint};

#[derive(Debug, thiserror::Error)]
pub enum TrustError {
    #[error("cannot read the CA {path}: {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
    #[error("the CA {path} holds no PEM certificate: {reason}")]
    NotPem { path: String, reason: String },
    #[error("invalid url {url:?}: {reason}")]
    InvalidUrl { url: String, reason: String },
}

/// See the module docs. Cheap to clone.
#[derive(Debug, Clone, Default)]
pub struct CaTrust {
    /// The private CA's PEM, when one was given.
    extra_ca_pem: Option<Arc<Vec<u8>>>,
}

impl CaTrust {
    /// The system's roots only.
    pub fn system() -> Self {
        Self::default()
    }

    /// The system's roots plus the certificates in `ca_file`, if given.
    pub fn load(ca_file: Option<&Path>) -> Result<Self, TrustError> {
        let Some(path) = ca_file else {
            return Ok(Self::system());
        };
        let pem = std::fs::read(path).map_err(|source| TrustError::Read {
            path: path.display().to_string(),
            source,
        })?;
        let certificates =
            reqwest::Certificate::from_pem_bundle(&pem).map_err(|error| TrustError::NotPem {
                path: path.display().to_string(),
                reason: error.to_string(),
            })?;
        if certificates.is_empty() {
            return Err(TrustError::NotPem {
                path: path.display().to_string(),
                reason: "no certificate in it".to_owned(),
            });
        }
        Ok(Self {
            extra_ca_pem: Some(Arc::new(pem)),
        })
    }

    /// A gRPC endpoint for `url`, with TLS for `https://`.
    pub fn endpoint(&self, url: &str) -> Result<Endpoint, TrustError> {
        let invalid = |reason: String| TrustError::InvalidUrl {
            url: url.to_owned(),
            reason,
        };
        let endpoint = Endpoint::from_shared(url.to_owned()).map_err(|e| invalid(e.to_string()))?;
        if !url.starts_with("https://") {
            return Ok(endpoint);
        }
        let mut tls = ClientTlsConfig::new().with_native_roots();
        if let Some(pem) = &self.extra_ca_pem {
            tls = tls.ca_certificate(Certificate::from_pem(pem.as_slice()));
        }
        endpoint.tls_config(tls).map_err(|e| invalid(e.to_string()))
    }

    /// `builder` trusting the private CA too (the system's roots it trusts
    /// already).
    pub fn http_client(&self, mut builder: reqwest::ClientBuilder) -> reqwest::ClientBuilder {
        if let Some(pem) = &self.extra_ca_pem {
            // Parsed once in `load`; cannot fail here.
            for certificate in reqwest::Certificate::from_pem_bundle(pem).unwrap_or_default() {
                builder = builder.add_root_certificate(certificate);
            }
        }
        builder
    }
}
