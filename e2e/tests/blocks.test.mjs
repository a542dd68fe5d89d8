// Section 11, blocks: both ways, every path, as if the visibility rule forbade it; made while
// either is online, each sees the other go offline once with a greater version, then silence;
// lifted, each sees the other's current presence. On one memory replica and on three Redis
// replicas (each user's sockets on different replicas), and with PostgreSQL keeping them.
import { test } from "node:test";
import assert from "node:assert/strict";
import { startGateway, user, token, ask, recorder, barrier, waitUntil, FAST, ownRedis } from "../helpers.mjs";
import { freshDatabase, psql } from "../db.mjs";

const REDIS_URL = process.env.TEST_REDIS_URL ?? "redis://127.0.0.1:6379";
const admin = token({ sub: "ops-blk", roles: ["admin"] });

async function setup(kind, env = {}) {
  const base = { ...FAST, RATE_LIMIT_PER_SEC: "0", PRESENCE_BATCH_MS: "100", ...env };
  if (kind === "memory") {
    const a = await startGateway(base);
    return { a, b: a, c: a, stop: () => a.stop() };
  }
  const e = { ...base, REDIS_URL, REDIS_KEY_PREFIX: `e2e-blk-${process.pid}-${Date.now() % 1e6}-${Math.random().toString(36).slice(2, 6)}` };
  if (kind === "redis+pg") e.DATABASE_URL = freshDatabase();
  const [a, b, c] = await Promise.all([startGateway(e), startGateway(e), startGateway(e)]);
  if (e.DATABASE_URL) {
    for (const g of [a, b, c]) await waitUntil(async () => (await g.http("/api/health")).json?.dependencies?.database === "up", 10000, "database up");
  }
  return { a, b, c, db: e.DATABASE_URL, stop: () => Promise.all([a.stop(), b.stop(), c.stop()]) };
}

function keepAlive(...sockets) {
  const t = setInterval(() => sockets.forEach((s) => s.connected && s.emit("user:heartbeat")), 300);
  return () => clearInterval(t);
}

