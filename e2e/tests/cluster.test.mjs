// Several replicas sharing Redis (section 8): presence is cluster-wide, every change is
// announced once to each viewer on every replica, and a replica killed without warning
// loses its users within PRESENCE_HEARTBEAT_TIMEOUT_MS + 2 x PRESENCE_SWEEP_INTERVAL_MS.
import { test, describe, before, after } from "node:test";
import assert from "node:assert/strict";
import { startGateway, user, ask, recorder, barrier, waitUntil } from "../helpers.mjs";

const REDIS_URL = process.env.TEST_REDIS_URL ?? "redis://127.0.0.1:6379";

describe("three replicas on one Redis", () => {
  const prefix = `e2e${process.pid}x${Date.now() % 100000}`;
  const env = { REDIS_URL, REDIS_KEY_PREFIX: prefix, PRESENCE_HEARTBEAT_TIMEOUT_MS: "1500", PRESENCE_SWEEP_INTERVAL_MS: "250" };
  let a, b, c;
  before(async () => ([a, b, c] = await Promise.all([startGateway(env), startGateway(env), startGateway(env)])));
  after(async () => Promise.all([a, b, c].map((g) => g?.stop())));

  test("a change on one replica reaches viewers on the others, once", async () => {
    const va = await a.connect(user("cl-viewer-a", "other"));
    const vc = await c.connect(user("cl-viewer-c", "female"));
    const seenA = recorder(va);
    const seenC = recorder(vc);
    const u = await b.connect(user("cl-u", "female"));
    await seenA.waitFor((p) => p.userId === "cl-u" && p.online);
    await ask(u, "presence:set-status", { status: "live", details: { s: 1 } });
    await seenC.waitFor((p) => p.userId === "cl-u" && p.status === "live");
    // A second connection elsewhere keeps the user online when the first closes; the live
    // status was the first connection's and goes with it (section 11).
    const u2 = await c.connect(user("cl-u", "female"));
    u.disconnect();
    // Health shows the figures as last read in the background (at most about a second old).
    const h = await waitUntil(async () => {
      const r = (await a.http("/api/health")).json;
      return r.presence.onlineUsers >= 3 && r;
    }, 5000, "cluster-wide figures");
    assert.equal(h.dependencies.redis, "up");
    u2.disconnect();
    await seenA.waitFor((p) => p.userId === "cl-u" && !p.online);
    await barrier(a, seenA);
    await barrier(c, seenC);
    for (const seen of [seenA, seenC]) {
      assert.deepEqual(seen.of("cl-u").map((p) => p.status), ["online", "live", "online", "offline"]);
      const v = seen.of("cl-u").map((p) => p.version);
      assert.deepEqual(v, [...v].sort((x, y) => x - y));
    }
    const got = await ask(va, "presence:get", { userIds: ["cl-u"] });
    assert.equal(got.presences[0].status, "offline");
    va.disconnect();
    vc.disconnect();
  });

  test("kill -9: the dead replica's users go offline in time, once; users also elsewhere stay", async () => {
    const d = await startGateway(env);
    const viewer = await a.connect(user("kill-viewer", "other"));
    const keep = setInterval(() => viewer.emit("user:heartbeat"), 300);
    const seen = recorder(viewer);
    const lone = await d.connect(user("kill-lone", "female"));
    const both1 = await d.connect(user("kill-both", "female"));
    const both2 = await b.connect(user("kill-both", "female"));
    const keepBoth = setInterval(() => both2.emit("user:heartbeat"), 300);
    await seen.waitFor((p) => p.userId === "kill-lone" && p.online);
    await seen.waitFor((p) => p.userId === "kill-both" && p.online);
    const killedAt = Date.now();
    d.proc.kill("SIGKILL");
    await seen.waitFor((p) => p.userId === "kill-lone" && !p.online, 6000, "the dead replica's user offline");
    const took = Date.now() - killedAt;
    // Silent since its last event: within the timeout plus two sweeps of the kill (and the
    // test's own scheduling slack).
    assert.ok(took <= 1500 + 2 * 250 + 500, `offline after ${took} ms`);
    await barrier(a, seen);
    assert.deepEqual(seen.of("kill-lone").map((p) => p.status), ["online", "offline"]);
    assert.deepEqual(seen.of("kill-both").map((p) => p.status), ["online"], "still connected on another replica");
    // No key outlives its purpose: the dead replica's connection set is gone, and so is its
    // entry in the replica index.
    const { execFileSync } = await import("node:child_process");
    const redis = (...args) => execFileSync("redis-cli", ["-u", REDIS_URL, ...args]).toString().trim();
    await d.exited;
    const dNode = d.nodeId;
    await waitUntil(() => redis("sismember", `${prefix}:nodes`, dNode) === "0", 3000, "dead replica forgotten");
    assert.equal(redis("exists", `${prefix}:nc:{${dNode}}`), "0");
    clearInterval(keep);
    clearInterval(keepBoth);
    for (const s of [viewer, lone, both1, both2]) s.disconnect();
  });

  test("rolling restart: users who reconnect within the shutdown grace are never announced offline", async () => {
    const genv = { ...env, PRESENCE_SHUTDOWN_GRACE_MS: "3000" };
    const r1 = await startGateway(genv);
    const r2 = await startGateway(genv);
    const viewer = await a.connect(user("roll-viewer", "other"));
    const keep = setInterval(() => viewer.emit("user:heartbeat"), 300);
    const seen = recorder(viewer);
    const { io } = await import("socket.io-client");
    // Clients on r1 reconnect by themselves, and a load balancer would send them to r2.
    const clients = ["roll-1", "roll-2", "roll-3"].map((id) => {
      const s = io(r1.url, { auth: user(id, "female"), reconnectionDelay: 50, reconnectionDelayMax: 100 });
      s.io.on("reconnect_attempt", () => (s.io.uri = r2.url));
      return s;
    });
    // Real clients heartbeat; silent ones would (rightly) be swept after 1.5 s.
    const beats = setInterval(() => clients.forEach((s) => s.connected && s.emit("user:heartbeat")), 300);
    try {
      await waitUntil(() => clients.every((s) => s.connected), 5000, "clients on r1");
      for (const id of ["roll-1", "roll-2", "roll-3"]) await seen.waitFor((p) => p.userId === id && p.online);
      const stoppedAt = Date.now();
      r1.proc.kill("SIGTERM");
      assert.equal((await r1.exited).code, 0);
      await waitUntil(() => clients.every((s) => s.connected), 8000, "clients back, on r2");
      const h = await r2.http("/api/health");
      assert.equal(h.json.sockets.connected, 3);
      // Past the grace, with sweeps after it: a pending offline would have fired by now.
      await waitUntil(() => Date.now() > stoppedAt + 3500, 6000, "the grace to pass");
      await barrier(a, seen);
      for (const id of ["roll-1", "roll-2", "roll-3"]) {
        assert.deepEqual(seen.of(id).map((p) => p.status), ["online"], `${id} never offline`);
      }
    } finally {
      clearInterval(keep);
      clearInterval(beats);
      clients.forEach((s) => s.disconnect());
      viewer.disconnect();
      if (r1.proc.exitCode === null) r1.proc.kill("SIGKILL");
      await r2.stop();
    }
  });
});
