-- The fleet (SQLite): bootstrap tokens and enrolled nodes. The same logical
-- schema as migrations/postgres/0002_fleet.sql; keep the two in step.
--
-- A bootstrap token row holds a blake3 hash of the token's secret, never the
-- secret. `uses_left` only goes down, inside a `BEGIN IMMEDIATE` transaction
-- that holds the database's write lock, so concurrent enrolments cannot
-- overuse a token. Timestamps are UTC RFC 3339 text as in 0001.

CREATE TABLE bootstrap_tokens (
    id          TEXT PRIMARY KEY,
    secret_hash BLOB NOT NULL CHECK (length(secret_hash) = 32),
    expires_at  TEXT NOT NULL,
    uses_left   INTEGER NOT NULL CHECK (uses_left >= 0),
    created_by  TEXT NOT NULL,
    created_at  TEXT NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%fZ', 'now'))
) STRICT;

CREATE TABLE nodes (
    id            INTEGER PRIMARY KEY,
    name          TEXT NOT NULL,
    -- JSON text: {"key": "value", ...}, validated by the controller's `Labels`.
    labels        TEXT NOT NULL DEFAULT '{}',
    -- The controller's `NodeInventory` as JSON text.
    inventory     TEXT NOT NULL DEFAULT '{}',
    agent_version TEXT NOT NULL DEFAULT '',
    status        TEXT NOT NULL CHECK (status IN ('pending', 'active', 'cordoned')),
    enrolled_at   TEXT NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%fZ', 'now')),
    bootstrap_token_id TEXT,
    CONSTRAINT nodes_name_key UNIQUE (name)
) STRICT;
