//! One download attempt: a single HTTP request that resumes the `.part`
//! file from its end, streams the rest to disk while hashing it, and checks
//! the result. The retry policy around it lives in [`super::ArtifactCache::ensure_from`].

use std::sync::atomic::Ordering;

use bytes::BytesMut;
use futures::StreamExt;
use reqwest::StatusCode;
use reqwest::header::{CONTENT_RANGE, RANGE};

use super::part::{DigestLock, PartFile, VerifiedPart};
use super::{ArtifactCache, BlobSource, CacheError, Digest, FLUSH_BYTES, Progress, blocking};

/// Why one download attempt ended without a verified file.
pub(super) enum AttemptError {
    /// Connection trouble or a server-side error: retry with backoff,
    /// keeping the partial file.
    Network {
        reason: String,
        part: Option<PartFile>,
    },
    /// The bytes or sizes did not match; the partial file is gone.
    Corrupt(String),
    /// The source refused the request (4xx): retrying would not help.
    Rejected {
        status: u16,
        message: String,
    },
    Io(CacheError),
}

impl ArtifactCache {
    /// One request: resume the `.part` file from its end, stream the rest,
    /// then verify the whole file.
    pub(super) async fn attempt(
        &self,
        source: &BlobSource,
        digest: &Digest,
        size_bytes: u64,
        lock: &DigestLock,
        kept_part: Option<PartFile>,
        progress: &(impl Fn(Progress) + Send + Sync),
    ) -> Result<VerifiedPart, AttemptError> {
        let io_error = |what: &str| {
            let context = format!("cannot {what} partial download of blob blake3:{digest}");
            move |source| AttemptError::Io(CacheError::Io { context, source })
        };
        let mut part = match kept_part {
            Some(part) => part,
            None => {
                let (path, lock) = (self.part_path(digest), lock.clone());
                blocking(move || PartFile::open(path, lock))
                    .await
                    .map_err(io_error("open"))?
            }
        };
        if part.len > size_bytes {
            let reason = format!(
                "partial download of blob {} is {} bytes, more than the expected {size_bytes}",
                digest.short(),
                part.len
            );
            return Err(discard_corrupt(part, reason, io_error("delete")).await);
        }
        progress(Progress {
            bytes_done: part.len,
            bytes_total: size_bytes,
        });

        if part.len < size_bytes {
            let mut request = self
                .client
                .get(source.blob_url(digest))
                .headers(crate::telemetry::propagate::headers())
                .bearer_auth(source.token().current());
            if part.len > 0 {
                request = request.header(RANGE, format!("bytes={}-", part.len));
            }
            self.counters.http_requests.fetch_add(1, Ordering::Relaxed);
            let (started, resumed_at) = (std::time::Instant::now(), part.len);
            let response = match request.send().await {
                Ok(response) => response,
                Err(error) => {
                    return Err(AttemptError::Network {
                        reason: format!(
                            "request for blob {} failed: {}",
                            digest.short(),
                            error_chain(&error)
                        ),
                        part: Some(part),
                    });
                }
            };
            let status = response.status();
            match status {
                StatusCode::PARTIAL_CONTENT => {
                    let content_range = response
                        .headers()
                        .get(CONTENT_RANGE)
                        .and_then(|value| value.to_str().ok())
                        .and_then(parse_content_range);
                    match content_range {
                        Some((_, total)) if total != size_bytes => {
                            let reason = format!(
                                "source holds blob {} as {total} bytes, expected {size_bytes}",
                                digest.short()
                            );
                            return Err(discard_corrupt(part, reason, io_error("delete")).await);
                        }
                        Some((start, _)) if start == part.len => {}
                        other => {
                            return Err(AttemptError::Network {
                                reason: format!(
                                    "source answered the range request for blob {} from offset {} with content-range {other:?}",
                                    digest.short(),
                                    part.len
                                ),
                                part: Some(part),
                            });
                        }
                    }
                }
                StatusCode::OK => {
                    if part.len > 0 {
                        // The source ignored the range; take the whole body.
                        part = blocking(move || part.restart())
                            .await
                            .map_err(io_error("truncate"))?;
                    }
                    if let Some(length) = response.content_length()
                        && length != size_bytes
                    {
                        let reason = format!(
                            "source holds blob {} as {length} bytes, expected {size_bytes}",
                            digest.short()
                        );
                        return Err(discard_corrupt(part, reason, io_error("delete")).await);
                    }
                }
                StatusCode::RANGE_NOT_SATISFIABLE => {
                    let reason = format!(
                        "source holds fewer than the {} bytes already downloaded of blob {}",
                        part.len,
                        digest.short()
                    );
                    return Err(discard_corrupt(part, reason, io_error("delete")).await);
                }
                status
                    if status.is_client_error()
                        && status != StatusCode::REQUEST_TIMEOUT
                        && status != StatusCode::TOO_MANY_REQUESTS =>
                {
                    return Err(AttemptError::Rejected {
                        status: status.as_u16(),
                        message: error_message(response).await,
                    });
                }
                status => {
                    let message = error_message(response).await;
                    return Err(AttemptError::Network {
                        reason: format!(
                            "source answered {status} for blob {}: {message}",
                            digest.short()
                        ),
                        part: Some(part),
                    });
                }
            }

            let mut body = response.bytes_stream();
            let mut buffer = BytesMut::with_capacity(FLUSH_BYTES);
            let mut cut: Option<String> = None;
            loop {
                let chunk = match body.next().await {
                    None => break,
                    Some(Ok(chunk)) => chunk,
                    Some(Err(error)) => {
                        cut = Some(format!(
                            "download of blob {} was cut: {}",
                            digest.short(),
                            error_chain(&error)
                        ));
                        break;
                    }
                };
                self.counters
                    .network_bytes
                    .fetch_add(chunk.len() as u64, Ordering::Relaxed);
                if let Some(rate_limit) = &self.rate_limit {
                    rate_limit.consume(chunk.len()).await;
                }
                if part.len + (buffer.len() + chunk.len()) as u64 > size_bytes {
                    let reason = format!(
                        "source sent more than the expected {size_bytes} bytes of blob {}",
                        digest.short()
                    );
                    return Err(discard_corrupt(part, reason, io_error("delete")).await);
                }
                buffer.extend_from_slice(&chunk);
                if buffer.len() >= FLUSH_BYTES {
                    let bytes = buffer.split().freeze();
                    part = blocking(move || part.append(&bytes))
                        .await
                        .map_err(io_error("write"))?;
                    progress(Progress {
                        bytes_done: part.len,
                        bytes_total: size_bytes,
                    });
                }
            }
            // Keep what arrived, even when the connection was cut.
            if !buffer.is_empty() {
                let bytes = buffer.split().freeze();
                part = blocking(move || part.append(&bytes))
                    .await
                    .map_err(io_error("write"))?;
                progress(Progress {
                    bytes_done: part.len,
                    bytes_total: size_bytes,
                });
            }
            crate::serve::metrics::download_finished(part.len - resumed_at, started.elapsed());
            if part.len < size_bytes {
                let reason = cut.unwrap_or_else(|| {
                    format!(
                        "source closed the download of blob {} after {} of {size_bytes} bytes",
                        digest.short(),
                        part.len
                    )
                });
                return Err(AttemptError::Network {
                    reason,
                    part: Some(part),
                });
            }
        }

        let digest_copy = *digest;
        match blocking(move || part.verify(&digest_copy, size_bytes)).await {
            Ok(Ok(verified)) => Ok(verified),
            Ok(Err(reason)) => Err(AttemptError::Corrupt(reason)),
            Err(error) => Err(io_error("verify")(error)),
        }
    }
}

