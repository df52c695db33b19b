//! The escalation policy (issue 20): whether a node may send a request to an
//! OpenAI-compatible upstream, when, and what it scrubs first. The
//! controller keeps versions of it in its registry and sends the one an
//! assignment names in the node's desired state; the agent keeps it and its
//! serving layer reads it. Both sides hold the same type, validated by the
//! same function, so what the controller accepted is what the agent accepts.
//!
//! [`PolicyDocument`] is the policy as JSON: the REST API's body, the
//! controller's `escalation_policies.spec` column and the agent's
//! `state.json` hold this shape, so renaming a field needs a migration.
//! [`PolicySpec`] is the validated policy; [`PolicySpec::try_from`] is the
//! one place a document is checked.
//!
//! The upstream's credential is never part of a policy: only a reference to
//! it ([`SecretRef`]: an environment variable or a file on the node), which
//! the agent resolves when it calls out. A document carrying what looks like
//! a key itself is refused, wherever it was put.

use std::collections::BTreeSet;
use std::fmt;
use std::str::FromStr;

use flotilla_proto::fleet::v1 as pb;
use flotilla_scrub::{Kind, Scrubber};
use serde::{Deserialize, Serialize};

/// The header a client sets (`true`) to ask for escalation, where the
/// policy allows it.
pub const ESCALATE_HEADER: &str = "x-flotilla-escalate";

/// At most this many model names trigger escalation.
pub const MAX_TRIGGER_MODEL_NAMES: usize = 16;

const MAX_BASE_URL_BYTES: usize = 2048;
const MAX_MODEL_NAME_BYTES: usize = 256;
const MAX_ENV_NAME_BYTES: usize = 128;
const MAX_FILE_PATH_BYTES: usize = 1024;

/// Why a policy was refused. The message names the field and never repeats
/// a value that could be a secret.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid escalation policy: {0}")]
pub struct InvalidPolicy(String);

impl InvalidPolicy {
    fn new(message: impl Into<String>) -> Self {
        Self(message.into())
    }
}

/// Whether the node may call out at all.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Egress {
    /// Never call out (an air-gapped site): the triggers are ignored.
    Forbidden,
    /// Escalated requests go to this upstream.
    Allowed(Upstream),
}

/// An OpenAI-compatible endpoint and the model to ask there.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Upstream {
    /// `http(s)://host[:port][/path]`, without user, query or fragment; the
    /// API's paths (`/chat/completions`) go after it.
    pub base_url: String,
    pub model: String,
    pub credential: SecretRef,
}

/// Where the node finds the upstream's key: resolved on the node, at call
/// time, so the key is never in the controller's database, its logs, the
/// desired state or `node show`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SecretRef {
    /// `env:NAME`: the agent process's environment variable.
    Env(String),
    /// `file:/absolute/path`: a file on the node, its content trimmed.
    File(String),
}

impl fmt::Display for SecretRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Env(name) => write!(f, "env:{name}"),
            Self::File(path) => write!(f, "file:{path}"),
        }
    }
}

impl FromStr for SecretRef {
    type Err = InvalidPolicy;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        // No message here repeats `text`: it may be the key itself.
        if let Some(name) = text.strip_prefix("env:") {
            let valid = !name.is_empty()
                && name.len() <= MAX_ENV_NAME_BYTES
                && name.starts_with(|c: char| c.is_ascii_alphabetic() || c == '_')
                && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_');
            if !valid {
                return Err(InvalidPolicy::new(format!(
                    "upstream.credential: env:NAME needs a variable name of 1 to \
                     {MAX_ENV_NAME_BYTES} letters, digits and '_', not starting with a digit"
                )));
            }
            refuse_secrets("upstream.credential", name)?;
            return Ok(Self::Env(name.to_owned()));
        }
        if let Some(path) = text.strip_prefix("file:") {
            let valid = path.starts_with('/')
                && path.len() <= MAX_FILE_PATH_BYTES
                && !path.chars().any(char::is_control);
            if !valid {
                return Err(InvalidPolicy::new(format!(
                    "upstream.credential: file:PATH needs an absolute path of at most \
                     {MAX_FILE_PATH_BYTES} bytes"
                )));
            }
            refuse_secrets("upstream.credential", path)?;
            return Ok(Self::File(path.to_owned()));
        }
        if looks_like_a_key(text) {
            return Err(InvalidPolicy::new(
                "upstream.credential looks like a literal key; keys are never accepted: \
                 keep the key on the node and give a reference, env:NAME or file:/path",
            ));
        }
        Err(InvalidPolicy::new(
            "upstream.credential must be a secret reference: env:NAME or file:/absolute/path",
        ))
    }
}

