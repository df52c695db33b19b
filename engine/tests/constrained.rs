//! Constrained decoding on real models: a JSON Schema answer always parses and validates,
//! a tool call always names a tool with valid arguments, a bad schema is refused before
//! any token, and the scheduler's batched path constrains as the single-request path does.

mod common;

use std::path::PathBuf;
use std::sync::Arc;

use flotilla_engine::chat::single_turn;
use flotilla_engine::tools::{ToolChoice, ToolSpec, parse_tool_calls, tool_call_grammar};
use flotilla_engine::{
    ChatMessage, Engine, EngineError, EngineOptions, FinishReason, GenerationRequest, Grammar,
    Prompt, SamplingParams, Scheduler, SchedulerConfig,
};
use serde_json::{Value, json};

fn smollm2(test: &str) -> Option<Engine> {
    let model = common::test_model(test)?;
    Some(
        Engine::load(
            model,
            EngineOptions {
                threads: Some(2),
                ..EngineOptions::default()
            },
        )
        .expect("load"),
    )
}

fn request(prompt: Prompt, grammar: Grammar, seed: Option<u64>) -> GenerationRequest {
    let mut request = GenerationRequest::new(prompt);
    request.grammar = Some(grammar);
    request.max_tokens = 96;
    request.sampling = match seed {
        None => SamplingParams::greedy(),
        Some(seed) => SamplingParams {
            temperature: 1.0,
            seed: Some(seed),
            ..SamplingParams::default()
        },
    };
    request
}

fn person_schema() -> Value {
    json!({
        "type": "object",
        "properties": {
            "name": {"type": "string", "maxLength": 40},
            "age": {"type": "integer", "minimum": 0, "maximum": 150},
            "city": {"type": "string", "enum": ["Oslo", "Paris", "Lima"]},
        },
        "required": ["name", "age", "city"],
    })
}

fn assert_person(text: &str) {
    let value: Value = serde_json::from_str(text).unwrap_or_else(|error| {
        panic!("not JSON ({error}): {text:?}");
    });
    let object = value.as_object().expect("an object");
    assert_eq!(object.len(), 3, "only the schema's keys: {text}");
    assert!(object["name"].as_str().is_some_and(|name| name.len() <= 40));
    assert!(object["age"].as_u64().is_some_and(|age| age <= 150));
    assert!(matches!(
        object["city"].as_str(),
        Some("Oslo" | "Paris" | "Lima")
    ));
}

#[test]
fn json_schema_output_parses_and_validates_greedy_and_sampled() {
    let Some(engine) = smollm2("json_schema_output") else {
        return;
    };
    let prompt = Prompt::Chat(single_turn(
        None,
        "Invent a person. Answer in JSON with name, age and city.",
    ));
    for seed in [None, Some(1), Some(2), Some(3)] {
        let output = engine
            .generate(
                &request(prompt.clone(), Grammar::json_schema(person_schema()), seed),
                |_| {},
            )
            .expect("generate");
        eprintln!("seed {seed:?}: {:?}", output.text);
        assert_eq!(output.finish_reason, FinishReason::EndOfSequence);
        assert_person(&output.text);
    }
    // Any JSON object.
    let output = engine
        .generate(&request(prompt, Grammar::json_object(), None), |_| {})
        .expect("generate");
    assert!(
        serde_json::from_str::<Value>(&output.text).is_ok_and(|value| value.is_object()),
        "{:?}",
        output.text
    );
}

#[test]
fn a_schema_llguidance_cannot_compile_is_refused_before_any_token() {
    let Some(engine) = smollm2("bad_schema") else {
        return;
    };
    let bad = Grammar::json_schema(json!({"type": "object", "properties": {"a": {"type": 7}}}));
    let error = engine.check_grammar(&bad).expect_err("refused");
    assert!(matches!(error, EngineError::InvalidRequest(_)), "{error}");
    let error = engine
        .generate(&request(Prompt::Text("x".into()), bad, None), |_| {
            panic!("no token may be generated")
        })
        .expect_err("refused");
    assert!(error.to_string().contains("output format"), "{error}");
}

fn weather_tools() -> Vec<ToolSpec> {
    vec![
        ToolSpec {
            name: "get_weather".into(),
            description: Some("Current weather in a city".into()),
            parameters: json!({
                "type": "object",
                "properties": {"city": {"type": "string"}, "unit": {"enum": ["C", "F"]}},
                "required": ["city", "unit"],
            }),
        },
        ToolSpec {
            name: "multiply".into(),
            description: Some("Multiply two integers".into()),
            parameters: json!({
                "type": "object",
                "properties": {"a": {"type": "integer"}, "b": {"type": "integer"}},
                "required": ["a", "b"],
            }),
        },
    ]
}

