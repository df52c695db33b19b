-- Node identity (Postgres): bootstrap tokens bound to node names, explicit
-- approval of a replacement, and a credential generation per node. The same
-- logical schema as migrations/sqlite/0008_node_identity.sql.
--
-- `node_pattern`: the node name (or glob such as `rack7-*`) a token may enrol;
-- NULL: any name. `may_replace`: the token may replace the existing node
-- named exactly `node_pattern` (`flotilla node token create --replace NAME`).
-- `revoked_at`: set by `flotilla node token revoke`; a revoked token enrols
-- nothing.
--
-- `credential_generation` is written into every node credential (`gen`) and
-- compared on every Sync, in-stream renewal and refresh: a replacement or
-- removal takes a new value, so every earlier credential stops working at
-- once. Values come from `fleet_generation`, so they only grow and never
-- repeat, even for a name removed and enrolled again.
-- `replace_approved`: an operator allowed the next enrolment under this name
-- to replace the node (`flotilla node approve-replace NAME`); consumed by it.

ALTER TABLE bootstrap_tokens ADD COLUMN node_pattern TEXT;
ALTER TABLE bootstrap_tokens ADD COLUMN may_replace BOOLEAN NOT NULL DEFAULT false;
ALTER TABLE bootstrap_tokens ADD COLUMN revoked_at TIMESTAMPTZ;
ALTER TABLE bootstrap_tokens ADD CONSTRAINT bootstrap_tokens_replace_needs_name
    CHECK (NOT may_replace OR node_pattern IS NOT NULL);

ALTER TABLE nodes ADD COLUMN credential_generation BIGINT NOT NULL DEFAULT 0;
ALTER TABLE nodes ADD COLUMN replace_approved BOOLEAN NOT NULL DEFAULT false;