/// Whether `text` has the shape of a credential: a known token shape or a
/// long high-entropy string (the scrubber's own detector), a bearer prefix,
/// or one long word of the characters keys are made of. A variable's name
/// written without `env:` (`OPENAI_API_KEY`) is not taken for a key.
fn looks_like_a_key(text: &str) -> bool {
    let text = text.trim();
    if !Scrubber::new([Kind::Secret]).find(text).is_empty() || text.starts_with("Bearer ") {
        return true;
    }
    let variable_name = text.contains('_')
        && text
            .chars()
            .all(|c| c.is_ascii_uppercase() || c.is_ascii_digit() || c == '_');
    !variable_name
        && text.len() >= 16
        && text
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.' | '+' | '/' | '='))
}

/// Refuses a field that holds something the scrubber takes for a secret:
/// a key pasted into the URL or a model name would otherwise be stored.
fn refuse_secrets(field: &str, text: &str) -> Result<(), InvalidPolicy> {
    if Scrubber::new([Kind::Secret]).find(text).is_empty() {
        Ok(())
    } else {
        Err(InvalidPolicy::new(format!(
            "{field} contains what looks like a key or token; keys are never accepted in a \
             policy: give the upstream's key as a reference in upstream.credential"
        )))
    }
}

/// A request feature the local model may be forbidden to serve.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Feature {
    /// Tool (function) calls.
    Tools,
    /// Structured output (`response_format`, Ollama's `format`).
    ResponseFormat,
}

impl Feature {
    pub const ALL: [Feature; 2] = [Feature::Tools, Feature::ResponseFormat];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Tools => "tools",
            Self::ResponseFormat => "response_format",
        }
    }
}

impl FromStr for Feature {
    type Err = InvalidPolicy;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        Feature::ALL
            .into_iter()
            .find(|feature| feature.as_str() == text)
            .ok_or_else(|| {
                InvalidPolicy::new(format!(
                    "triggers.features: unknown feature {:?} (known: tools, response_format)",
                    text.chars().take(40).collect::<String>()
                ))
            })
    }
}

/// When a request escalates (only where egress is allowed).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Triggers {
    /// A client asking for one of these model names (`auto`, `frontier`).
    pub model_names: Vec<String>,
    /// A client setting [`ESCALATE_HEADER`] to `true`.
    pub header: bool,
    /// A prompt longer than the local model's context.
    pub prompt_over_context: bool,
    /// A request using a feature the local model must not serve.
    pub features: BTreeSet<Feature>,
    /// The local queue is full (instead of answering 429).
    pub on_overload: bool,
    /// The local generation failed.
    pub on_failure: bool,
    /// The local model's own judgement, asked with a constrained yes/no
    /// prompt: escalate when its confidence that it can answer is below
    /// this percentage (1 to 99).
    pub self_check_threshold_percent: Option<u8>,
}

impl Triggers {
    /// Whether any trigger is set: an allowed egress without one would
    /// never be used.
    pub fn any(&self) -> bool {
        !self.model_names.is_empty()
            || self.header
            || self.prompt_over_context
            || !self.features.is_empty()
            || self.on_overload
            || self.on_failure
            || self.self_check_threshold_percent.is_some()
    }
}

