//! How the agent trusts the servers it calls over `https://` URLs
//! (DESIGN.md §8): the system's root certificates, plus a private CA (PEM,
//! one or more certificates).
//!
//! - The controller, with `--controller-ca`: the gRPC channel (enrolment,
//!   the sync stream, credential renewal) and artifact downloads.
//! - Peers that requests are forwarded to, with `--peer-ca` (by default the
//!   controller's CA: a fleet's private CA usually signs both).
//!
//! Peers are usually reached by address (a pod IP, a DHCP lease) that no
//! certificate can name ahead of time. `--peer-tls-name` verifies peers'
//! certificates against one fleet-wide name instead, trusting the private
//! CA alone (never the system's roots, which would accept any certificate
//! for that name from a public CA): every node then presents a certificate
//! for that name, signed by the fleet's CA.
//!
//! An agent serving TLS also presents its certificate to the peers it
//! forwards to ([`CaTrust::with_client_identity`]: mutual TLS), which is
//! how a peer tells a forwarding node from a client (`serve::auth`). Such
//! a certificate needs the clientAuth extended key usage (or none).
//!
//! With `--tls-node-cert` the agent uses its node certificate instead
//! ([`CaTrust::with_node_identity`], `crate::node_cert`): it presents it
//! to peers, and verifies each peer against the controller's node CA alone
//! and the name of the node the directory lists for the model
//! (`<node>.node.flotilla.internal`), not the URL's host: a peer that
//! presents another node's certificate, however valid, is refused and
//! counted (`flotilla_inference_peer_identity_refused_total`).
//!
//! Plain `http://` URLs are used as they are, except that an agent with TLS
//! configured never forwards to one (`routing::Routes`). The agent's own
//! servers are configured by `flotilla_tls`.

use std::path::Path;
use std::sync::Arc;

use rustls::pki_types::pem::PemObject;
use tonic::transport::{Certificate, ClientTlsConfig, Endpoint};

use crate::node_cert::{IssuedCertificate, NodeCertificates};

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
    #[error("--peer-tls-name {name:?}: {reason}")]
    FixedName { name: String, reason: String },
    #[error("cannot use {path} as the client certificate for peers: {reason}")]
    ClientIdentity { path: String, reason: String },
    #[error("cannot reach peer {node} with this node's certificate: {reason}")]
    NodeIdentity { node: String, reason: String },
}

/// See the module docs. Cheap to clone.
#[derive(Debug, Clone, Default)]
pub struct CaTrust {
    /// The private CA's PEM, when one was given.
    extra_ca_pem: Option<Arc<Vec<u8>>>,
    /// Servers are verified against this name, not their URL's host.
    fixed_name: Option<Arc<FixedName>>,
    /// The certificate chain and key this agent presents to peers when it
    /// forwards (mutual TLS), so that they know a node is asking.
    client_identity: Option<Arc<ClientIdentity>>,
    /// This node's certificate from the node CA: presented to peers, whose
    /// certificates are verified by node name (see the module docs).
    node_identity: Option<Arc<NodeCertificates>>,
}

/// A client certificate chain and its key, in PEM.
struct ClientIdentity {
    cert_pem: Vec<u8>,
    key_pem: Vec<u8>,
}

impl std::fmt::Debug for ClientIdentity {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never the key.
        formatter
            .debug_struct("ClientIdentity")
            .finish_non_exhaustive()
    }
}

#[derive(Debug)]
struct FixedName {
    name: String,
    /// For reqwest: the private CA's roots, verified against `name`.
    http: rustls::ClientConfig,
}

/// Verifies a certificate as `inner` would for `name`, whatever name the
/// connection was made for: the fleet-wide `--peer-tls-name`, or the DNS
/// name of the node the directory lists ([`VerifyAs::node`]).
#[derive(Debug)]
struct VerifyAs {
    inner: Arc<rustls::client::WebPkiServerVerifier>,
    name: rustls::pki_types::ServerName<'static>,
    /// The peer node checked by its own name: a refusal is counted and
    /// logged (the peer may be another node holding a valid certificate of
    /// its own).
    node: Option<String>,
}

