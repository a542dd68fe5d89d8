// Issue 25, point 2: statistics retention (STATS_RETENTION_DAYS). Events older than the
// horizon are deleted by a running replica in bounded batches, and a report over the old
// period keeps its figures (the rollups stay; only the sessions' message details go).
import { test } from "node:test";
import assert from "node:assert/strict";
import { startGateway, token, waitUntil, withDeadline } from "../helpers.mjs";
import { freshDatabase, psql } from "../db.mjs";

const dash = token({ sub: "dash", roles: ["dashboard"] });
const publisher = token({ sub: "bot", roles: ["publisher"] });
const DAY = 86400000;
const QUARTER = 900000;
const iso = (ms) => new Date(ms).toISOString();

test("events past STATS_RETENTION_DAYS are deleted by the replica; reports over the old period keep their figures", async () => {
  const url = freshDatabase();
  // Three days ago, on a quarter hour: 12,000 messages of 300 visitors in sessions (a
  // message a minute for 40 minutes), and one widget opening each.
  const t0 = Math.floor((Date.now() - 3 * DAY) / QUARTER) * QUARTER;
  let gw = await startGateway({ DATABASE_URL: url });
  try {
    await waitUntil(() => psql(url, "SELECT count(*) FROM pg_proc WHERE proname = 'stats_retain'")[0][0] === "1", 20000, "migrated");
    psql(url, `INSERT INTO stats_events (type, channel, visitor_id, at, visitor_name, country)
      SELECT CASE WHEN m = 0 THEN 'widget_opened' ELSE 'new_message' END, 'web', 'old-' || v,
             to_timestamp(${t0 / 1000}) + (v * interval '10 seconds') + (m * interval '1 minute'), 'Name ' || v, 'TR'
      FROM generate_series(1, 300) v, generate_series(0, 40) m`);
    const window = `/api/stats?from=${iso(t0)}&to=${iso(t0 + 4 * 3600000)}&tz=UTC`;
    const before = await gw.http(window, { token: dash });
    assert.equal(before.status, 200);
    assert.equal(before.json.totalMessages, 12000);
    await gw.stop();

    gw = await startGateway({ DATABASE_URL: url, STATS_RETENTION_DAYS: "1" });
    // All but the newest, which holds the cluster's last seq.
    await waitUntil(() => psql(url, "SELECT count(*) FROM stats_events")[0][0] === "1", 30000, "old events deleted");
    const m = (await gw.http("/metrics")).text;
    assert.match(m, /stats_events_retired_total(\{[^}]*\})? 12299\b/);
    const after = await gw.http(window, { token: dash });
    assert.equal(after.status, 200);
    for (const k of ["totalUsers", "totalSessions", "totalMessages", "widgetOpens", "webUniqueUsers", "premiumUniqueUsers", "countries", "heatmap"]) {
      assert.deepEqual(after.json[k], before.json[k], k);
    }
    // The sessions are still listed, with what the rollups know; their messages are gone.
    const strip = (u) => ({ userId: u.userId, sessionNumber: u.sessionNumber, firstActivity: u.firstActivity, lastActivity: u.lastActivity, messageCount: u.messageCount });
    assert.deepEqual(after.json.users.map(strip), before.json.users.map(strip));
    const bare = after.json.users.filter((u) => u.messageTimestamps.length === 0 && u.userName === null);
    assert.ok(bare.length >= after.json.users.length - 1 && bare.length > 0, `${bare.length} of ${after.json.users.length} without details`);

    // An event older than the retention is refused with a clear error, not stored.
    const old = await gw.http("/api/events", { token: publisher, method: "POST", body: { type: "new_message", visitorId: "late", channel: "web", text: "hi", at: iso(t0) } });
    assert.equal(old.status, 400);
    assert.match(old.text, /retention/);
    // An operator deleting every event by hand: lastEventSeq goes back below what the
    // replica announced, and the report must still answer (it asked the database forever).
    psql(url, "DELETE FROM stats_events");
    const emptied = await withDeadline(gw.http(window.replace("tz=UTC", "tz=Europe/Istanbul"), { token: dash }), 10000, "report after a manual delete");
    assert.equal(emptied.status, 200);
    console.log(`12,300 events three days old deleted with STATS_RETENTION_DAYS=1; report over them: ${after.json.totalMessages} messages, ${after.json.totalSessions} sessions (unchanged)`);
  } finally {
    await gw.stop();
  }
});
