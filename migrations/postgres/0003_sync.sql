-- The sync stream (Postgres): assignments, each node's desired state and
-- generation, what its agent last reported, and down-sampled health.
--
-- Generations come from the single row of `fleet_generation`: every change
-- of any node's desired state takes the next value under that row's lock, so
-- generations only grow, across restarts and controller replicas, and
-- concurrent assignment changes are serialised.
--
-- Heartbeats are not written one by one: the controller keeps the latest
-- sample per node in memory and writes `last_heartbeat_unix_ms`, `health`
-- and `observed` in batches; `node_health_minutes` holds one row per node
-- and minute.

CREATE TABLE fleet_generation (
    singleton BOOLEAN PRIMARY KEY DEFAULT TRUE CHECK (singleton),
    value     BIGINT NOT NULL CHECK (value >= 0)
);
INSERT INTO fleet_generation (singleton, value) VALUES (TRUE, 0);

CREATE TABLE assignments (
    -- The generation taken when the assignment was made; identifies it.
    generation BIGINT PRIMARY KEY,
    node_name  TEXT COLLATE "C",
    -- {"key": "value"}: nodes carrying all of these labels.
    selector   JSONB,
    -- The controller's `DesiredAssignment`: resolved artifact and prompt.
    desired    JSONB NOT NULL,
    created_by TEXT NOT NULL,
    created_at TIMESTAMPTZ NOT NULL DEFAULT now(),
    CONSTRAINT assignments_one_target CHECK ((node_name IS NULL) <> (selector IS NULL))
);
-- One assignment per target: a new one replaces the old in the same
-- transaction.
CREATE UNIQUE INDEX assignments_node_key ON assignments (node_name) WHERE node_name IS NOT NULL;
CREATE UNIQUE INDEX assignments_selector_key ON assignments (selector) WHERE selector IS NOT NULL;

ALTER TABLE nodes
    -- blake3 of the node's refresh secret (RenewCredential); NULL for nodes
    -- enrolled before it existed, which must re-enrol to renew offline.
    ADD COLUMN refresh_secret_hash BYTEA CHECK (octet_length(refresh_secret_hash) = 32),
    ADD COLUMN desired_generation BIGINT NOT NULL DEFAULT 0,
    -- The controller's `DesiredAssignment`, or NULL for "serve nothing".
    ADD COLUMN desired JSONB,
    ADD COLUMN observed JSONB,
    ADD COLUMN health JSONB,
    ADD COLUMN last_heartbeat_unix_ms BIGINT;

CREATE TABLE node_health_minutes (
    node_name   TEXT COLLATE "C" NOT NULL,
    minute_unix BIGINT NOT NULL,
    samples     BIGINT NOT NULL,
    cpu_utilisation_percent DOUBLE PRECISION NOT NULL,
    memory_used_bytes_max   BIGINT NOT NULL,
    gpu_utilisation_percent DOUBLE PRECISION,
    gpu_temperature_celsius_max DOUBLE PRECISION,
    throttled   BOOLEAN NOT NULL,
    PRIMARY KEY (node_name, minute_unix)
);
