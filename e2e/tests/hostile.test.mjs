// Hostile clients: floods, garbage, oversized messages. Refused with a code, never a crash.
import { test, describe, before, after } from "node:test";
import assert from "node:assert/strict";
import { startGateway, user, ask, waitUntil } from "../helpers.mjs";

describe("hostile clients", () => {
  let gw;
  before(async () => (gw = await startGateway({ RATE_LIMIT_PER_SEC: "5", RATE_LIMIT_BURST: "10" })));
  after(async () => gw?.stop());

  test("a flood is cut to the rate with rate_limited acks; the connection and others carry on", async () => {
    const flooder = await gw.connect(user("flood-u", "male"));
    const bystander = await gw.connect(user("calm-u", "female"));
    const acks = await Promise.all(Array.from({ length: 60 }, () => ask(flooder, "presence:get", { userIds: ["a"] })));
    const limited = acks.filter((a) => a.ok === false && a.error.code === "rate_limited").length;
    assert.ok(limited >= 40, `only ${limited} of 60 refused`);
    // The burst of 10, less the join, which is paid from it too.
    assert.ok(acks.filter((a) => a.ok).length >= 9, "the burst is served");
    assert.equal(flooder.connected, true);
    assert.equal((await ask(bystander, "presence:get", { userIds: ["a"] })).ok, true, "others unaffected");
    // The budget refills.
    await waitUntil(async () => (await ask(flooder, "user:heartbeat")).ok, 5000, "the budget to refill");
    flooder.disconnect();
    bystander.disconnect();
  });

  test("garbage payloads and unknown events get bad_request; the connection stays", async () => {
    const s = await gw.connect(user("garbage-u", "male"));
    const cases = [
      ["presence:get", 42],
      ["presence:get", { userIds: [null] }],
      ["presence:get", { userIds: ["ok", { nested: true }] }],
      ["presence:set-status", { status: "live", details: "string" }],
      ["presence:set-status", { status: "live", details: { big: "x".repeat(30_000) } }],
      ["presence:list-online", { limit: -1 }],
      ["presence:list-online", { cursor: "x".repeat(5000) }],
      ["no-such-event", { a: 1 }],
    ];
    for (const [ev, payload] of cases) {
      const r = await ask(s, ev, payload);
      assert.equal(r.ok, false, `${ev} ${JSON.stringify(payload).slice(0, 40)}`);
      assert.equal(r.error.code, "bad_request");
      assert.equal(typeof r.error.message, "string");
    }
    assert.equal(s.connected, true);
    assert.equal((await ask(s, "user:heartbeat")).ok, true);
    s.disconnect();
  });

  test("the largest legitimate request (200 ids of 128 characters, ~27 KiB) is served over WebSocket", async () => {
    // The read buffer is 256 bytes per connection; a large message must still arrive whole.
    const s = await gw.connect(user("wide-u", "female"), { transports: ["websocket"] });
    const ids = Array.from({ length: 200 }, (_, i) => `${i}`.padStart(128, "w"));
    ids[0] = "wide-u";
    const r = await ask(s, "presence:get", { userIds: ids });
    assert.equal(r.ok, true, JSON.stringify(r).slice(0, 200));
    assert.equal(r.presences.length, 200);
    assert.equal(r.presences[0].online, true);
    assert.equal(r.presences[1].userId, ids[1]);
    s.disconnect();
  });

  test("a message over the WebSocket limit closes only that connection", async () => {
    const big = await gw.connect(user("big-u", "male"), { transports: ["websocket"] });
    const other = await gw.connect(user("small-u", "female"), { transports: ["websocket"] });
    const closed = new Promise((resolve) => big.once("disconnect", resolve));
    big.emit("presence:get", { userIds: ["x".repeat(200 * 1024)] });
    const reason = await closed;
    assert.match(reason, /transport/);
    assert.equal((await ask(other, "user:heartbeat")).ok, true);
    const h = await gw.http("/api/health");
    assert.equal(h.status, 200);
    other.disconnect();
  });
});