for (const kind of ["memory", "redis", "redis+pg"]) {
  test(`${kind}: a block hides both ways on every path, at once on every replica; unblocking shows them again`, async () => {
    const { a, b, c, db, stop } = await setup(kind);
    const tag = `${kind.replace("+", "")}-${process.pid}`;
    const [ann, bob, eve] = [`ann-${tag}`, `bob-${tag}`, `eve-${tag}`];
    try {
      // Ann on a and c (a phone subscribing, a laptop batching); Bob on b; Eve (unrelated) on c.
      const annPhone = await a.connect({ ...user(ann, "female"), presence: "subscriptions" });
      const annSub = recorder(annPhone);
      const annLaptop = await c.connect({ ...user(ann, "female"), batch: true });
      const annBatches = [];
      annLaptop.on("presence-batch", (m) => annBatches.push(...m.updates));
      const bobS = await b.connect(user(bob, "female"));
      const bobSees = recorder(bobS);
      const eveS = await c.connect(user(eve, "female"));
      const eveSees = recorder(eveS);
      const stopBeats = keepAlive(annPhone, annLaptop, bobS, eveS);
      try {
        await ask(annPhone, "presence:subscribe", { userIds: [bob, eve] });
        await waitUntil(() => annBatches.some((p) => p.userId === bob && p.online), 5000, "Ann's laptop sees Bob");
        const bobOnline = (await ask(annPhone, "presence:get", { userIds: [bob] })).presences[0];
        const annOnline = (await ask(bobS, "presence:get", { userIds: [ann] })).presences[0];

        // Ann blocks Bob (from her phone, on a).
        assert.deepEqual(await ask(annPhone, "presence:block", { userId: bob }), { ok: true });
        const goneForBob = await bobSees.waitFor((p) => p.userId === ann && !p.online, 5000, "Bob sees Ann go offline");
        assert.ok(goneForBob.version > annOnline.version);
        await waitUntil(() => annBatches.some((p) => p.userId === bob && !p.online && p.version > bobOnline.version), 5000, "Ann's laptop sees Bob go offline");
        const goneForAnn = await annSub.waitFor((p) => p.userId === bob && !p.online, 5000, "Ann's subscription too");
        assert.ok(goneForAnn.version > bobOnline.version);

        // Then silence, both ways, on every path.
        await ask(bobS, "presence:set-status", { status: "live" });
        await ask(annPhone, "presence:set-status", { status: "in_call" });
        await eveSees.waitFor((p) => p.userId === ann && p.status === "in_call", 5000, "Eve still sees Ann");
        await eveSees.waitFor((p) => p.userId === bob && p.status === "live", 5000, "and Bob");
        await barrier(b, bobSees);
        assert.equal(bobSees.of(ann).filter((p) => p.version > goneForBob.version).length, 0, "Bob hears nothing of Ann");
        // Ann's subscription socket: a barrier through Eve.
        await ask(eveS, "presence:set-status", { status: "live", details: { mark: 1 } });
        await annSub.waitFor((p) => p.userId === eve && p.details?.mark === 1, 5000, "Ann's barrier");
        assert.equal(annSub.of(bob).filter((p) => p.version > goneForAnn.version).length, 0, "Ann hears nothing of Bob");
        assert.ok(!annBatches.some((p) => p.userId === bob && p.status === "live"), "nor her laptop");
        assert.deepEqual((await ask(bobS, "presence:get", { userIds: [ann] })).presences, [], "reads: not visible");
        assert.deepEqual((await ask(annPhone, "presence:get", { userIds: [bob] })).presences, []);
        assert.ok(!(await ask(bobS, "presence:list-online", { limit: 500 })).users.some((u) => u.userId === ann));
        assert.equal((await c.http(`/api/presence/${ann}`, { token: token({ sub: bob, gender: "female" }) })).status, 404);
        assert.deepEqual((await a.http(`/api/presence?ids=${bob}`, { token: token({ sub: ann, gender: "female" }) })).json.presences, []);
        const snap = await ask(annPhone, "presence:subscribe", { userIds: [bob] });
        assert.deepEqual(snap.presences, [], "a subscription's snapshot");
        const listed = await b.http(`/api/users/${ann}/blocks`, { token: token({ sub: ann }) });
        assert.deepEqual(listed.json, { blocked: [bob] });
        if (db) assert.deepEqual(psql(db, `SELECT user_id, blocked_id FROM user_blocks`), [[ann, bob]]);

        // A new connection of Bob's, elsewhere, is hidden from the start.
        const bob2 = await c.connect(user(bob, "female"));
        assert.deepEqual((await ask(bob2, "presence:get", { userIds: [ann] })).presences, []);
        bob2.disconnect();

        // Unblocked (by an app's backend): each sees the other's current presence again.
        assert.equal((await a.http(`/api/users/${ann}/blocks/${bob}`, { method: "DELETE", token: admin })).status, 204);
        const back = await bobSees.waitFor((p) => p.userId === ann && p.version > goneForBob.version, 5000, "Bob sees Ann again");
        assert.deepEqual([back.status, back.online], ["in_call", true]);
        const backForAnn = await annSub.waitFor((p) => p.userId === bob && p.version > goneForAnn.version, 5000, "Ann sees Bob again");
        assert.equal(backForAnn.status, "live");
        await waitUntil(() => annBatches.some((p) => p.userId === bob && p.status === "live"), 5000, "her laptop too");
        assert.equal((await ask(bobS, "presence:get", { userIds: [ann] })).presences[0].status, "in_call");
        // And their changes flow again.
        await ask(bobS, "presence:set-status", { status: "in_call" });
        await annSub.waitFor((p) => p.userId === bob && p.status === "in_call", 5000, "Bob's next change");
      } finally {
        stopBeats();
      }
    } finally {
      await stop();
    }
  });
}

