//! Who may use the inference APIs (DESIGN.md §8). Off by default, which the
//! agent allows only while both APIs listen on loopback; otherwise it needs
//! API keys (`--api-keys-file`), JWT verification (`--inference-jwt-key`),
//! or an explicit `--allow-unauthenticated-inference`. Clients send a key
//! or a token as `Authorization: Bearer ...` (what OpenAI clients send;
//! Ollama clients can set the header), on HTTP and in gRPC metadata alike.
//! `/metrics`, `/` and the gRPC health and reflection services stay open
//! for probes.
//!
//! API keys: only blake3 digests are kept, and a presented key is compared
//! digest to digest (constant time), against every key.
//!
//! JWTs come from the organisation's identity provider, not from the
//! controller: the controller signs its own tokens with a shared HMAC
//! secret, which must never sit on edge boxes (whoever holds it can mint
//! operator tokens). So the agent takes the provider's public key (RSA,
//! EC or Ed25519 PEM) or a secret made for inference alone, and checks the
//! signature, `exp` (and `nbf`), the audience (`flotilla-inference` unless
//! told otherwise) and, when configured, the issuer.
//!
//! A forwarded request never carries the client's credential (issue 16,
//! item 1: a peer, rogue or not, must not collect clients' keys). The
//! agent the client called authenticates it and forwards the request with
//! [`PRINCIPAL_HEADER`] naming who it let in. A peer believes that header
//! only from a caller that proved it is a node: a client certificate,
//! verified against the fleet's CA during the TLS handshake (mutual TLS,
//! `--tls-cert` with `--peer-ca` or `--controller-ca`). From anyone else
//! the header is dropped and the request is authenticated like any
//! client's, so in a fleet without TLS an authenticated peer refuses
//! forwarded requests (the forwarding agent answers 502 and says why).

use std::net::SocketAddr;
use std::path::Path;

use jsonwebtoken::{Algorithm, DecodingKey, Validation};

/// Everything that may let a request in; any one suffices.
#[derive(Debug, Clone, Default)]
pub struct InferenceAuth {
    pub keys: Option<ApiKeys>,
    pub jwt: Option<JwtVerifier>,
}

impl InferenceAuth {
    /// `None` when neither keys nor JWTs are configured (open).
    pub fn new(keys: Option<ApiKeys>, jwt: Option<JwtVerifier>) -> Option<InferenceAuth> {
        (keys.is_some() || jwt.is_some()).then_some(InferenceAuth { keys, jwt })
    }

    /// Whether an `Authorization` header value carries a valid key or token.
    pub fn allows(&self, authorization: Option<&[u8]>) -> bool {
        self.authenticate(authorization).is_some()
    }

    /// Who an `Authorization` header value says the caller is, when it
    /// carries a valid key or token: `key:<digest prefix>` (never the key)
    /// or `jwt:<sub>`.
    pub fn authenticate(&self, authorization: Option<&[u8]>) -> Option<String> {
        let credential = authorization.and_then(bearer)?;
        if let Some(keys) = &self.keys
            && keys.allows_credential(credential)
        {
            return Some(format!(
                "key:{}",
                &blake3::hash(credential).to_hex().as_str()[..12]
            ));
        }
        self.jwt
            .as_ref()
            .and_then(|jwt| jwt.subject(credential))
            .map(|subject| format!("jwt:{subject}"))
    }
}

/// The header (and gRPC metadata key) naming, on a forwarded request, the
/// principal the first agent authenticated. Set by the agents' own
/// authentication step on every request they admit (what a client sends
/// under this name is discarded); believed on arrival only from a node
/// that presented a verified client certificate.
pub const PRINCIPAL_HEADER: &str = "x-flotilla-principal";

/// Longest principal accepted from a forwarding node.
const MAX_PRINCIPAL_LEN: usize = 256;

/// The principal of a request without a credential on an open agent.
pub const ANONYMOUS: &str = "anonymous";

/// Whether a request may in, and as whom. `from_node`: the connection
/// presented a client certificate that the TLS handshake verified against
/// the fleet's CA; `claimed`: its [`PRINCIPAL_HEADER`]. A node's claim is
/// believed; anyone else is authenticated by `authorization` when `auth`
/// is configured, and is [`ANONYMOUS`] on an open agent.
pub fn admit(
    auth: Option<&InferenceAuth>,
    authorization: Option<&[u8]>,
    from_node: bool,
    claimed: Option<&[u8]>,
) -> Result<String, super::ServeError> {
    if from_node && let Some(claimed) = claimed {
        let valid = !claimed.is_empty()
            && claimed.len() <= MAX_PRINCIPAL_LEN
            && claimed.iter().all(|byte| byte.is_ascii_graphic());
        if !valid {
            return Err(super::ServeError::InvalidRequest(format!(
                "{PRINCIPAL_HEADER} must be 1 to {MAX_PRINCIPAL_LEN} visible ASCII characters"
            )));
        }
        return Ok(String::from_utf8_lossy(claimed).into_owned());
    }
    match auth {
        None => Ok(ANONYMOUS.to_owned()),
        Some(auth) => auth
            .authenticate(authorization)
            .ok_or(super::ServeError::Unauthenticated),
    }
}

