//! Chat prompts rendered with the model's own Jinja template (`tokenizer.chat_template`)
//! through minijinja, so prompts look exactly like the ones the model was tuned on.
//!
//! Real templates are written for Hugging Face's Jinja2 environment, so the environment
//! here adds what they use beyond minijinja's core: Python string and dict methods
//! (`.strip()`, `.startswith()`, `.items()`: minijinja-contrib's pycompat), `tojson`
//! (minijinja's `json` feature), `loop_controls`, `raise_exception` and `strftime_now`
//! (Llama 3.1's date line). Undefined attributes chain to undefined, as the templates'
//! `message.tool_calls is defined` checks expect.
//!
//! A model without a template (a base model such as Gemma 3 270M) gets ChatML only when
//! its vocabulary has ChatML's `<|im_start|>` token; otherwise chat is refused with an
//! error saying to send a completion instead ([`fallback_template`]).

use std::time::{SystemTime, UNIX_EPOCH};

use minijinja::{Environment, ErrorKind, UndefinedBehavior, Value, context};
use serde::Serialize;

use crate::EngineError;
use crate::tokenizer::Tokenizer;
use crate::tools::{self, ToolCall, ToolSpec};

/// One chat message.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ChatMessage {
    pub role: String,
    pub content: String,
    /// Calls an assistant message made, in the shape templates read
    /// (`[{"type": "function", "function": {"name", "arguments"}}]`); absent when empty so
    /// that templates' `message.tool_calls is defined` checks stay false.
    #[serde(
        skip_serializing_if = "Vec::is_empty",
        serialize_with = "tool_calls_as_templates_read_them"
    )]
    pub tool_calls: Vec<ToolCall>,
}

impl ChatMessage {
    pub fn new(role: impl Into<String>, content: impl Into<String>) -> ChatMessage {
        ChatMessage {
            role: role.into(),
            content: content.into(),
            tool_calls: Vec::new(),
        }
    }
}

fn tool_calls_as_templates_read_them<S: serde::Serializer>(
    calls: &[ToolCall],
    serializer: S,
) -> Result<S::Ok, S::Error> {
    serializer.collect_seq(calls.iter().map(|call| {
        serde_json::json!({
            "type": "function",
            "function": {"name": call.name, "arguments": call.arguments},
        })
    }))
}

/// A compiled chat template.
pub struct ChatTemplate {
    environment: Environment<'static>,
    bos_token: String,
    eos_token: String,
    /// False for [`NO_CHAT_TEMPLATE`]: every chat is refused.
    chats: bool,
    /// The template renders tools itself in the `<tool_call>` syntax (see [`crate::tools`]).
    native_tools: bool,
}

impl std::fmt::Debug for ChatTemplate {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        formatter
            .debug_struct("ChatTemplate")
            .finish_non_exhaustive()
    }
}

/// Used when a model has no template but speaks ChatML (its vocabulary has the tokens).
pub const CHATML_TEMPLATE: &str = "{% for message in messages %}{{'<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n'}}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}";

/// Used when a model has no template and no ChatML tokens: every chat is refused.
pub const NO_CHAT_TEMPLATE: &str = "{{ raise_exception('this model has no chat template (tokenizer.chat_template is not in the file; base models such as Gemma 3 270M have none): send a text completion instead') }}";

/// The template for a model whose file has none: ChatML when the vocabulary has ChatML's
/// tokens, else [`NO_CHAT_TEMPLATE`].
pub fn fallback_template(tokenizer: &Tokenizer) -> &'static str {
    let speaks_chatml = (0..tokenizer.vocab_size() as u32)
        .any(|token| tokenizer.token_text(token) == Some("<|im_start|>"));
    if speaks_chatml {
        CHATML_TEMPLATE
    } else {
        NO_CHAT_TEMPLATE
    }
}

