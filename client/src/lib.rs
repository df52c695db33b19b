//! A typed client for the controller's REST API (`/api/v1`), with one error
//! type for everything that can go wrong talking to it. The `flotilla` CLI
//! is built on it, and so are the tests that drive a controller over REST
//! (`flotilla_controller::testing`), so what the tests exercise is what the
//! operators' tool sends.
//!
//! Request and response bodies are the shared `flotilla-api-types`, so the
//! clients and the controller cannot drift apart. Uploads stream from disk
//! and never hold a whole file in memory. The token ([`Token`]) is sent as a
//! sensitive header and never appears in an error. Nothing is persisted.

mod error;
mod token;
mod trace;

use std::path::Path;
use std::time::Duration;

use flotilla_api_types::{
    ArtifactInfo, AssignmentChange, AssignmentRecord, BootstrapTokenInfo, CreateAssignmentRequest,
    CreateBootstrapTokenRequest, CreateModelRequest, CreatePromptVersionRequest,
    CreateRolloutRequest, CreateTokenRequest, CreateVersionRequest, DIGEST_HEADER,
    DeletedRolloutInfo, ErrorBody, EventList, HealthHistory, ModelDetail, ModelInfo, NodeInfo,
    Page, PolicyDocument, PolicyInfo, PolicySummaryInfo, PromptInfo, PromptSummaryInfo,
    RemoveAssignmentQuery, ResolutionInfo, ResolveQuery, RolloutInfo, RolloutList, TokenInfo,
    UpdateLabelsRequest, UpdateVersionRequest, VersionInfo, WhoAmI,
};
use futures::TryStreamExt;
use reqwest::header::{AUTHORIZATION, CONTENT_LENGTH, CONTENT_TYPE, HeaderValue};
use reqwest::{Method, RequestBuilder, StatusCode, Url};
use serde::Serialize;
use serde::de::DeserializeOwned;
use tokio_util::io::ReaderStream;

pub use crate::error::{ClientError, ClientResult};
use crate::error::{error_chain, quote_body, root_cause};
pub use crate::token::Token;
use crate::trace::trace_context_from_env;

/// The API caps a page at 500 items; asking for the most means fewer round
/// trips when a listing follows every page.
pub const MAX_PAGE_SIZE: u32 = 500;
/// Only connecting has a deadline: an upload of a large model, or the
/// controller hashing it, may legitimately take many minutes.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// Read size when streaming a file to the controller.
const UPLOAD_CHUNK_BYTES: usize = 1 << 20;

/// The outcome of an upload: the controller stored new bytes (201) or the
/// version already had exactly these bytes (200).
#[derive(Debug)]
pub enum Uploaded {
    Created(ArtifactInfo),
    AlreadyPresent(ArtifactInfo),
}

/// An upload's parameters besides the file.
pub struct Upload<'a> {
    pub model: &'a str,
    pub version: &'a str,
    pub path: &'a Path,
    /// blake3 hex the controller must find, or it keeps nothing.
    pub digest: &'a str,
    /// The quantization the file must have; `None` lets the controller read it.
    pub quantization: Option<&'a str>,
}

pub struct ApiClient {
    http: reqwest::Client,
    base: Url,
    authorization: Option<HeaderValue>,
    /// Appended to a 401's message when no token was configured at all.
    missing_token_hint: Option<String>,
    /// Kept so that the HTTP client can be rebuilt when either changes.
    user_agent: String,
    extra_roots: Vec<reqwest::Certificate>,
}

/// What the client calls itself unless its user says otherwise (the CLI
/// sends `flotilla-cli/<version>`).
const DEFAULT_USER_AGENT: &str = concat!("flotilla-client/", env!("CARGO_PKG_VERSION"));

fn http_client(
    base: &Url,
    user_agent: &str,
    extra_roots: &[reqwest::Certificate],
) -> ClientResult<reqwest::Client> {
    let mut builder = reqwest::Client::builder()
        .connect_timeout(CONNECT_TIMEOUT)
        .user_agent(user_agent)
        .default_headers(trace_context_from_env());
    for certificate in extra_roots {
        builder = builder.add_root_certificate(certificate.clone());
    }
    builder.build().map_err(|e| ClientError::Transport {
        url: base.to_string(),
        reason: error_chain(&e),
    })
}

