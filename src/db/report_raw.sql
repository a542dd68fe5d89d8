-- The /api/stats report over [lo, hi) straight from stats_events: the definition the rollup
-- report (report.sql) must agree with, and what a replica uses when the rollups were built
-- with another session gap. (`online` comes from stats_visitor_online in both: it does not
-- depend on the gap; tests/it/rollups.rs checks it against the events.) Parameters: $1 lo, $2 hi (microseconds since the epoch), $3
-- session gap in ms, $4 time zone, $5 sessions listed.
WITH bounds AS (
    SELECT 'epoch'::timestamptz + $1::int8 * interval '1 microsecond' AS lo,
           'epoch'::timestamptz + $2::int8 * interval '1 microsecond' AS hi,
           $3::int8 * interval '1 millisecond' AS gap
),
ev AS (
    SELECT e.type, e.channel, e.visitor_id, e.country
    FROM stats_events e, bounds b WHERE e.at >= b.lo AND e.at < b.hi
),
msgs AS (
    SELECT e.seq, e.visitor_id, e.channel, e.at, e.human_mode, e.visitor_name, e.country, e.city
    FROM stats_events e, bounds b
    WHERE e.type = 'new_message' AND e.at >= b.lo AND e.at < b.hi
),
marked AS (
    SELECT m.*,
           CASE WHEN lag(m.at) OVER w IS NULL OR m.at - lag(m.at) OVER w > (SELECT gap FROM bounds)
                THEN 1 ELSE 0 END AS starts
    FROM msgs m
    WINDOW w AS (PARTITION BY m.visitor_id ORDER BY m.at, m.seq)
),
runs AS (
    SELECT *, sum(starts) OVER (PARTITION BY visitor_id ORDER BY at, seq) AS run FROM marked
),
sessions AS (
    SELECT visitor_id, run, count(*) AS n, min(at) AS first_at, max(at) AS last_at,
           array_agg(at ORDER BY at, seq) AS stamps,
           bool_or(COALESCE(human_mode, false)) AS human,
           (array_agg(visitor_name ORDER BY at DESC, seq DESC) FILTER (WHERE visitor_name IS NOT NULL))[1] AS name,
           (array_agg(country ORDER BY at DESC, seq DESC) FILTER (WHERE country IS NOT NULL))[1] AS country,
           (array_agg(city ORDER BY at DESC, seq DESC) FILTER (WHERE city IS NOT NULL))[1] AS city,
           (array_agg(channel ORDER BY at DESC, seq DESC))[1] AS channel
    FROM runs GROUP BY visitor_id, run HAVING count(*) >= 2
),
numbered AS (
    SELECT s.*, row_number() OVER (PARTITION BY visitor_id ORDER BY first_at) AS number,
           count(*) OVER (PARTITION BY visitor_id) AS of
    FROM sessions s
),
heat AS (
    SELECT extract(dow FROM at AT TIME ZONE $4)::int AS d,
           extract(hour FROM at AT TIME ZONE $4)::int AS h, count(*) AS n
    FROM msgs GROUP BY 1, 2
),
online AS (
    SELECT channel, n FROM stats_online_now
)
SELECT json_build_object(
    'lastEventSeq', (SELECT COALESCE(max(seq), 0) FROM stats_events),
    'totalUsers', (SELECT count(DISTINCT visitor_id) FROM msgs),
    'totalSessions', (SELECT count(*) FROM sessions),
    'totalMessages', (SELECT count(*) FROM msgs),
    'widgetOpens', (SELECT count(*) FROM ev WHERE type = 'widget_opened'),
    'webUniqueUsers', (SELECT count(DISTINCT visitor_id) FROM msgs WHERE channel = 'web'),
    'premiumUniqueUsers', (SELECT count(DISTINCT visitor_id) FROM msgs WHERE channel = 'premium'),
    'online', json_build_object(
        'web', COALESCE((SELECT n FROM online WHERE channel = 'web'), 0),
        'premium', COALESCE((SELECT n FROM online WHERE channel = 'premium'), 0)),
    'users', COALESCE((SELECT json_agg(u ORDER BY u."lastActivity" DESC, u."userId") FROM (
        SELECT CASE WHEN number = 1 THEN visitor_id ELSE visitor_id || '#' || number END AS "userId",
               visitor_id AS "originalUserId",
               number AS "sessionNumber",
               of AS "totalSessions",
               name AS "userName",
               stats_iso(first_at) AS "firstActivity",
               stats_iso(last_at) AS "lastActivity",
               n AS "messageCount",
               (SELECT array_agg(stats_iso(t)) FROM unnest(stamps) t) AS "messageTimestamps",
               human AS "isHumanMode",
               country, city, channel
        FROM numbered ORDER BY last_at DESC, visitor_id LIMIT $5
    ) u), '[]'::json),
    'countries', COALESCE((SELECT json_agg(c ORDER BY c.users DESC, c.country) FROM (
        SELECT country, count(DISTINCT visitor_id) AS users FROM ev
        WHERE country IS NOT NULL GROUP BY country
    ) c), '[]'::json),
    'heatmap', (SELECT json_agg(x.hours ORDER BY x.d) FROM (
        SELECT d.d, json_agg(COALESCE(heat.n, 0) ORDER BY hr.h) AS hours
        FROM generate_series(0, 6) d(d) CROSS JOIN generate_series(0, 23) hr(h)
        LEFT JOIN heat ON heat.d = d.d AND heat.h = hr.h
        GROUP BY d.d
    ) x),
    'from', stats_iso((SELECT lo FROM bounds)),
    'to', stats_iso((SELECT hi FROM bounds)),
    -- Evaluated even when no event is in the window, so that an unknown zone is refused.
    'tz', CASE WHEN (now() AT TIME ZONE $4) IS NOT NULL THEN $4::text END
)
