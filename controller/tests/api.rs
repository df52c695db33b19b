//! REST API tests against a real controller on loopback, on both stores
//! (SQLite in a temp dir, and a fresh Postgres database per test).

use std::time::Duration;

use flotilla_api_types as dto;
use flotilla_controller::auth::{Authenticator, KeyFile, Role};
use flotilla_controller::objects::BlobStore;
use flotilla_controller::testing::{TestController, TestStore};
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

struct Api {
    controller: TestController,
    client: reqwest::Client,
}

impl Api {
    async fn start(store: TestStore) -> anyhow::Result<Self> {
        Ok(Self {
            controller: TestController::start(store).await?,
            client: reqwest::Client::new(),
        })
    }

    async fn start_with_upload_limit(store: TestStore, limit: u64) -> anyhow::Result<Self> {
        let controller =
            TestController::start_with(store, |config| config.max_upload_bytes = limit).await?;
        Ok(Self {
            controller,
            client: reqwest::Client::new(),
        })
    }

    fn url(&self, path: &str) -> String {
        format!("{}{path}", self.controller.url)
    }

    fn admin(&self) -> &str {
        &self.controller.admin_token
    }

    async fn get(&self, path: &str, token: &str) -> anyhow::Result<reqwest::Response> {
        Ok(self
            .client
            .get(self.url(path))
            .bearer_auth(token)
            .send()
            .await?)
    }

    async fn post(
        &self,
        path: &str,
        token: &str,
        body: serde_json::Value,
    ) -> anyhow::Result<reqwest::Response> {
        self.send_json(reqwest::Method::POST, path, token, body)
            .await
    }

    async fn patch(
        &self,
        path: &str,
        token: &str,
        body: serde_json::Value,
    ) -> anyhow::Result<reqwest::Response> {
        self.send_json(reqwest::Method::PATCH, path, token, body)
            .await
    }

    async fn send_json(
        &self,
        method: reqwest::Method,
        path: &str,
        token: &str,
        body: serde_json::Value,
    ) -> anyhow::Result<reqwest::Response> {
        Ok(self
            .client
            .request(method, self.url(path))
            .bearer_auth(token)
            .json(&body)
            .send()
            .await?)
    }

    async fn upload(
        &self,
        model: &str,
        version: &str,
        bytes: Vec<u8>,
        declared: Option<&str>,
    ) -> anyhow::Result<reqwest::Response> {
        let mut request = self
            .client
            .post(self.url(&format!(
                "/api/v1/models/{model}/versions/{version}/artifacts"
            )))
            .bearer_auth(self.admin())
            .body(bytes);
        if let Some(digest) = declared {
            request = request.header(dto::DIGEST_HEADER, digest);
        }
        Ok(request.send().await?)
    }

    /// Creates a model with one draft version.
    async fn draft(&self, model: &str, version: &str) -> anyhow::Result<()> {
        let created = self
            .post("/api/v1/models", self.admin(), json!({"name": model}))
            .await?;
        anyhow::ensure!(
            created.status() == StatusCode::CREATED || created.status() == StatusCode::CONFLICT,
            "create model: {}",
            created.status()
        );
        let response = self
            .post(
                &format!("/api/v1/models/{model}/versions"),
                self.admin(),
                json!({"version": version}),
            )
            .await?;
        anyhow::ensure!(
            response.status() == StatusCode::CREATED,
            "create version: {}",
            response.status()
        );
        Ok(())
    }

    async fn publish(&self, model: &str, version: &str) -> anyhow::Result<()> {
        let response = self
            .patch(
                &format!("/api/v1/models/{model}/versions/{version}"),
                self.admin(),
                json!({"state": "published"}),
            )
            .await?;
        anyhow::ensure!(
            response.status() == StatusCode::OK,
            "publish: {}",
            response.status()
        );
        Ok(())
    }

    fn blobs(&self) -> anyhow::Result<BlobStore> {
        Ok(BlobStore::local(
            &self.controller.data_dir.path().join("objects"),
        )?)
    }

    fn keys(&self) -> anyhow::Result<KeyFile> {
        Ok(KeyFile::load(
            &self.controller.data_dir.path().join("auth-keys.toml"),
        )?)
    }
}

