//! The fleet's node certificate authority (DESIGN.md §8, issue 16): each
//! node gets a short-lived X.509 certificate for its own name at enrolment,
//! renewed with its credential, which peers verify when they talk mutual
//! TLS (`flotilla_tls::node_dns_name`).
//!
//! What is persisted: the CA's certificate and key, in PEM, either given
//! (`--node-ca-cert`/`--node-ca-key`: an organisation's intermediate, or
//! the same pair for every replica) or created once in the data directory
//! (`node-ca.pem`, and `node-ca.key` with mode 0600 like the JWT keys).
//! Issued certificates are not stored: the sync hub keeps in memory when
//! the certificate it issued on a node's stream expires (`fleet::hub`).
//!
//! A certificate signing request (PKCS#10) is parsed and its signature
//! verified ([`NodeCsr`]); only its public key is used. The names and
//! extensions it asks for are ignored: the certificate names the enrolled
//! node alone, with serverAuth and clientAuth, and lives `--node-cert-ttl`.

use std::path::{Path, PathBuf};
use std::time::Duration;

use rcgen::{
    BasicConstraints, CertificateParams, CertificateSigningRequestParams, DistinguishedName,
    DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair, KeyUsagePurpose, SanType, SerialNumber,
};
use time::OffsetDateTime;

use crate::domain::NodeName;

/// Longest signing request accepted, in PEM bytes (a P-256 request is
/// about 500, an RSA-4096 one about 1,700).
pub const MAX_CSR_PEM_LEN: usize = 8 * 1024;

/// Default lifetime of a node certificate.
pub const DEFAULT_NODE_CERT_TTL: Duration = Duration::from_secs(24 * 3600);

/// How far back a certificate's validity starts, for nodes whose clocks
/// run a little behind the controller's.
const BACKDATE: Duration = Duration::from_secs(300);

/// Lifetime of a CA the controller creates itself.
const CREATED_CA_LIFETIME: Duration = Duration::from_secs(10 * 365 * 24 * 3600);

/// File names of a created CA in the data directory.
pub const CA_CERT_FILE: &str = "node-ca.pem";
pub const CA_KEY_FILE: &str = "node-ca.key";

#[derive(Debug, thiserror::Error)]
pub enum NodeCaError {
    #[error("cannot read the node CA {what} {}: {source}", path.display())]
    Read {
        what: &'static str,
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("cannot write the node CA {what} {}: {source}", path.display())]
    Write {
        what: &'static str,
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("the node CA {} and {} do not load: {reason}", cert.display(), key.display())]
    Invalid {
        cert: PathBuf,
        key: PathBuf,
        reason: String,
    },
    #[error("cannot create a node CA: {0}")]
    Create(String),
    #[error(
        "{} exists without {}: restore it, or remove both to create a new node CA",
        present.display(), missing.display()
    )]
    HalfCreated { present: PathBuf, missing: PathBuf },
}

/// Why a signing request or an issuance was refused.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum CsrError {
    #[error("certificate_signing_request is {len} bytes; at most {MAX_CSR_PEM_LEN} are accepted")]
    TooLong { len: usize },
    #[error(
        "certificate_signing_request is not a PKCS#10 request in PEM with a valid signature: {0}"
    )]
    Invalid(String),
    #[error("cannot issue a certificate for node {node}: {reason}")]
    Issue { node: String, reason: String },
}

/// A parsed signing request whose signature checked out: proof that the
/// node holds the key. Only the public key is kept.
#[derive(Debug)]
pub struct NodeCsr {
    public_key: rcgen::PublicKey,
}

impl NodeCsr {
    /// Parses and verifies a PEM request of at most [`MAX_CSR_PEM_LEN`]
    /// bytes.
    pub fn from_pem(pem: &str) -> Result<Self, CsrError> {
        if pem.len() > MAX_CSR_PEM_LEN {
            return Err(CsrError::TooLong { len: pem.len() });
        }
        let request = CertificateSigningRequestParams::from_pem(pem)
            .map_err(|error| CsrError::Invalid(error.to_string()))?;
        Ok(Self {
            public_key: request.public_key,
        })
    }
}

/// A certificate issued to a node.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IssuedCertificate {
    /// The node's certificate (PEM); the CA is [`NodeCa::ca_pem`].
    pub chain_pem: String,
    pub ca_pem: String,
    pub expires_at: OffsetDateTime,
}

/// The CA: its certificate, its key, and how long node certificates live.
pub struct NodeCa {
    issuer: Issuer<'static, KeyPair>,
    ca_pem: String,
    ttl: Duration,
}

impl std::fmt::Debug for NodeCa {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never the key.
        f.debug_struct("NodeCa")
            .field("ttl", &self.ttl)
            .finish_non_exhaustive()
    }
}

