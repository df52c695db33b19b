//! Authentication and authorisation of API callers.
//!
//! Callers present JWT bearer tokens (HS256) carrying a subject, a role and an
//! audience. Several verification keys are accepted at once, selected by the
//! token's `kid`, so keys can be rotated without downtime: add the new key,
//! make it the signing key, and drop the old one once its tokens expired.
//! Keys live in a TOML key file (mode 0600) that the controller creates with a
//! fresh random key on first start. Token strings and key material are never
//! logged; errors say what is wrong with a token without echoing it.
//!
//! Enrolled agents hold node credentials: tokens of the same form with role
//! [`Role::Node`] and the node's name as subject, minted short-lived by
//! [`Authenticator::mint_node_credential`] and checked with
//! [`Principal::require_node`]. They carry the node's credential generation
//! (`gen`), which the fleet compares with the stored one on every use, so a
//! replaced or removed node's credentials stop working at once.
//!
//! Every token carries an issuer (`iss`, checked), a not-before time (`nbf`,
//! checked) and, for human/API tokens, an id (`jti`) that
//! [`Revocations`] checks on every request.

mod keys;
pub mod node_ca;
mod revocation;
mod role;

use std::time::Duration;

use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use serde::{Deserialize, Serialize};
use time::OffsetDateTime;

use crate::domain::NodeName;

pub use keys::{KeyEntry, KeyFile, KeyFileError, SigningKey, write_private_file};
pub use revocation::Revocations;
pub use role::{InvalidRole, Role};

/// The audience operator tokens are minted for and checked against.
pub const DEFAULT_AUDIENCE: &str = "flotilla";
/// The issuer written into the tokens this controller mints.
pub const ISSUER: &str = "flotilla-controller";
/// Tolerated clock skew between token issuer and verifier.
const CLOCK_SKEW_LEEWAY: Duration = Duration::from_secs(30);
/// Lifetime of a node credential. Short, because the sync stream renews it
/// and a node removed from the fleet must lose access soon.
pub const NODE_CREDENTIAL_TTL: Duration = Duration::from_secs(3600);

/// JWT claims of an operator or API token.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
struct Claims {
    sub: String,
    role: String,
    aud: String,
    iss: String,
    iat: i64,
    exp: i64,
    /// Not valid before (checked, with the clock-skew leeway).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    nbf: Option<i64>,
    /// The token's id, for listing and revocation (human/API tokens).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    jti: Option<String>,
    /// A node credential's credential generation.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[serde(rename = "gen")]
    generation: Option<u64>,
}

/// A freshly minted token with its id.
#[derive(Debug, Clone)]
pub struct MintedToken {
    pub token: String,
    /// The `jti`.
    pub id: String,
    pub issued_at: OffsetDateTime,
    pub expires_at: OffsetDateTime,
}

/// A verified caller.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Principal {
    pub subject: String,
    pub role: Role,
    pub expires_at: OffsetDateTime,
    /// The token's `jti` (human/API tokens minted by this controller).
    pub token_id: Option<String>,
    /// A node credential's credential generation.
    pub credential_generation: Option<u64>,
}

impl Principal {
    /// Checks that the caller's role includes `required`.
    pub fn require(&self, required: Role) -> Result<(), AuthError> {
        if self.role.includes(required) {
            Ok(())
        } else {
            Err(AuthError::Forbidden {
                subject: self.subject.clone(),
                role: self.role,
                required,
            })
        }
    }

    /// Checks that the caller is the node named `node` (its own credential),
    /// for what only that node may do: read its desired state, report its
    /// health. Operators' tokens do not pass.
    pub fn require_node(&self, node: &NodeName) -> Result<(), AuthError> {
        if self.role == Role::Node && self.subject == node.as_str() {
            Ok(())
        } else {
            Err(AuthError::NotThisNode {
                subject: self.subject.clone(),
                role: self.role,
                node: node.to_string(),
            })
        }
    }
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum AuthError {
    #[error("missing bearer token: send an Authorization: Bearer <token> header")]
    MissingToken,
    #[error("malformed authorization header: expected \"Bearer <token>\"")]
    MalformedHeader,
    #[error("invalid token: {0}")]
    InvalidToken(String),
    #[error("token expired")]
    Expired,
    #[error("token signed with unknown key id {0:?}")]
    UnknownKey(String),
    #[error("token audience does not match {0:?}")]
    WrongAudience(String),
    #[error("{subject} has role {role} but this needs {required}")]
    Forbidden {
        subject: String,
        role: Role,
        required: Role,
    },
    #[error("{subject} (role {role}) is not node {node}")]
    NotThisNode {
        subject: String,
        role: Role,
        node: String,
    },
    #[error("cannot mint token: {0}")]
    Mint(String),
    #[error("token {0} was revoked")]
    Revoked(String),
    #[error(
        "node credential of {0} is no longer valid: the node was replaced or removed; re-enrol the agent"
    )]
    StaleNodeCredential(String),
    #[error("cannot check token revocations: {0}")]
    RevocationsUnavailable(String),
}

