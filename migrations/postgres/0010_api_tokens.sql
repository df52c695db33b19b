-- API tokens (Postgres): every human/API token the controller mints is
-- recorded by its `jti`, so that it can be listed and revoked. The token
-- string itself is never stored. A revoked token is refused on every request
-- (the controller caches the revoked ids and re-reads them every few
-- seconds). The same logical schema as migrations/sqlite/0010_api_tokens.sql.

CREATE TABLE api_tokens (
    jti         TEXT COLLATE "C" PRIMARY KEY,
    subject     TEXT NOT NULL,
    role        TEXT NOT NULL CHECK (role IN ('viewer', 'operator', 'admin')),
    created_by  TEXT NOT NULL,
    created_at  TIMESTAMPTZ NOT NULL DEFAULT now(),
    expires_at  TIMESTAMPTZ NOT NULL,
    revoked_at  TIMESTAMPTZ
);
CREATE INDEX api_tokens_revoked ON api_tokens (jti) WHERE revoked_at IS NOT NULL;
