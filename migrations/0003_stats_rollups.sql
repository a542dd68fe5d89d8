-- Rollups of stats_events that let /api/stats answer a week of a million messages without
-- reading them: the raw events stay the truth, and the report reads raw events only at the
-- edges of its window.
--
-- * stats_quarters: events per quarter hour, type and channel (message and widget-open
--   counts, the heatmap: every time zone's offset is a multiple of 15 minutes).
-- * stats_spans: per visitor and "key", the maximal runs of events with no gap longer than
--   the session gap. Key 'm' = messages (its spans of 2 or more messages are the sessions),
--   'w'/'p' = messages on web/premium, 'c' = any event with country `value`. Each span knows
--   where the key's previous span ended, so the number of distinct visitors of a key in a
--   window is a count, not a DISTINCT: the spans that start in the window after a previous
--   span that ended before it, plus the spans that straddle the window's start.
--
-- Triggers keep both in step with stats_events inside the statement that inserts, deletes,
-- updates or truncates, whoever runs it (so a reader never sees one without the other);
-- `stats_rebuild_rollups(gap_ms)` recomputes them from scratch (after a change of session
-- gap, or to repair them).

CREATE TABLE IF NOT EXISTS stats_settings (
    id              boolean PRIMARY KEY DEFAULT true CHECK (id),
    -- The session gap the spans were computed with. A replica configured with another
    -- STATS_SESSION_GAP_MS rebuilds them at start-up, or reports from raw events.
    session_gap_ms  bigint  NOT NULL CHECK (session_gap_ms > 0)
);
INSERT INTO stats_settings (session_gap_ms) VALUES (1800000) ON CONFLICT DO NOTHING;

CREATE TABLE IF NOT EXISTS stats_quarters (
    quarter  timestamptz NOT NULL,
    type     text        NOT NULL,
    channel  text        NOT NULL,
    n        bigint      NOT NULL,
    PRIMARY KEY (quarter, type, channel)
);

CREATE TABLE IF NOT EXISTS stats_spans (
    kind          text        NOT NULL CHECK (kind IN ('m', 'w', 'p', 'c')),
    value         text        NOT NULL DEFAULT '',
    visitor_id    text        NOT NULL,
    first_at      timestamptz NOT NULL,
    last_at       timestamptz NOT NULL,
    n             integer     NOT NULL,
    -- last_at of this key's previous span; NULL for its first
    prev_last_at  timestamptz,
    PRIMARY KEY (kind, value, visitor_id, first_at)
);
-- Each key's first span starting in a window: a key's very first span...
CREATE INDEX IF NOT EXISTS stats_spans_new ON stats_spans (kind, first_at) INCLUDE (value)
    WHERE prev_last_at IS NULL;
-- ...or the span after the gap that contains the window's start.
CREATE INDEX IF NOT EXISTS stats_spans_back ON stats_spans
    USING gist (tstzrange(prev_last_at, first_at, '(]')) WHERE prev_last_at IS NOT NULL;
-- Spans containing an instant (those across the window's edges).
CREATE INDEX IF NOT EXISTS stats_spans_during ON stats_spans
    USING gist (tstzrange(first_at, last_at, '[]'));
-- Sessions by end: how many in a window, and the most recent.
CREATE INDEX IF NOT EXISTS stats_spans_sessions ON stats_spans (last_at)
    INCLUDE (first_at, visitor_id, n) WHERE kind = 'm' AND n >= 2;
-- A visitor's events in order, whatever their type (span maintenance, session details).
CREATE INDEX IF NOT EXISTS stats_events_visitor ON stats_events (visitor_id, at);

-- Each visitor's latest `user_online`/`user_offline` event (by seq) per channel, kept by the
-- triggers below: `online` counts visitors whose latest such event is `user_online` and
-- happened within the last day (a replica that died without recording `user_offline` stops
-- counting after a day; a late, back-dated `user_offline` does end the visit).
CREATE TABLE IF NOT EXISTS stats_visitor_online (
    visitor_id  text        NOT NULL,
    channel     text        NOT NULL,
    seq         bigint      NOT NULL,
    at          timestamptz NOT NULL,
    online      boolean     NOT NULL,
    PRIMARY KEY (visitor_id, channel)
);
CREATE INDEX IF NOT EXISTS stats_visitor_online_at ON stats_visitor_online (at) WHERE online;

CREATE OR REPLACE VIEW stats_online_now AS
    SELECT channel, count(*) AS n FROM stats_visitor_online
    WHERE online AND at > now() - interval '1 day' GROUP BY channel;

-- Microseconds since the epoch as a time (no day or month parts, so no time zone involved:
-- immutable, and folded into a constant when the report is planned).
CREATE OR REPLACE FUNCTION stats_us(us int8) RETURNS timestamptz
LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $$ SELECT 'epoch'::timestamptz + us * interval '1 microsecond' $$;

-- A time as the report writes it: RFC 3339 in UTC with milliseconds, like every time in the
-- gateway's JSON.
CREATE OR REPLACE FUNCTION stats_iso(t timestamptz) RETURNS text
LANGUAGE sql STABLE PARALLEL SAFE AS $$ SELECT to_char(t AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.MS"Z"') $$;

-- A key of stats_spans, with the earliest time at which its events changed.
DO $$ BEGIN
    CREATE TYPE stats_span_key AS (kind text, value text, visitor_id text, since timestamptz);
EXCEPTION WHEN duplicate_object THEN NULL;
END $$;

-- Whether an event belongs to a key.
CREATE OR REPLACE FUNCTION stats_key_has(kind text, value text, type text, channel text, country text)
RETURNS boolean LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $$
    SELECT CASE kind
        WHEN 'm' THEN type = 'new_message'
        WHEN 'w' THEN type = 'new_message' AND channel = 'web'
        WHEN 'p' THEN type = 'new_message' AND channel = 'premium'
        ELSE country IS NOT DISTINCT FROM value
    END
$$;

-- Recompute the spans of `keys` from their events: spans that may have changed (those ending
-- less than a gap before `since`, and later ones) are deleted, then rebuilt from every event
-- after the last span kept. Appending to a visitor's latest span rereads only that span.
CREATE OR REPLACE FUNCTION stats_respan(keys stats_span_key[]) RETURNS void
LANGUAGE plpgsql AS $$
DECLARE
    gap interval := (SELECT session_gap_ms FROM stats_settings) * interval '1 millisecond';
BEGIN
    DELETE FROM stats_spans s USING unnest(keys) k
    WHERE s.kind = k.kind AND s.value = k.value AND s.visitor_id = k.visitor_id
      AND s.last_at >= k.since - gap;

    INSERT INTO stats_spans (kind, value, visitor_id, first_at, last_at, n, prev_last_at)
    WITH kept AS (
        SELECT k.kind, k.value, k.visitor_id,
               (SELECT max(s.last_at) FROM stats_spans s
                WHERE s.kind = k.kind AND s.value = k.value AND s.visitor_id = k.visitor_id) AS prev
        FROM (SELECT DISTINCT kind, value, visitor_id FROM unnest(keys)) k
    ),
    ev AS (
        SELECT kept.kind, kept.value, kept.visitor_id, kept.prev, e.at, e.seq,
               CASE WHEN lag(e.at) OVER w IS NULL OR e.at - lag(e.at) OVER w > gap
                    THEN 1 ELSE 0 END AS starts
        FROM kept
        JOIN LATERAL (
            SELECT e.at, e.seq FROM stats_events e
            WHERE e.visitor_id = kept.visitor_id AND e.at > COALESCE(kept.prev, '-infinity')
              AND stats_key_has(kept.kind, kept.value, e.type, e.channel, e.country)
        ) e ON true
        WINDOW w AS (PARTITION BY kept.kind, kept.value, kept.visitor_id ORDER BY e.at, e.seq)
    ),
    runs AS (
        SELECT *, sum(starts) OVER (PARTITION BY kind, value, visitor_id ORDER BY at, seq) AS run
        FROM ev
    ),
    spans AS (
        SELECT kind, value, visitor_id, min(prev) AS prev, min(at) AS first_at,
               max(at) AS last_at, count(*)::int AS n
        FROM runs GROUP BY kind, value, visitor_id, run
    )
    SELECT kind, value, visitor_id, first_at, last_at, n,
           COALESCE(lag(last_at) OVER (PARTITION BY kind, value, visitor_id ORDER BY first_at), prev)
    FROM spans;
END $$;

-- Rollup maintenance for one statement's inserted (sign 1) or deleted (sign -1) events.
CREATE OR REPLACE FUNCTION stats_rollup_apply(changed jsonb, sign int) RETURNS void
LANGUAGE plpgsql AS $$
BEGIN
    -- The gateway inserts while holding this lock already (taken again at once); anyone
    -- else waits, so spans are never computed by two writers at once.
    PERFORM pg_advisory_xact_lock(31638942963037299);

    INSERT INTO stats_quarters AS q (quarter, type, channel, n)
    SELECT date_bin('15 minutes', e.at, 'epoch'), e.type, e.channel, sign * count(*)
    FROM jsonb_to_recordset(changed) AS e(at timestamptz, type text, channel text)
    GROUP BY 1, 2, 3
    ON CONFLICT (quarter, type, channel) DO UPDATE SET n = q.n + EXCLUDED.n;

    -- Latest online/offline event of each visitor and channel it touched, from the events.
    DELETE FROM stats_visitor_online o
    USING jsonb_to_recordset(changed) AS e(type text, channel text, visitor_id text)
    WHERE e.type IN ('user_online', 'user_offline')
      AND o.visitor_id = e.visitor_id AND o.channel = e.channel;
    INSERT INTO stats_visitor_online (visitor_id, channel, seq, at, online)
    SELECT DISTINCT ON (s.visitor_id, s.channel) s.visitor_id, s.channel, s.seq, s.at,
           s.type = 'user_online'
    FROM (SELECT DISTINCT e.visitor_id, e.channel
          FROM jsonb_to_recordset(changed) AS e(type text, channel text, visitor_id text)
          WHERE e.type IN ('user_online', 'user_offline')) k
    JOIN stats_events s ON s.visitor_id = k.visitor_id AND s.channel = k.channel
                       AND s.type IN ('user_online', 'user_offline')
    ORDER BY s.visitor_id, s.channel, s.seq DESC;

    PERFORM stats_respan(ARRAY(
        SELECT ROW(k.kind, k.value, e.visitor_id, min(e.at))::stats_span_key
        FROM jsonb_to_recordset(changed)
             AS e(at timestamptz, type text, channel text, visitor_id text, country text),
        LATERAL (VALUES ('m', ''), ('w', ''), ('p', ''), ('c', COALESCE(e.country, '')))
             AS k(kind, value)
        WHERE stats_key_has(k.kind, k.value, e.type, e.channel, e.country)
        GROUP BY k.kind, k.value, e.visitor_id
    ));
END $$;

CREATE OR REPLACE FUNCTION stats_rollup_trigger() RETURNS trigger
LANGUAGE plpgsql AS $$
DECLARE
    rows jsonb;
BEGIN
    IF TG_OP IN ('DELETE', 'UPDATE') THEN
        SELECT jsonb_agg(jsonb_build_object('at', o.at, 'type', o.type, 'channel', o.channel,
                                            'visitor_id', o.visitor_id, 'country', o.country))
        INTO rows FROM old_rows o;
        IF rows IS NOT NULL THEN PERFORM stats_rollup_apply(rows, -1); END IF;
    END IF;
    IF TG_OP IN ('INSERT', 'UPDATE') THEN
        SELECT jsonb_agg(jsonb_build_object('at', n.at, 'type', n.type, 'channel', n.channel,
                                            'visitor_id', n.visitor_id, 'country', n.country))
        INTO rows FROM new_rows n;
        IF rows IS NOT NULL THEN PERFORM stats_rollup_apply(rows, 1); END IF;
    END IF;
    RETURN NULL;
END $$;

DROP TRIGGER IF EXISTS stats_rollup_insert ON stats_events;
CREATE TRIGGER stats_rollup_insert AFTER INSERT ON stats_events
    REFERENCING NEW TABLE AS new_rows FOR EACH STATEMENT EXECUTE FUNCTION stats_rollup_trigger();
DROP TRIGGER IF EXISTS stats_rollup_delete ON stats_events;
CREATE TRIGGER stats_rollup_delete AFTER DELETE ON stats_events
    REFERENCING OLD TABLE AS old_rows FOR EACH STATEMENT EXECUTE FUNCTION stats_rollup_trigger();
DROP TRIGGER IF EXISTS stats_rollup_update ON stats_events;
CREATE TRIGGER stats_rollup_update AFTER UPDATE ON stats_events
    REFERENCING OLD TABLE AS old_rows NEW TABLE AS new_rows
    FOR EACH STATEMENT EXECUTE FUNCTION stats_rollup_trigger();

CREATE OR REPLACE FUNCTION stats_rollup_truncate() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    TRUNCATE stats_quarters, stats_spans, stats_visitor_online;
    RETURN NULL;
END $$;

DROP TRIGGER IF EXISTS stats_rollup_truncate ON stats_events;
CREATE TRIGGER stats_rollup_truncate AFTER TRUNCATE ON stats_events
    FOR EACH STATEMENT EXECUTE FUNCTION stats_rollup_truncate();

-- Recompute every rollup from stats_events, with the session gap `gap_ms`.
CREATE OR REPLACE FUNCTION stats_rebuild_rollups(gap_ms bigint) RETURNS void
LANGUAGE plpgsql AS $$
DECLARE
    gap interval := gap_ms * interval '1 millisecond';
BEGIN
    PERFORM pg_advisory_xact_lock(31638942963037299);
    UPDATE stats_settings SET session_gap_ms = gap_ms;
    TRUNCATE stats_quarters, stats_spans, stats_visitor_online;

    INSERT INTO stats_visitor_online (visitor_id, channel, seq, at, online)
    SELECT DISTINCT ON (visitor_id, channel) visitor_id, channel, seq, at, type = 'user_online'
    FROM stats_events WHERE type IN ('user_online', 'user_offline')
    ORDER BY visitor_id, channel, seq DESC;

    INSERT INTO stats_quarters (quarter, type, channel, n)
    SELECT date_bin('15 minutes', at, 'epoch'), type, channel, count(*)
    FROM stats_events GROUP BY 1, 2, 3;

    INSERT INTO stats_spans (kind, value, visitor_id, first_at, last_at, n, prev_last_at)
    WITH ev AS (
        SELECT k.kind, k.value, e.visitor_id, e.at, e.seq
        FROM stats_events e,
        LATERAL (VALUES ('m', ''), ('w', ''), ('p', ''), ('c', COALESCE(e.country, '')))
             AS k(kind, value)
        WHERE stats_key_has(k.kind, k.value, e.type, e.channel, e.country)
    ),
    marked AS (
        SELECT *, CASE WHEN lag(at) OVER w IS NULL OR at - lag(at) OVER w > gap
                       THEN 1 ELSE 0 END AS starts
        FROM ev WINDOW w AS (PARTITION BY kind, value, visitor_id ORDER BY at, seq)
    ),
    runs AS (
        SELECT *, sum(starts) OVER (PARTITION BY kind, value, visitor_id ORDER BY at, seq) AS run
        FROM marked
    ),
    spans AS (
        SELECT kind, value, visitor_id, min(at) AS first_at, max(at) AS last_at,
               count(*)::int AS n
        FROM runs GROUP BY kind, value, visitor_id, run
    )
    SELECT kind, value, visitor_id, first_at, last_at, n,
           lag(last_at) OVER (PARTITION BY kind, value, visitor_id ORDER BY first_at)
    FROM spans;
    -- Fresh statistics for the planner at once. (VACUUM, which index-only scans need, cannot
    -- run in a transaction: callers outside one run it; otherwise autovacuum does.)
    ANALYZE stats_spans;
    ANALYZE stats_quarters;
    ANALYZE stats_visitor_online;
END $$;

SELECT stats_rebuild_rollups(session_gap_ms) FROM stats_settings;