impl AuthError {
    /// Whether this is a 403 (authenticated but not allowed) rather than a 401.
    pub fn is_forbidden(&self) -> bool {
        matches!(self, Self::Forbidden { .. } | Self::NotThisNode { .. })
    }
}

/// Verifies and mints tokens with the keys of a [`KeyFile`].
pub struct Authenticator {
    signing: SigningKey,
    verification: Vec<(String, DecodingKey)>,
    audience: String,
}

impl std::fmt::Debug for Authenticator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Key material stays out of debug output.
        f.debug_struct("Authenticator")
            .field("signing_kid", &self.signing.kid)
            .field(
                "verification_kids",
                &self.verification.iter().map(|(k, _)| k).collect::<Vec<_>>(),
            )
            .field("audience", &self.audience)
            .finish()
    }
}

impl Authenticator {
    pub fn new(keys: &KeyFile, audience: impl Into<String>) -> Result<Self, KeyFileError> {
        let signing = keys.signing_key()?;
        let verification = keys
            .keys
            .iter()
            .map(|key| {
                Ok((
                    key.kid.clone(),
                    DecodingKey::from_secret(&key.secret_bytes()?),
                ))
            })
            .collect::<Result<Vec<_>, KeyFileError>>()?;
        Ok(Self {
            signing,
            verification,
            audience: audience.into(),
        })
    }

    pub fn audience(&self) -> &str {
        &self.audience
    }

    /// Mints a token for `subject` with `role`, valid for `ttl`.
    pub fn mint(
        &self,
        subject: &str,
        role: Role,
        ttl: Duration,
    ) -> Result<(String, OffsetDateTime), AuthError> {
        let minted = self.mint_with_id(subject, role, ttl)?;
        Ok((minted.token, minted.expires_at))
    }

    /// Mints a token with a fresh random id (`jti`), for recording.
    pub fn mint_with_id(
        &self,
        subject: &str,
        role: Role,
        ttl: Duration,
    ) -> Result<MintedToken, AuthError> {
        let id = hex::encode(rand::random::<[u8; 16]>());
        let (token, issued_at, expires_at) =
            self.encode(subject, role, ttl, Some(id.clone()), None)?;
        Ok(MintedToken {
            token,
            id,
            issued_at,
            expires_at,
        })
    }

    fn encode(
        &self,
        subject: &str,
        role: Role,
        ttl: Duration,
        jti: Option<String>,
        generation: Option<u64>,
    ) -> Result<(String, OffsetDateTime, OffsetDateTime), AuthError> {
        let now = OffsetDateTime::now_utc();
        let expires_at = now + ttl;
        let claims = Claims {
            sub: subject.to_owned(),
            role: role.as_str().to_owned(),
            aud: self.audience.clone(),
            iss: ISSUER.to_owned(),
            iat: now.unix_timestamp(),
            exp: expires_at.unix_timestamp(),
            nbf: Some(now.unix_timestamp()),
            jti,
            generation,
        };
        let mut header = Header::new(Algorithm::HS256);
        header.kid = Some(self.signing.kid.clone());
        let token = jsonwebtoken::encode(
            &header,
            &claims,
            &EncodingKey::from_secret(&self.signing.secret),
        )
        .map_err(|e| AuthError::Mint(e.to_string()))?;
        Ok((token, now, expires_at))
    }

    /// Mints a node credential: role [`Role::Node`], subject the node's name,
    /// the node's credential generation, valid for [`NODE_CREDENTIAL_TTL`].
    pub fn mint_node_credential(
        &self,
        node: &NodeName,
        credential_generation: u64,
    ) -> Result<(String, OffsetDateTime), AuthError> {
        self.mint_node_credential_with_ttl(node, credential_generation, NODE_CREDENTIAL_TTL)
    }

