// Every bug story of ../shared/ORIGIN.md (presence service) as a test.
import { test, describe, before, after } from "node:test";
import assert from "node:assert/strict";
import { startGateway, user, ask, recorder, barrier, connect } from "../helpers.mjs";

describe("the old presence service's bugs", () => {
  let gw;
  before(async () => (gw = await startGateway()));
  after(async () => gw?.stop());

  test("two registrations racing: one online announcement", async () => {
    const v = await gw.connect(user("race-viewer", "female"));
    const seen = recorder(v);
    const socks = await Promise.all(Array.from({ length: 8 }, () => gw.connect(user("race-u", "female"))));
    await barrier(gw, seen);
    assert.deepEqual(seen.of("race-u").map((p) => p.status), ["online"]);
    const h = await gw.http("/api/health");
    assert.equal(h.json.sockets.connectedUsers >= 2, true);
    socks.forEach((s) => s.disconnect());
    v.disconnect();
  });

  test("a stale socket's late disconnect does not take a reconnected user offline", async () => {
    const v = await gw.connect(user("stale-viewer", "female"));
    const seen = recorder(v);
    const old = await gw.connect(user("stale-u", "female"));
    await seen.waitFor((p) => p.userId === "stale-u" && p.online);
    // The app reconnects (new socket) before the old one's disconnect reaches the server.
    const fresh = await gw.connect(user("stale-u", "female"));
    old.disconnect();
    await barrier(gw, seen);
    assert.deepEqual(seen.of("stale-u").map((p) => p.status), ["online"]);
    const g = await ask(v, "presence:get", { userIds: ["stale-u"] });
    assert.equal(g.presences[0].online, true);
    fresh.disconnect();
    v.disconnect();
  });

  test("events sent the instant a client connects are not dropped", async () => {
    // socket.io-client flushes its send buffer right after CONNECT: the handlers must be
    // registered by then.
    const s = gw.socket(user("eager-u", "female"));
    const acks = await Promise.all([
      s.timeout(5000).emitWithAck("user:heartbeat"),
      s.timeout(5000).emitWithAck("presence:set-status", { status: "live", details: { a: 1 } }),
      s.timeout(5000).emitWithAck("presence:get", { userIds: ["eager-u"] }),
    ]);
    assert.deepEqual(acks.map((a) => a.ok), [true, true, true]);
    s.disconnect();
  });

  test("the insecure userId login is off in production, whatever the switch says", async () => {
    const prod = await startGateway({ APP_ENV: "production", SOCKET_ALLOW_INSECURE_USERID: "true" });
    try {
      await assert.rejects(connect(prod.url, { userId: "u1", gender: "male" }), /^Error: unauthorized/);
      assert.match(prod.output(), /SOCKET_ALLOW_INSECURE_USERID is ignored in production/);
    } finally {
      await prod.stop();
    }
    const dev = await startGateway({ SOCKET_ALLOW_INSECURE_USERID: "true" });
    try {
      const s = await connect(dev.url, { userId: "u1", gender: "male" });
      s.disconnect();
      await assert.rejects(connect(dev.url, { userId: "u1", gender: "robot" }), /unauthorized/);
    } finally {
      await dev.stop();
    }
    // Off by default even in development.
    await assert.rejects(connect(gw.url, { userId: "u1", gender: "male" }), /unauthorized/);
  });

  test("no timers or listeners outlive the sockets: counts return to zero", async () => {
    const socks = await Promise.all(Array.from({ length: 20 }, (_, i) => gw.connect(user(`leak-${i}`, "male"))));
    socks.forEach((s) => s.disconnect());
    const h = await (async () => {
      for (let i = 0; i < 250; i++) {
        const r = await gw.http("/api/health");
        if (r.json.sockets.connected === 0) return r;
        await new Promise((r) => setTimeout(r, 20));
      }
      return gw.http("/api/health");
    })();
    assert.equal(h.json.sockets.connected, 0);
    assert.equal(h.json.sockets.connectedUsers, 0);
    const m = await gw.http("/metrics");
    assert.match(m.text, /gateway_connected_sockets\{[^}]*namespace="\/"[^}]*\} 0\b/);
  });
});