impl ChatTemplate {
    /// Compiles `source`; `bos_token`/`eos_token` are exposed to it as variables.
    pub fn new(
        source: &str,
        bos_token: &str,
        eos_token: &str,
    ) -> Result<ChatTemplate, EngineError> {
        let mut environment = Environment::new();
        environment.set_undefined_behavior(UndefinedBehavior::Chainable);
        environment
            .set_unknown_method_callback(minijinja_contrib::pycompat::unknown_method_callback);
        // Hugging Face renders with `trim_blocks` and `lstrip_blocks` on.
        environment.set_trim_blocks(true);
        environment.set_lstrip_blocks(true);
        environment.add_function(
            "raise_exception",
            |message: String| -> Result<String, minijinja::Error> {
                Err(minijinja::Error::new(ErrorKind::InvalidOperation, message))
            },
        );
        environment.add_filter("tojson", python_json);
        environment.add_function("strftime_now", |format: String| {
            let seconds = SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map_or(0, |elapsed| elapsed.as_secs());
            strftime(&format, seconds)
        });
        environment
            .add_template_owned("chat", source.to_string())
            .map_err(|error| EngineError::Template(format!("cannot compile: {error}")))?;
        Ok(ChatTemplate {
            environment,
            bos_token: bos_token.to_string(),
            eos_token: eos_token.to_string(),
            chats: source != NO_CHAT_TEMPLATE,
            native_tools: source.contains("<tool_call>"),
        })
    }

    /// Whether chats can be rendered at all: false for a base model whose file has no
    /// template and whose vocabulary does not speak ChatML ([`NO_CHAT_TEMPLATE`]).
    pub fn chats(&self) -> bool {
        self.chats
    }

    /// Renders the conversation; `add_generation_prompt` appends the assistant header.
    pub fn render(
        &self,
        messages: &[ChatMessage],
        add_generation_prompt: bool,
    ) -> Result<String, EngineError> {
        self.render_with_tools(messages, None, add_generation_prompt)
    }

    /// Renders a conversation in which the model may call `tools`: through the template's
    /// own tools branch when it writes `<tool_call>` blocks, otherwise with the tools and
    /// earlier calls written into the messages (see [`crate::tools`]).
    pub fn render_tool_chat(
        &self,
        messages: &[ChatMessage],
        tools: &[ToolSpec],
        add_generation_prompt: bool,
    ) -> Result<String, EngineError> {
        if self.native_tools {
            let specs: Vec<serde_json::Value> = tools.iter().map(ToolSpec::to_json).collect();
            self.render_with_tools(
                messages,
                Some(&serde_json::Value::Array(specs)),
                add_generation_prompt,
            )
        } else {
            self.render(&tools::inline_tools(messages, tools), add_generation_prompt)
        }
    }

    /// Renders the conversation with tool definitions (OpenAI-style JSON function specs),
    /// which templates such as Qwen2.5's and Llama 3.1's place in the system turn.
    pub fn render_with_tools(
        &self,
        messages: &[ChatMessage],
        tools: Option<&serde_json::Value>,
        add_generation_prompt: bool,
    ) -> Result<String, EngineError> {
        let template = self
            .environment
            .get_template("chat")
            .map_err(|error| EngineError::Template(error.to_string()))?;
        let tools = tools.map_or(Value::UNDEFINED, Value::from_serialize);
        template
            .render(context! {
                messages => messages,
                tools => tools,
                add_generation_prompt => add_generation_prompt,
                bos_token => self.bos_token,
                eos_token => self.eos_token,
            })
            .map_err(|error| EngineError::Template(format!("cannot render: {error}")))
    }
}

/// Builds the message list for a single-turn chat with an optional system prompt.
pub fn single_turn(system: Option<&str>, user: &str) -> Vec<ChatMessage> {
    let mut messages = Vec::new();
    if let Some(system) = system {
        messages.push(ChatMessage::new("system", system));
    }
    messages.push(ChatMessage::new("user", user));
    messages
}

/// `tojson` as Hugging Face's chat environment defines it (Python's `json.dumps`: `", "`
/// and `": "` between items, or `indent` spaces per level), so tool definitions appear in
/// the prompt exactly as the model saw them in training.
fn python_json(value: &Value, kwargs: minijinja::value::Kwargs) -> Result<Value, minijinja::Error> {
    let indent: Option<usize> = kwargs.get("indent")?;
    // `ensure_ascii` and `sort_keys` are accepted for compatibility; output is UTF-8 and
    // keys keep the map's order.
    let _: Option<bool> = kwargs.get("ensure_ascii")?;
    let _: Option<bool> = kwargs.get("sort_keys")?;
    kwargs.assert_all_used()?;
    let json = serde_json::to_value(value).map_err(|error| {
        minijinja::Error::new(ErrorKind::InvalidOperation, format!("tojson: {error}"))
    })?;
    let mut output = String::new();
    write_python_json(&json, indent, 0, &mut output);
    Ok(Value::from_safe_string(output))
}

/// `value` as Python's `json.dumps` writes it (`", "` and `": "` separators).
pub(crate) fn python_json_string(value: &serde_json::Value) -> String {
    let mut output = String::new();
    write_python_json(value, None, 0, &mut output);
    output
}

