//! REST API tests against a real controller on loopback, on both stores
//! (SQLite in a temp dir, and a fresh Postgres database per test).
//!
//! The controller comes from `flotilla_controller::testing`; requests go
//! through the typed client (`flotilla_client::ApiClient`) where it has the
//! call. They go raw (`TestController::raw`) where the test is about what
//! the typed client hides or will not send: an exact success status (201
//! against 200), headers and ranges, the wire shape of a body, malformed or
//! unauthenticated requests, and uploads with no or a wrong declared digest.

use std::time::Duration;

use flotilla_api_types as dto;
use flotilla_controller::auth::{Authenticator, Role};
use flotilla_controller::objects::BlobStore;
use flotilla_controller::testing::{TestController, TestStore, api_error, raw_error};
use flotilla_gguf::GgufBuilder;
use reqwest::StatusCode;
use serde_json::json;

flotilla_controller::on_both_stores!(
    health_and_openapi,
    every_auth_failure_is_refused_and_changes_nothing,
    model_and_version_lifecycle,
    models_paginate,
    upload_records_gguf_metadata_and_dedupes,
    concurrent_duplicate_uploads_store_one_blob,
    bad_uploads_leave_nothing_behind,
    resolution_skips_yanked_versions,
    blobs_serve_ranges,
    prompts_are_versioned,
    policies_are_versioned_checked_and_audited,
    assignments_and_rollouts_name_known_policies_only,
    tokens_are_minted_by_admins_only,
    interrupted_and_oversized_uploads_leave_nothing_behind,
);

/// `POST` of raw bytes to a version's artifacts as the admin, declaring
/// `declared` as their digest or nothing: the upload endpoint itself is
/// under test here, and the typed client always declares a digest.
async fn upload(
    api: &TestController,
    model: &str,
    version: &str,
    bytes: Vec<u8>,
    declared: Option<&str>,
) -> anyhow::Result<reqwest::Response> {
    let mut request = api
        .raw()
        .post(&format!(
            "/api/v1/models/{model}/versions/{version}/artifacts"
        ))
        .bearer_auth(&api.admin_token)
        .body(bytes);
    if let Some(digest) = declared {
        request = request.header(dto::DIGEST_HEADER, digest);
    }
    Ok(request.send().await?)
}

/// `POST` of a JSON body with `token`, answered with its exact status.
async fn post(
    api: &TestController,
    path: &str,
    token: &str,
    body: serde_json::Value,
) -> anyhow::Result<reqwest::Response> {
    Ok(api
        .raw()
        .post(path)
        .bearer_auth(token)
        .json(&body)
        .send()
        .await?)
}

fn model(name: &str) -> dto::CreateModelRequest {
    dto::CreateModelRequest {
        name: name.to_owned(),
        description: String::new(),
    }
}

fn version(version: &str) -> dto::CreateVersionRequest {
    dto::CreateVersionRequest {
        version: version.to_owned(),
        notes: String::new(),
    }
}

fn token_request(subject: &str, role: &str) -> dto::CreateTokenRequest {
    dto::CreateTokenRequest {
        subject: subject.to_owned(),
        role: role.to_owned(),
        ttl_seconds: None,
    }
}

/// A version's state change, as `PATCH …/versions/{version}` takes it.
fn state(state: &str) -> dto::UpdateVersionRequest {
    dto::UpdateVersionRequest {
        state: state.to_owned(),
    }
}

/// Resolves model `smol` under `requirement`, preferring `quantization`.
fn resolve_query(requirement: &str, quantization: Option<&str>) -> dto::ResolveQuery {
    dto::ResolveQuery {
        model: "smol".to_owned(),
        requirement: Some(requirement.to_owned()),
        quantization: quantization.map(str::to_owned),
        ..Default::default()
    }
}

/// A tiny servable GGUF file ([`GgufBuilder::tiny_llama`]); different seeds
/// give different digests.
fn gguf_fixture(file_type: u32, seed: u8) -> Vec<u8> {
    GgufBuilder::tiny_llama(file_type, seed)
}

const Q4_1: u32 = 3;
const Q8_0: u32 = 7;

