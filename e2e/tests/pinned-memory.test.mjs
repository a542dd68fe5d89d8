// Issue 25, point 3: no pinned memory. A handshake's request head is held by the Socket.IO
// library for the socket's whole life; the gateway keeps only what it reads (a few headers, the
// Engine.IO parameters and a token), caps request heads (32 KiB, hyper answers 431) and refuses
// an Authorization over 8 KiB. Measured as an attacker would do it: thousands of WebSockets
// with the largest head the gateway accepts cost no more memory than ordinary ones.
import { test } from "node:test";
import assert from "node:assert/strict";
import fs from "node:fs";
import WebSocket from "ws";
import { startGateway, token, waitUntil, rawStatus } from "../helpers.mjs";

const N = 2000;

const rssKiB = (pid) => Number(fs.readFileSync(`/proc/${pid}/status`, "utf8").match(/VmRSS:\s+(\d+)/)[1]);

/** `n` WebSockets, each joined to `/` as its own user; `query` and `headers` added to each. */
async function open(gw, n, { query = "", headers = {} } = {}) {
  const sockets = [];
  let joined = 0;
  for (let i = 0; i < n; i += 100) {
    await Promise.all(
      Array.from({ length: Math.min(100, n - i) }, (_, k) => {
        const ws = new WebSocket(`${gw.url.replace("http", "ws")}/socket.io/?EIO=4&transport=websocket${query}`, { headers });
        sockets.push(ws);
        return new Promise((resolve, reject) => {
          ws.on("message", (d) => {
            const m = d.toString();
            if (m.startsWith("0")) ws.send(`40${JSON.stringify({ token: token({ sub: `pm-${i + k}`, gender: "male" }) })}`);
            else if (m === "2") ws.send("3");
            else if (m.startsWith("40")) {
              joined++;
              resolve();
            }
          });
          ws.on("error", reject);
        });
      }),
    );
  }
  return { sockets, joined };
}

test("a huge query string or Authorization header is refused; the largest accepted head costs no more memory than an ordinary one", async () => {
  const [plain, heavy] = await Promise.all([startGateway({ MAX_CONNECTIONS_PER_USER: "0" }), startGateway({ MAX_CONNECTIONS_PER_USER: "0" })]);
  try {
    // The issue's handshakes: refused before anything keeps them.
    const hs = "/socket.io/?EIO=4&transport=polling";
    assert.equal(await rawStatus(heavy, `${hs}&junk=${"q".repeat(60_000)}`, []), 431, "a 60 KB query string");
    assert.equal(await rawStatus(heavy, hs, [`Authorization: Bearer ${"a".repeat(300_000)}`]), 431, "a 300 KB Authorization");
    assert.equal(await rawStatus(heavy, hs, [`Authorization: Bearer ${"a".repeat(9_000)}`]), 431, "a 9 KB Authorization");
    const r = await fetch(`${heavy.url}/api/health`, { headers: { authorization: `Bearer ${"a".repeat(9_000)}` } });
    assert.deepEqual([r.status, (await r.json()).error.code], [431, "bad_request"], "on the HTTP API too");

    // The largest head accepted: a 20 KB query parameter the gateway does not read, an 8 KB
    // header it does not read, and a 7 KB Authorization it would read if auth.token were absent.
    const big = {
      query: `&junk=${"q".repeat(20_000)}`,
      headers: { "x-junk": "h".repeat(8_000), authorization: `Basic ${"b".repeat(7_000)}` },
    };
    const base = [rssKiB(plain.proc.pid), rssKiB(heavy.proc.pid)];
    const a = await open(plain, N);
    const b = await open(heavy, N, big);
    assert.equal(a.joined, N);
    assert.equal(b.joined, N);
    await waitUntil(async () => (await heavy.http("/api/health")).json.sockets.connected === N, 10_000, "all connected");
    const plainKiB = rssKiB(plain.proc.pid) - base[0];
    const heavyKiB = rssKiB(heavy.proc.pid) - base[1];
    console.log(`${N} ordinary WebSockets: +${(plainKiB / 1024).toFixed(1)} MiB; ${N} with the largest head: +${(heavyKiB / 1024).toFixed(1)} MiB`);
    assert.ok(heavyKiB <= plainKiB * 1.1, `the largest heads cost ${heavyKiB} KiB against ${plainKiB} KiB`);
    for (const ws of [...a.sockets, ...b.sockets]) ws.terminate();
  } finally {
    await Promise.all([plain.stop(), heavy.stop()]);
  }
});
