//! The queries of escalation policies, written once for both backends (see
//! `sql.rs`): versions are appended like system prompts' (one writer per
//! name at a time, the unique `(name, version)` constraint as the
//! guarantee), and a policy's content is kept as the fleet contract's JSON
//! document in `escalation_policies.spec` (migration 0012). That document
//! holds the upstream's credential as a reference (`env:NAME`,
//! `file:/path`), never a key.
//!
//! Every function runs inside the caller's transaction.

use sqlx::types::Json;
use time::OffsetDateTime;

use super::rows::{convert_all, corrupt, map_sqlx_error, overfetch, parse_prompt_version_cursor};
use super::sql::{self, Tx};
use super::{Missing, StoreError, StoreResult};
use crate::domain::{EscalationPolicy, Page, PageRequest, PolicyName, PolicySpec, PolicySummary};
use flotilla_contract::PolicyDocument;

const SELECT_POLICIES: &str = "SELECT name, version, spec, created_at FROM escalation_policies";

#[derive(Debug, sqlx::FromRow)]
struct PolicyRow {
    name: String,
    version: i32,
    spec: Json<PolicyDocument>,
    created_at: OffsetDateTime,
}

impl TryFrom<PolicyRow> for EscalationPolicy {
    type Error = StoreError;

    fn try_from(row: PolicyRow) -> Result<Self, Self::Error> {
        let name = parse_policy_name(&row.name)?;
        let spec = PolicySpec::try_from(row.spec.0)
            .map_err(|error| corrupt("escalation_policies.spec", format_args!("{name}"), error))?;
        Ok(Self {
            version: policy_version("escalation_policies.version", row.version)?,
            name,
            spec,
            created_at: row.created_at,
        })
    }
}

#[derive(Debug, sqlx::FromRow)]
struct PolicySummaryRow {
    name: String,
    latest_version: i32,
    updated_at: OffsetDateTime,
}

impl TryFrom<PolicySummaryRow> for PolicySummary {
    type Error = StoreError;

    fn try_from(row: PolicySummaryRow) -> Result<Self, Self::Error> {
        Ok(Self {
            name: parse_policy_name(&row.name)?,
            latest_version: policy_version("escalation_policies.version", row.latest_version)?,
            updated_at: row.updated_at,
        })
    }
}

fn parse_policy_name(name: &str) -> Result<PolicyName, StoreError> {
    name.parse()
        .map_err(|error| corrupt("escalation_policies.name", format_args!("{name:?}"), error))
}

fn policy_version(column: &str, value: i32) -> Result<u32, StoreError> {
    u32::try_from(value)
        .ok()
        .filter(|version| *version >= 1)
        .ok_or_else(|| corrupt(column, value, "policy versions start at 1"))
}

/// Policy versions are `u32` in the domain and `INTEGER` (i32) in Postgres.
fn policy_version_to_db(name: &PolicyName, version: u32) -> Result<i32, StoreError> {
    i32::try_from(version).map_err(|_| {
        StoreError::FailedPrecondition(format!(
            "policy {name} cannot have a version above {}",
            i32::MAX
        ))
    })
}

/// Appends the next version of `name`. A concurrent creator that took the
/// same number makes this `AlreadyExists`, which the caller retries.
pub(in crate::store) async fn create_policy_version(
    conn: &mut Tx,
    name: &PolicyName,
    spec: &PolicySpec,
) -> StoreResult<EscalationPolicy> {
    // Creators of one policy take turns (a lock keyed by its name on
    // Postgres, the write lock on SQLite), so each reads the previous
    // creator's version.
    if let Some(lock) = conn.dialect().keyed_lock() {
        sql::query(lock)
            .bind(format!("flotilla.escalation_policies/{name}"))
            .execute(&mut *conn)
            .await?;
    }
    let latest = sql::query_scalar::<i32>(
        "SELECT COALESCE(MAX(version), 0) FROM escalation_policies WHERE name = $1",
    )
    .bind(name.as_str())
    .fetch_one(&mut *conn)
    .await?;
    let next = latest.checked_add(1).ok_or_else(|| {
        StoreError::FailedPrecondition(format!("policy {name} has reached its last version number"))
    })?;
    sql::query_as::<PolicyRow>(
        "INSERT INTO escalation_policies (name, version, spec) VALUES ($1, $2, $3) \
         RETURNING name, version, spec, created_at",
    )
    .bind(name.as_str())
    .bind(next)
    .bind(Json(PolicyDocument::from(spec)))
    .fetch_one(&mut *conn)
    .await
    .map_err(|error| {
        map_sqlx_error(error, || {
            format!("version {next} of policy {name} was created concurrently")
        })
    })?
    .try_into()
}

pub(in crate::store) async fn get_policy(
    conn: &mut Tx,
    name: &PolicyName,
    version: Option<u32>,
) -> StoreResult<Option<EscalationPolicy>> {
    let row = match version {
        Some(version) => {
            sql::query_as::<PolicyRow>(format!(
                "{SELECT_POLICIES} WHERE name = $1 AND version = $2"
            ))
            .bind(name.as_str())
            .bind(policy_version_to_db(name, version)?)
            .fetch_optional(&mut *conn)
            .await?
        }
        None => {
            sql::query_as::<PolicyRow>(format!(
                "{SELECT_POLICIES} WHERE name = $1 ORDER BY version DESC LIMIT 1"
            ))
            .bind(name.as_str())
            .fetch_optional(&mut *conn)
            .await?
        }
    };
    row.map(EscalationPolicy::try_from).transpose()
}

pub(in crate::store) async fn list_policies(
    conn: &mut Tx,
    page: &PageRequest,
) -> StoreResult<Page<PolicySummary>> {
    let rows = sql::query_as::<PolicySummaryRow>(
        "SELECT p.name, p.version AS latest_version, p.created_at AS updated_at \
         FROM escalation_policies p \
         WHERE p.name > $1 \
           AND p.version = (SELECT MAX(q.version) FROM escalation_policies q \
                            WHERE q.name = p.name) \
         ORDER BY p.name LIMIT $2",
    )
    .bind(page.after.as_deref().unwrap_or(""))
    .bind(overfetch(page.limit))
    .fetch_all(&mut *conn)
    .await?;
    let policies: Vec<PolicySummary> = convert_all(rows)?;
    Ok(Page::from_overfetched(policies, page.limit, |policy| {
        policy.name.to_string()
    }))
}

pub(in crate::store) async fn list_policy_versions(
    conn: &mut Tx,
    name: &PolicyName,
    page: &PageRequest,
) -> StoreResult<Page<EscalationPolicy>> {
    // The cursor is the last version number of the previous page, as for
    // prompt versions.
    let before = page
        .after
        .as_deref()
        .map(parse_prompt_version_cursor)
        .transpose()?;
    let rows = sql::query_as::<PolicyRow>(format!(
        "{SELECT_POLICIES} WHERE name = $1 AND version < $2 ORDER BY version DESC LIMIT $3"
    ))
    .bind(name.as_str())
    .bind(before.map_or(i64::from(i32::MAX) + 1, i64::from))
    .bind(overfetch(page.limit))
    .fetch_all(&mut *conn)
    .await?;
    if rows.is_empty() && before.is_none() {
        return Err(StoreError::NotFound(Missing::Policy(name.clone())));
    }
    let policies: Vec<EscalationPolicy> = convert_all(rows)?;
    Ok(Page::from_overfetched(policies, page.limit, |policy| {
        policy.version.to_string()
    }))
}