/// A tiny servable GGUF file ([`GgufBuilder::tiny_llama`]); different seeds
/// give different digests.
fn gguf_fixture(file_type: u32, seed: u8) -> Vec<u8> {
    GgufBuilder::tiny_llama(file_type, seed)
}

const Q4_1: u32 = 3;
const Q8_0: u32 = 7;

async fn error_code(response: reqwest::Response) -> anyhow::Result<(StatusCode, String, String)> {
    let status = response.status();
    let body: dto::ErrorBody = response.json().await?;
    Ok((status, body.error.code, body.error.message))
}

async fn health_and_openapi(store: TestStore) -> anyhow::Result<()> {
    let api = Api::start(store).await?;
    assert_eq!(
        api.client.get(api.url("/healthz")).send().await?.status(),
        StatusCode::OK
    );
    // On Postgres the controller is ready once it also follows other
    // replicas' changes, which it starts doing just after it serves.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(15);
    loop {
        let status = api.client.get(api.url("/readyz")).send().await?.status();
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
        .client
        .get(api.url("/api/v1/openapi.json"))
        .send()
        .await?
        .json()
        .await?;
    let paths = doc["paths"].as_object().expect("openapi has paths");
    assert!(paths.contains_key("/api/v1/models/{name}/versions/{version}/artifacts"));
    assert!(doc["components"]["securitySchemes"]["bearer"].is_object());
    // A request counted by route shows up in the metrics.
    let metrics = api
        .client
        .get(api.url("/metrics"))
        .send()
        .await?
        .text()
        .await?;
    assert!(
        metrics.contains("flotilla_http_requests_total"),
        "{metrics}"
    );
    let unknown = api.get("/api/v1/nope", api.admin()).await?;
    assert_eq!(unknown.status(), StatusCode::NOT_FOUND);
    api.controller.stop().await
}

async fn every_auth_failure_is_refused_and_changes_nothing(store: TestStore) -> anyhow::Result<()> {
    let api = Api::start(store).await?;
    let create = json!({"name": "sneaky"});
    // No header, wrong scheme, garbage token.
    let missing = api
        .client
        .post(api.url("/api/v1/models"))
        .json(&create)
        .send()
        .await?;
    assert_eq!(error_code(missing).await?.1, "unauthenticated");
    let basic = api
        .client
        .post(api.url("/api/v1/models"))
        .header("authorization", "Basic YWRtaW46YWRtaW4=")
        .json(&create)
        .send()
        .await?;
    assert_eq!(basic.status(), StatusCode::UNAUTHORIZED);
    let garbage = api
        .post("/api/v1/models", "not.a.jwt", create.clone())
        .await?;
    assert_eq!(garbage.status(), StatusCode::UNAUTHORIZED);

    // Forged: right shape and kid, another secret.
    let mut forged_keys = KeyFile::generate("k1");
    forged_keys.keys[0].kid = api.keys()?.keys[0].kid.clone();
    let forger = Authenticator::new(&forged_keys, "flotilla")?;
    let (forged, _) = forger.mint("mallory", Role::Admin, Duration::from_secs(60))?;
    let (status, code, message) =
        error_code(api.post("/api/v1/models", &forged, create.clone()).await?).await?;
    assert_eq!(
        (status, code.as_str()),
        (StatusCode::UNAUTHORIZED, "unauthenticated")
    );
    assert!(message.contains("bad signature"), "{message}");

    // Right key, wrong audience.
    let other_audience = Authenticator::new(&api.keys()?, "someone-else")?;
    let (wrong_aud, _) = other_audience.mint("eve", Role::Admin, Duration::from_secs(60))?;
    let response = api
        .post("/api/v1/models", &wrong_aud, create.clone())
        .await?;
    assert_eq!(response.status(), StatusCode::UNAUTHORIZED);

    // Right key, expired an hour ago.
    let keys = api.keys()?;
    let signing = keys.signing_key()?;
    let now = time::OffsetDateTime::now_utc().unix_timestamp();
    let claims = json!({"sub": "old", "role": "admin", "aud": "flotilla", "iss": "x", "iat": now - 7200, "exp": now - 3600});
    let mut header = jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256);
    header.kid = Some(signing.kid.clone());
    let expired = jsonwebtoken::encode(
        &header,
        &claims,
        &jsonwebtoken::EncodingKey::from_secret(&signing.secret),
    )?;
    let (status, _, message) =
        error_code(api.post("/api/v1/models", &expired, create.clone()).await?).await?;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    assert_eq!(message, "token expired");

    // Authenticated but not allowed: a viewer cannot write, even an upload.
    let auth = Authenticator::new(&api.keys()?, "flotilla")?;
    let (viewer, _) = auth.mint("vera", Role::Viewer, Duration::from_secs(60))?;
    let (status, code, _) =
        error_code(api.post("/api/v1/models", &viewer, create.clone()).await?).await?;
    assert_eq!(
        (status, code.as_str()),
        (StatusCode::FORBIDDEN, "permission_denied")
    );
    api.draft("real", "1.0.0").await?;
    let upload = api
        .client
        .post(api.url("/api/v1/models/real/versions/1.0.0/artifacts"))
        .bearer_auth(&viewer)
        .body(gguf_fixture(Q4_1, 1))
        .send()
        .await?;
    assert_eq!(upload.status(), StatusCode::FORBIDDEN);
    // A viewer can read.
    assert_eq!(
        api.get("/api/v1/models", &viewer).await?.status(),
        StatusCode::OK
    );

    // Nothing was created by any refused request.
    let models: dto::Page<dto::ModelInfo> =
        api.get("/api/v1/models", api.admin()).await?.json().await?;
    let names: Vec<&str> = models.items.iter().map(|m| m.name.as_str()).collect();
    assert_eq!(names, vec!["real"]);
    let version: dto::VersionInfo = api
        .get("/api/v1/models/real/versions/1.0.0", api.admin())
        .await?
        .json()
        .await?;
    assert!(version.artifacts.is_empty());
    assert_eq!(api.blobs()?.blob_count().await?, 0);
    api.controller.stop().await
}

