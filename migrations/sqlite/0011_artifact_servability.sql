-- Artifact servability (SQLite): the same logical schema as
-- migrations/postgres/0011_artifact_servability.sql, where it is explained.
-- SQLite cannot add a table constraint to an existing table; the column's own
-- CHECK says the same.
ALTER TABLE artifacts ADD COLUMN engine_check TEXT;
ALTER TABLE artifacts ADD COLUMN unservable_reason TEXT
    CHECK (unservable_reason IS NULL OR engine_check IS NOT NULL);
