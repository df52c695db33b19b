-- The sync stream (SQLite): assignments, each node's desired state and
-- generation, what its agent last reported, and down-sampled health. The
-- same logical schema as migrations/postgres/0003_sync.sql; keep the two in
-- step. Generations come from the single row of `fleet_generation`, updated
-- inside `BEGIN IMMEDIATE` transactions, so they only grow.

CREATE TABLE fleet_generation (
    singleton INTEGER PRIMARY KEY CHECK (singleton = 1),
    value     INTEGER NOT NULL CHECK (value >= 0)
) STRICT;
INSERT INTO fleet_generation (singleton, value) VALUES (1, 0);

CREATE TABLE assignments (
    generation INTEGER PRIMARY KEY,
    node_name  TEXT,
    -- JSON text {"key": "value"} with keys in sorted order.
    selector   TEXT,
    desired    TEXT NOT NULL,
    created_by TEXT NOT NULL,
    created_at TEXT NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%fZ', 'now')),
    CONSTRAINT assignments_one_target CHECK ((node_name IS NULL) <> (selector IS NULL))
) STRICT;
CREATE UNIQUE INDEX assignments_node_key ON assignments (node_name) WHERE node_name IS NOT NULL;
CREATE UNIQUE INDEX assignments_selector_key ON assignments (selector) WHERE selector IS NOT NULL;

ALTER TABLE nodes ADD COLUMN refresh_secret_hash BLOB CHECK (length(refresh_secret_hash) = 32);
ALTER TABLE nodes ADD COLUMN desired_generation INTEGER NOT NULL DEFAULT 0;
ALTER TABLE nodes ADD COLUMN desired TEXT;
ALTER TABLE nodes ADD COLUMN observed TEXT;
ALTER TABLE nodes ADD COLUMN health TEXT;
ALTER TABLE nodes ADD COLUMN last_heartbeat_unix_ms INTEGER;

CREATE TABLE node_health_minutes (
    node_name   TEXT NOT NULL,
    minute_unix INTEGER NOT NULL,
    samples     INTEGER NOT NULL,
    cpu_utilisation_percent REAL NOT NULL,
    memory_used_bytes_max   INTEGER NOT NULL,
    gpu_utilisation_percent REAL,
    gpu_temperature_celsius_max REAL,
    throttled   INTEGER NOT NULL,
    PRIMARY KEY (node_name, minute_unix)
) STRICT;
