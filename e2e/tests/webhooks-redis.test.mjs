// Section 12 with the Redis engine: the queue lives in Redis (a stream per bucket, appended
// in the same step as the change), one replica sends at a time, and kill -9 of the replica
// that produced events and held them unsent loses none of them.
import { test } from "node:test";
import assert from "node:assert/strict";
import { spawn, execFileSync } from "node:child_process";
import { mkdtempSync } from "node:fs";
import os from "node:os";
import path from "node:path";
import { startGateway, user, ask, waitUntil } from "../helpers.mjs";
import { startReceiver, verify } from "../webhook-receiver.mjs";

const REDIS_URL = process.env.TEST_REDIS_URL ?? "redis://127.0.0.1:6379";
const SECRET = "whsec-test-0123456789abcdef0123456789";
const of = (events, id) => events.filter((e) => e.presence?.userId === id);

function env(r, extra = {}) {
  return {
    REDIS_URL,
    REDIS_KEY_PREFIX: `wh${process.pid}x${Date.now() % 1000000}`,
    WEBHOOK_URL: r.url,
    WEBHOOK_SECRET: SECRET,
    WEBHOOK_OFFLINE_DELAY_MS: "200",
    PRESENCE_OFFLINE_GRACE_MS: "0",
    PRESENCE_HEARTBEAT_TIMEOUT_MS: "1500",
    PRESENCE_SWEEP_INTERVAL_MS: "250",
    ...extra,
  };
}

test("two replicas: each event once, signed, in version order per user", async () => {
  const r = await startReceiver();
  const e = env(r);
  const [a, b] = await Promise.all([startGateway(e), startGateway(e)]);
  try {
    const users = [];
    for (let i = 0; i < 6; i++) users.push(await (i % 2 ? a : b).connect(user(`whr-${i}`, "other")));
    for (const s of users) await ask(s, "presence:set-status", { status: "live" });
    for (const s of users) s.disconnect();
    await waitUntil(() => r.taken.length === 18, 10000, "18 events");
    for (let i = 0; i < 6; i++) {
      const ev = of(r.taken, `whr-${i}`);
      assert.deepEqual(ev.map((x) => x.type), ["user.online", "user.status", "user.offline"]);
      for (let k = 1; k < 3; k++) assert.ok(ev[k].presence.version > ev[k - 1].presence.version);
    }
    assert.equal(new Set(r.taken.map((x) => x.id)).size, 18, "no event twice");
    for (const q of r.requests) assert.ok(verify(SECRET, q.headers["x-presence-timestamp"], q.body, q.headers["x-presence-signature"]));
  } finally {
    await Promise.all([a.stop(), b.stop()]);
    await r.close();
  }
});

test("kill -9 of the replica holding unsent events loses none: another replica sends them, and its users' offlines", async () => {
  const r = await startReceiver();
  r.answer = 503;
  const e = env(r);
  // The first replica takes every lease; the second waits for them.
  const a = await startGateway(e);
  await waitUntil(() => true, 100);
  const b = await startGateway(e);
  try {
    const socks = [];
    for (let i = 0; i < 5; i++) socks.push(await a.connect(user(`whk-${i}`, "female")));
    for (const s of socks) await ask(s, "presence:set-status", { status: "in_call" });
    await waitUntil(() => r.requests.length >= 2, 5000, "the first replica tried and failed");
    assert.equal(r.taken.length, 0);
    const killedAt = Date.now();
    a.proc.kill("SIGKILL");
    r.answer = 200;
    // The lease expires (10 s), the second replica claims what the first read and never
    // sent, then the sweep's offlines follow.
    await waitUntil(() => of(r.taken, "whk-4").some((x) => x.type === "user.offline"), 30000, "offlines after the kill");
    await waitUntil(() => [0, 1, 2, 3, 4].every((i) => of(r.taken, `whk-${i}`).length >= 3), 10000, "every user's three events");
    for (let i = 0; i < 5; i++) {
      const ev = of(r.taken, `whk-${i}`);
      const types = [...new Set(ev.map((x) => x.id))].map((id) => ev.find((x) => x.id === id).type);
      assert.deepEqual(types, ["user.online", "user.status", "user.offline"], `whk-${i}`);
      for (let k = 1; k < ev.length; k++) assert.ok(ev[k].presence.version >= ev[k - 1].presence.version, "in version order");
    }
    console.log(`kill -9 with 10 unsent events: all delivered by the other replica ${((Date.now() - killedAt) / 1000).toFixed(1)} s later, with the sweep's 5 offlines`);
  } finally {
    a.proc.kill("SIGKILL");
    await b.stop();
    await r.close();
  }
});

