//! `POST /v1/flotilla/scrub` (and gRPC `Scrub`, through [`scrub_text`]):
//! the on-box scrubber on its own (issue 20), for
//! pipelines that want text free of personal data and secrets before it
//! goes anywhere: the text with placeholders, and which original each
//! stands for, so that the caller can restore an answer itself. Nothing of
//! the text is logged or kept; the redactions are counted by kind.

use axum::Json;
use axum::extract::State;
use axum::response::{IntoResponse, Response};
use flotilla_scrub::{Kind, Placeholders, Scrubber};
use serde::{Deserialize, Serialize};

use super::http::{HttpState, parse_json};
use super::{ServeError, Serving};

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
pub(super) struct PlaceholderInfo {
    pub placeholder: String,
    pub kind: &'static str,
    pub original: String,
}

pub(super) async fn scrub(State(state): State<HttpState>, body: axum::body::Bytes) -> Response {
    let answered = match parse_json::<ScrubRequest>(&body) {
        Ok(request) => scrub_text(&state.serving, &request.text, request.kinds.as_deref()).await,
        Err(error) => Err(error),
    };
    match answered {
        Ok(scrubbed) => Json(scrubbed).into_response(),
        Err(error) => super::openai::error_response(&error),
    }
}

/// What the scrubber made of a text, for either surface.
#[derive(Debug, Serialize)]
pub(super) struct Scrubbed {
    pub text: String,
    /// In the order they appear in `text`.
    pub placeholders: Vec<PlaceholderInfo>,
}

/// Scrubs `text` of `kinds` (their API names; `None`: the pattern kinds),
/// names through the model served here.
pub(super) async fn scrub_text(
    serving: &Serving,
    text: &str,
    kinds: Option<&[String]>,
) -> Result<Scrubbed, ServeError> {
    let scrubber = match kinds {
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
        let local = serving.slot.current().ok_or_else(|| {
            ServeError::Unavailable(
                "person, organisation and address are found by the local model, and none is \
                 loaded yet"
                    .to_owned(),
            )
        })?;
        super::ask_local::find_names(local, &serving.config, &[text], &wanted).await?
    };
    let mut placeholders = Placeholders::new();
    let scrubbed = scrubber.scrub_with_names(text, &names, &mut placeholders);
    count_redactions(&placeholders);
    let mut listed: Vec<PlaceholderInfo> = placeholders
        .iter()
        .map(|(placeholder, kind, original)| PlaceholderInfo {
            placeholder: placeholder.to_owned(),
            kind: kind.as_str(),
            original: original.to_owned(),
        })
        .collect();
    listed.sort_by_key(|info| scrubbed.find(&info.placeholder).unwrap_or(usize::MAX));
    Ok(Scrubbed {
        text: scrubbed,
        placeholders: listed,
    })
}

/// Counts what `placeholders` replaced, by kind, on `/metrics`
/// (`flotilla_scrub_redactions_total`): for the scrubber on its own and
/// for escalation alike.
pub(super) fn count_redactions(placeholders: &Placeholders) {
    for (kind, count) in placeholders.counts() {
        metrics::counter!("flotilla_scrub_redactions_total", "kind" => kind.as_str())
            .increment(count as u64);
    }
}
