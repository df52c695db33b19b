-- Each minute of health history also keeps what the node served in it
-- (tokens per second, longest queue, slowest first token, requests by
-- outcome) as one JSON object; NULL for minutes without inference figures.
ALTER TABLE node_health_minutes ADD COLUMN inference JSONB;