async fn health_and_openapi(store: TestStore) -> anyhow::Result<()> {
    let api = TestController::start(store).await?;
    assert_eq!(
        api.raw().get("/healthz").send().await?.status(),
        StatusCode::OK
    );
    // On Postgres the controller is ready once it also follows other
    // replicas' changes, which it starts doing just after it serves.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(15);
    loop {
        let status = api.raw().get("/readyz").send().await?.status();
        if status == StatusCode::OK {
            break;
        }
        anyhow::ensure!(
            status == StatusCode::SERVICE_UNAVAILABLE && std::time::Instant::now() < deadline,
            "not ready: {status}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    let doc: serde_json::Value = api
        .raw()
        .get("/api/v1/openapi.json")
        .send()
        .await?
        .json()
        .await?;
    let paths = doc["paths"].as_object().expect("openapi has paths");
    assert!(paths.contains_key("/api/v1/models/{name}/versions/{version}/artifacts"));
    assert!(doc["components"]["securitySchemes"]["bearer"].is_object());
    // A request counted by route shows up in the metrics.
    let metrics = api.raw().get("/metrics").send().await?.text().await?;
    assert!(
        metrics.contains("flotilla_http_requests_total"),
        "{metrics}"
    );
    let unknown = api
        .raw()
        .get("/api/v1/nope")
        .bearer_auth(&api.admin_token)
        .send()
        .await?;
    assert_eq!(unknown.status(), StatusCode::NOT_FOUND);
    api.stop().await
}

async fn every_auth_failure_is_refused_and_changes_nothing(store: TestStore) -> anyhow::Result<()> {
    let api = TestController::start(store).await?;
    let create = json!({"name": "sneaky"});
    // No header, wrong scheme, garbage token.
    let missing = api
        .raw()
        .post("/api/v1/models")
        .json(&create)
        .send()
        .await?;
    assert_eq!(raw_error(missing).await?.1, "unauthenticated");
    let basic = api
        .raw()
        .post("/api/v1/models")
        .header("authorization", "Basic YWRtaW46YWRtaW4=")
        .json(&create)
        .send()
        .await?;
    assert_eq!(basic.status(), StatusCode::UNAUTHORIZED);
    let garbage = post(&api, "/api/v1/models", "not.a.jwt", create.clone()).await?;
    assert_eq!(garbage.status(), StatusCode::UNAUTHORIZED);

    // Forged: right shape and kid, another secret.
    let forged = api.forged_token("mallory", Role::Admin)?;
    let (status, code, message) =
        raw_error(post(&api, "/api/v1/models", &forged, create.clone()).await?).await?;
    assert_eq!(
        (status, code.as_str()),
        (StatusCode::UNAUTHORIZED, "unauthenticated")
    );
    assert!(message.contains("bad signature"), "{message}");

    // Right key, wrong audience.
    let other_audience = Authenticator::new(&api.keys()?, "someone-else")?;
    let (wrong_aud, _) = other_audience.mint("eve", Role::Admin, Duration::from_secs(60))?;
    let response = post(&api, "/api/v1/models", &wrong_aud, create.clone()).await?;
    assert_eq!(response.status(), StatusCode::UNAUTHORIZED);

    // Right key, expired an hour ago.
    let expired = api.expired_token("old", Role::Admin)?;
    let (status, _, message) =
        raw_error(post(&api, "/api/v1/models", &expired, create.clone()).await?).await?;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    assert_eq!(message, "token expired");

    // Authenticated but not allowed: a viewer cannot write, even an upload.
    let auth = Authenticator::new(&api.keys()?, "flotilla")?;
    let (viewer, _) = auth.mint("vera", Role::Viewer, Duration::from_secs(60))?;
    let (status, code, _) =
        raw_error(post(&api, "/api/v1/models", &viewer, create.clone()).await?).await?;
    assert_eq!(
        (status, code.as_str()),
        (StatusCode::FORBIDDEN, "permission_denied")
    );
    api.draft("real", "1.0.0").await?;
    let upload = api
        .raw()
        .post("/api/v1/models/real/versions/1.0.0/artifacts")
        .bearer_auth(&viewer)
        .body(gguf_fixture(Q4_1, 1))
        .send()
        .await?;
    assert_eq!(upload.status(), StatusCode::FORBIDDEN);
    // A viewer can read.
    api.client_as(&viewer)?.list_models(100, None).await?;

    // Nothing was created by any refused request.
    let models = api.client().list_models(100, None).await?;
    let names: Vec<&str> = models.items.iter().map(|m| m.name.as_str()).collect();
    assert_eq!(names, vec!["real"]);
    let version: dto::VersionInfo = api.client().version("real", "1.0.0").await?;
    assert!(version.artifacts.is_empty());
    assert_eq!(api.blobs()?.blob_count().await?, 0);
    api.stop().await
}

async fn model_and_version_lifecycle(store: TestStore) -> anyhow::Result<()> {
    let api = TestController::start(store).await?;
    let created = post(
        &api,
        "/api/v1/models",
        &api.admin_token,
        json!({"name": "smol", "description": "tiny"}),
    )
    .await?;
    assert_eq!(created.status(), StatusCode::CREATED);
    let admin = api.client();
    let duplicate = admin.create_model(&model("smol")).await;
    assert_eq!(api_error(duplicate)?.1, "already_exists");
    let invalid = admin.create_model(&model("Bad Name")).await;
    assert_eq!(api_error(invalid)?.1, "invalid_argument");
    let malformed = api
        .raw()
        .post("/api/v1/models")
        .bearer_auth(&api.admin_token)
        .header("content-type", "application/json")
        .body("{not json")
        .send()
        .await?;
    assert_eq!(raw_error(malformed).await?.1, "invalid_argument");

    let bad_semver = admin.create_version("smol", &version("1.2")).await;
    assert_eq!(api_error(bad_semver)?.1, "invalid_argument");
    let unknown_model = admin.create_version("ghost", &version("1.0.0")).await;
    assert_eq!(api_error(unknown_model)?.0, StatusCode::NOT_FOUND);
    api.draft("smol", "1.0.0").await?;
    let again = admin.create_version("smol", &version("1.0.0")).await;
    assert_eq!(api_error(again)?.1, "already_exists");

    // Publishing an empty version is refused; with an artifact it works.
    let empty = api
        .client()
        .update_version("smol", "1.0.0", &state("published"))
        .await;
    assert_eq!(api_error(empty)?.1, "failed_precondition");
    assert_eq!(
        upload(&api, "smol", "1.0.0", gguf_fixture(Q4_1, 3), None)
            .await?
            .status(),
        StatusCode::CREATED
    );
    api.publish("smol", "1.0.0").await?;
    // Published versions are immutable.
    let late = upload(&api, "smol", "1.0.0", gguf_fixture(Q8_0, 4), None).await?;
    let (status, code, message) = raw_error(late).await?;
    assert_eq!(
        (status, code.as_str()),
        (StatusCode::CONFLICT, "failed_precondition")
    );
    assert!(message.contains("only to drafts"), "{message}");
    let back = api
        .client()
        .update_version("smol", "1.0.0", &state("draft"))
        .await;
    assert_eq!(api_error(back)?.0, StatusCode::BAD_REQUEST);
    for state in ["deprecated", "yanked"] {
        api.client()
            .update_version("smol", "1.0.0", &self::state(state))
            .await?;
    }
    let unyank = api
        .client()
        .update_version("smol", "1.0.0", &state("published"))
        .await;
    assert_eq!(api_error(unyank)?.1, "failed_precondition");

    let detail: dto::ModelDetail = api.client().model("smol").await?;
    assert_eq!(detail.model.description, "tiny");
    assert_eq!(detail.versions.len(), 1);
    assert_eq!(detail.versions[0].state, "yanked");
    assert_eq!(
        api_error(api.client().model("ghost").await)?.0,
        StatusCode::NOT_FOUND
    );
    api.stop().await
}

async fn models_paginate(store: TestStore) -> anyhow::Result<()> {
    let api = TestController::start(store).await?;
    for index in 0..5 {
        let response = post(
            &api,
            "/api/v1/models",
            &api.admin_token,
            json!({"name": format!("model-{index}")}),
        )
        .await?;
        assert_eq!(response.status(), StatusCode::CREATED);
    }
    let mut seen = Vec::new();
    let mut after: Option<String> = None;
    let mut pages = 0;
    loop {
        let page = api.client().list_models(2, after.as_deref()).await?;
        pages += 1;
        assert!(page.items.len() <= 2);
        seen.extend(page.items.into_iter().map(|m| m.name));
        match page.next_cursor {
            Some(cursor) => after = Some(cursor),
            None => break,
        }
        assert!(pages < 10, "pagination does not terminate");
    }
    assert_eq!(pages, 3);
    assert_eq!(
        seen,
        (0..5).map(|i| format!("model-{i}")).collect::<Vec<_>>()
    );
    let bad_limit = api
        .raw()
        .get("/api/v1/models?limit=abc")
        .bearer_auth(&api.admin_token)
        .send()
        .await?;
    assert_eq!(raw_error(bad_limit).await?.1, "invalid_argument");
    api.stop().await
}

async fn upload_records_gguf_metadata_and_dedupes(store: TestStore) -> anyhow::Result<()> {
    let api = TestController::start(store).await?;
    api.draft("smol", "1.0.0").await?;
    let file = gguf_fixture(Q4_1, 7);
    let digest = blake3::hash(&file).to_hex().to_string();
    let response = upload(&api, "smol", "1.0.0", file.clone(), Some(&digest)).await?;
    assert_eq!(response.status(), StatusCode::CREATED);
    let artifact: dto::ArtifactInfo = response.json().await?;
    assert_eq!(artifact.digest, digest);
    assert_eq!(artifact.quantization, "Q4_1");
    assert_eq!(artifact.architecture, "llama");
    let header = flotilla_gguf::read_header(&file[..])?;
    assert_eq!(artifact.parameter_count, header.parameter_count());
    assert_eq!(artifact.context_length, Some(2048));
    // The engine of this release loads it (issue 14), and says which engine judged it.
    assert_eq!(artifact.servable, Some(true));
    assert_eq!(artifact.unservable_reason, None);
    assert!(
        artifact
            .checked_by
            .as_deref()
            .is_some_and(|engine| engine.starts_with("flotilla-engine ")),
        "{:?}",
        artifact.checked_by
    );
    assert_eq!(artifact.size_bytes, file.len() as u64);
    assert!(artifact.memory_estimate_bytes > artifact.size_bytes);

    // The same bytes again: 200, nothing new stored.
    let again = upload(&api, "smol", "1.0.0", file.clone(), None).await?;
    assert_eq!(again.status(), StatusCode::OK);
    assert_eq!(again.json::<dto::ArtifactInfo>().await?.digest, digest);
    let blobs = api.blobs()?;
    assert_eq!(blobs.blob_count().await?, 1);
    assert_eq!(blobs.pending_upload_count().await?, 0);

    // Another version may reuse the bytes; the blob is still stored once.
    api.draft("smol", "1.1.0").await?;
    assert_eq!(
        upload(&api, "smol", "1.1.0", file.clone(), None)
            .await?
            .status(),
        StatusCode::CREATED
    );
    assert_eq!(blobs.blob_count().await?, 1);

    // A second file with the same quantization in one version is refused.
    let clash = upload(&api, "smol", "1.0.0", gguf_fixture(Q4_1, 8), None).await?;
    let (status, code, message) = raw_error(clash).await?;
    assert_eq!(
        (status, code.as_str()),
        (StatusCode::CONFLICT, "already_exists")
    );
    assert!(message.contains("Q4_1"), "{message}");
    assert_eq!(blobs.blob_count().await?, 1);
    assert_eq!(blobs.pending_upload_count().await?, 0);

    // The asserted quantization must match the file.
    let response = api
        .raw()
        .post("/api/v1/models/smol/versions/1.0.0/artifacts?quantization=Q8_0")
        .bearer_auth(&api.admin_token)
        .body(gguf_fixture(Q4_1, 9))
        .send()
        .await?;
    let (status, _, message) = raw_error(response).await?;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY);
    assert!(
        message.contains("Q4_1") && message.contains("Q8_0"),
        "{message}"
    );
    api.stop().await
}

async fn concurrent_duplicate_uploads_store_one_blob(store: TestStore) -> anyhow::Result<()> {
    let api = TestController::start(store).await?;
    api.draft("smol", "1.0.0").await?;
    let file = gguf_fixture(Q4_1, 11);
    let uploads = (0..8).map(|_| upload(&api, "smol", "1.0.0", file.clone(), None));
    let responses = futures::future::join_all(uploads).await;
    let mut created = 0;
    for response in responses {
        let status = response?.status();
        assert!(
            status == StatusCode::CREATED || status == StatusCode::OK,
            "{status}"
        );
        created += usize::from(status == StatusCode::CREATED);
    }
    assert_eq!(created, 1, "exactly one upload creates the artifact");
    let version: dto::VersionInfo = api.client().version("smol", "1.0.0").await?;
    assert_eq!(version.artifacts.len(), 1);
    let blobs = api.blobs()?;
    assert_eq!(blobs.blob_count().await?, 1);
    assert_eq!(blobs.pending_upload_count().await?, 0);
    api.stop().await
}

async fn bad_uploads_leave_nothing_behind(store: TestStore) -> anyhow::Result<()> {
    let api = TestController::start(store).await?;
    api.draft("smol", "1.0.0").await?;
    let valid = gguf_fixture(Q4_1, 5);
    let mut wrong_magic = valid.clone();
    wrong_magic[0] = b'X';
    let truncated_header = valid[..20].to_vec();
    let truncated_data = valid[..valid.len() - 10].to_vec();
    let cases: Vec<(&str, Vec<u8>, Option<String>, &str)> = vec![
        (
            "not gguf",
            b"hello, I am a text file".repeat(100),
            None,
            "not a valid GGUF file",
        ),
        ("wrong magic", wrong_magic, None, "not a valid GGUF file"),
        (
            "truncated header",
            truncated_header,
            None,
            "not a valid GGUF file",
        ),
        (
            "truncated tensor data",
            truncated_data,
            None,
            "truncated GGUF file",
        ),
        ("empty", Vec::new(), None, "not a valid GGUF file"),
        (
            "digest mismatch",
            valid.clone(),
            Some(blake3::hash(b"something else").to_hex().to_string()),
            "digest mismatch",
        ),
    ];
    for (case, bytes, declared, expected) in cases {
        let response = upload(&api, "smol", "1.0.0", bytes, declared.as_deref()).await?;
        let (status, code, message) = raw_error(response).await?;
        assert_eq!(
            status,
            StatusCode::UNPROCESSABLE_ENTITY,
            "{case}: {message}"
        );
        assert_eq!(code, "unprocessable", "{case}");
        assert!(message.contains(expected), "{case}: {message}");
    }
    let malformed_digest = upload(&api, "smol", "1.0.0", valid.clone(), Some("xyz")).await?;
    assert_eq!(
        raw_error(malformed_digest).await?.0,
        StatusCode::BAD_REQUEST
    );
    let unknown_version = upload(&api, "smol", "9.9.9", valid.clone(), None).await?;
    assert_eq!(raw_error(unknown_version).await?.0, StatusCode::NOT_FOUND);

    let version: dto::VersionInfo = api.client().version("smol", "1.0.0").await?;
    assert!(version.artifacts.is_empty(), "no orphan rows");
    let blobs = api.blobs()?;
    assert_eq!(blobs.blob_count().await?, 0, "no orphan blobs");
    assert_eq!(
        blobs.pending_upload_count().await?,
        0,
        "no leftover uploads"
    );
    // And the good file still goes in afterwards.
    assert_eq!(
        upload(&api, "smol", "1.0.0", valid, None).await?.status(),
        StatusCode::CREATED
    );
    api.stop().await
}

async fn resolution_skips_yanked_versions(store: TestStore) -> anyhow::Result<()> {
    let api = TestController::start(store).await?;
    for (version, seed) in [("1.2.0", 20u8), ("1.3.0", 30), ("1.4.0", 40)] {
        api.draft("smol", version).await?;
        assert_eq!(
            upload(&api, "smol", version, gguf_fixture(Q4_1, seed), None)
                .await?
                .status(),
            StatusCode::CREATED
        );
        assert_eq!(
            upload(&api, "smol", version, gguf_fixture(Q8_0, seed + 1), None)
                .await?
                .status(),
            StatusCode::CREATED
        );
        api.publish("smol", version).await?;
    }
    api.draft("smol", "1.5.0").await?;
    assert_eq!(
        upload(&api, "smol", "1.5.0", gguf_fixture(Q8_0, 50), None)
            .await?
            .status(),
        StatusCode::CREATED
    );
    api.client()
        .update_version("smol", "1.4.0", &state("yanked"))
        .await?;

    let resolved = api
        .client()
        .resolve(&resolve_query("^1.2", Some("Q8_0,Q4_1")))
        .await?;
    assert_eq!(
        resolved.version, "1.3.0",
        "1.4.0 is yanked and 1.5.0 a draft"
    );
    assert_eq!(resolved.artifact.quantization, "Q8_0");
    let q4 = api
        .client()
        .resolve(&resolve_query("=1.2.0", Some("Q4_1")))
        .await?;
    assert_eq!(
        (q4.version.as_str(), q4.artifact.quantization.as_str()),
        ("1.2.0", "Q4_1")
    );
    let yanked = api.client().resolve(&resolve_query("=1.4.0", None)).await;
    let (status, _, message) = api_error(yanked)?;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert!(message.contains("no published version"), "{message}");
    let bad_requirement = api.client().resolve(&resolve_query("^^1", None)).await;
    assert_eq!(api_error(bad_requirement)?.0, StatusCode::BAD_REQUEST);
    api.stop().await
}

async fn blobs_serve_ranges(store: TestStore) -> anyhow::Result<()> {
    let api = TestController::start(store).await?;
    api.draft("smol", "1.0.0").await?;
    let file = gguf_fixture(Q4_1, 60);
    let digest = blake3::hash(&file).to_hex().to_string();
    assert_eq!(
        upload(&api, "smol", "1.0.0", file.clone(), None)
            .await?
            .status(),
        StatusCode::CREATED
    );
    let path = format!("/api/v1/blobs/{digest}");
    let whole = api
        .raw()
        .get(&path)
        .bearer_auth(&api.admin_token)
        .send()
        .await?;
    assert_eq!(whole.status(), StatusCode::OK);
    assert_eq!(whole.headers()["accept-ranges"], "bytes");
    assert_eq!(whole.bytes().await?.as_ref(), file.as_slice());
    let ranged = api
        .raw()
        .get(&path)
        .bearer_auth(&api.admin_token)
        .header("range", "bytes=10-")
        .send()
        .await?;
    assert_eq!(ranged.status(), StatusCode::PARTIAL_CONTENT);
    assert_eq!(
        ranged.headers()["content-range"].to_str()?,
        format!("bytes 10-{}/{}", file.len() - 1, file.len())
    );
    assert_eq!(ranged.bytes().await?.as_ref(), &file[10..]);
    let beyond = api
        .raw()
        .get(&path)
        .bearer_auth(&api.admin_token)
        .header("range", format!("bytes={}-", file.len()))
        .send()
        .await?;
    assert_eq!(beyond.status(), StatusCode::RANGE_NOT_SATISFIABLE);
    let missing = api
        .raw()
        .get(&format!("/api/v1/blobs/{}", "0".repeat(64)))
        .bearer_auth(&api.admin_token)
        .send()
        .await?;
    assert_eq!(missing.status(), StatusCode::NOT_FOUND);
    let unauthenticated = api.raw().get(&path).send().await?;
    assert_eq!(unauthenticated.status(), StatusCode::UNAUTHORIZED);
    api.stop().await
}

async fn prompts_are_versioned(store: TestStore) -> anyhow::Result<()> {
    let api = TestController::start(store).await?;
    for text in ["You are helpful.", "You are terse."] {
        let response = post(
            &api,
            "/api/v1/prompts/support/versions",
            &api.admin_token,
            json!({"text": text}),
        )
        .await?;
        assert_eq!(response.status(), StatusCode::CREATED);
    }
    let latest: dto::PromptInfo = api.client().prompt("support", None).await?;
    assert_eq!(
        (latest.version, latest.text.as_str()),
        (2, "You are terse.")
    );
    let first: dto::PromptInfo = api.client().prompt("support", Some(1)).await?;
    assert_eq!(first.text, "You are helpful.");
    let versions: dto::Page<dto::PromptInfo> = api
        .client()
        .list_prompt_versions("support", 100, None)
        .await?;
    assert_eq!(
        versions.items.iter().map(|p| p.version).collect::<Vec<_>>(),
        vec![2, 1]
    );
    let listing: dto::Page<dto::PromptSummaryInfo> = api.client().list_prompts(100, None).await?;
    assert_eq!(listing.items.len(), 1);
    assert_eq!(listing.items[0].latest_version, 2);
    let empty = api
        .client()
        .create_prompt_version(
            "support",
            &dto::CreatePromptVersionRequest {
                text: "  ".to_owned(),
                chat_template: None,
            },
        )
        .await;
    assert_eq!(api_error(empty)?.0, StatusCode::BAD_REQUEST);
    let missing = api.client().prompt("support", Some(9)).await;
    assert_eq!(api_error(missing)?.0, StatusCode::NOT_FOUND);
    api.stop().await
}

/// A policy that escalates to an upstream whose key the node reads from
/// `credential`.
fn hybrid_policy(credential: &str) -> serde_json::Value {
    json!({
        "egress": "allowed",
        "upstream": {
            "base_url": "https://llm.example.com/v1",
            "model": "big",
            "credential": credential,
        },
        "triggers": {"model_names": ["auto", "frontier"], "header": true, "on_overload": true},
        "scrub": ["email", "phone"],
    })
}

async fn policies_are_versioned_checked_and_audited(store: TestStore) -> anyhow::Result<()> {
    let api = TestController::start(store).await?;
    let created = post(
        &api,
        "/api/v1/policies/hybrid/versions",
        &api.admin_token,
        hybrid_policy("env:UPSTREAM_KEY"),
    )
    .await?;
    assert_eq!(created.status(), StatusCode::CREATED);
    let created: dto::PolicyInfo = created.json().await?;
    assert_eq!((created.name.as_str(), created.version), ("hybrid", 1));
    let forbidding = post(
        &api,
        "/api/v1/policies/hybrid/versions",
        &api.admin_token,
        json!({"egress": "forbidden"}),
    )
    .await?;
    assert_eq!(forbidding.status(), StatusCode::CREATED);

    let latest: dto::PolicyInfo = api.client().policy("hybrid", None).await?;
    assert_eq!(
        (latest.version, latest.spec.egress.as_str()),
        (2, "forbidden")
    );
    let first: dto::PolicyInfo = api.client().policy("hybrid", Some(1)).await?;
    let upstream = first.spec.upstream.expect("version 1 has an upstream");
    assert_eq!(upstream.credential, "env:UPSTREAM_KEY");
    assert_eq!(
        first.spec.scrub,
        Some(vec!["email".to_owned(), "phone".to_owned()])
    );
    let versions: dto::Page<dto::PolicyInfo> = api
        .client()
        .list_policy_versions("hybrid", 100, None)
        .await?;
    assert_eq!(
        versions.items.iter().map(|p| p.version).collect::<Vec<_>>(),
        vec![2, 1]
    );
    let listing: dto::Page<dto::PolicySummaryInfo> = api.client().list_policies(100, None).await?;
    assert_eq!(listing.items.len(), 1);
    assert_eq!(listing.items[0].latest_version, 2);

    // A literal key is refused, and the refusal does not repeat it.
    let key = "sk-proj-abcdefghijklmnopqrstuvwxyz0123456789ABCD";
    let (status, code, message) = raw_error(
        post(
            &api,
            "/api/v1/policies/hybrid/versions",
            &api.admin_token,
            hybrid_policy(key),
        )
        .await?,
    )
    .await?;
    assert_eq!(
        (status, code.as_str()),
        (StatusCode::BAD_REQUEST, "invalid_argument")
    );
    assert!(message.contains("looks like a literal key"), "{message}");
    assert!(
        !message.contains(key),
        "the refusal repeats the key: {message}"
    );
    // Every other refusal is a 400 naming what is wrong.
    let mut in_url = hybrid_policy("env:UPSTREAM_KEY");
    in_url["upstream"]["base_url"] = json!("https://me:secret@llm.example.com/v1");
    let mut no_upstream = hybrid_policy("env:UPSTREAM_KEY");
    no_upstream["upstream"] = serde_json::Value::Null;
    let mut threshold = hybrid_policy("env:UPSTREAM_KEY");
    threshold["triggers"]["self_check_threshold_percent"] = json!(0);
    let mut kind = hybrid_policy("env:UPSTREAM_KEY");
    kind["scrub"] = json!(["email", "blood_type"]);
    let mut misspelt = hybrid_policy("env:UPSTREAM_KEY");
    misspelt["triggers"]["on_overlaod"] = json!(true);
    for (body, expected) in [
        (in_url, "user or password"),
        (no_upstream, "no upstream"),
        (threshold, "1 to 99"),
        (kind, "blood_type"),
        (misspelt, "on_overlaod"),
        (json!({"egress": "sometimes"}), "allowed or forbidden"),
        (
            json!({"egress": "forbidden", "upstream": {"base_url": "https://x.example", "model": "m", "credential": "env:K"}}),
            "names no upstream",
        ),
    ] {
        let (status, _, message) = raw_error(
            post(
                &api,
                "/api/v1/policies/hybrid/versions",
                &api.admin_token,
                body,
            )
            .await?,
        )
        .await?;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{message}");
        assert!(
            message.contains(expected),
            "{expected:?} not in {message:?}"
        );
    }
    let (status, _, _) = raw_error(
        post(
            &api,
            "/api/v1/policies/Bad%20Name/versions",
            &api.admin_token,
            json!({"egress": "forbidden"}),
        )
        .await?,
    )
    .await?;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    // None of the refusals made a version.
    let latest: dto::PolicyInfo = api.client().policy("hybrid", None).await?;
    assert_eq!(latest.version, 2);

    // Not found: a missing policy or version.
    let admin = api.client();
    for (what, refused) in [
        (
            "policy absent",
            api_error(admin.policy("absent", None).await)?,
        ),
        (
            "policy hybrid version 9",
            api_error(admin.policy("hybrid", Some(9)).await)?,
        ),
        (
            "the versions of policy absent",
            api_error(admin.list_policy_versions("absent", 100, None).await)?,
        ),
    ] {
        let (status, code, _) = refused;
        assert_eq!(
            (status, code.as_str()),
            (StatusCode::NOT_FOUND, "not_found"),
            "{what}"
        );
    }

    // Roles: a viewer reads but cannot create; no token, nothing.
    let auth = Authenticator::new(&api.keys()?, "flotilla")?;
    let (viewer, _) = auth.mint("vera", Role::Viewer, Duration::from_secs(60))?;
    let (status, code, _) = raw_error(
        post(
            &api,
            "/api/v1/policies/hybrid/versions",
            &viewer,
            json!({"egress": "forbidden"}),
        )
        .await?,
    )
    .await?;
    assert_eq!(
        (status, code.as_str()),
        (StatusCode::FORBIDDEN, "permission_denied")
    );
    api.client_as(&viewer)?.policy("hybrid", None).await?;
    let (operator, _) = auth.mint("olga", Role::Operator, Duration::from_secs(60))?;
    let by_operator = post(
        &api,
        "/api/v1/policies/edge/versions",
        &operator,
        json!({"egress": "forbidden"}),
    )
    .await?;
    assert_eq!(by_operator.status(), StatusCode::CREATED);
    let anonymous = api.raw().get("/api/v1/policies").send().await?;
    assert_eq!(anonymous.status(), StatusCode::UNAUTHORIZED);

    // Every creation is in the audit log, by whom and with its result.
    let events = api.client().events(None, None).await?;
    let creations: Vec<&dto::EventInfo> = events
        .items
        .iter()
        .filter(|event| event.action == "api POST /api/v1/policies/{name}/versions")
        .collect();
    assert!(
        creations
            .iter()
            .any(|event| event.actor == "olga" && event.message.contains("201")),
        "{creations:?}"
    );
    assert!(
        creations.iter().any(|event| event.message.contains("400")),
        "refusals are recorded too: {creations:?}"
    );
    assert!(
        events
            .items
            .iter()
            .all(|event| !event.message.contains(key)),
        "the audit log holds the key"
    );
    api.stop().await
}

async fn assignments_and_rollouts_name_known_policies_only(store: TestStore) -> anyhow::Result<()> {
    let api = TestController::start(store).await?;
    api.draft("tiny", "1.0.0").await?;
    let uploaded = upload(&api, "tiny", "1.0.0", gguf_fixture(Q4_1, 1), None).await?;
    assert_eq!(uploaded.status(), StatusCode::CREATED);
    api.publish("tiny", "1.0.0").await?;
    let created = post(
        &api,
        "/api/v1/policies/hybrid/versions",
        &api.admin_token,
        hybrid_policy("file:/etc/flotilla/upstream.key"),
    )
    .await?;
    assert_eq!(created.status(), StatusCode::CREATED);

    let assign = |policy: &str| json!({"selector": {"site": "berlin"}, "model": "tiny", "version": "1.0.0", "policy": policy});
    for (policy, status) in [
        ("hybrid@2", StatusCode::NOT_FOUND),
        ("absent@1", StatusCode::NOT_FOUND),
        ("Bad@1", StatusCode::BAD_REQUEST),
        ("hybrid@0", StatusCode::BAD_REQUEST),
    ] {
        let response = post(
            &api,
            "/api/v1/assignments",
            &api.admin_token,
            assign(policy),
        )
        .await?;
        assert_eq!(response.status(), status, "assign --policy {policy}");
    }
    let response = post(
        &api,
        "/api/v1/assignments",
        &api.admin_token,
        assign("hybrid@1"),
    )
    .await?;
    assert_eq!(response.status(), StatusCode::CREATED);
    let change: dto::AssignmentChange = response.json().await?;
    assert_eq!(
        change
            .assignment
            .and_then(|assignment| assignment.policy)
            .as_deref(),
        Some("hybrid@1")
    );
    let listed: dto::Page<dto::AssignmentRecord> = api.client().list_assignments(100, None).await?;
    assert_eq!(listed.items[0].policy.as_deref(), Some("hybrid@1"));

    // A rollout naming an unknown policy is refused when it is planned.
    let rollout = json!({
        "name": "to-berlin", "model": "tiny", "version": "1.0.0",
        "selector": {"site": "berlin"}, "policy": "absent@3", "dry_run": true,
    });
    let (status, _, message) =
        raw_error(post(&api, "/api/v1/rollouts", &api.admin_token, rollout).await?).await?;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert!(
        message.contains("escalation policy absent@3 not found"),
        "{message}"
    );
    api.stop().await
}

async fn tokens_are_minted_by_admins_only(store: TestStore) -> anyhow::Result<()> {
    let api = TestController::start(store).await?;
    let response = post(
        &api,
        "/api/v1/tokens",
        &api.admin_token,
        json!({"subject": "ci", "role": "operator", "ttl_seconds": 600}),
    )
    .await?;
    assert_eq!(response.status(), StatusCode::CREATED);
    let token: dto::TokenInfo = response.json().await?;
    let me = api.client_as(&token.token)?.whoami().await?;
    assert_eq!((me.subject.as_str(), me.role.as_str()), ("ci", "operator"));
    // The operator can write but not mint.
    let model = post(
        &api,
        "/api/v1/models",
        &token.token,
        json!({"name": "by-operator"}),
    )
    .await?;
    assert_eq!(model.status(), StatusCode::CREATED);
    let escalate = api
        .client_as(&token.token)?
        .create_token(&token_request("me", "admin"))
        .await;
    assert_eq!(api_error(escalate)?.0, StatusCode::FORBIDDEN);
    let bad_role = api.client().create_token(&token_request("x", "root")).await;
    assert_eq!(api_error(bad_role)?.0, StatusCode::BAD_REQUEST);
    api.stop().await
}

async fn interrupted_and_oversized_uploads_leave_nothing_behind(
    store: TestStore,
) -> anyhow::Result<()> {
    let file = gguf_fixture(Q4_1, 70);
    let api = TestController::builder(store)
        .max_upload_bytes(file.len() as u64 - 1)
        .start()
        .await?;
    api.draft("smol", "1.0.0").await?;

    // One byte over the limit: 413, and nothing kept.
    let (status, code, message) =
        raw_error(upload(&api, "smol", "1.0.0", file.clone(), None).await?).await?;
    assert_eq!(
        (status, code.as_str()),
        (StatusCode::PAYLOAD_TOO_LARGE, "payload_too_large")
    );
    assert!(message.contains("limit"), "{message}");

    // A client that dies mid-body: the server sees a broken stream. Whatever
    // the client is told (if anything), nothing may be kept.
    let half = file[..file.len() / 2].to_vec();
    let body = futures::stream::iter(vec![
        Ok::<_, std::io::Error>(bytes::Bytes::from(half)),
        Err(std::io::Error::other("client went away")),
    ]);
    let broken = api
        .raw()
        .post("/api/v1/models/smol/versions/1.0.0/artifacts")
        .bearer_auth(&api.admin_token)
        .body(reqwest::Body::wrap_stream(body))
        .send()
        .await;
    if let Ok(response) = broken {
        assert!(response.status().is_client_error(), "{}", response.status());
    }
    let blobs = api.blobs()?;
    let version = wait_for_no_pending_uploads(&api, &blobs).await?;
    assert!(version.artifacts.is_empty(), "no orphan rows");
    assert_eq!(blobs.blob_count().await?, 0, "no orphan blobs");
    api.stop().await
}

/// The server discards a broken upload after the client is gone, so wait for
/// that (with a deadline) rather than racing it.
async fn wait_for_no_pending_uploads(
    api: &TestController,
    blobs: &BlobStore,
) -> anyhow::Result<dto::VersionInfo> {
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while blobs.pending_upload_count().await? > 0 {
        anyhow::ensure!(
            std::time::Instant::now() < deadline,
            "a broken upload was not discarded within 10s"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    Ok(api.client().version("smol", "1.0.0").await?)
}