test("Redis restarts: with its append-only file the waiting events survive and are sent; empty, the next ones still are", async () => {
  const port = 17000 + (process.pid % 1000);
  const dir = mkdtempSync(path.join(os.tmpdir(), "wh-redis-"));
  const up = () => {
    try {
      return execFileSync("redis-cli", ["-p", String(port), "ping"]).toString().trim() === "PONG";
    } catch {
      return false;
    }
  };
  const start = (persist) =>
    spawn("redis-server", ["--port", String(port), "--bind", "127.0.0.1", "--dir", dir, "--save", "", "--appendonly", persist ? "yes" : "no", "--appendfsync", "always"], { stdio: "ignore" });
  let redis = start(true);
  await waitUntil(up, 5000, "test Redis up");
  const r = await startReceiver();
  r.answer = 503;
  const gw = await startGateway(env(r, { REDIS_URL: `redis://127.0.0.1:${port}` }));
  try {
    const s = await gw.connect(user("whrr-a", "male"));
    await ask(s, "presence:set-status", { status: "live" });
    await waitUntil(() => r.requests.length >= 1, 5000, "tried and failed");
    execFileSync("redis-cli", ["-p", String(port), "shutdown"]);
    await waitUntil(() => !up(), 5000, "Redis down");
    redis = start(true);
    await waitUntil(up, 5000, "Redis back with its file");
    r.answer = 200;
    await waitUntil(() => of(r.taken, "whrr-a").length >= 2, 20000, "the events that waited in Redis");
    assert.deepEqual([...new Set(of(r.taken, "whrr-a").map((e) => e.type))], ["user.online", "user.status"]);

    // Empty this time: what waited is gone with it, but the gateway rebuilds its group and
    // leases and sends what follows.
    execFileSync("redis-cli", ["-p", String(port), "shutdown", "nosave"]);
    await waitUntil(() => !up(), 5000, "Redis down");
    execFileSync("rm", ["-f", "-r", path.join(dir, "appendonlydir")]);
    redis = start(false);
    await waitUntil(up, 5000, "Redis back empty");
    await waitUntil(async () => (await gw.http("/readyz")).status === 200, 10000, "ready again");
    const t = await gw.connect(user("whrr-b", "female"));
    await waitUntil(() => of(r.taken, "whrr-b").length === 1, 20000, "a change after the empty restart");
    s.disconnect();
    t.disconnect();
  } finally {
    await gw.stop();
    await r.close();
    redis.kill("SIGKILL");
  }
});


test("bounded in Redis: past WEBHOOK_QUEUE_MAX the stream's oldest are dropped and counted, never sent later", async () => {
  const r = await startReceiver();
  r.answer = 503;
  // 64 over 64 buckets: one event waits per bucket. One request of one event at a time.
  const gw = await startGateway(env(r, { WEBHOOK_QUEUE_MAX: "64", WEBHOOK_BATCH_MAX: "1", PRESENCE_HEARTBEAT_TIMEOUT_MS: "60000" }));
  const metric = async (name) => Number(((await gw.http("/metrics")).text.match(new RegExp(`${name} (\\d+)`)) ?? [])[1] ?? 0);
  const dropped = () => metric('webhook_events_total\\{result="dropped"\\}');
  try {
    const s = await gw.connect(user("whb-a", "other"));
    for (let i = 1; i <= 20; i++) await ask(s, "presence:set-status", { status: "live", details: { n: i } });
    await waitUntil(() => r.requests.length >= 1, 5000, "the first event tried and refused");
    // One is being retried (it still arrives); of the other 20 all but the newest go (the
    // bound runs every 10 s, and may have run during the 20 changes too).
    await waitUntil(async () => (await dropped()) >= 19, 15000, "19 dropped");
    assert.equal(await metric("webhook_queue_depth"), 1, "one event waits in the stream");
    r.answer = 200;
    await waitUntil(() => r.taken.some((e) => e.presence.details?.n === 20), 10000, "the newest status");
    s.disconnect();
    await waitUntil(() => r.taken.some((e) => e.type === "user.offline"), 10000, "then the offline");
    const got = r.taken.map((e) => [e.type, e.presence.details?.n ?? null]);
    // The one in flight when the stream was trimmed, if one was; the newest status; the offline.
    assert.ok(got.length === 2 || got.length === 3, JSON.stringify(got));
    assert.deepEqual(got.slice(-2), [["user.status", 20], ["user.offline", null]]);
    for (let k = 1; k < got.length; k++) assert.ok(r.taken[k].presence.version > r.taken[k - 1].presence.version, "in version order");
    assert.equal(await dropped(), 22 - got.length, "every change sent or counted dropped, none both");
  } finally {
    await gw.stop();
    await r.close();
  }
});
