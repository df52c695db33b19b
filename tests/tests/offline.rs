//! Disconnects are normal at the edge (DESIGN.md §3): an agent restarted
//! while its controller is down serves its assigned model again from its
//! cache, with the assignment it last received (kept in `state.json`).

use std::time::Duration;

use flotilla_tests::serving::{SERVE_WAIT, ServedModel};
use flotilla_tests::{AgentProcess, test_model, wait_until};
use serde_json::{Value, json};

const MODEL: &str = "smollm2-135m-instruct";

#[tokio::test]
async fn an_agent_restarted_without_its_controller_serves_its_cached_model() -> anyhow::Result<()> {
    let Some(model) = test_model() else {
        eprintln!("SKIP: SmolLM2 GGUF not found; run scripts/test.sh (it fetches the model)");
        return Ok(());
    };
    let mut served = ServedModel::start(&model, MODEL, "edge-a").await?;
    let controller_url = format!("http://{}", served.controller.grpc_addr);
    served.controller.process.kill()?;
    served.agent.process.terminate(Duration::from_secs(60))?;

    let agent = AgentProcess::start(
        &served.agent.data_dir,
        &[
            "--controller",
            &controller_url,
            "--name",
            "edge-a",
            "--engine-threads",
            "2",
        ],
    )?;
    let http = format!(
        "http://{}",
        agent
            .http_addr
            .ok_or_else(|| anyhow::anyhow!("no --http address"))?
    );
    let client = reqwest::Client::new();
    let models_url = format!("{http}/v1/models");
    let serving = wait_until("the restarted agent to serve", SERVE_WAIT, || async {
        let Ok(response) = client.get(&models_url).send().await else {
            return false;
        };
        let models: Value = response.json().await.unwrap_or_default();
        models["data"][0]["id"] == MODEL
    })
    .await;
    if let Err(error) = serving {
        eprintln!("--- agent log ---\n{}", agent.log());
        return Err(error);
    }
    let answer: Value = client
        .post(format!("{http}/v1/chat/completions"))
        .json(&json!({
            "model": MODEL,
            "messages": [{"role": "user", "content": "What is the capital of Germany?"}],
            "max_tokens": 24,
            "temperature": 0,
        }))
        .send()
        .await?
        .json()
        .await?;
    let text = answer["choices"][0]["message"]["content"]
        .as_str()
        .unwrap_or_default();
    assert!(text.contains("Berlin"), "{answer}");
    Ok(())
}
