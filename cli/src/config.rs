//! Where the CLI finds its controller and its API token: flags, then
//! environment variables (both handled by clap), then the config file
//! (`--config FILE`, else `$XDG_CONFIG_HOME/flotilla/config.toml`, else
//! `~/.config/flotilla/config.toml`), then the default URL.
//!
//! Nothing here is persisted; the file is only read. The token is kept in a
//! [`Token`] (`flotilla-client`'s) whose `Debug` is redacted, so it cannot
//! end up in an error message or a log line by accident.

use std::path::{Path, PathBuf};

pub use flotilla_client::Token;
use serde::Deserialize;

pub const DEFAULT_URL: &str = "http://127.0.0.1:8080";

/// The config file's shape. Unknown keys are refused so that a typo such as
/// `tokn = "..."` is reported instead of silently ignored.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileConfig {
    url: Option<String>,
    token: Option<String>,
    ca_cert: Option<PathBuf>,
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config file {path}: {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
    #[error("invalid config file {path}: {message}")]
    Parse { path: String, message: String },
}

/// What the flags and environment variables said; `None` when neither did.
#[derive(Debug, Default)]
pub struct Overrides {
    pub url: Option<String>,
    pub token: Option<String>,
    pub config_file: Option<PathBuf>,
    pub ca_cert: Option<PathBuf>,
}

/// The resolved settings.
#[derive(Debug)]
pub struct Settings {
    pub url: String,
    pub token: Option<Token>,
    /// Where a token could have come from, for the hint shown when the
    /// controller answers 401 and no token was configured.
    pub config_path: Option<PathBuf>,
    /// A private CA (PEM) to trust for an `https://` controller.
    pub ca_cert: Option<PathBuf>,
}

impl Settings {
    /// Merges flags/env over the file over the defaults. The file is read
    /// only when it was named explicitly (then it must exist) or when the
    /// flags and environment left something unset (then it may be absent).
    pub fn resolve(overrides: Overrides) -> Result<Self, ConfigError> {
        let explicit = overrides.config_file.is_some();
        let config_path = overrides.config_file.or_else(default_config_path);
        let token_override = overrides.token.as_deref().and_then(Token::new);
        let needs_file = explicit || overrides.url.is_none() || token_override.is_none();
        let file = match &config_path {
            Some(path) if needs_file && (explicit || path.exists()) => load_file(path)?,
            _ => FileConfig::default(),
        };
        let url = overrides
            .url
            .or(file.url)
            .unwrap_or_else(|| DEFAULT_URL.to_owned());
        let token = token_override.or_else(|| file.token.as_deref().and_then(Token::new));
        Ok(Self {
            url,
            token,
            config_path,
            ca_cert: overrides.ca_cert.or(file.ca_cert),
        })
    }
}

/// `$XDG_CONFIG_HOME/flotilla/config.toml`, or `$HOME/.config/…`. The XDG
/// base-directory spec says a relative `XDG_CONFIG_HOME` must be ignored.
pub fn default_config_path() -> Option<PathBuf> {
    let non_empty = |name: &str| {
        std::env::var_os(name)
            .filter(|value| !value.is_empty())
            .map(PathBuf::from)
    };
    let base = non_empty("XDG_CONFIG_HOME")
        .filter(|path| path.is_absolute())
        .or_else(|| non_empty("HOME").map(|home| home.join(".config")))?;
    Some(base.join("flotilla").join("config.toml"))
}

fn load_file(path: &Path) -> Result<FileConfig, ConfigError> {
    let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
        path: path.display().to_string(),
        source,
    })?;
    warn_if_readable_by_others(path);
    toml::from_str(&text).map_err(|e| ConfigError::Parse {
        path: path.display().to_string(),
        message: e.message().to_owned(),
    })
}

/// The file may hold a token; like ssh with its keys, say so when other
/// users can read it (but still use it: refusing would lock the operator out).
#[cfg(unix)]
fn warn_if_readable_by_others(path: &Path) {
    use std::os::unix::fs::PermissionsExt;
    if let Ok(metadata) = std::fs::metadata(path)
        && metadata.permissions().mode() & 0o077 != 0
    {
        eprintln!(
            "warning: {} is readable by other users; it may hold an API token (chmod 600 it)",
            path.display()
        );
    }
}

#[cfg(not(unix))]
fn warn_if_readable_by_others(_path: &Path) {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn overrides_win_over_the_file() -> Result<(), Box<dyn std::error::Error>> {
        let dir = tempfile::tempdir()?;
        let path = dir.path().join("config.toml");
        std::fs::write(&path, "url = \"http://file:1\"\ntoken = \"from-file\"\n")?;
        let settings = Settings::resolve(Overrides {
            url: Some("http://flag:2".to_owned()),
            token: None,
            config_file: Some(path.clone()),
            ca_cert: None,
        })?;
        assert_eq!(settings.url, "http://flag:2");
        assert_eq!(
            settings.token.as_ref().map(Token::expose),
            Some("from-file")
        );

        let settings = Settings::resolve(Overrides {
            url: None,
            token: Some("from-flag".to_owned()),
            config_file: Some(path),
            ca_cert: None,
        })?;
        assert_eq!(settings.url, "http://file:1");
        assert_eq!(
            settings.token.as_ref().map(Token::expose),
            Some("from-flag")
        );
        Ok(())
    }

    #[test]
    fn an_explicit_file_must_exist_and_be_valid() -> Result<(), Box<dyn std::error::Error>> {
        let dir = tempfile::tempdir()?;
        let missing = Settings::resolve(Overrides {
            config_file: Some(dir.path().join("absent.toml")),
            ..Default::default()
        });
        assert!(matches!(missing, Err(ConfigError::Read { .. })));

        let typo = dir.path().join("typo.toml");
        std::fs::write(&typo, "tokn = \"x\"\n")?;
        let invalid = Settings::resolve(Overrides {
            config_file: Some(typo),
            ..Default::default()
        });
        assert!(matches!(invalid, Err(ConfigError::Parse { .. })));
        Ok(())
    }
}
