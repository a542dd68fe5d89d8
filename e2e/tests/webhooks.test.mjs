// Section 12: webhooks to the app's backend, against a real HTTP receiver. Memory engine.
import { test, after } from "node:test";
import assert from "node:assert/strict";
import { spawnSync } from "node:child_process";
import { readFileSync } from "node:fs";
import { fileURLToPath } from "node:url";
import { startGateway, user, ask, waitUntil, token } from "../helpers.mjs";
import { freshDatabase, psql } from "../db.mjs";
import { startReceiver, verify } from "../webhook-receiver.mjs";

const SECRET = "whsec-test-0123456789abcdef0123456789";
const base = (r, extra = {}) => ({ WEBHOOK_URL: r.url, WEBHOOK_SECRET: SECRET, PRESENCE_OFFLINE_GRACE_MS: "0", ...extra });
const of = (events, id) => events.filter((e) => e.presence?.userId === id);

test("online, status and offline reach the receiver signed, batched, in version order, as an admin sees them", async () => {
  const r = await startReceiver();
  const gw = await startGateway(base(r, { WEBHOOK_OFFLINE_DELAY_MS: "300", WEBHOOK_BATCH_MAX: "2" }));
  try {
    const alice = await gw.connect(user("wh-alice", "female"));
    await waitUntil(() => of(r.taken, "wh-alice").length === 1, 5000, "online sent");
    assert.equal((await ask(alice, "presence:set-status", { status: "live", details: { streamId: "s" } })).ok, true);
    assert.equal((await ask(alice, "presence:set-status", { status: "in_call" })).ok, true);
    const t = Date.now();
    alice.disconnect();
    await waitUntil(() => of(r.taken, "wh-alice").length === 4, 5000, "offline sent");
    const ev = of(r.taken, "wh-alice");
    assert.deepEqual(ev.map((e) => e.type), ["user.online", "user.status", "user.status", "user.offline"]);
    assert.deepEqual(ev.map((e) => e.presence.status), ["online", "live", "in_call", "offline"]);
    assert.equal(ev[0].presence.gender, "female");
    assert.deepEqual(ev[1].presence.details, { streamId: "s" });
    for (let i = 1; i < ev.length; i++) assert.ok(ev[i].presence.version > ev[i - 1].presence.version, "version order");
    assert.equal(new Set(ev.map((e) => e.id)).size, 4, "ids unique");
    assert.ok(ev.every((e) => /^\d{4}-\d\d-\d\dT/.test(e.at)));
    // The offline waited for the delay.
    const offReq = r.requests.find((q) => q.json.events.some((e) => e.type === "user.offline"));
    assert.ok(offReq.at - t >= 250, `offline sent ${offReq.at - t} ms after the disconnect`);
    for (const q of r.requests) {
      assert.equal(q.method, "POST");
      assert.match(q.headers["content-type"], /^application\/json/);
      assert.ok(q.json.events.length <= 2, "WEBHOOK_BATCH_MAX");
      assert.match(q.headers["x-presence-signature"], /^sha256=[0-9a-f]{64}$/);
      assert.ok(verify(SECRET, q.headers["x-presence-timestamp"], q.body, q.headers["x-presence-signature"]), "signature verifies");
      assert.ok(!verify("another secret", q.headers["x-presence-timestamp"], q.body, q.headers["x-presence-signature"]));
    }
  } finally {
    await gw.stop();
    await r.close();
  }
});

test("the README's verification snippets (Node and Python) accept real deliveries and refuse altered ones", async () => {
  const here = (p) => fileURLToPath(new URL(p, import.meta.url));
  const readme = readFileSync(here("../../README.md"), "utf8");
  const node = readFileSync(here("../examples/verify-webhook.mjs"), "utf8");
  const py = readFileSync(here("../examples/verify_webhook.py"), "utf8");
  assert.ok(readme.includes("```js\n" + node.slice(node.indexOf("import crypto")).trim() + "\n```"), "README's Node snippet differs from e2e/examples/verify-webhook.mjs");
  assert.ok(readme.includes("```python\n" + py.slice(py.indexOf("import hashlib"), py.indexOf("\n\nif __name__")).trim() + "\n```"), "README's Python snippet differs from e2e/examples/verify_webhook.py");
  const { verifyWebhook } = await import("../examples/verify-webhook.mjs");
  const r = await startReceiver();
  const gw = await startGateway(base(r));
  try {
    const s = await gw.connect(user("wh-readme", "female"));
    await waitUntil(() => r.requests.length >= 1, 5000, "a delivery");
    s.disconnect();
    const q = r.requests[0];
    const [ts, sig] = [q.headers["x-presence-timestamp"], q.headers["x-presence-signature"]];
    const python = (body) => spawnSync("python3", [here("../examples/verify_webhook.py"), SECRET, ts, sig], { input: body }).stdout.toString().trim();
    assert.equal(verifyWebhook(SECRET, q.body, ts, sig), true);
    assert.equal(python(q.body), "verified");
    const altered = q.body.replace("wh-readme", "wh-readmf");
    assert.equal(verifyWebhook(SECRET, altered, ts, sig), false);
    assert.equal(python(altered), "refused");
    assert.equal(verifyWebhook(SECRET, q.body, String(Number(ts) - 3600), sig), false, "an old timestamp");
  } finally {
    await gw.stop();
    await r.close();
  }
});

