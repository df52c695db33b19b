//! Observability of a real controller process: spans reach an OTLP/HTTP
//! collector when `OTEL_EXPORTER_OTLP_ENDPOINT` is set, and secrets (tokens,
//! the database password) never appear in its logs, even at debug level.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use flotilla_controller::testing::TestDatabase;
use flotilla_tests::{ControllerProcess, wait_until};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// A minimal OTLP/HTTP collector: counts POSTs to `/v1/traces` and answers
/// 200. Real TCP and HTTP/1.1 on loopback; it reads each request whole
/// (headers, then `content-length` bytes) before answering.
async fn start_collector() -> anyhow::Result<(String, Arc<AtomicUsize>)> {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let url = format!("http://{}", listener.local_addr()?);
    let received = Arc::new(AtomicUsize::new(0));
    let counter = Arc::clone(&received);
    tokio::spawn(async move {
        while let Ok((mut socket, _)) = listener.accept().await {
            let counter = Arc::clone(&counter);
            tokio::spawn(async move {
                let mut buffer = Vec::new();
                let mut chunk = [0u8; 8192];
                loop {
                    let Ok(n) = socket.read(&mut chunk).await else {
                        return;
                    };
                    if n == 0 {
                        return;
                    }
                    buffer.extend_from_slice(&chunk[..n]);
                    let Some(end) = buffer.windows(4).position(|w| w == b"\r\n\r\n") else {
                        continue;
                    };
                    let head = String::from_utf8_lossy(&buffer[..end]).to_ascii_lowercase();
                    let length = head
                        .lines()
                        .find_map(|line| line.strip_prefix("content-length:"))
                        .and_then(|value| value.trim().parse::<usize>().ok())
                        .unwrap_or(0);
                    if buffer.len() < end + 4 + length {
                        continue;
                    }
                    if head.starts_with("post /v1/traces") && length > 0 {
                        counter.fetch_add(1, Ordering::SeqCst);
                    }
                    let _ = socket
                        .write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n")
                        .await;
                    buffer.drain(..end + 4 + length);
                }
            });
        }
    });
    Ok((url, received))
}

#[tokio::test]
async fn spans_are_exported_and_secrets_stay_out_of_logs() -> anyhow::Result<()> {
    let (collector_url, received) = start_collector().await?;
    let database = TestDatabase::postgres().await?;
    // Trust auth ignores the password, so it can be a marker to look for.
    let password = "s3cret-db-password-marker";
    let mut database_url = reqwest::Url::parse(&database.url)?;
    let _ = database_url.set_password(Some(password));
    let data = tempfile::tempdir()?;
    let log_path = data.path().join("controller.log");
    let mut controller = ControllerProcess::start_with_env(
        &data.path().join("state"),
        &["--database-url", database_url.as_str()],
        &[
            ("OTEL_EXPORTER_OTLP_ENDPOINT", &collector_url),
            ("RUST_LOG", "debug"),
            ("FLOTILLA_LOG_FORMAT", "json"),
        ],
        Some(&log_path),
    )
    .await?;
    let token = controller.admin_token()?;
    let client = reqwest::Client::new();
    for _ in 0..3 {
        let response = client
            .get(format!("{}/api/v1/models", controller.rest_url))
            .bearer_auth(&token)
            .send()
            .await?;
        assert!(response.status().is_success());
    }
    let refused = client
        .get(format!("{}/api/v1/models", controller.rest_url))
        .bearer_auth("forged.token.value")
        .send()
        .await?;
    assert_eq!(refused.status(), reqwest::StatusCode::UNAUTHORIZED);

    // A graceful stop flushes the batch exporter.
    let status = controller.process.terminate(Duration::from_secs(30))?;
    assert!(status.success(), "controller exited with {status}");
    wait_until("spans at the collector", Duration::from_secs(10), || {
        let count = received.load(Ordering::SeqCst);
        async move { count > 0 }
    })
    .await?;

    let logs = std::fs::read_to_string(&log_path)?;
    assert!(logs.contains("\"level\""), "logs are JSON: {logs}");
    assert!(
        !logs.contains(&token),
        "the admin token leaked into the logs"
    );
    assert!(
        !logs.contains("forged.token.value"),
        "a presented token leaked into the logs"
    );
    assert!(
        !logs.contains(password),
        "the database password leaked into the logs"
    );
    let keys = std::fs::read_to_string(data.path().join("state/auth-keys.toml"))?;
    for line in keys.lines().filter(|line| line.starts_with("secret")) {
        let secret = line.split('"').nth(1).unwrap_or_default();
        assert!(
            !secret.is_empty() && !logs.contains(secret),
            "a JWT key leaked into the logs"
        );
    }
    Ok(())
}
