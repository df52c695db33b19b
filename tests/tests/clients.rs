//! Third-party clients, unchanged, against an agent serving the real
//! SmolLM2: the official `openai` Python package (models listed and
//! retrieved, chat whole and streamed, usage once in a stream that asks
//! for it, embeddings as base64 and floats, a not-found), the `ollama`
//! package (tags with details, show, ps, pull, generate and chat, whole and
//! streamed, embed and the legacy embeddings, a not-found), a Python gRPC
//! client whose code `grpc_tools.protoc` generates from this repository's
//! proto/ at test time, and `grpcio-reflection`'s v1alpha client. The packages come from `scripts/ensure-python.sh`; the script that
//! drives them is `tests/python/third_party_clients.py`.

use std::process::Command;

use flotilla_tests::serving::ServedModel;
use flotilla_tests::{test_model, workspace_root};
use serde_json::Value;

const MODEL: &str = "smollm2-135m-instruct";
const QUESTION: &str = "What is the capital of Germany?";

/// The venv's Python, if it has the client packages. Under
/// `scripts/test.sh` (which sets `FLOTILLA_PYTHON` after installing them)
/// a missing package is an error, never a skip.
fn python_with_clients() -> anyhow::Result<Option<std::path::PathBuf>> {
    let required = std::env::var_os("FLOTILLA_PYTHON");
    let python = required
        .clone()
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|| workspace_root().join(".venv/bin/python"));
    let has_packages = Command::new(&python)
        .args(["-c", "import openai, ollama, grpc_tools, grpc_reflection"])
        .output()
        .is_ok_and(|output| output.status.success());
    match (has_packages, required) {
        (true, _) => Ok(Some(python)),
        (false, Some(_)) => anyhow::bail!(
            "{} lacks openai, ollama, grpcio-tools or grpcio-reflection; run scripts/ensure-python.sh",
            python.display()
        ),
        (false, None) => Ok(None),
    }
}