impl rustls::client::danger::ServerCertVerifier for VerifyAs {
    fn verify_server_cert(
        &self,
        end_entity: &rustls::pki_types::CertificateDer<'_>,
        intermediates: &[rustls::pki_types::CertificateDer<'_>],
        _server_name: &rustls::pki_types::ServerName<'_>,
        ocsp_response: &[u8],
        now: rustls::pki_types::UnixTime,
    ) -> Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
        self.inner
            .verify_server_cert(end_entity, intermediates, &self.name, ocsp_response, now)
            .inspect_err(|error| {
                if let Some(node) = &self.node {
                    metrics::counter!("flotilla_inference_peer_identity_refused_total")
                        .increment(1);
                    tracing::warn!(peer = %node, %error,
                        "refusing a peer whose certificate is not the node CA's certificate for the node the directory lists");
                }
            })
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &rustls::pki_types::CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &rustls::pki_types::CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.inner.supported_verify_schemes()
    }
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
            fixed_name: None,
            client_identity: None,
            node_identity: None,
        })
    }

    /// This trust, for peers, by node identity: see the module docs.
    /// Replaces the private CA, the fixed name and the client identity for
    /// peers (the controller's trust is another `CaTrust`).
    pub fn with_node_identity(certificates: Arc<NodeCertificates>) -> Self {
        Self {
            node_identity: Some(certificates),
            ..Self::default()
        }
    }

    /// This node's certificates, when peers are trusted by node identity.
    pub fn node_identity(&self) -> Option<&Arc<NodeCertificates>> {
        self.node_identity.as_ref()
    }

    /// An HTTP client for the peer `node` alone: it trusts the node CA only,
    /// accepts only a certificate naming `node`, and presents this node's
    /// certificate. One per peer, so that a pooled connection verified for
    /// one node is never reused for another at the same address.
    pub fn node_peer_http_client(
        &self,
        node: &str,
        builder: reqwest::ClientBuilder,
    ) -> Result<reqwest::Client, TrustError> {
        let refuse = |reason: String| TrustError::NodeIdentity {
            node: node.to_owned(),
            reason,
        };
        let (certificates, current) = self.node_certificate().map_err(&refuse)?;
        let verifier = VerifyAs::node(current.ca_pem.as_bytes(), node).map_err(&refuse)?;
        let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
        let mut config = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|error| refuse(error.to_string()))?
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(verifier))
            .with_client_cert_resolver(certificates.served());
        config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
        builder
            .tls_backend_preconfigured(config)
            .build()
            .map_err(|error| refuse(error.to_string()))
    }

    /// A gRPC endpoint for the peer `node` at `url`, verified as
    /// [`CaTrust::node_peer_http_client`] verifies (tonic checks the name
    /// it is given against the node CA alone).
    pub fn node_peer_endpoint(&self, url: &str, node: &str) -> Result<Endpoint, TrustError> {
        let refuse = |reason: String| TrustError::NodeIdentity {
            node: node.to_owned(),
            reason,
        };
        let (certificates, current) = self.node_certificate().map_err(&refuse)?;
        if !url.starts_with("https://") {
            return Err(refuse(format!("{url} is not an https:// URL")));
        }
        let tls = ClientTlsConfig::new()
            .ca_certificate(Certificate::from_pem(current.ca_pem.as_bytes()))
            .domain_name(flotilla_tls::node_dns_name(node))
            .identity(tonic::transport::Identity::from_pem(
                current.chain_pem.as_bytes(),
                certificates.key_pem().as_bytes(),
            ));
        Endpoint::from_shared(url.to_owned())
            .and_then(|endpoint| endpoint.tls_config(tls))
            .map_err(|error| refuse(error.to_string()))
    }

    /// This node's certificates and the one it holds now, for talking to
    /// a peer by node name; why not, when it has none.
    fn node_certificate(&self) -> Result<(&NodeCertificates, IssuedCertificate), String> {
        let certificates = self
            .node_identity
            .as_deref()
            .ok_or_else(|| "no node identity configured".to_owned())?;
        let current = certificates
            .current()
            .ok_or_else(|| "this node has no certificate yet".to_owned())?;
        Ok((certificates, current))
    }

    /// The private CA's PEM, when one was given.
    pub fn private_ca_pem(&self) -> Option<&[u8]> {
        self.extra_ca_pem.as_deref().map(Vec::as_slice)
    }

    /// This trust, presenting the certificate `cert` with `key` (PEM) to
    /// the servers it connects to (mutual TLS). Call before
    /// [`CaTrust::verifying_as`], which builds its client configuration
    /// with it.
    pub fn with_client_identity(self, cert: &Path, key: &Path) -> Result<Self, TrustError> {
        let read = |path: &Path| {
            std::fs::read(path).map_err(|source| TrustError::ClientIdentity {
                path: path.display().to_string(),
                reason: source.to_string(),
            })
        };
        let identity = ClientIdentity {
            cert_pem: read(cert)?,
            key_pem: read(key)?,
        };
        // Checked here, so that building clients later cannot fail on it.
        reqwest::Identity::from_pem(&identity.combined_pem()).map_err(|error| {
            TrustError::ClientIdentity {
                path: cert.display().to_string(),
                reason: error.to_string(),
            }
        })?;
        Ok(Self {
            client_identity: Some(Arc::new(identity)),
            ..self
        })
    }

    /// This trust, verifying every server against `name` (a DNS name) and
    /// trusting the private CA alone; see the module docs.
    pub fn verifying_as(self, name: &str) -> Result<Self, TrustError> {
        let refuse = |reason: &str| TrustError::FixedName {
            name: name.to_owned(),
            reason: reason.to_owned(),
        };
        let Some(pem) = &self.extra_ca_pem else {
            return Err(refuse("needs a private CA (--peer-ca or --controller-ca)"));
        };
        let server_name = rustls::pki_types::ServerName::try_from(name.to_owned())
            .map_err(|_| refuse("not a DNS name"))?;
        let mut roots = rustls::RootCertStore::empty();
        for certificate in rustls::pki_types::CertificateDer::pem_slice_iter(pem) {
            let certificate = certificate.map_err(|error| refuse(&error.to_string()))?;
            roots
                .add(certificate)
                .map_err(|error| refuse(&error.to_string()))?;
        }
        let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
        let inner = rustls::client::WebPkiServerVerifier::builder_with_provider(
            Arc::new(roots),
            provider.clone(),
        )
        .build()
        .map_err(|error| refuse(&error.to_string()))?;
        let builder = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|error| refuse(&error.to_string()))?
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(VerifyAs {
                inner,
                name: server_name,
                node: None,
            }));
        let mut http = match &self.client_identity {
            None => builder.with_no_client_auth(),
            Some(identity) => {
                let chain = rustls::pki_types::CertificateDer::pem_slice_iter(&identity.cert_pem)
                    .collect::<Result<Vec<_>, _>>()
                    .map_err(|error| refuse(&error.to_string()))?;
                let key = rustls::pki_types::PrivateKeyDer::from_pem_slice(&identity.key_pem)
                    .map_err(|error| refuse(&error.to_string()))?;
                builder
                    .with_client_auth_cert(chain, key)
                    .map_err(|error| refuse(&error.to_string()))?
            }
        };
        http.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
        Ok(Self {
            fixed_name: Some(Arc::new(FixedName {
                name: name.to_owned(),
                http,
            })),
            ..self
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
        let mut tls = match &self.fixed_name {
            // The private CA alone (set below), for the fixed name.
            Some(fixed) => ClientTlsConfig::new().domain_name(fixed.name.clone()),
            None => ClientTlsConfig::new().with_native_roots(),
        };
        if let Some(pem) = &self.extra_ca_pem {
            tls = tls.ca_certificate(Certificate::from_pem(pem.as_slice()));
        }
        if let Some(identity) = &self.client_identity {
            tls = tls.identity(tonic::transport::Identity::from_pem(
                &identity.cert_pem,
                &identity.key_pem,
            ));
        }
        endpoint.tls_config(tls).map_err(|e| invalid(e.to_string()))
    }

    /// `builder` trusting the private CA too (the system's roots it trusts
    /// already); with a fixed name, the private CA alone, for that name.
    pub fn http_client(&self, mut builder: reqwest::ClientBuilder) -> reqwest::ClientBuilder {
        if let Some(fixed) = &self.fixed_name {
            return builder.tls_backend_preconfigured(fixed.http.clone());
        }
        if let Some(pem) = &self.extra_ca_pem {
            // Parsed once in `load`; cannot fail here.
            for certificate in reqwest::Certificate::from_pem_bundle(pem).unwrap_or_default() {
                builder = builder.add_root_certificate(certificate);
            }
        }
        // Checked in `with_client_identity`; cannot fail here.
        if let Some(identity) = &self.client_identity
            && let Ok(identity) = reqwest::Identity::from_pem(&identity.combined_pem())
        {
            builder = builder.identity(identity);
        }
        builder
    }
}

