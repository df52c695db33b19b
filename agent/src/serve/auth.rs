//! Who may use the inference APIs (DESIGN.md §8). Off by default, which the
//! agent allows only while both APIs listen on loopback; otherwise it needs
//! an API key file (`--api-keys-file`) or an explicit
//! `--allow-unauthenticated-inference`. Clients send a key as
//! `Authorization: Bearer KEY` (what OpenAI clients send; Ollama clients can
//! set the header), on HTTP and in gRPC metadata alike. `/metrics`, `/`
//! and the gRPC health and reflection services stay open for probes.
//!
//! Only blake3 digests of the keys are kept, and a presented key is
//! compared digest to digest (constant time), against every key.
//! A forwarded request carries the client's credential to the peer, so a
//! fleet shares one key file. JWT verification is not built yet.

use std::net::SocketAddr;
use std::path::Path;

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
        let Some(key) = authorization.and_then(bearer) else {
            return false;
        };
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
    keys: Option<&ApiKeys>,
    allow_unauthenticated: bool,
    listening: &[(&str, SocketAddr)],
) -> Result<(), String> {
    if keys.is_some() || allow_unauthenticated {
        return Ok(());
    }
    match listening.iter().find(|(_, addr)| !addr.ip().is_loopback()) {
        Some((flag, addr)) => Err(format!(
            "inference listens on {addr} ({flag}), beyond loopback, without authentication: \
             give --api-keys-file, or --allow-unauthenticated-inference to accept that"
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
        assert!(check_exposure(Some(&keys), false, &[("--grpc", open)]).is_ok());
    }
}
