-- Whether the engine can serve an artifact, judged from its GGUF header at
-- upload (issue 14): `engine_check` names the engine version that judged it
-- (NULL for artifacts uploaded before the check existed, which resolution
-- treats as servable), and `unservable_reason` says why it cannot, in the
-- engine's own words. Resolution never picks an unservable artifact.
ALTER TABLE artifacts ADD COLUMN engine_check TEXT;
ALTER TABLE artifacts ADD COLUMN unservable_reason TEXT;
ALTER TABLE artifacts ADD CONSTRAINT artifacts_unservable_reason_checked
    CHECK (unservable_reason IS NULL OR engine_check IS NOT NULL);
