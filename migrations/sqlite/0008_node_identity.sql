-- Node identity (SQLite): the same logical schema as
-- migrations/postgres/0008_node_identity.sql, where the columns are
-- explained; keep the two in step.

ALTER TABLE bootstrap_tokens ADD COLUMN node_pattern TEXT;
ALTER TABLE bootstrap_tokens ADD COLUMN may_replace INTEGER NOT NULL DEFAULT 0
    CHECK (may_replace IN (0, 1));
ALTER TABLE bootstrap_tokens ADD COLUMN revoked_at TEXT;

ALTER TABLE nodes ADD COLUMN credential_generation INTEGER NOT NULL DEFAULT 0;
ALTER TABLE nodes ADD COLUMN replace_approved INTEGER NOT NULL DEFAULT 0
    CHECK (replace_approved IN (0, 1));