test("block requests: limits, who may, bad input, and the counter", async () => {
  const gw = await startGateway({ PRESENCE_MAX_BLOCKS: "2" });
  try {
    const s = await gw.connect(user("bl-me", "female"));
    for (const bad of [{ userId: "bl-me" }, { userId: "" }, { userId: 5 }, { user: "x" }, "x"]) {
      const r = await ask(s, "presence:block", bad);
      assert.deepEqual([r.ok, r.error?.code], [false, "bad_request"], JSON.stringify(bad));
    }
    assert.equal((await ask(s, "presence:block", { userId: "bl-1" })).ok, true);
    assert.equal((await ask(s, "presence:block", { userId: "bl-1" })).ok, true, "again: no change");
    assert.equal((await ask(s, "presence:block", { userId: "bl-2" })).ok, true);
    const over = await ask(s, "presence:block", { userId: "bl-3" });
    assert.deepEqual([over.ok, over.error?.code], [false, "bad_request"], "past PRESENCE_MAX_BLOCKS");
    assert.equal((await ask(s, "presence:unblock", { userId: "bl-9" })).ok, true, "nothing to lift");
    assert.equal((await gw.http("/api/users/bl-me/blocks", { token: token({ sub: "bl-other" }) })).status, 403);
    assert.equal((await gw.http("/api/users/bl-me/blocks/bl-4", { method: "PUT", token: token({ sub: "bl-other" }) })).status, 403);
    assert.equal((await gw.http("/api/users/bl-me/blocks/bl-me", { method: "PUT", token: token({ sub: "bl-me" }) })).status, 400);
    assert.deepEqual((await gw.http("/api/users/bl-me/blocks", { token: admin })).json, { blocked: ["bl-1", "bl-2"] });
    assert.match((await gw.http("/metrics")).text, /presence_blocks_total\{[^}]*\} 2\b|presence_blocks_total 2\b/);
    // Blocked both ways: one side lifting theirs leaves them hidden from each other.
    const x = await gw.connect(user("bl-x", "female"));
    const y = await gw.connect(user("bl-y", "female"));
    await ask(x, "presence:block", { userId: "bl-y" });
    await ask(y, "presence:block", { userId: "bl-x" });
    await ask(x, "presence:unblock", { userId: "bl-y" });
    await waitUntil(async () => (await ask(s, "presence:get", { userIds: ["bl-x"] })).presences.length === 1, 5000, "a read after the rules");
    assert.deepEqual((await ask(x, "presence:get", { userIds: ["bl-y"] })).presences, [], "y still blocks x");
    assert.deepEqual((await ask(y, "presence:get", { userIds: ["bl-x"] })).presences, []);
    await ask(y, "presence:unblock", { userId: "bl-x" });
    await waitUntil(async () => (await ask(x, "presence:get", { userIds: ["bl-y"] })).presences.length === 1, 5000, "visible once both lifted");
  } finally {
    await gw.stop();
  }
});

test("a block the replicas never heard of (its announcement lost) is applied and told once the bus comes back", async () => {
  // A Redis of this test's own: the bus is cut by killing its subscriber connections.
  const redis = await ownRedis(18000 + (process.pid % 1000));
  const cli = redis.cli;
  const prefix = `e2e-blk-lost-${process.pid}`;
  const env = { ...FAST, RATE_LIMIT_PER_SEC: "0", REDIS_URL: redis.url, REDIS_KEY_PREFIX: prefix };
  const [a, b] = [await startGateway(env), await startGateway(env)];
  const [vic, x] = ["lost-vic", "lost-x"];
  try {
    const vs = await a.connect(user(vic, "other"));
    const vSees = recorder(vs);
    const xs = await b.connect(user(x, "female"));
    const xSees = recorder(xs);
    const stopBeats = keepAlive(vs, xs);
    try {
      await vSees.waitFor((p) => p.userId === x && p.online, 5000, "the viewer sees X");
      const xOnline = (await ask(vs, "presence:get", { userIds: [x] })).presences[0];
      // Each blocks someone else first, so that their block sets exist: their keys' slots.
      await ask(vs, "presence:block", { userId: "lost-ghost-1" });
      await ask(xs, "presence:block", { userId: "lost-ghost-2" });
      const keyOf = (u) => cli("--scan", "--pattern", `${prefix}:blk:*:${u}`);
      const [kv, kx] = [keyOf(vic), keyOf(x)];
      assert.ok(kv && kx, "block keys found");
      // X blocks the viewer in the store, and the announcement never goes out.
      cli("sadd", kx, vic);
      cli("sadd", kv.replace(":blk:", ":blkby:"), x);
      await barrier(a, vSees);
      assert.ok(!vSees.of(x).some((p) => !p.online), "not told yet: nothing announced");
      // The bus drops and comes back: each replica reloads its users' blocks and tells them.
      cli("client", "kill", "type", "pubsub");
      const gone = await vSees.waitFor((p) => p.userId === x && !p.online, 10000, "the viewer told X is gone");
      assert.ok(gone.version > xOnline.version, "with a greater version");
      await xSees.waitFor((p) => p.userId === vic && !p.online, 10000, "and X told the viewer is gone");
      // Then silence.
      await ask(xs, "presence:set-status", { status: "live" });
      await barrier(a, vSees);
      assert.ok(!vSees.of(x).some((p) => p.status === "live"), "X's changes no longer reach the viewer");
    } finally {
      stopBeats();
    }
  } finally {
    await Promise.all([a.stop(), b.stop()]);
    redis.stop();
  }
});
