-- Blocks (CONTRACT §11): `user_id` blocked `blocked_id`; either way the two are hidden from
-- each other. Read both ways: by the blocker (their list) and by the blocked (who hides).
CREATE TABLE IF NOT EXISTS user_blocks (
    user_id     text        NOT NULL,
    blocked_id  text        NOT NULL,
    created_at  timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (user_id, blocked_id)
);
CREATE INDEX IF NOT EXISTS user_blocks_blocked ON user_blocks (blocked_id);