/// Default `aud` a token must carry.
pub const DEFAULT_JWT_AUDIENCE: &str = "flotilla-inference";

/// Checks JWTs signed by the organisation's identity provider.
#[derive(Clone)]
pub struct JwtVerifier {
    key: DecodingKey,
    validation: Validation,
}

impl std::fmt::Debug for JwtVerifier {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        formatter
            .debug_struct("JwtVerifier")
            .field("algorithms", &self.validation.algorithms)
            .finish_non_exhaustive()
    }
}

/// Shortest HMAC secret accepted (HS256 needs 256 bits).
const MIN_JWT_SECRET_BYTES: usize = 32;

impl JwtVerifier {
    /// Reads the key file: a PEM public key (RSA, EC or Ed25519), or else
    /// an HMAC secret (the file's bytes, trailing newline trimmed).
    pub fn load(path: &Path, audience: &str, issuer: Option<&str>) -> Result<JwtVerifier, String> {
        let bytes = std::fs::read(path)
            .map_err(|error| format!("cannot read the JWT key {}: {error}", path.display()))?;
        JwtVerifier::from_key(&bytes, audience, issuer)
            .map_err(|error| format!("{}: {error}", path.display()))
    }

    pub fn from_key(
        key: &[u8],
        audience: &str,
        issuer: Option<&str>,
    ) -> Result<JwtVerifier, String> {
        let (key, algorithms) = if key.trim_ascii_start().starts_with(b"-----BEGIN") {
            if let Ok(rsa) = DecodingKey::from_rsa_pem(key) {
                (
                    rsa,
                    vec![
                        Algorithm::RS256,
                        Algorithm::RS384,
                        Algorithm::RS512,
                        Algorithm::PS256,
                        Algorithm::PS384,
                        Algorithm::PS512,
                    ],
                )
            } else if let Ok(ec) = DecodingKey::from_ec_pem(key) {
                (ec, vec![Algorithm::ES256, Algorithm::ES384])
            } else if let Ok(ed) = DecodingKey::from_ed_pem(key) {
                (ed, vec![Algorithm::EdDSA])
            } else {
                return Err("not an RSA, EC or Ed25519 public key in PEM".to_owned());
            }
        } else {
            let secret = key.trim_ascii_end();
            if secret.len() < MIN_JWT_SECRET_BYTES {
                return Err(format!(
                    "an HMAC secret needs at least {MIN_JWT_SECRET_BYTES} bytes, this one has {}",
                    secret.len()
                ));
            }
            (
                DecodingKey::from_secret(secret),
                vec![Algorithm::HS256, Algorithm::HS384, Algorithm::HS512],
            )
        };
        if audience.trim().is_empty() {
            return Err("the JWT audience must not be empty".to_owned());
        }
        let mut validation = Validation::new(algorithms[0]);
        validation.algorithms = algorithms;
        validation.leeway = 30;
        validation.validate_nbf = true;
        validation.set_required_spec_claims(&["exp", "aud"]);
        validation.set_audience(&[audience]);
        if let Some(issuer) = issuer {
            validation.set_issuer(&[issuer]);
        }
        Ok(JwtVerifier { key, validation })
    }

    /// The subject (`sub`, else `-`) of `token` when it is a valid JWT for
    /// inference.
    fn subject(&self, token: &[u8]) -> Option<String> {
        let token = std::str::from_utf8(token).ok()?;
        match jsonwebtoken::decode::<serde_json::Value>(token, &self.key, &self.validation) {
            Ok(data) => Some(
                data.claims["sub"]
                    .as_str()
                    .unwrap_or("-")
                    .chars()
                    .filter(char::is_ascii_graphic)
                    .take(128)
                    .collect(),
            ),
            Err(error) => {
                tracing::debug!(%error, "inference JWT refused");
                None
            }
        }
    }
}

/// The API keys that may call the inference APIs.
#[derive(Debug, Clone)]
pub struct ApiKeys {
    digests: Vec<blake3::Hash>,
}

/// Shortest key accepted: guessable keys are refused at start.
const MIN_KEY_LEN: usize = 16;

impl ApiKeys {
    /// Reads one key per line; blank lines and `#` comments are ignored.
    pub fn load(path: &Path) -> Result<ApiKeys, String> {
        let text = std::fs::read_to_string(path)
            .map_err(|error| format!("cannot read API keys from {}: {error}", path.display()))?;
        ApiKeys::parse(&text).map_err(|error| format!("{}: {error}", path.display()))
    }

