// PostgreSQL stops for 30 s and comes back: presence keeps working live, the writes of the
// outage wait in memory (one per user), land when it returns, and the database then matches
// live presence. Uses a PostgreSQL server of its own, on its own port, so stopping it
// disturbs no other test.
import { test } from "node:test";
import assert from "node:assert/strict";
import { startGateway, user, token, ask, recorder, waitUntil, connect } from "../helpers.mjs";
import { ownPostgres, freshDatabase, storedPresence } from "../db.mjs";

const admin = token({ sub: "o-admin", roles: ["admin"] });
const port = 17000 + (process.pid % 1000);

function metric(text, name) {
  const line = text.split("\n").find((l) => l.startsWith(name + "{") || l.startsWith(name + " "));
  return line ? Number(line.split(" ").pop()) : NaN;
}

test("PostgreSQL down for 30 s: presence stays live, writes wait and land, nothing lost", async () => {
  const pg = ownPostgres(port);
  pg.start();
  let gw;
  try {
    const url = freshDatabase(pg.server);
    gw = await startGateway({ DATABASE_URL: url, PRESENCE_DB_ONLINE_DEBOUNCE_MS: "200", ...{ PRESENCE_SWEEP_INTERVAL_MS: "250" } });
    await waitUntil(async () => (await gw.http("/api/health")).json?.dependencies?.database === "up", 10000, "database up");
    const viewer = await gw.connect(user("o-viewer", "female"));
    const seen = recorder(viewer);
    const before = [];
    for (let i = 0; i < 5; i++) before.push(await gw.connect(user(`o-before-${i}`, "female")));
    await waitUntil(() => [0, 1, 2, 3, 4].every((i) => storedPresence(url, `o-before-${i}`)?.online), 5000, "rows written");
    // Users seen before the outage: the engine holds their settings (section 11), so they may
    // connect while the database is away.
    for (const id of [0, 1, 2, 3, 4].map((i) => `o-during-${i}`).concat("o-flapper")) {
      const s = await gw.connect(user(id, id === "o-flapper" ? "other" : "male"));
      await seen.waitFor((p) => p.userId === id && p.online);
      s.disconnect();
      await seen.waitFor((p) => p.userId === id && !p.online);
    }

    pg.stop();
    const downAt = Date.now();
    await waitUntil(async () => (await gw.http("/api/health")).json?.dependencies?.database === "down", 10000, "health shows database down");
    const h = await gw.http("/api/health");
    assert.equal(h.json.status, "degraded");
    assert.equal((await gw.http("/readyz")).status, 200, "still ready: presence does not need the database");

    // A token without gender needs the database to know what its user may see: refused
    // (never guessed as `other`, which sees everyone), on both transports' paths.
    const genderless = token({ sub: "o-nogender" });
    await assert.rejects(connect(gw.url, { token: genderless }), /^Error: unavailable/);
    const hidden = await gw.http("/api/presence/o-before-2", { token: genderless });
    assert.deepEqual([hidden.status, hidden.json?.error?.code], [503, "unavailable"]);

    // A user the engine has never seen: their settings (section 11) cannot be read, so they
    // are refused rather than guessed.
    await assert.rejects(connect(gw.url, user("o-never-seen", "female")), /^Error: unavailable/);

    // Live presence during the outage: connects, status changes, disconnects, flapping.
    const during = [];
    for (let i = 0; i < 5; i++) during.push(await gw.connect(user(`o-during-${i}`, "male")));
    await seen.waitFor((p) => p.userId === "o-during-4" && p.online);
    before[0].disconnect();
    before[1].disconnect();
    await seen.waitFor((p) => p.userId === "o-before-1" && !p.online);
    const live = await ask(during[0], "presence:set-status", { status: "live", details: { room: 1 } });
    assert.equal(live.ok, true);
    await seen.waitFor((p) => p.userId === "o-during-0" && p.status === "live");
    for (let k = 0; k < 20; k++) {
      const f = await gw.connect(user("o-flapper", "other"));
      f.disconnect();
    }
    during[4].disconnect();
    const got = await ask(viewer, "presence:get", { userIds: ["o-before-0", "o-during-0"] });
    assert.deepEqual(got.presences.map((p) => p.status), ["offline", "live"]);

    const m = (await gw.http("/metrics")).text;
    const pending = metric(m, "db_pending_writes");
    assert.ok(pending >= 8 && pending <= 12, `one pending write per changed user, got ${pending}`);
    await waitUntil(async () => metric((await gw.http("/metrics")).text, "db_write_errors_total") >= 1, 10000, "failed writes counted");

    // Thirty seconds down in all, heartbeating as clients do.
    const beats = setInterval(() => [viewer, ...before, ...during].forEach((s) => s.connected && s.emit("user:heartbeat")), 500);
    await waitUntil(() => Date.now() - downAt > 30000, 35000, "the outage");
    clearInterval(beats);
    const backAt = Date.now();
    pg.start();
    await waitUntil(async () => {
      const x = await gw.http("/api/health");
      return x.json?.dependencies?.database === "up" && x.json.database.pendingWrites === 0;
    }, 15000, "pending writes landed");
    const landedMs = Date.now() - backAt;

    const expect = {
      "o-before-0": "offline",
      "o-before-1": "offline",
      "o-before-2": "online",
      "o-during-0": "live",
      "o-during-1": "online",
      "o-during-4": "offline",
      "o-flapper": "offline",
    };
    for (const [id, status] of Object.entries(expect)) assert.equal(storedPresence(url, id)?.status, status, id);
    const check = await gw.http("/api/check-online-status", { token: admin });
    assert.equal(check.status, 200);
    assert.equal(check.json.count, 0, JSON.stringify(check.json.disagreements));
    const after = (await gw.http("/metrics")).text;
    assert.equal(metric(after, "db_pending_writes"), 0);
    console.log(`# writes of a 30 s outage landed ${landedMs} ms after PostgreSQL was restarted`);
  } finally {
    await gw?.stop();
    pg.destroy();
  }
});
