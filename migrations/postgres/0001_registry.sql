-- The model registry and system prompts (Postgres).
--
-- Invariants live here rather than in application code, so that several
-- controller replicas writing at once cannot break them: names and versions
-- are unique, artifacts hang off versions and blobs by foreign key, and a
-- version has at most one artifact per digest and per quantization.
--
-- Names are compared with the "C" collation (byte order) so that keyset
-- pagination orders exactly as the SQLite backend does, whatever the
-- database's default locale.

CREATE TABLE models (
    id          BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    name        TEXT COLLATE "C" NOT NULL,
    description TEXT NOT NULL DEFAULT '',
    created_at  TIMESTAMPTZ NOT NULL DEFAULT now(),
    CONSTRAINT models_name_key UNIQUE (name)
);

CREATE TABLE model_versions (
    id           BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    model_id     BIGINT NOT NULL REFERENCES models (id),
    -- Canonical semver text (`semver::Version::to_string()`).
    version      TEXT NOT NULL,
    state        TEXT NOT NULL DEFAULT 'draft'
                 CHECK (state IN ('draft', 'published', 'deprecated', 'yanked')),
    notes        TEXT NOT NULL DEFAULT '',
    created_at   TIMESTAMPTZ NOT NULL DEFAULT now(),
    -- Set when the version is first published; every state but draft has
    -- been published, since the lifecycle only leaves draft that way.
    published_at TIMESTAMPTZ,
    CONSTRAINT model_versions_model_id_version_key UNIQUE (model_id, version),
    CONSTRAINT model_versions_published_at_check CHECK ((state = 'draft') = (published_at IS NULL))
);

-- One row per distinct stored blob; the bytes live in the object store under
-- `blobs/<digest>`. Several artifacts (of different models) may share one.
CREATE TABLE blobs (
    digest     TEXT PRIMARY KEY CHECK (digest ~ '^[0-9a-f]{64}$'),
    size_bytes BIGINT NOT NULL CHECK (size_bytes >= 0),
    created_at TIMESTAMPTZ NOT NULL DEFAULT now()
);

CREATE TABLE artifacts (
    id                    BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    version_id            BIGINT NOT NULL REFERENCES model_versions (id),
    digest                TEXT NOT NULL REFERENCES blobs (digest),
    format                TEXT NOT NULL,
    quantization          TEXT NOT NULL,
    architecture          TEXT NOT NULL,
    parameter_count       BIGINT NOT NULL CHECK (parameter_count >= 0),
    context_length        BIGINT CHECK (context_length >= 0),
    memory_estimate_bytes BIGINT NOT NULL CHECK (memory_estimate_bytes >= 0),
    created_at            TIMESTAMPTZ NOT NULL DEFAULT now(),
    CONSTRAINT artifacts_version_id_digest_key UNIQUE (version_id, digest),
    CONSTRAINT artifacts_version_id_quantization_key UNIQUE (version_id, quantization)
);

-- "Which artifacts are these bytes?" (garbage collection, agents reporting
-- what they hold) looks artifacts up by digest alone.
CREATE INDEX artifacts_digest_idx ON artifacts (digest);

-- Every change to a prompt is a new immutable row; the latest is the highest
-- version of a name.
CREATE TABLE system_prompts (
    id            BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    name          TEXT COLLATE "C" NOT NULL,
    version       INTEGER NOT NULL CHECK (version >= 1),
    text          TEXT NOT NULL,
    chat_template TEXT,
    created_at    TIMESTAMPTZ NOT NULL DEFAULT now(),
    CONSTRAINT system_prompts_name_version_key UNIQUE (name, version)
);