    pub fn parse(text: &str) -> Result<ApiKeys, String> {
        let mut digests = Vec::new();
        for (number, line) in text.lines().enumerate() {
            let key = line.trim();
            if key.is_empty() || key.starts_with('#') {
                continue;
            }
            if key.len() < MIN_KEY_LEN || key.chars().any(char::is_whitespace) {
                return Err(format!(
                    "line {}: a key must be at least {MIN_KEY_LEN} characters without spaces",
                    number + 1
                ));
            }
            digests.push(blake3::hash(key.as_bytes()));
        }
        if digests.is_empty() {
            return Err("no API keys in the file".to_owned());
        }
        Ok(ApiKeys { digests })
    }

    /// Whether an `Authorization` header value carries one of the keys.
    pub fn allows(&self, authorization: Option<&[u8]>) -> bool {
        authorization
            .and_then(bearer)
            .is_some_and(|key| self.allows_credential(key))
    }

    fn allows_credential(&self, key: &[u8]) -> bool {
        let presented = blake3::hash(key);
        // Every key is compared, so timing does not tell which one matched.
        self.digests
            .iter()
            .fold(false, |found, digest| found | (*digest == presented))
    }
}

/// The credential of a `Bearer` authorization value.
fn bearer(value: &[u8]) -> Option<&[u8]> {
    let scheme = value.get(..7)?;
    scheme
        .eq_ignore_ascii_case(b"bearer ")
        .then(|| value[7..].trim_ascii())
        .filter(|key| !key.is_empty())
}

