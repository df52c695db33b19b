-- Escalation policies (issue 20): versioned like system prompts; every
-- change is a new immutable row, the latest is the highest version of a
-- name. `spec` is the fleet contract's policy document (JSON): whether the
-- node may call out, the upstream, the triggers and what to scrub. The
-- upstream's credential is in it only as a reference (`env:NAME`,
-- `file:/path`) that the node resolves: the controller refuses a document
-- carrying a key, so no key is ever stored here.
CREATE TABLE escalation_policies (
    id         BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    name       TEXT COLLATE "C" NOT NULL,
    version    INTEGER NOT NULL CHECK (version >= 1),
    spec       JSONB NOT NULL CHECK (jsonb_typeof(spec) = 'object'),
    created_at TIMESTAMPTZ NOT NULL DEFAULT now(),
    CONSTRAINT escalation_policies_name_version_key UNIQUE (name, version)
);
