//! Real chat templates render through the engine's minijinja environment exactly as Hugging
//! Face's Jinja2 environment renders them (expected strings produced with jinja2, the
//! `trim_blocks`/`lstrip_blocks` environment transformers uses, and `json.dumps` as
//! `tojson`): Qwen2.5 with and without its tools branch, Gemma, Phi-3.5 and Llama 3.1.
//!
//! The templates are llama.cpp's copies (models/templates/*.jinja in the llama-cpp-python
//! source package), fetched by scripts/fetch-tokenizer-vectors.sh next to the tokenizer
//! vectors; under scripts/test.sh (`FLOTILLA_TOKENIZER_VECTORS` set) they must be there.
//! Also: Qwen2.5-Coder's template as its GGUF carries it, and the refusal of chat for a
//! base model without a template (Gemma 3 270M).

mod common;

use std::path::PathBuf;

use flotilla_engine::chat::{ChatMessage, ChatTemplate, single_turn};
use flotilla_engine::{Engine, EngineOptions, Prompt};

fn templates_dir() -> Option<PathBuf> {
    let (dir, required) = match std::env::var_os("FLOTILLA_TOKENIZER_VECTORS") {
        Some(dir) => (PathBuf::from(dir), true),
        None => (
            common::workspace_root().join("models/llama-cpp-vocab"),
            false,
        ),
    };
    let dir = dir.join("templates");
    if dir.join("Qwen-Qwen2.5-7B-Instruct.jinja").exists() {
        return Some(dir);
    }
    assert!(!required, "{} holds no chat templates", dir.display());
    eprintln!("\n*** SKIP chat templates: run scripts/fetch-tokenizer-vectors.sh ***\n");
    None
}

fn render(
    dir: &std::path::Path,
    file: &str,
    bos: &str,
    tools: Option<&serde_json::Value>,
) -> String {
    let source = std::fs::read_to_string(dir.join(file)).expect("read template");
    let template = ChatTemplate::new(&source, bos, "</s>").expect("compiles");
    template
        .render_with_tools(&[ChatMessage::new("user", "Hi")], tools, true)
        .unwrap_or_else(|error| panic!("{file}: {error}"))
}

#[test]
fn real_templates_render_as_jinja2_does() {
    let Some(dir) = templates_dir() else {
        return;
    };
    let qwen = "Qwen-Qwen2.5-7B-Instruct.jinja";
    assert_eq!(
        render(&dir, qwen, "<|begin_of_text|>", None),
        "<|im_start|>system\nYou are Qwen, created by Alibaba Cloud. You are a helpful assistant.<|im_end|>\n<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n"
    );
    let tools = serde_json::json!([{"type": "function", "function": {"name": "get_weather",
        "description": "Weather of a city", "parameters": {"type": "object",
        "properties": {"city": {"type": "string"}}, "required": ["city"]}}}]);
    // serde_json sorts keys (the workspace does not enable preserve_order), so the tool
    // appears with its keys sorted; jinja2 with the same sorted input gives this string.
    assert_eq!(
        render(&dir, qwen, "<|begin_of_text|>", Some(&tools)),
        "<|im_start|>system\nYou are Qwen, created by Alibaba Cloud. You are a helpful assistant.\n\n# Tools\n\nYou may call one or more functions to assist with the user query.\n\nYou are provided with function signatures within <tools></tools> XML tags:\n<tools>\n{\"function\": {\"description\": \"Weather of a city\", \"name\": \"get_weather\", \"parameters\": {\"properties\": {\"city\": {\"type\": \"string\"}}, \"required\": [\"city\"], \"type\": \"object\"}}, \"type\": \"function\"}\n</tools>\n\nFor each function call, return a json object with function name and arguments within <tool_call></tool_call> XML tags:\n<tool_call>\n{\"name\": <function-name>, \"arguments\": <args-json-object>}\n</tool_call><|im_end|>\n<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n"
    );
    assert_eq!(
        render(&dir, "google-gemma-2-2b-it.jinja", "<bos>", None),
        "<bos><start_of_turn>user\nHi<end_of_turn>\n<start_of_turn>model\n"
    );
    assert_eq!(
        render(&dir, "microsoft-Phi-3.5-mini-instruct.jinja", "<s>", None),
        "<|user|>\nHi<|end|>\n<|assistant|>\n"
    );
    assert_eq!(
        render(
            &dir,
            "meta-llama-Llama-3.1-8B-Instruct.jinja",
            "<|begin_of_text|>",
            None
        ),
        "<|begin_of_text|><|start_header_id|>system<|end_header_id|>\n\nCutting Knowledge Date: December 2023\nToday Date: 26 Jul 2024\n\n<|eot_id|><|start_header_id|>user<|end_header_id|>\n\nHi<|eot_id|><|start_header_id|>assistant<|end_header_id|>\n\n"
    );
    // Llama 3.2 asks strftime_now for today's date.
    let llama32 = render(
        &dir,
        "meta-llama-Llama-3.2-3B-Instruct.jinja",
        "<|begin_of_text|>",
        None,
    );
    assert!(llama32.contains("Today Date: "), "{llama32}");
}

/// The models parity runs on: Qwen2.5-Coder renders its own template; Gemma 3 270M (a base
/// model, no template, no ChatML tokens) refuses chat with a reason but serves text.
#[test]
fn model_templates_are_used_or_chat_is_refused() {
    let dir = std::env::var_os("FLOTILLA_ARCH_MODELS")
        .map_or_else(|| common::workspace_root().join("models"), PathBuf::from);
    let qwen = dir.join("requantized/qwen2.5-coder-0.5b-instruct-awq-Q8_0.gguf");
    let gemma = dir.join("requantized/gemma-3-270m-Q8_0.gguf");
    if !qwen.exists() || !gemma.exists() {
        assert!(
            std::env::var_os("FLOTILLA_ARCH_MODELS").is_none(),
            "models missing in {}",
            dir.display()
        );
        eprintln!("\n*** SKIP model templates: run scripts/prepare-arch-models.sh ***\n");
        return;
    }
    let engine = Engine::load(
        &qwen,
        EngineOptions {
            threads: Some(1),
            ..EngineOptions::default()
        },
    )
    .expect("load qwen");
    let rendered = engine
        .render_chat(&single_turn(None, "Hi"), true)
        .expect("render");
    assert_eq!(
        rendered,
        "<|im_start|>system\nYou are Qwen, created by Alibaba Cloud. You are a helpful assistant.<|im_end|>\n<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n"
    );
    let engine = Engine::load(
        &gemma,
        EngineOptions {
            threads: Some(1),
            ..EngineOptions::default()
        },
    )
    .expect("load gemma");
    let error = engine
        .prompt_tokens(&Prompt::Chat(single_turn(None, "Hi")))
        .expect_err("a base model has no chat");
    assert!(error.to_string().contains("no chat template"), "{error}");
    let tokens = engine
        .prompt_tokens(&Prompt::Text("Hi".into()))
        .expect("text prompts work");
    assert_eq!(tokens[0], engine.tokenizer().bos_token().expect("bos"));
}
