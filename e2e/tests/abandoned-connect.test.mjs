// A client whose transport closes while the replica is still admitting its join of `/` (its
// handshake waits on the store): the library then never completes the connect and reports no
// disconnect, so nothing of what the admission took may stay behind. Before the fix, the user
// stayed online to everyone until the heartbeat sweep (here ten minutes), and the replica kept
// their blocks loaded for ever.
import { test } from "node:test";
import assert from "node:assert/strict";
import WebSocket from "ws";
import { startGateway, user, ask, recorder, waitUntil, withDeadline, ownRedis } from "../helpers.mjs";

test("a client gone while its join of / was being admitted is not left online", async () => {
  const redis = await ownRedis(17000 + (process.pid % 1000));
  const cli = redis.cli;
  /** Clients Redis holds back (paused writes count here). */
  const blocked = () => Number(cli("info", "clients").match(/blocked_clients:(\d+)/)[1]);
  // No sweep within the test: only the replica's own cleanup can take the user offline.
  const gw = await startGateway({ REDIS_URL: redis.url, PRESENCE_HEARTBEAT_TIMEOUT_MS: "600000", PRESENCE_SWEEP_INTERVAL_MS: "600000" });
  let ws;
  try {
    const viewer = await gw.connect(user("ab-viewer", "other"));
    const seen = recorder(viewer);
    // Writes held back: the admission waits on registering the connection.
    const before = blocked();
    cli("client", "pause", "20000", "write");
    ws = new WebSocket(`${gw.url.replace("http", "ws")}/socket.io/?EIO=4&transport=websocket`);
    ws.on("message", (d) => d.toString() === "2" && ws.send("3"));
    await withDeadline(new Promise((resolve, reject) => (ws.once("message", resolve), ws.once("error", reject))), 5000, "open");
    ws.send(`40${JSON.stringify(user("ab-gone", "female"))}`);
    await waitUntil(async () => blocked() > before, 5000, "the admission waiting on Redis");
    // The client goes away mid-admission; then the store answers and the admission succeeds.
    ws.terminate();
    await waitUntil(async () => gw.http("/healthz").then(() => true), 2000, "the replica answers");
    cli("client", "unpause");
    await seen.waitFor((p) => p.userId === "ab-gone" && p.status === "online", 5000, "announced online by the admission");
    // Nobody is behind that connection: the replica records it closed once the library has
    // had its time to complete the connect (30 s), and its user goes offline.
    await seen.waitFor((p) => p.userId === "ab-gone" && p.status === "offline", 45000, "offline once the connect is known abandoned");
    const got = await ask(viewer, "presence:get", { userIds: ["ab-gone"] });
    assert.equal(got.presences[0].status, "offline");
    const m = (await gw.http("/metrics")).text.match(/presence_connects_abandoned_total\{[^}]*\} (\d+)/);
    assert.equal(Number(m?.[1]), 1, "counted");
    viewer.disconnect();
  } finally {
    ws?.terminate();
    try {
      cli("client", "unpause");
    } catch {}
    await gw.stop();
    redis.stop();
  }
});
