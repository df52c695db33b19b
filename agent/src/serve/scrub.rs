//! `POST /v1/flotilla/scrub`: the on-box scrubber on its own (issue 20), for
//! pipelines that want text free of personal data and secrets before it
//! goes anywhere: the text with placeholders, and which original each
//! stands for, so that the caller can restore an answer itself. Nothing of
//! the text is logged or kept; the redactions are counted by kind.

use axum::Json;
use axum::extract::State;
use axum::response::{IntoResponse, Response};
use flotilla_scrub::{Kind, Placeholders, Scrubber};
use serde::{Deserialize, Serialize};

use super::ServeError;
use super::http::{HttpState, parse_json};

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ScrubRequest {
    text: String,
    /// Which kinds to replace (`email`, `phone`, `payment_card`, `iban`,
    /// `us_ssn`, `ip_address`, `secret`; `person`, `organisation` and
    /// `address` through the local model); the pattern kinds when absent.
    #[serde(default)]
    kinds: Option<Vec<String>>,
}

#[derive(Debug, Serialize)]
struct ScrubResponse {
    text: String,
    placeholders: Vec<PlaceholderInfo>,
}

#[derive(Debug, Serialize)]
struct PlaceholderInfo {
    placeholder: String,
    kind: &'static str,
    original: String,
}

pub(super) async fn scrub(State(state): State<HttpState>, body: axum::body::Bytes) -> Response {
    match answer(&state, &body).await {
        Ok(response) => Json(response).into_response(),
        Err(error) => super::openai::error_response(&error),
    }
}

async fn answer(state: &HttpState, body: &[u8]) -> Result<ScrubResponse, ServeError> {
    let request: ScrubRequest = parse_json(body)?;
    let scrubber = match &request.kinds {
        None => Scrubber::default(),
        Some(names) => Scrubber::new(
            names
                .iter()
                .map(|name| name.parse::<Kind>())
                .collect::<Result<Vec<_>, _>>()
                .map_err(|error| ServeError::InvalidRequest(format!("kinds: {error}")))?,
        ),
    };
    let wanted = scrubber.model_kinds();
    let names = if wanted.is_empty() {
        Vec::new()
    } else {
        let local = state.serving.slot.current().ok_or_else(|| {
            ServeError::Unavailable(
                "person, organisation and address are found by the local model, and none is \
                 loaded yet"
                    .to_owned(),
            )
        })?;
        super::ask_local::find_names(
            local,
            &state.serving.config,
            &[request.text.as_str()],
            &wanted,
        )
        .await?
    };
    let mut placeholders = Placeholders::new();
    let text = scrubber.scrub_with_names(&request.text, &names, &mut placeholders);
    for (kind, count) in placeholders.counts() {
        metrics::counter!("flotilla_scrub_redactions_total", "kind" => kind.as_str())
            .increment(count as u64);
    }
    let mut listed: Vec<PlaceholderInfo> = placeholders
        .iter()
        .map(|(placeholder, kind, original)| PlaceholderInfo {
            placeholder: placeholder.to_owned(),
            kind: kind.as_str(),
            original: original.to_owned(),
        })
        .collect();
    // In the order they appear in the scrubbed text.
    listed.sort_by_key(|info| text.find(&info.placeholder).unwrap_or(usize::MAX));
    Ok(ScrubResponse {
        text,
        placeholders: listed,
    })
}
