//! The one path every store operation takes into the database: run an attempt
//! (one transaction), retry it when the backend says the failure was only a
//! collision with a concurrent transaction, classify the error, and record
//! how long it took and how it ended, labelled by backend and operation.
//! The store's `in_transaction!` macro (in `sql.rs`) wraps this.
//!
//! Nothing here is persisted; the metrics live in the process's recorder.

use std::time::{Duration, Instant};

use sqlx::{Database, Transaction};

use super::rows::classify;
use super::sql::Dialect;
use super::{StoreError, StoreResult};

/// Attempts per operation: a collision that repeats three times in a row is
/// contention worth surfacing rather than hiding behind more retries.
const MAX_ATTEMPTS: u32 = 3;

/// The attempts of one store operation. The `in_transaction!` macro runs the operation's transaction in a loop and hands every result to
/// [`Attempts::settle`], which decides whether to try again.
///
/// (A macro rather than a function taking an async closure: the futures of
/// closures that borrow their arguments cannot be proven `Send` today, and
/// the `Store` trait's futures must be.)
pub(super) struct Attempts {
    dialect: Dialect,
    operation: &'static str,
    started: Instant,
    attempt_number: u32,
}

impl Attempts {
    pub(super) fn new(dialect: Dialect, operation: &'static str) -> Self {
        Self {
            dialect,
            operation,
            started: Instant::now(),
            attempt_number: 1,
        }
    }

    /// Returns the operation's final result, classified, or `None` after a
    /// short pause when the attempt only collided with a concurrent
    /// transaction and should run again.
    ///
    /// Only raw backend errors that [`Dialect::is_retryable`] accepts are
    /// retried (serialization failures, deadlocks, a busy SQLite file);
    /// domain errors such as `AlreadyExists` are answers, not collisions.
    pub(super) async fn settle<T>(&mut self, result: StoreResult<T>) -> Option<StoreResult<T>> {
        let backend = self.dialect.backend().as_str();
        let operation = self.operation;
        if let Err(StoreError::Backend(error)) = &result
            && self.attempt_number < MAX_ATTEMPTS
            && self.dialect.is_retryable(error)
        {
            tracing::debug!(
                backend,
                operation,
                attempt = self.attempt_number,
                %error,
                "store transaction collided with another; retrying"
            );
            metrics::counter!(
                "flotilla_store_transaction_retries_total",
                "backend" => backend,
                "operation" => operation,
            )
            .increment(1);
            tokio::time::sleep(backoff(self.attempt_number)).await;
            self.attempt_number += 1;
            return None;
        }
        let result = result.map_err(classify);
        let outcome = match &result {
            Ok(_) => "ok",
            Err(StoreError::NotFound(_)) => "not_found",
            Err(StoreError::AlreadyExists(_)) => "already_exists",
            Err(StoreError::FailedPrecondition(_)) => "failed_precondition",
            Err(StoreError::BeforeCommit(_)) => "before_commit_failed",
            Err(StoreError::Corrupt(_) | StoreError::Backend(_) | StoreError::Migration(_)) => {
                "error"
            }
        };
        metrics::histogram!(
            "flotilla_store_transaction_duration_seconds",
            "backend" => backend,
            "operation" => operation,
            "outcome" => outcome,
        )
        .record(self.started.elapsed().as_secs_f64());
        Some(result)
    }
}

/// Fixes the output type of a transaction body's async block, so that `?`
/// inside it converts errors into [`StoreError`].
pub(super) fn body<T, F>(future: F) -> F
where
    F: Future<Output = StoreResult<T>>,
{
    future
}

/// Commits `transaction` when `result` is a success and rolls it back
/// otherwise, so that a failed operation leaves nothing behind.
pub(super) async fn finish<DB: Database, T>(
    transaction: Transaction<'static, DB>,
    result: StoreResult<T>,
) -> StoreResult<T> {
    match result {
        Ok(value) => {
            transaction.commit().await?;
            Ok(value)
        }
        Err(error) => {
            // The error being returned matters more than a failed rollback;
            // the pool discards a connection whose rollback failed.
            if let Err(rollback_error) = transaction.rollback().await {
                tracing::warn!(%rollback_error, "rolling back a failed store transaction failed");
            }
            Err(error)
        }
    }
}

/// A short, growing pause with jitter, so that colliding transactions do not
/// collide again in lockstep.
fn backoff(attempt_number: u32) -> Duration {
    let base_ms = 10u64 << attempt_number.min(6);
    Duration::from_millis(base_ms + rand::random_range(0..base_ms))
}