#[tokio::test]
async fn openai_ollama_and_generated_grpc_clients_work_unchanged() -> anyhow::Result<()> {
    let Some(model) = test_model() else {
        eprintln!("SKIP: SmolLM2 GGUF not found; run scripts/test.sh (it fetches the model)");
        return Ok(());
    };
    let Some(python) = python_with_clients()? else {
        eprintln!("SKIP: no .venv with the client packages; run scripts/ensure-python.sh");
        return Ok(());
    };
    let served = ServedModel::start(&model, MODEL, "edge-a").await?;
    let grpc_target = served.grpc_url.trim_start_matches("http://").to_owned();
    let script = workspace_root().join("tests/python/third_party_clients.py");
    let proto_root = workspace_root().join("proto/proto");
    let output = tokio::task::spawn_blocking(move || {
        Command::new(python)
            .arg(script)
            .arg(&served.http_url)
            .arg(&grpc_target)
            .arg(MODEL)
            .arg(QUESTION)
            .arg(proto_root)
            .env("NO_PROXY", "127.0.0.1,localhost")
            .output()
            .map(|output| (output, served))
    })
    .await??;
    let (output, served) = output;
    if !output.status.success() {
        eprintln!("--- agent log ---\n{}", served.agent.log());
        anyhow::bail!(
            "the clients failed:\n{}",
            String::from_utf8_lossy(&output.stderr)
        );
    }
    let answers: Value = serde_json::from_slice(&output.stdout)?;
    let text = |key: &str| text_of(&answers[key]);

    assert_eq!(answers["openai_models"][0], MODEL, "{answers}");
    let tagged = format!("{MODEL}:latest");
    assert_eq!(answers["ollama_tags"][0], tagged.as_str(), "{answers}");
    // Ollama's details, from the GGUF: SmolLM2 is a llama with 134,515,008
    // parameters, which Ollama writes as 134.52M.
    let details = &answers["ollama_tags_details"][0];
    assert_eq!(details["format"], "gguf", "{answers}");
    assert_eq!(details["family"], "llama", "{answers}");
    assert_eq!(
        details["families"],
        serde_json::json!(["llama"]),
        "{answers}"
    );
    assert_eq!(details["parameter_size"], "134.52M", "{answers}");
    assert_eq!(details["quantization_level"], "Q4_1", "{answers}");
    let shown = &answers["ollama_show"];
    assert!(
        text_of(&shown["template"]).contains("im_start"),
        "{answers}"
    );
    assert_eq!(shown["details"], *details, "{answers}");
    assert_eq!(shown["architecture"], "llama", "{answers}");
    assert_eq!(shown["parameter_count"], 134_515_008, "{answers}");
    let loaded = &answers["ollama_ps"][0];
    assert_eq!(loaded["model"], tagged.as_str(), "{answers}");
    assert_eq!(loaded["size_vram"], 0, "{answers}");
    assert!(
        loaded["expires_year"].as_u64().unwrap_or(0) > 2300,
        "{answers}"
    );
    assert_eq!(answers["ollama_pull"], "success", "{answers}");
    assert_eq!(
        answers["ollama_pull_stream"]
            .as_array()
            .and_then(|s| s.last()),
        Some(&Value::from("success")),
        "{answers}"
    );
    let refused = text_of(&answers["ollama_pull_unknown"]);
    assert!(
        refused.starts_with("404") && refused.contains("flotilla assign"),
        "{refused}"
    );
    // OpenAI: usage once in a stream that asks for it; one model by id.
    assert_eq!(answers["openai_stream_usage_chunks"], 1, "{answers}");
    assert_eq!(answers["openai_retrieved"], MODEL, "{answers}");
    // grpcio-reflection (v1alpha): exactly the agent's services.
    assert_eq!(
        answers["grpc_reflection"]["services"],
        serde_json::json!([
            "flotilla.inference.v1.Inference",
            "grpc.health.v1.Health",
            "grpc.reflection.v1.ServerReflection",
            "grpc.reflection.v1alpha.ServerReflection",
        ]),
        "{answers}"
    );
    assert_eq!(
        answers["grpc_reflection"]["inference_methods"],
        serde_json::json!(["Chat", "Embed", "Generate", "ListModels", "Scrub"]),
        "{answers}"
    );
    for key in [
        "openai_chat",
        "openai_chat_stream",
        "ollama_chat",
        "ollama_chat_stream",
        "grpc_chat_stream",
    ] {
        assert!(text(key).contains("Berlin"), "{key}: {answers}");
    }
    // Greedy decoding: the same chat gives the same words on every API.
    assert_eq!(text("openai_chat"), text("openai_chat_stream"), "{answers}");
    assert_eq!(text("openai_chat"), text("ollama_chat"), "{answers}");
    assert_eq!(text("openai_chat"), text("grpc_chat_stream"), "{answers}");
    // Ollama's generate renders the chat template too (unless `raw`).
    assert!(!text("ollama_generate").is_empty(), "{answers}");
    assert_eq!(
        text("ollama_generate"),
        text("ollama_generate_stream"),
        "{answers}"
    );
    assert!(answers["openai_usage_total"].as_u64().unwrap_or(0) > 0);
    // Embeddings: the openai client's base64 and float answers and Ollama's
    // /api/embed are the same unit vectors; Ollama's legacy route points the
    // same way without being normalised, as Ollama's own.
    let vectors = |key: &str| -> Vec<Vec<f64>> {
        serde_json::from_value(answers[key].clone()).unwrap_or_default()
    };
    let openai = vectors("openai_embeddings");
    let ollama = vectors("ollama_embed");
    assert_eq!(openai.len(), 2, "{answers}");
    assert_eq!(ollama.len(), 2, "{answers}");
    let float: Vec<f64> = serde_json::from_value(answers["openai_embeddings_float"].clone())?;
    let legacy: Vec<f64> = serde_json::from_value(answers["ollama_embeddings"].clone())?;
    let norm = |v: &[f64]| v.iter().map(|x| x * x).sum::<f64>().sqrt();
    let cosine = |a: &[f64], b: &[f64]| {
        a.iter().zip(b).map(|(x, y)| x * y).sum::<f64>() / (norm(a) * norm(b))
    };
    for vector in openai.iter().chain(&ollama) {
        assert_eq!(vector.len(), 576, "SmolLM2's width");
        assert!((norm(vector) - 1.0).abs() < 1e-4);
    }
    for (a, b) in openai.iter().zip(&ollama) {
        assert!(cosine(a, b) > 0.999_999);
    }
    assert!(cosine(&float, &openai[0]) > 0.999_999);
    assert!(cosine(&legacy, &ollama[0]) > 0.999_999);
    assert!(
        (norm(&legacy) - 1.0).abs() > 1e-2,
        "the legacy vector was normalised"
    );
    // Two different sentences are not the same vector.
    assert!(cosine(&openai[0], &openai[1]) < 0.99);
    assert!(
        answers["openai_embeddings_prompt_tokens"]
            .as_u64()
            .unwrap_or(0)
            > 8
    );
    for key in [
        "openai_unknown",
        "ollama_unknown",
        "openai_retrieve_unknown",
    ] {
        let refusal = text(key);
        assert!(
            refusal.starts_with("404") && refusal.contains("no-such-model"),
            "{key}: {refusal}"
        );
    }
    Ok(())
}

fn text_of(value: &Value) -> String {
    value.as_str().unwrap_or_default().to_owned()
}
