// Redis Cluster failovers, three masters each with a replica, started by the test itself: a
// viewer keeps hearing every user, whichever master their bucket lives on, after a master is
// paused past the node timeout (its replica takes over; when it wakes, it is demoted and ends
// our sharded subscriptions without closing the connection) and after a master is killed.
import { test } from "node:test";
import assert from "node:assert/strict";
import { spawn, execFileSync } from "node:child_process";
import { mkdtempSync } from "node:fs";
import { tmpdir } from "node:os";
import path from "node:path";
import { startGateway, user, ask, recorder, waitUntil } from "../helpers.mjs";

const base = 18000 + (process.pid % 300) * 6;
const ports = Array.from({ length: 6 }, (_, i) => base + i);
const cli = (p, ...args) => execFileSync("redis-cli", ["-p", String(p), ...args], { timeout: 2000 }).toString().trim();
const role = (p) => {
  try {
    return cli(p, "role").split("\n")[0];
  } catch {
    return "down";
  }
};
const USERS = 40;
const ids = Array.from({ length: USERS }, (_, i) => `cf-${i}`);

test("a viewer hears every user through a paused master's failover and a killed master's", { timeout: 120_000 }, async () => {
  const dir = mkdtempSync(path.join(tmpdir(), "pg-failover-"));
  const servers = new Map(ports.map((p) => [p, spawn("redis-server", ["--port", String(p), "--bind", "127.0.0.1",
    "--cluster-enabled", "yes", "--cluster-config-file", `nodes-${p}.conf`, "--cluster-node-timeout", "1000",
    "--dir", dir, "--save", "", "--appendonly", "no"], { stdio: "ignore" })]));
  let gws = [];
  try {
    await waitUntil(() => ports.every((p) => role(p) !== "down"), 5000, "cluster nodes up");
    execFileSync("redis-cli", ["--cluster", "create", ...ports.map((p) => `127.0.0.1:${p}`), "--cluster-replicas", "1", "--cluster-yes"], { stdio: "ignore" });
    const clusterOk = () => waitUntil(() => ports.filter((p) => role(p) !== "down").every((p) => /cluster_state:ok/.test(cli(p, "cluster", "info"))), 20_000, "cluster ok");
    await clusterOk();
    // A replica still loading its master's data cannot take over: wait until all three synced.
    const synced = (p) => role(p) === "slave" && /master_link_status:up/.test(cli(p, "info", "replication"));
    await waitUntil(() => ports.filter(synced).length === 3, 15_000, "three replicas synced");

    const url = `redis-cluster://127.0.0.1:${ports[0]}?${ports.slice(1).map((p) => `node=127.0.0.1:${p}`).join("&")}`;
    const env = { REDIS_URL: url, REDIS_KEY_PREFIX: "cf", PRESENCE_HEARTBEAT_TIMEOUT_MS: "60000" };
    gws = await Promise.all([startGateway(env), startGateway(env)]);
    const [a, b] = gws;
    const viewer = await a.connect(user("cf-viewer", "other"));
    const seen = recorder(viewer);
    // What the viewer shows of each user: the newest it heard, from an update or, after the
    // server says it may have missed some (`presence:resync`), from refetching, as a client does.
    const view = new Map();
    const show = (p) => {
      if (!(view.get(p.userId)?.version >= p.version)) view.set(p.userId, p);
    };
    viewer.on("presence-update", show);
    viewer.on("presence:resync", () => {
      // (Unanswered when the test ends and the viewer leaves: nothing to show then.)
      ask(viewer, "presence:get", { userIds: ids }).then((r) => r.presences?.forEach(show), () => {});
    });
    const users = await Promise.all(ids.map((id) => b.connect(user(id, "female"))));
    await waitUntil(() => ids.every((id) => seen.of(id).some((p) => p.online)), 10_000, "all seen online");

    // Every user changes; the viewer must show each (users on every master, so on the one
    // that failed over too). A change committed before a replica subscribed again on the new
    // master is missed and made good by the resync.
    const everyoneHeard = async (status, what) => {
      // Changes made while the cluster is still settling may be refused; each user tries
      // until the change is committed, as a client would.
      await Promise.all(users.map((s) => waitUntil(async () => (await ask(s, "presence:set-status", { status, details: { what } })).ok, 20_000, `set ${status}`)));
      const missing = () => ids.filter((id) => !(view.get(id)?.status === status && view.get(id)?.details?.what === what));
      await waitUntil(() => missing().length === 0, 10_000, `the viewer to hear every user after ${what}`).catch(() => {
        assert.fail(`after ${what}, the viewer never heard ${missing().length} of ${USERS} users: ${missing().join(", ")}`);
      });
    };

    // A master paused past the node timeout: its replica is promoted; when it wakes it is
    // demoted, and tells its subscribers their sharded channels are gone.
    const paused = ports.find((p) => role(p) === "master");
    servers.get(paused).kill("SIGSTOP");
    await waitUntil(() => ports.filter((p) => p !== paused && role(p) === "master").length === 3, 20_000, "a replica promoted");
    servers.get(paused).kill("SIGCONT");
    await waitUntil(() => role(paused) === "slave", 20_000, "the paused master demoted");
    await clusterOk();
    await everyoneHeard("live", "the pause");

    // A master killed: its replica is promoted, the replicas reconnect and subscribe again.
    await waitUntil(() => ports.filter(synced).length === 3, 15_000, "three replicas synced again");
    const killed = ports.find((p) => role(p) === "master");
    servers.get(killed).kill("SIGKILL");
    await waitUntil(() => ports.filter((p) => p !== killed && role(p) === "master").length === 3, 20_000, "a replica promoted");
    await clusterOk();
    await everyoneHeard("in_call", "the kill");

    users.forEach((s) => s.disconnect());
    viewer.disconnect();
  } finally {
    await Promise.all(gws.map((g) => g.stop()));
    for (const [p, s] of servers) {
      try {
        s.kill("SIGCONT");
        cli(p, "shutdown", "nosave");
      } catch {}
      s.kill("SIGKILL");
    }
  }
});
