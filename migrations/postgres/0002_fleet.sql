-- The fleet (Postgres): bootstrap tokens and enrolled nodes.
--
-- A bootstrap token row holds a blake3 hash of the token's secret, never the
-- secret: a leaked database does not let anyone enrol. `uses_left` only goes
-- down, under a row lock taken by the enrolling transaction, so concurrent
-- enrolments cannot overuse a token.
--
-- A node row is its identity and what its agent reported at enrolment.
-- Later migrations add what the sync stream maintains (last heartbeat,
-- desired and observed generation) as columns of this table.

CREATE TABLE bootstrap_tokens (
    id          TEXT COLLATE "C" PRIMARY KEY,
    secret_hash BYTEA NOT NULL CHECK (octet_length(secret_hash) = 32),
    expires_at  TIMESTAMPTZ NOT NULL,
    uses_left   INTEGER NOT NULL CHECK (uses_left >= 0),
    created_by  TEXT NOT NULL,
    created_at  TIMESTAMPTZ NOT NULL DEFAULT now()
);

CREATE TABLE nodes (
    id            BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    name          TEXT COLLATE "C" NOT NULL,
    -- {"key": "value", ...}, validated by the controller's `Labels`.
    labels        JSONB NOT NULL DEFAULT '{}',
    -- The controller's `NodeInventory` as JSON: read whole, and new hardware
    -- fields must not need a migration.
    inventory     JSONB NOT NULL DEFAULT '{}',
    agent_version TEXT NOT NULL DEFAULT '',
    status        TEXT NOT NULL CHECK (status IN ('pending', 'active', 'cordoned')),
    enrolled_at   TIMESTAMPTZ NOT NULL DEFAULT now(),
    -- Which token the node last enrolled with, for audit; not a foreign key
    -- so that expired tokens can be deleted.
    bootstrap_token_id TEXT,
    CONSTRAINT nodes_name_key UNIQUE (name)
);
