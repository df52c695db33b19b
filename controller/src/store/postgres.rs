//! What only the Postgres backend does, for production: several controller
//! replicas share one database. Connecting (migrations run under sqlx's
//! advisory lock, so replicas starting together apply them once), the
//! rollout engine's leadership (a session-level advisory lock) and the
//! change feed (`LISTEN` on the channel every change of desired state
//! notifies). The queries themselves are shared with SQLite (`sql.rs`);
//! every invariant that concurrent writers could break is either a schema
//! constraint or taken under a row lock there ([`Dialect::for_update`]).
//!
//! [`Dialect::for_update`]: super::sql::Dialect::for_update

use std::time::Duration;

use async_trait::async_trait;
use sqlx::PgConnection;
use sqlx::postgres::{PgConnectOptions, PgListener, PgPool, PgPoolOptions};

use super::{ChangeFeed, Leadership, StoreResult};

static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("../migrations/postgres");

/// Connections per controller replica. Transactions are short; more replicas
/// add connections, so this stays well under Postgres's default limit of 100.
const MAX_CONNECTIONS: u32 = 10;

/// The channel every transaction that takes a fleet generation notifies
/// (see `next_generation` in `store/fleet.rs` and
/// [`Dialect::announce_change`](super::sql::Dialect::announce_change)).
const FLEET_CHANNEL: &str = "flotilla_fleet";

/// Connects to `url` and applies pending migrations.
pub(super) async fn connect(url: &str) -> StoreResult<PgPool> {
    let options: PgConnectOptions = url.parse()?;
    let pool = PgPoolOptions::new()
        .max_connections(MAX_CONNECTIONS)
        .acquire_timeout(Duration::from_secs(10))
        .connect_with(options)
        .await?;
    MIGRATOR.run(&pool).await?;
    Ok(pool)
}

/// Takes the rollout engine's leadership if no other replica holds it.
pub(super) async fn try_lead(pool: &PgPool) -> StoreResult<Option<Box<dyn Leadership>>> {
    // A connection of its own, out of the pool: the lock lives as long
    // as this session.
    let mut conn = pool.acquire().await?.detach();
    let acquired: bool = sqlx::query_scalar("SELECT pg_try_advisory_lock($1)")
        .bind(super::LEADER_LOCK_KEY)
        .fetch_one(&mut conn)
        .await?;
    if acquired {
        Ok(Some(Box::new(PostgresLeadership { conn })))
    } else {
        use sqlx::Connection;
        let _ = conn.close().await;
        Ok(None)
    }
}

/// Listens for changes of desired state made by other replicas.
pub(super) async fn change_feed(pool: &PgPool) -> StoreResult<Box<dyn ChangeFeed>> {
    let mut listener = PgListener::connect_with(pool).await?;
    listener.listen(FLEET_CHANNEL).await?;
    Ok(Box::new(PgChangeFeed(listener)))
}

/// The session holding the rollout engine's advisory lock.
struct PostgresLeadership {
    conn: PgConnection,
}

#[async_trait]
impl Leadership for PostgresLeadership {
    async fn still_leader(&mut self) -> bool {
        sqlx::query("SELECT 1")
            .execute(&mut self.conn)
            .await
            .is_ok()
    }
}

struct PgChangeFeed(PgListener);

#[async_trait]
impl ChangeFeed for PgChangeFeed {
    async fn next(&mut self) -> StoreResult<()> {
        // `Ok(None)`: the connection was lost (the next call re-opens it)
        // and notifications sent meanwhile are gone; the caller re-reads.
        self.0.try_recv().await?;
        Ok(())
    }
}