    /// [`Authenticator::mint_node_credential`] with another lifetime (tests
    /// of renewal).
    pub fn mint_node_credential_with_ttl(
        &self,
        node: &NodeName,
        credential_generation: u64,
        ttl: Duration,
    ) -> Result<(String, OffsetDateTime), AuthError> {
        let (token, _, expires_at) = self.encode(
            node.as_str(),
            Role::Node,
            ttl,
            None,
            Some(credential_generation),
        )?;
        Ok((token, expires_at))
    }

    /// Verifies a token's signature, expiry and audience.
    pub fn verify(&self, token: &str) -> Result<Principal, AuthError> {
        let header = jsonwebtoken::decode_header(token)
            .map_err(|e| AuthError::InvalidToken(e.to_string()))?;
        if header.alg != Algorithm::HS256 {
            return Err(AuthError::InvalidToken(format!(
                "algorithm {:?} is not accepted",
                header.alg
            )));
        }
        let candidates: Vec<&DecodingKey> = match &header.kid {
            Some(kid) => {
                let key = self
                    .verification
                    .iter()
                    .find(|(known, _)| known == kid)
                    .map(|(_, key)| key)
                    .ok_or_else(|| AuthError::UnknownKey(kid.chars().take(64).collect()))?;
                vec![key]
            }
            // Tokens minted elsewhere may omit `kid`: try every key.
            None => self.verification.iter().map(|(_, key)| key).collect(),
        };
        let mut validation = Validation::new(Algorithm::HS256);
        validation.set_audience(&[self.audience.as_str()]);
        validation.set_issuer(&[ISSUER]);
        validation.validate_nbf = true;
        validation.set_required_spec_claims(&["exp", "aud", "sub", "iss"]);
        validation.leeway = CLOCK_SKEW_LEEWAY.as_secs();
        let mut last_error = AuthError::InvalidToken("no verification key configured".into());
        for key in candidates {
            match jsonwebtoken::decode::<Claims>(token, key, &validation) {
                Ok(data) => return principal_from_claims(data.claims),
                Err(e) => last_error = map_jwt_error(&e, &self.audience),
            }
        }
        Err(last_error)
    }
}

fn principal_from_claims(claims: Claims) -> Result<Principal, AuthError> {
    let role = claims
        .role
        .parse::<Role>()
        .map_err(|e| AuthError::InvalidToken(e.to_string()))?;
    let expires_at = OffsetDateTime::from_unix_timestamp(claims.exp)
        .map_err(|_| AuthError::InvalidToken("exp out of range".into()))?;
    // A node credential without a generation cannot be checked against
    // replacement; a human token without an id cannot be revoked. Both are
    // refused rather than trusted.
    match role {
        Role::Node if claims.generation.is_none() => {
            return Err(AuthError::InvalidToken(
                "node credential without a credential generation (gen); renew it".into(),
            ));
        }
        Role::Node => {}
        _ if claims.jti.as_deref().is_none_or(str::is_empty) => {
            return Err(AuthError::InvalidToken(
                "token without an id (jti) cannot be revoked and is not accepted".into(),
            ));
        }
        _ => {}
    }
    if claims.jti.as_ref().is_some_and(|jti| jti.len() > 128) {
        return Err(AuthError::InvalidToken(
            "jti longer than 128 characters".into(),
        ));
    }
    Ok(Principal {
        subject: claims.sub,
        role,
        expires_at,
        token_id: claims.jti,
        credential_generation: claims.generation,
    })
}

fn map_jwt_error(error: &jsonwebtoken::errors::Error, audience: &str) -> AuthError {
    use jsonwebtoken::errors::ErrorKind;
    match error.kind() {
        ErrorKind::ExpiredSignature => AuthError::Expired,
        ErrorKind::InvalidAudience => AuthError::WrongAudience(audience.to_owned()),
        ErrorKind::InvalidIssuer => AuthError::InvalidToken(format!("issuer is not {ISSUER:?}")),
        ErrorKind::ImmatureSignature => {
            AuthError::InvalidToken("token is not valid yet (nbf)".into())
        }
        ErrorKind::InvalidSignature => AuthError::InvalidToken("bad signature".into()),
        ErrorKind::MissingRequiredClaim(claim) => {
            AuthError::InvalidToken(format!("missing claim {claim}"))
        }
        _ => AuthError::InvalidToken(error.to_string()),
    }
}

