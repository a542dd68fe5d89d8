// Live statistics: widgets record events, dashboards receive them in seq order on every
// replica, and /api/stats reflects an event the moment its stats_update arrived. The four
// bugs of the old pipeline are tests here: a broadcast that reached no one, a cache never
// invalidated, user_online fired on open, and the 800 ms sleep before refetching.
import { test } from "node:test";
import assert from "node:assert/strict";
import { io } from "socket.io-client";
import { startGateway, token, user, waitUntil, withDeadline } from "../helpers.mjs";
import { freshDatabase } from "../db.mjs";

const dash = token({ sub: "dash", roles: ["dashboard"] });
const publisher = token({ sub: "bot", roles: ["publisher"] });

/** Connect; `listen` attaches handlers before the connect (what the server sends right after
 * CONNECT may arrive in the same read). */
function open(url, nsp, auth, listen = () => {}) {
  const s = io(url + nsp, { auth, reconnection: false, forceNew: true, transports: ["websocket"] });
  listen(s);
  return withDeadline(
    new Promise((resolve, reject) => {
      s.once("connect", () => resolve(s));
      s.once("connect_error", (e) => (s.close(), reject(e)));
    }),
    8000,
    `connect ${nsp}`,
  );
}

function dashboard(url) {
  const updates = [];
  const presence = [];
  return open(url, "/dashboard", { token: dash }, (s) => {
    s.on("stats_update", (u) => updates.push(u));
    s.on("presence_stats", (p) => presence.push(p));
  }).then((s) => ({ s, updates, presence }));
}

const widget = (url, visitorId, extra = {}) => open(url, "/widget", { visitorId, channel: "web", country: "TR", city: "Istanbul", ...extra });
const say = (w, text, humanMode = false) => w.timeout(5000).emitWithAck("widget:message", { text, humanMode });

async function single() {
  const url = freshDatabase();
  const gw = await startGateway({ DATABASE_URL: url });
  await waitUntil(async () => (await gw.http("/api/health")).json?.dependencies?.database === "up", 10000, "database up");
  return gw;
}

test("a widget's life: opened, first message makes it online (not the opening), offline on close; stats at once", async () => {
  const gw = await single();
  try {
    const d = await dashboard(gw.url);
    const w = await widget(gw.url, "W-Guest-1");
    const opened = await waitUntil(() => d.updates.find((u) => u.visitorId === "W-Guest-1"), 5000, "widget_opened");
    assert.equal(opened.type, "widget_opened");
    assert.equal(opened.channel, "web");
    // Opening alone is not being online (the old pipeline's bug).
    let r = await gw.http("/api/stats", { token: dash });
    assert.equal(r.status, 200);
    assert.equal(r.json.online.web, 0);
    assert.equal(d.updates.filter((u) => u.type === "user_online").length, 0);

    const a1 = await say(w, "hello");
    assert.equal(a1.ok, true);
    assert.ok(a1.seq > opened.seq);
    await waitUntil(() => d.updates.some((u) => u.type === "user_online"), 5000, "user_online");
    const a2 = await say(w, "second");
    await waitUntil(() => d.updates.some((u) => u.seq === a2.seq), 5000, "second message");
    assert.deepEqual(d.updates.map((u) => u.type), ["widget_opened", "new_message", "user_online", "new_message"]);
    const seqs = d.updates.map((u) => u.seq);
    assert.deepEqual(seqs, [...seqs].sort((a, b) => a - b), "in seq order");
    // No sleep: the update arrived, so the report has it.
    r = await gw.http("/api/stats", { token: dash });
    assert.ok(r.json.lastEventSeq >= a2.seq);
    assert.equal(r.json.totalMessages, 2);
    assert.equal(r.json.widgetOpens, 1);
    assert.equal(r.json.webUniqueUsers, 1);
    assert.equal(r.json.online.web, 1);
    assert.equal(r.json.totalSessions, 1);
    assert.equal(r.json.users[0].userId, "W-Guest-1");
    assert.equal(r.json.users[0].messageCount, 2);
    assert.deepEqual(r.json.countries, [{ country: "TR", users: 1 }]);
    assert.equal(r.json.heatmap.length, 7);
    assert.equal(r.json.heatmap.flat().reduce((a, b) => a + b, 0), 2);

    w.disconnect();
    await waitUntil(() => d.updates.some((u) => u.type === "user_offline"), 5000, "user_offline");
    // The cache must not hide the new event (the old pipeline's never-invalidated cache).
    r = await gw.http("/api/stats", { token: dash });
    assert.equal(r.json.online.web, 0);
    // Widgets are not presence users.
    assert.equal((await gw.http("/api/health")).json.presence.onlineUsers, 0);
  } finally {
    await gw.stop();
  }
});

