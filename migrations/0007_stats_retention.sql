-- Statistics retention (STATS_RETENTION_DAYS): raw events older than a horizon are deleted in
-- bounded batches, and the rollups of 0003 keep what they said about them, so a report over
-- an older period still has its counts, its visitors and its sessions (not the sessions'
-- message timestamps, names or places, which only the events held).
--
-- * stats_settings.retained_from: the horizon, a quarter-hour boundary. Events before it may
--   be gone; the rollups before it are final.
-- * stats_retain(before, batch): moves the horizon to `before` (never back) and deletes at
--   most `batch` events older than it, without touching the rollups. The newest event is
--   kept whatever its age: it holds the cluster's last seq, which reports' `lastEventSeq`
--   and the replicas' gap filling read as max(seq), and which must never go back. Each call is its own
--   short transaction under the rollups' lock, so inserts wait at most one batch.
-- * The delete trigger leaves the rollups alone while stats_retain deletes (a setting local
--   to its transaction); any other delete still updates them, as before.
-- * Span maintenance and rebuilds never delete a span that starts before the horizon: its
--   events are gone and it could not be recomputed.

ALTER TABLE stats_settings
    ADD COLUMN IF NOT EXISTS retained_from timestamptz NOT NULL DEFAULT '-infinity';

CREATE OR REPLACE FUNCTION stats_rollup_trigger() RETURNS trigger
LANGUAGE plpgsql AS $$
DECLARE
    rows jsonb;
BEGIN
    -- stats_retain's own deletes: the rollups keep counting what they delete.
    IF TG_OP = 'DELETE' AND current_setting('stats.retaining', true) = 'on' THEN
        RETURN NULL;
    END IF;
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

-- As in 0003, except that spans starting before the horizon are kept as they are.
CREATE OR REPLACE FUNCTION stats_respan(keys stats_span_key[]) RETURNS void
LANGUAGE plpgsql AS $$
DECLARE
    gap interval := (SELECT session_gap_ms FROM stats_settings) * interval '1 millisecond';
    horizon timestamptz := (SELECT retained_from FROM stats_settings);
BEGIN
    DELETE FROM stats_spans s USING unnest(keys) k
    WHERE s.kind = k.kind AND s.value = k.value AND s.visitor_id = k.visitor_id
      AND s.last_at >= k.since - gap AND s.first_at >= horizon;

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

-- As in 0003 while nothing was ever retained. Afterwards the rollups before the horizon are
-- final: only quarters from the horizon on and spans starting after it are recomputed (a
-- span across the horizon keeps its old gap; later events start spans after it).
CREATE OR REPLACE FUNCTION stats_rebuild_rollups(gap_ms bigint) RETURNS void
LANGUAGE plpgsql AS $$
DECLARE
    gap interval := gap_ms * interval '1 millisecond';
    horizon timestamptz := (SELECT retained_from FROM stats_settings);
BEGIN
    PERFORM pg_advisory_xact_lock(31638942963037299);
    UPDATE stats_settings SET session_gap_ms = gap_ms;
    IF horizon = '-infinity' THEN
        TRUNCATE stats_quarters, stats_spans, stats_visitor_online;
    ELSE
        DELETE FROM stats_quarters WHERE quarter >= horizon;
        DELETE FROM stats_spans WHERE first_at >= horizon;
        TRUNCATE stats_visitor_online;
    END IF;

    INSERT INTO stats_visitor_online (visitor_id, channel, seq, at, online)
    SELECT DISTINCT ON (visitor_id, channel) visitor_id, channel, seq, at, type = 'user_online'
    FROM stats_events WHERE type IN ('user_online', 'user_offline')
    ORDER BY visitor_id, channel, seq DESC;

    INSERT INTO stats_quarters (quarter, type, channel, n)
    SELECT date_bin('15 minutes', at, 'epoch'), type, channel, count(*)
    FROM stats_events WHERE at >= horizon GROUP BY 1, 2, 3
    ON CONFLICT (quarter, type, channel) DO UPDATE SET n = stats_quarters.n + EXCLUDED.n;

    INSERT INTO stats_spans (kind, value, visitor_id, first_at, last_at, n, prev_last_at)
    WITH kept AS (
        -- Where each key's kept spans end (only spans before the horizon are kept).
        SELECT kind, value, visitor_id, max(last_at) AS prev
        FROM stats_spans GROUP BY kind, value, visitor_id
    ),
    ev AS (
        SELECT k.kind, k.value, e.visitor_id, e.at, e.seq, kept.prev
        FROM stats_events e
        CROSS JOIN LATERAL (VALUES ('m', ''), ('w', ''), ('p', ''), ('c', COALESCE(e.country, '')))
             AS k(kind, value)
        LEFT JOIN kept ON kept.kind = k.kind AND kept.value = k.value
                      AND kept.visitor_id = e.visitor_id
        WHERE stats_key_has(k.kind, k.value, e.type, e.channel, e.country)
          AND e.at > COALESCE(kept.prev, '-infinity')
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
        SELECT kind, value, visitor_id, min(prev) AS prev, min(at) AS first_at,
               max(at) AS last_at, count(*)::int AS n
        FROM runs GROUP BY kind, value, visitor_id, run
    )
    SELECT kind, value, visitor_id, first_at, last_at, n,
           COALESCE(lag(last_at) OVER (PARTITION BY kind, value, visitor_id ORDER BY first_at), prev)
    FROM spans;
    ANALYZE stats_spans;
    ANALYZE stats_quarters;
    ANALYZE stats_visitor_online;
END $$;

-- Delete at most `batch` events older than `before`, keeping the rollups, and returns how
-- many it deleted: callers repeat until it returns less than `batch`. A visitor's online row
-- that rested on a deleted event is recomputed from what is left (usually nothing: such a
-- row is older than the day that the online figure looks back).
CREATE OR REPLACE FUNCTION stats_retain(before timestamptz, batch int) RETURNS int
LANGUAGE plpgsql AS $$
DECLARE
    deleted int;
    seqs bigint[];
    visitors text[];
    channels text[];
BEGIN
    PERFORM pg_advisory_xact_lock(31638942963037299);
    UPDATE stats_settings SET retained_from = before WHERE retained_from < before;
    PERFORM set_config('stats.retaining', 'on', true);
    WITH gone AS (
        DELETE FROM stats_events WHERE seq IN (
            SELECT seq FROM stats_events WHERE at < before
              AND seq < (SELECT max(seq) FROM stats_events) ORDER BY at LIMIT batch)
        RETURNING seq, visitor_id, channel, type IN ('user_online', 'user_offline') AS visit
    )
    SELECT count(*), array_agg(seq) FILTER (WHERE visit),
           array_agg(visitor_id) FILTER (WHERE visit), array_agg(channel) FILTER (WHERE visit)
    INTO deleted, seqs, visitors, channels FROM gone;
    PERFORM set_config('stats.retaining', 'off', true);

    DELETE FROM stats_visitor_online o WHERE o.seq = ANY (seqs);
    INSERT INTO stats_visitor_online (visitor_id, channel, seq, at, online)
    SELECT DISTINCT ON (s.visitor_id, s.channel) s.visitor_id, s.channel, s.seq, s.at,
           s.type = 'user_online'
    FROM (SELECT DISTINCT v, c FROM unnest(visitors, channels) AS k(v, c)) k
    JOIN stats_events s ON s.visitor_id = k.v AND s.channel = k.c
                       AND s.type IN ('user_online', 'user_offline')
    ORDER BY s.visitor_id, s.channel, s.seq DESC
    ON CONFLICT (visitor_id, channel) DO NOTHING;
    RETURN deleted;
END $$;