async fn model_and_version_lifecycle(store: TestStore) -> anyhow::Result<()> {
    let api = Api::start(store).await?;
    let created = api
        .post(
            "/api/v1/models",
            api.admin(),
            json!({"name": "smol", "description": "tiny"}),
        )
        .await?;
    assert_eq!(created.status(), StatusCode::CREATED);
    let duplicate = api
        .post("/api/v1/models", api.admin(), json!({"name": "smol"}))
        .await?;
    assert_eq!(error_code(duplicate).await?.1, "already_exists");
    let invalid = api
        .post("/api/v1/models", api.admin(), json!({"name": "Bad Name"}))
        .await?;
    assert_eq!(error_code(invalid).await?.1, "invalid_argument");
    let malformed = api
        .client
        .post(api.url("/api/v1/models"))
        .bearer_auth(api.admin())
        .header("content-type", "application/json")
        .body("{not json")
        .send()
        .await?;
    assert_eq!(error_code(malformed).await?.1, "invalid_argument");

    let bad_semver = api
        .post(
            "/api/v1/models/smol/versions",
            api.admin(),
            json!({"version": "1.2"}),
        )
        .await?;
    assert_eq!(error_code(bad_semver).await?.1, "invalid_argument");
    let unknown_model = api
        .post(
            "/api/v1/models/ghost/versions",
            api.admin(),
            json!({"version": "1.0.0"}),
        )
        .await?;
    assert_eq!(error_code(unknown_model).await?.0, StatusCode::NOT_FOUND);
    api.draft("smol", "1.0.0").await?;
    let again = api
        .post(
            "/api/v1/models/smol/versions",
            api.admin(),
            json!({"version": "1.0.0"}),
        )
        .await?;
    assert_eq!(error_code(again).await?.1, "already_exists");

    // Publishing an empty version is refused; with an artifact it works.
    let empty = api
        .patch(
            "/api/v1/models/smol/versions/1.0.0",
            api.admin(),
            json!({"state": "published"}),
        )
        .await?;
    assert_eq!(error_code(empty).await?.1, "failed_precondition");
    assert_eq!(
        api.upload("smol", "1.0.0", gguf_fixture(Q4_1, 3), None)
            .await?
            .status(),
        StatusCode::CREATED
    );
    api.publish("smol", "1.0.0").await?;
    // Published versions are immutable.
    let late = api
        .upload("smol", "1.0.0", gguf_fixture(Q8_0, 4), None)
        .await?;
    let (status, code, message) = error_code(late).await?;
    assert_eq!(
        (status, code.as_str()),
        (StatusCode::CONFLICT, "failed_precondition")
    );
    assert!(message.contains("only to drafts"), "{message}");
    let back = api
        .patch(
            "/api/v1/models/smol/versions/1.0.0",
            api.admin(),
            json!({"state": "draft"}),
        )
        .await?;
    assert_eq!(error_code(back).await?.0, StatusCode::BAD_REQUEST);
    for state in ["deprecated", "yanked"] {
        let moved = api
            .patch(
                "/api/v1/models/smol/versions/1.0.0",
                api.admin(),
                json!({"state": state}),
            )
            .await?;
        assert_eq!(moved.status(), StatusCode::OK);
    }
    let unyank = api
        .patch(
            "/api/v1/models/smol/versions/1.0.0",
            api.admin(),
            json!({"state": "published"}),
        )
        .await?;
    assert_eq!(error_code(unyank).await?.1, "failed_precondition");

    let detail: dto::ModelDetail = api
        .get("/api/v1/models/smol", api.admin())
        .await?
        .json()
        .await?;
    assert_eq!(detail.model.description, "tiny");
    assert_eq!(detail.versions.len(), 1);
    assert_eq!(detail.versions[0].state, "yanked");
    assert_eq!(
        api.get("/api/v1/models/ghost", api.admin()).await?.status(),
        StatusCode::NOT_FOUND
    );
    api.controller.stop().await
}

