-- Users and their last known presence.
--
-- `users` is upserted from token claims whenever a user connects; `user_presence` is written
-- by every replica's presence writer, guarded by `version` so that replicas writing without
-- coordination can never replace a newer row with an older one. Times are timestamptz;
-- `version` is the contract's per-user version (microseconds since the epoch, or more).

CREATE EXTENSION IF NOT EXISTS pg_trgm;

CREATE TABLE IF NOT EXISTS users (
    id          text        PRIMARY KEY CHECK (char_length(id) BETWEEN 1 AND 128),
    name        text        CHECK (char_length(name) <= 256),
    -- NULL: never given by a token; treated as 'other'.
    gender      text        CHECK (gender IN ('male', 'female', 'other')),
    created_at  timestamptz NOT NULL DEFAULT now(),
    updated_at  timestamptz NOT NULL DEFAULT now()
);

-- User search: case-insensitive substring over names, names that start with the query
-- first. The btree (in "C" collation, so that LIKE 'q%' is a range scan and its order is the
-- index's) serves the prefix matches in name order and stops at `limit`; the trigram index
-- finds the other matches of three or more characters without reading every name.
CREATE INDEX IF NOT EXISTS users_name_prefix ON users ((lower(name) COLLATE "C"), id);
CREATE INDEX IF NOT EXISTS users_name_trgm ON users USING gin (lower(name) gin_trgm_ops);
-- The visibility filter (COALESCE(gender, 'other') = ANY(...)) keeps about a third to all of
-- the names; without statistics on that expression the planner guesses 0.5%, and then sorts
-- every prefix match instead of reading the first ones in index order.
CREATE STATISTICS IF NOT EXISTS users_visible_gender ON (COALESCE(gender, 'other')) FROM users;

CREATE TABLE IF NOT EXISTS user_presence (
    user_id     text        PRIMARY KEY,
    status      text        NOT NULL CHECK (status IN ('online', 'offline', 'live', 'in_call')),
    online      boolean     NOT NULL,
    last_seen   timestamptz,
    version     bigint      NOT NULL,
    updated_at  timestamptz,
    details     jsonb,
    CHECK (online = (status <> 'offline'))
);

-- The admin's database-versus-live check reads the users the database believes online.
CREATE INDEX IF NOT EXISTS user_presence_online ON user_presence (user_id) WHERE online;
