//! Escalation policies end to end (issue 20, item 1), with real processes: a
//! controller and an agent, a policy created with `flotilla policy create`
//! and attached with `flotilla assign --policy`. The agent receives it in
//! its desired state and keeps it in `state.json`; `flotilla node show`
//! names it with its key reference. The key itself, set in the agent's
//! environment, appears nowhere: not in the controller's views, not in the
//! agent's state file. A literal key given to `policy create` is refused,
//! and an unknown policy refused at assign time.

use std::path::Path;
use std::time::Duration;

use flotilla_tests::{AgentProcess, ControllerProcess, flotilla, wait_until};
use serde_json::Value;

const WAIT: Duration = Duration::from_secs(60);
/// What the agent's environment holds under `UPSTREAM_KEY`: must never show.
const KEY_VALUE: &str = "sk-e2e-test-key-that-must-never-leave-the-node-0123456789";

struct Cli<'a> {
    controller: &'a ControllerProcess,
    admin: String,
    home: &'a Path,
}

impl Cli<'_> {
    /// Exit status, stdout and stderr of `flotilla args…`.
    fn outcome(&self, args: &[&str]) -> anyhow::Result<(bool, String, String)> {
        let output = flotilla(&self.controller.rest_url, &self.admin, self.home, args)?;
        Ok((
            output.status.success(),
            String::from_utf8(output.stdout)?,
            String::from_utf8(output.stderr)?,
        ))
    }

    fn text(&self, args: &[&str]) -> anyhow::Result<String> {
        let (success, stdout, stderr) = self.outcome(args)?;
        anyhow::ensure!(success, "flotilla {}: {stderr}", args.join(" "));
        Ok(stdout)
    }

    fn json(&self, args: &[&str]) -> anyhow::Result<Value> {
        let mut args = args.to_vec();
        args.extend(["--output", "json"]);
        Ok(serde_json::from_str(&self.text(&args)?)?)
    }
}

/// The policy in the agent's `state.json`, once there.
fn saved_policy(data_dir: &Path) -> Option<Value> {
    let text = std::fs::read_to_string(data_dir.join("state.json")).ok()?;
    let state: Value = serde_json::from_str(&text).ok()?;
    let policy = state["desired"]["assignment"]["escalation_policy"].clone();
    (!policy.is_null()).then_some(policy)
}