async fn models_paginate(store: TestStore) -> anyhow::Result<()> {
    let api = Api::start(store).await?;
    for index in 0..5 {
        let response = api
            .post(
                "/api/v1/models",
                api.admin(),
                json!({"name": format!("model-{index}")}),
            )
            .await?;
        assert_eq!(response.status(), StatusCode::CREATED);
    }
    let mut seen = Vec::new();
    let mut after: Option<String> = None;
    let mut pages = 0;
    loop {
        let path = match &after {
            Some(cursor) => format!("/api/v1/models?limit=2&after={cursor}"),
            None => "/api/v1/models?limit=2".to_owned(),
        };
        let page: dto::Page<dto::ModelInfo> = api.get(&path, api.admin()).await?.json().await?;
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
    let bad_limit = api.get("/api/v1/models?limit=abc", api.admin()).await?;
    assert_eq!(error_code(bad_limit).await?.1, "invalid_argument");
    api.controller.stop().await
}

async fn upload_records_gguf_metadata_and_dedupes(store: TestStore) -> anyhow::Result<()> {
    let api = Api::start(store).await?;
    api.draft("smol", "1.0.0").await?;
    let file = gguf_fixture(Q4_1, 7);
    let digest = blake3::hash(&file).to_hex().to_string();
    let response = api
        .upload("smol", "1.0.0", file.clone(), Some(&digest))
        .await?;
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
    let again = api.upload("smol", "1.0.0", file.clone(), None).await?;
    assert_eq!(again.status(), StatusCode::OK);
    assert_eq!(again.json::<dto::ArtifactInfo>().await?.digest, digest);
    let blobs = api.blobs()?;
    assert_eq!(blobs.blob_count().await?, 1);
    assert_eq!(blobs.pending_upload_count().await?, 0);

    // Another version may reuse the bytes; the blob is still stored once.
    api.draft("smol", "1.1.0").await?;
    assert_eq!(
        api.upload("smol", "1.1.0", file.clone(), None)
            .await?
            .status(),
        StatusCode::CREATED
    );
    assert_eq!(blobs.blob_count().await?, 1);

    // A second file with the same quantization in one version is refused.
    let clash = api
        .upload("smol", "1.0.0", gguf_fixture(Q4_1, 8), None)
        .await?;
    let (status, code, message) = error_code(clash).await?;
    assert_eq!(
        (status, code.as_str()),
        (StatusCode::CONFLICT, "already_exists")
    );
    assert!(message.contains("Q4_1"), "{message}");
    assert_eq!(blobs.blob_count().await?, 1);
    assert_eq!(blobs.pending_upload_count().await?, 0);

    // The asserted quantization must match the file.
    let response = api
        .client
        .post(api.url("/api/v1/models/smol/versions/1.0.0/artifacts?quantization=Q8_0"))
        .bearer_auth(api.admin())
        .body(gguf_fixture(Q4_1, 9))
        .send()
        .await?;
    let (status, _, message) = error_code(response).await?;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY);
    assert!(
        message.contains("Q4_1") && message.contains("Q8_0"),
        "{message}"
    );
    api.controller.stop().await
}

