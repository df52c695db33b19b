//! Test support shared by this crate's integration tests and other crates'
//! tests: a fresh Postgres database per test, and a controller served
//! in-process on loopback ports chosen by the OS (`TestController::builder`),
//! with what a test needs to talk to it: the typed REST client
//! (`flotilla_client::ApiClient`, the one the CLI uses) as any token, one raw
//! HTTP helper for the requests a test sends malformed or unauthenticated on
//! purpose, a gRPC fleet client and an enrolment fixture, the controller's
//! keys and blob store, and a published model. Real servers, real databases;
//! nothing here is a mock. Nothing is persisted beyond the test: the data
//! directory is a temporary one and the Postgres database is dropped.
//!
//! Only compiled for this crate's tests and under the `testing` feature,
//! which the crates whose tests use it enable.

use std::collections::HashMap;
use std::path::Path;
use std::time::Duration;

use flotilla_client::{ApiClient, ClientError, ClientResult, Token, Upload, Uploaded};
use flotilla_proto::fleet::v1 as pb;
use flotilla_proto::fleet::v1::fleet_client::FleetClient;
use reqwest::StatusCode;
use sqlx::Connection;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::auth::{Authenticator, KeyFile, Role};
use crate::config::ControllerConfig;
use crate::objects::BlobStore;
use crate::server::Controller;

/// Where the tests find Postgres (`scripts/ensure-postgres.sh` sets it).
pub const TEST_DATABASE_URL_VAR: &str = "FLOTILLA_TEST_DATABASE_URL";
const DEFAULT_TEST_DATABASE_URL: &str = "postgres://postgres@127.0.0.1:5432/postgres";

/// Declares each listed test once per store: `sqlite::<name>` and
/// `postgres::<name>`, both calling `async fn <name>(TestStore) ->
/// anyhow::Result<()>` from the invoking module. The caller needs `tokio`.
#[macro_export]
macro_rules! on_both_stores {
    ($($name:ident),* $(,)?) => {
        mod sqlite {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() -> anyhow::Result<()> {
                    super::$name($crate::testing::TestStore::Sqlite).await
                }
            )*
        }
        mod postgres {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() -> anyhow::Result<()> {
                    super::$name($crate::testing::TestStore::Postgres).await
                }
            )*
        }
    };
}

/// Which store a test runs against.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TestStore {
    Sqlite,
    Postgres,
}

/// A database created for one test and dropped afterwards.
pub struct TestDatabase {
    pub url: String,
    maintenance_url: String,
    name: String,
}

impl TestDatabase {
    /// Creates `flotilla_test_<uuid>` on the test server. Fails loudly when
    /// Postgres is unreachable: the suite must not silently skip a backend.
    pub async fn postgres() -> anyhow::Result<Self> {
        let maintenance_url = std::env::var(TEST_DATABASE_URL_VAR)
            .unwrap_or_else(|_| DEFAULT_TEST_DATABASE_URL.to_owned());
        let name = format!("flotilla_test_{}", uuid::Uuid::new_v4().simple());
        let mut connection = sqlx::PgConnection::connect(&maintenance_url).await.map_err(|e| {
            anyhow::anyhow!(
                "cannot reach the test Postgres at {} ({e}); start one with scripts/ensure-postgres.sh or set {TEST_DATABASE_URL_VAR}",
                crate::store::redact_url(&maintenance_url)
            )
        })?;
        sqlx::query(&format!("CREATE DATABASE {name}"))
            .execute(&mut connection)
            .await?;
        let mut url = url::Url::parse(&maintenance_url)?;
        url.set_path(&format!("/{name}"));
        Ok(Self {
            url: url.to_string(),
            maintenance_url,
            name,
        })
    }
}

impl Drop for TestDatabase {
    fn drop(&mut self) {
        let maintenance_url = self.maintenance_url.clone();
        let statement = format!("DROP DATABASE IF EXISTS {} WITH (FORCE)", self.name);
        // Drop runs outside async context; use a private runtime on a thread.
        let dropper = std::thread::spawn(move || {
            let Ok(runtime) = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            else {
                return;
            };
            runtime.block_on(async move {
                if let Ok(mut connection) = sqlx::PgConnection::connect(&maintenance_url).await {
                    let _ = sqlx::query(&statement).execute(&mut connection).await;
                }
            });
        });
        let _ = dropper.join();
    }
}

/// A controller serving REST and gRPC on loopback for the length of a test.
pub struct TestController {
    /// Base URL of the REST API, e.g. `http://127.0.0.1:41234`.
    pub url: String,
    /// Address of the gRPC API.
    pub grpc_addr: std::net::SocketAddr,
    /// The admin token the controller wrote on first start.
    pub admin_token: String,
    pub data_dir: tempfile::TempDir,
    /// The typed REST client with the admin token.
    client: ApiClient,
    shutdown: CancellationToken,
    task: Option<JoinHandle<anyhow::Result<()>>>,
    database: Option<TestDatabase>,
}