test("an offline followed within WEBHOOK_OFFLINE_DELAY_MS by the same user online again is sent as neither", async () => {
  const r = await startReceiver();
  const gw = await startGateway(base(r, { WEBHOOK_OFFLINE_DELAY_MS: "1500" }));
  try {
    let s = await gw.connect(user("wh-flap", "male"));
    await waitUntil(() => of(r.taken, "wh-flap").length === 1, 5000, "online sent");
    for (let i = 0; i < 4; i++) {
      s.disconnect();
      s = await gw.connect(user("wh-flap", "male"));
    }
    const t = Date.now();
    s.disconnect();
    await waitUntil(() => of(r.taken, "wh-flap").length === 2, 6000, "honest offline sent");
    const sent = of(r.taken, "wh-flap");
    assert.deepEqual(sent.map((e) => e.type), ["user.online", "user.offline"]);
    const offReq = r.requests.find((q) => q.json.events.some((e) => e.type === "user.offline"));
    assert.ok(offReq.at - t >= 1300, `honest offline ${offReq.at - t} ms after the disconnect`);
    const m = (await gw.http("/metrics")).text;
    assert.match(m, /webhook_events_total\{result="delivered"\} 2\b/);
  } finally {
    await gw.stop();
    await r.close();
  }
});

test("a receiver that fails then recovers gets every event afterwards, in order, with the same ids; a 400 drops", async () => {
  const r = await startReceiver();
  r.answer = 500;
  const gw = await startGateway(base(r, { WEBHOOK_OFFLINE_DELAY_MS: "0", WEBHOOK_TIMEOUT_MS: "500" }));
  try {
    const socks = [];
    for (let i = 0; i < 5; i++) socks.push(await gw.connect(user(`wh-out-${i}`, "other")));
    for (const s of socks) await ask(s, "presence:set-status", { status: "live" });
    for (const s of socks) s.disconnect();
    await waitUntil(() => r.requests.length >= 3, 5000, "retried while failing");
    const firstIds = r.requests[0].json.events.map((e) => e.id);
    r.answer = "hang";
    await waitUntil(() => r.requests.length >= 4, 5000, "a request that times out");
    r.answer = 200;
    await waitUntil(() => r.taken.length === 15, 15000, "all 15 events after the outage");
    const taken = r.taken;
    assert.deepEqual(taken.slice(0, firstIds.length).map((e) => e.id), firstIds, "the resend keeps ids");
    for (let i = 0; i < 5; i++) {
      const ev = of(taken, `wh-out-${i}`);
      assert.deepEqual(ev.map((e) => e.type), ["user.online", "user.status", "user.offline"]);
    }
    assert.equal(new Set(taken.map((e) => e.id)).size, 15, "each once after the outage");
    const m = (await gw.http("/metrics")).text;
    assert.match(m, /webhook_events_total\{result="retried"\} [1-9]/);

    // A 4xx other than 408/429: dropped, counted, not retried.
    r.answer = 400;
    const n = r.requests.length;
    const s = await gw.connect(user("wh-refused", "other"));
    await waitUntil(() => r.requests.length === n + 1, 5000, "sent once");
    r.answer = 200;
    await waitUntil(async () => /webhook_events_total\{result="dropped"\} 1\b/.test((await gw.http("/metrics")).text), 5000, "drop counted");
    s.disconnect();
    await waitUntil(() => of(r.taken, "wh-refused").length === 1, 5000, "the next event goes through");
    assert.equal(of(r.seen, "wh-refused").filter((e) => e.type === "user.online").length, 1, "the refused one was not resent");
  } finally {
    await gw.stop();
    await r.close();
  }
});