impl NodeCa {
    /// Loads the CA from `cert` and `key` (PEM).
    pub fn load(cert: &Path, key: &Path, ttl: Duration) -> Result<Self, NodeCaError> {
        let read = |what: &'static str, path: &Path| {
            std::fs::read_to_string(path).map_err(|source| NodeCaError::Read {
                what,
                path: path.to_path_buf(),
                source,
            })
        };
        let ca_pem = read("certificate", cert)?;
        let key_pem = read("key", key)?;
        Self::from_pem(&ca_pem, &key_pem, ttl).map_err(|reason| NodeCaError::Invalid {
            cert: cert.to_path_buf(),
            key: key.to_path_buf(),
            reason,
        })
    }

    fn from_pem(ca_pem: &str, key_pem: &str, ttl: Duration) -> Result<Self, String> {
        let key = KeyPair::from_pem(key_pem).map_err(|error| error.to_string())?;
        let issuer = Issuer::from_ca_cert_pem(ca_pem, key).map_err(|error| error.to_string())?;
        Ok(Self {
            issuer,
            ca_pem: ca_pem.to_owned(),
            ttl,
        })
    }

    /// Loads `node-ca.pem` and `node-ca.key` from `data_dir`, creating
    /// both on first start; `true` when created.
    pub fn load_or_create(data_dir: &Path, ttl: Duration) -> Result<(Self, bool), NodeCaError> {
        let cert = data_dir.join(CA_CERT_FILE);
        let key = data_dir.join(CA_KEY_FILE);
        match (cert.exists(), key.exists()) {
            (true, true) => return Ok((Self::load(&cert, &key, ttl)?, false)),
            (true, false) => {
                return Err(NodeCaError::HalfCreated {
                    present: cert,
                    missing: key,
                });
            }
            (false, true) => {
                return Err(NodeCaError::HalfCreated {
                    present: key,
                    missing: cert,
                });
            }
            (false, false) => {}
        }
        let (ca_pem, key_pem) =
            create_ca().map_err(|error| NodeCaError::Create(error.to_string()))?;
        // The key first: a crash between the two leaves a key without a
        // certificate, which is refused above rather than silently replaced.
        crate::auth::write_private_file(&key, key_pem.as_bytes()).map_err(|source| {
            NodeCaError::Write {
                what: "key",
                path: key.clone(),
                source,
            }
        })?;
        crate::auth::write_private_file(&cert, ca_pem.as_bytes()).map_err(|source| {
            NodeCaError::Write {
                what: "certificate",
                path: cert.clone(),
                source,
            }
        })?;
        Ok((Self::load(&cert, &key, ttl)?, true))
    }

    /// The CA certificate peers verify node certificates against (PEM).
    pub fn ca_pem(&self) -> &str {
        &self.ca_pem
    }

    /// How long node certificates live.
    pub fn ttl(&self) -> Duration {
        self.ttl
    }

    /// Issues `node` a certificate for the key in `csr`: its only name is
    /// `<node>.node.flotilla.internal`, whatever the request asked for.
    pub fn issue(&self, node: &NodeName, csr: &NodeCsr) -> Result<IssuedCertificate, CsrError> {
        let refuse = |reason: String| CsrError::Issue {
            node: node.to_string(),
            reason,
        };
        let dns_name = flotilla_tls::node_dns_name(node.as_str());
        // Refused here rather than by every peer at each handshake.
        rustls::pki_types::ServerName::try_from(dns_name.clone()).map_err(|_| {
            refuse(format!(
                "{dns_name:?} is not a DNS name (each dot-separated part of a node name must \
                 have at most 63 characters)"
            ))
        })?;
        let now = OffsetDateTime::now_utc();
        let expires_at = now + self.ttl;
        let mut params = CertificateParams::default();
        let mut subject = DistinguishedName::new();
        subject.push(DnType::CommonName, node.as_str());
        params.distinguished_name = subject;
        params.subject_alt_names = vec![SanType::DnsName(
            dns_name
                .clone()
                .try_into()
                .map_err(|error| refuse(format!("{error:?}")))?,
        )];
        params.is_ca = IsCa::ExplicitNoCa;
        params.not_before = now - BACKDATE;
        params.not_after = expires_at;
        params.serial_number = Some(SerialNumber::from_slice(&random_serial()));
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = vec![
            ExtendedKeyUsagePurpose::ServerAuth,
            ExtendedKeyUsagePurpose::ClientAuth,
        ];
        params.use_authority_key_identifier_extension = true;
        let certificate = params
            .signed_by(&csr.public_key, &self.issuer)
            .map_err(|error| refuse(error.to_string()))?;
        Ok(IssuedCertificate {
            chain_pem: certificate.pem(),
            ca_pem: self.ca_pem.clone(),
            // What the certificate says, to the second.
            expires_at: expires_at.replace_nanosecond(0).unwrap_or(expires_at),
        })
    }
}

