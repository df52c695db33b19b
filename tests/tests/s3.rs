//! The controller on a real S3 server (moto's, on loopback): a store it
//! cannot use stops its start with the reason; the real SmolLM2 pushed
//! through the CLI lands in the bucket (moved from `tmp/` to `blobs/` by
//! a streamed multipart copy: the test lowers the CopyObject limit), is
//! served in HTTP ranges (how agents resume), downloaded and served by an
//! agent, survives a controller restart, and is read by a second replica
//! sharing the bucket and the database.

use std::process::Command;

use flotilla_controller::testing::TestDatabase;
use flotilla_tests::s3::{MotoServer, S3_ENV, python_with_moto};
use flotilla_tests::serving::{SERVE_WAIT, cli, node_phase, push_model};
use flotilla_tests::{AgentProcess, ControllerProcess, binary, test_model, wait_until};

const BUCKET: &str = "flotilla-artifacts";
const MODEL: &str = "smollm2-135m-instruct";

/// Runs a controller that must refuse to start; its stderr.
fn refused_start(args: &[&str]) -> anyhow::Result<String> {
    let data = tempfile::tempdir()?;
    let output = Command::new(binary("flotilla-controller")?)
        .arg("--data-dir")
        .arg(data.path())
        .args(["--http", "127.0.0.1:0", "--grpc", "127.0.0.1:0"])
        .args(args)
        .envs(S3_ENV.iter().copied())
        .env("RUST_LOG", "warn")
        .output()?;
    anyhow::ensure!(
        !output.status.success(),
        "the controller started on an unusable store"
    );
    Ok(String::from_utf8_lossy(&output.stderr).into_owned())
}

#[tokio::test]
async fn a_misconfigured_store_stops_the_start_with_its_reason() -> anyhow::Result<()> {
    let Some(python) = python_with_moto()? else {
        eprintln!("SKIP: no .venv with moto[server]; run scripts/ensure-python.sh");
        return Ok(());
    };
    let moto = MotoServer::start(&python).await?;
    let missing = refused_start(&[
        "--object-store",
        "s3://no-such-bucket/blobs",
        "--s3-endpoint",
        &moto.endpoint,
    ])?;
    assert!(
        missing.contains("the bucket does not exist") && missing.contains("s3://no-such-bucket"),
        "{missing}"
    );
    // Nothing listens there: the endpoint is named, not "builder error".
    let closed = flotilla_tests::free_addr()?;
    let unreachable = refused_start(&[
        "--object-store",
        "s3://any/blobs",
        "--s3-endpoint",
        &format!("http://{closed}"),
    ])?;
    assert!(
        unreachable.contains("the endpoint cannot be reached")
            && !unreachable.contains("builder error"),
        "{unreachable}"
    );
    Ok(())
}

