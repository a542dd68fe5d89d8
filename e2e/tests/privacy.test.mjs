// Section 11, the user's settings: invisible ("appear offline") and last seen. On one memory
// replica and on three Redis replicas (the user on one, viewers on the others), every path:
// pushed updates, batches, subscription snapshots and updates, presence:get,
// presence:list-online, HTTP presence, and the operators' truth.
import { test } from "node:test";
import assert from "node:assert/strict";
import { startGateway, user, token, ask, recorder, barrier, waitUntil, FAST } from "../helpers.mjs";

const REDIS_URL = process.env.TEST_REDIS_URL ?? "redis://127.0.0.1:6379";
const admin = token({ sub: "ops-priv", roles: ["admin"] });

async function setup(engine, env = {}) {
  const base = { ...FAST, RATE_LIMIT_PER_SEC: "0", PRESENCE_BATCH_MS: "100", ...env };
  if (engine === "memory") {
    const a = await startGateway(base);
    return { a, b: a, c: a, stop: () => a.stop() };
  }
  const e = { ...base, REDIS_URL, REDIS_KEY_PREFIX: `e2e-priv-${process.pid}-${Date.now() % 1e6}-${Math.random().toString(36).slice(2, 6)}` };
  const [a, b, c] = await Promise.all([startGateway(e), startGateway(e), startGateway(e)]);
  return { a, b, c, stop: () => Promise.all([a.stop(), b.stop(), c.stop()]) };
}

/** Keep sockets heard from (FAST's heartbeat timeout is 1.5 s). */
function keepAlive(...sockets) {
  const t = setInterval(() => sockets.forEach((s) => s.connected && s.emit("user:heartbeat")), 300);
  return () => clearInterval(t);
}

