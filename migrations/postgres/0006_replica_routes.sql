-- Routing between controller replicas (Postgres only: a SQLite database has
-- one controller). Each replica keeps here the routing directory entries of
-- the nodes streaming to it, refreshes `seen_at` every second while it
-- lives, and reads the other replicas' fresh rows, so that an agent learns
-- of every serving peer whichever replica it streams to.
--
-- UNLOGGED: the rows are rewritten every few seconds and worth nothing after
-- a crash or a failover, where the table starts empty and every live
-- replica writes its row again within a second. WAL for them would be waste.
CREATE UNLOGGED TABLE replica_routes (
    replica    TEXT PRIMARY KEY,
    routes     JSONB NOT NULL,
    changed_at TIMESTAMPTZ NOT NULL,
    seen_at    TIMESTAMPTZ NOT NULL
);
