// Sections 6 and 7: the HTTP API and the metrics.
import { test, describe, before, after } from "node:test";
import assert from "node:assert/strict";
import { startGateway, user, token, recorder } from "../helpers.mjs";

const CONTRACT_METRICS = [
  "presence_online_users", "presence_peak_online_users", "presence_connections_total",
  "presence_disconnections_total", "presence_swept_total", "presence_heartbeats_total",
  "presence_updates_published_total", "presence_updates_delivered_total",
  "gateway_connected_sockets", "presence_fanout_latency_seconds", "stats_events_total",
];

describe("HTTP API", () => {
  let gw;
  const male = token({ sub: "h-m", gender: "male" });
  const female = token({ sub: "h-f", gender: "female" });
  const admin = token({ sub: "ops", roles: ["admin"] });
  before(async () => (gw = await startGateway({ ADMIN_TOKEN: "static-admin-token-1234" })));
  after(async () => gw?.stop());

  test("liveness, readiness and health", async () => {
    assert.equal((await gw.http("/healthz")).status, 200);
    const r = await gw.http("/readyz");
    assert.equal(r.status, 200);
    const s1 = await gw.connect(user("hh-1", "female"));
    const s2 = await gw.connect(user("hh-1", "female"));
    const h = await gw.http("/api/health");
    assert.equal(h.status, 200);
    assert.equal(h.json.status, "ok");
    assert.match(h.json.node, /^e2e-/);
    for (const k of ["onlineUsers", "peakOnline", "totalConnections", "totalDisconnections", "totalSwepts", "lastSweepAt", "uptimeMs"]) {
      assert.ok(k in h.json.presence, k);
    }
    assert.ok(h.json.presence.onlineUsers >= 1);
    assert.ok(h.json.presence.peakOnline >= h.json.presence.onlineUsers);
    assert.ok(h.json.presence.totalConnections >= 2);
    assert.equal(h.json.sockets.connected, 2);
    assert.equal(h.json.sockets.connectedUsers, 1);
    assert.deepEqual(h.json.dependencies, { redis: "disabled", database: "disabled" });
    s1.disconnect();
    s2.disconnect();
  });

  test("presence endpoints apply the visibility rule", async () => {
    const sm = await gw.connect({ token: male });
    const v = recorder(sm);
    const sf = await gw.connect({ token: female });
    await v.waitFor((p) => p.userId === "h-f");
    const one = await gw.http("/api/presence/h-f", { token: male });
    assert.equal(one.status, 200);
    assert.equal(one.json.userId, "h-f");
    assert.equal(one.json.online, true);
    const hidden = await gw.http("/api/presence/h-m2", { token: male });
    assert.equal(hidden.status, 404, "a man cannot look up a man (nor an unknown 'other')");
    assert.equal(hidden.json.error.code, "not_found");
    assert.equal((await gw.http("/api/presence/h-m", { token: male })).status, 200, "but himself");
    const many = await gw.http("/api/presence?ids=h-f,h-m,h-nobody", { token: male });
    assert.deepEqual(many.json.presences.map((p) => p.userId), ["h-f", "h-m"]);
    const fmany = await gw.http("/api/presence?ids=h-f,h-m,h-nobody", { token: female });
    assert.equal(fmany.json.presences.length, 3);
    const ids = Array.from({ length: 201 }, (_, i) => `i${i}`).join(",");
    const tooMany = await gw.http(`/api/presence?ids=${ids}`, { token: female });
    assert.equal(tooMany.status, 400);
    assert.equal(tooMany.json.error.code, "bad_request");
    sm.disconnect();
    sf.disconnect();
  });

  test("database-backed endpoints say they are unavailable without DATABASE_URL", async () => {
    const s = await gw.http("/api/users/search?q=a", { token: female });
    assert.equal(s.status, 503);
    assert.equal(s.json.error.code, "unavailable");
    assert.equal((await gw.http("/api/stats", { token: female })).status, 403);
    assert.equal((await gw.http("/api/stats", { token: token({ sub: "d", roles: ["dashboard"] }) })).status, 503);
    assert.equal((await gw.http("/api/check-online-status", { token: admin })).status, 503);
    const nf = await gw.http("/api/nope");
    assert.equal(nf.status, 404);
    assert.equal(nf.json.error.code, "not_found");
  });

  test("admin views: debug presence and socket status, with a JWT or ADMIN_TOKEN", async () => {
    const ws = await gw.connect(user("dbg-ws", "female"), { transports: ["websocket"] });
    const poll = await gw.connect(user("dbg-poll", "male"), { transports: ["polling"] });
    const p = await gw.http("/api/debug/presence", { token: admin });
    assert.equal(p.status, 200);
    const online = p.json.onlineUsers.map((u) => u.userId);
    assert.ok(online.includes("dbg-ws") && online.includes("dbg-poll"), "an admin sees everyone");
    const st = await gw.http("/api/debug/socket-status", { token: "static-admin-token-1234" });
    assert.equal(st.status, 200);
    const byUser = Object.fromEntries(st.json.sockets.map((s) => [s.userId, s]));
    assert.equal(byUser["dbg-ws"].transport, "websocket");
    assert.equal(byUser["dbg-poll"].transport, "polling");
    assert.equal(byUser["dbg-ws"].namespace, "/");
    assert.ok(Date.parse(byUser["dbg-ws"].lastHeardAt) > 0);
    ws.disconnect();
    poll.disconnect();
  });

  test("/metrics exposes every contract metric", async () => {
    const s = await gw.connect(user("met-u", "female"));
    await new Promise((r) => s.emit("user:heartbeat", r));
    const m = await gw.http("/metrics");
    assert.equal(m.status, 200);
    for (const name of CONTRACT_METRICS) assert.match(m.text, new RegExp(`^${name}[{ _]`, "m"), name);
    assert.match(m.text, /presence_fanout_latency_seconds_bucket\{/, "a histogram, not a summary");
    assert.match(m.text, /presence_heartbeats_total\{node="e2e-[^"]+"\} [1-9]/);
    s.disconnect();
  });
});

test("every HTTP error is the JSON error shape: oversized bodies, unknown paths, wrong methods, malformed query strings", async () => {
  const gw = await startGateway({});
  const publisher = token({ sub: "err-bot", roles: ["publisher"] });
  const female = token({ sub: "err-f", gender: "female" });
  try {
    const shape = (r, status, code, what) => {
      assert.equal(r.status, status, `${what}: ${r.status} ${r.text.slice(0, 80)}`);
      assert.equal(r.json?.error?.code, code, `${what}: ${r.text.slice(0, 80)}`);
      assert.equal(typeof r.json.error.message, "string", what);
    };
    const big = { type: "new_message", visitorId: "v", channel: "web", text: "x".repeat(70 * 1024) };
    shape(await gw.http("/api/events", { token: publisher, method: "POST", body: big }), 413, "payload_too_large", "70 KiB event");
    shape(await gw.http("/api/no/such/path"), 404, "not_found", "unknown path");
    shape(await gw.http("/api/health", { method: "POST", body: {} }), 405, "bad_request", "POST /api/health");
    shape(await gw.http("/api/events", { token: publisher }), 405, "bad_request", "GET /api/events");
    shape(await gw.http("/api/presence?ids=a&ids=b", { token: female }), 400, "bad_request", "ids twice");
    shape(await gw.http("/api/users/search?q=a&q=b", { token: female }), 400, "bad_request", "q twice");
    shape(await gw.http("/api/presence/%FF%FE", { token: female }), 400, "bad_request", "a path segment that is not UTF-8");
    const notJson = await fetch(gw.url + "/api/events", { method: "POST", headers: { authorization: `Bearer ${publisher}`, "content-type": "application/json" }, body: "{nope" });
    assert.equal(notJson.status, 400);
    assert.equal((await notJson.json()).error.code, "bad_request");
  } finally {
    await gw.stop();
  }
});
