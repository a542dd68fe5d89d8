// Sections 3 and 9 together: a man who follows a woman (a subscription socket, with or without
// batches) is told she is gone when she comes back at once as another gender, on whichever
// replica, whether her old connection's close or her new handshake is committed first; and a
// man who did not follow her when she changed is told nothing, then or when he follows her
// again (the snapshot leaves her out, like any id he may not see).
//
// `loadgen audit` counted 8 men's subscription sockets "showing online someone they may no
// longer see"; these are its changers' and viewers' moves, made one at a time. The gateway does
// what the contract says in both; the audit was wrong in the second (a view kept from an
// earlier subscription: see `apply_reads` in loadtest/src/scenarios/audit.rs).
import { test } from "node:test";
import assert from "node:assert/strict";
import { startGateway, user, ask, recorder, waitUntil, FAST } from "../helpers.mjs";

const REDIS_URL = process.env.TEST_REDIS_URL ?? "redis://127.0.0.1:6379";
const BATCH_MS = 50;
const ROUNDS = 8;

/** One memory replica, or two Redis replicas. */
async function setup(engine, env) {
  const base = { ...FAST, PRESENCE_BATCH_MS: String(BATCH_MS), RATE_LIMIT_PER_SEC: "0", ...env };
  if (engine === "memory") {
    const a = await startGateway(base);
    return { replicas: [a, a], stop: () => a.stop() };
  }
  const prefix = `e2e-sg-${process.pid}-${Date.now()}-${Math.random().toString(36).slice(2, 6)}`;
  const e = { ...base, REDIS_URL, REDIS_KEY_PREFIX: prefix };
  const [a, b] = await Promise.all([startGateway(e), startGateway(e)]);
  return { replicas: [a, b], stop: () => Promise.all([a.stop(), b.stop()]) };
}

/** A man's subscription socket, and what it shows of each user: the newest version pushed. */
async function man(gw, sub, batch) {
  const s = await gw.connect({ ...user(sub, "male"), presence: "subscriptions", batch });
  const rec = recorder(s);
  const batched = [];
  s.on("presence-batch", (b) => batched.push(...b.updates));
  const pushed = (id) => [...rec.of(id), ...batched.filter((p) => p.userId === id)];
  const shows = (id) => pushed(id).reduce((a, p) => (!a || p.version > a.version ? p : a), null);
  return { s, sub, pushed, shows };
}

let beats = 0;
/**
 * Once this has returned, `m` has been pushed every change committed before: its own user's
 * change, which reaches it (a user always receives their own) after every change committed
 * before it (committed, fanned out and queued per socket in order).
 */
async function barrier(m) {
  const r = await ask(m.s, "presence:set-status", { status: "live", details: { beat: ++beats } });
  await waitUntil(() => m.shows(m.sub)?.version >= r.presence.version, 3000, `${m.sub}'s barrier`);
}

// She connects the way the audit's changers do: a subscription socket of her own.
const as = (gw, id, gender) => gw.connect({ ...user(id, gender), presence: "subscriptions" });

for (const engine of ["memory", "redis"]) {
  // Grace 0 (the default, and the audit's): her close takes her offline at once, unless her new
  // handshake got there first. With a grace, the new handshake always finds her online.
  for (const grace of ["0", "3000"]) {
    test(`${engine}, offline grace ${grace} ms: men following her are told she is gone when she comes back at once as another gender`, async () => {
      const { replicas, stop } = await setup(engine, { PRESENCE_OFFLINE_GRACE_MS: grace });
      try {
        const id = `sg-w-${engine}-${grace}`;
        const men = [];
        for (const [i, gw] of replicas.entries()) {
          for (const batch of [false, true]) {
            const m = await man(gw, `sg-m${i}${batch ? "b" : ""}-${engine}-${grace}`, batch);
            const r = await ask(m.s, "presence:subscribe", { userIds: [id] });
            assert.equal(r.ok, true);
            men.push(m);
          }
        }
        for (let round = 0; round < ROUNDS; round++) {
          const [x, y] = round % 2 ? [replicas[1], replicas[0]] : replicas;
          const woman = await as(x, id, "female");
          const set = await ask(woman, "presence:set-status", { status: "in_call", details: { round } });
          const inCall = set.presence.version;
          for (const m of men) {
            await waitUntil(() => m.shows(id)?.version >= inCall, 3000, `${m.sub} sees her in_call (round ${round})`);
          }
          // Gone, and back at once as another gender, on the other replica.
          woman.disconnect();
          const gender = round % 4 < 2 ? "other" : "male";
          const other = await as(y, id, gender);
          for (const m of men) {
            const last = await waitUntil(
              () => (m.shows(id)?.version > inCall ? m.shows(id) : null),
              3000,
              `${m.sub} told she is gone (round ${round}, ${gender})`,
            );
            assert.equal(last.status, "offline", `${m.sub}, round ${round}: ${JSON.stringify(m.pushed(id))}`);
            assert.equal(last.gender, "female", "as he knew her");
          }
          // Nothing more of her while she is not a woman.
          const shown = men.map((m) => m.shows(id).version);
          await ask(other, "presence:set-status", { status: "live", details: { round } });
          other.disconnect();
          for (const m of men) await barrier(m);
          assert.deepEqual(men.map((m) => m.shows(id).version), shown, `round ${round}: nothing after gone`);
        }
      } finally {
        await stop();
      }
    });
  }

  test(`${engine}: a man who did not follow her when she changed is told nothing, and following her again, nothing either`, async () => {
    const { replicas, stop } = await setup(engine, {});
    const [a, b] = replicas;
    try {
      const id = `sg-again-${engine}`;
      const woman = await as(b, id, "female");
      const set = await ask(woman, "presence:set-status", { status: "in_call", details: { n: 1 } });
      const men = [await man(a, `sg-again-m-${engine}`, false), await man(a, `sg-again-mb-${engine}`, true)];
      for (const m of men) {
        const r = await ask(m.s, "presence:subscribe", { userIds: [id] });
        assert.deepEqual(r.presences.map((p) => [p.userId, p.status, p.version]), [[id, "in_call", set.presence.version]]);
        assert.equal((await ask(m.s, "presence:unsubscribe", { userIds: [id] })).subscribed, 0);
      }
      // She comes back at once as someone else while they do not follow her.
      woman.disconnect();
      const other = await as(a, id, "other");
      await ask(other, "presence:set-status", { status: "live", details: { n: 2 } });
      for (const m of men) {
        const r = await ask(m.s, "presence:subscribe", { userIds: [id] });
        assert.equal(r.subscribed, 1);
        assert.deepEqual(r.presences, [], "left out of the snapshot: he may not see her");
      }
      await ask(other, "presence:set-status", { status: "in_call", details: { n: 3 } });
      for (const m of men) {
        await barrier(m);
        // What reached him of her is the snapshot he got while she was a woman: what a client
        // shows of her now is what the last snapshot says (nothing), not that.
        assert.deepEqual(m.pushed(id), [], `${m.sub}: nothing pushed of her`);
      }
      // She is a woman again: those who follow her hear of it.
      other.disconnect();
      const again = await as(b, id, "female");
      for (const m of men) {
        await waitUntil(() => m.shows(id)?.online, 3000, `${m.sub} sees her again`);
      }
      again.disconnect();
    } finally {
      await stop();
    }
  });
}
