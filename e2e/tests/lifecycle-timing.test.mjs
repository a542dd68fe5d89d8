// Heartbeats, the sweep, the offline grace and the server heartbeat, with short timeouts.
import { test, describe, before, after } from "node:test";
import assert from "node:assert/strict";
import { startGateway, user, ask, recorder, barrier, sweptAfter, waitUntil, FAST } from "../helpers.mjs";

describe("heartbeats and the sweep (1.5 s timeout)", () => {
  let gw;
  before(async () => (gw = await startGateway({ ...FAST })));
  after(async () => gw?.stop());

  test("a heartbeating user stays online; a silent one goes offline once, then returns by speaking", async () => {
    const v = await gw.connect(user("hb-viewer", "female"));
    const seen = recorder(v);
    // The viewer must not be swept either.
    const keepViewer = setInterval(() => v.emit("user:heartbeat"), 300);
    const alive = await gw.connect(user("hb-alive", "female"));
    const keepAlive = setInterval(() => alive.emit("user:heartbeat"), 300);
    const silent = await gw.connect(user("hb-silent", "female"));
    await seen.waitFor((p) => p.userId === "hb-silent" && p.online);

    const off = await seen.waitFor((p) => p.userId === "hb-silent" && !p.online, 6000, "the silent user swept");
    assert.ok(off.lastSeen);
    assert.equal(silent.connected, true, "the socket itself stays up (Engine.IO pings are not presence)");

    // Speaking again brings the user back.
    const ack = await ask(silent, "user:heartbeat");
    assert.deepEqual(ack, { ok: true });
    await seen.waitFor((p) => p.userId === "hb-silent" && p.online && p.version > off.version, 5000, "revival");

    await barrier(gw, seen);
    assert.deepEqual(seen.of("hb-silent").map((p) => p.status), ["online", "offline", "online"]);
    assert.deepEqual(seen.of("hb-alive").map((p) => p.status), ["online"], "heartbeats keep a user online");

    const h = await gw.http("/api/health");
    assert.ok(h.json.presence.totalSwepts >= 1);
    assert.ok(Date.parse(h.json.presence.lastSweepAt) > 0);
    clearInterval(keepViewer);
    clearInterval(keepAlive);
    for (const s of [v, alive, silent]) s.disconnect();
  });

  test("any event counts as hearing from the client", async () => {
    const v = await gw.connect(user("any-viewer", "female"));
    const seen = recorder(v);
    const keepViewer = setInterval(() => v.emit("user:heartbeat"), 300);
    const u = await gw.connect(user("any-u", "female"));
    const keep = setInterval(() => u.emit("presence:get", { userIds: ["x"] }, () => {}), 300);
    const started = Date.now();
    await waitUntil(() => Date.now() - started > 3000, 5000, "two timeouts to pass");
    await barrier(gw, seen);
    assert.deepEqual(seen.of("any-u").map((p) => p.status), ["online"]);
    clearInterval(keep);
    clearInterval(keepViewer);
    u.disconnect();
    v.disconnect();
  });
});

describe("offline grace (1.5 s)", () => {
  let gw;
  before(async () => (gw = await startGateway({ PRESENCE_OFFLINE_GRACE_MS: "1500", PRESENCE_SWEEP_INTERVAL_MS: "250" })));
  after(async () => gw?.stop());

  test("a reconnect inside the grace is never announced offline", async () => {
    const v = await gw.connect(user("gr-viewer", "female"));
    const seen = recorder(v);
    const a = await gw.connect(user("gr-u", "female"));
    await seen.waitFor((p) => p.userId === "gr-u" && p.online);
    const closedAt = Date.now();
    a.disconnect();
    const b = await gw.connect(user("gr-u", "female"));
    // Past the grace deadline and a sweep after it: any pending offline would have fired.
    await sweptAfter(gw, closedAt + 1600);
    await barrier(gw, seen);
    assert.deepEqual(seen.of("gr-u").map((p) => p.status), ["online"]);
    b.disconnect();
    v.disconnect();
  });

  test("without a reconnect, offline comes after the grace, once", async () => {
    const v = await gw.connect(user("gr2-viewer", "female"));
    const seen = recorder(v);
    const a = await gw.connect(user("gr2-u", "female"));
    await seen.waitFor((p) => p.userId === "gr2-u" && p.online);
    const closedAt = Date.now();
    a.disconnect();
    const off = await seen.waitFor((p) => p.userId === "gr2-u" && !p.online, 5000);
    const waited = Date.now() - closedAt;
    assert.ok(waited >= 1400, `offline announced after ${waited} ms, before the grace`);
    const g = await ask(v, "presence:get", { userIds: ["gr2-u"] });
    assert.equal(g.presences[0].status, "offline");
    assert.equal(g.presences[0].lastSeen, off.lastSeen);
    await barrier(gw, seen);
    assert.deepEqual(seen.of("gr2-u").map((p) => p.status), ["online", "offline"]);
    v.disconnect();
  });
});

describe("server heartbeat", () => {
  let gw;
  before(async () => (gw = await startGateway({ PRESENCE_ENABLE_SERVER_HEARTBEAT: "true", PRESENCE_SERVER_HEARTBEAT_INTERVAL_MS: "200" })));
  after(async () => gw?.stop());

  test("each socket gets server:heartbeat with a time", async () => {
    const s = await gw.connect(user("sh-u", "male"));
    const beat = await new Promise((resolve) => s.once("server:heartbeat", resolve));
    assert.ok(Date.parse(beat.at) > 0);
    s.disconnect();
  });
});