test("widget handshakes and messages are validated; the connection survives bad input", async () => {
  const gw = await single();
  try {
    await assert.rejects(open(gw.url, "/widget", { visitorId: "bad id!", channel: "web" }), /^Error: unauthorized/);
    await assert.rejects(open(gw.url, "/widget", { visitorId: "ok", channel: "gold" }), /^Error: unauthorized/);
    await assert.rejects(open(gw.url, "/widget", {}), /^Error: unauthorized/);
    await assert.rejects(open(gw.url, "/dashboard", { token: token({ sub: "u", gender: "male" }) }), /^Error: forbidden/);
    const w = await widget(gw.url, "W-v");
    for (const bad of [{ text: "" }, { text: "x".repeat(4097) }, { text: 5 }, { text: "hi", humanMode: "yes" }]) {
      const r = await w.timeout(5000).emitWithAck("widget:message", bad);
      assert.deepEqual([r.ok, r.error.code], [false, "bad_request"], JSON.stringify(bad).slice(0, 40));
    }
    assert.equal((await say(w, "x".repeat(4096))).ok, true);
    const flood = await Promise.all(Array.from({ length: 80 }, () => say(w, "spam")));
    assert.ok(flood.some((r) => r.error?.code === "rate_limited"));
    assert.equal(w.connected, true);
  } finally {
    await gw.stop();
  }
});