// Text PostgreSQL cannot store (NUL) is refused where it enters, on every path, and never
// reaches the database: the writers keep writing everyone else's changes.
test("a NUL in any text is refused on every path, and normal changes still land in the database", async () => {
  const { freshDatabase, storedPresence, psql } = await import("../db.mjs");
  const { token, connect } = await import("../helpers.mjs");
  const { io } = await import("socket.io-client");
  const url = freshDatabase();
  const gw = await startGateway({ DATABASE_URL: url, PRESENCE_DB_ONLINE_DEBOUNCE_MS: "0" });
  try {
    await waitUntil(async () => (await gw.http("/api/health")).json?.dependencies?.database === "up", 10000, "database up");
    const s = await gw.connect(user("nul-u", "female"));
    for (const details of [{ x: "\u0000" }, { "k\u0000": 1 }, { deep: [{ a: "b\u0000" }] }]) {
      const r = await ask(s, "presence:set-status", { status: "live", details });
      assert.deepEqual([r.ok, r.error?.code], [false, "bad_request"], JSON.stringify(details));
    }
    // A token whose name claim holds one.
    await assert.rejects(connect(gw.url, { token: token({ sub: "nul-named", gender: "female", name: "a\u0000b" }) }), /^Error: unauthorized/);
    // Widget handshakes and messages.
    const widget = (auth) =>
      new Promise((resolve, reject) => {
        const w = io(gw.url + "/widget", { auth, reconnection: false, forceNew: true, transports: ["websocket"] });
        w.once("connect", () => resolve(w));
        w.once("connect_error", (e) => (w.close(), reject(e)));
      });
    for (const field of ["name", "country", "city"]) {
      await assert.rejects(widget({ visitorId: "NUL-W", channel: "web", [field]: "x\u0000" }), /^Error: unauthorized/, field);
    }
    const w = await widget({ visitorId: "NUL-W", channel: "web", name: "fine" });
    const m = await w.timeout(5000).emitWithAck("widget:message", { text: "hi\u0000there" });
    assert.deepEqual([m.ok, m.error?.code], [false, "bad_request"]);
    assert.equal((await w.timeout(5000).emitWithAck("widget:message", { text: "hello" })).ok, true, "a clean one is stored");
    w.disconnect();
    // HTTP: bodies and query strings.
    const publisher = token({ sub: "nul-bot", roles: ["publisher"] });
    for (const body of [
      { type: "new_message", visitorId: "v", channel: "web", text: "a\u0000" },
      { type: "new_message", visitorId: "v", channel: "web", city: "\u0000" },
      { type: "widget_opened", visitorId: "v", channel: "web", idempotencyKey: "k\u0000" },
    ]) {
      const r = await gw.http("/api/events", { token: publisher, method: "POST", body });
      assert.deepEqual([r.status, r.json?.error?.code], [400, "bad_request"], JSON.stringify(body));
    }
    const female = token({ sub: "nul-viewer", gender: "female" });
    for (const path of ["/api/users/search?q=a%00b", "/api/presence?ids=a%00", "/api/presence/a%00b"]) {
      const r = await gw.http(path, { token: female });
      assert.equal(r.status >= 400 && r.status < 500, true, `${path}: ${r.status}`);
      assert.equal(typeof r.json?.error?.code, "string", path);
    }
    const tz = await gw.http("/api/stats?tz=UTC%00", { token: token({ sub: "nul-dash", roles: ["dashboard"] }) });
    assert.deepEqual([tz.status, tz.json?.error?.code], [400, "bad_request"]);
    // Nothing of it reached the database, and normal changes still do.
    const r = await ask(s, "presence:set-status", { status: "in_call", details: { room: "ok" } });
    assert.equal(r.ok, true);
    await waitUntil(() => storedPresence(url, "nul-u")?.status === "in_call", 5000, "a normal change lands");
    assert.equal(Number(psql(url, "SELECT count(*) FROM stats_events WHERE visitor_id = 'NUL-W' AND type = 'new_message'")[0][0]), 1);
    s.disconnect();
  } finally {
    await gw.stop();
  }
});
