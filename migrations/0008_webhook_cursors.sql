-- Webhooks (CONTRACT §12): how far the statistics events (`stats_events.seq`) have been sent
-- as `stats.event`. The events themselves are the queue: they are already durable here, in
-- seq order, so a replica killed before sending them loses nothing; the next sender resends
-- from the cursor (at least once).
CREATE TABLE IF NOT EXISTS webhook_cursors (
    name  text   PRIMARY KEY,
    seq   bigint NOT NULL
);