test("sessions, naming, heatmap and countries from published events; idempotent retries", async () => {
  const gw = await single();
  try {
    const d = await dashboard(gw.url);
    // 09:00 UTC on the Monday two weeks back: every event below carries its time, so the
    // report's window never depends on today's date.
    const today = new Date();
    const t0 = Date.UTC(today.getUTCFullYear(), today.getUTCMonth(), today.getUTCDate() - ((today.getUTCDay() + 6) % 7) - 14, 9);
    const iso = (ms) => new Date(ms).toISOString();
    const post = (visitorId, minutes, extra = {}) =>
      gw.http("/api/events", {
        token: publisher,
        method: "POST",
        body: { type: "new_message", visitorId, channel: "premium", sender: "user", text: "hi", humanMode: false, country: "DE", city: "Berlin", at: iso(t0 + minutes * 60000), ...extra },
      });
    // v1: a run of 3, a lone message (not a session), a run of 2 -> sessions v1 and v1#2.
    for (const m of [0, 1, 2, 180, 360, 361]) assert.equal((await post("v1", m)).status, 202);
    // v2: one message only -> no session, but a unique user.
    await post("v2", 5, { channel: "web", country: "TR" });
    const key = `retry-${process.pid}`;
    const first = await gw.http("/api/events", { token: publisher, method: "POST", body: { type: "widget_opened", visitorId: "v3", channel: "web", at: iso(t0 + 10 * 60000), idempotencyKey: key } });
    const again = await gw.http("/api/events", { token: publisher, method: "POST", body: { type: "widget_opened", visitorId: "v3", channel: "web", at: iso(t0 + 10 * 60000), idempotencyKey: key } });
    assert.equal(first.status, 202);
    assert.equal(again.json.seq, first.json.seq, "a retry is stored once");
    await waitUntil(() => d.updates.some((u) => u.seq === first.json.seq), 5000, "last event delivered");
    assert.equal(d.updates.filter((u) => u.visitorId === "v3").length, 1, "and announced once");

    const r = await gw.http(`/api/stats?from=${iso(t0 - 9 * 3600000)}&to=${iso(t0 + 7 * 86400000)}&tz=Europe/Istanbul`, { token: dash });
    assert.equal(r.status, 200, r.text);
    const s = r.json;
    assert.equal(s.totalMessages, 7);
    assert.equal(s.totalUsers, 2);
    assert.equal(s.totalSessions, 2);
    assert.equal(s.premiumUniqueUsers, 1);
    assert.equal(s.webUniqueUsers, 1);
    assert.equal(s.widgetOpens, 1);
    const byId = Object.fromEntries(s.users.map((u) => [u.userId, u]));
    assert.deepEqual(Object.keys(byId).sort(), ["v1", "v1#2"]);
    assert.equal(byId["v1"].messageCount, 3);
    assert.equal(byId["v1"].sessionNumber, 1);
    assert.equal(byId["v1#2"].originalUserId, "v1");
    assert.equal(byId["v1#2"].sessionNumber, 2);
    assert.equal(byId["v1#2"].totalSessions, 2);
    assert.equal(byId["v1#2"].messageTimestamps.length, 2);
    assert.equal(byId["v1"].firstActivity, iso(t0));
    assert.equal(byId["v1"].channel, "premium");
    assert.equal(byId["v1"].country, "DE");
    assert.deepEqual(s.countries, [{ country: "DE", users: 1 }, { country: "TR", users: 1 }]);
    // Monday (row 1) 12:00 in Istanbul holds v1 first three messages and v2 one.
    assert.equal(s.heatmap[1][12], 4);
    assert.equal(s.heatmap.flat().reduce((a, b) => a + b, 0), 7);

    for (const [body, code] of [
      [{ type: "nope", visitorId: "v", channel: "web" }, 400],
      [{ type: "new_message", visitorId: "bad id", channel: "web" }, 400],
      [{ type: "new_message", visitorId: "v", channel: "web", at: "yesterday" }, 400],
      [{ type: "new_message", visitorId: "v", channel: "web", extra: 1 }, 400],
    ]) {
      assert.equal((await gw.http("/api/events", { token: publisher, method: "POST", body })).status, code, JSON.stringify(body));
    }
    assert.equal((await gw.http("/api/events", { token: dash, method: "POST", body: { type: "widget_opened", visitorId: "v", channel: "web" } })).status, 403);
    assert.equal((await gw.http("/api/stats?tz=Mars/Olympus", { token: dash })).status, 400);
    const emptyWindow = "from=2000-01-01T00:00:00Z&to=2000-01-02T00:00:00Z";
    const unknownZone = await gw.http(`/api/stats?${emptyWindow}&tz=Mars/Olympus`, { token: dash });
    assert.equal(unknownZone.status, 400, "refused even when no event would be placed in it");
    assert.equal(unknownZone.json.error.code, "bad_request");
    assert.equal((await gw.http(`/api/stats?from=${iso(t0 + 86400000)}&to=${iso(t0)}`, { token: dash })).status, 400);
  } finally {
    await gw.stop();
  }
});

test("three replicas: a dashboard on one sees every widget event from the others in seq order, and a third replica's /api/stats has them at once", async () => {
  const url = freshDatabase();
  const env = { DATABASE_URL: url, REDIS_URL: process.env.TEST_REDIS_URL ?? "redis://127.0.0.1:6379", REDIS_KEY_PREFIX: `st${process.pid}x${Date.now() % 1e6}` };
  const [a, b, c] = [await startGateway(env), await startGateway(env), await startGateway(env)];
  try {
    for (const g of [a, b, c]) await waitUntil(async () => (await g.http("/api/health")).json?.dependencies?.database === "up", 10000, "database up");
    const d = await dashboard(a.url);
    const d2 = await dashboard(c.url);
    const wb = await Promise.all([0, 1, 2].map((i) => widget(b.url, `B-${i}`)));
    const wc = await Promise.all([0, 1, 2].map((i) => widget(c.url, `C-${i}`, { channel: "premium" })));
    const acks = [];
    for (let round = 0; round < 5; round++) {
      const r = await Promise.all([...wb, ...wc].map((w, i) => say(w, `m${round}-${i}`)));
      acks.push(...r.map((x) => x.seq));
    }
    const top = Math.max(...acks);
    await waitUntil(() => d.updates.some((u) => u.seq === top), 10000, "dashboard on A has every event");
    // Immediately, on the third replica: no sleep.
    const r = await c.http("/api/stats", { token: dash });
    assert.ok(r.json.lastEventSeq >= top, `${r.json.lastEventSeq} >= ${top}`);
    assert.equal(r.json.totalMessages, 30);
    assert.equal(r.json.widgetOpens, 6);
    assert.deepEqual([r.json.online.web, r.json.online.premium], [3, 3]);
    const seqs = d.updates.map((u) => u.seq);
    assert.deepEqual(seqs, [...seqs].sort((x, y) => x - y), "in seq order");
    assert.equal(new Set(seqs).size, seqs.length, "each once");
    assert.equal(seqs.length, 6 + 30 + 6, "widget_opened x6, new_message x30, user_online x6");
    await waitUntil(() => d2.updates.length === seqs.length, 5000, "the other dashboard too");
    assert.deepEqual(d2.updates.map((u) => u.seq), seqs);
  } finally {
    await Promise.all([a.stop(), b.stop(), c.stop()]);
  }
});

