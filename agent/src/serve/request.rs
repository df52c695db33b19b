//! Inference requests as the agent understands them, whichever API they came
//! through: plain Rust, no serde DTOs or prost types. The surfaces convert
//! their wire bodies into these once, on the way in, and validation happens
//! here.

use flotilla_engine::tools::{ToolCall, ToolChoice, ToolSpec, tool_call_grammar};
use flotilla_engine::{Grammar, SamplingParams};
use serde_json::Value;

use super::ServeError;

/// Who speaks a chat message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    System,
    User,
    Assistant,
    Tool,
}

impl Role {
    /// Parses the role names the OpenAI and Ollama APIs use (`developer` is
    /// OpenAI's newer name for `system`).
    pub fn parse(text: &str) -> Result<Role, ServeError> {
        match text {
            "system" | "developer" => Ok(Role::System),
            "user" => Ok(Role::User),
            "assistant" => Ok(Role::Assistant),
            "tool" => Ok(Role::Tool),
            other => Err(ServeError::InvalidRequest(format!(
                "unknown message role {other:?} (expected system, user, assistant or tool)"
            ))),
        }
    }

    /// The name chat templates expect.
    pub fn as_str(self) -> &'static str {
        match self {
            Role::System => "system",
            Role::User => "user",
            Role::Assistant => "assistant",
            Role::Tool => "tool",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Message {
    pub role: Role,
    pub content: String,
    /// Calls an assistant message made (replayed by the client with their results).
    pub tool_calls: Vec<ToolCall>,
}

impl Message {
    pub fn new(role: Role, content: impl Into<String>) -> Message {
        Message {
            role,
            content: content.into(),
            tool_calls: Vec::new(),
        }
    }
}

/// The shape an answer must take; anything but `Text` is enforced by constrained
/// decoding, so the answer always parses (and validates against a schema).
#[derive(Debug, Clone, Default, PartialEq)]
pub enum OutputFormat {
    #[default]
    Text,
    /// Any JSON object.
    JsonObject,
    /// A JSON value valid against this schema.
    JsonSchema(Value),
    /// Exactly one of these words: the agent's own questions to its model
    /// (escalation's self-check); no API surface asks for it.
    OneOf(Vec<String>),
}

/// Tools the model may call in a chat.
#[derive(Debug, Clone, PartialEq)]
pub struct Tools {
    pub specs: Vec<ToolSpec>,
    pub choice: ToolChoice,
    /// More than one call per answer.
    pub parallel: bool,
}

/// Tools a request may carry.
pub const MAX_TOOLS: usize = 64;

impl Tools {
    /// Checks names (unique, OpenAI's `^[a-zA-Z0-9_-]{1,64}$`), parameter schemas (objects)
    /// and that a named choice names one of the tools.
    pub fn validate(&self) -> Result<(), ServeError> {
        let invalid = |message: String| Err(ServeError::InvalidRequest(message));
        if self.specs.is_empty() {
            return invalid("tools must not be empty when a tool choice asks for a call".into());
        }
        if self.specs.len() > MAX_TOOLS {
            return invalid(format!(
                "{} tools given; at most {MAX_TOOLS} are allowed",
                self.specs.len()
            ));
        }
        for (index, spec) in self.specs.iter().enumerate() {
            let name_ok = (1..=64).contains(&spec.name.len())
                && spec
                    .name
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-');
            if !name_ok {
                return invalid(format!(
                    "tools[{index}]: function name {:?} must be 1-64 letters, digits, _ or -",
                    spec.name
                ));
            }
            if self.specs[..index]
                .iter()
                .any(|other| other.name == spec.name)
            {
                return invalid(format!("tools[{index}]: {:?} is defined twice", spec.name));
            }
            if !spec.parameters.is_object() {
                return invalid(format!(
                    "tools[{index}]: parameters of {:?} must be a JSON Schema object",
                    spec.name
                ));
            }
        }
        if let ToolChoice::Function(name) = &self.choice
            && !self.specs.iter().any(|spec| &spec.name == name)
        {
            return invalid(format!("tool_choice names {name:?}, which is not in tools"));
        }
        Ok(())
    }
}

/// What to generate from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Input {
    /// A raw prompt, completed as is (no chat template, no system prompt).
    Text(String),
    /// A conversation: the assignment's system prompt is applied, then the
    /// model's chat template.
    Chat(Vec<Message>),
}

/// Generation parameters a client may set; `None` takes the server default.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Params {
    pub max_tokens: Option<u32>,
    pub temperature: Option<f32>,
    pub top_p: Option<f32>,
    pub top_k: Option<u32>,
    pub min_p: Option<f32>,
    pub repetition_penalty: Option<f32>,
    /// OpenAI's penalties for tokens already generated, within [-2, 2].
    pub presence_penalty: Option<f32>,
    pub frequency_penalty: Option<f32>,
    pub seed: Option<u64>,
    pub stop: Vec<String>,
}

