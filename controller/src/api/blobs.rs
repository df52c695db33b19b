//! `GET /api/v1/blobs/{digest}`: streams a stored blob, honouring a single
//! HTTP `Range`, so that agents can resume an interrupted download from the
//! bytes they already verified.

use std::ops::Range;

use axum::body::Body;
use axum::extract::State;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};

use super::AppState;
use super::extract::{Caller, Path};
use crate::auth::Role;
use crate::domain::Digest;
use crate::error::{ApiError, ErrorCode};

#[utoipa::path(get, path = "/api/v1/blobs/{digest}", tag = "blobs",
    params(("digest" = String, Path, description = "blake3 hex"),
        ("Range" = Option<String>, Header, description = "one range: bytes=START-END, bytes=START- or bytes=-SUFFIX")),
    responses(
        (status = 200, description = "the whole blob", content_type = "application/octet-stream"),
        (status = 206, description = "the requested range", content_type = "application/octet-stream"),
        (status = 404, body = flotilla_api_types::ErrorBody),
        (status = 416, body = flotilla_api_types::ErrorBody)),
    security(("bearer" = [])))]
pub async fn get_blob(
    State(state): State<AppState>,
    Caller(caller): Caller,
    Path(digest): Path<String>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let digest: Digest = digest
        .parse()
        .map_err(|e: crate::domain::DigestParseError| ApiError::invalid_argument(e.to_string()))?;
    authorize(&state, &caller, &digest).await?;
    let blobs = state.registry.blobs();
    let total = blobs.size(&digest).await?;
    let requested = match headers.get(header::RANGE) {
        None => None,
        Some(value) => {
            let text = value
                .to_str()
                .map_err(|_| ApiError::invalid_argument("invalid Range header"))?;
            match parse_range(text, total) {
                Ok(range) => Some(range),
                Err(RangeError::Unsatisfiable) => return Ok(unsatisfiable(total)),
                Err(RangeError::Malformed) => {
                    return Err(ApiError::invalid_argument(format!(
                        "invalid Range header {text:?}: expected one range such as bytes=0-1023"
                    )));
                }
            }
        }
    };
    // An empty blob has no satisfiable range; serve it whole.
    let read = blobs
        .read(&digest, requested.clone().filter(|r| !r.is_empty()))
        .await?;
    let length = read.range.end - read.range.start;
    let mut response = Body::from_stream(read.stream).into_response();
    let partial = requested.is_some() && total > 0;
    if partial {
        *response.status_mut() = StatusCode::PARTIAL_CONTENT;
    }
    let response_headers = response.headers_mut();
    response_headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/octet-stream"),
    );
    response_headers.insert(header::ACCEPT_RANGES, HeaderValue::from_static("bytes"));
    response_headers.insert(header::CONTENT_LENGTH, HeaderValue::from(length));
    response_headers.insert(header::ETAG, etag(&digest));
    if partial {
        let content_range = format!(
            "bytes {}-{}/{}",
            read.range.start,
            read.range.end - 1,
            read.total_size
        );
        response_headers.insert(
            header::CONTENT_RANGE,
            HeaderValue::from_str(&content_range).map_err(ApiError::internal)?,
        );
    }
    metrics::counter!("flotilla_blob_bytes_served_total").increment(length);
    Ok(response)
}

fn etag(digest: &Digest) -> HeaderValue {
    HeaderValue::from_str(&format!("\"{}\"", digest.to_hex()))
        .unwrap_or(HeaderValue::from_static("\"\""))
}

fn unsatisfiable(total: u64) -> Response {
    let mut response = ApiError::new(
        ErrorCode::RangeNotSatisfiable,
        format!("requested range is outside the blob's {total} bytes"),
    )
    .into_response();
    if let Ok(value) = HeaderValue::from_str(&format!("bytes */{total}")) {
        response.headers_mut().insert(header::CONTENT_RANGE, value);
    }
    response
}

#[derive(Debug, PartialEq, Eq)]
enum RangeError {
    Malformed,
    Unsatisfiable,
}

/// Parses one `bytes=` range against a blob of `total` bytes (RFC 9110 §14).
fn parse_range(header_value: &str, total: u64) -> Result<Range<u64>, RangeError> {
    let spec = header_value
        .trim()
        .strip_prefix("bytes=")
        .ok_or(RangeError::Malformed)?;
    if spec.contains(',') {
        // Several ranges would need multipart/byteranges; agents never ask.
        return Err(RangeError::Malformed);
    }
    let (start, end) = spec.split_once('-').ok_or(RangeError::Malformed)?;
    let number = |text: &str| {
        text.trim()
            .parse::<u64>()
            .map_err(|_| RangeError::Malformed)
    };
    let range = match (start.trim().is_empty(), end.trim().is_empty()) {
        (true, true) => return Err(RangeError::Malformed),
        (true, false) => {
            let suffix = number(end)?;
            if suffix == 0 {
                return Err(RangeError::Unsatisfiable);
            }
            total.saturating_sub(suffix)..total
        }
        (false, true) => number(start)?..total,
        (false, false) => {
            let (first, last) = (number(start)?, number(end)?);
            if last < first {
                return Err(RangeError::Malformed);
            }
            first..last.saturating_add(1).min(total)
        }
    };
    if range.start >= total {
        return Err(RangeError::Unsatisfiable);
    }
    Ok(range)
}

/// Operators (viewer and up) may read any blob; a node may read only the
/// artifact its desired state assigns it, so a leaked node credential does
/// not open the whole registry.
async fn authorize(
    state: &AppState,
    caller: &crate::auth::Principal,
    digest: &Digest,
) -> Result<(), ApiError> {
    if caller.role != Role::Node {
        caller.require(Role::Viewer)?;
        return Ok(());
    }
    let name: crate::domain::NodeName = caller
        .subject
        .parse()
        .map_err(|_| ApiError::new(ErrorCode::PermissionDenied, "not a node credential"))?;
    let node = state.fleet.get_node(&name).await?;
    let assigned = node
        .desired
        .assignment
        .is_some_and(|assignment| assignment.digest == digest.to_hex());
    if assigned {
        Ok(())
    } else {
        Err(ApiError::new(
            ErrorCode::PermissionDenied,
            format!(
                "node {name} may download only the artifact assigned to it, not blake3:{}",
                digest.short()
            ),
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranges_follow_rfc_9110() {
        assert_eq!(parse_range("bytes=0-9", 100), Ok(0..10));
        assert_eq!(parse_range("bytes=90-", 100), Ok(90..100));
        assert_eq!(parse_range("bytes=-10", 100), Ok(90..100));
        assert_eq!(parse_range("bytes=-1000", 100), Ok(0..100));
        assert_eq!(parse_range("bytes=50-1000", 100), Ok(50..100));
        assert_eq!(
            parse_range("bytes=100-", 100),
            Err(RangeError::Unsatisfiable)
        );
        assert_eq!(parse_range("bytes=-0", 100), Err(RangeError::Unsatisfiable));
        assert_eq!(parse_range("bytes=9-0", 100), Err(RangeError::Malformed));
        assert_eq!(parse_range("items=0-1", 100), Err(RangeError::Malformed));
        assert_eq!(
            parse_range("bytes=0-1,5-6", 100),
            Err(RangeError::Malformed)
        );
        assert_eq!(parse_range("bytes=-", 100), Err(RangeError::Malformed));
        assert_eq!(parse_range("bytes=x-1", 100), Err(RangeError::Malformed));
    }
}
