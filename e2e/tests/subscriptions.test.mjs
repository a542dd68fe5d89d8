// Section 9: subscription sockets receive only the users they subscribed to (and may see) and
// their own; batching sockets receive presence-batch frames (newest per user, change order, at
// most PRESENCE_BATCH_MS late, at most 500 users). Every rule on both engines (one memory
// replica; two Redis replicas, the changes committed on the other one), over websocket and
// long-polling.
import { test } from "node:test";
import assert from "node:assert/strict";
import { io } from "socket.io-client";
import { startGateway, user, token, ask, recorder, waitUntil, withDeadline, FAST, TRANSPORTS } from "../helpers.mjs";

const REDIS_URL = process.env.TEST_REDIS_URL ?? "redis://127.0.0.1:6379";
const BATCH_MS = 300;

/** One memory replica, or two Redis replicas: `a` holds the viewers, `b` the users who change. */
async function setup(engine, env = {}) {
  const base = { ...FAST, PRESENCE_BATCH_MS: String(BATCH_MS), RATE_LIMIT_PER_SEC: "0", ...env };
  if (engine === "memory") {
    const a = await startGateway(base);
    return { a, b: a, stop: () => a.stop() };
  }
  const prefix = `e2e-subs-${process.pid}-${Date.now()}-${Math.random().toString(36).slice(2, 6)}`;
  const e = { ...base, REDIS_URL, REDIS_KEY_PREFIX: prefix };
  const [a, b] = await Promise.all([startGateway(e), startGateway(e)]);
  return { a, b, stop: () => Promise.all([a.stop(), b.stop()]) };
}

/** A socket with `auth` extras, recording updates and batches. */
async function viewer(gw, sub, gender, extra, transports) {
  const s = await gw.connect({ ...user(sub, gender), ...extra }, { transports });
  const rec = recorder(s);
  const batches = [];
  s.on("presence-batch", (b) => batches.push({ at: Date.now(), updates: b.updates }));
  return { s, rec, batches, batched: () => batches.flatMap((b) => b.updates) };
}

const refusal = (gw, auth) =>
  new Promise((resolve) => {
    const s = io(gw.url, { auth, reconnection: false, forceNew: true, transports: ["websocket"] });
    s.once("connect", () => (s.close(), resolve("connected")));
    s.once("connect_error", (e) => (s.close(), resolve(e.message)));
  });

