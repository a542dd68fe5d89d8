-- The /api/stats report over [lo, hi) from the rollups of migration 0003, reading raw
-- events only at the window's edges. Parameters: $1 lo, $2 hi, $3 lo rounded up and $4 hi
-- rounded down to a quarter hour (microseconds since the epoch), $5 time zone, $6 sessions
-- listed, $7 the retention horizon (migration 0007). The result equals that of the
-- raw-event report (db/stats.rs, REPORT_RAW) while the window's edges are not older than the
-- horizon. An edge older than it is on a quarter hour (the caller rounds it down), and a
-- span across it, whose events are gone, counts whole in the window where it ends.
WITH
-- Events by time and type: whole quarters from the rollup, the rest from the events.
counted AS (
    SELECT quarter AS at, type, n FROM stats_quarters
    WHERE quarter >= stats_us($3) AND quarter < stats_us($4)
    UNION ALL
    SELECT at, type, 1 FROM stats_events
    WHERE at >= stats_us($1) AND at < stats_us(LEAST($3, $2))
    UNION ALL
    SELECT at, type, 1 FROM stats_events
    WHERE at >= stats_us(GREATEST($3, $4)) AND at < stats_us($2)
),
-- Distinct visitors per key, counted once each: at the key's first span starting in the
-- window (its very first span, or the one after the gap containing the window's start)...
firsts AS (
    SELECT kind, value, count(*) AS n FROM stats_spans
    WHERE kind IN ('m', 'w', 'p', 'c') AND prev_last_at IS NULL
      AND first_at >= stats_us($1) AND first_at < stats_us($2)
    GROUP BY kind, value
    UNION ALL
    SELECT kind, value, count(*) FROM stats_spans
    WHERE prev_last_at IS NOT NULL AND tstzrange(prev_last_at, first_at, '(]') @> stats_us($1)
      AND first_at < stats_us($2)
    GROUP BY kind, value
),
-- ...or at a span across the window's start. Spans across an edge are cut down to their
-- events inside the window.
edges AS (
    SELECT s.kind, s.value, s.visitor_id, s.first_at < stats_us($1) AS before,
           CASE WHEN w.whole THEN s.n ELSE c.n END AS n,
           CASE WHEN w.whole THEN s.first_at ELSE c.first_at END AS first_at,
           CASE WHEN w.whole THEN s.last_at ELSE c.last_at END AS last_at
    FROM stats_spans s,
    LATERAL (
        SELECT $1 < $7 AND s.first_at < stats_us($1) AND s.last_at < stats_us($2) AS whole
    ) w,
    LATERAL (
        SELECT count(*) AS n, min(e.at) AS first_at, max(e.at) AS last_at
        FROM stats_events e
        WHERE e.visitor_id = s.visitor_id AND e.at >= GREATEST(s.first_at, stats_us($1))
          AND e.at <= s.last_at AND e.at < stats_us($2)
          AND stats_key_has(s.kind, s.value, e.type, e.channel, e.country)
    ) c
    WHERE (tstzrange(s.first_at, s.last_at, '[]') @> stats_us($1) AND s.first_at < stats_us($1))
       OR (tstzrange(s.first_at, s.last_at, '[]') @> stats_us($2) AND s.first_at < stats_us($2))
),
visitors AS (
    SELECT kind, value, sum(n) AS n FROM (
        SELECT kind, value, n FROM firsts
        UNION ALL
        SELECT kind, value, count(*) FROM edges WHERE before AND n >= 1 GROUP BY kind, value
    ) x GROUP BY kind, value
),
-- Sessions: spans of 2 or more messages inside the window, and edge spans with 2 or more
-- messages inside it.
inside AS NOT MATERIALIZED (
    SELECT visitor_id, first_at, last_at, n FROM stats_spans
    WHERE kind = 'm' AND n >= 2 AND last_at >= stats_us($1) AND last_at < stats_us($2)
      AND first_at >= stats_us($1)
),
edge_sessions AS (
    SELECT visitor_id, first_at, last_at, n FROM edges WHERE kind = 'm' AND n >= 2
),
-- The most recent sessions (and any tied with the last of them), then every session in the
-- window of their visitors, to number them.
recent AS (
    SELECT * FROM inside
    WHERE last_at >= COALESCE(
        (SELECT last_at FROM inside ORDER BY last_at DESC OFFSET $6::int8 - 1 LIMIT 1),
        stats_us($1))
    UNION
    SELECT * FROM edge_sessions
),
theirs AS (
    SELECT s.visitor_id, s.first_at, s.last_at, s.n
    FROM (SELECT DISTINCT visitor_id FROM recent) r
    JOIN LATERAL (
        SELECT * FROM stats_spans s
        WHERE s.kind = 'm' AND s.value = '' AND s.visitor_id = r.visitor_id AND s.n >= 2
          AND s.first_at >= stats_us($1) AND s.last_at < stats_us($2)
    ) s ON true
    UNION
    SELECT * FROM edge_sessions WHERE visitor_id IN (SELECT visitor_id FROM recent)
),
numbered AS (
    SELECT t.*, row_number() OVER (PARTITION BY visitor_id ORDER BY first_at) AS number,
           count(*) OVER (PARTITION BY visitor_id) AS of
    FROM theirs t
),
listed AS (
    SELECT n.*, CASE WHEN number = 1 THEN visitor_id ELSE visitor_id || '#' || number END AS user_id
    FROM numbered n JOIN recent r USING (visitor_id, first_at)
    ORDER BY n.last_at DESC, user_id LIMIT $6::int8
),
sessions AS (
    SELECT l.*, m.*
    FROM listed l,
    LATERAL (
        SELECT array_agg(e.at ORDER BY e.at, e.seq) AS stamps,
               COALESCE(bool_or(COALESCE(e.human_mode, false)), false) AS human,
               (array_agg(e.visitor_name ORDER BY e.at DESC, e.seq DESC) FILTER (WHERE e.visitor_name IS NOT NULL))[1] AS name,
               (array_agg(e.country ORDER BY e.at DESC, e.seq DESC) FILTER (WHERE e.country IS NOT NULL))[1] AS country,
               (array_agg(e.city ORDER BY e.at DESC, e.seq DESC) FILTER (WHERE e.city IS NOT NULL))[1] AS city,
               (array_agg(e.channel ORDER BY e.at DESC, e.seq DESC))[1] AS channel
        FROM stats_events e
        WHERE e.visitor_id = l.visitor_id AND e.type = 'new_message'
          AND e.at >= l.first_at AND e.at <= l.last_at
    ) m
),
heat AS (
    SELECT extract(dow FROM at AT TIME ZONE $5)::int AS d,
           extract(hour FROM at AT TIME ZONE $5)::int AS h, sum(n) AS n
    FROM counted WHERE type = 'new_message' GROUP BY 1, 2
),
online AS (
    SELECT channel, n FROM stats_online_now
),
figure AS (
    SELECT kind, n FROM visitors WHERE kind <> 'c'
)
SELECT json_build_object(
    'lastEventSeq', (SELECT COALESCE(max(seq), 0) FROM stats_events),
    'totalUsers', COALESCE((SELECT n FROM figure WHERE kind = 'm'), 0),
    'totalSessions', (SELECT count(*) FROM inside) + (SELECT count(*) FROM edge_sessions),
    'totalMessages', (SELECT COALESCE(sum(n), 0) FROM counted WHERE type = 'new_message'),
    'widgetOpens', (SELECT COALESCE(sum(n), 0) FROM counted WHERE type = 'widget_opened'),
    'webUniqueUsers', COALESCE((SELECT n FROM figure WHERE kind = 'w'), 0),
    'premiumUniqueUsers', COALESCE((SELECT n FROM figure WHERE kind = 'p'), 0),
    'online', json_build_object(
        'web', COALESCE((SELECT n FROM online WHERE channel = 'web'), 0),
        'premium', COALESCE((SELECT n FROM online WHERE channel = 'premium'), 0)),
    'users', COALESCE((SELECT json_agg(u ORDER BY u."lastActivity" DESC, u."userId") FROM (
        SELECT user_id AS "userId",
               visitor_id AS "originalUserId",
               number AS "sessionNumber",
               of AS "totalSessions",
               name AS "userName",
               stats_iso(first_at) AS "firstActivity",
               stats_iso(last_at) AS "lastActivity",
               n AS "messageCount",
               COALESCE((SELECT array_agg(stats_iso(t)) FROM unnest(stamps) t), '{}') AS "messageTimestamps",
               human AS "isHumanMode",
               country, city, channel
        FROM sessions
    ) u), '[]'::json),
    'countries', COALESCE((SELECT json_agg(c ORDER BY c.users DESC, c.country) FROM (
        SELECT value AS country, n AS users FROM visitors WHERE kind = 'c'
    ) c), '[]'::json),
    'heatmap', (SELECT json_agg(x.hours ORDER BY x.d) FROM (
        SELECT d.d, json_agg(COALESCE(heat.n, 0) ORDER BY hr.h) AS hours
        FROM generate_series(0, 6) d(d) CROSS JOIN generate_series(0, 23) hr(h)
        LEFT JOIN heat ON heat.d = d.d AND heat.h = hr.h
        GROUP BY d.d
    ) x),
    'from', stats_iso(stats_us($1)),
    'to', stats_iso(stats_us($2)),
    -- Evaluated even when no event is in the window, so that an unknown zone is refused.
    'tz', CASE WHEN (now() AT TIME ZONE $5) IS NOT NULL THEN $5::text END
)
