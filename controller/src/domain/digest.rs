//! Content addresses. A [`Digest`] is the blake3 hash of an artifact's bytes:
//! the artifact's identity, its object-store key and what agents verify.

use std::fmt;
use std::str::FromStr;

/// The blake3 digest of a blob. Displayed as 64 lowercase hex characters.
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

    pub fn to_hex(&self) -> String {
        hex::encode(self.0)
    }

    /// The object-store key under which the blob with this digest lives.
    pub fn object_key(&self) -> String {
        format!("blobs/{}", self.to_hex())
    }

    /// A short form for log lines and error messages: `blake3:ab12cd34…`.
    pub fn short(&self) -> String {
        format!("blake3:{}…", &self.to_hex()[..12])
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
        let mut bytes = [0u8; 32];
        hex::decode_to_slice(hex_part.to_ascii_lowercase(), &mut bytes).map_err(|_| error())?;
        Ok(Self(bytes))
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
    fn parses_plain_and_prefixed_hex() {
        let hash = blake3::hash(b"flotilla");
        let digest = Digest::from(hash);
        assert_eq!(digest.to_hex(), hash.to_hex().as_str());
        assert_eq!(digest.to_hex().parse::<Digest>(), Ok(digest));
        assert_eq!(format!("blake3:{digest}").parse::<Digest>(), Ok(digest));
        assert_eq!(digest.to_hex().to_uppercase().parse::<Digest>(), Ok(digest));
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
    }

    #[test]
    fn object_key_is_content_addressed() {
        let digest = Digest::from(blake3::hash(b"x"));
        assert_eq!(digest.object_key(), format!("blobs/{}", digest.to_hex()));
    }
}