for (const engine of ["memory", "redis"]) {
  test(`${engine}: invisible is offline to every other viewer on every path, truth to the user and operators`, async () => {
    const { a, b, c, stop } = await setup(engine);
    const id = `inv-${engine}-${process.pid}`;
    try {
      const v = await a.connect(user(`v-${id}`, "female"));
      const seen = recorder(v);
      const batcher = await a.connect({ ...user(`vb-${id}`, "other"), batch: true });
      const batches = [];
      batcher.on("presence-batch", (m) => batches.push(...m.updates));
      const sub = await c.connect({ ...user(`vs-${id}`, "other"), presence: "subscriptions" });
      const subSees = recorder(sub);
      const x = await b.connect(user(id, "female"));
      const xSees = recorder(x);
      const stopBeats = keepAlive(x, v, batcher, sub);
      try {
        const snap0 = await ask(sub, "presence:subscribe", { userIds: [id] });
        assert.equal(snap0.presences[0].status, "online");
        const online = await seen.waitFor((p) => p.userId === id && p.online);

        const set = await ask(x, "presence:set-privacy", { invisible: true });
        assert.deepEqual(set, { ok: true, privacy: { invisible: true, lastSeen: "everyone" } });
        const gone = await seen.waitFor((p) => p.userId === id && !p.online, 5000, "the invisible user going offline");
        assert.ok(gone.version > online.version, "with a greater version");
        assert.equal(gone.status, "offline");
        assert.ok(Math.abs(Date.parse(gone.lastSeen) - Date.now()) < 5000, "lastSeen: the moment they turned invisible");
        assert.deepEqual(Object.keys(gone).sort(), Object.keys(online).sort(), "no field tells them apart");
        await subSees.waitFor((p) => p.userId === id && p.version === gone.version && !p.online, 5000, "the subscriber too");
        await waitUntil(() => batches.some((p) => p.userId === id && p.version === gone.version && !p.online), 5000, "the batching socket too");
        // The user sees their real self.
        const self = await xSees.waitFor((p) => p.userId === id && p.version === gone.version);
        assert.equal(self.status, "online");

        // Their changes while invisible tell others nothing, and no version steps.
        const live = await ask(x, "presence:set-status", { status: "live", details: { s: 1 } });
        assert.equal(live.presence.status, "live", "their own ack is the truth");
        await barrier(a, seen);
        // The subscriber's barrier: a user it subscribed to comes online after the change.
        await ask(sub, "presence:subscribe", { userIds: [`m-${id}`] });
        const m = await b.connect(user(`m-${id}`, "female"));
        await subSees.waitFor((p) => p.userId === `m-${id}` && p.online, 5000, "the subscriber's barrier");
        m.disconnect();
        assert.equal(seen.of(id).length, 2, "nothing after the offline");
        assert.equal(subSees.of(id).length, 1, "the subscriber: only the offline");
        assert.ok(batches.filter((p) => p.userId === id).every((p) => p.version <= gone.version), "the batches: nothing after the offline");
        const got = await ask(v, "presence:get", { userIds: [id] });
        assert.deepEqual(got.presences[0], gone, "presence:get: the same offline, same version");
        const list = await ask(v, "presence:list-online", { limit: 500 });
        assert.ok(!list.users.some((u) => u.userId === id), "not listed online");
        const snap = await ask(sub, "presence:subscribe", { userIds: [id] });
        assert.deepEqual(snap.presences[0], gone, "a subscription's snapshot");
        const http = await a.http(`/api/presence/${id}`, { token: token({ sub: `v-${id}`, gender: "female" }) });
        assert.deepEqual(http.json, gone, "HTTP presence");
        const many = await c.http(`/api/presence?ids=${id}`, { token: token({ sub: `v-${id}`, gender: "female" }) });
        assert.deepEqual(many.json.presences[0], gone);
        const mine = await ask(x, "presence:get", { userIds: [id] });
        assert.equal(mine.presences[0].status, "live", "they see their own real presence");
        const ownList = await ask(x, "presence:list-online", { limit: 500 });
        assert.ok(ownList.users.some((u) => u.userId === id && u.status === "live"));

        // Operators see the truth.
        const op = await c.http(`/api/admin/users/${id}`, { token: admin });
        assert.deepEqual([op.json.presence.status, op.json.privacy], ["live", { invisible: true, lastSeen: "everyone" }]);
        await waitUntil(async () => /presence_invisible_users 1\b/.test((await a.http("/metrics")).text), 5000, "presence_invisible_users 1");
        const health = await a.http("/api/health");
        assert.ok(health.json.presence.onlineUsers >= 4, "counted online");

        // Visible again: the real presence, with a greater version, everywhere.
        await ask(x, "presence:set-privacy", { invisible: false });
        const back = await seen.waitFor((p) => p.userId === id && p.version > gone.version, 5000, "visible again");
        assert.deepEqual([back.status, back.details], ["live", { s: 1 }]);
        assert.ok(back.version > gone.version);
        await subSees.waitFor((p) => p.userId === id && p.version === back.version);
        await waitUntil(() => batches.some((p) => p.userId === id && p.version === back.version), 5000, "the batch");
        await waitUntil(async () => /presence_invisible_users 0\b/.test((await a.http("/metrics")).text), 5000, "presence_invisible_users 0");
      } finally {
        stopBeats();
      }
    } finally {
      await stop();
    }
  });

  test(`${engine}: last seen nobody, and the reciprocal rule; settings survive reconnects and are shared`, async () => {
    const { a, b, stop } = await setup(engine);
    const id = `ls-${engine}-${process.pid}`;
    const other = `lo-${engine}-${process.pid}`;
    try {
      const v = await a.connect(user(`v-${id}`, "female"));
      const seen = recorder(v);
      const stopBeats = keepAlive(v);
      try {
        const x = await b.connect(user(id, "female"));
        const put = await b.http(`/api/users/${id}/privacy`, { method: "PUT", token: token({ sub: id }), body: { lastSeen: "nobody" } });
        assert.deepEqual([put.status, put.json], [200, { invisible: false, lastSeen: "nobody" }]);
        x.disconnect();
        const off = await seen.waitFor((p) => p.userId === id && !p.online, 5000, "offline");
        assert.equal(off.lastSeen, null, "no lastSeen for others");
        const got = await ask(v, "presence:get", { userIds: [id] });
        assert.equal(got.presences[0].lastSeen, null);

        // Another user goes offline; the one who hides theirs does not get theirs (reciprocal).
        const y = await a.connect(user(other, "female"));
        y.disconnect();
        await seen.waitFor((p) => p.userId === other && !p.online && p.lastSeen, 5000, "others see the other's lastSeen");
        const x2 = await a.connect(user(id, "female"));
        const theirs = await ask(x2, "presence:get", { userIds: [other, id] });
        assert.equal(theirs.presences[0].lastSeen, null, "reciprocal: they get no one's");
        assert.equal(theirs.presences[1].online, true, "and their own presence is theirs");
        const viaHttp = await b.http(`/api/presence/${other}`, { token: token({ sub: id, gender: "female" }) });
        assert.equal(viaHttp.json.lastSeen, null);
        // The settings, read anywhere.
        const read = await a.http(`/api/users/${id}/privacy`, { token: token({ sub: id }) });
        assert.deepEqual(read.json, { invisible: false, lastSeen: "nobody" });
        const back = await ask(x2, "presence:set-privacy", { lastSeen: "everyone" });
        assert.deepEqual(back.privacy, { invisible: false, lastSeen: "everyone" });
        await waitUntil(async () => (await ask(x2, "presence:get", { userIds: [other] })).presences[0].lastSeen !== null, 5000, "others' lastSeen again");
        x2.disconnect();
      } finally {
        stopBeats();
      }
    } finally {
      await stop();
    }
  });
}

