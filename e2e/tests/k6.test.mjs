// The k6 scripts cannot run here (k6 is not installable): parse-check every one of them, and
// test their shared Socket.IO framing, which is plain JavaScript, against the packets the
// official client and our gateway exchange.
import { test } from "node:test";
import assert from "node:assert/strict";
import { execFileSync } from "node:child_process";
import { readdirSync } from "node:fs";
import { fileURLToPath } from "node:url";
import path from "node:path";
import WebSocket from "ws";
import { startGateway, user } from "../helpers.mjs";

const k6dir = fileURLToPath(new URL("../../loadtest/k6/", import.meta.url));
const sio = await import(path.join(k6dir, "lib", "sio.js"));

test("every k6 script parses as an ES module", () => {
  const files = ["lib/sio.js", "lib/token.js", ...readdirSync(k6dir).filter((f) => f.endsWith(".js"))];
  assert.ok(files.length >= 6);
  for (const f of files) execFileSync(process.execPath, ["--check", path.join(k6dir, f)]);
});

test("framing: frames encode and decode as Socket.IO v4 does", () => {
  assert.equal(sio.wsUrl("https://h:1/"), "wss://h:1/socket.io/?EIO=4&transport=websocket");
  assert.equal(sio.connectFrame({ token: "t" }), '40{"token":"t"}');
  assert.equal(sio.eventFrame("user:heartbeat"), '42["user:heartbeat"]');
  assert.equal(sio.eventFrame("presence:get", { userIds: ["a"] }, 7), '427["presence:get",{"userIds":["a"]}]');
  assert.deepEqual(sio.decode('437[{"ok":true}]'), { type: "ack", id: 7, data: { ok: true } });
  assert.deepEqual(sio.decode('42["presence-update",{"userId":"u"}]'), { type: "event", id: undefined, event: "presence-update", data: { userId: "u" } });
  assert.deepEqual(sio.decode('44{"message":"unauthorized: x"}'), { type: "connect_error", data: { message: "unauthorized: x" } });
  assert.equal(sio.decode("2").type, "ping");
  assert.equal(sio.decode('0{"sid":"x","pingInterval":25000}').type, "open");
});

test("framing: the k6 client drives a real gateway (through a k6-like socket shim)", async () => {
  const gw = await startGateway();
  try {
    // A raw WebSocket ('ws', the one socket.io-client itself uses in Node, from the lock file)
    // shimmed to k6's socket interface: send(frame) and on("message", fn(text)).
    const ws = new WebSocket(sio.wsUrl(gw.url));
    const shim = { send: (f) => ws.send(f), on: (ev, fn) => ws.on(ev, (d) => fn(d.toString())) };
    const acked = await new Promise((resolve, reject) => {
      const c = sio.client(shim, user("k6-shim", "female"), {
        onConnect: () => c.emitWithAck("presence:get", { userIds: ["k6-shim"] }, resolve),
        onError: reject,
      });
    });
    assert.equal(acked.ok, true);
    ws.close();
  } finally {
    await gw.stop();
  }
});