/// Deletes a partial file whose bytes cannot be right, and says why: the
/// next attempt starts from zero.
async fn discard_corrupt(
    part: PartFile,
    reason: String,
    on_io_error: impl FnOnce(std::io::Error) -> AttemptError,
) -> AttemptError {
    match blocking(move || part.discard()).await {
        Ok(()) => AttemptError::Corrupt(reason),
        Err(error) => on_io_error(error),
    }
}

/// Parses `bytes START-END/TOTAL` into `(START, TOTAL)`.
fn parse_content_range(value: &str) -> Option<(u64, u64)> {
    let (range, total) = value.trim().strip_prefix("bytes ")?.split_once('/')?;
    let (start, _end) = range.split_once('-')?;
    Some((start.trim().parse().ok()?, total.trim().parse().ok()?))
}

/// The server's own words for a refusal: the `message` of the controller's
/// JSON error body, or the start of whatever text it sent.
async fn error_message(response: reqwest::Response) -> String {
    let status = response.status();
    let text = response.text().await.unwrap_or_default();
    match serde_json::from_str::<flotilla_api_types::ErrorBody>(&text) {
        Ok(body) => body.error.message,
        Err(_) if text.trim().is_empty() => status.to_string(),
        Err(_) => text.chars().take(200).collect(),
    }
}

/// reqwest's top-level errors say little ("error sending request"); the
/// causes say what happened.
fn error_chain(error: &dyn std::error::Error) -> String {
    let mut message = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        message.push_str(": ");
        message.push_str(&cause.to_string());
        source = cause.source();
    }
    message
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn content_range_parses() {
        assert_eq!(parse_content_range("bytes 10-99/100"), Some((10, 100)));
        assert_eq!(parse_content_range("bytes */100"), None);
        assert_eq!(parse_content_range("items 0-1/2"), None);
    }
}
