//! The one SQL layer under the store: the store's queries are written once,
//! against [`Tx`], and run unchanged on Postgres and SQLite.
//!
//! The two backends take the same `$n` placeholders, JSON through
//! `sqlx::types::Json`, integers as `i64` and times as `time` values, so
//! nearly every statement is the same text on both. What is spelt
//! differently is gathered in [`Dialect`]: row locks, the clock, how a
//! writing transaction begins, which errors are collisions worth retrying,
//! the change announcement to other replicas, the prompt-version lock, and
//! the JSON table functions that bulk statements read their rows from.
//!
//! Why not generic code over `sqlx::Database`: every function would repeat
//! the higher-ranked bounds for each type it binds or decodes (Rust does not
//! imply them), and why not `sqlx::Any`: it binds JSON as text, which
//! Postgres refuses for `jsonb` columns. Instead a statement collects its
//! arguments as [`Arg`] values, and [`Tx`] binds them to the backend's own
//! query at execution, so each backend still encodes and decodes its native
//! types (`jsonb`, `timestamptz`, `bytea`).
//!
//! Nothing here is persisted.

use std::borrow::Cow;
use std::marker::PhantomData;
use std::time::Duration;

use serde::Serialize;
use serde_json::value::RawValue;
use sqlx::postgres::{PgPool, PgRow};
use sqlx::sqlite::{SqlitePool, SqliteRow};
use sqlx::types::Json;
use sqlx::{Decode, FromRow, Postgres, Sqlite, Type};
use time::OffsetDateTime;

use super::{StoreBackend, StoreResult, transaction};

/// What the two backends spell differently. Everything else in the store's
/// SQL is one text for both.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Dialect {
    Postgres,
    Sqlite,
}

impl Dialect {
    pub(super) fn backend(self) -> StoreBackend {
        match self {
            Self::Postgres => StoreBackend::Postgres,
            Self::Sqlite => StoreBackend::Sqlite,
        }
    }

