//! The queries of identity and access, written once for both backends (see
//! `sql.rs`): listing and revoking bootstrap tokens, approving a node's
//! replacement, and recording, listing and revoking API tokens by their
//! `jti`. Times are bound from the controller's clock (revocation) or read
//! back as stored, so no statement needs a backend's date functions.
//!
//! Every function runs inside the caller's transaction.

use time::OffsetDateTime;

use crate::auth::Role;
use crate::domain::{BootstrapToken, NodeName};
use crate::store::rows::{BOOTSTRAP_TOKEN_COLUMNS, BootstrapTokenRow, convert_all, corrupt};
use crate::store::sql::{self, Tx};
use crate::store::{ApiToken, Missing, StoreError, StoreResult};

pub(in crate::store) async fn list_bootstrap_tokens(
    conn: &mut Tx,
) -> StoreResult<Vec<BootstrapToken>> {
    let rows = sql::query_as::<BootstrapTokenRow>(format!(
        "SELECT {BOOTSTRAP_TOKEN_COLUMNS} FROM bootstrap_tokens ORDER BY created_at DESC, id"
    ))
    .fetch_all(&mut *conn)
    .await?;
    convert_all(rows)
}

pub(in crate::store) async fn revoke_bootstrap_token(
    conn: &mut Tx,
    id: &str,
) -> StoreResult<BootstrapToken> {
    sql::query_as::<BootstrapTokenRow>(format!(
        "UPDATE bootstrap_tokens SET revoked_at = COALESCE(revoked_at, $2) WHERE id = $1 \
         RETURNING {BOOTSTRAP_TOKEN_COLUMNS}"
    ))
    .bind(id)
    .bind(OffsetDateTime::now_utc())
    .fetch_optional(&mut *conn)
    .await?
    .ok_or_else(|| StoreError::NotFound(Missing::BootstrapToken(id.to_owned())))?
    .try_into()
}

pub(in crate::store) async fn approve_replacement(
    conn: &mut Tx,
    name: &NodeName,
) -> StoreResult<()> {
    let updated = sql::query("UPDATE nodes SET replace_approved = true WHERE name = $1")
        .bind(name.as_str())
        .execute(&mut *conn)
        .await?;
    if updated.rows_affected() == 0 {
        return Err(StoreError::NotFound(Missing::Node(name.clone())));
    }
    Ok(())
}

pub(in crate::store) async fn record_api_token(conn: &mut Tx, token: &ApiToken) -> StoreResult<()> {
    sql::query(
        "INSERT INTO api_tokens (jti, subject, role, created_by, created_at, expires_at) \
         VALUES ($1, $2, $3, $4, $5, $6)",
    )
    .bind(&token.id)
    .bind(&token.subject)
    .bind(token.role.as_str())
    .bind(&token.created_by)
    .bind(token.created_at)
    .bind(token.expires_at)
    .execute(&mut *conn)
    .await
    .map_err(|error| {
        crate::store::rows::map_sqlx_error(error, || {
            format!("api token {} already exists", token.id)
        })
    })?;
    Ok(())
}

const API_TOKEN_COLUMNS: &str =
    "jti, subject, role, created_by, created_at, expires_at, revoked_at";

#[derive(sqlx::FromRow)]
struct ApiTokenRow {
    jti: String,
    subject: String,
    role: String,
    created_by: String,
    created_at: OffsetDateTime,
    expires_at: OffsetDateTime,
    revoked_at: Option<OffsetDateTime>,
}

impl TryFrom<ApiTokenRow> for ApiToken {
    type Error = StoreError;

    fn try_from(row: ApiTokenRow) -> Result<Self, Self::Error> {
        Ok(Self {
            role: row
                .role
                .parse::<Role>()
                .map_err(|error| corrupt("api_tokens.role", &row.role, error))?,
            id: row.jti,
            subject: row.subject,
            created_by: row.created_by,
            created_at: row.created_at,
            expires_at: row.expires_at,
            revoked_at: row.revoked_at,
        })
    }
}

pub(in crate::store) async fn list_api_tokens(conn: &mut Tx) -> StoreResult<Vec<ApiToken>> {
    let rows = sql::query_as::<ApiTokenRow>(format!(
        "SELECT {API_TOKEN_COLUMNS} FROM api_tokens ORDER BY created_at DESC, jti"
    ))
    .fetch_all(&mut *conn)
    .await?;
    rows.into_iter().map(ApiToken::try_from).collect()
}

pub(in crate::store) async fn revoke_api_token(conn: &mut Tx, id: &str) -> StoreResult<ApiToken> {
    sql::query_as::<ApiTokenRow>(format!(
        "UPDATE api_tokens SET revoked_at = COALESCE(revoked_at, $2) WHERE jti = $1 \
         RETURNING {API_TOKEN_COLUMNS}"
    ))
    .bind(id)
    .bind(OffsetDateTime::now_utc())
    .fetch_optional(&mut *conn)
    .await?
    .ok_or_else(|| StoreError::NotFound(Missing::ApiToken(id.to_owned())))?
    .try_into()
}

pub(in crate::store) async fn revoked_api_token_ids(conn: &mut Tx) -> StoreResult<Vec<String>> {
    let rows: Vec<(String, OffsetDateTime)> =
        sql::query_as("SELECT jti, expires_at FROM api_tokens WHERE revoked_at IS NOT NULL")
            .fetch_all(&mut *conn)
            .await?;
    let now = OffsetDateTime::now_utc();
    Ok(rows
        .into_iter()
        .filter(|(_, expires_at)| *expires_at > now)
        .map(|(jti, _)| jti)
        .collect())
}
