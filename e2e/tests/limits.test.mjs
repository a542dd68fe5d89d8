// Limits where attacks start: connections per user (cluster-wide), new sessions per client
// address (behind trusted proxies only from X-Forwarded-For), authenticated HTTP requests per
// identity, a socket's request budget across namespace reconnects, and the memory of all
// sockets' backlogs together.
import { test } from "node:test";
import assert from "node:assert/strict";
import { startGateway, token, user, ask, connect, recorder, waitUntil, multiplexed, rawStatus } from "../helpers.mjs";

const redisUrl = process.env.TEST_REDIS_URL ?? "redis://127.0.0.1:6379";

for (const [name, shared] of [["memory engine", false], ["two replicas on Redis", true]]) {
  test(`MAX_CONNECTIONS_PER_USER, ${name}: the next connection is refused rate_limited, cluster-wide`, async () => {
    const env = { MAX_CONNECTIONS_PER_USER: "2", ...(shared ? { REDIS_URL: redisUrl, REDIS_KEY_PREFIX: `mc${process.pid}x${Date.now() % 1e6}` } : {}) };
    const a = await startGateway(env);
    const b = shared ? await startGateway(env) : a;
    try {
      const first = await a.connect(user("mc-u", "female"));
      await b.connect(user("mc-u", "female"));
      await assert.rejects(connect(a.url, user("mc-u", "female")), /^Error: rate_limited/);
      await assert.rejects(connect(b.url, user("mc-u", "female")), /^Error: rate_limited/);
      (await a.connect(user("mc-other", "female"))).disconnect(); // others are not affected
      first.disconnect();
      await waitUntil(async () => connect(a.url, user("mc-u", "female")).then((s) => (s.disconnect(), true), () => false), 5000, "room again after a close");
      const m = (await a.http("/metrics")).text;
      assert.match(m, /gateway_handshake_failures_total\{[^}]*reason="rate_limited"[^}]*\} [1-9]/);
    } finally {
      await a.stop();
      if (b !== a) await b.stop();
    }
  });
}

test("HTTP_RATE_LIMIT_PER_SEC: an identity over its budget gets 429 rate_limited; other identities and anonymous paths do not", async () => {
  const gw = await startGateway({ HTTP_RATE_LIMIT_PER_SEC: "1", HTTP_RATE_LIMIT_BURST: "3" });
  try {
    const t = token({ sub: "hr-u", gender: "female" });
    const codes = [];
    for (let i = 0; i < 5; i++) codes.push((await gw.http("/api/presence/hr-u", { token: t })).status);
    assert.deepEqual(codes, [200, 200, 200, 429, 429]);
    const r = await gw.http("/api/presence/hr-u", { token: t });
    assert.deepEqual([r.status, r.json.error.code], [429, "rate_limited"]);
    assert.equal((await gw.http("/api/presence/hr-v", { token: token({ sub: "hr-v", gender: "female" }) })).status, 200);
    for (let i = 0; i < 10; i++) assert.equal((await gw.http("/api/health")).status, 200);
  } finally {
    await gw.stop();
  }
});

const handshake = (gw, headers = {}) => fetch(`${gw.url}/socket.io/?EIO=4&transport=polling`, { headers });

test("HANDSHAKE_RATE_PER_IP: new sessions from one address past the burst get 429; X-Forwarded-For counts only from TRUSTED_PROXIES", async () => {
  const untrusted = await startGateway({ HANDSHAKE_RATE_PER_IP: "1", HANDSHAKE_BURST_PER_IP: "2" });
  try {
    const codes = [];
    // Every request claims another address: from an untrusted peer the header is ignored.
    for (let i = 0; i < 4; i++) codes.push((await handshake(untrusted, { "x-forwarded-for": `9.9.9.${i}` })).status);
    assert.deepEqual(codes, [200, 200, 429, 429]);
    const r = await handshake(untrusted);
    assert.equal(r.status, 429);
    assert.equal((await r.json()).error.code, "rate_limited");
    // A socket.io-client connect from the same address is refused too.
    await assert.rejects(connect(untrusted.url, user("hs-u", "female"), { transports: ["websocket"] }));
    // Requests of an open session are not handshakes.
    assert.equal((await untrusted.http("/api/health")).status, 200);
  } finally {
    await untrusted.stop();
  }
  const behind = await startGateway({ HANDSHAKE_RATE_PER_IP: "1", HANDSHAKE_BURST_PER_IP: "2", TRUSTED_PROXIES: "127.0.0.0/8" });
  try {
    const as = async (ip) => (await handshake(behind, { "x-forwarded-for": `6.6.6.6, ${ip}` })).status;
    assert.deepEqual([await as("9.9.9.1"), await as("9.9.9.1"), await as("9.9.9.1")], [200, 200, 429], "one client behind the proxy");
    assert.deepEqual([await as("9.9.9.2"), await as("9.9.9.2")], [200, 200], "another client has its own budget");
    // A proxy that appends its own header line leaves the client's forged one first: every
    // line counts, in order, so a new forged address each time changes nothing.
    const twoLines = async (i) => rawStatus(behind, "/socket.io/?EIO=4&transport=polling", [`X-Forwarded-For: 7.7.7.${i}`, "X-Forwarded-For: 9.9.9.3"]);
    assert.deepEqual([await twoLines(1), await twoLines(2), await twoLines(3)], [200, 200, 429], "a forged first line");
    // IPv6 per /64: a client rotating through its own network shares one budget.
    const v6 = ["2001:db8:5:6::1", "2001:db8:5:6::2", "2001:db8:5:6:ffff::9"];
    const v6codes = [];
    for (const a of v6) v6codes.push(await as(a));
    assert.deepEqual(v6codes, [200, 200, 429], "addresses of one /64");
    assert.equal(await as("2001:db8:5:7::1"), 200, "the next /64 is another client");
  } finally {
    await behind.stop();
  }
});


