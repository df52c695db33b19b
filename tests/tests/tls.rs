//! TLS with real processes and a private CA (DESIGN.md §8): the controller
//! serves REST and gRPC over TLS; the CLI and an agent that trust the CA
//! enrol, sync, and download the real SmolLM2 over it, while clients that
//! do not trust it are refused and say why. The agents serve inference over
//! TLS too, with one fleet-wide certificate that names no address: a second
//! agent, without the model, forwards OpenAI and gRPC chats to the first
//! over https at its address, verifying it by that name and the same CA.

use std::time::Duration;

use flotilla_tests::serving::{cli, grpc_chat_tls, node_phase, openai_chat_answers, push_model};
use flotilla_tests::tls::{AGENT_NAME, TestTls};
use flotilla_tests::{
    AgentProcess, ControllerProcess, flotilla, run_agent, test_model, wait_until,
};
use serde_json::Value;

const MODEL: &str = "smollm2-135m-instruct";
/// Upload, download and load of 100 MB over TLS on loopback, debug build.
const WAIT: Duration = Duration::from_secs(180);
const QUESTION: &str = "What is the capital of France?";

#[tokio::test]
async fn the_fleet_works_over_tls_with_a_private_ca() -> anyhow::Result<()> {
    let certificates = tempfile::tempdir()?;
    let data = tempfile::tempdir()?;
    let home = tempfile::tempdir()?;
    let refused_dir = tempfile::tempdir()?;
    let agent_dir = tempfile::tempdir()?;
    let tls = TestTls::generate(certificates.path())?;
    let controller = ControllerProcess::start_tls(data.path(), &tls).await?;
    assert!(
        controller.rest_url.starts_with("https://"),
        "{}",
        controller.rest_url
    );

    // Clients that do not trust the CA are refused: a plain HTTPS client,
    // plain HTTP to the TLS port, the CLI without --ca-cert.
    let untrusting = reqwest::get(format!("{}/readyz", controller.rest_url)).await;
    assert!(untrusting.is_err(), "{untrusting:?}");
    let plain_url = controller.rest_url.replacen("https://", "http://", 1);
    let plain = reqwest::get(format!("{plain_url}/readyz")).await;
    assert!(
        plain
            .as_ref()
            .map_or(true, |response| !response.status().is_success()),
        "{plain:?}"
    );
    let output = flotilla(
        &controller.rest_url,
        &controller.admin_token()?,
        home.path(),
        &["node", "ls"],
    )?;
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success(), "{stderr}");
    assert!(stderr.to_lowercase().contains("certificate"), "{stderr}");

    // The CLI with the CA (ControllerProcess passes --ca-cert).
    let token = cli(
        &controller,
        home.path(),
        &["node", "token", "create", "--ttl", "10m", "--uses", "3"],
    )?;
    let token = token.trim();
    let grpc_url = format!("https://localhost:{}", controller.grpc_addr.port());

    // An agent that does not trust the CA cannot enrol, and says why.
    let refused = run_agent(
        refused_dir.path(),
        &[
            "--controller",
            &grpc_url,
            "--bootstrap-token",
            token,
            "--name",
            "edge-untrusting",
        ],
    )
    .await?;
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert!(!refused.status.success(), "{stderr}");
    assert!(stderr.to_lowercase().contains("certificate"), "{stderr}");

    // One that trusts it enrols and keeps its stream. It serves inference
    // over TLS with a certificate from the same CA.
    let ca = tls.ca.to_string_lossy().into_owned();
    let cert = tls.agent_cert.to_string_lossy().into_owned();
    let key = tls.agent_key.to_string_lossy().into_owned();
    let start_agent = |dir: &std::path::Path, name: &str| {
        AgentProcess::start(
            dir,
            &[
                "--controller",
                &grpc_url,
                "--controller-ca",
                &ca,
                "--bootstrap-token",
                token,
                "--name",
                name,
                "--engine-threads",
                "2",
                "--tls-cert",
                &cert,
                "--tls-key",
                &key,
                "--peer-tls-name",
                AGENT_NAME,
            ],
        )
    };
    let agent = start_agent(agent_dir.path(), "edge-tls")?;
    let ready = |home: std::path::PathBuf| {
        let controller = &controller;
        async move {
            let Ok(listed) = cli(controller, &home, &["node", "ls", "--output", "json"]) else {
                return false;
            };
            serde_json::from_str::<Value>(&listed).is_ok_and(|listed| {
                listed["items"].as_array().is_some_and(|items| {
                    items
                        .iter()
                        .any(|node| node["name"] == "edge-tls" && node["ready"] == true)
                })
            })
        }
    };
    if let Err(error) = wait_until("edge-tls to enrol and heartbeat over TLS", WAIT, || {
        ready(home.path().to_path_buf())
    })
    .await
    {
        eprintln!("--- edge-tls log ---\n{}", agent.log());
        return Err(error);
    }

    // Artifacts travel over TLS too: upload through the CLI, download by
    // the agent from the controller's https:// blob URL.
    let Some(model) = test_model() else {
        eprintln!("SKIP (artifact part): SmolLM2 GGUF not found; run scripts/test.sh");
        return Ok(());
    };
    push_model(&controller, home.path(), &model, MODEL, "1.0.0")?;
    cli(
        &controller,
        home.path(),
        &[
            "assign",
            "--node",
            "edge-tls",
            "--model",
            MODEL,
            "--version",
            "1.0.0",
        ],
    )?;
    let serving = wait_until("edge-tls to download and serve the model", WAIT, || async {
        node_phase(&controller, home.path(), "edge-tls").as_deref() == Some("ready")
    })
    .await;
    if let Err(error) = serving {
        eprintln!("--- edge-tls log ---\n{}", agent.log());
        return Err(error);
    }

    // Inference over TLS. A client that does not trust the CA is refused.
    let a_http = https_url(agent.http_addr)?;
    let a_grpc = https_url(agent.grpc_addr)?;
    let untrusting = reqwest::get(format!("{a_http}/v1/models")).await;
    assert!(untrusting.is_err(), "{untrusting:?}");
    let client = reqwest::Client::builder()
        .add_root_certificate(tls.ca_certificate()?)
        .build()?;
    let ca_pem = std::fs::read(&tls.ca)?;
    let (direct, _) = openai_chat_answers(&client, &a_http, MODEL, QUESTION, 16).await?;
    assert!(!direct.trim().is_empty(), "an answer from edge-tls");

    // A second agent without the model forwards to edge-tls over https at
    // 127.0.0.1, which its certificate does not name: it is verified as
    // AGENT_NAME, by the controller's CA (no --peer-ca).
    let b_dir = tempfile::tempdir()?;
    let agent_b = start_agent(b_dir.path(), "edge-tls-b")?;
    let b_http = https_url(agent_b.http_addr)?;
    let b_grpc = https_url(agent_b.grpc_addr)?;
    let routed = wait_until("edge-tls-b to list the model as routed", WAIT, || {
        let client = client.clone();
        let url = format!("{b_http}/v1/models");
        async move {
            let Ok(response) = client.get(&url).send().await else {
                return false;
            };
            response.json::<Value>().await.is_ok_and(|listed| {
                listed["data"].as_array().is_some_and(|models| {
                    models
                        .iter()
                        .any(|model| model["id"] == MODEL && model["local"] == false)
                })
            })
        }
    })
    .await;
    if let Err(error) = routed {
        eprintln!("--- edge-tls-b log ---\n{}", agent_b.log());
        return Err(error);
    }
    let (whole, streamed) = openai_chat_answers(&client, &b_http, MODEL, QUESTION, 16).await?;
    assert_eq!(whole, direct, "the forwarded answer is edge-tls's own");
    assert_eq!(streamed, direct, "streamed through edge-tls-b");
    let (grpc_direct, _) = grpc_chat_tls(&a_grpc, &ca_pem, MODEL, QUESTION, 16).await?;
    let (grpc_routed, last) = grpc_chat_tls(&b_grpc, &ca_pem, MODEL, QUESTION, 16).await?;
    assert!(last.done, "the forwarded gRPC stream ends with done");
    assert_eq!(grpc_routed, grpc_direct, "gRPC forwarded over TLS");
    Ok(())
}

/// `https://localhost:PORT` for an agent's listener (its certificate names
/// `localhost`, not the address).
fn https_url(addr: Option<std::net::SocketAddr>) -> anyhow::Result<String> {
    let addr = addr.ok_or_else(|| anyhow::anyhow!("no listener address"))?;
    Ok(format!("https://localhost:{}", addr.port()))
}