#[tokio::test]
async fn a_policy_assigned_with_the_cli_reaches_the_agent_and_shows_per_node() -> anyhow::Result<()>
{
    let data = tempfile::tempdir()?;
    let home = tempfile::tempdir()?;
    let files = tempfile::tempdir()?;
    let agent_dir = tempfile::tempdir()?;
    let controller =
        ControllerProcess::start(data.path(), &["--heartbeat-interval-ms", "500"]).await?;
    let cli = Cli {
        controller: &controller,
        admin: controller.admin_token()?,
        home: home.path(),
    };
    let model = files.path().join("tiny.gguf");
    std::fs::write(&model, flotilla_gguf::GgufBuilder::tiny_llama(3, 11))?;
    cli.json(&[
        "model",
        "push",
        &model.to_string_lossy(),
        "--name",
        "tiny",
        "--version",
        "1.0.0",
    ])?;

    // A literal key is refused, and the refusal does not echo it.
    let (success, _, stderr) = cli.outcome(&[
        "policy",
        "create",
        "hybrid",
        "--egress",
        "allowed",
        "--upstream-url",
        "https://llm.example.com/v1",
        "--upstream-model",
        "big",
        "--credential",
        KEY_VALUE,
        "--escalate-model",
        "auto",
    ])?;
    assert!(!success, "a literal key was accepted");
    assert!(stderr.contains("looks like a literal key"), "{stderr}");
    assert!(
        !stderr.contains(KEY_VALUE),
        "the refusal echoes the key: {stderr}"
    );

    let created = cli.json(&[
        "policy",
        "create",
        "hybrid",
        "--egress",
        "allowed",
        "--upstream-url",
        "https://llm.example.com/v1",
        "--upstream-model",
        "big",
        "--credential",
        "env:UPSTREAM_KEY",
        "--escalate-model",
        "auto",
        "--escalate-model",
        "frontier",
        "--on-overload",
        "--scrub",
        "email,phone",
    ])?;
    assert_eq!(created["version"], 1, "{created}");
    let shown = cli.text(&["policy", "show", "hybrid@1"])?;
    assert!(shown.contains("env:UPSTREAM_KEY"), "{shown}");
    assert!(shown.contains("model auto|frontier"), "{shown}");
    let listed = cli.text(&["policy", "ls"])?;
    assert!(listed.contains("hybrid"), "{listed}");

    let token = cli
        .text(&["node", "token", "create", "--ttl", "10m", "--uses", "1"])?
        .trim()
        .to_owned();
    let grpc = format!("http://{}", controller.grpc_addr);
    let agent = AgentProcess::start_with_env(
        agent_dir.path(),
        &[
            "--controller",
            &grpc,
            "--bootstrap-token",
            &token,
            "--name",
            "edge-1",
        ],
        &[("UPSTREAM_KEY", KEY_VALUE)],
    )?;
    wait_until("edge-1 to enrol", WAIT, || async {
        cli.json(&["node", "ls"])
            .map(|nodes| {
                nodes["items"]
                    .as_array()
                    .is_some_and(|items| !items.is_empty())
            })
            .unwrap_or(false)
    })
    .await?;

    // An unknown policy is refused at assign time; nothing is assigned.
    let (success, _, stderr) = cli.outcome(&[
        "assign",
        "--node",
        "edge-1",
        "--model",
        "tiny",
        "--version",
        "1.0.0",
        "--policy",
        "absent@1",
    ])?;
    assert!(!success, "an unknown policy was assigned");
    assert!(
        stderr.contains("escalation policy absent@1 not found"),
        "{stderr}"
    );

    let assigned = cli.json(&[
        "assign",
        "--node",
        "edge-1",
        "--model",
        "tiny",
        "--version",
        "1.0.0",
        "--policy",
        "hybrid@1",
    ])?;
    assert_eq!(assigned["assignment"]["policy"], "hybrid@1", "{assigned}");
    let waited = wait_until("edge-1 to keep the policy in state.json", WAIT, || async {
        saved_policy(agent_dir.path()).is_some()
    })
    .await;
    if waited.is_err() {
        eprintln!("--- agent log ---\n{}", agent.log());
    }
    waited?;
    let saved = saved_policy(agent_dir.path()).unwrap_or_default();
    assert_eq!(
        (&saved["name"], &saved["version"]),
        (&Value::from("hybrid"), &Value::from(1))
    );
    assert_eq!(saved["spec"]["upstream"]["credential"], "env:UPSTREAM_KEY");
    assert_eq!(
        saved["spec"]["scrub"],
        serde_json::json!(["email", "phone"])
    );

    // `node show` names the policy and the key's reference, never the key.
    let node = cli.json(&["node", "show", "edge-1"])?;
    assert_eq!(node["assignment"]["policy"], "hybrid@1", "{node}");
    let text = cli.text(&["node", "show", "edge-1"])?;
    assert!(text.contains("hybrid@1"), "{text}");
    assert!(text.contains("key env:UPSTREAM_KEY"), "{text}");
    let state = std::fs::read_to_string(agent_dir.path().join("state.json"))?;
    for (what, haystack) in [
        ("node show", text.as_str()),
        ("node show --output json", &node.to_string()),
        ("state.json", state.as_str()),
        ("the agent's log", &agent.log()),
    ] {
        assert!(!haystack.contains(KEY_VALUE), "the key shows in {what}");
    }

    // A new version forbidding egress replaces it on the node.
    cli.json(&["policy", "create", "hybrid", "--egress", "forbidden"])?;
    cli.json(&[
        "assign",
        "--node",
        "edge-1",
        "--model",
        "tiny",
        "--version",
        "1.0.0",
        "--policy",
        "hybrid@2",
    ])?;
    wait_until("edge-1 to apply hybrid@2", WAIT, || async {
        saved_policy(agent_dir.path()).is_some_and(|policy| policy["version"] == 2)
    })
    .await?;
    let saved = saved_policy(agent_dir.path()).unwrap_or_default();
    assert_eq!(saved["spec"]["egress"], "forbidden");
    assert!(saved["spec"]["upstream"].is_null());
    let text = cli.text(&["node", "show", "edge-1"])?;
    assert!(text.contains("hybrid@2, egress forbidden"), "{text}");
    drop(agent);
    Ok(())
}
