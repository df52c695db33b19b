//! Questions the agent asks its own model for escalation (issue 20): which
//! people, organisations and street addresses a request names, so that they
//! are scrubbed before it leaves ([`find_names`]), and whether the model
//! thinks it can answer the request itself ([`self_check`]). Each is one
//! greedy generation through the usual request path (the model's queue,
//! its timeout), held by a grammar so that the answer always parses.

use std::sync::Arc;

use flotilla_scrub::{Kind, Scrubber};
use serde_json::{Value, json};

use super::generation::{Alternative, Completion, FinishReason, Generation};
use super::models::ServedModel;
use super::request::{InferenceRequest, Input, Message, OutputFormat, Role};
use super::{Params, ServeConfig, ServeError};

/// Asks the local model one question of the agent's own: `system`, then
/// `user`, answered greedily within `max_tokens` and held to `format`.
async fn ask(
    local: Arc<ServedModel>,
    config: &ServeConfig,
    question: Question,
) -> Result<Completion, ServeError> {
    let model = local.info().name.clone();
    let messages = vec![
        Message::new(Role::System, question.system),
        Message::new(Role::User, question.user),
    ];
    let params = Params {
        max_tokens: Some(question.max_tokens),
        temperature: Some(0.0),
        ..Params::default()
    };
    let mut request = InferenceRequest::new(model, Input::Chat(messages), params);
    request.format = question.format;
    request.logprobs = question.logprobs;
    Generation::start(local, config, request)
        .await?
        .complete()
        .await
}

/// One question for [`ask`].
struct Question {
    system: &'static str,
    user: String,
    max_tokens: u32,
    format: OutputFormat,
    /// Alternatives to report per token, when the answer's probabilities
    /// matter.
    logprobs: Option<usize>,
}

/// What the local model is told when it lists names (the request's text
/// follows in the user message).
const NAMES_SYSTEM: &str = "You find personal data in text. List every person's name, \
    organisation name and street address that appears in the text, each copied exactly \
    as written. Use empty lists when there are none.";

/// The most of a request's text the local model reads for names.
const NAMES_MAX_READ: usize = 6000;

/// The most names of one kind taken from one request.
const NAMES_MAX_PER_KIND: usize = 32;

/// Tokens the local model may spend listing names.
const NAMES_MAX_TOKENS: u32 = 384;

/// Asks the local model for the people, organisations and street addresses
/// in `texts` (constrained to a JSON object of three string lists, so the
/// answer always parses), for the kinds of `wanted`. Only names that occur
/// in the text verbatim are kept: a model's invention cannot redact
/// anything, and a name it missed is not scrubbed, which is why these
/// kinds are opt-in and the pattern kinds are the default.
pub(super) async fn find_names(
    local: Arc<ServedModel>,
    config: &ServeConfig,
    texts: &[&str],
    wanted: &[Kind],
) -> Result<Vec<(Kind, String)>, ServeError> {
    let lists = [
        ("people", Kind::Person),
        ("organisations", Kind::Organisation),
        ("addresses", Kind::Address),
    ];
    let text: String = texts.join("\n\n").chars().take(NAMES_MAX_READ).collect();
    if text.trim().is_empty() {
        return Ok(Vec::new());
    }
    let list =
        json!({"type": "array", "items": {"type": "string"}, "maxItems": NAMES_MAX_PER_KIND});
    let schema = json!({
        "type": "object",
        "properties": {"people": list, "organisations": list, "addresses": list},
        "required": ["people", "organisations", "addresses"],
        "additionalProperties": false,
    });
    let completion = ask(
        local,
        config,
        Question {
            system: NAMES_SYSTEM,
            user: format!("Text:\n{text}"),
            max_tokens: NAMES_MAX_TOKENS,
            format: OutputFormat::JsonSchema(schema),
            logprobs: None,
        },
    )
    .await?;
    if completion.finished.reason == FinishReason::Length {
        // A cut-off list may have missed names: refuse rather than send
        // what may still hold some. 503, not 500: the model, not a bug;
        // less text may do.
        return Err(ServeError::Unavailable(format!(
            "the local model's list of names did not end within {NAMES_MAX_TOKENS} tokens"
        )));
    }
    let answer: Value = serde_json::from_str(&completion.text).map_err(|error| {
        ServeError::Unavailable(format!(
            "the local model's list of names is not JSON: {error}"
        ))
    })?;
    let mut names = Vec::new();
    for (field, kind) in lists {
        if !wanted.contains(&kind) {
            continue;
        }
        for name in answer[field].as_array().into_iter().flatten() {
            let Some(name) = name.as_str().map(str::trim) else {
                continue;
            };
            let counts = name.chars().count() >= 2
                && name.chars().any(char::is_alphanumeric)
                && text.contains(name);
            if counts
                && !names
                    .iter()
                    .any(|(k, n): &(Kind, String)| *k == kind && n == name)
            {
                names.push((kind, name.to_owned()));
            }
        }
    }
    Ok(names)
}

