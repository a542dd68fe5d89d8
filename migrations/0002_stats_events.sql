-- Statistics events (widget_opened, new_message, user_online, user_offline) and the chat
-- messages they carry, one row each. `seq` is the cluster-wide order: rows are inserted
-- under an advisory lock that is held until the batch is announced, so seq order, commit
-- order and announcement order are the same on every replica.

CREATE TABLE IF NOT EXISTS stats_events (
    seq             bigserial   PRIMARY KEY,
    type            text        NOT NULL CHECK (type IN ('widget_opened', 'new_message', 'user_online', 'user_offline')),
    channel         text        NOT NULL CHECK (channel IN ('web', 'premium')),
    visitor_id      text        NOT NULL CHECK (visitor_id ~ '^[A-Za-z0-9_-]{1,64}$'),
    at              timestamptz NOT NULL,
    -- new_message only
    sender          text        CHECK (sender IN ('user', 'bot', 'agent')),
    body            text        CHECK (char_length(body) <= 4096),
    human_mode      boolean,
    -- what the visitor told the widget
    visitor_name    text,
    country         text,
    city            text,
    -- POST /api/events: a retried request with the same key is stored once
    idempotency_key text        UNIQUE,
    stored_at       timestamptz NOT NULL DEFAULT now()
);

-- Range scans for /api/stats, with what its aggregates read, so they need not visit the heap.
CREATE INDEX IF NOT EXISTS stats_events_at ON stats_events (at) INCLUDE (type, channel, visitor_id);
-- A visitor's messages in order: sessions are runs over these.
CREATE INDEX IF NOT EXISTS stats_events_messages ON stats_events (visitor_id, at)
    WHERE type = 'new_message';
