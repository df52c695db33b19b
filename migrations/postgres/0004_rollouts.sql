-- Rollouts (Postgres): staged, health-gated changes of what a selection of
-- nodes serves, and the audit log.
--
-- A rollout's spec is JSON (read whole, validated by the controller when it
-- is read back); its progress is columns. `rollout_nodes` fixes, at
-- creation, which nodes it covers, in which wave, what each gets (the
-- artifact chosen for that node's memory) and, once touched, the node-level
-- assignment each had before, to restore on rollback. A node is in at most
-- one active rollout: the partial unique index enforces it even against
-- concurrent creators.
--
-- What a rollout gives a node is an ordinary node-level assignment whose
-- `rollout` column names the rollout; an operator's own node-level
-- assignment (a pin, `rollout` NULL) replaces it and overrides the rollout.
--
-- Times are Unix milliseconds, written by the controller, so that the two
-- backends share the same SQL.

CREATE TABLE rollouts (
    name         TEXT COLLATE "C" PRIMARY KEY,
    spec         JSONB NOT NULL,
    state        TEXT NOT NULL CHECK (state IN ('pending', 'progressing', 'baking', 'paused',
                     'halted', 'rolling_back', 'rolled_back', 'aborted', 'succeeded')),
    current_wave BIGINT NOT NULL CHECK (current_wave >= 0),
    wave_count   BIGINT NOT NULL CHECK (wave_count >= 0),
    bake_started_unix_ms BIGINT,
    skip_bake    BOOLEAN NOT NULL DEFAULT FALSE,
    reason       TEXT,
    -- The fleet generation of the rollout's latest change.
    generation   BIGINT NOT NULL,
    created_by   TEXT NOT NULL,
    created_unix_ms BIGINT NOT NULL,
    updated_unix_ms BIGINT NOT NULL
);

CREATE TABLE rollout_nodes (
    rollout   TEXT COLLATE "C" NOT NULL REFERENCES rollouts (name) ON DELETE CASCADE,
    node_name TEXT COLLATE "C" NOT NULL,
    wave      BIGINT NOT NULL CHECK (wave >= 0),
    state     TEXT NOT NULL CHECK (state IN ('waiting', 'updating', 'ready', 'failed',
                  'unschedulable', 'pinned', 'rolled_back')),
    -- The controller's `DesiredAssignment` chosen for this node; NULL when
    -- unschedulable.
    desired   JSONB,
    -- The node-level assignment the node had before the rollout touched it.
    previous  JSONB,
    reason    TEXT,
    -- Cleared when the rollout ends, releasing the node.
    active    BOOLEAN NOT NULL DEFAULT TRUE,
    PRIMARY KEY (rollout, node_name)
);
CREATE UNIQUE INDEX rollout_nodes_one_active ON rollout_nodes (node_name) WHERE active;

CREATE TABLE events (
    id        BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    at_unix_ms BIGINT NOT NULL,
    actor     TEXT NOT NULL,
    rollout   TEXT COLLATE "C",
    node_name TEXT COLLATE "C",
    action    TEXT NOT NULL,
    message   TEXT NOT NULL
);
CREATE INDEX events_by_rollout ON events (rollout, id);

ALTER TABLE assignments ADD COLUMN rollout TEXT COLLATE "C";