#[tokio::test]
async fn artifacts_in_s3_survive_restarts_and_serve_a_second_replica() -> anyhow::Result<()> {
    let Some(python) = python_with_moto()? else {
        eprintln!("SKIP: no .venv with moto[server]; run scripts/ensure-python.sh");
        return Ok(());
    };
    let Some(model) = test_model() else {
        eprintln!("SKIP: SmolLM2 GGUF not found; run scripts/test.sh (it fetches the model)");
        return Ok(());
    };
    let moto = MotoServer::start(&python).await?;
    moto.create_bucket(BUCKET).await?;
    let database = TestDatabase::postgres().await?;
    let store = format!("s3://{BUCKET}/flotilla");
    let shared = [
        "--database-url",
        database.url.as_str(),
        "--object-store",
        store.as_str(),
        "--s3-endpoint",
        moto.endpoint.as_str(),
        "--heartbeat-interval-ms",
        "500",
    ];
    let mut first_args = shared.to_vec();
    // Every upload takes the streamed copy a >5 GiB file would take.
    first_args.extend(["--s3-copy-limit-bytes", "1048576"]);
    let (data, home, agent_dir) = (
        tempfile::tempdir()?,
        tempfile::tempdir()?,
        tempfile::tempdir()?,
    );
    let mut controller =
        ControllerProcess::start_with_env(data.path(), &first_args, S3_ENV, None).await?;
    let pushed = push_model(&controller, home.path(), &model, MODEL, "1.0.0")?;
    let digest = pushed["digest"]
        .as_str()
        .ok_or_else(|| anyhow::anyhow!("no digest in {pushed}"))?
        .trim_start_matches("blake3:")
        .to_owned();
    let file = std::fs::read(&model)?;
    let token = controller.admin_token()?;
    let client = reqwest::Client::new();

    // A resumed download: the tail from byte 1,000,000, straight from S3.
    let blob_url = |rest: &str| format!("{rest}/api/v1/blobs/{digest}");
    let tail = client
        .get(blob_url(&controller.rest_url))
        .bearer_auth(&token)
        .header("Range", "bytes=1000000-")
        .send()
        .await?;
    assert_eq!(tail.status(), reqwest::StatusCode::PARTIAL_CONTENT);
    assert!(
        tail.bytes().await?.as_ref() == &file[1_000_000..],
        "the range's bytes differ"
    );

    // An agent downloads it (verifying its digest) and serves it.
    let bootstrap = cli(
        &controller,
        home.path(),
        &["node", "token", "create", "--ttl", "10m", "--uses", "1"],
    )?;
    let controller_grpc = format!("http://{}", controller.grpc_addr);
    let agent = AgentProcess::start(
        agent_dir.path(),
        &[
            "--controller",
            &controller_grpc,
            "--bootstrap-token",
            bootstrap.trim(),
            "--name",
            "edge-s3",
            "--engine-threads",
            "2",
        ],
    )?;
    wait_until("the agent to enrol", SERVE_WAIT, || async {
        node_phase(&controller, home.path(), "edge-s3").is_some()
    })
    .await?;
    cli(
        &controller,
        home.path(),
        &[
            "assign",
            "--node",
            "edge-s3",
            "--model",
            MODEL,
            "--version",
            "1.0.0",
        ],
    )?;
    let served = wait_until(
        "the agent to serve the model from S3",
        SERVE_WAIT,
        || async { node_phase(&controller, home.path(), "edge-s3").as_deref() == Some("ready") },
    )
    .await;
    if let Err(error) = served {
        eprintln!("--- agent log ---\n{}", agent.log());
        return Err(error);
    }

    // Restarted, the controller finds the blob in the bucket.
    controller.restart_with_env(&shared, S3_ENV).await?;
    let whole = client
        .get(blob_url(&controller.rest_url))
        .bearer_auth(&token)
        .send()
        .await?
        .error_for_status()?
        .bytes()
        .await?;
    assert!(
        whole.as_ref() == file.as_slice(),
        "the blob changed across a restart"
    );

    // A second replica (its own disk, the same keys, database and bucket).
    let second_data = tempfile::tempdir()?;
    let keys = data
        .path()
        .join("auth-keys.toml")
        .to_string_lossy()
        .into_owned();
    let mut second_args = shared.to_vec();
    second_args.extend(["--jwt-keys", keys.as_str()]);
    let second =
        ControllerProcess::start_with_env(second_data.path(), &second_args, S3_ENV, None).await?;
    let head = client
        .get(blob_url(&second.rest_url))
        .bearer_auth(&token)
        .header("Range", "bytes=0-65535")
        .send()
        .await?;
    assert_eq!(head.status(), reqwest::StatusCode::PARTIAL_CONTENT);
    assert!(
        head.bytes().await?.as_ref() == &file[..65_536],
        "the second replica reads other bytes"
    );
    let listed = cli(&second, home.path(), &["model", "ls", "--output", "json"])?;
    assert!(listed.contains(MODEL), "the second replica lists {listed}");
    drop(agent);
    Ok(())
}
