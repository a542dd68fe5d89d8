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
    assert.ok(acks.filter((a) => a.ok).length >= 10, "the burst is served");
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