/// One change to a test controller's configuration.
type Adjustment = Box<dyn FnOnce(&mut ControllerConfig) + Send>;

/// How a test's controller is set up before it starts: the store, and
/// changes to its test configuration, applied in the order given.
#[must_use = "a builder does nothing until `start` is called"]
pub struct TestControllerBuilder {
    store: TestStore,
    adjustments: Vec<Adjustment>,
}

impl TestControllerBuilder {
    /// Changes the configuration before the controller opens it.
    pub fn configure(
        mut self,
        adjust: impl FnOnce(&mut ControllerConfig) + Send + 'static,
    ) -> Self {
        self.adjustments.push(Box::new(adjust));
        self
    }

    /// Enrolled nodes wait for an operator's approval.
    pub fn require_node_approval(self, required: bool) -> Self {
        self.configure(move |config| config.require_node_approval = required)
    }

    /// How often agents are told to heartbeat.
    pub fn heartbeat_interval(self, interval: Duration) -> Self {
        self.configure(move |config| config.heartbeat_interval = interval)
    }

    /// The largest artifact upload the controller accepts.
    pub fn max_upload_bytes(self, limit: u64) -> Self {
        self.configure(move |config| config.max_upload_bytes = limit)
    }

    pub async fn start(self) -> anyhow::Result<TestController> {
        let data_dir = tempfile::tempdir()?;
        let database = match self.store {
            TestStore::Sqlite => None,
            TestStore::Postgres => Some(TestDatabase::postgres().await?),
        };
        let mut config = ControllerConfig::for_tests(
            data_dir.path(),
            database.as_ref().map(|db| db.url.clone()),
        );
        for adjust in self.adjustments {
            adjust(&mut config);
        }
        TestController::serve(config, data_dir, database).await
    }
}

impl TestController {
    /// A controller on `store`, configured further before `start`.
    pub fn builder(store: TestStore) -> TestControllerBuilder {
        TestControllerBuilder {
            store,
            adjustments: Vec::new(),
        }
    }

    pub async fn start(store: TestStore) -> anyhow::Result<Self> {
        Self::builder(store).start().await
    }

    /// Starts a controller after `adjust` has changed its configuration.
    pub async fn start_with(
        store: TestStore,
        adjust: impl FnOnce(&mut ControllerConfig) + Send + 'static,
    ) -> anyhow::Result<Self> {
        Self::builder(store).configure(adjust).start().await
    }

    /// Starts another replica of this controller: the same Postgres
    /// database, signing keys and object store, its own ports and data
    /// directory, as several pods behind one Kubernetes Service.
    pub async fn start_replica(
        &self,
        adjust: impl FnOnce(&mut ControllerConfig),
    ) -> anyhow::Result<Self> {
        let database_url = self
            .database_url()
            .ok_or_else(|| anyhow::anyhow!("replicas share a Postgres database"))?
            .to_owned();
        let data_dir = tempfile::tempdir()?;
        let mut config = ControllerConfig::for_tests(data_dir.path(), Some(database_url));
        config.jwt_keys = self.data_dir.path().join("auth-keys.toml");
        config.object_store = Some(format!(
            "file://{}",
            self.data_dir.path().join("objects").display()
        ));
        adjust(&mut config);
        Self::serve(config, data_dir, None).await
    }

    async fn serve(
        config: ControllerConfig,
        data_dir: tempfile::TempDir,
        database: Option<TestDatabase>,
    ) -> anyhow::Result<Self> {
        let controller = Controller::open(config).await?;
        let http = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let grpc = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let url = format!("http://{}", http.local_addr()?);
        let grpc_addr = grpc.local_addr()?;
        let shutdown = CancellationToken::new();
        let task = tokio::spawn(controller.serve(http, grpc, shutdown.clone()));
        let admin_token = read_token(&data_dir.path().join("admin.token"))?;
        let client = client_for(&url, &admin_token)?;
        Ok(Self {
            url,
            grpc_addr,
            admin_token,
            data_dir,
            client,
            shutdown,
            task: Some(task),
            database,
        })
    }

    /// The URL of the database this controller uses.
    pub fn database_url(&self) -> Option<&str> {
        self.database.as_ref().map(|db| db.url.as_str())
    }

    /// The typed REST client with the admin token.
    pub fn client(&self) -> &ApiClient {
        &self.client
    }

    /// The typed REST client with `token` (a minted one, a node's
    /// credential, or a forged one).
    pub fn client_as(&self, token: &str) -> anyhow::Result<ApiClient> {
        client_for(&self.url, token)
    }