async fn concurrent_duplicate_uploads_store_one_blob(store: TestStore) -> anyhow::Result<()> {
    let api = Api::start(store).await?;
    api.draft("smol", "1.0.0").await?;
    let file = gguf_fixture(Q4_1, 11);
    let uploads = (0..8).map(|_| api.upload("smol", "1.0.0", file.clone(), None));
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
    let version: dto::VersionInfo = api
        .get("/api/v1/models/smol/versions/1.0.0", api.admin())
        .await?
        .json()
        .await?;
    assert_eq!(version.artifacts.len(), 1);
    let blobs = api.blobs()?;
    assert_eq!(blobs.blob_count().await?, 1);
    assert_eq!(blobs.pending_upload_count().await?, 0);
    api.controller.stop().await
}

async fn bad_uploads_leave_nothing_behind(store: TestStore) -> anyhow::Result<()> {
    let api = Api::start(store).await?;
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
        let response = api
            .upload("smol", "1.0.0", bytes, declared.as_deref())
            .await?;
        let (status, code, message) = error_code(response).await?;
        assert_eq!(
            status,
            StatusCode::UNPROCESSABLE_ENTITY,
            "{case}: {message}"
        );
        assert_eq!(code, "unprocessable", "{case}");
        assert!(message.contains(expected), "{case}: {message}");
    }
    let malformed_digest = api
        .upload("smol", "1.0.0", valid.clone(), Some("xyz"))
        .await?;
    assert_eq!(
        error_code(malformed_digest).await?.0,
        StatusCode::BAD_REQUEST
    );
    let unknown_version = api.upload("smol", "9.9.9", valid.clone(), None).await?;
    assert_eq!(error_code(unknown_version).await?.0, StatusCode::NOT_FOUND);

    let version: dto::VersionInfo = api
        .get("/api/v1/models/smol/versions/1.0.0", api.admin())
        .await?
        .json()
        .await?;
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
        api.upload("smol", "1.0.0", valid, None).await?.status(),
        StatusCode::CREATED
    );
    api.controller.stop().await
}

async fn resolution_skips_yanked_versions(store: TestStore) -> anyhow::Result<()> {
    let api = Api::start(store).await?;
    for (version, seed) in [("1.2.0", 20u8), ("1.3.0", 30), ("1.4.0", 40)] {
        api.draft("smol", version).await?;
        assert_eq!(
            api.upload("smol", version, gguf_fixture(Q4_1, seed), None)
                .await?
                .status(),
            StatusCode::CREATED
        );
        assert_eq!(
            api.upload("smol", version, gguf_fixture(Q8_0, seed + 1), None)
                .await?
                .status(),
            StatusCode::CREATED
        );
        api.publish("smol", version).await?;
    }
    api.draft("smol", "1.5.0").await?;
    assert_eq!(
        api.upload("smol", "1.5.0", gguf_fixture(Q8_0, 50), None)
            .await?
            .status(),
        StatusCode::CREATED
    );
    let yank = api
        .patch(
            "/api/v1/models/smol/versions/1.4.0",
            api.admin(),
            json!({"state": "yanked"}),
        )
        .await?;
    assert_eq!(yank.status(), StatusCode::OK);

    let resolved: dto::ResolutionInfo = api
        .get(
            "/api/v1/resolve?model=smol&requirement=%5E1.2&quantization=Q8_0,Q4_1",
            api.admin(),
        )
        .await?
        .json()
        .await?;
    assert_eq!(
        resolved.version, "1.3.0",
        "1.4.0 is yanked and 1.5.0 a draft"
    );
    assert_eq!(resolved.artifact.quantization, "Q8_0");
    let q4: dto::ResolutionInfo = api
        .get(
            "/api/v1/resolve?model=smol&requirement=%3D1.2.0&quantization=Q4_1",
            api.admin(),
        )
        .await?
        .json()
        .await?;
    assert_eq!(
        (q4.version.as_str(), q4.artifact.quantization.as_str()),
        ("1.2.0", "Q4_1")
    );
    let yanked = api
        .get(
            "/api/v1/resolve?model=smol&requirement=%3D1.4.0",
            api.admin(),
        )
        .await?;
    let (status, _, message) = error_code(yanked).await?;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert!(message.contains("no published version"), "{message}");
    let bad_requirement = api
        .get(
            "/api/v1/resolve?model=smol&requirement=%5E%5E1",
            api.admin(),
        )
        .await?;
    assert_eq!(
        error_code(bad_requirement).await?.0,
        StatusCode::BAD_REQUEST
    );
    api.controller.stop().await
}