test("read-your-seq on any replica: a GET on a third replica fired from a dashboard's stats_update handler never predates that seq", async () => {
  const url = freshDatabase();
  const env = {
    DATABASE_URL: url,
    REDIS_URL: process.env.TEST_REDIS_URL ?? "redis://127.0.0.1:6379",
    REDIS_KEY_PREFIX: `rys${process.pid}x${Date.now() % 1e6}`,
    RATE_LIMIT_PER_SEC: "0",
    HTTP_RATE_LIMIT_PER_SEC: "0",
  };
  const [a, b, c] = [await startGateway(env), await startGateway(env), await startGateway(env)];
  try {
    for (const g of [a, b, c]) await waitUntil(async () => (await g.http("/api/health")).json?.dependencies?.database === "up", 10000, "database up");
    const d = await dashboard(b.url);
    const answers = [];
    // Fired from inside the handler, as a dashboard does: no waiting of any kind.
    d.s.on("stats_update", (u) => {
      answers.push(c.http("/api/stats", { token: dash }).then((r) => ({ seq: u.seq, status: r.status, last: r.json?.lastEventSeq })));
    });
    const widgets = await Promise.all([0, 1, 2, 3].map((i) => widget(a.url, `RYS-${i}`)));
    await waitUntil(() => d.updates.length >= 4, 5000, "the widgets' openings");
    const acks = [];
    for (let round = 0; round < 50; round++) acks.push(...(await Promise.all(widgets.map((w, i) => say(w, `m${round}-${i}`)))));
    assert.ok(acks.every((r) => r.ok), "every message stored");
    const top = Math.max(...acks.map((r) => r.seq));
    await waitUntil(() => d.updates.some((u) => u.seq === top), 10000, "the dashboard has every event");
    const got = await Promise.all(answers);
    assert.ok(got.length >= 200, `${got.length} answers`);
    assert.deepEqual(got.filter((g) => g.status !== 200), [], "every answer is a report");
    const stale = got.filter((g) => g.last < g.seq);
    assert.deepEqual(stale, [], `${stale.length} of ${got.length} answers predate the seq their request followed`);
  } finally {
    await Promise.all([a.stop(), b.stop(), c.stop()]);
  }
});

test("dashboards get presence_stats on connect and when the figures change", async () => {
  const gw = await single();
  try {
    const d = await dashboard(gw.url);
    await waitUntil(() => d.presence.length >= 1, 5000, "presence_stats on connect");
    assert.equal(d.presence[0].onlineUsers, 0);
    assert.equal(d.presence[0].nodes, 1);
    await gw.connect(user("ps-1", "female"));
    const p = await waitUntil(() => d.presence.find((x) => x.onlineUsers === 1), 5000, "presence_stats after a connect");
    assert.deepEqual(p.byGender, { male: 0, female: 1, other: 0 });
    assert.ok(p.peakOnline >= 1);
    assert.ok(Date.parse(p.at) > 0);
  } finally {
    await gw.stop();
  }
});

