-- Rollouts (SQLite): the same logical schema as
-- migrations/postgres/0004_rollouts.sql; keep the two in step.

CREATE TABLE rollouts (
    name         TEXT PRIMARY KEY,
    spec         TEXT NOT NULL,
    state        TEXT NOT NULL CHECK (state IN ('pending', 'progressing', 'baking', 'paused',
                     'halted', 'rolling_back', 'rolled_back', 'aborted', 'succeeded')),
    current_wave INTEGER NOT NULL CHECK (current_wave >= 0),
    wave_count   INTEGER NOT NULL CHECK (wave_count >= 0),
    bake_started_unix_ms INTEGER,
    skip_bake    INTEGER NOT NULL DEFAULT 0,
    reason       TEXT,
    generation   INTEGER NOT NULL,
    created_by   TEXT NOT NULL,
    created_unix_ms INTEGER NOT NULL,
    updated_unix_ms INTEGER NOT NULL
) STRICT;

CREATE TABLE rollout_nodes (
    rollout   TEXT NOT NULL REFERENCES rollouts (name) ON DELETE CASCADE,
    node_name TEXT NOT NULL,
    wave      INTEGER NOT NULL CHECK (wave >= 0),
    state     TEXT NOT NULL CHECK (state IN ('waiting', 'updating', 'ready', 'failed',
                  'unschedulable', 'pinned', 'rolled_back')),
    desired   TEXT,
    previous  TEXT,
    reason    TEXT,
    active    INTEGER NOT NULL DEFAULT 1,
    PRIMARY KEY (rollout, node_name)
) STRICT;
CREATE UNIQUE INDEX rollout_nodes_one_active ON rollout_nodes (node_name) WHERE active;

CREATE TABLE events (
    id        INTEGER PRIMARY KEY AUTOINCREMENT,
    at_unix_ms INTEGER NOT NULL,
    actor     TEXT NOT NULL,
    rollout   TEXT,
    node_name TEXT,
    action    TEXT NOT NULL,
    message   TEXT NOT NULL
) STRICT;
CREATE INDEX events_by_rollout ON events (rollout, id);

ALTER TABLE assignments ADD COLUMN rollout TEXT;