/// A validated escalation policy's content (a version of it is
/// [`AssignedPolicy`]).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "PolicyDocument", into = "PolicyDocument")]
pub struct PolicySpec {
    pub egress: Egress,
    pub triggers: Triggers,
    /// What is replaced by placeholders before a request leaves the node.
    pub scrub: BTreeSet<Kind>,
}

impl PolicySpec {
    /// The upstream, when the node may call out.
    pub fn upstream(&self) -> Option<&Upstream> {
        match &self.egress {
            Egress::Allowed(upstream) => Some(upstream),
            Egress::Forbidden => None,
        }
    }
}

/// The policy version an assignment carries, as the node receives it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AssignedPolicy {
    pub name: String,
    pub version: u32,
    pub spec: PolicySpec,
}

impl fmt::Display for AssignedPolicy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}@{}", self.name, self.version)
    }
}

// ---- the JSON shape ----

/// A policy as JSON (REST bodies, the controller's store, the agent's
/// `state.json`). Unknown fields are refused, so a misspelt trigger is an
/// error rather than a policy that silently never fires.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct PolicyDocument {
    /// `allowed` or `forbidden` (never call out).
    pub egress: String,
    /// Required when egress is allowed; absent when it is forbidden.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub upstream: Option<UpstreamDocument>,
    #[serde(default)]
    pub triggers: TriggersDocument,
    /// Kinds of personal data to scrub before a request leaves the node:
    /// `email`, `phone`, `payment_card`, `iban`, `us_ssn`, `ip_address`,
    /// `secret`. Absent: all of them.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scrub: Option<Vec<String>>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct UpstreamDocument {
    /// An OpenAI-compatible API root, e.g. `https://api.openai.com/v1`.
    pub base_url: String,
    /// The model to ask there.
    pub model: String,
    /// A reference to the key on the node: `env:NAME` or
    /// `file:/absolute/path`. Never the key itself.
    pub credential: String,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct TriggersDocument {
    /// Model names a client asks for to escalate, e.g. `auto`, `frontier`.
    pub model_names: Vec<String>,
    /// Whether `x-flotilla-escalate: true` on a request escalates it.
    pub header: bool,
    /// Whether a prompt longer than the local context escalates.
    pub prompt_over_context: bool,
    /// Features the local model must not serve: `tools`, `response_format`.
    pub features: Vec<String>,
    /// Whether a full local queue escalates.
    pub on_overload: bool,
    /// Whether a failed local generation escalates.
    pub on_failure: bool,
    /// Escalate when the local model's confidence that it can answer is
    /// below this percentage (1 to 99); absent: no self-check.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub self_check_threshold_percent: Option<u32>,
}

impl TryFrom<PolicyDocument> for PolicySpec {
    type Error = InvalidPolicy;

    fn try_from(document: PolicyDocument) -> Result<Self, Self::Error> {
        let triggers = triggers(document.triggers)?;
        let egress = match (document.egress.as_str(), document.upstream) {
            ("forbidden", None) => Egress::Forbidden,
            ("forbidden", Some(_)) => {
                return Err(InvalidPolicy::new(
                    "a policy whose egress is forbidden names no upstream",
                ));
            }
            ("allowed", None) => {
                return Err(InvalidPolicy::new(
                    "egress is allowed but no upstream is given",
                ));
            }
            ("allowed", Some(upstream)) => {
                if !triggers.any() {
                    return Err(InvalidPolicy::new(
                        "egress is allowed but no trigger is set, so nothing would ever escalate",
                    ));
                }
                Egress::Allowed(self::upstream(upstream)?)
            }
            (other, _) => {
                return Err(InvalidPolicy::new(format!(
                    "egress must be allowed or forbidden, not {:?}",
                    other.chars().take(40).collect::<String>()
                )));
            }
        };
        let scrub = match document.scrub {
            None => Kind::PATTERNS.into_iter().collect(),
            Some(kinds) => kinds
                .iter()
                .map(|kind| {
                    kind.parse::<Kind>()
                        .map_err(|error| InvalidPolicy::new(format!("scrub: {error}")))
                })
                .collect::<Result<_, _>>()?,
        };
        Ok(Self {
            egress,
            triggers,
            scrub,
        })
    }
}