test("presence_stats at most once a second per socket, the one sent on connect included", async () => {
  const gw = await startGateway({});
  try {
    const at = [];
    const d = await open(gw.url, "/dashboard", { token: dash }, (s) => s.on("presence_stats", (p) => at.push({ t: Date.now(), n: p.onlineUsers })));
    await waitUntil(() => at.length >= 1, 5000, "presence_stats on connect");
    // The figures change every 100 ms for 3.5 s.
    const users = [];
    for (let i = 0; i < 35; i++) {
      users.push(await gw.connect(user(`ps-rate-${i}`, "female")));
      await new Promise((r) => setTimeout(r, 100));
    }
    await waitUntil(() => at.some((x) => x.n === 35), 5000, "the final figures");
    const gaps = at.slice(1).map((x, i) => x.t - at[i].t);
    assert.ok(at.length >= 3, `${at.length} presence_stats`);
    assert.ok(gaps.every((g) => g >= 900), `gaps ${gaps.join(", ")} ms`);
    d.close();
  } finally {
    await gw.stop();
  }
});

// Bursts: a stored batch (up to 500 events) is emitted at once; with a socket queue of 2
// packets it cannot fit, and must wait in the dashboard's backlog, in order, not be lost.
async function burst(gw, n, prefix) {
  const seqs = [];
  for (let i = 0; i < n; i += 50) {
    const r = await Promise.all(
      Array.from({ length: Math.min(50, n - i) }, (_, k) =>
        gw.http("/api/events", { token: publisher, method: "POST", body: { type: "widget_opened", visitorId: `${prefix}-${i + k}`, channel: "web" } }),
      ),
    );
    seqs.push(...r.map((x) => x.json.seq));
  }
  return Math.max(...seqs);
}

test("a burst larger than a dashboard's socket queue arrives whole and in order", async () => {
  const url = freshDatabase();
  const gw = await startGateway({ DATABASE_URL: url, SOCKET_QUEUE_PACKETS: "2", RATE_LIMIT_PER_SEC: "0" });
  try {
    await waitUntil(async () => (await gw.http("/api/health")).json?.dependencies?.database === "up", 10000, "database up");
    const d = await dashboard(gw.url);
    const resyncs = [];
    d.s.on("stats_resync", (r) => resyncs.push(r));
    const top = await burst(gw, 600, "burst");
    await waitUntil(() => d.updates.some((u) => u.seq === top), 10000, "the whole burst");
    const seqs = d.updates.map((u) => u.seq);
    assert.equal(seqs.length, 600);
    assert.deepEqual(seqs, [...seqs].sort((a, b) => a - b));
    assert.deepEqual(resyncs, []);
  } finally {
    await gw.stop();
  }
});

test("a dashboard that falls further behind than its backlog is told to resync, then follows again", async () => {
  const url = freshDatabase();
  const gw = await startGateway({ DATABASE_URL: url, SOCKET_QUEUE_PACKETS: "2", STATS_DASHBOARD_BACKLOG: "3", RATE_LIMIT_PER_SEC: "0" });
  try {
    await waitUntil(async () => (await gw.http("/api/health")).json?.dependencies?.database === "up", 10000, "database up");
    const d = await dashboard(gw.url);
    const resyncs = [];
    d.s.on("stats_resync", (r) => resyncs.push(r));
    const top = await burst(gw, 400, "slow");
    const r = await waitUntil(() => resyncs[0], 10000, "stats_resync");
    assert.ok(r.lastEventSeq > 0 && r.lastEventSeq <= top);
    // What it missed is in the report it is told to fetch...
    const report = await gw.http("/api/stats", { token: dash });
    assert.ok(report.json.lastEventSeq >= r.lastEventSeq);
    // ...and once it has caught up (every event is either delivered or covered by a resync
    // it received), later events reach it again as updates.
    const post = (v) => gw.http("/api/events", { token: publisher, method: "POST", body: { type: "widget_opened", visitorId: v, channel: "web" } });
    const after = (await post("after")).json.seq;
    await waitUntil(() => d.updates.some((u) => u.seq === after) || resyncs.some((x) => x.lastEventSeq >= after), 5000, "caught up");
    const next = (await post("next")).json.seq;
    await waitUntil(() => d.updates.some((u) => u.seq === next), 5000, "updates after the resync");
    assert.ok(d.updates.length < 402, "the overflow was not delivered after all");
  } finally {
    await gw.stop();
  }
});
