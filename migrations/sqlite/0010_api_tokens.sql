-- API tokens (SQLite): the same logical schema as
-- migrations/postgres/0010_api_tokens.sql, where it is explained.

CREATE TABLE api_tokens (
    jti         TEXT PRIMARY KEY,
    subject     TEXT NOT NULL,
    role        TEXT NOT NULL CHECK (role IN ('viewer', 'operator', 'admin')),
    created_by  TEXT NOT NULL,
    created_at  TEXT NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%fZ', 'now')),
    expires_at  TEXT NOT NULL,
    revoked_at  TEXT
) STRICT;