test("the per-socket request budget is the Engine.IO session's: leaving and re-joining / does not refill it, and each join is paid from it", async () => {
  const gw = await startGateway({ RATE_LIMIT_PER_SEC: "1", RATE_LIMIT_BURST: "4" });
  const session = await multiplexed(gw, user("rb-u", "female"), "rb");
  const { socket: s, join } = session;
  try {
    // The join was paid from the burst of 4, then three requests.
    const answers = [];
    for (let i = 0; i < 4; i++) answers.push((await ask(s, "user:heartbeat")).ok);
    assert.deepEqual(answers, [true, true, true, false], "burst of 4 spent");
    s.disconnect();
    await waitUntil(async () => (await gw.http("/api/health")).json.sockets.connected === 0, 5000, "left");
    // Rejoining is a request too, from the same spent budget: refused, not a full budget.
    await assert.rejects(join(s), (e) => /rate_limited/.test(e.message), "the rejoin is refused");
    // A second later the budget has one request again: the join takes it, the next is refused.
    await waitUntil(async () => join(s).then(() => true, () => false), 5000, "a join once the budget refilled");
    const after = await ask(s, "user:heartbeat");
    assert.deepEqual([after.ok, after.error?.code], [false, "rate_limited"], "the same session's budget, not a full one");
  } finally {
    session.close();
    await gw.stop();
  }
});

/// A polling client that opens a session and joins `/`, then never polls again: its queue
/// fills, and every later change it may see waits in its backlog.
async function stalledClient(url, auth) {
  const base = `${url}/socket.io/?EIO=4&transport=polling`;
  const open = await (await fetch(base)).text();
  const sid = JSON.parse(open.slice(1)).sid;
  await fetch(`${base}&sid=${sid}`, { method: "POST", body: `40${JSON.stringify(auth)}`, headers: { "content-type": "text/plain;charset=UTF-8" } });
  // Poll until the CONNECT comes, answering a ping as a client does (Engine.IO may send one
  // before it: the reply was then "2", about one run in six).
  const deadline = Date.now() + 5000;
  let heard = "";
  while (!/(^|\x1e)40/.test(heard)) {
    assert.ok(Date.now() < deadline, `no CONNECT within 5 s; heard ${JSON.stringify(heard)}`);
    const got = await (await fetch(`${base}&sid=${sid}`)).text();
    if (got.split("\x1e").includes("2")) await fetch(`${base}&sid=${sid}`, { method: "POST", body: "3", headers: { "content-type": "text/plain;charset=UTF-8" } });
    heard += `\x1e${got}`;
  }
  return sid;
}

test("SOCKET_BACKLOG_TOTAL: past it the socket furthest behind is cut off, the others keep receiving", async () => {
  const gw = await startGateway({ SOCKET_QUEUE_PACKETS: "4", SOCKET_BACKLOG_TOTAL: "60", RATE_LIMIT_PER_SEC: "0" });
  const admin = token({ sub: "bl-admin", roles: ["admin"] });
  try {
    // The stalled viewer ("other") sees everyone; the healthy one is a man, who sees only
    // women, so the men below fill only the stalled one's backlog (however slow this machine
    // makes the healthy client, it never holds a backlog to be cut for).
    await stalledClient(gw.url, user("bl-stalled", "other"));
    const healthy = await gw.connect(user("bl-healthy", "male"));
    const seen = recorder(healthy);
    const changers = [];
    for (let i = 0; i < 80; i += 10) changers.push(...(await Promise.all(Array.from({ length: 10 }, (_, k) => gw.connect(user(`bl-${i + k}`, "male"))))));
    const slow = async () => {
      const m = (await gw.http("/metrics")).text.match(/presence_slow_sockets_disconnected_total\{[^}]*\} (\d+)/);
      return m ? Number(m[1]) : 0;
    };
    await waitUntil(async () => (await slow()) >= 1, 10000, "the stalled socket cut off");
    assert.equal(await slow(), 1, "only the stalled one");
    // Cut off at once: its backlog is dropped and it gets nothing more (its transport closes
    // it at its next ping, which its full queue cannot carry).
    const stalled = async () => (await gw.http("/api/debug/socket-status", { token: admin })).json.sockets.find((s) => s.userId === "bl-stalled");
    const cut = await stalled();
    assert.ok(!cut || (cut.backlog === 0 && cut.receivesUpdates === false), JSON.stringify(cut));
    for (const c of changers.slice(0, 10)) await ask(c, "presence:set-status", { status: "live", details: { more: 1 } });
    const later = await stalled();
    assert.ok(!later || later.backlog === 0, "and nothing more waits for it");
    // The others keep receiving.
    const woman = await gw.connect(user("bl-woman", "female"));
    await ask(woman, "presence:set-status", { status: "live", details: { after: 1 } });
    await seen.waitFor((p) => p.userId === "bl-woman" && p.status === "live", 5000, "the healthy viewer still receives");
    assert.equal(healthy.connected, true);
    for (const c of [...changers, woman]) c.disconnect();
  } finally {
    await gw.stop();
  }
});
