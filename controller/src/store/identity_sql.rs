//! The SQL of identity and access that is the same text on Postgres and
//! SQLite: listing and revoking bootstrap tokens, approving a node's
//! replacement, and recording, listing and revoking API tokens by their
//! `jti`. Times are bound from the controller's clock (revocation) or read
//! back as stored, so no statement needs a backend's date functions.
//! [`identity_queries!`] expands these functions once per backend, like
//! `fleet_sql.rs`.
//!
//! Every function runs inside the caller's transaction.

macro_rules! identity_queries {
    ($conn:ty) => {
        use time::OffsetDateTime;

        use crate::auth::Role;
        use crate::domain::{BootstrapToken, NodeName};
        use crate::store::rows::{BOOTSTRAP_TOKEN_COLUMNS, BootstrapTokenRow, convert_all, corrupt};
        use crate::store::{ApiToken, StoreError, StoreResult};

        pub(crate) async fn list_bootstrap_tokens(
            conn: &mut $conn,
        ) -> StoreResult<Vec<BootstrapToken>> {
            let rows = sqlx::query_as::<_, BootstrapTokenRow>(&format!(
                "SELECT {BOOTSTRAP_TOKEN_COLUMNS} FROM bootstrap_tokens ORDER BY created_at DESC, id"
            ))
            .fetch_all(&mut *conn)
            .await?;
            convert_all(rows)
        }

        pub(crate) async fn revoke_bootstrap_token(
            conn: &mut $conn,
            id: &str,
        ) -> StoreResult<BootstrapToken> {
            sqlx::query_as::<_, BootstrapTokenRow>(&format!(
                "UPDATE bootstrap_tokens SET revoked_at = COALESCE(revoked_at, $2) WHERE id = $1 \
                 RETURNING {BOOTSTRAP_TOKEN_COLUMNS}"
            ))
            .bind(id)
            .bind(OffsetDateTime::now_utc())
            .fetch_optional(&mut *conn)
            .await?
            .ok_or_else(|| StoreError::NotFound(format!("bootstrap token {id} not found")))?
            .try_into()
        }

        pub(crate) async fn approve_replacement(
            conn: &mut $conn,
            name: &NodeName,
        ) -> StoreResult<()> {
            let updated = sqlx::query("UPDATE nodes SET replace_approved = true WHERE name = $1")
                .bind(name.as_str())
                .execute(&mut *conn)
                .await?;
            if updated.rows_affected() == 0 {
                return Err(StoreError::NotFound(format!("node {name} not found")));
            }
            Ok(())
        }

        pub(crate) async fn record_api_token(conn: &mut $conn, token: &ApiToken) -> StoreResult<()> {
            sqlx::query(
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

        pub(crate) async fn list_api_tokens(conn: &mut $conn) -> StoreResult<Vec<ApiToken>> {
            let rows = sqlx::query_as::<_, ApiTokenRow>(&format!(
                "SELECT {API_TOKEN_COLUMNS} FROM api_tokens ORDER BY created_at DESC, jti"
            ))
            .fetch_all(&mut *conn)
            .await?;
            rows.into_iter().map(ApiToken::try_from).collect()
        }

        pub(crate) async fn revoke_api_token(conn: &mut $conn, id: &str) -> StoreResult<ApiToken> {
            sqlx::query_as::<_, ApiTokenRow>(&format!(
                "UPDATE api_tokens SET revoked_at = COALESCE(revoked_at, $2) WHERE jti = $1 \
                 RETURNING {API_TOKEN_COLUMNS}"
            ))
            .bind(id)
            .bind(OffsetDateTime::now_utc())
            .fetch_optional(&mut *conn)
            .await?
            .ok_or_else(|| StoreError::NotFound(format!("api token {id} not found")))?
            .try_into()
        }

        pub(crate) async fn revoked_api_token_ids(conn: &mut $conn) -> StoreResult<Vec<String>> {
            let rows: Vec<(String, OffsetDateTime)> = sqlx::query_as(
                "SELECT jti, expires_at FROM api_tokens WHERE revoked_at IS NOT NULL",
            )
            .fetch_all(&mut *conn)
            .await?;
            let now = OffsetDateTime::now_utc();
            Ok(rows
                .into_iter()
                .filter(|(_, expires_at)| *expires_at > now)
                .map(|(jti, _)| jti)
                .collect())
        }
    };
}

pub(super) use identity_queries;
