//! Inference requests as the agent understands them, whichever API they came
//! through: plain Rust, no serde DTOs or prost types. The surfaces convert
//! their wire bodies into these once, on the way in, and validation happens
//! here.

use flotilla_engine::SamplingParams;

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
}

impl Message {
    pub fn new(role: Role, content: impl Into<String>) -> Message {
        Message {
            role,
            content: content.into(),
        }
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
