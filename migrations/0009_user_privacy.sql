-- The user's own settings (CONTRACT §11): kept here when a database is configured, so they
-- survive Redis losing its data. The engine holds them too (they travel with every change);
-- a handshake reads them from here and gives them to the engine before the user is announced.
CREATE TABLE IF NOT EXISTS user_privacy (
    user_id           text        PRIMARY KEY,
    invisible         boolean     NOT NULL DEFAULT false,
    last_seen_nobody  boolean     NOT NULL DEFAULT false,
    updated_at        timestamptz NOT NULL DEFAULT now()
);