/// Why the agent refuses to serve inference without authentication.
pub fn check_exposure(
    auth: Option<&InferenceAuth>,
    allow_unauthenticated: bool,
    listening: &[(&str, SocketAddr)],
) -> Result<(), String> {
    if auth.is_some() || allow_unauthenticated {
        return Ok(());
    }
    match listening.iter().find(|(_, addr)| !addr.ip().is_loopback()) {
        Some((flag, addr)) => Err(format!(
            "inference listens on {addr} ({flag}), beyond loopback, without authentication: \
             give --api-keys-file or --inference-jwt-key, or --allow-unauthenticated-inference \
             to accept that"
        )),
        None => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_are_checked_by_digest_and_bad_files_are_refused() {
        let keys =
            ApiKeys::parse("# fleet keys\n\nkey-0123456789abcdef\n  other-0123456789abcd \n")
                .expect("valid");
        assert!(keys.allows(Some(b"Bearer key-0123456789abcdef")));
        assert!(keys.allows(Some(b"bearer other-0123456789abcd")));
        assert!(!keys.allows(Some(b"Bearer key-0123456789abcdeX")));
        assert!(!keys.allows(Some(b"key-0123456789abcdef")));
        assert!(!keys.allows(Some(b"Bearer ")));
        assert!(!keys.allows(None));
        assert!(ApiKeys::parse("# nothing\n").is_err());
        assert!(ApiKeys::parse("short\n").is_err());
    }

    fn token(secret: &[u8], claims: serde_json::Value) -> String {
        jsonwebtoken::encode(
            &jsonwebtoken::Header::new(Algorithm::HS256),
            &claims,
            &jsonwebtoken::EncodingKey::from_secret(secret),
        )
        .expect("encodes")
    }

    #[test]
    fn jwts_are_checked_for_signature_expiry_audience_and_issuer() {
        let secret = b"inference-secret-0123456789abcdef0123";
        let jwt = JwtVerifier::from_key(secret, DEFAULT_JWT_AUDIENCE, Some("https://idp"))
            .expect("valid");
        let auth = InferenceAuth::new(None, Some(jwt)).expect("configured");
        let now = time::OffsetDateTime::now_utc().unix_timestamp();
        let claims = |aud: &str, iss: &str, exp: i64| serde_json::json!({"sub": "app", "aud": aud, "iss": iss, "exp": exp});
        let header = |token: String| format!("Bearer {token}").into_bytes();
        let good = token(
            secret,
            claims(DEFAULT_JWT_AUDIENCE, "https://idp", now + 60),
        );
        assert!(auth.allows(Some(&header(good))));
        for refused in [
            token(
                secret,
                claims(DEFAULT_JWT_AUDIENCE, "https://idp", now - 3600),
            ),
            token(secret, claims("controller", "https://idp", now + 60)),
            token(
                secret,
                claims(DEFAULT_JWT_AUDIENCE, "https://evil", now + 60),
            ),
            token(
                b"another-secret-0123456789abcdef0123",
                claims(DEFAULT_JWT_AUDIENCE, "https://idp", now + 60),
            ),
            token(secret, serde_json::json!({"aud": DEFAULT_JWT_AUDIENCE})),
            "not.a.jwt".to_owned(),
        ] {
            assert!(!auth.allows(Some(&header(refused.clone()))), "{refused}");
        }
        assert!(JwtVerifier::from_key(b"short", DEFAULT_JWT_AUDIENCE, None).is_err());
        assert!(
            JwtVerifier::from_key(
                b"-----BEGIN PUBLIC KEY-----\nxx\n-----END PUBLIC KEY-----\n",
                DEFAULT_JWT_AUDIENCE,
                None
            )
            .is_err()
        );
    }

    #[test]
    fn jwts_signed_by_an_identity_providers_ed25519_key_are_accepted() {
        use base64::Engine;
        use ring::signature::KeyPair;
        let rng = ring::rand::SystemRandom::new();
        let pkcs8 = ring::signature::Ed25519KeyPair::generate_pkcs8(&rng).expect("generates");
        let pair = ring::signature::Ed25519KeyPair::from_pkcs8(pkcs8.as_ref()).expect("parses");
        // SubjectPublicKeyInfo of an Ed25519 key: a fixed prefix, then the key.
        let mut spki = vec![
            0x30, 0x2a, 0x30, 0x05, 0x06, 0x03, 0x2b, 0x65, 0x70, 0x03, 0x21, 0x00,
        ];
        spki.extend_from_slice(pair.public_key().as_ref());
        let pem = format!(
            "-----BEGIN PUBLIC KEY-----\n{}\n-----END PUBLIC KEY-----\n",
            base64::engine::general_purpose::STANDARD.encode(&spki)
        );
        let jwt = JwtVerifier::from_key(pem.as_bytes(), "apps", None).expect("an Ed25519 key");
        let auth = InferenceAuth::new(None, Some(jwt)).expect("configured");
        let now = time::OffsetDateTime::now_utc().unix_timestamp();
        let signed = jsonwebtoken::encode(
            &jsonwebtoken::Header::new(Algorithm::EdDSA),
            &serde_json::json!({"aud": "apps", "exp": now + 60}),
            &jsonwebtoken::EncodingKey::from_ed_der(pkcs8.as_ref()),
        )
        .expect("signs");
        assert!(auth.allows(Some(format!("Bearer {signed}").as_bytes())));
        // An HMAC token cannot pass for the provider's: the algorithm is
        // bound to the key's kind.
        let forged = token(
            pem.as_bytes(),
            serde_json::json!({"aud": "apps", "exp": now + 60}),
        );
        assert!(!auth.allows(Some(format!("Bearer {forged}").as_bytes())));
    }

    #[test]
    fn only_a_node_may_name_the_principal_and_keys_never_appear_in_it() {
        let keys = ApiKeys::parse("key-0123456789abcdef").expect("valid");
        let auth = InferenceAuth::new(Some(keys), None).expect("configured");
        let key = Some(b"Bearer key-0123456789abcdef".as_slice());
        let principal = admit(Some(&auth), key, false, None).expect("a valid key");
        assert!(principal.starts_with("key:"), "{principal}");
        assert!(!principal.contains("0123456789abcdef"), "{principal}");
        // A client claiming a principal without a certificate: ignored,
        // and without a key refused.
        assert!(matches!(
            admit(Some(&auth), None, false, Some(b"key:admin")),
            Err(crate::serve::ServeError::Unauthenticated)
        ));
        assert_eq!(
            admit(Some(&auth), None, true, Some(b"key:0a1b2c")).expect("a node"),
            "key:0a1b2c"
        );
        assert!(admit(Some(&auth), None, true, Some(b"two words")).is_err());
        assert_eq!(
            admit(None, None, false, Some(b"key:x")).expect("open"),
            ANONYMOUS
        );
    }

    #[test]
    fn unauthenticated_inference_only_on_loopback_unless_allowed() {
        let loopback: SocketAddr = "127.0.0.1:11434".parse().expect("addr");
        let open: SocketAddr = "0.0.0.0:50052".parse().expect("addr");
        assert!(check_exposure(None, false, &[("--http", loopback)]).is_ok());
        let refused = check_exposure(None, false, &[("--http", loopback), ("--grpc", open)])
            .expect_err("exposed");
        assert!(refused.contains("--grpc"), "{refused}");
        assert!(check_exposure(None, true, &[("--grpc", open)]).is_ok());
        let keys = ApiKeys::parse("key-0123456789abcdef").expect("valid");
        let auth = InferenceAuth::new(Some(keys), None).expect("configured");
        assert!(check_exposure(Some(&auth), false, &[("--grpc", open)]).is_ok());
        assert!(InferenceAuth::new(None, None).is_none());
    }
}