for (const engine of ["memory", "redis"]) {
  test(`${engine}: handshake options are checked; anything else is refused unauthorized`, async () => {
    const { a, stop } = await setup(engine);
    try {
      const t = token({ sub: "opt", gender: "female" });
      for (const bad of [{ presence: "all" }, { presence: null }, { presence: 1 }, { batch: "yes" }, { batch: null }, { batch: 1 }]) {
        assert.match(await refusal(a, { token: t, ...bad }), /^unauthorized/, JSON.stringify(bad));
      }
      for (const ok of [{}, { presence: "broadcast" }, { presence: "subscriptions" }, { batch: true }, { batch: false, presence: "subscriptions" }]) {
        assert.equal(await refusal(a, { token: t, ...ok }), "connected", JSON.stringify(ok));
      }
    } finally {
      await stop();
    }
  });

  for (const transports of TRANSPORTS) {
    const via = transports[0];
    test(`${engine}/${via}: a subscription socket gets its subscriptions and itself, nothing else; snapshot then greater versions`, async () => {
      const { a, b, stop } = await setup(engine);
      try {
        const v = await viewer(a, `sv-${via}`, "female", { presence: "subscriptions" }, transports);
        const friend = await b.connect(user(`sf-${via}`, "female"));
        const stranger = await b.connect(user(`ss-${via}`, "female"));
        // Its own changes arrive without any subscription.
        await ask(v.s, "presence:set-status", { status: "live", details: { t: 1 } });
        await v.rec.waitFor((p) => p.userId === `sv-${via}` && p.status === "live");
        const r = await ask(v.s, "presence:subscribe", { userIds: [`sf-${via}`, `nobody-${via}`] });
        assert.equal(r.ok, true, JSON.stringify(r));
        assert.equal(r.subscribed, 2);
        const snap = r.presences.find((p) => p.userId === `sf-${via}`);
        assert.equal(snap.online, true);
        assert.equal(r.presences.find((p) => p.userId === `nobody-${via}`).version, 0, "visible, never seen");
        await ask(friend, "presence:set-status", { status: "in_call" });
        await ask(stranger, "presence:set-status", { status: "in_call" });
        const u = await v.rec.waitFor((p) => p.userId === `sf-${via}` && p.status === "in_call");
        assert.ok(u.version > snap.version);
        // Subscribing again is a no-op; unsubscribing stops the updates.
        assert.equal((await ask(v.s, "presence:subscribe", { userIds: [`sf-${via}`] })).subscribed, 2);
        assert.equal((await ask(v.s, "presence:unsubscribe", { userIds: [`sf-${via}`] })).subscribed, 1);
        await ask(friend, "presence:set-status", { status: "online" });
        await ask(v.s, "presence:set-status", { status: "online" });
        await v.rec.waitFor((p) => p.userId === `sv-${via}` && p.status === "online");
        // Its own change was committed after both of those; once it is here they would be too.
        await barrierVia(b, v);
        assert.deepEqual(v.rec.of(`ss-${via}`), [], "never subscribed: nothing");
        assert.equal(v.rec.of(`sf-${via}`).filter((p) => p.status === "online" && p.version > u.version).length, 0, "unsubscribed: nothing more");
        assert.deepEqual((await ask(v.s, "presence:unsubscribe", { all: true })).subscribed, 0);
      } finally {
        await stop();
      }
    });

    test(`${engine}/${via}: ids the viewer may not see are accepted and silent; the limit refuses and changes nothing`, async () => {
      const { a, b, stop } = await setup(engine, { PRESENCE_MAX_SUBSCRIPTIONS: "4" });
      try {
        const man = await viewer(a, `im-${via}`, "male", { presence: "subscriptions" }, transports);
        const other = await b.connect(user(`io-${via}`, "male"));
        const woman = await b.connect(user(`iw-${via}`, "female"));
        const r = await ask(man.s, "presence:subscribe", { userIds: [`io-${via}`, `iw-${via}`, `im-${via}`] });
        assert.equal(r.subscribed, 3);
        assert.deepEqual(r.presences.map((p) => p.userId).sort(), [`im-${via}`, `iw-${via}`], "a man sees women and himself");
        const over = await ask(man.s, "presence:subscribe", { userIds: [`x1-${via}`, `x2-${via}`] });
        assert.equal(over.ok, false);
        assert.equal(over.error.code, "bad_request");
        assert.equal((await ask(man.s, "presence:subscribe", { userIds: [`iw-${via}`] })).subscribed, 3, "nothing changed");
        await ask(other, "presence:set-status", { status: "live" });
        await ask(woman, "presence:set-status", { status: "live" });
        await man.rec.waitFor((p) => p.userId === `iw-${via}` && p.status === "live");
        await barrierVia(b, man);
        assert.deepEqual(man.rec.of(`io-${via}`), [], "an invisible subscription never produces anything");
      } finally {
        await stop();
      }
    });

    test(`${engine}/${via}: a batching socket gets presence-batch: newest per user, change order, on time`, async () => {
      const { a, b, stop } = await setup(engine);
      try {
        const v = await viewer(a, `bv-${via}`, "female", { batch: true }, transports);
        const x = await b.connect(user(`bx-${via}`, "female"));
        const y = await b.connect(user(`by-${via}`, "female"));
        await waitUntil(() => v.batched().some((p) => p.userId === `by-${via}`), 3000, "connects batched");
        const before = v.batches.length;
        const t0 = Date.now();
        await ask(x, "presence:set-status", { status: "live" });
        await ask(y, "presence:set-status", { status: "live" });
        await ask(x, "presence:set-status", { status: "in_call" });
        await waitUntil(() => v.batches.length > before && v.batched().some((p) => p.userId === `bx-${via}` && p.status === "in_call"), 3000, "a batch");
        const got = v.batches.slice(before).flatMap((b) => b.updates);
        const first = v.batches[before];
        assert.ok(first.at - t0 <= BATCH_MS + 400, `left ${first.at - t0} ms after the first change`);
        if (v.batches.length === before + 1) {
          // One batch: each user once, newest, at the place of the latest change.
          assert.deepEqual(got.map((p) => [p.userId, p.status]), [[`by-${via}`, "live"], [`bx-${via}`, "in_call"]]);
        }
        assert.deepEqual(v.rec.seen, [], "no presence-update to a batching socket");
      } finally {
        await stop();
      }
    });
  }

  test(`${engine}: a batch holds at most 500 users; a subscription socket batches only what it sees`, async () => {
    const { a, b, stop } = await setup(engine, { PRESENCE_BATCH_MS: "10000" });
    try {
      const v = await viewer(a, "big-viewer", "female", { batch: true }, ["websocket"]);
      const s = await viewer(a, "big-subs", "male", { batch: true, presence: "subscriptions" }, ["websocket"]);
      await ask(s.s, "presence:subscribe", { userIds: ["big-7", "big-8"] });
      const users = [];
      for (let i = 0; i < 520; i++) users.push(b.socket(user(`big-${i}`, i === 8 ? "male" : "female"), { transports: ["websocket"] }));
      // A batch is due 10 s after its first change, so the 500 that arrive before it leave
      // together as soon as the 500th arrives, however slowly the machine connects them.
      await waitUntil(() => new Set(v.batched().map((p) => p.userId)).size >= 520, 30000, "520 users batched");
      for (const f of v.batches) assert.ok(f.updates.length <= 500, `${f.updates.length} in one batch`);
      assert.ok(v.batches.some((f) => f.updates.length === 500), "a full batch left at once");
      await waitUntil(() => s.batched().some((p) => p.userId === "big-7"), 15000, "the subscribed user");
      assert.deepEqual([...new Set(s.batched().map((p) => p.userId))].filter((u) => u !== "big-subs"), ["big-7"], "only the visible subscription");
      const m = await (await fetch(`${a.url}/metrics`)).text();
      assert.match(m, /presence_batches_sent_total\{node="[^"]+"\} [1-9]/);
      assert.match(m, /presence_subscriptions\{node="[^"]+"\} 2/);
      for (const u of users) u.disconnect();
    } finally {
      await stop();
    }
  });

  test(`${engine}: PRESENCE_BROADCAST=false makes every socket a subscription socket; broadcast sockets refuse subscribing`, async () => {
    const { a, b, stop } = await setup(engine, { PRESENCE_BROADCAST: "false" });
    const open = await setup(engine);
    try {
      const v = await viewer(a, "pb-viewer", "female", { presence: "broadcast" }, ["websocket"]);
      const w = await b.connect(user("pb-w", "female"));
      await ask(w, "presence:set-status", { status: "live" });
      await barrierVia(b, v);
      assert.deepEqual(v.rec.of("pb-w"), [], "not subscribed: nothing");
      assert.equal((await ask(v.s, "presence:subscribe", { userIds: ["pb-w"] })).ok, true);
      const bs = await open.a.connect(user("pb-b", "female"));
      for (const [ev, body] of [["presence:subscribe", { userIds: ["x"] }], ["presence:unsubscribe", { all: true }]]) {
        const r = await ask(bs, ev, body);
        assert.equal(r.error?.code, "bad_request", `${ev} on a broadcast socket`);
      }
    } finally {
      await Promise.all([stop(), open.stop()]);
    }
  });

  test(`${engine}: malformed subscription requests are bad_request and change nothing`, async () => {
    const { a, stop } = await setup(engine);
    try {
      const v = await viewer(a, "mal", "female", { presence: "subscriptions" }, ["websocket"]);
      assert.equal((await ask(v.s, "presence:subscribe", { userIds: ["keep"] })).subscribed, 1);
      const many = Array.from({ length: 501 }, (_, i) => `m${i}`);
      for (const [ev, body] of [
        ["presence:subscribe", { userIds: [] }], ["presence:subscribe", { userIds: many }], ["presence:subscribe", { userIds: "keep" }],
        ["presence:subscribe", { userIds: ["x".repeat(129)] }], ["presence:subscribe", { userIds: [1] }], ["presence:subscribe", null],
        ["presence:unsubscribe", {}], ["presence:unsubscribe", { all: false }], ["presence:unsubscribe", { all: true, userIds: ["keep"] }],
        ["presence:unsubscribe", { userIds: [] }], ["presence:unsubscribe", { userIds: many }],
      ]) {
        const r = await ask(v.s, ev, body);
        assert.equal(r.error?.code, "bad_request", `${ev} ${JSON.stringify(body).slice(0, 60)}`);
      }
      assert.equal((await ask(v.s, "presence:unsubscribe", { userIds: ["other"] })).subscribed, 1, "still the one");
    } finally {
      await stop();
    }
  });
}

/** Once a fresh marker user's coming online reached `v` (as an update or in a batch), every
 * change committed on `gw` before it has reached `v` too. A subscription socket subscribes to
 * the marker first. */
async function barrierVia(gw, v) {
  const id = `mark-${Math.random().toString(36).slice(2, 8)}`;
  await ask(v.s, "presence:subscribe", { userIds: [id] }).catch(() => {});
  const m = await gw.connect(user(id, "female"));
  await withDeadline(waitUntil(() => v.rec.of(id).some((p) => p.online) || v.batched().some((p) => p.userId === id && p.online), 5000, "marker"), 6000, "marker");
  m.disconnect();
}

