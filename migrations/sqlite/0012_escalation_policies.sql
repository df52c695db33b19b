-- Escalation policies (SQLite): the same logical schema as
-- migrations/postgres/0012_escalation_policies.sql, where it is explained.
CREATE TABLE escalation_policies (
    id         INTEGER PRIMARY KEY,
    name       TEXT NOT NULL,
    version    INTEGER NOT NULL CHECK (version >= 1),
    spec       TEXT NOT NULL CHECK (json_valid(spec) AND json_type(spec) = 'object'),
    created_at TEXT NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%fZ', 'now')),
    CONSTRAINT escalation_policies_name_version_key UNIQUE (name, version)
) STRICT;
