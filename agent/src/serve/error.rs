//! The one error type of the inference APIs, and the single place where each
//! kind of failure maps to an HTTP status and a gRPC code. The OpenAI and
//! Ollama surfaces only choose the shape of the body around the message.

use std::time::Duration;

use axum::http::StatusCode;
use flotilla_engine::EngineError;

/// Why an inference request was not answered.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ServeError {
    /// The request is malformed or a parameter is out of range.
    #[error("{0}")]
    InvalidRequest(String),
    /// The request sets a field (or a value of one) that this node does
    /// not implement: refused, never silently dropped (`serve::fields`).
    #[error("{field} is not supported: {why}")]
    UnsupportedField { field: String, why: String },
    /// `/api/pull` of a model that neither this node nor a peer serves.
    #[error(
        "model {requested:?} is not assigned to this node and no peer serves it: \
         models arrive by assignment from the controller (`flotilla assign`), not by pull"
    )]
    NotAssigned { requested: String },
    /// Authentication is required and the request carries no valid API key
    /// or JWT.
    #[error("a valid API key or token is required: send Authorization: Bearer KEY")]
    Unauthenticated,
    /// This node serves another model, or none.
    #[error("model {requested:?} is not served by this node{}", served_hint(.served))]
    ModelNotFound {
        requested: String,
        /// What this node serves instead (`None`: nothing loaded yet).
        served: Option<String>,
    },
    /// The model's request queue is full.
    #[error(
        "model {model:?} is busy: {in_flight} requests are already queued or running; retry later"
    )]
    Overloaded {
        model: String,
        in_flight: usize,
        retry_after: Duration,
    },
    /// The per-request timeout passed before the generation finished.
    #[error("the request did not finish within {0:?}")]
    Timeout(Duration),
    /// The model is going away (being replaced or unloaded).
    #[error("{0}")]
    Unavailable(String),
    /// This node does not serve the model and no peer that does could be
    /// reached (the message says which were tried).
    #[error("{0}")]
    PeerUnavailable(String),
    /// The prompt does not fit the model's context window.
    #[error("{0}")]
    ContextOverflow(String),
    /// The escalation policy's upstream could not be reached, refused the
    /// call, or failed during it (issue 20).
    #[error("the escalation upstream failed: {0}")]
    UpstreamUnavailable(String),
    /// A bug or an engine failure; the message is safe to show.
    #[error("internal error: {0}")]
    Internal(String),
    /// The request came from somewhere this agent does not serve: a
    /// foreign `Host` or a web page's `Origin` (see `serve::browser`).
    #[error("{0}")]
    Forbidden(String),
    /// A JSON endpoint was sent another content type.
    #[error("{0}")]
    UnsupportedMediaType(String),
}

fn served_hint(served: &Option<String>) -> String {
    match served {
        Some(model) => format!(" (it serves {model:?})"),
        None => " (no model is loaded yet)".to_owned(),
    }
}