    /// Appended to a `SELECT` to lock the rows it reads until the
    /// transaction ends. Empty on SQLite, which has no row locks: a writing
    /// transaction there holds the whole database's write lock from its
    /// first statement (`BEGIN IMMEDIATE`, see [`Access`]), which is what
    /// the row lock achieves row by row.
    pub(super) fn for_update(self) -> &'static str {
        match self {
            Self::Postgres => " FOR UPDATE",
            Self::Sqlite => "",
        }
    }

    /// [`for_update`](Self::for_update) limited to the rows of one table of
    /// a join, named by its alias.
    pub(super) fn for_update_of(self, alias: &str) -> String {
        match self {
            Self::Postgres => format!(" FOR UPDATE OF {alias}"),
            Self::Sqlite => String::new(),
        }
    }

    /// The database's current time, as its timestamp columns hold it
    /// (`timestamptz` on Postgres, ISO 8601 text in UTC on SQLite).
    pub(super) fn now(self) -> &'static str {
        match self {
            Self::Postgres => "now()",
            Self::Sqlite => "strftime('%Y-%m-%dT%H:%M:%fZ', 'now')",
        }
    }

    /// The database's current time plus the duration bound as placeholder
    /// `$n`, which must be bound with [`Dialect::duration`].
    pub(super) fn now_plus(self, placeholder: u32) -> String {
        match self {
            Self::Postgres => format!("now() + make_interval(secs => ${placeholder})"),
            Self::Sqlite => format!("strftime('%Y-%m-%dT%H:%M:%fZ', 'now', ${placeholder})"),
        }
    }

    /// A duration as [`Dialect::now_plus`] takes it: seconds on Postgres, a
    /// date modifier on SQLite.
    pub(super) fn duration(self, duration: Duration) -> Arg {
        match self {
            Self::Postgres => duration.as_secs_f64().into_arg(),
            Self::Sqlite => format!("+{} seconds", duration.as_secs()).into_arg(),
        }
    }

    /// A subquery yielding the strings of the JSON array bound as `$n`.
    pub(super) fn json_strings(self, placeholder: u32) -> String {
        match self {
            Self::Postgres => format!("SELECT jsonb_array_elements_text(${placeholder})"),
            Self::Sqlite => format!("SELECT value FROM json_each(${placeholder})"),
        }
    }

    /// A subquery turning the JSON array of objects bound as `$n` into rows
    /// with the given columns, each `(name, type)`: a JSON column stays
    /// JSON, the others are read as scalars.
    pub(super) fn json_records(self, placeholder: u32, columns: &[(&str, ColumnType)]) -> String {
        match self {
            Self::Postgres => {
                let columns: Vec<String> = columns
                    .iter()
                    .map(|(name, kind)| format!("{name} {}", kind.postgres()))
                    .collect();
                format!(
                    "SELECT * FROM jsonb_to_recordset(${placeholder}) AS x({})",
                    columns.join(", ")
                )
            }
            Self::Sqlite => {
                let columns: Vec<String> = columns
                    .iter()
                    .map(|(name, kind)| match kind {
                        ColumnType::Json => format!("value -> '$.{name}' AS {name}"),
                        _ => format!("value ->> '$.{name}' AS {name}"),
                    })
                    .collect();
                format!(
                    "SELECT {} FROM json_each(${placeholder})",
                    columns.join(", ")
                )
            }
        }
    }

    /// A statement that tells the other controller replicas the fleet's
    /// desired state changed, delivered at commit (Postgres `NOTIFY`). SQLite
    /// has one process, so nobody to tell.
    pub(super) fn announce_change(self) -> Option<&'static str> {
        match self {
            Self::Postgres => Some("SELECT pg_notify('flotilla_fleet', '')"),
            Self::Sqlite => None,
        }
    }

    /// A statement taking a lock held until commit, keyed by the string
    /// bound as `$1`, so that creators of one prompt's versions take turns.
    /// SQLite's write lock already makes every writer take turns.
    pub(super) fn keyed_lock(self) -> Option<&'static str> {
        match self {
            Self::Postgres => Some("SELECT pg_advisory_xact_lock(hashtextextended($1, 0))"),
            Self::Sqlite => None,
        }
    }

    /// Whether a failed transaction only collided with a concurrent one and
    /// can simply run again.
    ///
    /// Postgres: serialization failures and deadlocks. SQLite: `SQLITE_BUSY`
    /// and `SQLITE_LOCKED` (with their extended codes): another connection
    /// held the lock past the busy timeout, or a WAL snapshot went stale;
    /// running the transaction again is the documented remedy.
    pub(super) fn is_retryable(self, error: &sqlx::Error) -> bool {
        let Some(code) = error.as_database_error().and_then(|error| error.code()) else {
            return false;
        };
        match self {
            Self::Postgres => {
                const SERIALIZATION_FAILURE: &str = "40001";
                const DEADLOCK_DETECTED: &str = "40P01";
                code == SERIALIZATION_FAILURE || code == DEADLOCK_DETECTED
            }
            Self::Sqlite => {
                const SQLITE_BUSY: i64 = 5;
                const SQLITE_LOCKED: i64 = 6;
                code.parse::<i64>()
                    .is_ok_and(|code| matches!(code & 0xff, SQLITE_BUSY | SQLITE_LOCKED))
            }
        }
    }
}

/// The type of a column read out of a JSON record by
/// [`Dialect::json_records`].
#[derive(Debug, Clone, Copy)]
pub(super) enum ColumnType {
    Text,
    BigInt,
    Double,
    Boolean,
    Json,
}

impl ColumnType {
    fn postgres(self) -> &'static str {
        match self {
            Self::Text => "text",
            Self::BigInt => "bigint",
            Self::Double => "double precision",
            Self::Boolean => "boolean",
            Self::Json => "jsonb",
        }
    }
}

/// Whether a transaction only reads, or may write. On SQLite a writing
/// transaction begins with `BEGIN IMMEDIATE`, taking the database's write
/// lock up front, so writers queue (for up to the busy timeout) instead of
/// reading under a shared lock and failing with `SQLITE_BUSY` when they
/// upgrade it. Postgres begins both alike and locks rows as it goes.
#[derive(Debug, Clone, Copy)]
pub(super) enum Access {
    Read,
    Write,
}

