//! The wire shapes of tool calling and structured output that the OpenAI
//! and Ollama APIs share (a tool is `{"type": "function", "function":
//! {name, description, parameters}}` in both), converted to the request's
//! domain types once, here.

use flotilla_engine::tools::{ToolCall, ToolSpec};
use serde::Deserialize;
use serde_json::{Value, json};

use super::ServeError;
use super::request::OutputFormat;

#[derive(Debug, Deserialize)]
pub(super) struct ToolIn {
    #[serde(rename = "type", default = "function_kind")]
    kind: String,
    function: FunctionIn,
}

fn function_kind() -> String {
    "function".to_owned()
}

#[derive(Debug, Deserialize)]
struct FunctionIn {
    name: String,
    description: Option<String>,
    parameters: Option<Value>,
}

/// The tools of a request; a tool of another type than `function` is refused.
pub(super) fn tool_specs(tools: Vec<ToolIn>) -> Result<Vec<ToolSpec>, ServeError> {
    tools
        .into_iter()
        .enumerate()
        .map(|(index, tool)| {
            if tool.kind != "function" {
                return Err(ServeError::InvalidRequest(format!(
                    "tools[{index}]: type {:?} is not supported; only \"function\"",
                    tool.kind
                )));
            }
            Ok(ToolSpec {
                name: tool.function.name,
                description: tool.function.description,
                // OpenAI: omitted parameters mean a function without arguments.
                parameters: tool
                    .function
                    .parameters
                    .unwrap_or_else(ToolSpec::no_parameters),
            })
        })
        .collect()
}

/// A call as a client replays it in an assistant message: OpenAI's
/// `{"id", "type", "function": {"name", "arguments": "<JSON text>"}}` or
/// Ollama's `{"function": {"name", "arguments": {…}}}`.
#[derive(Debug, Deserialize)]
pub(super) struct ToolCallIn {
    function: CalledFunction,
}

#[derive(Debug, Deserialize)]
struct CalledFunction {
    name: String,
    #[serde(default)]
    arguments: Value,
}

pub(super) fn replayed_calls(calls: Vec<ToolCallIn>) -> Result<Vec<ToolCall>, ServeError> {
    calls
        .into_iter()
        .map(|call| {
            let arguments = match call.function.arguments {
                Value::String(text) if text.trim().is_empty() => json!({}),
                Value::String(text) => serde_json::from_str(&text).map_err(|error| {
                    ServeError::InvalidRequest(format!(
                        "tool_calls: the arguments of {:?} are not JSON: {error}",
                        call.function.name
                    ))
                })?,
                Value::Null => json!({}),
                other => other,
            };
            Ok(ToolCall {
                name: call.function.name,
                arguments,
            })
        })
        .collect()
}

/// OpenAI's `response_format`.
#[derive(Debug, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub(super) enum ResponseFormatIn {
    Text,
    JsonObject,
    JsonSchema { json_schema: JsonSchemaIn },
}

#[derive(Debug, Deserialize)]
pub(super) struct JsonSchemaIn {
    /// OpenAI requires a name; it does not change the answer.
    #[allow(dead_code)]
    name: Option<String>,
    schema: Option<Value>,
}

impl ResponseFormatIn {
    pub(super) fn into_format(self) -> Result<OutputFormat, ServeError> {
        Ok(match self {
            ResponseFormatIn::Text => OutputFormat::Text,
            ResponseFormatIn::JsonObject => OutputFormat::JsonObject,
            ResponseFormatIn::JsonSchema { json_schema } => {
                OutputFormat::JsonSchema(schema_object(json_schema.schema, "response_format")?)
            }
        })
    }
}

/// Ollama's `format`: `""`, `"json"` or a JSON Schema.
pub(super) fn ollama_format(format: Option<Value>) -> Result<OutputFormat, ServeError> {
    match format {
        None => Ok(OutputFormat::Text),
        Some(Value::String(text)) if text.is_empty() => Ok(OutputFormat::Text),
        Some(Value::String(text)) if text == "json" => Ok(OutputFormat::JsonObject),
        Some(Value::String(text)) => Err(ServeError::InvalidRequest(format!(
            "format {text:?} is not supported: send \"json\" or a JSON Schema object"
        ))),
        Some(schema) => Ok(OutputFormat::JsonSchema(schema_object(
            Some(schema),
            "format",
        )?)),
    }
}

fn schema_object(schema: Option<Value>, field: &str) -> Result<Value, ServeError> {
    match schema {
        Some(schema @ Value::Object(_)) => Ok(schema),
        None => Err(ServeError::InvalidRequest(format!(
            "{field}: a JSON Schema is required (json_schema.schema)"
        ))),
        Some(other) => Err(ServeError::InvalidRequest(format!(
            "{field}: the schema must be a JSON object, not {other}"
        ))),
    }
}
