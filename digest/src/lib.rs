//! Content addresses. A [`Digest`] is the blake3 hash of an artifact's bytes:
//! the artifact's identity, its key in the controller's object store and in
//! each agent's cache, and what agents verify downloads against. Its own crate
//! because the controller and the agent share it and must not depend on each
//! other.

use std::fmt;
use std::str::FromStr;

/// The blake3 digest of a blob. Displayed as 64 lowercase hex characters,
/// which is also its file name in the cache and its path on the controller.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Digest([u8; 32]);

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error(
    "invalid blake3 digest {input:?}: expected 64 hex characters, optionally prefixed by \"blake3:\""
)]
pub struct DigestParseError {
    input: String,
}

impl Digest {
    pub fn from_bytes(bytes: [u8; 32]) -> Self {
        Self(bytes)
    }

    pub fn as_bytes(&self) -> &[u8; 32] {
        &self.0
    }

    /// The digest of `bytes`, for tests and fixtures.
    pub fn of(bytes: &[u8]) -> Self {
        Self::from(blake3::hash(bytes))
    }

    pub fn to_hex(&self) -> String {
        blake3::Hash::from_bytes(self.0).to_hex().to_string()
    }

    /// A short form for log lines and error messages: `blake3:ab12cd34ef56…`.
    pub fn short(&self) -> String {
        let hex = self.to_hex();
        format!("blake3:{}…", &hex[..12])
    }
}

impl From<blake3::Hash> for Digest {
    fn from(hash: blake3::Hash) -> Self {
        Self(*hash.as_bytes())
    }
}

impl FromStr for Digest {
    type Err = DigestParseError;

    fn from_str(input: &str) -> Result<Self, Self::Err> {
        let hex_part = input.strip_prefix("blake3:").unwrap_or(input);
        let error = || DigestParseError {
            input: input.chars().take(80).collect(),
        };
        if hex_part.len() != 64 {
            return Err(error());
        }
        blake3::Hash::from_hex(hex_part.to_ascii_lowercase())
            .map(Self::from)
            .map_err(|_| error())
    }
}

impl fmt::Display for Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_hex())
    }
}

impl fmt::Debug for Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Digest({})", self.short())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_plain_prefixed_and_uppercase_hex() {
        let digest = Digest::of(b"flotilla");
        assert_eq!(digest.to_hex().parse::<Digest>(), Ok(digest));
        assert_eq!(format!("blake3:{digest}").parse::<Digest>(), Ok(digest));
        assert_eq!(digest.to_hex().to_uppercase().parse::<Digest>(), Ok(digest));
        assert!(digest.short().starts_with("blake3:"));
    }

    #[test]
    fn rejects_wrong_length_and_non_hex() {
        assert!("abc".parse::<Digest>().is_err());
        assert!("z".repeat(64).parse::<Digest>().is_err());
        assert!(
            format!("sha256:{}", "a".repeat(64))
                .parse::<Digest>()
                .is_err()
        );
        assert!("ab.part".parse::<Digest>().is_err());
    }
}