/// The store's connection pool, on either backend.
#[derive(Debug, Clone)]
pub(super) enum Pool {
    Postgres(PgPool),
    Sqlite(SqlitePool),
}

impl Pool {
    pub(super) fn dialect(&self) -> Dialect {
        match self {
            Self::Postgres(_) => Dialect::Postgres,
            Self::Sqlite(_) => Dialect::Sqlite,
        }
    }

    /// One round trip outside any transaction: is the database there?
    pub(super) async fn ping(&self) -> sqlx::Result<()> {
        match self {
            Self::Postgres(pool) => sqlx::query("SELECT 1").execute(pool).await.map(drop),
            Self::Sqlite(pool) => sqlx::query("SELECT 1").execute(pool).await.map(drop),
        }
    }

    pub(super) async fn begin(&self, access: Access) -> sqlx::Result<Tx> {
        Ok(match (self, access) {
            (Self::Postgres(pool), _) => Tx::Postgres(pool.begin().await?),
            (Self::Sqlite(pool), Access::Read) => Tx::Sqlite(pool.begin().await?),
            (Self::Sqlite(pool), Access::Write) => {
                Tx::Sqlite(pool.begin_with("BEGIN IMMEDIATE").await?)
            }
        })
    }
}

/// One open transaction, on either backend. Every query of the store runs
/// in one.
pub(super) enum Tx {
    Postgres(sqlx::Transaction<'static, Postgres>),
    Sqlite(sqlx::Transaction<'static, Sqlite>),
}

impl Tx {
    pub(super) fn dialect(&self) -> Dialect {
        match self {
            Self::Postgres(_) => Dialect::Postgres,
            Self::Sqlite(_) => Dialect::Sqlite,
        }
    }

    /// Commits when `result` is a success and rolls back otherwise.
    pub(super) async fn finish<T>(self, result: StoreResult<T>) -> StoreResult<T> {
        match self {
            Self::Postgres(tx) => transaction::finish(tx, result).await,
            Self::Sqlite(tx) => transaction::finish(tx, result).await,
        }
    }
}

/// Runs `$body` as one transaction of `$access` on `$store`'s pool, with
/// `$conn` bound to the open [`Tx`], committing when the body returns `Ok`
/// and rolling back otherwise. In the body, `?` and `return` leave the
/// transaction. Retries and metrics: [`transaction::Attempts`].
///
/// (A macro rather than a function taking an async closure: the futures of
/// closures that borrow their arguments cannot be proven `Send` today, and
/// the `Store` trait's futures must be.)
macro_rules! in_transaction {
    ($store:expr, $operation:literal, $access:expr, |$conn:ident| $body:block) => {{
        let pool = &$store.pool;
        let mut attempts = $crate::store::transaction::Attempts::new(pool.dialect(), $operation);
        loop {
            let result = $crate::store::transaction::body(async {
                let mut tx = pool.begin($access).await?;
                let result = $crate::store::transaction::body(async {
                    let $conn: &mut $crate::store::sql::Tx = &mut tx;
                    $body
                })
                .await;
                tx.finish(result).await
            })
            .await;
            if let Some(result) = attempts.settle(result).await {
                break result;
            }
        }
    }};
}

pub(super) use in_transaction;

/// A value bound to a statement's placeholder. Each variant holds an
/// `Option` so that a NULL keeps its SQL type, which Postgres needs.
#[derive(Debug)]
pub(super) enum Arg {
    Text(Option<String>),
    BigInt(Option<i64>),
    Int(Option<i32>),
    Double(Option<f64>),
    Boolean(Option<bool>),
    Bytes(Option<Vec<u8>>),
    Json(Option<Box<RawValue>>),
    Time(Option<OffsetDateTime>),
    /// A value that could not be turned into an argument (a JSON value
    /// that did not serialise); executing the statement reports it.
    Invalid(String),
}

/// A Rust value that binds to a placeholder.
pub(super) trait IntoArg {
    fn into_arg(self) -> Arg;
}

impl IntoArg for Arg {
    fn into_arg(self) -> Arg {
        self
    }
}

/// `IntoArg` for a type and its `Option`, through a conversion into the
/// variant's value.
macro_rules! into_arg {
    ($variant:ident: $($ty:ty => |$value:ident| $convert:expr),+ $(,)?) => {
        $(
            impl IntoArg for $ty {
                fn into_arg(self) -> Arg {
                    let $value = self;
                    Arg::$variant(Some($convert))
                }
            }
            impl IntoArg for Option<$ty> {
                fn into_arg(self) -> Arg {
                    Arg::$variant(self.map(|$value| $convert))
                }
            }
        )+
    };
}

into_arg!(Text:
    &str => |value| value.to_owned(),
    String => |value| value,
    &String => |value| value.clone(),
);
into_arg!(BigInt: i64 => |value| value);
into_arg!(Int: i32 => |value| value);
into_arg!(Double: f64 => |value| value);
into_arg!(Boolean: bool => |value| value);
into_arg!(Bytes: &[u8] => |value| value.to_vec(), Vec<u8> => |value| value);
into_arg!(Time: OffsetDateTime => |value| value);

impl<T: Serialize> IntoArg for Json<T> {
    fn into_arg(self) -> Arg {
        Some(self).into_arg()
    }
}

impl<T: Serialize> IntoArg for Option<Json<T>> {
    fn into_arg(self) -> Arg {
        match self.map(|Json(value)| serde_json::value::to_raw_value(&value)) {
            None => Arg::Json(None),
            Some(Ok(raw)) => Arg::Json(Some(raw)),
            Some(Err(error)) => Arg::Invalid(format!("a JSON argument did not serialise: {error}")),
        }
    }
}

/// Binds `$args` to the sqlx query `$query`, in order.
macro_rules! bind_all {
    ($query:expr, $args:expr) => {{
        let mut query = $query;
        for arg in $args {
            query = match arg {
                Arg::Text(value) => query.bind(value),
                Arg::BigInt(value) => query.bind(value),
                Arg::Int(value) => query.bind(value),
                Arg::Double(value) => query.bind(value),
                Arg::Boolean(value) => query.bind(value),
                Arg::Bytes(value) => query.bind(value),
                Arg::Json(value) => query.bind(value.map(Json)),
                Arg::Time(value) => query.bind(value),
                Arg::Invalid(message) => return Err(sqlx::Error::Encode(message.into())),
            };
        }
        query
    }};
}

/// A statement and its arguments. `M` says what running it returns:
/// nothing ([`Execute`]), rows ([`Rows`]) or one column ([`Scalars`]).
#[must_use = "a statement does nothing until it is executed or fetched"]
pub(super) struct Statement<'q, M> {
    sql: Cow<'q, str>,
    args: Vec<Arg>,
    returns: PhantomData<M>,
}

pub(super) struct Execute;
pub(super) struct Rows<O>(PhantomData<O>);
pub(super) struct Scalars<O>(PhantomData<O>);

/// A statement run for its effect.
pub(super) fn query<'q>(sql: impl Into<Cow<'q, str>>) -> Statement<'q, Execute> {
    Statement::new(sql.into())
}