/// Extracts the token from an `Authorization` header value.
pub fn bearer_token(header_value: Option<&str>) -> Result<&str, AuthError> {
    let value = header_value.ok_or(AuthError::MissingToken)?;
    let (scheme, token) = value.split_once(' ').ok_or(AuthError::MalformedHeader)?;
    if !scheme.eq_ignore_ascii_case("bearer") || token.trim().is_empty() {
        return Err(AuthError::MalformedHeader);
    }
    Ok(token.trim())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn authenticator(kids: &[&str]) -> Authenticator {
        let keys = KeyFile::generate_many(kids);
        Authenticator::new(&keys, DEFAULT_AUDIENCE).expect("valid keys")
    }

    #[test]
    fn minted_tokens_verify() {
        let auth = authenticator(&["k1"]);
        let (token, _) = auth
            .mint("alice", Role::Operator, Duration::from_secs(60))
            .expect("mint");
        let principal = auth.verify(&token).expect("verifies");
        assert_eq!(principal.subject, "alice");
        assert_eq!(principal.role, Role::Operator);
    }

    #[test]
    fn rotation_accepts_old_and_new_keys() {
        let old = authenticator(&["old"]);
        let (old_token, _) = old
            .mint("bob", Role::Viewer, Duration::from_secs(60))
            .expect("mint");
        // New key file: the new key signs, the old one still verifies.
        let mut rotated = KeyFile::generate_many(&["new"]);
        rotated.keys.push(key_of(&old, false));
        let auth = Authenticator::new(&rotated, DEFAULT_AUDIENCE).expect("valid keys");
        assert!(auth.verify(&old_token).is_ok());
        let (new_token, _) = auth
            .mint("bob", Role::Viewer, Duration::from_secs(60))
            .expect("mint");
        assert!(auth.verify(&new_token).is_ok());
        assert!(matches!(
            old.verify(&new_token),
            Err(AuthError::UnknownKey(_))
        ));
    }

    fn key_of(auth: &Authenticator, signing: bool) -> KeyEntry {
        KeyEntry::from_secret(&auth.signing.kid, &auth.signing.secret, signing)
    }

    #[test]
    fn forged_expired_and_wrong_audience_tokens_fail() {
        let auth = authenticator(&["k1"]);
        let forger = authenticator(&["k1"]); // same kid, different secret
        let (forged, _) = forger
            .mint("mallory", Role::Admin, Duration::from_secs(60))
            .expect("mint");
        assert_eq!(
            auth.verify(&forged),
            Err(AuthError::InvalidToken("bad signature".into()))
        );

        let claims = Claims {
            sub: "carol".into(),
            role: "admin".into(),
            aud: DEFAULT_AUDIENCE.into(),
            iss: ISSUER.into(),
            iat: 0,
            exp: OffsetDateTime::now_utc().unix_timestamp() - 3600,
            nbf: None,
            jti: Some("expired".into()),
            generation: None,
        };
        let mut header = Header::new(Algorithm::HS256);
        header.kid = Some("k1".into());
        let expired = jsonwebtoken::encode(
            &header,
            &claims,
            &EncodingKey::from_secret(&auth.signing.secret),
        )
        .expect("encode");
        assert_eq!(auth.verify(&expired), Err(AuthError::Expired));

        let mut shared = KeyFile::generate_many(&["k1"]);
        shared.keys[0] = key_of(&auth, true);
        let same_key_other_aud = Authenticator::new(&shared, "other").expect("keys");
        let (token, _) = same_key_other_aud
            .mint("dave", Role::Admin, Duration::from_secs(60))
            .expect("mint");
        assert_eq!(
            auth.verify(&token),
            Err(AuthError::WrongAudience(DEFAULT_AUDIENCE.into()))
        );
        assert!(matches!(
            auth.verify("not-a-jwt"),
            Err(AuthError::InvalidToken(_))
        ));
    }

    #[test]
    fn roles_are_ordered() {
        let viewer = Principal {
            subject: "v".into(),
            role: Role::Viewer,
            expires_at: OffsetDateTime::now_utc(),
            token_id: Some("v".into()),
            credential_generation: None,
        };
        assert!(viewer.require(Role::Viewer).is_ok());
        assert!(
            viewer
                .require(Role::Operator)
                .expect_err("forbidden")
                .is_forbidden()
        );
    }

    #[test]
    fn node_credentials_are_neither_viewers_nor_other_nodes() {
        let auth = authenticator(&["k1"]);
        let node: NodeName = "edge-1".parse().expect("valid");
        let (credential, expires_at) = auth.mint_node_credential(&node, 7).expect("mint");
        let principal = auth.verify(&credential).expect("verifies");
        assert_eq!(principal.role, Role::Node);
        assert_eq!(principal.subject, "edge-1");
        assert_eq!(principal.credential_generation, Some(7));
        assert!(expires_at <= OffsetDateTime::now_utc() + NODE_CREDENTIAL_TTL);
        assert!(principal.require_node(&node).is_ok());
        for human in [Role::Viewer, Role::Operator, Role::Admin] {
            assert!(
                principal
                    .require(human)
                    .expect_err("not human")
                    .is_forbidden()
            );
        }
        let other: NodeName = "edge-2".parse().expect("valid");
        assert!(
            principal
                .require_node(&other)
                .expect_err("other")
                .is_forbidden()
        );
        // An admin named like the node is still not the node.
        let (admin, _) = auth
            .mint("edge-1", Role::Admin, Duration::from_secs(60))
            .expect("mint");
        let admin = auth.verify(&admin).expect("verifies");
        assert!(admin.require_node(&node).is_err());
        assert!(admin.require(Role::Node).is_err());
    }

    /// Signs `claims` with `auth`'s signing key, as a forger holding the key
    /// file could not avoid doing, to test what `verify` demands.
    fn sign(auth: &Authenticator, claims: &Claims) -> String {
        let mut header = Header::new(Algorithm::HS256);
        header.kid = Some(auth.signing.kid.clone());
        jsonwebtoken::encode(
            &header,
            claims,
            &EncodingKey::from_secret(&auth.signing.secret),
        )
        .expect("encode")
    }

    #[test]
    fn issuer_not_before_and_ids_are_checked() {
        let auth = authenticator(&["k1"]);
        let now = OffsetDateTime::now_utc().unix_timestamp();
        let good = Claims {
            sub: "erin".into(),
            role: "admin".into(),
            aud: DEFAULT_AUDIENCE.into(),
            iss: ISSUER.into(),
            iat: now,
            exp: now + 600,
            nbf: Some(now),
            jti: Some("abc".into()),
            generation: None,
        };
        let principal = auth.verify(&sign(&auth, &good)).expect("valid");
        assert_eq!(principal.token_id.as_deref(), Some("abc"));
        let other_issuer = Claims {
            iss: "someone-else".into(),
            ..good.clone()
        };
        assert!(
            matches!(auth.verify(&sign(&auth, &other_issuer)), Err(AuthError::InvalidToken(m)) if m.contains("issuer"))
        );
        let future = Claims {
            nbf: Some(now + 3600),
            ..good.clone()
        };
        assert!(
            matches!(auth.verify(&sign(&auth, &future)), Err(AuthError::InvalidToken(m)) if m.contains("nbf"))
        );
        let anonymous = Claims {
            jti: None,
            ..good.clone()
        };
        assert!(
            matches!(auth.verify(&sign(&auth, &anonymous)), Err(AuthError::InvalidToken(m)) if m.contains("jti"))
        );
        let node_without_generation = Claims {
            role: "node".into(),
            jti: None,
            ..good
        };
        assert!(
            matches!(auth.verify(&sign(&auth, &node_without_generation)), Err(AuthError::InvalidToken(m)) if m.contains("gen"))
        );
    }

    #[test]
    fn bearer_header_parsing() {
        assert_eq!(bearer_token(Some("Bearer abc")), Ok("abc"));
        assert_eq!(bearer_token(Some("bearer abc")), Ok("abc"));
        assert_eq!(bearer_token(None), Err(AuthError::MissingToken));
        assert_eq!(
            bearer_token(Some("Basic abc")),
            Err(AuthError::MalformedHeader)
        );
        assert_eq!(
            bearer_token(Some("Bearer ")),
            Err(AuthError::MalformedHeader)
        );
    }
}
