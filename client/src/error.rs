//! [`ClientError`]: everything that can go wrong talking to the
//! controller, each message naming the URL or file concerned and never the
//! token.

use std::path::PathBuf;

use reqwest::StatusCode;

/// How much of an unexpected (non-JSON) response body to quote in an error.
const QUOTED_BODY_CHARS: usize = 200;

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// The controller refused the request with its error body; the message
    /// is the controller's own.
    #[error("{message}")]
    Api {
        status: StatusCode,
        code: String,
        message: String,
    },
    #[error(
        "cannot connect to the controller at {url}: {reason} (is it running? set --url or FLOTILLA_URL)"
    )]
    Connect { url: String, reason: String },
    #[error("cannot use {path} as the controller's CA: {reason}")]
    CaCertificate { path: String, reason: String },
    #[error("request to {url} failed: {reason}")]
    Transport { url: String, reason: String },
    #[error("unexpected response from {url} (HTTP {status}): {detail}")]
    UnexpectedResponse {
        url: String,
        status: StatusCode,
        detail: String,
    },
    #[error("invalid controller URL {url:?}: {reason}")]
    InvalidUrl { url: String, reason: String },
    #[error("the API token contains characters that cannot be sent in an HTTP header")]
    InvalidToken,
    #[error("cannot read {path}: {source}")]
    ReadFile {
        path: PathBuf,
        source: std::io::Error,
    },
}

impl ClientError {
    /// The API's error code (`already_exists`, …) when the controller sent one.
    pub fn api_code(&self) -> Option<&str> {
        match self {
            Self::Api { code, .. } => Some(code),
            _ => None,
        }
    }
}

pub type ClientResult<T> = Result<T, ClientError>;

/// Every message in the error's source chain, joined, skipping repeats
/// (reqwest and hyper often wrap the same words twice).
pub(crate) fn error_chain(error: &(dyn std::error::Error + 'static)) -> String {
    let mut parts: Vec<String> = Vec::new();
    let mut current = Some(error);
    while let Some(error) = current {
        let text = error.to_string();
        if !parts.iter().any(|part| part.contains(&text)) {
            parts.push(text);
        }
        current = error.source();
    }
    parts.join(": ")
}

/// The innermost cause, such as "Connection refused (os error 111)".
pub(crate) fn root_cause(error: &(dyn std::error::Error + 'static)) -> String {
    let mut current = error;
    while let Some(source) = current.source() {
        current = source;
    }
    current.to_string()
}

pub(crate) fn quote_body(body: &[u8]) -> String {
    let text = String::from_utf8_lossy(body);
    let quoted: String = text.chars().take(QUOTED_BODY_CHARS).collect();
    format!("{quoted:?}")
}