/// A statement whose rows decode into `O`.
pub(super) fn query_as<'q, O: FromEitherRow>(
    sql: impl Into<Cow<'q, str>>,
) -> Statement<'q, Rows<O>> {
    Statement::new(sql.into())
}

/// A statement whose rows' first column decodes into `O`.
pub(super) fn query_scalar<'q, O: EitherColumn>(
    sql: impl Into<Cow<'q, str>>,
) -> Statement<'q, Scalars<O>> {
    Statement::new(sql.into())
}

impl<'q, M> Statement<'q, M> {
    fn new(sql: Cow<'q, str>) -> Self {
        Self {
            sql,
            args: Vec::new(),
            returns: PhantomData,
        }
    }

    /// Binds the next placeholder.
    pub(super) fn bind(mut self, value: impl IntoArg) -> Self {
        self.args.push(value.into_arg());
        self
    }
}

/// What a statement run for its effect reports.
#[derive(Debug, Clone, Copy)]
pub(super) struct Executed {
    rows_affected: u64,
}

impl Executed {
    pub(super) fn rows_affected(self) -> u64 {
        self.rows_affected
    }
}

impl Statement<'_, Execute> {
    pub(super) async fn execute(self, conn: &mut Tx) -> sqlx::Result<Executed> {
        let sql = self.sql.as_ref();
        let rows_affected = match conn {
            Tx::Postgres(tx) => bind_all!(sqlx::query::<Postgres>(sql), self.args)
                .execute(&mut **tx)
                .await?
                .rows_affected(),
            Tx::Sqlite(tx) => bind_all!(sqlx::query::<Sqlite>(sql), self.args)
                .execute(&mut **tx)
                .await?
                .rows_affected(),
        };
        Ok(Executed { rows_affected })
    }
}