async fn blobs_serve_ranges(store: TestStore) -> anyhow::Result<()> {
    let api = Api::start(store).await?;
    api.draft("smol", "1.0.0").await?;
    let file = gguf_fixture(Q4_1, 60);
    let digest = blake3::hash(&file).to_hex().to_string();
    assert_eq!(
        api.upload("smol", "1.0.0", file.clone(), None)
            .await?
            .status(),
        StatusCode::CREATED
    );
    let path = format!("/api/v1/blobs/{digest}");
    let whole = api.get(&path, api.admin()).await?;
    assert_eq!(whole.status(), StatusCode::OK);
    assert_eq!(whole.headers()["accept-ranges"], "bytes");
    assert_eq!(whole.bytes().await?.as_ref(), file.as_slice());
    let ranged = api
        .client
        .get(api.url(&path))
        .bearer_auth(api.admin())
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
        .client
        .get(api.url(&path))
        .bearer_auth(api.admin())
        .header("range", format!("bytes={}-", file.len()))
        .send()
        .await?;
    assert_eq!(beyond.status(), StatusCode::RANGE_NOT_SATISFIABLE);
    let missing = api
        .get(&format!("/api/v1/blobs/{}", "0".repeat(64)), api.admin())
        .await?;
    assert_eq!(missing.status(), StatusCode::NOT_FOUND);
    let unauthenticated = api.client.get(api.url(&path)).send().await?;
    assert_eq!(unauthenticated.status(), StatusCode::UNAUTHORIZED);
    api.controller.stop().await
}

