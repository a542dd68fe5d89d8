// Redis Cluster: a three-master cluster started by the test itself. Each transition script
// touches one slot (keys share a bucket hash tag), while presence spreads over every master.
import { test } from "node:test";
import assert from "node:assert/strict";
import { spawn, execFileSync } from "node:child_process";
import { mkdtempSync } from "node:fs";
import { tmpdir } from "node:os";
import path from "node:path";
import { startGateway, user, ask, recorder, barrier, waitUntil } from "../helpers.mjs";

const base = 17000 + (process.pid % 500) * 3;
const ports = [base, base + 1, base + 2];
const cli = (p, ...args) => execFileSync("redis-cli", ["-p", String(p), ...args]).toString().trim();

test("presence on a three-master Redis Cluster, spread over every master", async () => {
  const dir = mkdtempSync(path.join(tmpdir(), "pg-cluster-"));
  const servers = ports.map((p) =>
    spawn("redis-server", ["--port", String(p), "--bind", "127.0.0.1", "--cluster-enabled", "yes",
      "--cluster-config-file", `nodes-${p}.conf`, "--dir", dir, "--save", "", "--appendonly", "no"], { stdio: "ignore" }));
  let gws = [];
  try {
    await waitUntil(() => ports.every((p) => { try { return cli(p, "ping") === "PONG"; } catch { return false; } }), 5000, "cluster nodes up");
    execFileSync("redis-cli", ["--cluster", "create", ...ports.map((p) => `127.0.0.1:${p}`), "--cluster-replicas", "0", "--cluster-yes"], { stdio: "ignore" });
    await waitUntil(() => ports.every((p) => /cluster_state:ok/.test(cli(p, "cluster", "info"))), 10000, "cluster ok");

    const url = `redis-cluster://127.0.0.1:${ports[0]}?node=127.0.0.1:${ports[1]}&node=127.0.0.1:${ports[2]}`;
    const env = { REDIS_URL: url, REDIS_KEY_PREFIX: "clu" };
    gws = await Promise.all([startGateway(env), startGateway(env)]);
    const [a, b] = gws;
    const viewer = await a.connect(user("rc-viewer", "other"));
    const seen = recorder(viewer);
    const users = await Promise.all(Array.from({ length: 40 }, (_, i) => b.connect(user(`rc-${i}`, "female"))));
    await waitUntil(() => Array.from({ length: 40 }, (_, i) => `rc-${i}`).every((id) => seen.of(id).some((p) => p.online)), 8000, "all 40 seen online");
    const r = await ask(users[0], "presence:set-status", { status: "in_call", details: { c: 1 } });
    assert.equal(r.ok, true);
    await seen.waitFor((p) => p.userId === "rc-0" && p.status === "in_call");

    // Listing pages through every bucket on every master.
    const listed = [];
    let cursor = null;
    do {
      const page = await ask(viewer, "presence:list-online", { limit: 7, cursor });
      assert.equal(page.ok, true);
      listed.push(...page.users.map((u) => u.userId));
      cursor = page.nextCursor;
    } while (cursor);
    for (let i = 0; i < 40; i++) assert.ok(listed.includes(`rc-${i}`), `rc-${i} listed`);
    assert.equal(new Set(listed).size, listed.length);

    // Health shows the figures as last read in the background (at most about a second old).
    await waitUntil(async () => (await a.http("/api/health")).json.presence.onlineUsers >= 41, 5000, "cluster-wide figures");
    const perMaster = ports.map((p) => Number(cli(p, "dbsize")));
    assert.ok(perMaster.every((n) => n > 0), `keys on every master: ${perMaster}`);
    // The change bus spreads as the keys do: sharded channels (SSUBSCRIBE) on every master,
    // and no classic channel carries the changes.
    const shardChannels = ports.map((p) => cli(p, "pubsub", "shardchannels").split("\n").filter((c) => c.includes(":ev:")).length);
    assert.ok(shardChannels.every((n) => n > 0), `bucket channels per master: ${shardChannels}`);
    assert.equal(shardChannels.reduce((a, b) => a + b, 0), 64);
    assert.ok(ports.every((p) => !cli(p, "pubsub", "channels").includes(":ev:")));

    users.forEach((s) => s.disconnect());
    await seen.waitFor((p) => p.userId === "rc-39" && !p.online, 8000);
    await barrier(a, seen);
    assert.deepEqual(seen.of("rc-0").map((p) => p.status), ["online", "in_call", "offline"]);
    viewer.disconnect();
  } finally {
    await Promise.all(gws.map((g) => g.stop()));
    for (const p of ports) { try { cli(p, "shutdown", "nosave"); } catch {} }
    servers.forEach((s) => s.kill());
  }
});