/// A row type both backends decode (sqlx's `FromRow` derive gives it to a
/// struct whose fields both decode).
pub(super) trait FromEitherRow:
    for<'r> FromRow<'r, PgRow> + for<'r> FromRow<'r, SqliteRow> + Send + Unpin
{
}

impl<T> FromEitherRow for T where
    T: for<'r> FromRow<'r, PgRow> + for<'r> FromRow<'r, SqliteRow> + Send + Unpin
{
}

/// A column type both backends decode.
pub(super) trait EitherColumn:
    for<'r> Decode<'r, Postgres>
    + Type<Postgres>
    + for<'r> Decode<'r, Sqlite>
    + Type<Sqlite>
    + Send
    + Unpin
{
}

impl<T> EitherColumn for T where
    T: for<'r> Decode<'r, Postgres>
        + Type<Postgres>
        + for<'r> Decode<'r, Sqlite>
        + Type<Sqlite>
        + Send
        + Unpin
{
}

/// The fetches of [`Rows`] and [`Scalars`] statements, alike but for the
/// sqlx constructor.
macro_rules! fetches {
    ($marker:ident, $bound:ident, $constructor:ident) => {
        impl<O: $bound> Statement<'_, $marker<O>> {
            pub(super) async fn fetch_all(self, conn: &mut Tx) -> sqlx::Result<Vec<O>> {
                let sql = self.sql.as_ref();
                match conn {
                    Tx::Postgres(tx) => {
                        bind_all!(sqlx::$constructor::<Postgres, O>(sql), self.args)
                            .fetch_all(&mut **tx)
                            .await
                    }
                    Tx::Sqlite(tx) => {
                        bind_all!(sqlx::$constructor::<Sqlite, O>(sql), self.args)
                            .fetch_all(&mut **tx)
                            .await
                    }
                }
            }

            pub(super) async fn fetch_optional(self, conn: &mut Tx) -> sqlx::Result<Option<O>> {
                let sql = self.sql.as_ref();
                match conn {
                    Tx::Postgres(tx) => {
                        bind_all!(sqlx::$constructor::<Postgres, O>(sql), self.args)
                            .fetch_optional(&mut **tx)
                            .await
                    }
                    Tx::Sqlite(tx) => {
                        bind_all!(sqlx::$constructor::<Sqlite, O>(sql), self.args)
                            .fetch_optional(&mut **tx)
                            .await
                    }
                }
            }

            pub(super) async fn fetch_one(self, conn: &mut Tx) -> sqlx::Result<O> {
                let sql = self.sql.as_ref();
                match conn {
                    Tx::Postgres(tx) => {
                        bind_all!(sqlx::$constructor::<Postgres, O>(sql), self.args)
                            .fetch_one(&mut **tx)
                            .await
                    }
                    Tx::Sqlite(tx) => {
                        bind_all!(sqlx::$constructor::<Sqlite, O>(sql), self.args)
                            .fetch_one(&mut **tx)
                            .await
                    }
                }
            }
        }
    };
}

fetches!(Rows, FromEitherRow, query_as);
fetches!(Scalars, EitherColumn, query_scalar);