impl ApiClient {
    /// `missing_token_hint` is shown with a 401 when `token` is `None`.
    pub fn new(
        base_url: &str,
        token: Option<&Token>,
        missing_token_hint: String,
    ) -> ClientResult<Self> {
        let base = parse_base_url(base_url)?;
        let authorization = token
            .map(|token| {
                let mut value = HeaderValue::from_str(&format!("Bearer {}", token.expose()))
                    .map_err(|_| ClientError::InvalidToken)?;
                value.set_sensitive(true);
                Ok(value)
            })
            .transpose()?;
        let http = http_client(&base, DEFAULT_USER_AGENT, &[])?;
        Ok(Self {
            http,
            missing_token_hint: authorization.is_none().then_some(missing_token_hint),
            base,
            authorization,
            user_agent: DEFAULT_USER_AGENT.to_owned(),
            extra_roots: Vec::new(),
        })
    }

    /// Sends `user_agent` (such as `flotilla-cli/0.1.0`) with every request
    /// instead of `flotilla-client/<version>`.
    pub fn with_user_agent(mut self, user_agent: &str) -> ClientResult<Self> {
        self.user_agent = user_agent.to_owned();
        self.http = http_client(&self.base, &self.user_agent, &self.extra_roots)?;
        Ok(self)
    }

    /// Also trusts the CA certificates (PEM) in `path`, for a controller
    /// whose TLS certificate a private CA issued.
    pub fn trusting_ca_file(mut self, path: &Path) -> ClientResult<Self> {
        let refused = |reason: String| ClientError::CaCertificate {
            path: path.display().to_string(),
            reason,
        };
        let pem = std::fs::read(path).map_err(|e| refused(e.to_string()))?;
        let certificates =
            reqwest::Certificate::from_pem_bundle(&pem).map_err(|e| refused(e.to_string()))?;
        if certificates.is_empty() {
            return Err(refused("it holds no PEM certificate".to_owned()));
        }
        self.extra_roots.extend(certificates);
        self.http = http_client(&self.base, &self.user_agent, &self.extra_roots)?;
        Ok(self)
    }

    // ---- models ----

    pub async fn list_models(
        &self,
        limit: u32,
        after: Option<&str>,
    ) -> ClientResult<Page<ModelInfo>> {
        self.get(&["models"], &page_query(limit, after)).await
    }

    pub async fn create_model(&self, request: &CreateModelRequest) -> ClientResult<ModelInfo> {
        self.send_json(Method::POST, &["models"], request).await
    }

    pub async fn model(&self, name: &str) -> ClientResult<ModelDetail> {
        self.get(&["models", name], &[]).await
    }

    pub async fn list_versions(
        &self,
        model: &str,
        limit: u32,
        after: Option<&str>,
    ) -> ClientResult<Page<VersionInfo>> {
        self.get(&["models", model, "versions"], &page_query(limit, after))
            .await
    }

    pub async fn create_version(
        &self,
        model: &str,
        request: &CreateVersionRequest,
    ) -> ClientResult<VersionInfo> {
        self.send_json(Method::POST, &["models", model, "versions"], request)
            .await
    }

    pub async fn version(&self, model: &str, version: &str) -> ClientResult<VersionInfo> {
        self.get(&["models", model, "versions", version], &[]).await
    }

    pub async fn update_version(
        &self,
        model: &str,
        version: &str,
        request: &UpdateVersionRequest,
    ) -> ClientResult<VersionInfo> {
        self.send_json(
            Method::PATCH,
            &["models", model, "versions", version],
            request,
        )
        .await
    }

    /// Streams the file at `upload.path` to the controller, calling
    /// `on_chunk` with the size of every chunk read from disk (for a
    /// progress bar). The file is never read into memory whole.
    pub async fn upload_artifact(
        &self,
        upload: &Upload<'_>,
        on_chunk: impl Fn(u64) + Send + Sync + 'static,
    ) -> ClientResult<Uploaded> {
        let read_error = |source| ClientError::ReadFile {
            path: upload.path.to_path_buf(),
            source,
        };
        let file = tokio::fs::File::open(upload.path)
            .await
            .map_err(read_error)?;
        let size = file.metadata().await.map_err(read_error)?.len();
        let stream = ReaderStream::with_capacity(file, UPLOAD_CHUNK_BYTES)
            .inspect_ok(move |chunk| on_chunk(chunk.len() as u64));
        let mut url = self.url(&[
            "models",
            upload.model,
            "versions",
            upload.version,
            "artifacts",
        ]);
        if let Some(quantization) = upload.quantization {
            url.query_pairs_mut()
                .append_pair("quantization", quantization);
        }
        // The length is declared so the controller can refuse an oversized
        // file before it is sent; if the file changes size meanwhile the
        // request fails rather than upload something else.
        let request = self
            .request(Method::POST, url.clone())
            .header(CONTENT_TYPE, "application/octet-stream")
            .header(CONTENT_LENGTH, size)
            .header(DIGEST_HEADER, upload.digest)
            .body(reqwest::Body::wrap_stream(stream));
        let (status, artifact) = self.execute(url, request).await?;
        Ok(if status == StatusCode::CREATED {
            Uploaded::Created(artifact)
        } else {
            Uploaded::AlreadyPresent(artifact)
        })
    }