/// The question of the self-check: the system message, then the request.
const SELF_CHECK_SYSTEM: &str = "You decide whether you, a small local model, can answer a \
    request accurately and completely without help. Reply with yes or no only.";

/// The most of the request quoted in the self-check's question.
const SELF_CHECK_MAX_QUOTED: usize = 4000;

/// Alternatives read from the self-check's one token.
const SELF_CHECK_ALTERNATIVES: usize = 10;

/// The local model's confidence, in percent, that it can answer `request`
/// (the policy's self-check trigger): one token, constrained to `yes` or
/// `no`, and the probability mass of the answer's alternatives that spell
/// the start of `yes`, against those that spell `no`. `None` when the
/// model gave no probabilities to read (the request is then answered
/// here: the check is advice, not a gate).
pub(super) async fn self_check(
    local: Arc<ServedModel>,
    config: &ServeConfig,
    request: &InferenceRequest,
) -> Result<Option<u8>, ServeError> {
    let asked = match &request.input {
        Input::Text(prompt) => prompt.as_str(),
        Input::Chat(messages) => messages
            .iter()
            .rev()
            .find(|message| message.role == Role::User)
            .map_or("", |message| message.content.as_str()),
    };
    let asked: String = asked.chars().take(SELF_CHECK_MAX_QUOTED).collect();
    let completion = ask(
        local,
        config,
        Question {
            system: SELF_CHECK_SYSTEM,
            user: format!("Request:\n{asked}\n\nCan you answer this request accurately? yes or no"),
            max_tokens: 1,
            format: OutputFormat::OneOf(vec!["yes".to_owned(), "no".to_owned()]),
            logprobs: Some(SELF_CHECK_ALTERNATIVES),
        },
    )
    .await?;
    Ok(completion
        .logprobs
        .first()
        .and_then(|first| confidence(&first.top)))
}

/// `yes`' share of the probability of the alternatives that start `yes`
/// or `no`, in percent.
fn confidence(alternatives: &[Alternative]) -> Option<u8> {
    let (mut yes, mut no) = (0.0f64, 0.0f64);
    for alternative in alternatives {
        let text = alternative.text.trim().to_ascii_lowercase();
        let probability = f64::from(alternative.logprob).exp();
        if text.is_empty() || !probability.is_finite() {
            continue;
        }
        if "yes".starts_with(&text) {
            yes += probability;
        } else if "no".starts_with(&text) {
            no += probability;
        }
    }
    let total = yes + no;
    (total > 0.0).then(|| (100.0 * yes / total).round().clamp(0.0, 100.0) as u8)
}

/// The names in `request` of the model-found kinds the scrubber is for,
/// from the local model; none wanted, none asked. Fails closed: when they
/// are wanted and cannot be found (no local model, a full queue, a failed
/// generation), the request does not leave.
pub(super) async fn names_for(
    local: Option<Arc<ServedModel>>,
    config: &ServeConfig,
    scrubber: &Scrubber,
    request: &InferenceRequest,
) -> Result<Vec<(Kind, String)>, ServeError> {
    let wanted = scrubber.model_kinds();
    if wanted.is_empty() {
        return Ok(Vec::new());
    }
    let refused = |why: String| {
        ServeError::UpstreamUnavailable(format!(
            "the request was not sent: the policy scrubs names, and {why}"
        ))
    };
    let local = local.ok_or_else(|| refused("no local model is loaded to find them".to_owned()))?;
    let texts: Vec<&str> = match &request.input {
        Input::Text(prompt) => vec![prompt.as_str()],
        Input::Chat(messages) => messages
            .iter()
            .map(|message| message.content.as_str())
            .collect(),
    };
    find_names(local, config, &texts, &wanted)
        .await
        .map_err(|error| refused(format!("the local model could not list them: {error}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn alternative(text: &str, probability: f64) -> Alternative {
        Alternative {
            text: text.to_owned(),
            bytes: text.as_bytes().to_vec(),
            logprob: probability.ln() as f32,
        }
    }

    #[test]
    fn self_check_confidence_is_the_share_of_yes() {
        let split = [
            alternative("yes", 0.3),
            alternative("y", 0.1),
            alternative("no", 0.4),
        ];
        assert_eq!(confidence(&split), Some(50));
        assert_eq!(confidence(&[alternative(" No", 0.9)]), Some(0));
        assert_eq!(confidence(&[alternative("Yes", 0.2)]), Some(100));
        assert_eq!(confidence(&[alternative("maybe", 0.9)]), None);
        assert_eq!(confidence(&[]), None);
    }
}