/// Machine-readable kinds, used as the OpenAI error `code` and in metrics.
impl ServeError {
    pub fn code(&self) -> &'static str {
        match self {
            ServeError::InvalidRequest(_) => "invalid_request",
            ServeError::UnsupportedField { .. } => "unsupported_parameter",
            ServeError::NotAssigned { .. } => "model_not_assigned",
            ServeError::Unauthenticated => "invalid_api_key",
            ServeError::ModelNotFound { .. } => "model_not_found",
            ServeError::Overloaded { .. } => "overloaded",
            ServeError::Timeout(_) => "timeout",
            ServeError::Unavailable(_) => "unavailable",
            ServeError::PeerUnavailable(_) => "peer_unavailable",
            ServeError::ContextOverflow(_) => "context_length_exceeded",
            ServeError::UpstreamUnavailable(_) => "upstream_unavailable",
            ServeError::Internal(_) => "internal",
            ServeError::Forbidden(_) => "forbidden",
            ServeError::UnsupportedMediaType(_) => "unsupported_media_type",
        }
    }

    pub fn http_status(&self) -> StatusCode {
        match self {
            ServeError::InvalidRequest(_)
            | ServeError::UnsupportedField { .. }
            | ServeError::ContextOverflow(_) => StatusCode::BAD_REQUEST,
            ServeError::NotAssigned { .. } => StatusCode::NOT_FOUND,
            ServeError::Unauthenticated => StatusCode::UNAUTHORIZED,
            ServeError::ModelNotFound { .. } => StatusCode::NOT_FOUND,
            ServeError::Overloaded { .. } => StatusCode::TOO_MANY_REQUESTS,
            ServeError::Timeout(_) => StatusCode::GATEWAY_TIMEOUT,
            ServeError::Unavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
            ServeError::PeerUnavailable(_) | ServeError::UpstreamUnavailable(_) => {
                StatusCode::BAD_GATEWAY
            }
            ServeError::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
            ServeError::Forbidden(_) => StatusCode::FORBIDDEN,
            ServeError::UnsupportedMediaType(_) => StatusCode::UNSUPPORTED_MEDIA_TYPE,
        }
    }

    pub fn grpc_code(&self) -> tonic::Code {
        match self {
            ServeError::InvalidRequest(_)
            | ServeError::UnsupportedField { .. }
            | ServeError::ContextOverflow(_) => tonic::Code::InvalidArgument,
            ServeError::NotAssigned { .. } => tonic::Code::NotFound,
            ServeError::Unauthenticated => tonic::Code::Unauthenticated,
            ServeError::ModelNotFound { .. } => tonic::Code::NotFound,
            ServeError::Overloaded { .. } => tonic::Code::ResourceExhausted,
            ServeError::Timeout(_) => tonic::Code::DeadlineExceeded,
            ServeError::Unavailable(_)
            | ServeError::PeerUnavailable(_)
            | ServeError::UpstreamUnavailable(_) => tonic::Code::Unavailable,
            ServeError::Internal(_) => tonic::Code::Internal,
            ServeError::Forbidden(_) => tonic::Code::PermissionDenied,
            ServeError::UnsupportedMediaType(_) => tonic::Code::InvalidArgument,
        }
    }

    /// How long a client should wait before retrying, when that is the advice.
    pub fn retry_after(&self) -> Option<Duration> {
        match self {
            ServeError::Overloaded { retry_after, .. } => Some(*retry_after),
            _ => None,
        }
    }

    /// The `Retry-After` header value: whole seconds, at least one.
    pub fn retry_after_seconds(&self) -> Option<u64> {
        self.retry_after()
            .map(|after| (after.as_secs() + u64::from(after.subsec_nanos() > 0)).max(1))
    }

    pub fn to_grpc_status(&self) -> tonic::Status {
        let mut status = tonic::Status::new(self.grpc_code(), self.to_string());
        if let Some(seconds) = self.retry_after_seconds()
            && let Ok(value) = seconds.to_string().parse()
        {
            status.metadata_mut().insert("retry-after", value);
        }
        status
    }

    /// Maps an engine failure of one request.
    pub fn from_engine(error: EngineError) -> ServeError {
        match error {
            EngineError::ContextOverflow { .. } => ServeError::ContextOverflow(error.to_string()),
            EngineError::InvalidRequest(_)
            | EngineError::Template(_)
            | EngineError::Tokenizer(_) => ServeError::InvalidRequest(error.to_string()),
            EngineError::QueueFull { .. } => ServeError::Internal(error.to_string()),
            EngineError::ShutDown => {
                ServeError::Unavailable("the model is being unloaded; retry".to_owned())
            }
            other => ServeError::Internal(other.to_string()),
        }
    }
}

impl From<ServeError> for tonic::Status {
    fn from(error: ServeError) -> Self {
        error.to_grpc_status()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_name_the_model_and_statuses_agree() {
        let missing = ServeError::ModelNotFound {
            requested: "llama".to_owned(),
            served: Some("smollm2".to_owned()),
        };
        assert_eq!(
            missing.to_string(),
            "model \"llama\" is not served by this node (it serves \"smollm2\")"
        );
        assert_eq!(missing.http_status(), StatusCode::NOT_FOUND);
        assert_eq!(missing.grpc_code(), tonic::Code::NotFound);
        let busy = ServeError::Overloaded {
            model: "smollm2".to_owned(),
            in_flight: 3,
            retry_after: Duration::from_millis(1500),
        };
        assert_eq!(busy.http_status(), StatusCode::TOO_MANY_REQUESTS);
        assert_eq!(busy.retry_after_seconds(), Some(2));
        let status = busy.to_grpc_status();
        assert_eq!(status.code(), tonic::Code::ResourceExhausted);
        assert_eq!(
            status
                .metadata()
                .get("retry-after")
                .and_then(|v| v.to_str().ok()),
            Some("2")
        );
    }
}