async fn prompts_are_versioned(store: TestStore) -> anyhow::Result<()> {
    let api = Api::start(store).await?;
    for text in ["You are helpful.", "You are terse."] {
        let response = api
            .post(
                "/api/v1/prompts/support/versions",
                api.admin(),
                json!({"text": text}),
            )
            .await?;
        assert_eq!(response.status(), StatusCode::CREATED);
    }
    let latest: dto::PromptInfo = api
        .get("/api/v1/prompts/support", api.admin())
        .await?
        .json()
        .await?;
    assert_eq!(
        (latest.version, latest.text.as_str()),
        (2, "You are terse.")
    );
    let first: dto::PromptInfo = api
        .get("/api/v1/prompts/support/versions/1", api.admin())
        .await?
        .json()
        .await?;
    assert_eq!(first.text, "You are helpful.");
    let versions: dto::Page<dto::PromptInfo> = api
        .get("/api/v1/prompts/support/versions", api.admin())
        .await?
        .json()
        .await?;
    assert_eq!(
        versions.items.iter().map(|p| p.version).collect::<Vec<_>>(),
        vec![2, 1]
    );
    let listing: dto::Page<dto::PromptSummaryInfo> = api
        .get("/api/v1/prompts", api.admin())
        .await?
        .json()
        .await?;
    assert_eq!(listing.items.len(), 1);
    assert_eq!(listing.items[0].latest_version, 2);
    let empty = api
        .post(
            "/api/v1/prompts/support/versions",
            api.admin(),
            json!({"text": "  "}),
        )
        .await?;
    assert_eq!(error_code(empty).await?.0, StatusCode::BAD_REQUEST);
    let missing = api
        .get("/api/v1/prompts/support/versions/9", api.admin())
        .await?;
    assert_eq!(error_code(missing).await?.0, StatusCode::NOT_FOUND);
    api.controller.stop().await
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
    let api = Api::start(store).await?;
    let created = api
        .post(
            "/api/v1/policies/hybrid/versions",
            api.admin(),
            hybrid_policy("env:UPSTREAM_KEY"),
        )
        .await?;
    assert_eq!(created.status(), StatusCode::CREATED);
    let created: dto::PolicyInfo = created.json().await?;
    assert_eq!((created.name.as_str(), created.version), ("hybrid", 1));
    let forbidding = api
        .post(
            "/api/v1/policies/hybrid/versions",
            api.admin(),
            json!({"egress": "forbidden"}),
        )
        .await?;
    assert_eq!(forbidding.status(), StatusCode::CREATED);

    let latest: dto::PolicyInfo = api
        .get("/api/v1/policies/hybrid", api.admin())
        .await?
        .json()
        .await?;
    assert_eq!(
        (latest.version, latest.spec.egress.as_str()),
        (2, "forbidden")
    );
    let first: dto::PolicyInfo = api
        .get("/api/v1/policies/hybrid/versions/1", api.admin())
        .await?
        .json()
        .await?;
    let upstream = first.spec.upstream.expect("version 1 has an upstream");
    assert_eq!(upstream.credential, "env:UPSTREAM_KEY");
    assert_eq!(
        first.spec.scrub,
        Some(vec!["email".to_owned(), "phone".to_owned()])
    );
    let versions: dto::Page<dto::PolicyInfo> = api
        .get("/api/v1/policies/hybrid/versions", api.admin())
        .await?
        .json()
        .await?;
    assert_eq!(
        versions.items.iter().map(|p| p.version).collect::<Vec<_>>(),
        vec![2, 1]
    );
    let listing: dto::Page<dto::PolicySummaryInfo> = api
        .get("/api/v1/policies", api.admin())
        .await?
        .json()
        .await?;
    assert_eq!(listing.items.len(), 1);
    assert_eq!(listing.items[0].latest_version, 2);

    // A literal key is refused, and the refusal does not repeat it.
    let key = "sk-proj-abcdefghijklmnopqrstuvwxyz0123456789ABCD";
    let (status, code, message) = error_code(
        api.post(
            "/api/v1/policies/hybrid/versions",
            api.admin(),
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
        let (status, _, message) = error_code(
            api.post("/api/v1/policies/hybrid/versions", api.admin(), body)
                .await?,
        )
        .await?;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{message}");
        assert!(
            message.contains(expected),
            "{expected:?} not in {message:?}"
        );
    }
    let (status, _, _) = error_code(
        api.post(
            "/api/v1/policies/Bad%20Name/versions",
            api.admin(),
            json!({"egress": "forbidden"}),
        )
        .await?,
    )
    .await?;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    // None of the refusals made a version.
    let latest: dto::PolicyInfo = api
        .get("/api/v1/policies/hybrid", api.admin())
        .await?
        .json()
        .await?;
    assert_eq!(latest.version, 2);

    // Not found: a missing policy or version.
    for path in [
        "/api/v1/policies/absent",
        "/api/v1/policies/hybrid/versions/9",
        "/api/v1/policies/absent/versions",
    ] {
        let (status, code, _) = error_code(api.get(path, api.admin()).await?).await?;
        assert_eq!(
            (status, code.as_str()),
            (StatusCode::NOT_FOUND, "not_found"),
            "{path}"
        );
    }

    // Roles: a viewer reads but cannot create; no token, nothing.
    let auth = Authenticator::new(&api.keys()?, "flotilla")?;
    let (viewer, _) = auth.mint("vera", Role::Viewer, Duration::from_secs(60))?;
    let (status, code, _) = error_code(
        api.post(
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
    assert_eq!(
        api.get("/api/v1/policies/hybrid", &viewer).await?.status(),
        StatusCode::OK
    );
    let (operator, _) = auth.mint("olga", Role::Operator, Duration::from_secs(60))?;
    let by_operator = api
        .post(
            "/api/v1/policies/edge/versions",
            &operator,
            json!({"egress": "forbidden"}),
        )
        .await?;
    assert_eq!(by_operator.status(), StatusCode::CREATED);
    let anonymous = api.client.get(api.url("/api/v1/policies")).send().await?;
    assert_eq!(anonymous.status(), StatusCode::UNAUTHORIZED);

    // Every creation is in the audit log, by whom and with its result.
    let events: dto::EventList = api.get("/api/v1/events", api.admin()).await?.json().await?;
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
    api.controller.stop().await
}

async fn assignments_and_rollouts_name_known_policies_only(store: TestStore) -> anyhow::Result<()> {
    let api = Api::start(store).await?;
    api.draft("tiny", "1.0.0").await?;
    let uploaded = api
        .upload("tiny", "1.0.0", gguf_fixture(Q4_1, 1), None)
        .await?;
    assert_eq!(uploaded.status(), StatusCode::CREATED);
    api.publish("tiny", "1.0.0").await?;
    let created = api
        .post(
            "/api/v1/policies/hybrid/versions",
            api.admin(),
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
        let response = api
            .post("/api/v1/assignments", api.admin(), assign(policy))
            .await?;
        assert_eq!(response.status(), status, "assign --policy {policy}");
    }
    let response = api
        .post("/api/v1/assignments", api.admin(), assign("hybrid@1"))
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
    let listed: dto::Page<dto::AssignmentRecord> = api
        .get("/api/v1/assignments", api.admin())
        .await?
        .json()
        .await?;
    assert_eq!(listed.items[0].policy.as_deref(), Some("hybrid@1"));

    // A rollout naming an unknown policy is refused when it is planned.
    let rollout = json!({
        "name": "to-berlin", "model": "tiny", "version": "1.0.0",
        "selector": {"site": "berlin"}, "policy": "absent@3", "dry_run": true,
    });
    let (status, _, message) =
        error_code(api.post("/api/v1/rollouts", api.admin(), rollout).await?).await?;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert!(
        message.contains("escalation policy absent@3 not found"),
        "{message}"
    );
    api.controller.stop().await
}

async fn tokens_are_minted_by_admins_only(store: TestStore) -> anyhow::Result<()> {
    let api = Api::start(store).await?;
    let response = api
        .post(
            "/api/v1/tokens",
            api.admin(),
            json!({"subject": "ci", "role": "operator", "ttl_seconds": 600}),
        )
        .await?;
    assert_eq!(response.status(), StatusCode::CREATED);
    let token: dto::TokenInfo = response.json().await?;
    let me: dto::WhoAmI = api
        .get("/api/v1/whoami", &token.token)
        .await?
        .json()
        .await?;
    assert_eq!((me.subject.as_str(), me.role.as_str()), ("ci", "operator"));
    // The operator can write but not mint.
    let model = api
        .post(
            "/api/v1/models",
            &token.token,
            json!({"name": "by-operator"}),
        )
        .await?;
    assert_eq!(model.status(), StatusCode::CREATED);
    let escalate = api
        .post(
            "/api/v1/tokens",
            &token.token,
            json!({"subject": "me", "role": "admin"}),
        )
        .await?;
    assert_eq!(error_code(escalate).await?.0, StatusCode::FORBIDDEN);
    let bad_role = api
        .post(
            "/api/v1/tokens",
            api.admin(),
            json!({"subject": "x", "role": "root"}),
        )
        .await?;
    assert_eq!(error_code(bad_role).await?.0, StatusCode::BAD_REQUEST);
    api.controller.stop().await
}

async fn interrupted_and_oversized_uploads_leave_nothing_behind(
    store: TestStore,
) -> anyhow::Result<()> {
    let file = gguf_fixture(Q4_1, 70);
    let api = Api::start_with_upload_limit(store, file.len() as u64 - 1).await?;
    api.draft("smol", "1.0.0").await?;

    // One byte over the limit: 413, and nothing kept.
    let (status, code, message) =
        error_code(api.upload("smol", "1.0.0", file.clone(), None).await?).await?;
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
        .client
        .post(api.url("/api/v1/models/smol/versions/1.0.0/artifacts"))
        .bearer_auth(api.admin())
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
    api.controller.stop().await
}

/// The server discards a broken upload after the client is gone, so wait for
/// that (with a deadline) rather than racing it.
async fn wait_for_no_pending_uploads(
    api: &Api,
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
    Ok(api
        .get("/api/v1/models/smol/versions/1.0.0", api.admin())
        .await?
        .json()
        .await?)
}
