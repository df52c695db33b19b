//! Browsers are not clients unless configured (issue 16, item 6).
//!
//! An agent open on loopback is reachable by every web page its user
//! visits: the page can POST to `http://127.0.0.1:11434` (a "simple"
//! cross-origin request needs no preflight when its content type is
//! `text/plain`), and with DNS rebinding (a name of the attacker's that
//! first resolves to the attacker, then to 127.0.0.1) it can read the
//! answers too. So the inference routes check, before anything else:
//!
//! - `Host` (or HTTP/2's `:authority`) names this agent: a loopback name
//!   (`localhost`, 127.0.0.0/8, `::1`), the host of a URL it advertises to
//!   peers, the address it is bound to, or a name given with
//!   `--allowed-host` (`*`: any). A rebound name is none of these.
//! - A request with an `Origin` (browsers send one on every cross-origin
//!   request and on same-origin POSTs) comes from an origin given with
//!   `--cors-origin`; else it is refused. Programs (SDKs, curl) send none.
//! - A POST to a JSON endpoint says `Content-Type: application/json` (or
//!   `application/*+json`), or no content type; the form and text types a
//!   page can send without a preflight get 415.
//!
//! CORS headers are answered (by tower-http's `CorsLayer`) only for the
//! `--cors-origin` origins. Refusals use the surface's error shape.
//! `/`, `/metrics` and gRPC are not checked: browsers cannot speak gRPC,
//! and probes and scrapers reach the agent by whatever address they have.

use std::net::IpAddr;
use std::sync::Arc;

use axum::extract::{Request, State};
use axum::http::{HeaderValue, Method, header};
use axum::middleware::Next;
use axum::response::Response;

use super::{ServeError, ollama, openai};

/// Who may reach the inference routes over HTTP; see the module docs.
#[derive(Debug, Clone, Default)]
pub struct BrowserPolicy {
    /// Host names (lowercase, no port, IPv6 without brackets) accepted
    /// besides the loopback ones.
    allowed_hosts: Vec<String>,
    /// `--allowed-host '*'`: any `Host`.
    any_host: bool,
    /// Origins that may call the APIs from a browser, with CORS.
    cors_origins: Vec<HeaderValue>,
}

impl BrowserPolicy {
    /// Loopback names, plus `hosts` (`*` for any), plus CORS for `origins`
    /// (each `scheme://host[:port]`).
    pub fn new(hosts: &[String], origins: &[String]) -> Result<Self, String> {
        let mut policy = Self::default();
        for host in hosts {
            policy.allow_host(host);
        }
        for origin in origins {
            let parsed = url::Url::parse(origin)
                .map_err(|error| format!("--cors-origin {origin:?}: {error}"))?;
            let serialized = parsed.origin().ascii_serialization();
            if serialized == "null" || !matches!(parsed.path(), "" | "/") {
                return Err(format!(
                    "--cors-origin {origin:?} must be an origin like https://app.example.com"
                ));
            }
            policy.cors_origins.push(
                HeaderValue::from_str(&serialized)
                    .map_err(|error| format!("--cors-origin {origin:?}: {error}"))?,
            );
        }
        Ok(policy)
    }

    /// Accepts `host` (a name or address, with or without a port) as a
    /// `Host`; `*` accepts any.
    pub fn allow_host(&mut self, host: &str) {
        let host = host.trim();
        if host == "*" {
            self.any_host = true;
        } else if !host.is_empty() {
            self.allowed_hosts.push(normalise_host(host));
        }
    }

    /// Accepts the host of `url` (an advertised URL) as a `Host`.
    pub fn allow_host_of(&mut self, url: &str) {
        if let Some(host) = url::Url::parse(url)
            .ok()
            .and_then(|url| url.host_str().map(str::to_owned))
        {
            self.allow_host(&host);
        }
    }

    fn host_allowed(&self, host: &str) -> bool {
        if self.any_host {
            return true;
        }
        let host = normalise_host(host);
        host == "localhost"
            || host
                .parse::<IpAddr>()
                .is_ok_and(|address| address.is_loopback())
            || self.allowed_hosts.contains(&host)
    }

    fn origin_allowed(&self, origin: &HeaderValue) -> bool {
        self.cors_origins
            .iter()
            .any(|allowed| allowed.as_bytes().eq_ignore_ascii_case(origin.as_bytes()))
    }

    /// The CORS layer for `--cors-origin`, or none (no CORS headers ever).
    pub fn cors_layer(&self) -> Option<tower_http::cors::CorsLayer> {
        if self.cors_origins.is_empty() {
            return None;
        }
        Some(
            tower_http::cors::CorsLayer::new()
                .allow_origin(self.cors_origins.clone())
                .allow_methods([Method::GET, Method::POST])
                .allow_headers([header::AUTHORIZATION, header::CONTENT_TYPE]),
        )
    }