test("privacy requests: who may read and change them, and bad input", async () => {
  const gw = await startGateway({ LAST_SEEN_RECIPROCAL: "false" });
  try {
    const me = token({ sub: "pr-me" });
    assert.equal((await gw.http("/api/users/pr-me/privacy", { token: token({ sub: "pr-other" }) })).status, 403);
    assert.equal((await gw.http("/api/users/pr-me/privacy", { method: "PUT", token: token({ sub: "pr-other" }), body: { invisible: true } })).status, 403);
    assert.equal((await gw.http("/api/users/pr-me/privacy")).status, 401);
    const byAdmin = await gw.http("/api/users/pr-me/privacy", { method: "PUT", token: admin, body: { invisible: true } });
    assert.deepEqual([byAdmin.status, byAdmin.json], [200, { invisible: true, lastSeen: "everyone" }], "an app's backend may set them");
    assert.deepEqual((await gw.http("/api/users/pr-me/privacy", { token: me })).json, { invisible: true, lastSeen: "everyone" });
    for (const body of [{ invisible: "yes" }, { lastSeen: "friends" }, { other: 1 }, [], "x"]) {
      const r = await gw.http("/api/users/pr-me/privacy", { method: "PUT", token: me, body });
      assert.equal(r.status, 400, JSON.stringify(body));
    }
    const s = await gw.connect(user("pr-me", "male"));
    for (const bad of [{ invisible: 1 }, { lastSeen: null, x: 1 }, "x"]) {
      const r = await ask(s, "presence:set-privacy", bad);
      assert.deepEqual([r.ok, r.error?.code], [false, "bad_request"], JSON.stringify(bad));
    }
    assert.deepEqual(await ask(s, "presence:set-privacy", {}), { ok: true, privacy: { invisible: true, lastSeen: "everyone" } }, "nothing left out changes");
    // LAST_SEEN_RECIPROCAL=false: hiding one's own does not hide others'.
    await ask(s, "presence:set-privacy", { lastSeen: "nobody" });
    const o = await gw.connect(user("pr-o", "female"));
    o.disconnect();
    await waitUntil(async () => (await ask(s, "presence:get", { userIds: ["pr-o"] })).presences[0]?.lastSeen, 5000, "the other's lastSeen");
  } finally {
    await gw.stop();
  }
});