test("stats.event: statistics events from PostgreSQL, only the types asked for, none lost over a restart", async () => {
  const r = await startReceiver();
  const url = freshDatabase();
  const publisher = token({ sub: "bot", roles: ["publisher"] });
  const env = base(r, { DATABASE_URL: url, WEBHOOK_EVENTS: "user.online,stats.event" });
  let gw = await startGateway(env);
  try {
    await waitUntil(() => {
      try {
        return psql(url, "SELECT count(*) FROM webhook_cursors")[0][0] === "1";
      } catch {
        return false;
      }
    }, 15000, "the cursor made");
    const publish = async (visitorId) => {
      const res = await gw.http("/api/events", { token: publisher, method: "POST", body: { type: "new_message", visitorId, channel: "web", text: "hi" } });
      assert.equal(res.status, 202, res.text);
      return res.json.seq;
    };
    const seqs = [await publish("wh-v1"), await publish("wh-v2"), await publish("wh-v1")];
    await waitUntil(() => r.taken.filter((e) => e.type === "stats.event").length === 3, 5000, "three stats.event");
    const stats = r.taken.filter((e) => e.type === "stats.event");
    assert.deepEqual(stats.map((e) => e.event.seq), seqs);
    assert.deepEqual(stats.map((e) => e.id), seqs.map((n) => `stats-${n}`));
    assert.deepEqual(Object.keys(stats[0].event).sort(), ["at", "channel", "seq", "type", "visitorId"]);
    assert.equal(stats[0].event.type, "new_message");
    const s = await gw.connect(user("wh-stats-user", "male"));
    await ask(s, "presence:set-status", { status: "live" });
    await waitUntil(() => of(r.taken, "wh-stats-user").length === 1, 5000, "the online");
    s.disconnect();

    // The receiver down, the replica restarted: what it had not sent is sent by the next run.
    r.answer = 500;
    const later = [await publish("wh-v3"), await publish("wh-v4")];
    await waitUntil(() => r.requests.some((q) => q.status === 500 && q.json.events.some((e) => e.id === `stats-${later[1]}`)), 5000, "tried");
    await gw.stop();
    r.answer = 200;
    gw = await startGateway(env);
    await waitUntil(() => later.every((n) => r.taken.some((e) => e.id === `stats-${n}`)), 10000, "sent after the restart");
    assert.ok(!of(r.seen, "wh-stats-user").some((e) => e.type !== "user.online"), "only the types asked for");
  } finally {
    await gw.stop();
    await r.close();
  }
});

test("a receiver down for a minute (connections refused) gets every event afterwards, in order", { timeout: 180_000 }, async () => {
  const r = await startReceiver();
  const gw = await startGateway(base(r, { WEBHOOK_OFFLINE_DELAY_MS: "0" }));
  try {
    await r.down();
    const downAt = Date.now();
    const socks = [];
    for (let i = 0; i < 3; i++) socks.push(await gw.connect(user(`wh-down-${i}`, "male")));
    for (const s of socks) await ask(s, "presence:set-status", { status: "in_call" });
    for (const s of socks) s.disconnect();
    await waitUntil(async () => /webhook_events_total\{result="retried"\} [1-9]/.test((await gw.http("/metrics")).text), 5000, "retrying");
    await waitUntil(() => Date.now() - downAt >= 60_000, 65_000, "a minute down");
    await r.up();
    const upAt = Date.now();
    // The retry delay has grown to 30 s at most by now.
    await waitUntil(() => r.taken.length === 9, 40_000, "every event after the outage");
    for (let i = 0; i < 3; i++) {
      assert.deepEqual(of(r.taken, `wh-down-${i}`).map((e) => e.type), ["user.online", "user.status", "user.offline"]);
    }
    console.log(`receiver down 60 s: all 9 events ${((Date.now() - upAt) / 1000).toFixed(1)} s after it came back`);
  } finally {
    await gw.stop();
    await r.close();
  }
});

test("bounded: past WEBHOOK_QUEUE_MAX the oldest are dropped and counted; past WEBHOOK_MAX_AGE_MS too", async () => {
  const r = await startReceiver();
  r.answer = 503;
  const gw = await startGateway(base(r, { WEBHOOK_QUEUE_MAX: "5", WEBHOOK_OFFLINE_DELAY_MS: "0", WEBHOOK_MAX_AGE_MS: "1000" }));
  const metric = async (result) => Number(((await gw.http("/metrics")).text.match(new RegExp(`webhook_events_total\\{result="${result}"\\} (\\d+)`)) ?? [])[1] ?? 0);
  try {
    const socks = [];
    for (let i = 0; i < 12; i++) socks.push(await gw.connect(user(`wh-bound-${i}`, "other")));
    // One in flight, five waiting: six dropped at once; the rest, a second old, by age.
    await waitUntil(async () => (await metric("dropped")) >= 6, 5000, "the oldest dropped");
    const depth = Number((await gw.http("/metrics")).text.match(/webhook_queue_depth (\d+)/)[1]);
    assert.ok(depth <= 6, `queue depth ${depth}`);
    await waitUntil(async () => (await metric("dropped")) === 12, 10000, "the rest dropped by age");
    r.answer = 200;
    const t = await gw.connect(user("wh-bound-after", "other"));
    await waitUntil(() => r.taken.length === 1, 5000, "a fresh event goes through");
    assert.equal(r.taken[0].presence.userId, "wh-bound-after", "nothing older than WEBHOOK_MAX_AGE_MS was sent");
    t.disconnect();
    for (const s of socks) s.disconnect();
  } finally {
    await gw.stop();
    await r.close();
  }
});