impl VerifyAs {
    /// Verifies a peer's certificate against the node CA (`ca_pem`) and the
    /// DNS name of `node`, the node the directory lists, whatever host the
    /// connection was made to.
    fn node(ca_pem: &[u8], node: &str) -> Result<Self, String> {
        let name = rustls::pki_types::ServerName::try_from(flotilla_tls::node_dns_name(node))
            .map_err(|_| format!("node name {node:?} makes no DNS name"))?;
        let mut roots = rustls::RootCertStore::empty();
        for certificate in rustls::pki_types::CertificateDer::pem_slice_iter(ca_pem) {
            roots
                .add(certificate.map_err(|error| error.to_string())?)
                .map_err(|error| error.to_string())?;
        }
        let inner = rustls::client::WebPkiServerVerifier::builder_with_provider(
            Arc::new(roots),
            Arc::new(rustls::crypto::aws_lc_rs::default_provider()),
        )
        .build()
        .map_err(|error| error.to_string())?;
        Ok(Self {
            inner,
            name,
            node: Some(node.to_owned()),
        })
    }
}

/// Whether `chain_pem` is a certificate, valid now, that chains to
/// `ca_pem` and names `node` (`<node>.node.flotilla.internal`): what peers
/// check of this node's certificate.
pub fn verify_node_certificate(ca_pem: &[u8], chain_pem: &[u8], node: &str) -> Result<(), String> {
    use rustls::client::danger::ServerCertVerifier as _;
    let verifier = VerifyAs::node(ca_pem, node)?;
    let chain = rustls::pki_types::CertificateDer::pem_slice_iter(chain_pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|error| error.to_string())?;
    let Some((end_entity, intermediates)) = chain.split_first() else {
        return Err("no certificate".to_owned());
    };
    verifier
        .inner
        .verify_server_cert(
            end_entity,
            intermediates,
            &verifier.name,
            &[],
            rustls::pki_types::UnixTime::now(),
        )
        .map(|_| ())
        .map_err(|error| error.to_string())
}

