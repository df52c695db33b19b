//! Enrolment with the real binaries: an operator creates a bootstrap token
//! with the CLI, an agent enrols with it over gRPC and connects its sync
//! stream, the CLI lists the node as ready; the agent restarts on its data
//! directory without a token; a second agent with the used-up token is
//! refused with a clear message.

use std::time::Duration;

use flotilla_tests::{AgentProcess, ControllerProcess, flotilla, run_agent, wait_until};

/// Whether `edge-1` is listed as ready.
async fn ready(rest_url: &str, admin: &str, home: &std::path::Path) -> bool {
    let Ok(listed) = flotilla(rest_url, admin, home, &["node", "ls", "--output", "json"]) else {
        return false;
    };
    serde_json::from_slice::<serde_json::Value>(&listed.stdout)
        .is_ok_and(|listed| listed["items"][0]["ready"] == true)
}

fn stderr(output: &std::process::Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}

#[tokio::test]
async fn agent_enrols_with_a_cli_token_and_restarts_without_one() -> anyhow::Result<()> {
    let data = tempfile::tempdir()?;
    let home = tempfile::tempdir()?;
    let agent_dir = tempfile::tempdir()?;
    let other_agent_dir = tempfile::tempdir()?;
    let controller = ControllerProcess::start(data.path(), &[]).await?;
    let admin = controller.admin_token()?;
    let grpc_url = format!("http://{}", controller.grpc_addr);

    let created = flotilla(
        &controller.rest_url,
        &admin,
        home.path(),
        &["node", "token", "create", "--ttl", "10m", "--uses", "1"],
    )?;
    anyhow::ensure!(
        created.status.success(),
        "token create: {}",
        stderr(&created)
    );
    let token = String::from_utf8(created.stdout)?.trim().to_owned();
    anyhow::ensure!(
        token.starts_with("flt_"),
        "unexpected token output {token:?}"
    );

    let mut agent = AgentProcess::start(
        agent_dir.path(),
        &[
            "--controller",
            &grpc_url,
            "--bootstrap-token",
            &token,
            "--name",
            "edge-1",
            "--labels",
            "site=berlin,gpu=none",
        ],
    )?;
    let connected = wait_until("edge-1 to be ready", Duration::from_secs(60), || {
        ready(&controller.rest_url, &admin, home.path())
    })
    .await;
    if connected.is_err() {
        eprintln!("{}", agent.log());
    }
    connected?;
    assert!(
        agent.log().contains("enrolled as edge-1"),
        "{}",
        agent.log()
    );
    assert!(!agent.log().contains(&token), "the agent printed its token");
    assert!(agent_dir.path().join("node.toml").exists());

    let listed = flotilla(
        &controller.rest_url,
        &admin,
        home.path(),
        &["node", "ls", "--output", "json"],
    )?;
    anyhow::ensure!(listed.status.success(), "node ls: {}", stderr(&listed));
    let listed: serde_json::Value = serde_json::from_slice(&listed.stdout)?;
    let node = &listed["items"][0];
    assert_eq!(node["name"], "edge-1");
    assert_eq!(node["status"], "active");
    assert_eq!(node["labels"]["site"], "berlin");
    assert!(
        node.get("assignment")
            .is_some_and(serde_json::Value::is_null)
    );
    assert!(node["inventory"]["cpu_cores"].as_u64().unwrap_or(0) > 0);

    // A restart on the same data directory needs no token.
    agent.process.kill()?;
    let restarted = AgentProcess::start(
        agent_dir.path(),
        &["--controller", &grpc_url, "--name", "edge-1"],
    )?;
    wait_until(
        "the restarted agent to find its identity",
        Duration::from_secs(60),
        || async { restarted.log().contains("already enrolled as edge-1") },
    )
    .await?;
    wait_until("edge-1 to reconnect", Duration::from_secs(60), || {
        ready(&controller.rest_url, &admin, home.path())
    })
    .await?;

    // The token had one use: a second agent is refused, and says why.
    let refused = run_agent(
        other_agent_dir.path(),
        &[
            "--controller",
            &grpc_url,
            "--bootstrap-token",
            &token,
            "--name",
            "edge-2",
        ],
    )
    .await?;
    assert!(!refused.status.success());
    let message = stderr(&refused);
    assert!(message.contains("refused enrolment of edge-2"), "{message}");
    assert!(message.contains("used up"), "{message}");
    assert!(!other_agent_dir.path().join("node.toml").exists());

    // An unreachable controller is named.
    let unreachable = run_agent(
        other_agent_dir.path(),
        &[
            "--controller",
            "http://127.0.0.1:1",
            "--bootstrap-token",
            &token,
            "--name",
            "edge-3",
        ],
    )
    .await?;
    assert!(!unreachable.status.success());
    assert!(
        stderr(&unreachable).contains("cannot reach the controller at http://127.0.0.1:1"),
        "{}",
        stderr(&unreachable)
    );

    let names = flotilla(
        &controller.rest_url,
        &admin,
        home.path(),
        &["node", "ls", "-o", "json"],
    )?;
    let names: serde_json::Value = serde_json::from_slice(&names.stdout)?;
    assert_eq!(names["items"].as_array().map(Vec::len), Some(1));
    Ok(())
}
