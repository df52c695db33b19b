//! What only the SQLite backend does: the embedded default for a controller
//! on a single box, with no database server to run. Opening the file
//! (private, in WAL mode) and keeping the pool healthy; the queries are
//! shared with Postgres (`sql.rs`).
//!
//! What is persisted: the tables of `migrations/sqlite` (models, versions,
//! blobs, artifacts, system prompts; nodes and bootstrap tokens in `fleet`)
//! in one database file, in WAL mode so that readers never wait for the
//! writer.
//!
//! SQLite has no row locks: a transaction that writes starts with
//! `BEGIN IMMEDIATE`, which takes the database's write lock up front, so
//! writers queue (for up to the busy timeout) instead of reading under a
//! shared lock and failing with `SQLITE_BUSY` when they upgrade it. That
//! whole-database lock is what the Postgres backend's `FOR UPDATE` and
//! advisory locks achieve row by row.

use std::path::Path;
use std::str::FromStr;
use std::time::Duration;

use sqlx::SqliteConnection;
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePool, SqlitePoolOptions};

use super::{StoreError, StoreResult};

/// Creates the database file, readable by its owner only (0600), when it
/// does not exist yet: it holds token hashes, node records and prompts.
/// SQLite gives its `-wal` and `-shm` files the database file's mode.
fn create_private_file(path: &std::path::Path) -> StoreResult<()> {
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(0o600);
    }
    match options.open(path) {
        Ok(_) => Ok(()),
        // A file made by an older version may be readable by others:
        // tighten it.
        #[cfg(unix)]
        Err(error) if error.kind() == std::io::ErrorKind::AlreadyExists => {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(path).map(|meta| meta.permissions().mode());
            if mode.is_ok_and(|mode| mode & 0o077 != 0) {
                std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))
                    .map_err(|error| StoreError::Backend(sqlx::Error::Io(error)))?;
                tracing::info!(path = %path.display(), "made the database file private (0600)");
            }
            Ok(())
        }
        #[cfg(not(unix))]
        Err(error) if error.kind() == std::io::ErrorKind::AlreadyExists => Ok(()),
        Err(error) => Err(StoreError::Backend(sqlx::Error::Io(error))),
    }
}

static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("../migrations/sqlite");

/// Connections to the file. Readers run in parallel under WAL; writers take
/// turns whatever the pool size.
const MAX_CONNECTIONS: u32 = 8;

/// How long a writer waits for another's write lock before giving up with
/// `SQLITE_BUSY`. Transactions are short, so reaching this means trouble.
const BUSY_TIMEOUT: Duration = Duration::from_secs(10);

/// Opens (creating if missing, with its directory) the database at `url`,
/// e.g. `sqlite:///var/lib/flotilla/controller.db`, and applies pending
/// migrations.
pub(super) async fn connect(url: &str) -> StoreResult<SqlitePool> {
    let options = SqliteConnectOptions::from_str(url)?
        .create_if_missing(true)
        .journal_mode(SqliteJournalMode::Wal)
        .foreign_keys(true)
        .busy_timeout(BUSY_TIMEOUT);
    // An in-memory database lives only as long as a connection to it, and
    // each connection would otherwise see a database of its own: keep
    // exactly one, forever. Tests and demos use this; a file is the norm.
    let in_memory = url.contains(":memory:") || url.contains("mode=memory");
    let pool_options = if in_memory {
        SqlitePoolOptions::new()
            .max_connections(1)
            .idle_timeout(None)
            .max_lifetime(None)
    } else {
        create_parent_directory(options.get_filename())?;
        create_private_file(options.get_filename())?;
        SqlitePoolOptions::new()
            .max_connections(MAX_CONNECTIONS)
            .before_acquire(|connection, _| {
                Box::pin(async move { Ok(!still_in_failed_transaction(connection)) })
            })
    };
    let pool = pool_options
        .acquire_timeout(BUSY_TIMEOUT)
        .connect_with(options)
        .await?;
    MIGRATOR.run(&pool).await?;
    Ok(pool)
}

/// Whether an idle connection still counts a transaction as open. None is
/// by then: the pool finished each one (commit, rollback, or the rollback a
/// dropped transaction queues). It happens when SQLite rolled a transaction
/// back by itself on `SQLITE_FULL` or `SQLITE_IOERR` (a full disk): sqlx's
/// COMMIT or ROLLBACK then fails and its count stays at one, and every later
/// `BEGIN` on that connection would fail. Such a connection is closed instead
/// of handed out. An in-memory database keeps its one connection regardless:
/// closing it would lose the data.
fn still_in_failed_transaction(connection: &SqliteConnection) -> bool {
    use sqlx::Connection as _;
    let stuck = connection.is_in_transaction();
    if stuck {
        tracing::warn!(
            "closing a SQLite connection whose transaction SQLite had rolled back by itself (disk full?)"
        );
    }
    stuck
}

fn create_parent_directory(database: &Path) -> StoreResult<()> {
    match database.parent() {
        Some(parent) if !parent.as_os_str().is_empty() => {
            std::fs::create_dir_all(parent).map_err(|error| {
                StoreError::Backend(sqlx::Error::Io(std::io::Error::new(
                    error.kind(),
                    format!(
                        "cannot create directory {} for sqlite database {}: {error}",
                        parent.display(),
                        database.display()
                    ),
                )))
            })
        }
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::ModelName;
    use crate::store::sql::Pool;
    use crate::store::{SqlStore, Store, transaction};

    /// On `SQLITE_FULL` or `SQLITE_IOERR` (a full disk) SQLite may roll the
    /// whole transaction back by itself. The connection's own count of open
    /// transactions then stays at one: our COMMIT or ROLLBACK fails with "no
    /// transaction is active", and every later `BEGIN` on that pooled
    /// connection failed with "attempted to call begin_with at non-zero
    /// transaction depth", so writes kept failing after space came back
    /// (seen in CI). The explicit ROLLBACK below is what SQLite does then.
    #[tokio::test]
    async fn a_transaction_sqlite_rolled_back_itself_does_not_poison_the_pool() -> anyhow::Result<()>
    {
        let dir = tempfile::tempdir()?;
        let url = format!("sqlite://{}", dir.path().join("store.db").display());
        let pool = connect(&url).await?;
        let store = SqlStore::new(Pool::Sqlite(pool.clone()));
        let existing = "existing".parse::<ModelName>()?;
        store.create_model(&existing, "").await?;

        for _ in 0..2 {
            let mut tx = pool.begin_with("BEGIN IMMEDIATE").await?;
            sqlx::query("ROLLBACK").execute(&mut *tx).await?;
            let committed = transaction::finish(tx, Ok(())).await;
            assert!(committed.is_err(), "COMMIT without a transaction succeeded");
        }

        // Every connection of the pool gets its turns; each must still begin
        // a write transaction (the conflict proves the body ran).
        for _ in 0..3 * MAX_CONNECTIONS {
            match store.create_model(&existing, "").await {
                Err(StoreError::AlreadyExists(_)) => {}
                other => anyhow::bail!("expected a conflict, got {other:?}"),
            }
        }
        let created = "created".parse::<ModelName>()?;
        store.create_model(&created, "").await?;
        assert!(store.get_model(&created).await?.is_some());
        Ok(())
    }
}