impl ClientIdentity {
    /// Certificate chain then key, as `reqwest::Identity::from_pem` takes.
    fn combined_pem(&self) -> Vec<u8> {
        let mut pem = self.cert_pem.clone();
        if !pem.ends_with(b"\n") {
            pem.push(b'\n');
        }
        pem.extend_from_slice(&self.key_pem);
        pem
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_fixed_peer_name_needs_a_private_ca_and_a_dns_name() {
        let refused = CaTrust::system()
            .verifying_as("flotilla-agent")
            .expect_err("no private CA");
        assert!(
            refused.to_string().contains("needs a private CA"),
            "{refused}"
        );

        let dir = tempfile::tempdir().expect("temporary directory");
        let ca = dir.path().join("ca.pem");
        let key = rcgen::KeyPair::generate().expect("key");
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).expect("params");
        params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        std::fs::write(&ca, params.self_signed(&key).expect("CA").pem()).expect("write");
        let trust = CaTrust::load(Some(&ca)).expect("a CA");
        let refused = trust
            .clone()
            .verifying_as("not a name!")
            .expect_err("not a DNS name");
        assert!(refused.to_string().contains("not a DNS name"), "{refused}");
        let fixed = trust.verifying_as("flotilla-agent").expect("accepted");
        assert!(fixed.endpoint("https://10.1.2.3:50052").is_ok());
    }
}
