//! The controller's error at its API boundary, and the one place where an
//! error code maps to an HTTP status and a gRPC status.

use crate::auth::AuthError;
use crate::fleet::FleetError;
use crate::objects::BlobError;
use crate::registry::RegistryError;
use crate::store::StoreError;

/// What kind of failure, independent of the protocol that reports it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorCode {
    InvalidArgument,
    Unauthenticated,
    PermissionDenied,
    NotFound,
    AlreadyExists,
    FailedPrecondition,
    /// The request body is well-formed but not acceptable (a bad artifact).
    Unprocessable,
    PayloadTooLarge,
    RangeNotSatisfiable,
    Unavailable,
    Internal,
}

impl ErrorCode {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::InvalidArgument => "invalid_argument",
            Self::Unauthenticated => "unauthenticated",
            Self::PermissionDenied => "permission_denied",
            Self::NotFound => "not_found",
            Self::AlreadyExists => "already_exists",
            Self::FailedPrecondition => "failed_precondition",
            Self::Unprocessable => "unprocessable",
            Self::PayloadTooLarge => "payload_too_large",
            Self::RangeNotSatisfiable => "range_not_satisfiable",
            Self::Unavailable => "unavailable",
            Self::Internal => "internal",
        }
    }

    pub fn http_status(self) -> axum::http::StatusCode {
        use axum::http::StatusCode;
        match self {
            Self::InvalidArgument => StatusCode::BAD_REQUEST,
            Self::Unauthenticated => StatusCode::UNAUTHORIZED,
            Self::PermissionDenied => StatusCode::FORBIDDEN,
            Self::NotFound => StatusCode::NOT_FOUND,
            Self::AlreadyExists | Self::FailedPrecondition => StatusCode::CONFLICT,
            Self::Unprocessable => StatusCode::UNPROCESSABLE_ENTITY,
            Self::PayloadTooLarge => StatusCode::PAYLOAD_TOO_LARGE,
            Self::RangeNotSatisfiable => StatusCode::RANGE_NOT_SATISFIABLE,
            Self::Unavailable => StatusCode::SERVICE_UNAVAILABLE,
            Self::Internal => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    pub fn grpc_code(self) -> tonic::Code {
        use tonic::Code;
        match self {
            Self::InvalidArgument | Self::Unprocessable => Code::InvalidArgument,
            Self::Unauthenticated => Code::Unauthenticated,
            Self::PermissionDenied => Code::PermissionDenied,
            Self::NotFound => Code::NotFound,
            Self::AlreadyExists => Code::AlreadyExists,
            Self::FailedPrecondition => Code::FailedPrecondition,
            Self::PayloadTooLarge => Code::ResourceExhausted,
            Self::RangeNotSatisfiable => Code::OutOfRange,
            Self::Unavailable => Code::Unavailable,
            Self::Internal => Code::Internal,
        }
    }
}

/// An error as reported to a caller: a code and a message naming the thing.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct ApiError {
    pub code: ErrorCode,
    pub message: String,
}

impl ApiError {
    pub fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        Self {
            code,
            message: message.into(),
        }
    }

    pub fn invalid_argument(message: impl Into<String>) -> Self {
        Self::new(ErrorCode::InvalidArgument, message)
    }

    pub fn not_found(message: impl Into<String>) -> Self {
        Self::new(ErrorCode::NotFound, message)
    }

    /// An internal failure: logged here with its detail, reported to the
    /// caller without internals.
    pub fn internal(detail: impl std::fmt::Display) -> Self {
        tracing::error!(error = %detail, "internal error");
        Self::new(
            ErrorCode::Internal,
            "internal error; see the controller's log",
        )
    }
}

impl From<AuthError> for ApiError {
    fn from(error: AuthError) -> Self {
        match error {
            AuthError::Forbidden { .. } | AuthError::NotThisNode { .. } => {
                Self::new(ErrorCode::PermissionDenied, error.to_string())
            }
            AuthError::Mint(_) => Self::internal(error),
            AuthError::RevocationsUnavailable(_) => {
                Self::new(ErrorCode::Unavailable, error.to_string())
            }
            other => Self::new(ErrorCode::Unauthenticated, other.to_string()),
        }
    }
}

impl From<StoreError> for ApiError {
    fn from(error: StoreError) -> Self {
        match error {
            StoreError::NotFound(missing) => Self::new(ErrorCode::NotFound, missing.to_string()),
            StoreError::AlreadyExists(message) => Self::new(ErrorCode::AlreadyExists, message),
            StoreError::FailedPrecondition(message) => {
                Self::new(ErrorCode::FailedPrecondition, message)
            }
            StoreError::Backend(sqlx::Error::PoolTimedOut) => Self::new(
                ErrorCode::Unavailable,
                "database unavailable: connection pool timed out",
            ),
            other => Self::internal(other),
        }
    }
}

impl From<BlobError> for ApiError {
    fn from(error: BlobError) -> Self {
        match error {
            BlobError::NotFound(digest) => Self::not_found(format!("blob {digest} not found")),
            // Misconfigured storage: the operator's to fix, and safe to say.
            BlobError::Unusable { .. } => {
                tracing::error!(%error, "object store unusable");
                Self::new(ErrorCode::Unavailable, error.to_string())
            }
            other => Self::internal(other),
        }
    }
}

impl From<RegistryError> for ApiError {
    fn from(error: RegistryError) -> Self {
        match error {
            RegistryError::InvalidArgument(message) => Self::invalid_argument(message),
            RegistryError::NotFound(message) => Self::not_found(message),
            RegistryError::AlreadyExists(message) => Self::new(ErrorCode::AlreadyExists, message),
            RegistryError::FailedPrecondition(message) => {
                Self::new(ErrorCode::FailedPrecondition, message)
            }
            RegistryError::InvalidArtifact(message) => Self::new(ErrorCode::Unprocessable, message),
            RegistryError::TooLarge { .. } => {
                Self::new(ErrorCode::PayloadTooLarge, error.to_string())
            }
            RegistryError::Interrupted(message) => {
                Self::invalid_argument(format!("upload interrupted: {message}"))
            }
            RegistryError::Store(store) => store.into(),
            RegistryError::Blob(blob) => blob.into(),
        }
    }
}

impl From<FleetError> for ApiError {
    fn from(error: FleetError) -> Self {
        match error {
            FleetError::InvalidArgument(message) => Self::invalid_argument(message),
            FleetError::TokenRejected(rejection) => {
                Self::new(ErrorCode::Unauthenticated, rejection.to_string())
            }
            FleetError::PermissionDenied(message) => {
                Self::new(ErrorCode::PermissionDenied, message)
            }
            FleetError::Store(store) => store.into(),
            FleetError::Auth(auth) => auth.into(),
        }
    }
}

impl From<ApiError> for tonic::Status {
    fn from(error: ApiError) -> Self {
        tonic::Status::new(error.code.grpc_code(), error.message)
    }
}