    /// Plain HTTP to this controller, for what the typed client will not
    /// send: malformed bodies, missing or wrong credentials, raw headers.
    pub fn raw(&self) -> RawHttp {
        RawHttp {
            http: reqwest::Client::new(),
            base: self.url.clone(),
        }
    }

    /// A gRPC client of the fleet service, as agents connect.
    pub async fn fleet_client(&self) -> anyhow::Result<FleetClient<tonic::transport::Channel>> {
        Ok(FleetClient::connect(format!("http://{}", self.grpc_addr)).await?)
    }

    /// The signing keys this controller wrote on first start.
    pub fn keys(&self) -> anyhow::Result<KeyFile> {
        Ok(KeyFile::load(&self.data_dir.path().join("auth-keys.toml"))?)
    }

    /// A verifier (and minter) with this controller's keys and audience.
    pub fn authenticator(&self) -> anyhow::Result<Authenticator> {
        Ok(Authenticator::new(
            &self.keys()?,
            crate::auth::DEFAULT_AUDIENCE,
        )?)
    }

    /// A token for `subject` with `role` that has this controller's key id
    /// but was signed with another secret: a forgery.
    pub fn forged_token(&self, subject: &str, role: Role) -> anyhow::Result<String> {
        let mut forged_keys = KeyFile::generate("k1");
        let kid = self
            .keys()?
            .keys
            .first()
            .map(|key| key.kid.clone())
            .ok_or_else(|| anyhow::anyhow!("the controller has no signing key"))?;
        if let Some(key) = forged_keys.keys.first_mut() {
            key.kid = kid;
        }
        let forger = Authenticator::new(&forged_keys, crate::auth::DEFAULT_AUDIENCE)?;
        let (forged, _) = forger.mint(subject, role, Duration::from_secs(60))?;
        Ok(forged)
    }

    /// A token for `subject` with `role`, signed with this controller's
    /// key, that expired an hour ago.
    pub fn expired_token(&self, subject: &str, role: Role) -> anyhow::Result<String> {
        let keys = self.keys()?;
        let signing = keys.signing_key()?;
        let now = time::OffsetDateTime::now_utc().unix_timestamp();
        let claims = serde_json::json!({
            "sub": subject, "role": role.as_str(), "aud": crate::auth::DEFAULT_AUDIENCE,
            "iss": "x", "iat": now - 7200, "exp": now - 3600,
        });
        let mut header = jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256);
        header.kid = Some(signing.kid.clone());
        Ok(jsonwebtoken::encode(
            &header,
            &claims,
            &jsonwebtoken::EncodingKey::from_secret(&signing.secret),
        )?)
    }

    /// Mints an API token for `subject` with `role` through the API (so it
    /// is recorded, as an operator's would be).
    pub async fn mint_token(&self, subject: &str, role: &str) -> anyhow::Result<String> {
        let minted = self
            .client
            .create_token(&flotilla_api_types::CreateTokenRequest {
                subject: subject.to_owned(),
                role: role.to_owned(),
                ttl_seconds: None,
            })
            .await?;
        Ok(minted.token)
    }

    /// The local object store the controller keeps blobs in.
    pub fn blobs(&self) -> anyhow::Result<BlobStore> {
        Ok(BlobStore::local(&self.data_dir.path().join("objects"))?)
    }

    /// Creates `model` (unless it exists) and its draft `version`.
    pub async fn draft(&self, model: &str, version: &str) -> anyhow::Result<()> {
        let client = self.client();
        match client
            .create_model(&flotilla_api_types::CreateModelRequest {
                name: model.to_owned(),
                description: String::new(),
            })
            .await
        {
            Ok(_) => {}
            Err(error) if error.api_code() == Some("already_exists") => {}
            Err(error) => return Err(anyhow::anyhow!("create model {model}: {error}")),
        }
        client
            .create_version(
                model,
                &flotilla_api_types::CreateVersionRequest {
                    version: version.to_owned(),
                    notes: String::new(),
                },
            )
            .await
            .map_err(|error| anyhow::anyhow!("create version {model} {version}: {error}"))?;
        Ok(())
    }

    /// Uploads `bytes` as an artifact of `model` `version` through the
    /// typed client (from a temporary file, declaring their digest). The
    /// outer error is the harness's own; the inner result is the API's.
    pub async fn upload(
        &self,
        model: &str,
        version: &str,
        bytes: &[u8],
    ) -> anyhow::Result<ClientResult<Uploaded>> {
        let file = tempfile::NamedTempFile::new()?;
        std::fs::write(file.path(), bytes)?;
        let digest = blake3::hash(bytes).to_hex().to_string();
        let upload = Upload {
            model,
            version,
            path: file.path(),
            digest: &digest,
            quantization: None,
        };
        Ok(self.client.upload_artifact(&upload, |_| {}).await)
    }

    pub async fn publish(&self, model: &str, version: &str) -> anyhow::Result<()> {
        self.client
            .update_version(
                model,
                version,
                &flotilla_api_types::UpdateVersionRequest {
                    state: "published".to_owned(),
                },
            )
            .await
            .map_err(|error| anyhow::anyhow!("publish {model} {version}: {error}"))?;
        Ok(())
    }

    /// Publishes `model` `version` with `bytes` as its one artifact, the
    /// model created if need be; returns the artifact's digest.
    pub async fn publish_model(
        &self,
        model: &str,
        version: &str,
        bytes: &[u8],
    ) -> anyhow::Result<String> {
        self.draft(model, version).await?;
        match self.upload(model, version, bytes).await? {
            Ok(Uploaded::Created(_)) => {}
            Ok(Uploaded::AlreadyPresent(_)) => {
                anyhow::bail!("{model} {version} had its artifact already")
            }
            Err(error) => anyhow::bail!("upload to {model} {version}: {error}"),
        }
        self.publish(model, version).await?;
        Ok(blake3::hash(bytes).to_hex().to_string())
    }

    /// Stops serving and waits for both servers to finish.
    pub async fn stop(mut self) -> anyhow::Result<()> {
        self.shutdown.cancel();
        if let Some(task) = self.task.take() {
            task.await??;
        }
        Ok(())
    }
}

