-- User search for one- and two-character queries inside names. The trigram index cannot
-- find a pattern shorter than three characters (it would read every entry), so names also
-- get the set of their one- and two-character substrings, lowercased, in a GIN index: a
-- short query looks its substring up there, then the LIKE re-checks it. Common ones ("a")
-- never get here (names starting with them fill the page first); rare ones are an index
-- probe instead of reading a million names. No pending list, as for the trigram index (0004).
CREATE OR REPLACE FUNCTION user_name_grams(s text) RETURNS text[]
LANGUAGE sql IMMUTABLE STRICT PARALLEL SAFE AS $$
    SELECT coalesce(array_agg(DISTINCT g), '{}') FROM (
        SELECT substr(s, i, 1) AS g FROM generate_series(1, length(s)) AS i
        UNION ALL
        SELECT substr(s, i, 2) FROM generate_series(1, length(s) - 1) AS i
    ) grams
$$;

CREATE INDEX IF NOT EXISTS users_name_grams ON users
    USING gin (user_name_grams(lower(name))) WITH (fastupdate = off);