fn upstream(document: UpstreamDocument) -> Result<Upstream, InvalidPolicy> {
    // The credential first: a key pasted there is the likeliest mistake,
    // and its message should be the one the operator sees.
    let credential = document.credential.parse::<SecretRef>()?;
    refuse_secrets("upstream.base_url", &document.base_url)?;
    let base_url = base_url(&document.base_url)?;
    upstream_model_name("upstream.model", &document.model)?;
    Ok(Upstream {
        base_url,
        model: document.model,
        credential,
    })
}

fn base_url(text: &str) -> Result<String, InvalidPolicy> {
    let invalid = |why: &str| {
        InvalidPolicy::new(format!(
            "upstream.base_url must be http(s)://host[:port][/path] of at most \
             {MAX_BASE_URL_BYTES} bytes: {why}"
        ))
    };
    if text.len() > MAX_BASE_URL_BYTES {
        return Err(invalid("it is too long"));
    }
    let url = url::Url::parse(text).map_err(|error| invalid(&error.to_string()))?;
    if !matches!(url.scheme(), "http" | "https") {
        return Err(invalid("the scheme is not http or https"));
    }
    if url.host_str().is_none_or(str::is_empty) {
        return Err(invalid("it names no host"));
    }
    // A user or query in the URL is where a key would hide; the key has its
    // own place (the credential reference).
    if !url.username().is_empty() || url.password().is_some() {
        return Err(invalid("it carries a user or password"));
    }
    if url.query().is_some() || url.fragment().is_some() {
        return Err(invalid("it carries a query or fragment"));
    }
    Ok(url.as_str().trim_end_matches('/').to_owned())
}

/// A model name as a client or upstream writes it: printable, no spaces.
fn upstream_model_name(field: &str, name: &str) -> Result<(), InvalidPolicy> {
    let valid = !name.is_empty()
        && name.len() <= MAX_MODEL_NAME_BYTES
        && name
            .chars()
            .all(|c| c.is_ascii_graphic() && !matches!(c, '"' | '\\'));
    if !valid {
        return Err(InvalidPolicy::new(format!(
            "{field} must be 1 to {MAX_MODEL_NAME_BYTES} printable ASCII characters without \
             spaces or quotes"
        )));
    }
    refuse_secrets(field, name)
}

fn triggers(document: TriggersDocument) -> Result<Triggers, InvalidPolicy> {
    if document.model_names.len() > MAX_TRIGGER_MODEL_NAMES {
        return Err(InvalidPolicy::new(format!(
            "triggers.model_names has {} names; at most {MAX_TRIGGER_MODEL_NAMES} are allowed",
            document.model_names.len()
        )));
    }
    let mut model_names = Vec::with_capacity(document.model_names.len());
    for name in document.model_names {
        upstream_model_name("triggers.model_names", &name)?;
        if model_names.contains(&name) {
            return Err(InvalidPolicy::new(format!(
                "triggers.model_names names {name:?} twice"
            )));
        }
        model_names.push(name);
    }
    let features = document
        .features
        .iter()
        .map(|feature| feature.parse::<Feature>())
        .collect::<Result<_, _>>()?;
    let self_check_threshold_percent = document
        .self_check_threshold_percent
        .map(|percent| {
            u8::try_from(percent)
                .ok()
                .filter(|percent| (1..=99).contains(percent))
                .ok_or_else(|| {
                    InvalidPolicy::new(format!(
                        "triggers.self_check_threshold_percent must be 1 to 99, not {percent}"
                    ))
                })
        })
        .transpose()?;
    Ok(Triggers {
        model_names,
        header: document.header,
        prompt_over_context: document.prompt_over_context,
        features,
        on_overload: document.on_overload,
        on_failure: document.on_failure,
        self_check_threshold_percent,
    })
}

