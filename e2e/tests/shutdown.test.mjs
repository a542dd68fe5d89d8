// Graceful shutdown: readiness off, keep serving for SHUTDOWN_DELAY_MS, then close transports
// so clients reconnect by themselves; exit 0.
import { test } from "node:test";
import assert from "node:assert/strict";
import { spawn } from "node:child_process";
import net from "node:net";
import { startGateway, user, ask, waitUntil } from "../helpers.mjs";

for (const transports of [["websocket"], ["polling"]]) {
  test(`SIGTERM over ${transports[0]}: drain, then a transport close the client recovers from`, async () => {
    const gw = await startGateway({ SHUTDOWN_DELAY_MS: "1000" });
    const s = await gw.connect(user(`sd-${transports[0]}`, "female"), { transports });
    const reason = new Promise((resolve) => s.once("disconnect", resolve));
    gw.proc.kill("SIGTERM");
    await waitUntil(async () => (await gw.http("/readyz")).status === 503, 900, "readyz 503 during the delay");
    assert.equal((await gw.http("/healthz")).status, 200, "still alive while draining");
    assert.equal((await ask(s, "user:heartbeat")).ok, true, "still serving while draining");
    const why = await reason;
    // "io server disconnect" would stop socket.io-client from reconnecting.
    assert.notEqual(why, "io server disconnect");
    assert.match(why, /^transport (close|error)$/);
    // socket.io-client's own verdict: `active` stays true after a disconnect it will recover
    // from, and turns false after "io server disconnect".
    assert.equal(s.active, true, "the client treats the close as temporary");
    s.close();
    const { code } = await gw.exited;
    assert.equal(code, 0);
    assert.match(gw.output(), /stopped/);
  });
}

test("a client with reconnection on reconnects to another replica by itself", async () => {
  const a = await startGateway();
  const b = await startGateway();
  // One URL list is what a load balancer gives; emulate it by pointing the client at b once a is gone.
  const { io } = await import("socket.io-client");
  const s = io(a.url, { auth: user("sd-re", "female"), reconnectionDelay: 50, reconnectionDelayMax: 100 });
  await new Promise((r) => s.once("connect", r));
  s.io.on("reconnect_attempt", () => (s.io.uri = b.url));
  s.io.engine.on("close", () => (s.io.uri = b.url));
  a.proc.kill("SIGTERM");
  await new Promise((r) => s.once("disconnect", r));
  await waitUntil(() => s.connected, 8000, "reconnected");
  const h = await b.http("/api/health");
  assert.equal(h.json.sockets.connected, 1);
  s.disconnect();
  assert.equal((await a.exited).code, 0);
  await b.stop();
});

test("SIGTERM with the presence store gone: the replica still exits within seconds, whatever its sockets", async () => {
  const port = 23000 + (process.pid % 5000);
  const redis = spawn("redis-server", ["--port", String(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"], { stdio: "ignore" });
  try {
    const up = () => new Promise((resolve) => net.connect(port, "127.0.0.1").once("connect", function () { this.destroy(); resolve(true); }).once("error", () => resolve(false)));
    await waitUntil(up, 5000, "the test's Redis up");
    const gw = await startGateway({ REDIS_URL: `redis://127.0.0.1:${port}`, SHUTDOWN_DELAY_MS: "0" });
    // Long-polling sockets: the library runs no disconnect handler for them at shutdown, so
    // the replica records each close itself.
    const sockets = await Promise.all(Array.from({ length: 200 }, (_, i) => gw.connect(user(`sd-gone-${i}`, "male"), { transports: ["polling"] })));
    redis.kill("SIGKILL");
    const t0 = Date.now();
    gw.proc.kill("SIGTERM");
    const { code } = await gw.exited;
    const took = Date.now() - t0;
    console.log(`exited ${code} after ${took} ms with 200 sockets and Redis gone`);
    assert.equal(code, 0);
    assert.ok(took < 20_000, `${took} ms`);
    for (const s of sockets) s.close();
  } finally {
    redis.kill("SIGKILL");
  }
});