#[test]
fn required_tool_calls_are_valid_for_their_schema() {
    let Some(engine) = smollm2("required_tool_calls") else {
        return;
    };
    let tools = weather_tools();
    let prompt = Prompt::ToolChat(
        single_turn(None, "What is the weather in Oslo?"),
        tools.clone(),
    );
    for (choice, expected) in [
        (ToolChoice::Required, None),
        (ToolChoice::Function("multiply".into()), Some("multiply")),
    ] {
        let grammar = tool_call_grammar(&tools, &choice, false);
        let output = engine
            .generate(&request(prompt.clone(), grammar, None), |_| {})
            .expect("generate");
        eprintln!("{choice:?}: {:?}", output.text);
        let (content, calls) = parse_tool_calls(&output.text);
        assert_eq!(content, "");
        assert_eq!(calls.len(), 1, "{:?}", output.text);
        let call = &calls[0];
        if let Some(expected) = expected {
            assert_eq!(call.name, expected);
        }
        match call.name.as_str() {
            "get_weather" => {
                assert!(call.arguments["city"].is_string());
                assert!(matches!(call.arguments["unit"].as_str(), Some("C" | "F")));
            }
            "multiply" => {
                assert!(call.arguments["a"].is_i64() && call.arguments["b"].is_i64());
            }
            other => panic!("unknown tool {other}"),
        }
    }
}

#[test]
fn the_scheduler_constrains_each_sequence_of_a_batch() {
    let Some(engine) = smollm2("scheduler_constrains") else {
        return;
    };
    let scheduler =
        Scheduler::start(Arc::new(engine), SchedulerConfig::default()).expect("scheduler");
    let prompt = Prompt::Chat(vec![ChatMessage::new(
        "user",
        "Describe a person as JSON with name, age and city.",
    )]);
    let handles: Vec<_> = (0..3)
        .map(|seed| {
            let grammar = Grammar::json_schema(person_schema());
            scheduler
                .submit(request(prompt.clone(), grammar, Some(seed)))
                .expect("submit")
        })
        .collect();
    // An unconstrained request in the same batch is left alone.
    let mut free = GenerationRequest::new(prompt);
    free.max_tokens = 8;
    let free = scheduler.submit(free).expect("submit");
    for handle in handles {
        assert_person(&handle.wait().expect("generate").text);
    }
    free.wait().expect("unconstrained");
}

/// Qwen2.5-Coder's own template renders the tools; the model decides to call one.
#[test]
fn qwen_calls_a_tool_through_its_own_template() {
    let dir = std::env::var_os("FLOTILLA_ARCH_MODELS")
        .map_or_else(|| common::workspace_root().join("models"), PathBuf::from);
    let qwen = dir.join("qwen2.5-coder-0.5b-instruct-awq-Q4_K_M.gguf");
    if !qwen.exists() {
        assert!(
            std::env::var_os("FLOTILLA_ARCH_MODELS").is_none(),
            "{} missing",
            qwen.display()
        );
        eprintln!("\n*** SKIP qwen tool call: run scripts/prepare-arch-models.sh ***\n");
        return;
    }
    let engine = Engine::load(
        &qwen,
        EngineOptions {
            threads: Some(2),
            ..EngineOptions::default()
        },
    )
    .expect("load");
    let tools = weather_tools();
    let messages = single_turn(None, "What is 12 times 7? Use the multiply tool.");
    let rendered = engine
        .prompt_tokens(&Prompt::ToolChat(messages.clone(), tools.clone()))
        .expect("render");
    let text = engine.tokenizer().decode(&rendered, true);
    assert!(
        text.contains("<tools>") && text.contains("\"name\": \"multiply\""),
        "{text}"
    );
    let grammar = tool_call_grammar(&tools, &ToolChoice::Auto, true);
    let output = engine
        .generate(
            &request(Prompt::ToolChat(messages, tools), grammar, None),
            |_| {},
        )
        .expect("generate");
    eprintln!("qwen: {:?}", output.text);
    let (_, calls) = parse_tool_calls(&output.text);
    assert_eq!(calls.len(), 1, "{:?}", output.text);
    assert_eq!(calls[0].name, "multiply");
    assert_eq!(calls[0].arguments, json!({"a": 12, "b": 7}));
}
