//! The JWT key file: every key the controller accepts, and which one signs.
//!
//! ```toml
//! [[keys]]
//! kid = "2026-11"
//! secret = "<base64 or hex of at least 32 random bytes>"
//! signing = true
//! ```
//!
//! The file is created with one random key (mode 0600) on first start. To
//! rotate: add a key with `signing = true`, set the old one's `signing` to
//! false, restart; remove the old key once tokens it signed have expired.

use std::io::Write;
use std::path::Path;

use rand::RngCore;
use serde::{Deserialize, Serialize};

/// Secrets shorter than this are refused: HS256 needs at least 256 bits.
const MIN_SECRET_BYTES: usize = 32;

#[derive(Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct KeyEntry {
    pub kid: String,
    /// Hex-encoded secret.
    secret: String,
    #[serde(default)]
    pub signing: bool,
}

impl std::fmt::Debug for KeyEntry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KeyEntry")
            .field("kid", &self.kid)
            .field("secret", &"<redacted>")
            .field("signing", &self.signing)
            .finish()
    }
}

impl KeyEntry {
    pub fn from_secret(kid: &str, secret: &[u8], signing: bool) -> Self {
        Self {
            kid: kid.to_owned(),
            secret: hex::encode(secret),
            signing,
        }
    }

    pub fn secret_bytes(&self) -> Result<Vec<u8>, KeyFileError> {
        let bytes = hex::decode(self.secret.trim()).map_err(|_| KeyFileError::Invalid {
            reason: format!("key {:?}: secret is not hex", self.kid),
        })?;
        if bytes.len() < MIN_SECRET_BYTES {
            return Err(KeyFileError::Invalid {
                reason: format!(
                    "key {:?}: secret has {} bytes, at least {MIN_SECRET_BYTES} are needed",
                    self.kid,
                    bytes.len()
                ),
            });
        }
        Ok(bytes)
    }
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq, Default)]
pub struct KeyFile {
    pub keys: Vec<KeyEntry>,
}

/// The key that signs new tokens.
#[derive(Clone)]
pub struct SigningKey {
    pub kid: String,
    pub secret: Vec<u8>,
}

#[derive(Debug, thiserror::Error)]
pub enum KeyFileError {
    #[error("cannot read key file {path}: {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
    #[error("cannot write key file {path}: {source}")]
    Write {
        path: String,
        source: std::io::Error,
    },
    #[error("invalid key file: {reason}")]
    Invalid { reason: String },
}

impl KeyFile {
    /// A key file with one fresh random signing key.
    pub fn generate(kid: &str) -> Self {
        Self::generate_many(&[kid])
    }

    /// Fresh random keys; the first one signs.
    pub fn generate_many(kids: &[&str]) -> Self {
        let keys = kids
            .iter()
            .enumerate()
            .map(|(index, kid)| {
                let mut secret = [0u8; MIN_SECRET_BYTES];
                rand::rng().fill_bytes(&mut secret);
                KeyEntry::from_secret(kid, &secret, index == 0)
            })
            .collect();
        Self { keys }
    }

    pub fn load(path: &Path) -> Result<Self, KeyFileError> {
        let text = std::fs::read_to_string(path).map_err(|source| KeyFileError::Read {
            path: path.display().to_string(),
            source,
        })?;
        let file: Self = toml::from_str(&text).map_err(|e| KeyFileError::Invalid {
            reason: format!("{}: {}", path.display(), e.message()),
        })?;
        file.signing_key()?;
        for key in &file.keys {
            key.secret_bytes()?;
        }
        Ok(file)
    }

    /// Loads the key file, creating it with one random key if it is missing.
    /// Returns whether it was created.
    pub fn load_or_create(path: &Path) -> Result<(Self, bool), KeyFileError> {
        if path.exists() {
            return Ok((Self::load(path)?, false));
        }
        let file = Self::generate("k1");
        let text = toml::to_string(&file).map_err(|e| KeyFileError::Invalid {
            reason: e.to_string(),
        })?;
        write_private_file(path, text.as_bytes()).map_err(|source| KeyFileError::Write {
            path: path.display().to_string(),
            source,
        })?;
        Ok((file, true))
    }

    pub fn signing_key(&self) -> Result<SigningKey, KeyFileError> {
        let mut signing = self.keys.iter().filter(|key| key.signing);
        let key = signing.next().ok_or_else(|| KeyFileError::Invalid {
            reason: "no key has signing = true".into(),
        })?;
        if signing.next().is_some() {
            return Err(KeyFileError::Invalid {
                reason: "more than one key has signing = true".into(),
            });
        }
        Ok(SigningKey {
            kid: key.kid.clone(),
            secret: key.secret_bytes()?,
        })
    }
}

/// Writes a file readable by its owner only (0600), creating parent dirs.
pub fn write_private_file(path: &Path, contents: &[u8]) -> std::io::Result<()> {
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent)?;
    }
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create(true).truncate(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(0o600);
    }
    let mut file = options.open(path)?;
    file.write_all(contents)?;
    file.sync_all()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn created_key_file_is_private_and_reloads() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("keys.toml");
        let (created, was_created) = KeyFile::load_or_create(&path).expect("create");
        assert!(was_created);
        let (loaded, was_created) = KeyFile::load_or_create(&path).expect("load");
        assert!(!was_created);
        assert_eq!(created, loaded);
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(&path)
                .expect("metadata")
                .permissions()
                .mode();
            assert_eq!(mode & 0o777, 0o600);
        }
    }

    #[test]
    fn short_secrets_and_ambiguous_signing_are_refused() {
        let weak = KeyFile {
            keys: vec![KeyEntry::from_secret("k", b"short", true)],
        };
        assert!(weak.signing_key().is_err());
        let mut two = KeyFile::generate_many(&["a", "b"]);
        two.keys[1].signing = true;
        assert!(two.signing_key().is_err());
    }
}
