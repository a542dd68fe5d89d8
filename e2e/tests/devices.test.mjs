// Section 11, statuses per device: a status belongs to the connection that set it; the user
// shows the best of their live connections' (in_call > live > online), and falls back when
// that connection goes silent or closes. With one gateway (memory engine) and with two
// Redis replicas, the phone on one and the laptop on the other.
import { test } from "node:test";
import assert from "node:assert/strict";
import { startGateway, user, ask, recorder, barrier, waitUntil, FAST } from "../helpers.mjs";

const REDIS_URL = process.env.TEST_REDIS_URL ?? "redis://127.0.0.1:6379";

for (const engine of ["memory", "redis"]) {
  test(`${engine}: a phone that dies during a call leaves its user live on the laptop, then online`, async () => {
    const env = { ...FAST };
    if (engine === "redis") Object.assign(env, { REDIS_URL, REDIS_KEY_PREFIX: `dev${process.pid}x${Date.now() % 1e6}` });
    const a = await startGateway(env);
    const b = engine === "redis" ? await startGateway(env) : a;
    const id = `dv-${engine}-${process.pid}`;
    try {
      const viewer = await a.connect(user(`viewer-${id}`, "female"));
      const sees = recorder(viewer);
      const phone = await a.connect(user(id, "female"));
      const laptop = await b.connect(user(id, "female"));
      // The laptop keeps talking; the phone will fall silent.
      const beat = setInterval(() => laptop.emit("user:heartbeat"), 300);
      let phoneBeat;
      try {
        await sees.waitFor((p) => p.userId === id && p.status === "online");
        const call = await ask(phone, "presence:set-status", { status: "in_call", details: { call: 1 } });
        assert.equal(call.presence.status, "in_call");
        const inCall = await sees.waitFor((p) => p.userId === id && p.status === "in_call");
        const live = await ask(laptop, "presence:set-status", { status: "live", details: { stream: 2 } });
        assert.equal(live.presence.status, "in_call", "in_call outranks the laptop's live");
        assert.equal(live.presence.version, inCall.version, "not a change");
        await barrier(a, sees);
        assert.equal(sees.of(id).length, 2, "nothing announced for the laptop's live");

        // The phone goes silent (no event within the heartbeat timeout): its call goes with it.
        const fell = await sees.waitFor((p) => p.userId === id && p.status === "live", 8000, "the fall back to live");
        assert.deepEqual(fell.details, { stream: 2 }, "the laptop's details");
        assert.ok(fell.version > inCall.version);
        assert.equal(fell.online, true);

        // The phone speaks again (a request is heard at once; a heartbeat at the next flush):
        // a live connection, online, below the laptop's live.
        const back = await ask(phone, "presence:set-status", { status: "online" });
        assert.deepEqual([back.presence.status, back.presence.version], ["live", fell.version]);
        phoneBeat = setInterval(() => phone.emit("user:heartbeat"), 300);
        await barrier(a, sees);
        assert.equal(sees.of(id).length, 3, "its return changes nothing shown");

        // The laptop closes: the phone's online shows, with a greater version.
        clearInterval(beat);
        laptop.disconnect();
        const on = await sees.waitFor((p) => p.userId === id && p.version > fell.version, 5000, "the fall back to online");
        assert.deepEqual([on.status, on.details, on.online], ["online", null, true]);
        const got = await ask(viewer, "presence:get", { userIds: [id] });
        assert.equal(got.presences[0].version, on.version);
        assert.equal(got.presences[0].status, "online");
      } finally {
        clearInterval(beat);
        clearInterval(phoneBeat);
      }
    } finally {
      await a.stop();
      if (b !== a) await b.stop();
    }
  });
}
