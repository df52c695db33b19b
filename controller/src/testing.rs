//! Test support shared by this crate's integration tests and other crates'
//! end-to-end tests: a fresh Postgres database per test, and a controller
//! served in-process on loopback ports chosen by the OS. Real servers, real
//! databases; nothing here is a mock.

use std::path::Path;

use sqlx::Connection;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::config::ControllerConfig;
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
    shutdown: CancellationToken,
    task: Option<JoinHandle<anyhow::Result<()>>>,
    database: Option<TestDatabase>,
}

impl TestController {
    pub async fn start(store: TestStore) -> anyhow::Result<Self> {
        Self::start_with(store, |_| {}).await
    }

    /// Starts a controller after `adjust` has changed its configuration.
    pub async fn start_with(
        store: TestStore,
        adjust: impl FnOnce(&mut ControllerConfig),
    ) -> anyhow::Result<Self> {
        let data_dir = tempfile::tempdir()?;
        let database = match store {
            TestStore::Sqlite => None,
            TestStore::Postgres => Some(TestDatabase::postgres().await?),
        };
        let mut config = ControllerConfig::for_tests(
            data_dir.path(),
            database.as_ref().map(|db| db.url.clone()),
        );
        adjust(&mut config);
        Self::serve(config, data_dir, database).await
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
        Ok(Self {
            url,
            grpc_addr,
            admin_token,
            data_dir,
            shutdown,
            task: Some(task),
            database,
        })
    }

    /// The URL of the database this controller uses.
    pub fn database_url(&self) -> Option<&str> {
        self.database.as_ref().map(|db| db.url.as_str())
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

fn read_token(path: &Path) -> anyhow::Result<String> {
    Ok(std::fs::read_to_string(path)?.trim().to_owned())
}