fn write_python_json(
    value: &serde_json::Value,
    indent: Option<usize>,
    depth: usize,
    out: &mut String,
) {
    let newline = |out: &mut String, depth: usize| {
        if let Some(width) = indent {
            out.push('\n');
            out.push_str(&" ".repeat(width * depth));
        }
    };
    let separator = if indent.is_some() { "," } else { ", " };
    match value {
        serde_json::Value::Array(items) if !items.is_empty() => {
            out.push('[');
            for (index, item) in items.iter().enumerate() {
                if index > 0 {
                    out.push_str(separator);
                }
                newline(out, depth + 1);
                write_python_json(item, indent, depth + 1, out);
            }
            newline(out, depth);
            out.push(']');
        }
        serde_json::Value::Object(map) if !map.is_empty() => {
            out.push('{');
            for (index, (key, item)) in map.iter().enumerate() {
                if index > 0 {
                    out.push_str(separator);
                }
                newline(out, depth + 1);
                out.push_str(&serde_json::Value::String(key.clone()).to_string());
                out.push_str(": ");
                write_python_json(item, indent, depth + 1, out);
            }
            newline(out, depth);
            out.push('}');
        }
        other => out.push_str(&other.to_string()),
    }
}

/// A `strftime` for the formats chat templates use (`%d %b %Y` and friends), in UTC.
fn strftime(format: &str, unix_seconds: u64) -> String {
    const MONTHS: [&str; 12] = [
        "January",
        "February",
        "March",
        "April",
        "May",
        "June",
        "July",
        "August",
        "September",
        "October",
        "November",
        "December",
    ];
    let days = (unix_seconds / 86_400) as i64;
    let seconds_of_day = unix_seconds % 86_400;
    // Howard Hinnant's civil_from_days.
    let shifted = days + 719_468;
    let era = shifted.div_euclid(146_097);
    let day_of_era = shifted - era * 146_097;
    let year_of_era =
        (day_of_era - day_of_era / 1460 + day_of_era / 36_524 - day_of_era / 146_096) / 365;
    let day_of_year = day_of_era - (365 * year_of_era + year_of_era / 4 - year_of_era / 100);
    let month_index = (5 * day_of_year + 2) / 153;
    let day = day_of_year - (153 * month_index + 2) / 5 + 1;
    let month = if month_index < 10 {
        month_index + 3
    } else {
        month_index - 9
    };
    let year = year_of_era + era * 400 + i64::from(month <= 2);
    let month_name = MONTHS[(month - 1) as usize];
    let mut output = String::new();
    let mut characters = format.chars();
    while let Some(character) = characters.next() {
        if character != '%' {
            output.push(character);
            continue;
        }
        match characters.next() {
            Some('d') => output.push_str(&format!("{day:02}")),
            Some('m') => output.push_str(&format!("{month:02}")),
            Some('Y') => output.push_str(&year.to_string()),
            Some('y') => output.push_str(&format!("{:02}", year % 100)),
            Some('b') => output.push_str(&month_name[..3]),
            Some('B') => output.push_str(month_name),
            Some('H') => output.push_str(&format!("{:02}", seconds_of_day / 3600)),
            Some('M') => output.push_str(&format!("{:02}", seconds_of_day / 60 % 60)),
            Some('S') => output.push_str(&format!("{:02}", seconds_of_day % 60)),
            Some('%') => output.push('%'),
            Some(other) => {
                output.push('%');
                output.push(other);
            }
            None => output.push('%'),
        }
    }
    output
}

#[cfg(test)]
mod tests {
    use super::*;

    const SMOLLM2_TEMPLATE: &str = "{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}{{ '<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n' }}{% endif %}{{'<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n'}}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}";

    #[test]
    fn smollm2_template_with_and_without_system_prompt() {
        let template =
            ChatTemplate::new(SMOLLM2_TEMPLATE, "<|im_start|>", "<|im_end|>").expect("compiles");
        let rendered = template
            .render(&single_turn(None, "Hi"), true)
            .expect("renders");
        assert_eq!(
            rendered,
            "<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n"
        );
        let rendered = template
            .render(&single_turn(Some("Be brief."), "Hi"), false)
            .expect("renders");
        assert_eq!(
            rendered,
            "<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nHi<|im_end|>\n"
        );
    }

    #[test]
    fn raise_exception_is_an_error() {
        let template = ChatTemplate::new("{{ raise_exception('no') }}", "", "").expect("compiles");
        assert!(template.render(&[], true).is_err());
    }
}