    pub async fn resolve(&self, query: &ResolveQuery) -> ClientResult<ResolutionInfo> {
        let mut pairs = vec![("model", query.model.clone())];
        pairs.extend(
            query
                .requirement
                .clone()
                .map(|value| ("requirement", value)),
        );
        pairs.extend(
            query
                .quantization
                .clone()
                .map(|value| ("quantization", value)),
        );
        pairs.extend(
            query
                .memory_budget_bytes
                .map(|value| ("memory_budget_bytes", value.to_string())),
        );
        self.get(&["resolve"], &pairs).await
    }

    // ---- system prompts ----

    pub async fn list_prompts(
        &self,
        limit: u32,
        after: Option<&str>,
    ) -> ClientResult<Page<PromptSummaryInfo>> {
        self.get(&["prompts"], &page_query(limit, after)).await
    }

    pub async fn create_prompt_version(
        &self,
        name: &str,
        request: &CreatePromptVersionRequest,
    ) -> ClientResult<PromptInfo> {
        self.send_json(Method::POST, &["prompts", name, "versions"], request)
            .await
    }

    /// The latest version when `version` is `None`.
    pub async fn prompt(&self, name: &str, version: Option<u32>) -> ClientResult<PromptInfo> {
        match version {
            None => self.get(&["prompts", name], &[]).await,
            Some(version) => {
                self.get(&["prompts", name, "versions", &version.to_string()], &[])
                    .await
            }
        }
    }

    /// Every version of a prompt, newest first.
    pub async fn list_prompt_versions(
        &self,
        name: &str,
        limit: u32,
        after: Option<&str>,
    ) -> ClientResult<Page<PromptInfo>> {
        self.get(&["prompts", name, "versions"], &page_query(limit, after))
            .await
    }

    // ---- escalation policies ----

    pub async fn list_policies(
        &self,
        limit: u32,
        after: Option<&str>,
    ) -> ClientResult<Page<PolicySummaryInfo>> {
        self.get(&["policies"], &page_query(limit, after)).await
    }

    pub async fn create_policy_version(
        &self,
        name: &str,
        request: &PolicyDocument,
    ) -> ClientResult<PolicyInfo> {
        self.send_json(Method::POST, &["policies", name, "versions"], request)
            .await
    }

    /// The latest version when `version` is `None`.
    pub async fn policy(&self, name: &str, version: Option<u32>) -> ClientResult<PolicyInfo> {
        match version {
            None => self.get(&["policies", name], &[]).await,
            Some(version) => {
                self.get(&["policies", name, "versions", &version.to_string()], &[])
                    .await
            }
        }
    }

    /// Every version of a policy, newest first.
    pub async fn list_policy_versions(
        &self,
        name: &str,
        limit: u32,
        after: Option<&str>,
    ) -> ClientResult<Page<PolicyInfo>> {
        self.get(&["policies", name, "versions"], &page_query(limit, after))
            .await
    }

    // ---- fleet ----

    pub async fn create_bootstrap_token(
        &self,
        request: &CreateBootstrapTokenRequest,
    ) -> ClientResult<BootstrapTokenInfo> {
        self.send_json(Method::POST, &["nodes", "tokens"], request)
            .await
    }

    pub async fn list_nodes(
        &self,
        limit: u32,
        after: Option<&str>,
    ) -> ClientResult<Page<NodeInfo>> {
        self.get(&["nodes"], &page_query(limit, after)).await
    }

    pub async fn node(&self, name: &str) -> ClientResult<NodeInfo> {
        self.get(&["nodes", name], &[]).await
    }

