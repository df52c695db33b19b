-- The model registry and system prompts (SQLite). The same logical schema as
-- migrations/postgres/0001_registry.sql; keep the two in step.
--
-- Timestamps are UTC RFC 3339 text with millisecond precision (what
-- `strftime('%Y-%m-%dT%H:%M:%fZ')` writes), so they sort as text and read back
-- as `time::OffsetDateTime`. Text compares with the BINARY collation (byte
-- order), which is what the Postgres schema asks for with COLLATE "C".
--
-- STRICT tables make SQLite refuse values of the wrong type instead of
-- storing them silently.

CREATE TABLE models (
    id          INTEGER PRIMARY KEY,
    name        TEXT NOT NULL,
    description TEXT NOT NULL DEFAULT '',
    created_at  TEXT NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%fZ', 'now')),
    CONSTRAINT models_name_key UNIQUE (name)
) STRICT;

CREATE TABLE model_versions (
    id           INTEGER PRIMARY KEY,
    model_id     INTEGER NOT NULL REFERENCES models (id),
    -- Canonical semver text (`semver::Version::to_string()`).
    version      TEXT NOT NULL,
    state        TEXT NOT NULL DEFAULT 'draft'
                 CHECK (state IN ('draft', 'published', 'deprecated', 'yanked')),
    notes        TEXT NOT NULL DEFAULT '',
    created_at   TEXT NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%fZ', 'now')),
    -- Set when the version is first published; every state but draft has
    -- been published, since the lifecycle only leaves draft that way.
    published_at TEXT,
    CONSTRAINT model_versions_model_id_version_key UNIQUE (model_id, version),
    CONSTRAINT model_versions_published_at_check CHECK ((state = 'draft') = (published_at IS NULL))
) STRICT;

-- One row per distinct stored blob; the bytes live in the object store under
-- `blobs/<digest>`. Several artifacts (of different models) may share one.
CREATE TABLE blobs (
    digest     TEXT PRIMARY KEY
               CHECK (length(digest) = 64 AND digest NOT GLOB '*[^0-9a-f]*'),
    size_bytes INTEGER NOT NULL CHECK (size_bytes >= 0),
    created_at TEXT NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%fZ', 'now'))
) STRICT;

CREATE TABLE artifacts (
    id                    INTEGER PRIMARY KEY,
    version_id            INTEGER NOT NULL REFERENCES model_versions (id),
    digest                TEXT NOT NULL REFERENCES blobs (digest),
    format                TEXT NOT NULL,
    quantization          TEXT NOT NULL,
    architecture          TEXT NOT NULL,
    parameter_count       INTEGER NOT NULL CHECK (parameter_count >= 0),
    context_length        INTEGER CHECK (context_length >= 0),
    memory_estimate_bytes INTEGER NOT NULL CHECK (memory_estimate_bytes >= 0),
    created_at            TEXT NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%fZ', 'now')),
    CONSTRAINT artifacts_version_id_digest_key UNIQUE (version_id, digest),
    CONSTRAINT artifacts_version_id_quantization_key UNIQUE (version_id, quantization)
) STRICT;

-- "Which artifacts are these bytes?" (garbage collection, agents reporting
-- what they hold) looks artifacts up by digest alone.
CREATE INDEX artifacts_digest_idx ON artifacts (digest);

-- Every change to a prompt is a new immutable row; the latest is the highest
-- version of a name.
CREATE TABLE system_prompts (
    id            INTEGER PRIMARY KEY,
    name          TEXT NOT NULL,
    version       INTEGER NOT NULL CHECK (version >= 1),
    text          TEXT NOT NULL,
    chat_template TEXT,
    created_at    TEXT NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%fZ', 'now')),
    CONSTRAINT system_prompts_name_version_key UNIQUE (name, version)
) STRICT;
