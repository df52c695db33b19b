//! Tool calling: how tools reach the model and how its calls come back.
//!
//! # One call syntax: Hermes' `<tool_call>` blocks
//! A call is written as
//! ```text
//! <tool_call>
//! {"name": "get_weather", "arguments": {"city": "Oslo"}}
//! </tool_call>
//! ```
//! which is what Qwen2.5 (and Hermes, SmolLM3 and others trained on the same format) were
//! tuned to write. A template that knows this format (its source mentions `<tool_call>`)
//! gets the tools as its `tools` variable and renders them its own way, along with earlier
//! calls (`message.tool_calls`) and their results (`role: tool`). For any other template
//! the same instructions Qwen2.5's template writes are added to the system message, earlier
//! calls are written into the assistant's turn and results into a user turn, as
//! `<tool_response>` blocks. One syntax keeps parsing, constraining and streaming the same
//! for every model; the cost is that a family with its own format (Llama 3.1's bare JSON)
//! is prompted in Hermes' instead of its own.
//!
//! # Calls are always valid
//! Decoding is constrained ([`tool_call_grammar`]): the output is either plain text that
//! opens with neither `<` nor `{` (when the model may answer instead of calling), a
//! sequence of `<tool_call>` blocks, or one bare call object (what small models and
//! Llama 3.1 often write instead of the block), where every call names one of the tools
//! and carries arguments valid against that tool's parameter schema. So an answer that
//! may call tools cannot start with `{`: such an answer is a call.

use serde::Serialize;
use serde_json::{Value, json};

use crate::chat::{ChatMessage, python_json_string};
use crate::constraint::{Grammar, closed, compact};

/// A function the model may call (the `function` object of OpenAI's `tools`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ToolSpec {
    pub name: String,
    pub description: Option<String>,
    /// A JSON Schema for the arguments object.
    pub parameters: Value,
}

impl ToolSpec {
    /// The parameter schema of a function without arguments (OpenAI's meaning of an
    /// omitted `parameters`).
    pub fn no_parameters() -> Value {
        json!({"type": "object", "properties": {}})
    }

    /// The OpenAI tool object templates render (`{"type": "function", "function": {…}}`).
    pub fn to_json(&self) -> Value {
        let mut function = json!({"name": self.name});
        if let Some(description) = &self.description {
            function["description"] = json!(description);
        }
        function["parameters"] = self.parameters.clone();
        json!({"type": "function", "function": function})
    }
}

/// Whether and which tool the model must call.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ToolChoice {
    /// Answer in text or call tools, as the model decides.
    Auto,
    /// Call at least one tool.
    Required,
    /// Call this tool.
    Function(String),
}

/// One call the model made.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ToolCall {
    pub name: String,
    /// The arguments object, valid against the tool's parameter schema.
    pub arguments: Value,
}

const CALL_OPEN: &str = "<tool_call>";
const CALL_CLOSE: &str = "</tool_call>";

/// The grammar a tool-calling answer follows (see the module docs). `parallel` allows
/// more than one call.
pub fn tool_call_grammar(tools: &[ToolSpec], choice: &ToolChoice, parallel: bool) -> Grammar {
    let callable: Vec<&ToolSpec> = match choice {
        ToolChoice::Function(name) => tools.iter().filter(|tool| &tool.name == name).collect(),
        ToolChoice::Auto | ToolChoice::Required => tools.iter().collect(),
    };
    let calls: Vec<Value> = callable
        .iter()
        .map(|tool| {
            json!({
                "type": "object",
                "properties": {
                    "name": {"const": tool.name},
                    "arguments": closed(tool.parameters.clone()),
                },
                "required": ["name", "arguments"],
                "additionalProperties": false,
            })
        })
        .collect();
    let call_schema = compact(json!({"anyOf": calls}));
    let calls_rule = if parallel {
        "tool_call (\"\\n\" tool_call)* | call_json"
    } else {
        "tool_call | call_json"
    };
    let start = match choice {
        ToolChoice::Auto => "start: TEXT | calls",
        ToolChoice::Required | ToolChoice::Function(_) => "start: calls",
    };
    Grammar::lark(format!(
        "{start}\n\
         calls: {calls_rule}\n\
         tool_call: \"{CALL_OPEN}\\n\" call_json \"\\n{CALL_CLOSE}\"\n\
         call_json: %json {call_schema}\n\
         TEXT: /[^<{{\\s][\\s\\S]*/\n"
    ))
}

/// Splits an answer into its text and its calls. Blocks that do not hold a call of the
/// expected shape stay in the text (an unconstrained answer may contain anything).
pub fn parse_tool_calls(text: &str) -> (String, Vec<ToolCall>) {
    let mut content = String::new();
    let mut calls = Vec::new();
    let mut rest = text;
    while let Some(open) = rest.find(CALL_OPEN) {
        let after_open = &rest[open + CALL_OPEN.len()..];
        let Some(close) = after_open.find(CALL_CLOSE) else {
            break;
        };
        match parse_call(&after_open[..close]) {
            Some(call) => {
                content.push_str(&rest[..open]);
                calls.push(call);
            }
            None => content.push_str(&rest[..open + CALL_OPEN.len() + close + CALL_CLOSE.len()]),
        }
        rest = &after_open[close + CALL_CLOSE.len()..];
    }
    content.push_str(rest);
    if calls.is_empty()
        && content.trim_start().starts_with('{')
        && let Some(call) = parse_call(&content)
    {
        // A bare call object, which the grammar allows in place of blocks.
        return (String::new(), vec![call]);
    }
    let content = if calls.is_empty() {
        content
    } else {
        content.trim().to_owned()
    };
    (content, calls)
}

