// Health during outages: /healthz, /readyz, /api/health and /metrics answer within a second
// whatever Redis or PostgreSQL are doing (killed, paused, stopped), from figures each replica
// keeps refreshed in the background, with `dependencies` telling the truth; and a request to
// them sends nothing of its own to Redis. Uses a Redis and a PostgreSQL of its own.
import { test } from "node:test";
import assert from "node:assert/strict";
import { spawn, execFileSync } from "node:child_process";
import { startGateway, waitUntil } from "../helpers.mjs";
import { ownPostgres, freshDatabase } from "../db.mjs";

const PATHS = ["/healthz", "/readyz", "/api/health", "/metrics"];
const redisPort = 18000 + (process.pid % 1000);
const pgPort = 19000 + (process.pid % 1000);

const cli = (...args) => execFileSync("redis-cli", ["-p", String(redisPort), ...args]).toString().trim();
const redisUp = () => {
  try {
    return cli("ping") === "PONG";
  } catch {
    return false;
  }
};
const startRedis = () =>
  spawn("redis-server", ["--port", String(redisPort), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no", "--enable-debug-command", "yes"], { stdio: "ignore" });
const commands = () => Number(cli("info", "stats").match(/total_commands_processed:(\d+)/)[1]);

/** Every path, timed with a one-second deadline; returns health's dependencies. */
async function within1s(gw, what) {
  let deps;
  for (const p of PATHS) {
    const t0 = Date.now();
    const res = await fetch(gw.url + p, { signal: AbortSignal.timeout(1000) }).catch((e) => {
      throw new Error(`${p} ${what}: no answer within 1 s (${e.name})`);
    });
    const body = await res.text();
    assert.ok(Date.now() - t0 < 1000, `${p} ${what}: ${Date.now() - t0} ms`);
    if (p === "/api/health") deps = JSON.parse(body).dependencies;
  }
  return deps;
}

/** Poll every path for `ms`: each answers within 1 s; returns the last dependencies seen. */
async function answersThroughout(gws, ms, what) {
  const end = Date.now() + ms;
  let deps;
  while (Date.now() < end) for (const g of gws) deps = await within1s(g, what);
  return deps;
}

test("Redis killed or paused under two replicas: every health path answers within 1 s and says so", async () => {
  let redis = startRedis();
  await waitUntil(redisUp, 5000, "test Redis up");
  const env = { REDIS_URL: `redis://127.0.0.1:${redisPort}`, PRESENCE_HEARTBEAT_TIMEOUT_MS: "1500", PRESENCE_SWEEP_INTERVAL_MS: "250" };
  const [a, b] = [await startGateway(env), await startGateway(env)];
  try {
    assert.equal((await within1s(a, "with Redis up")).redis, "up");

    // Requests cost Redis nothing: 100 rounds of all four paths (400 requests) against the
    // background refresh's own cost over the same time.
    const idle0 = commands();
    const t0 = Date.now();
    for (let i = 0; i < 100; i++) await within1s(a, "burst");
    const burstMs = Date.now() - t0;
    const burst = commands() - idle0;
    const idle1 = commands();
    await new Promise((r) => setTimeout(r, burstMs));
    const idle = commands() - idle1;
    assert.ok(burst < idle * 2 + 1000, `400 requests cost ${burst} Redis commands; idle ${idle} in the same time`);

    // Paused: connections stay open, nothing answers.
    redis.kill("SIGSTOP");
    await waitUntil(async () => (await within1s(a, "paused")).redis === "down", 5000, "redis down while paused");
    assert.equal((await answersThroughout([a, b], 3000, "paused")).redis, "down");
    assert.equal((await fetch(a.url + "/readyz")).status, 503);
    redis.kill("SIGCONT");
    await waitUntil(async () => (await within1s(a, "resumed")).redis === "up", 5000, "redis up again");

    // DEBUG SLEEP: the server itself stalls.
    const sleeper = spawn("redis-cli", ["-p", String(redisPort), "debug", "sleep", "3"], { stdio: "ignore" });
    await waitUntil(async () => (await within1s(b, "DEBUG SLEEP")).redis === "down", 3000, "redis down while asleep");
    await new Promise((r) => sleeper.on("exit", r));
    await waitUntil(async () => (await within1s(b, "awake")).redis === "up", 5000, "redis up after sleep");

    // Killed.
    redis.kill("SIGKILL");
    await waitUntil(async () => (await within1s(a, "killed")).redis === "down", 5000, "redis down when killed");
    const deps = await answersThroughout([a, b], 3000, "killed");
    assert.equal(deps.redis, "down");
    const h = await a.http("/api/health");
    assert.equal(h.json.status, "degraded");
    assert.ok(h.json.presence.onlineUsers >= 0, "the last figures held are still shown");

    redis = startRedis();
    await waitUntil(redisUp, 5000, "test Redis back");
    await waitUntil(async () => (await within1s(a, "back")).redis === "up" && (await within1s(b, "back")).redis === "up", 10000, "up again");
  } finally {
    redis.kill("SIGCONT");
    await Promise.all([a.stop(), b.stop()]);
    try { cli("shutdown", "nosave"); } catch {}
    redis.kill();
  }
});

test("PostgreSQL stopped: every health path answers within 1 s and says the database is down", async () => {
  const pg = ownPostgres(pgPort);
  pg.start();
  let gw;
  try {
    gw = await startGateway({ DATABASE_URL: freshDatabase(pg.server) });
    await waitUntil(async () => (await within1s(gw, "database up")).database === "up", 10000, "database up");
    pg.stop();
    await waitUntil(async () => (await within1s(gw, "database stopped")).database === "down", 10000, "database down");
    assert.equal((await answersThroughout([gw], 3000, "database stopped")).database, "down");
    assert.equal((await fetch(gw.url + "/readyz")).status, 200, "presence does not need the database");
    pg.start();
    await waitUntil(async () => (await within1s(gw, "database back")).database === "up", 15000, "database up again");
  } finally {
    await gw?.stop();
    pg.destroy();
  }
});
