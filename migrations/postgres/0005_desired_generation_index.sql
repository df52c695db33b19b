-- Every controller replica's change follower asks for the nodes whose
-- desired state moved past the generation it last saw, on each fleet
-- notification and every few seconds. Without an index that is a scan of
-- the whole fleet each time. Heartbeats never change this column, so the
-- index does not get in the way of their updates.
CREATE INDEX nodes_desired_generation ON nodes (desired_generation);