impl Drop for TestController {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}

fn client_for(url: &str, token: &str) -> anyhow::Result<ApiClient> {
    let token = Token::new(token).ok_or_else(|| anyhow::anyhow!("a blank token"))?;
    Ok(ApiClient::new(url, Some(&token), String::new())?)
}

fn read_token(path: &Path) -> anyhow::Result<String> {
    Ok(std::fs::read_to_string(path)?.trim().to_owned())
}

/// Plain HTTP requests to a test controller, built on its base URL. Only for
/// what the typed client deliberately cannot send; the caller adds the
/// credentials (or leaves them out) and the body.
pub struct RawHttp {
    http: reqwest::Client,
    base: String,
}

impl RawHttp {
    /// `method` on `path` (such as `/api/v1/models`), with no credentials.
    pub fn request(&self, method: reqwest::Method, path: &str) -> reqwest::RequestBuilder {
        self.http.request(method, format!("{}{path}", self.base))
    }

    pub fn get(&self, path: &str) -> reqwest::RequestBuilder {
        self.request(reqwest::Method::GET, path)
    }

    pub fn post(&self, path: &str) -> reqwest::RequestBuilder {
        self.request(reqwest::Method::POST, path)
    }

    pub fn patch(&self, path: &str) -> reqwest::RequestBuilder {
        self.request(reqwest::Method::PATCH, path)
    }
}

/// The status, error code and message of a refused raw request, read from
/// the API's error body.
pub async fn raw_error(
    response: reqwest::Response,
) -> anyhow::Result<(StatusCode, String, String)> {
    let status = response.status();
    let body: flotilla_api_types::ErrorBody = response.json().await?;
    Ok((status, body.error.code, body.error.message))
}

/// The status, error code and message of a call the controller must
/// refuse; an error of its own when the call succeeded or never got an
/// answer from the API.
pub fn api_error<T: std::fmt::Debug>(
    result: ClientResult<T>,
) -> anyhow::Result<(StatusCode, String, String)> {
    match result {
        Err(ClientError::Api {
            status,
            code,
            message,
        }) => Ok((status, code, message)),
        Err(other) => Err(anyhow::anyhow!("expected an API error, got: {other}")),
        Ok(value) => Err(anyhow::anyhow!("expected an API error, got: {value:?}")),
    }
}

/// An enrolment of `name` with `bootstrap_token`: labelled `site=berlin`,
/// with one 24 GiB NVIDIA L4 in its inventory, agent version 0.1.0. Tests
/// change the fields they are about with struct update syntax.
pub fn enroll_request(bootstrap_token: &str, name: &str) -> pb::EnrollRequest {
    pb::EnrollRequest {
        bootstrap_token: bootstrap_token.to_owned(),
        node_name: name.to_owned(),
        labels: HashMap::from([("site".to_owned(), "berlin".to_owned())]),
        inventory: Some(l4_inventory()),
        agent_version: "0.1.0".to_owned(),
        replace_existing: false,
        certificate_signing_request: String::new(),
    }
}

/// A node with 4 CPU cores, 8 GiB of memory and one 24 GiB NVIDIA L4.
pub fn l4_inventory() -> pb::Inventory {
    pb::Inventory {
        cpu_model: "test cpu".to_owned(),
        cpu_cores: 4,
        memory_total_bytes: 8 << 30,
        gpus: vec![pb::Gpu {
            index: 0,
            name: "NVIDIA L4".to_owned(),
            memory_total_bytes: 24 << 30,
            driver_version: "550.54".to_owned(),
        }],
        ..pb::Inventory::default()
    }
}
