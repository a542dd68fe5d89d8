// Slow clients: a connection that has not sent its request headers within 10 s is closed
// (a "slowloris" would otherwise hold a file descriptor and a task for ever), and other
// clients are served meanwhile.
import { test } from "node:test";
import assert from "node:assert/strict";
import net from "node:net";
import { startGateway, user, waitUntil } from "../helpers.mjs";

test("500 connections sending half a request line are all closed within 12 s; others are served meanwhile", async () => {
  const gw = await startGateway({});
  const n = 500;
  const closedAt = new Array(n).fill(null);
  const socks = [];
  try {
    const t0 = Date.now();
    await Promise.all(
      Array.from({ length: n }, (_, i) =>
        new Promise((resolve, reject) => {
          const s = net.connect(gw.port, "127.0.0.1", () => {
            s.write("GET /api/hea"); // and nothing more
            resolve();
          });
          s.on("error", () => {});
          s.on("close", () => (closedAt[i] = Date.now()));
          s.setTimeout(0);
          socks.push(s);
          setTimeout(() => reject(new Error("connect timed out")), 5000);
        }),
      ),
    );
    // Served meanwhile: plain HTTP and a Socket.IO client, several times while they hang.
    let served = 0;
    while (Date.now() - t0 < 8000) {
      const r = await fetch(gw.url + "/healthz", { signal: AbortSignal.timeout(2000) });
      assert.equal(r.status, 200);
      const s = await gw.connect(user(`slow-${served}`, "female"));
      s.disconnect();
      served++;
      await new Promise((r) => setTimeout(r, 500));
    }
    assert.ok(served >= 5, `served ${served} times`);
    assert.ok(closedAt.every((t) => t === null || t - t0 >= 9000), "none closed before the 10 s deadline (minus slack)");
    await waitUntil(() => closedAt.every((t) => t !== null), 12000 - (Date.now() - t0) + 500, "every slow connection closed");
    const last = Math.max(...closedAt) - t0;
    assert.ok(last <= 12000, `the last closed after ${last} ms`);
  } finally {
    for (const s of socks) s.destroy();
    await gw.stop();
  }
});
