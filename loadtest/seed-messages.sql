-- 1,000,000 messages from 100,000 visitors over the 7 days before 2026-11-22, plus a widget
-- opening per visitor: the /api/stats benchmark. Each visitor writes in bursts a few minutes
-- apart (sessions), bursts hours apart. Run on a migrated database. The rollup triggers are
-- off while a million rows go in, and the rollups are built once at the end.
ALTER TABLE stats_events DISABLE TRIGGER stats_rollup_insert;
INSERT INTO stats_events (type, channel, visitor_id, at, sender, body, human_mode, visitor_name, country, city)
SELECT 'new_message',
       CASE WHEN v % 4 = 0 THEN 'premium' ELSE 'web' END,
       'V-' || v,
       timestamptz '2026-11-15 00:00:00Z'
         + ((v * 7919) % 500000) * interval '1 second'
         + (k / 3) * interval '5 hours'
         + (k % 3) * interval '2 minutes',
       CASE WHEN k % 2 = 0 THEN 'user' ELSE 'bot' END,
       'message ' || k,
       k % 5 = 0,
       'Visitor ' || v,
       (ARRAY['TR','DE','US','FR','GB','NL','ES','IT','PL','SE'])[1 + v % 10],
       'City ' || (v % 50)
FROM generate_series(1, 100000) AS v, generate_series(0, 9) AS k;

INSERT INTO stats_events (type, channel, visitor_id, at, country)
SELECT 'widget_opened', CASE WHEN v % 4 = 0 THEN 'premium' ELSE 'web' END, 'V-' || v,
       timestamptz '2026-11-15 00:00:00Z' + ((v * 7919) % 500000) * interval '1 second',
       (ARRAY['TR','DE','US','FR','GB','NL','ES','IT','PL','SE'])[1 + v % 10]
FROM generate_series(1, 100000) AS v;


ALTER TABLE stats_events ENABLE TRIGGER stats_rollup_insert;
SELECT stats_rebuild_rollups(session_gap_ms) FROM stats_settings;
VACUUM ANALYZE stats_events;
VACUUM ANALYZE stats_spans;
VACUUM ANALYZE stats_quarters;