/// 16 random bytes, the top bit clear so that the serial is positive.
fn random_serial() -> [u8; 16] {
    let mut serial: [u8; 16] = rand::random();
    serial[0] &= 0x7f;
    serial
}

/// A fresh CA: an ECDSA P-256 key and a self-signed certificate that may
/// sign end-entity certificates only (path length 0).
fn create_ca() -> Result<(String, String), rcgen::Error> {
    let key = KeyPair::generate()?;
    let mut params = CertificateParams::default();
    let mut subject = DistinguishedName::new();
    subject.push(DnType::CommonName, "Flotilla node CA");
    params.distinguished_name = subject;
    params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    let now = OffsetDateTime::now_utc();
    params.not_before = now - BACKDATE;
    params.not_after = now + CREATED_CA_LIFETIME;
    params.serial_number = Some(SerialNumber::from_slice(&random_serial()));
    let certificate = params.self_signed(&key)?;
    Ok((certificate.pem(), key.serialize_pem()))
}

/// Parses a duration such as `24h`, `90m`, `3600s` or `2d` (humantime's
/// syntax; a bare number is seconds), for `--node-cert-ttl`.
pub fn parse_ttl(text: &str) -> Result<Duration, String> {
    let text = text.trim();
    let ttl = match text.parse::<u64>() {
        Ok(seconds) => Duration::from_secs(seconds),
        Err(_) => humantime::parse_duration(text).map_err(|error| {
            format!("{text:?} is not a duration like 24h, 90m or 3600s: {error}")
        })?,
    };
    if ttl < Duration::from_secs(60) || ttl > Duration::from_secs(90 * 86_400) {
        return Err(format!(
            "{text:?}: a node certificate must live between 1 minute and 90 days"
        ));
    }
    Ok(ttl)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn node(name: &str) -> NodeName {
        name.parse().expect("valid node name")
    }

    fn csr_asking_for(names: &[&str]) -> (KeyPair, String) {
        let key = KeyPair::generate().expect("key");
        let mut params = CertificateParams::new(
            names
                .iter()
                .map(|name| (*name).to_owned())
                .collect::<Vec<_>>(),
        )
        .expect("params");
        params
            .distinguished_name
            .push(DnType::CommonName, names.first().copied().unwrap_or("x"));
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        let csr = params
            .serialize_request(&key)
            .expect("csr")
            .pem()
            .expect("pem");
        (key, csr)
    }

    fn verify_for(ca_pem: &str, chain_pem: &str, name: &str) -> Result<(), String> {
        use rustls::pki_types::pem::PemObject;
        let mut roots = rustls::RootCertStore::empty();
        for certificate in rustls::pki_types::CertificateDer::pem_slice_iter(ca_pem.as_bytes()) {
            roots
                .add(certificate.map_err(|error| error.to_string())?)
                .map_err(|error| error.to_string())?;
        }
        let verifier = rustls::client::WebPkiServerVerifier::builder_with_provider(
            std::sync::Arc::new(roots),
            std::sync::Arc::new(rustls::crypto::aws_lc_rs::default_provider()),
        )
        .build()
        .map_err(|error| error.to_string())?;
        let chain = rustls::pki_types::CertificateDer::pem_slice_iter(chain_pem.as_bytes())
            .collect::<Result<Vec<_>, _>>()
            .map_err(|error| error.to_string())?;
        let server_name = rustls::pki_types::ServerName::try_from(name.to_owned())
            .map_err(|error| error.to_string())?;
        verifier
            .verify_server_cert(
                &chain[0],
                &chain[1..],
                &server_name,
                &[],
                rustls::pki_types::UnixTime::now(),
            )
            .map(|_| ())
            .map_err(|error| error.to_string())
    }

    use rustls::client::danger::ServerCertVerifier;

    #[test]
    fn a_certificate_names_the_enrolled_node_whatever_the_request_asks() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (ca, created) =
            NodeCa::load_or_create(dir.path(), DEFAULT_NODE_CERT_TTL).expect("created");
        assert!(created);
        let (_key, csr) = csr_asking_for(&[
            "victim.node.flotilla.internal",
            "localhost",
            "*.node.flotilla.internal",
        ]);
        let csr = NodeCsr::from_pem(&csr).expect("a valid request");
        let issued = ca.issue(&node("rogue"), &csr).expect("issued");
        verify_for(
            &issued.ca_pem,
            &issued.chain_pem,
            "rogue.node.flotilla.internal",
        )
        .expect("valid for its own node");
        for other in [
            "victim.node.flotilla.internal",
            "localhost",
            "x.node.flotilla.internal",
        ] {
            assert!(
                verify_for(&issued.ca_pem, &issued.chain_pem, other).is_err(),
                "the certificate must not be valid for {other}"
            );
        }
        let (_, pem) = x509_parser::pem::parse_x509_pem(issued.chain_pem.as_bytes()).expect("pem");
        let parsed = pem.parse_x509().expect("x509");
        assert!(!parsed.is_ca(), "never a CA, whatever was asked");
        let names: Vec<String> = parsed
            .subject_alternative_name()
            .expect("one SAN extension")
            .expect("present")
            .value
            .general_names
            .iter()
            .map(|name| match name {
                x509_parser::extensions::GeneralName::DNSName(dns) => (*dns).to_owned(),
                other => format!("{other:?}"),
            })
            .collect();
        assert_eq!(names, ["rogue.node.flotilla.internal"]);
        let lifetime = issued.expires_at - OffsetDateTime::now_utc();
        assert!(lifetime <= time::Duration::hours(24) && lifetime > time::Duration::hours(23));
    }

    #[test]
    fn the_ca_is_created_once_privately_and_reloaded() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (first, created) =
            NodeCa::load_or_create(dir.path(), DEFAULT_NODE_CERT_TTL).expect("created");
        assert!(created);
        let (second, created) =
            NodeCa::load_or_create(dir.path(), DEFAULT_NODE_CERT_TTL).expect("loaded");
        assert!(!created);
        assert_eq!(first.ca_pem(), second.ca_pem());
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(dir.path().join(CA_KEY_FILE))
                .expect("key")
                .permissions()
                .mode();
            assert_eq!(mode & 0o777, 0o600);
        }
        std::fs::remove_file(dir.path().join(CA_CERT_FILE)).expect("remove");
        assert!(matches!(
            NodeCa::load_or_create(dir.path(), DEFAULT_NODE_CERT_TTL),
            Err(NodeCaError::HalfCreated { .. })
        ));
    }

    #[test]
    fn bad_requests_are_refused_before_anything_is_issued() {
        assert!(matches!(
            NodeCsr::from_pem(&"A".repeat(MAX_CSR_PEM_LEN + 1)),
            Err(CsrError::TooLong { .. })
        ));
        assert!(matches!(
            NodeCsr::from_pem("not a request"),
            Err(CsrError::Invalid(_))
        ));
        // A request whose signature does not match its key.
        let (_key, csr) = csr_asking_for(&["a"]);
        let mut der = rustls::pki_types::pem::PemObject::from_pem_slice(csr.as_bytes())
            .map(
                |der: rustls::pki_types::CertificateSigningRequestDer<'static>| {
                    der.as_ref().to_vec()
                },
            )
            .expect("der");
        let last = der.len() - 1;
        der[last] ^= 0x01;
        let tampered = pem_encode("CERTIFICATE REQUEST", &der);
        assert!(matches!(
            NodeCsr::from_pem(&tampered),
            Err(CsrError::Invalid(_))
        ));
        // A node name whose DNS form has a label over 63 characters.
        let dir = tempfile::tempdir().expect("tempdir");
        let (ca, _) = NodeCa::load_or_create(dir.path(), DEFAULT_NODE_CERT_TTL).expect("ca");
        let (_key, csr) = csr_asking_for(&["a"]);
        let csr = NodeCsr::from_pem(&csr).expect("valid");
        assert!(matches!(
            ca.issue(&node(&"a".repeat(64)), &csr),
            Err(CsrError::Issue { .. })
        ));
    }

    fn pem_encode(label: &str, der: &[u8]) -> String {
        use std::fmt::Write;
        const ALPHABET: &[u8; 64] =
            b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
        let mut encoded = String::new();
        for chunk in der.chunks(3) {
            let bytes = [
                chunk[0],
                *chunk.get(1).unwrap_or(&0),
                *chunk.get(2).unwrap_or(&0),
            ];
            let group = u32::from_be_bytes([0, bytes[0], bytes[1], bytes[2]]);
            for index in 0..4 {
                if index <= chunk.len() {
                    encoded.push(ALPHABET[(group >> (18 - 6 * index) & 63) as usize] as char);
                } else {
                    encoded.push('=');
                }
            }
        }
        let mut pem = format!("-----BEGIN {label}-----\n");
        for line in encoded.as_bytes().chunks(64) {
            let _ = writeln!(pem, "{}", String::from_utf8_lossy(line));
        }
        let _ = writeln!(pem, "-----END {label}-----");
        pem
    }

    #[test]
    fn ttls_parse_within_bounds() {
        assert_eq!(parse_ttl("24h"), Ok(Duration::from_secs(86_400)));
        assert_eq!(parse_ttl("90m"), Ok(Duration::from_secs(5400)));
        assert_eq!(parse_ttl("3600"), Ok(Duration::from_secs(3600)));
        assert!(parse_ttl("10s").is_err());
        assert!(parse_ttl("100d").is_err());
        assert!(parse_ttl("soon").is_err());
    }
}