/// Stop sequences a request may carry.
pub const MAX_STOP_SEQUENCES: usize = 16;

impl Params {
    /// Refuses values that make no sense instead of clamping them.
    pub fn validate(&self) -> Result<(), ServeError> {
        let invalid = |message: String| Err(ServeError::InvalidRequest(message));
        if self.max_tokens == Some(0) {
            return invalid("max_tokens must be at least 1".to_owned());
        }
        if let Some(temperature) = self.temperature
            && !(temperature.is_finite() && (0.0..=2.0).contains(&temperature))
        {
            return invalid(format!("temperature {temperature} must be within [0, 2]"));
        }
        if let Some(top_p) = self.top_p
            && !(top_p.is_finite() && (0.0..=1.0).contains(&top_p))
        {
            return invalid(format!("top_p {top_p} must be within [0, 1]"));
        }
        if let Some(min_p) = self.min_p
            && !(min_p.is_finite() && (0.0..=1.0).contains(&min_p))
        {
            return invalid(format!("min_p {min_p} must be within [0, 1]"));
        }
        if let Some(penalty) = self.repetition_penalty
            && !(penalty.is_finite() && penalty > 0.0)
        {
            return invalid(format!("repetition penalty {penalty} must be > 0"));
        }
        for (name, penalty) in [
            ("presence_penalty", self.presence_penalty),
            ("frequency_penalty", self.frequency_penalty),
        ] {
            if let Some(penalty) = penalty
                && !(penalty.is_finite() && (-2.0..=2.0).contains(&penalty))
            {
                return invalid(format!("{name} {penalty} must be within [-2, 2]"));
            }
        }
        if self.stop.len() > MAX_STOP_SEQUENCES {
            return invalid(format!(
                "{} stop sequences given; at most {MAX_STOP_SEQUENCES} are allowed",
                self.stop.len()
            ));
        }
        Ok(())
    }

    /// The engine's sampling parameters: its defaults, overridden by what
    /// the request set. A temperature of 0 is greedy decoding.
    pub fn sampling(&self) -> SamplingParams {
        let mut sampling = SamplingParams::default();
        if let Some(temperature) = self.temperature {
            sampling.temperature = temperature;
        }
        if let Some(top_p) = self.top_p {
            sampling.top_p = top_p;
        }
        if let Some(top_k) = self.top_k {
            sampling.top_k = top_k as usize;
        }
        if let Some(min_p) = self.min_p {
            sampling.min_p = min_p;
        }
        if let Some(penalty) = self.repetition_penalty {
            sampling.repetition_penalty = penalty;
        }
        sampling.presence_penalty = self.presence_penalty.unwrap_or(0.0);
        sampling.frequency_penalty = self.frequency_penalty.unwrap_or(0.0);
        sampling.seed = self.seed;
        sampling
    }
}

