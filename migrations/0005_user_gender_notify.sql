-- A user's gender changed in the database (an operator's update, or a new token's claim
-- written by the presence writer): every replica hears of it at once, drops its cached copy,
-- and re-applies the new gender to that user's live connections whose tokens carry none.
-- Without this a replica would keep the old gender for up to its cache's lifetime, and viewers
-- who may no longer see the user would go on seeing them online.
CREATE OR REPLACE FUNCTION users_gender_notify() RETURNS trigger AS $$
BEGIN
    PERFORM pg_notify('pgw_user_gender', NEW.id);
    RETURN NULL;
END $$ LANGUAGE plpgsql;

DROP TRIGGER IF EXISTS users_gender_notify ON users;
CREATE TRIGGER users_gender_notify
    AFTER UPDATE OF gender ON users
    FOR EACH ROW WHEN (OLD.gender IS DISTINCT FROM NEW.gender)
    EXECUTE FUNCTION users_gender_notify();