test("with PostgreSQL, a user the presence store lost is read from the database under their own settings", async () => {
  const { freshDatabase, psql } = await import("../db.mjs");
  const db = freshDatabase();
  const env = { ...FAST, DATABASE_URL: db };
  let gw = await startGateway(env);
  const [inv, nobody, plain] = ["pg-lk-inv", "pg-lk-nobody", "pg-lk-plain"];
  try {
    await waitUntil(async () => (await gw.http("/api/health")).json?.dependencies?.database === "up", 10000, "database up");
    // Each online, then their settings, then gone: the database holds their true last seen.
    for (const [id, change] of [[inv, { invisible: true }], [nobody, { lastSeen: "nobody" }], [plain, null]]) {
      const s = await gw.connect(user(id, "female"));
      if (change) assert.equal((await ask(s, "presence:set-privacy", change)).privacy !== undefined, true);
      s.disconnect();
    }
    const rows = () => psql(db, `SELECT user_id, online, last_seen IS NOT NULL FROM user_presence WHERE user_id LIKE 'pg-lk-%' ORDER BY user_id`);
    await waitUntil(async () => rows().length === 3 && rows().every((r) => r[1] === "f" && r[2] === "t"), 10000, "the last seen of all three in the database");
    // A new replica (the memory engine starts empty: as if Redis had lost everything).
    await gw.stop();
    gw = await startGateway(env);
    const v = await gw.connect(user("pg-lk-viewer", "female"));
    const got = await ask(v, "presence:get", { userIds: [inv, nobody, plain] });
    const by = Object.fromEntries(got.presences.map((p) => [p.userId, p]));
    assert.equal(by[plain].online, false);
    assert.ok(by[plain].lastSeen, "the database's last seen, for a user without settings");
    assert.deepEqual([by[nobody].online, by[nobody].lastSeen], [false, null], "last seen nobody: none");
    assert.deepEqual([by[inv].online, by[inv].lastSeen], [false, null], "invisible: not the last seen they hid");
    const http = await gw.http(`/api/presence/${inv}`, { token: token({ sub: "pg-lk-viewer", gender: "female" }) });
    assert.equal(http.json.lastSeen, null, "HTTP presence too");
  } finally {
    await gw.stop();
  }
});

test("with PostgreSQL the settings outlive the replica (and Redis); PostgreSQL down refuses the handshake rather than guess", async () => {
  const { freshDatabase, psql } = await import("../db.mjs");
  const db = freshDatabase();
  const env = { ...FAST, DATABASE_URL: db };
  let gw = await startGateway(env);
  const id = "pg-inv";
  try {
    await waitUntil(async () => (await gw.http("/api/health")).json?.dependencies?.database === "up", 10000, "database up");
    const put = await gw.http(`/api/users/${id}/privacy`, { method: "PUT", token: admin, body: { invisible: true, lastSeen: "nobody" } });
    assert.deepEqual(put.json, { invisible: true, lastSeen: "nobody" });
    assert.deepEqual(psql(db, `SELECT invisible, last_seen_nobody FROM user_privacy WHERE user_id = '${id}'`), [["t", "t"]]);
    // A new replica (the memory engine starts empty: as if Redis had lost everything).
    await gw.stop();
    gw = await startGateway(env);
    const v = await gw.connect(user("pg-viewer", "female"));
    const seen = recorder(v);
    const x = await gw.connect(user(id, "female"));
    await barrier(gw, seen);
    assert.equal(seen.of(id).length, 0, "never announced online");
    const got = await ask(v, "presence:get", { userIds: [id] });
    assert.equal(got.presences[0].online, false);
    const mine = await ask(x, "presence:get", { userIds: [id] });
    assert.equal(mine.presences[0].online, true, "their own truth");
    assert.deepEqual((await gw.http(`/api/users/${id}/privacy`, { token: token({ sub: id }) })).json, { invisible: true, lastSeen: "nobody" });
  } finally {
    await gw.stop();
  }
  // A database that does not answer: the handshake is refused, never guessed.
  const down = await startGateway({ ...FAST, DATABASE_URL: "postgres://postgres@127.0.0.1:1/none" });
  try {
    const { io } = await import("socket.io-client");
    const refused = await new Promise((resolve) => {
      const s = io(down.url, { auth: user("pg-any", "female"), reconnection: false, forceNew: true, transports: ["websocket"] });
      s.once("connect", () => (s.close(), resolve("connected")));
      s.once("connect_error", (e) => (s.close(), resolve(e.message)));
    });
    assert.match(refused, /^unavailable/);
  } finally {
    await down.stop();
  }
});