    pub async fn approve_node(&self, name: &str) -> ClientResult<NodeInfo> {
        self.node_action(name, "approve").await
    }

    /// No new assignment reaches a cordoned node; what it serves stays.
    pub async fn cordon_node(&self, name: &str) -> ClientResult<NodeInfo> {
        self.node_action(name, "cordon").await
    }

    pub async fn uncordon_node(&self, name: &str) -> ClientResult<NodeInfo> {
        self.node_action(name, "uncordon").await
    }

    /// Cordons the node and empties its desired state.
    pub async fn drain_node(&self, name: &str) -> ClientResult<NodeInfo> {
        self.node_action(name, "drain").await
    }

    pub async fn update_node_labels(
        &self,
        name: &str,
        request: &UpdateLabelsRequest,
    ) -> ClientResult<NodeInfo> {
        self.send_json(Method::PATCH, &["nodes", name, "labels"], request)
            .await
    }

    /// One point per minute of the last `minutes`, oldest first.
    pub async fn node_health(&self, name: &str, minutes: u32) -> ClientResult<HealthHistory> {
        self.get(
            &["nodes", name, "health"],
            &[("minutes", minutes.to_string())],
        )
        .await
    }

    /// `POST /nodes/{name}/{action}` with an empty body.
    async fn node_action(&self, name: &str, action: &str) -> ClientResult<NodeInfo> {
        self.send_json(
            Method::POST,
            &["nodes", name, action],
            &serde_json::json!({}),
        )
        .await
    }

    // ---- assignments ----

    pub async fn create_assignment(
        &self,
        request: &CreateAssignmentRequest,
    ) -> ClientResult<AssignmentChange> {
        self.send_json(Method::POST, &["assignments"], request)
            .await
    }

    pub async fn list_assignments(
        &self,
        limit: u32,
        after: Option<&str>,
    ) -> ClientResult<Page<AssignmentRecord>> {
        self.get(&["assignments"], &page_query(limit, after)).await
    }

    pub async fn remove_assignment(
        &self,
        query: &RemoveAssignmentQuery,
    ) -> ClientResult<AssignmentChange> {
        let mut pairs = Vec::new();
        pairs.extend(query.node.clone().map(|node| ("node", node)));
        pairs.extend(
            query
                .selector
                .clone()
                .map(|selector| ("selector", selector)),
        );
        self.send_query(Method::DELETE, &["assignments"], &pairs)
            .await
    }

    // ---- rollouts ----

    pub async fn create_rollout(
        &self,
        request: &CreateRolloutRequest,
    ) -> ClientResult<RolloutInfo> {
        self.send_json(Method::POST, &["rollouts"], request).await
    }

    pub async fn list_rollouts(&self) -> ClientResult<RolloutList> {
        self.get(&["rollouts"], &[]).await
    }

    pub async fn rollout(&self, name: &str) -> ClientResult<RolloutInfo> {
        self.get(&["rollouts", name], &[]).await
    }

    /// `pause`, `resume`, `promote`, `abort` or `rollback`.
    pub async fn rollout_command(&self, name: &str, command: &str) -> ClientResult<RolloutInfo> {
        self.send_json(
            Method::POST,
            &["rollouts", name, command],
            &serde_json::json!({}),
        )
        .await
    }

    /// `DELETE /rollouts/{name}`: a rollout that has ended.
    pub async fn delete_rollout(
        &self,
        name: &str,
        release_pins: bool,
    ) -> ClientResult<DeletedRolloutInfo> {
        self.send_query(
            Method::DELETE,
            &["rollouts", name],
            &[("release_pins", release_pins.to_string())],
        )
        .await
    }

    pub async fn events(
        &self,
        rollout: Option<&str>,
        after: Option<u64>,
    ) -> ClientResult<EventList> {
        let mut query = Vec::new();
        query.extend(rollout.map(|name| ("rollout", name.to_owned())));
        query.extend(after.map(|id| ("after", id.to_string())));
        self.get(&["events"], &query).await
    }

    // ---- auth ----

    pub async fn create_token(&self, request: &CreateTokenRequest) -> ClientResult<TokenInfo> {
        self.send_json(Method::POST, &["tokens"], request).await
    }

    pub async fn whoami(&self) -> ClientResult<WhoAmI> {
        self.get(&["whoami"], &[]).await
    }

    // ---- identity and access (issue 16) ----

    pub async fn list_tokens(&self) -> ClientResult<Vec<flotilla_api_types::TokenRecord>> {
        self.get(&["tokens"], &[]).await
    }

