//! Third-party clients, unchanged, against an agent serving the real
//! SmolLM2: the official `openai` Python package (models, chat whole and
//! streamed, a not-found), the `ollama` package (tags, generate and chat,
//! whole and streamed, a not-found) and a Python gRPC client whose code
//! `grpc_tools.protoc` generates from this repository's proto/ at test
//! time. The packages come from `scripts/ensure-python.sh`; the script that
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
        .args(["-c", "import openai, ollama, grpc_tools"])
        .output()
        .is_ok_and(|output| output.status.success());
    match (has_packages, required) {
        (true, _) => Ok(Some(python)),
        (false, Some(_)) => anyhow::bail!(
            "{} lacks openai, ollama or grpcio-tools; run scripts/ensure-python.sh",
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
    let text = |key: &str| answers[key].as_str().unwrap_or_default().to_owned();

    assert_eq!(answers["openai_models"][0], MODEL, "{answers}");
    assert_eq!(answers["ollama_tags"][0], MODEL, "{answers}");
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
    for key in ["openai_unknown", "ollama_unknown"] {
        let refusal = text(key);
        assert!(
            refusal.starts_with("404") && refusal.contains("no-such-model"),
            "{key}: {refusal}"
        );
    }
    Ok(())
}
