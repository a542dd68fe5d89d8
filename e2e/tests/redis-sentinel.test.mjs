// REDIS_URL may name a Sentinel: the gateway asks it for the master and works through it.
import { test } from "node:test";
import assert from "node:assert/strict";
import { spawn, execFileSync } from "node:child_process";
import { mkdtempSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import path from "node:path";
import { startGateway, user, ask, waitUntil } from "../helpers.mjs";

const master = 18000 + (process.pid % 500) * 2;
const sentinel = master + 1;
const ping = (p) => { try { return execFileSync("redis-cli", ["-p", String(p), "ping"]).toString().trim() === "PONG"; } catch { return false; } };

test("a redis-sentinel:// URL reaches the master through the Sentinel", async () => {
  const dir = mkdtempSync(path.join(tmpdir(), "pg-sentinel-"));
  const conf = path.join(dir, "sentinel.conf");
  writeFileSync(conf, `port ${sentinel}\nbind 127.0.0.1\nsentinel monitor presence 127.0.0.1 ${master} 1\n`);
  const procs = [
    spawn("redis-server", ["--port", String(master), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"], { stdio: "ignore" }),
    spawn("redis-server", [conf, "--sentinel"], { stdio: "ignore" }),
  ];
  let gw;
  try {
    await waitUntil(() => ping(master) && ping(sentinel), 5000, "Redis and Sentinel up");
    await waitUntil(() => /127\.0\.0\.1/.test(execFileSync("redis-cli", ["-p", String(sentinel), "sentinel", "get-master-addr-by-name", "presence"]).toString()), 5000, "Sentinel knows the master");
    gw = await startGateway({ REDIS_URL: `redis-sentinel://127.0.0.1:${sentinel}?sentinelServiceName=presence` });
    const s = await gw.connect(user("sen-u", "female"));
    const r = await ask(s, "presence:get", { userIds: ["sen-u"] });
    assert.equal(r.presences[0].online, true);
    assert.equal((await gw.http("/api/health")).json.dependencies.redis, "up");
    assert.ok(Number(execFileSync("redis-cli", ["-p", String(master), "dbsize"]).toString()) > 0, "state is in the master");
    s.disconnect();
  } finally {
    await gw?.stop();
    for (const p of [master, sentinel]) { try { execFileSync("redis-cli", ["-p", String(p), "shutdown", "nosave"]); } catch {} }
    procs.forEach((p) => p.kill());
  }
});