impl From<PolicySpec> for PolicyDocument {
    fn from(spec: PolicySpec) -> Self {
        PolicyDocument::from(&spec)
    }
}

impl From<&PolicySpec> for PolicyDocument {
    fn from(spec: &PolicySpec) -> Self {
        let (egress, upstream) = match &spec.egress {
            Egress::Forbidden => ("forbidden", None),
            Egress::Allowed(upstream) => (
                "allowed",
                Some(UpstreamDocument {
                    base_url: upstream.base_url.clone(),
                    model: upstream.model.clone(),
                    credential: upstream.credential.to_string(),
                }),
            ),
        };
        let triggers = &spec.triggers;
        PolicyDocument {
            egress: egress.to_owned(),
            upstream,
            triggers: TriggersDocument {
                model_names: triggers.model_names.clone(),
                header: triggers.header,
                prompt_over_context: triggers.prompt_over_context,
                features: triggers
                    .features
                    .iter()
                    .map(|feature| feature.as_str().to_owned())
                    .collect(),
                on_overload: triggers.on_overload,
                on_failure: triggers.on_failure,
                self_check_threshold_percent: triggers.self_check_threshold_percent.map(u32::from),
            },
            scrub: Some(
                spec.scrub
                    .iter()
                    .map(|kind| kind.as_str().to_owned())
                    .collect(),
            ),
        }
    }
}

// ---- the wire ----

impl From<&AssignedPolicy> for pb::EscalationPolicy {
    fn from(policy: &AssignedPolicy) -> Self {
        let document = PolicyDocument::from(&policy.spec);
        let triggers = document.triggers;
        pb::EscalationPolicy {
            name: policy.name.clone(),
            version: policy.version,
            egress: document.egress,
            upstream: document.upstream.map(|upstream| pb::Upstream {
                base_url: upstream.base_url,
                model: upstream.model,
                credential: upstream.credential,
            }),
            triggers: Some(pb::EscalationTriggers {
                model_names: triggers.model_names,
                header: triggers.header,
                prompt_over_context: triggers.prompt_over_context,
                features: triggers.features,
                on_overload: triggers.on_overload,
                on_failure: triggers.on_failure,
                self_check: triggers
                    .self_check_threshold_percent
                    .map(|threshold_percent| pb::SelfCheck { threshold_percent }),
            }),
            scrub: document.scrub.map(|kinds| pb::ScrubSettings { kinds }),
        }
    }
}

impl TryFrom<pb::EscalationPolicy> for AssignedPolicy {
    type Error = InvalidPolicy;

    /// Checks the policy as the controller did; an absent `scrub` reads as
    /// "scrub everything", the safe side.
    fn try_from(wire: pb::EscalationPolicy) -> Result<Self, Self::Error> {
        if wire.name.is_empty() || wire.name.len() > 128 || wire.version == 0 {
            return Err(InvalidPolicy::new(
                "the policy needs a name of 1 to 128 bytes and a version of at least 1",
            ));
        }
        let triggers = wire.triggers.unwrap_or_default();
        let document = PolicyDocument {
            egress: wire.egress,
            upstream: wire.upstream.map(|upstream| UpstreamDocument {
                base_url: upstream.base_url,
                model: upstream.model,
                credential: upstream.credential,
            }),
            triggers: TriggersDocument {
                model_names: triggers.model_names,
                header: triggers.header,
                prompt_over_context: triggers.prompt_over_context,
                features: triggers.features,
                on_overload: triggers.on_overload,
                on_failure: triggers.on_failure,
                self_check_threshold_percent: triggers
                    .self_check
                    .map(|check| check.threshold_percent),
            },
            scrub: wire.scrub.map(|scrub| scrub.kinds),
        };
        Ok(Self {
            name: wire.name,
            version: wire.version,
            spec: PolicySpec::try_from(document)?,
        })
    }
}

#[cfg(test)]
mod tests;