    /// Why `request` is refused, if it is.
    fn check(&self, request: &Request) -> Result<(), ServeError> {
        let host = request
            .headers()
            .get(header::HOST)
            .and_then(|value| value.to_str().ok())
            .map(str::to_owned)
            .or_else(|| request.uri().authority().map(|a| a.as_str().to_owned()));
        if let Some(host) = host
            && !self.host_allowed(&host)
        {
            return Err(ServeError::Forbidden(format!(
                "Host {:?} is not a name of this agent; start it with --allowed-host {} to serve it",
                host.chars().take(100).collect::<String>(),
                host_part(&host)
            )));
        }
        if let Some(origin) = request.headers().get(header::ORIGIN)
            && !self.origin_allowed(origin)
        {
            return Err(ServeError::Forbidden(format!(
                "requests from web pages (Origin {:?}) are refused; start the agent with \
                 --cors-origin to allow one",
                String::from_utf8_lossy(origin.as_bytes())
                    .chars()
                    .take(100)
                    .collect::<String>()
            )));
        }
        if request.method() == Method::POST
            && let Some(content_type) = request.headers().get(header::CONTENT_TYPE)
            && !is_json(content_type)
        {
            return Err(ServeError::UnsupportedMediaType(format!(
                "Content-Type {:?} is not JSON: send application/json",
                String::from_utf8_lossy(content_type.as_bytes())
                    .chars()
                    .take(100)
                    .collect::<String>()
            )));
        }
        Ok(())
    }
}

/// `application/json` or `application/<anything>+json`, parameters aside.
fn is_json(content_type: &HeaderValue) -> bool {
    let Ok(text) = content_type.to_str() else {
        return false;
    };
    let essence = text
        .split(';')
        .next()
        .unwrap_or_default()
        .trim()
        .to_ascii_lowercase();
    essence == "application/json"
        || essence
            .strip_prefix("application/")
            .is_some_and(|subtype| subtype.ends_with("+json"))
}

/// The host of a `Host` value without its port.
fn host_part(host: &str) -> &str {
    let host = host.trim();
    if let Some(rest) = host.strip_prefix('[') {
        return rest.split(']').next().unwrap_or(rest);
    }
    match host.rsplit_once(':') {
        // One colon: a port. More: a bare IPv6 address.
        Some((name, port)) if !name.contains(':') && port.bytes().all(|b| b.is_ascii_digit()) => {
            name
        }
        _ => host,
    }
}

fn normalise_host(host: &str) -> String {
    host_part(host).trim_end_matches('.').to_ascii_lowercase()
}

/// The middleware: refuses what [`BrowserPolicy::check`] refuses, in the
/// error shape of the surface asked (OpenAI under `/v1`, else Ollama).
pub(super) async fn guard(
    State(policy): State<Arc<BrowserPolicy>>,
    request: Request,
    next: Next,
) -> Response {
    match policy.check(&request) {
        Ok(()) => next.run(request).await,
        Err(error) => {
            metrics::counter!("flotilla_inference_refused_browser_total").increment(1);
            if request.uri().path().starts_with("/v1/") {
                openai::error_response(&error)
            } else {
                ollama::error_response(&error)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(host: &str, origin: Option<&str>, content_type: Option<&str>) -> Request {
        let mut builder = axum::http::Request::builder()
            .method(Method::POST)
            .uri("/v1/chat/completions")
            .header(header::HOST, host);
        if let Some(origin) = origin {
            builder = builder.header(header::ORIGIN, origin);
        }
        if let Some(content_type) = content_type {
            builder = builder.header(header::CONTENT_TYPE, content_type);
        }
        builder.body(axum::body::Body::empty()).expect("request")
    }

    #[test]
    fn loopback_names_and_configured_hosts_pass_and_foreign_ones_do_not() {
        let mut policy = BrowserPolicy::new(&["Edge-7.example".to_owned()], &[]).expect("valid");
        policy.allow_host_of("http://10.1.2.3:11434");
        let json = Some("application/json; charset=utf-8");
        for host in [
            "localhost:11434",
            "127.0.0.1:11434",
            "127.9.9.9",
            "[::1]:11434",
            "edge-7.example",
            "10.1.2.3:11434",
        ] {
            assert!(policy.check(&request(host, None, json)).is_ok(), "{host}");
        }
        let refused = policy
            .check(&request("attacker.example:11434", None, json))
            .expect_err("foreign host");
        assert_eq!(refused.http_status(), axum::http::StatusCode::FORBIDDEN);
        assert!(
            refused
                .to_string()
                .contains("--allowed-host attacker.example"),
            "{refused}"
        );
        let any = BrowserPolicy::new(&["*".to_owned()], &[]).expect("valid");
        assert!(any.check(&request("attacker.example", None, json)).is_ok());
    }

    #[test]
    fn origins_need_cors_and_only_json_is_posted() {
        let policy =
            BrowserPolicy::new(&[], &["https://app.example.com".to_owned()]).expect("valid");
        assert!(policy.cors_layer().is_some());
        assert!(BrowserPolicy::default().cors_layer().is_none());
        assert!(
            policy
                .check(&request("localhost", Some("https://app.example.com"), None))
                .is_ok()
        );
        let refused = policy
            .check(&request("localhost", Some("http://attacker.example"), None))
            .expect_err("foreign origin");
        assert_eq!(refused.http_status(), axum::http::StatusCode::FORBIDDEN);
        for content_type in [
            "text/plain",
            "application/x-www-form-urlencoded",
            "multipart/form-data; boundary=x",
        ] {
            let refused = policy
                .check(&request("localhost", None, Some(content_type)))
                .expect_err(content_type);
            assert_eq!(
                refused.http_status(),
                axum::http::StatusCode::UNSUPPORTED_MEDIA_TYPE
            );
        }
        assert!(
            policy
                .check(&request("localhost", None, Some("application/vnd.x+json")))
                .is_ok()
        );
        assert!(BrowserPolicy::new(&[], &["not an origin".to_owned()]).is_err());
        assert!(BrowserPolicy::new(&[], &["https://a.example/path".to_owned()]).is_err());
    }
}