/// One inference request.
#[derive(Debug, Clone, PartialEq)]
pub struct InferenceRequest {
    /// The registry name of the model (`assignment.model`).
    pub model: String,
    pub input: Input,
    pub params: Params,
    pub format: OutputFormat,
    /// Tools the model may call (chats only); `None` when it may call none.
    pub tools: Option<Tools>,
    /// Report each token's log probability and this many likeliest alternatives
    /// (at most [`MAX_TOP_LOGPROBS`]).
    pub logprobs: Option<usize>,
}

/// OpenAI's limit on `top_logprobs`.
pub const MAX_TOP_LOGPROBS: usize = 20;

impl InferenceRequest {
    pub fn new(model: String, input: Input, params: Params) -> InferenceRequest {
        InferenceRequest {
            model,
            input,
            params,
            format: OutputFormat::Text,
            tools: None,
            logprobs: None,
        }
    }

    /// The grammar the answer is held to, if any.
    pub fn grammar(&self) -> Option<Grammar> {
        if let Some(tools) = &self.tools {
            return Some(tool_call_grammar(
                &tools.specs,
                &tools.choice,
                tools.parallel,
            ));
        }
        match &self.format {
            OutputFormat::Text => None,
            OutputFormat::JsonObject => Some(Grammar::json_object()),
            OutputFormat::JsonSchema(schema) => Some(Grammar::json_schema(schema.clone())),
            OutputFormat::OneOf(words) => {
                // JSON string syntax is Lark's string literal syntax.
                let alternatives: Vec<String> = words
                    .iter()
                    .map(|word| Value::String(word.clone()).to_string())
                    .collect();
                Some(Grammar::lark(format!(
                    "start: {}",
                    alternatives.join(" | ")
                )))
            }
        }
    }

    /// Checks what the parameters alone cannot: tools need a chat, and an answer is
    /// either constrained to a format or to tool calls, not both.
    pub fn validate(&self) -> Result<(), ServeError> {
        self.params.validate()?;
        if let Some(top) = self.logprobs
            && top > MAX_TOP_LOGPROBS
        {
            return Err(ServeError::InvalidRequest(format!(
                "top_logprobs {top} must be within [0, {MAX_TOP_LOGPROBS}]"
            )));
        }
        if let Some(tools) = &self.tools {
            tools.validate()?;
            if matches!(self.input, Input::Text(_)) {
                return Err(ServeError::InvalidRequest(
                    "tools need a chat: a text completion cannot call them".to_owned(),
                ));
            }
            if self.format != OutputFormat::Text {
                return Err(ServeError::InvalidRequest(
                    "a structured output format together with tools is not supported: send one of them".to_owned(),
                ));
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parameters_out_of_range_are_refused() {
        assert!(Params::default().validate().is_ok());
        for bad in [
            Params {
                max_tokens: Some(0),
                ..Params::default()
            },
            Params {
                temperature: Some(-1.0),
                ..Params::default()
            },
            Params {
                temperature: Some(f32::NAN),
                ..Params::default()
            },
            Params {
                top_p: Some(1.5),
                ..Params::default()
            },
            Params {
                presence_penalty: Some(2.5),
                ..Params::default()
            },
            Params {
                frequency_penalty: Some(f32::NAN),
                ..Params::default()
            },
            Params {
                stop: vec!["x".to_owned(); MAX_STOP_SEQUENCES + 1],
                ..Params::default()
            },
        ] {
            assert!(
                matches!(bad.validate(), Err(ServeError::InvalidRequest(_))),
                "{bad:?}"
            );
        }
    }

    #[test]
    fn zero_temperature_is_greedy_and_unset_fields_keep_engine_defaults() {
        let params = Params {
            temperature: Some(0.0),
            seed: Some(7),
            ..Params::default()
        };
        let sampling = params.sampling();
        assert_eq!(sampling.temperature, 0.0);
        assert_eq!(sampling.seed, Some(7));
        assert_eq!(sampling.top_k, SamplingParams::default().top_k);
    }

    #[test]
    fn roles_parse() {
        assert_eq!(Role::parse("developer"), Ok(Role::System));
        assert!(Role::parse("narrator").is_err());
    }
}