    pub async fn revoke_token(&self, id: &str) -> ClientResult<flotilla_api_types::TokenRecord> {
        self.send_query(Method::DELETE, &["tokens", id], &[]).await
    }

    pub async fn list_bootstrap_tokens(
        &self,
    ) -> ClientResult<Vec<flotilla_api_types::BootstrapTokenRecord>> {
        self.get(&["nodes", "tokens"], &[]).await
    }

    pub async fn revoke_bootstrap_token(
        &self,
        id: &str,
    ) -> ClientResult<flotilla_api_types::BootstrapTokenRecord> {
        self.send_query(Method::DELETE, &["nodes", "tokens", id], &[])
            .await
    }

    /// Lets the next enrolment under `name` replace the node, once.
    pub async fn approve_replace_node(&self, name: &str) -> ClientResult<NodeInfo> {
        self.node_action(name, "approve-replace").await
    }

    /// Removes a node and revokes its credentials (admins only).
    pub async fn remove_node(&self, name: &str) -> ClientResult<()> {
        let url = self.url(&["nodes", name]);
        let request = self.request(Method::DELETE, url.clone());
        match self.execute::<serde_json::Value>(url, request).await {
            Ok(_) => Ok(()),
            // 204: no body to decode, which is the success.
            Err(ClientError::UnexpectedResponse { status, .. })
                if status == StatusCode::NO_CONTENT =>
            {
                Ok(())
            }
            Err(error) => Err(error),
        }
    }

    // ---- plumbing ----

    /// `{base}/api/v1/{segments…}`, each segment percent-encoded, so a name
    /// can never change which route is called.
    fn url(&self, segments: &[&str]) -> Url {
        let mut url = self.base.clone();
        if let Ok(mut path) = url.path_segments_mut() {
            path.pop_if_empty().extend(["api", "v1"]).extend(segments);
        }
        url
    }

    fn request(&self, method: Method, url: Url) -> RequestBuilder {
        let request = self.http.request(method, url);
        match &self.authorization {
            Some(value) => request.header(AUTHORIZATION, value.clone()),
            None => request,
        }
    }

    async fn get<T: DeserializeOwned>(
        &self,
        segments: &[&str],
        query: &[(&str, String)],
    ) -> ClientResult<T> {
        self.send_query(Method::GET, segments, query).await
    }

    /// A request without a body, its parameters in the query string.
    async fn send_query<T: DeserializeOwned>(
        &self,
        method: Method,
        segments: &[&str],
        query: &[(&str, String)],
    ) -> ClientResult<T> {
        let mut url = self.url(segments);
        if !query.is_empty() {
            url.query_pairs_mut().extend_pairs(query);
        }
        let request = self.request(method, url.clone());
        Ok(self.execute(url, request).await?.1)
    }

    async fn send_json<B: Serialize, T: DeserializeOwned>(
        &self,
        method: Method,
        segments: &[&str],
        body: &B,
    ) -> ClientResult<T> {
        let url = self.url(segments);
        let request = self.request(method, url.clone()).json(body);
        Ok(self.execute(url, request).await?.1)
    }

    /// Sends the request and decodes a success body as `T`, or the API's
    /// error body into [`ClientError::Api`].
    async fn execute<T: DeserializeOwned>(
        &self,
        url: Url,
        request: RequestBuilder,
    ) -> ClientResult<(StatusCode, T)> {
        let response = request
            .send()
            .await
            .map_err(|error| self.transport_error(&url, &error))?;
        let status = response.status();
        let body = response
            .bytes()
            .await
            .map_err(|error| self.transport_error(&url, &error))?;
        if status.is_success() {
            let value =
                serde_json::from_slice(&body).map_err(|error| ClientError::UnexpectedResponse {
                    url: url.to_string(),
                    status,
                    detail: format!("{error}; body starts {}", quote_body(&body)),
                })?;
            return Ok((status, value));
        }
        match serde_json::from_slice::<ErrorBody>(&body) {
            Ok(ErrorBody { error }) => {
                let mut message = error.message;
                if status == StatusCode::UNAUTHORIZED
                    && let Some(hint) = &self.missing_token_hint
                {
                    message = format!("{message} ({hint})");
                }
                Err(ClientError::Api {
                    status,
                    code: error.code,
                    message,
                })
            }
            Err(_) => Err(ClientError::UnexpectedResponse {
                url: url.to_string(),
                status,
                detail: format!("body starts {}", quote_body(&body)),
            }),
        }
    }

