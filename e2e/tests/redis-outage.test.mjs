// Redis goes away and comes back empty (it keeps nothing on disk): replicas keep their
// sockets, refuse new handshakes as `unavailable`, report not ready, and once Redis is back
// rebuild presence from their live connections, announcing nothing that did not change.
// Uses a Redis of its own, on its own port, so stopping it disturbs no other test.
import { test } from "node:test";
import assert from "node:assert/strict";
import { spawn, execFileSync } from "node:child_process";
import { startGateway, user, ask, recorder, barrier, waitUntil, connect } from "../helpers.mjs";

const port = 16000 + (process.pid % 1000);
const redisUp = () => {
  try {
    return execFileSync("redis-cli", ["-p", String(port), "ping"]).toString().trim() === "PONG";
  } catch {
    return false;
  }
};
function startRedis() {
  const p = spawn("redis-server", ["--port", String(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"], { stdio: "ignore" });
  return p;
}

test("Redis stops for a while and returns empty: nothing is lost or announced twice", async () => {
  let redis = startRedis();
  await waitUntil(redisUp, 5000, "test Redis up");
  const env = { REDIS_URL: `redis://127.0.0.1:${port}`, PRESENCE_HEARTBEAT_TIMEOUT_MS: "1500", PRESENCE_SWEEP_INTERVAL_MS: "250" };
  const a = await startGateway(env);
  const b = await startGateway(env);
  const viewer = await a.connect(user("out-viewer", "other"));
  const seen = recorder(viewer);
  const resyncs = [];
  viewer.on("presence:resync", (r) => resyncs.push(r));
  const x = await b.connect(user("out-x", "female"));
  const beats = setInterval(() => [viewer, x].forEach((s) => s.connected && s.emit("user:heartbeat")), 300);
  try {
    const live = await ask(x, "presence:set-status", { status: "live", details: { stream: 7 } });
    await seen.waitFor((p) => p.userId === "out-x" && p.status === "live");

    execFileSync("redis-cli", ["-p", String(port), "shutdown", "nosave"]);
    await waitUntil(async () => (await a.http("/readyz")).status === 503, 5000, "readyz 503");
    const h = await a.http("/api/health");
    assert.equal(h.json.status, "degraded");
    assert.equal(h.json.dependencies.redis, "down");
    await assert.rejects(connect(a.url, user("out-new", "male")), /^Error: unavailable/);
    const refused = await ask(viewer, "presence:get", { userIds: ["out-x"] });
    assert.deepEqual([refused.ok, refused.error?.code], [false, "unavailable"]);
    // Ten seconds down, as an operator would see it: several heartbeat timeouts long.
    const downSince = Date.now();
    await waitUntil(() => Date.now() - downSince > 10000, 12000, "the outage");
    assert.equal(viewer.connected && x.connected, true, "sockets kept through the outage");

    redis = startRedis();
    await waitUntil(redisUp, 5000, "test Redis back");
    const backAt = Date.now();
    await waitUntil(async () => (await a.http("/readyz")).status === 200 && (await b.http("/readyz")).status === 200, 5000, "ready again");
    const restored = await waitUntil(async () => {
      const r = await ask(viewer, "presence:get", { userIds: ["out-x"] });
      return r.ok && r.presences[0].status === "live" && r.presences[0];
    }, 5000, "x restored as live");
    assert.ok(Date.now() - backAt < 5000, "rebuilt within 5 s of Redis returning");
    assert.equal(restored.version, live.presence.version, "restored as it was, same version");
    assert.deepEqual(restored.details, { stream: 7 });
    // Its replica's subscription was re-established: what was published meanwhile was
    // missed, and the viewer is told to refetch.
    await waitUntil(() => resyncs.length > 0, 5000, "presence:resync after the resubscription");
    assert.deepEqual(resyncs[0], { reason: "resubscribed" });
    // Changes flow again (subscriptions are back), and nothing else was announced meanwhile.
    x.disconnect();
    await seen.waitFor((p) => p.userId === "out-x" && !p.online, 5000, "offline after the outage");
    await barrier(a, seen);
    assert.deepEqual(seen.of("out-x").map((p) => p.status), ["online", "live", "offline"]);
  } finally {
    clearInterval(beats);
    viewer.disconnect();
    x.disconnect();
    await Promise.all([a.stop(), b.stop()]);
    try { execFileSync("redis-cli", ["-p", String(port), "shutdown", "nosave"]); } catch {}
    redis.kill();
  }
});

test("a subscription whose snapshot cannot be read is refused as unavailable and leaves nothing subscribed", async () => {
  let redis = startRedis();
  await waitUntil(redisUp, 5000, "test Redis up");
  const gw = await startGateway({ REDIS_URL: `redis://127.0.0.1:${port}` });
  const viewer = await gw.connect({ ...user("snap-viewer", "female"), presence: "subscriptions" });
  try {
    const first = await ask(viewer, "presence:subscribe", { userIds: ["snap-a"] });
    assert.deepEqual([first.ok, first.subscribed], [true, 1]);

    execFileSync("redis-cli", ["-p", String(port), "shutdown", "nosave"]);
    const refused = await ask(viewer, "presence:subscribe", { userIds: ["snap-b", "snap-c"] });
    assert.deepEqual([refused.ok, refused.error?.code], [false, "unavailable"]);
    assert.ok(!/redis|connection|io error/i.test(refused.error.message), `no internals: ${refused.error.message}`);

    redis = startRedis();
    await waitUntil(redisUp, 5000, "test Redis back");
    await waitUntil(async () => (await gw.http("/readyz")).status === 200, 5000, "ready again");
    // The refused request added nothing: one more id makes two, not four.
    const again = await waitUntil(async () => {
      const r = await ask(viewer, "presence:subscribe", { userIds: ["snap-d"] });
      return r.ok && r;
    }, 5000, "subscribe works again");
    assert.equal(again.subscribed, 2, "snap-a and snap-d; snap-b and snap-c were taken back");
    const left = await ask(viewer, "presence:unsubscribe", { userIds: ["snap-b", "snap-c"] });
    assert.equal(left.subscribed, 2);
  } finally {
    viewer.disconnect();
    await gw.stop();
    try { execFileSync("redis-cli", ["-p", String(port), "shutdown", "nosave"]); } catch {}
    redis.kill();
  }
});