fn parse_call(json_text: &str) -> Option<ToolCall> {
    let value: Value = serde_json::from_str(json_text.trim()).ok()?;
    let name = value.get("name")?.as_str()?.to_owned();
    let arguments = match value.get("arguments") {
        // Some models write the arguments as a JSON string.
        Some(Value::String(encoded)) => serde_json::from_str(encoded).ok()?,
        Some(arguments @ Value::Object(_)) => arguments.clone(),
        None => json!({}),
        Some(_) => return None,
    };
    Some(ToolCall { name, arguments })
}

/// The system message text Qwen2.5's template writes for tools, for templates without a
/// tools branch of their own.
pub(crate) fn instructions(tools: &[ToolSpec]) -> String {
    let mut text = String::from(
        "# Tools\n\nYou may call one or more functions to assist with the user query.\n\n\
         You are provided with function signatures within <tools></tools> XML tags:\n<tools>",
    );
    for tool in tools {
        text.push('\n');
        text.push_str(&python_json_string(&tool.to_json()));
    }
    text.push_str(
        "\n</tools>\n\nFor each function call, return a json object with function name and \
         arguments within <tool_call></tool_call> XML tags:\n<tool_call>\n\
         {\"name\": <function-name>, \"arguments\": <args-json-object>}\n</tool_call>",
    );
    text
}

/// The conversation for a template without a tools branch: the instructions join the
/// first system message (or open the chat as one), earlier calls are written into their
/// assistant turns and tool results become user turns of `<tool_response>` blocks.
pub(crate) fn inline_tools(messages: &[ChatMessage], tools: &[ToolSpec]) -> Vec<ChatMessage> {
    let instructions = instructions(tools);
    let mut out: Vec<ChatMessage> = Vec::with_capacity(messages.len() + 1);
    let mut rest = messages.iter().peekable();
    match rest.next_if(|message| message.role == "system") {
        Some(system) => out.push(ChatMessage::new(
            "system",
            format!("{}\n\n{instructions}", system.content),
        )),
        None => out.push(ChatMessage::new("system", instructions)),
    }
    for message in rest {
        match message.role.as_str() {
            "assistant" if !message.tool_calls.is_empty() => {
                let mut text = message.content.clone();
                for call in &message.tool_calls {
                    if !text.is_empty() {
                        text.push('\n');
                    }
                    let body = python_json_string(
                        &json!({"name": call.name, "arguments": call.arguments}),
                    );
                    text.push_str(&format!("{CALL_OPEN}\n{body}\n{CALL_CLOSE}"));
                }
                out.push(ChatMessage::new("assistant", text));
            }
            "tool" => {
                let block = format!("<tool_response>\n{}\n</tool_response>", message.content);
                match out.last_mut() {
                    // Consecutive results share one user turn, as Qwen2.5's template does.
                    Some(last)
                        if last.role == "user" && last.content.ends_with("</tool_response>") =>
                    {
                        last.content.push('\n');
                        last.content.push_str(&block);
                    }
                    _ => out.push(ChatMessage::new("user", block)),
                }
            }
            _ => out.push(message.clone()),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn calls_are_split_from_text_and_stray_blocks_stay_text() {
        let (content, calls) = parse_tool_calls(
            "<tool_call>\n{\"name\": \"add\", \"arguments\": {\"a\": 1}}\n</tool_call>\n\
             <tool_call>\n{\"name\": \"neg\", \"arguments\": \"{\\\"x\\\": 2}\"}\n</tool_call>",
        );
        assert_eq!(content, "");
        assert_eq!(
            calls,
            vec![
                ToolCall {
                    name: "add".into(),
                    arguments: json!({"a": 1})
                },
                ToolCall {
                    name: "neg".into(),
                    arguments: json!({"x": 2})
                },
            ]
        );
        let text = "use <tool_call>not json</tool_call> like this";
        assert_eq!(parse_tool_calls(text), (text.to_owned(), Vec::new()));
        let (content, calls) = parse_tool_calls(r#"{"name": "add", "arguments": {"a": 2}}"#);
        assert_eq!(content, "");
        assert_eq!(calls[0].arguments, json!({"a": 2}));
        // JSON that is not a call stays text.
        let text = r#"{"answer": 4}"#;
        assert_eq!(parse_tool_calls(text), (text.to_owned(), Vec::new()));
    }

    #[test]
    fn tools_join_the_system_message_and_results_become_user_turns() {
        let tools = [ToolSpec {
            name: "add".into(),
            description: None,
            parameters: json!({"type": "object"}),
        }];
        let mut call = ChatMessage::new("assistant", "");
        call.tool_calls = vec![ToolCall {
            name: "add".into(),
            arguments: json!({"a": 1}),
        }];
        let messages = [
            ChatMessage::new("system", "Be brief."),
            ChatMessage::new("user", "1+1?"),
            call,
            ChatMessage::new("tool", "2"),
            ChatMessage::new("tool", "3"),
        ];
        let out = inline_tools(&messages, &tools);
        assert_eq!(out.len(), 4);
        assert!(out[0].content.starts_with("Be brief.\n\n# Tools"));
        assert!(out[0].content.contains("\"name\": \"add\""));
        assert_eq!(
            out[2].content,
            "<tool_call>\n{\"name\": \"add\", \"arguments\": {\"a\": 1}}\n</tool_call>"
        );
        assert_eq!(
            out[3].content,
            "<tool_response>\n2\n</tool_response>\n<tool_response>\n3\n</tool_response>"
        );
    }
}