    /// `DELETE /models/{model}`: a model that was never published.
    pub async fn delete_model(&self, model: &str) -> ClientResult<()> {
        self.send_delete(&["models", model]).await
    }

    /// `DELETE /models/{model}/versions/{version}`: a draft version.
    pub async fn delete_version(&self, model: &str, version: &str) -> ClientResult<()> {
        self.send_delete(&["models", model, "versions", version])
            .await
    }

    /// A DELETE answered `204 No Content` on success (no body to decode).
    async fn send_delete(&self, segments: &[&str]) -> ClientResult<()> {
        let url = self.url(segments);
        let request = self.request(Method::DELETE, url.clone());
        let response = request
            .send()
            .await
            .map_err(|error| self.transport_error(&url, &error))?;
        let status = response.status();
        if status.is_success() {
            return Ok(());
        }
        let body = response
            .bytes()
            .await
            .map_err(|error| self.transport_error(&url, &error))?;
        match serde_json::from_slice::<ErrorBody>(&body) {
            Ok(ErrorBody { error }) => Err(ClientError::Api {
                status,
                code: error.code,
                message: error.message,
            }),
            Err(_) => Err(ClientError::UnexpectedResponse {
                url: url.to_string(),
                status,
                detail: format!("body starts {}", quote_body(&body)),
            }),
        }
    }

    fn transport_error(&self, url: &Url, error: &reqwest::Error) -> ClientError {
        if error.is_connect() {
            ClientError::Connect {
                url: self.base.to_string(),
                reason: root_cause(error),
            }
        } else {
            ClientError::Transport {
                url: url.to_string(),
                reason: error_chain(error),
            }
        }
    }
}

fn parse_base_url(raw: &str) -> ClientResult<Url> {
    let invalid = |reason: &str| ClientError::InvalidUrl {
        url: raw.to_owned(),
        reason: reason.to_owned(),
    };
    let url = Url::parse(raw).map_err(|e| invalid(&e.to_string()))?;
    if !matches!(url.scheme(), "http" | "https") {
        return Err(invalid("expected an http:// or https:// URL"));
    }
    if url.cannot_be_a_base() || url.host().is_none() {
        return Err(invalid(
            "expected a URL with a host, such as http://127.0.0.1:8080",
        ));
    }
    if url.query().is_some() || url.fragment().is_some() {
        return Err(invalid("the URL must not have a query or a fragment"));
    }
    Ok(url)
}

fn page_query(limit: u32, after: Option<&str>) -> Vec<(&'static str, String)> {
    let mut pairs = vec![("limit", limit.to_string())];
    pairs.extend(after.map(|cursor| ("after", cursor.to_owned())));
    pairs
}

#[cfg(test)]
mod tests {
    use super::*;

    fn client(base: &str) -> ApiClient {
        match ApiClient::new(base, None, String::new()) {
            Ok(client) => client,
            Err(error) => panic!("{base}: {error}"),
        }
    }

    #[test]
    fn segments_are_percent_encoded_under_any_base_path() {
        let root = client("http://127.0.0.1:8080");
        assert_eq!(
            root.url(&["models", "a/b?c", "versions"]).as_str(),
            "http://127.0.0.1:8080/api/v1/models/a%2Fb%3Fc/versions"
        );
        let prefixed = client("https://example.com/flotilla/");
        assert_eq!(
            prefixed.url(&["whoami"]).as_str(),
            "https://example.com/flotilla/api/v1/whoami"
        );
    }

    #[test]
    fn base_urls_are_checked() {
        for bad in [
            "127.0.0.1:8080",
            "ftp://host",
            "http://host/?x=1",
            "not a url",
        ] {
            assert!(
                matches!(parse_base_url(bad), Err(ClientError::InvalidUrl { .. })),
                "{bad} was accepted"
            );
        }
    }

    #[test]
    fn a_token_with_a_newline_inside_is_refused_without_echoing_it() {
        let token = Token::new("abc\ndef");
        let error = ApiClient::new("http://127.0.0.1:1", token.as_ref(), String::new()).err();
        let message = error.map(|e| e.to_string()).unwrap_or_default();
        assert!(message.contains("cannot be sent"), "{message}");
        assert!(!message.contains("abc"), "{message}");
    }
}
