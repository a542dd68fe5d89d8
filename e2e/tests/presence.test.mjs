// Section 3 of the contract, over websocket and over long-polling.
import { test, describe, before, after } from "node:test";
import assert from "node:assert/strict";
import { startGateway, user, ask, recorder, barrier, TRANSPORTS } from "../helpers.mjs";

for (const transports of TRANSPORTS) {
  describe(`presence over ${transports[0]}`, () => {
    let gw;
    const t = transports[0];
    const id = (name) => `${name}-${t}`;
    const opts = { transports };
    before(async () => (gw = await startGateway()));
    after(async () => gw?.stop());

    test("two users see each other come online, go live, and go offline", async () => {
      const bob = await gw.connect(user(id("bob"), "male"), opts);
      const bobSees = recorder(bob);
      const alice = await gw.connect(user(id("alice"), "female"), opts);
      const aliceSees = recorder(alice);

      const on = await bobSees.waitFor((p) => p.userId === id("alice") && p.status === "online");
      assert.equal(on.online, true);
      assert.equal(on.gender, "female");
      assert.equal(on.lastSeen, null);
      assert.equal(on.details, null);
      assert.ok(on.version > 0);
      assert.match(on.updatedAt, /^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z$/);

      // Alice (female) sees everyone, so she learns Bob is online from a listing.
      const list = await ask(alice, "presence:list-online", { limit: 500 });
      assert.equal(list.ok, true);
      assert.ok(list.users.some((u) => u.userId === id("bob")));

      const live = await ask(alice, "presence:set-status", { status: "live", details: { streamId: "s1" } });
      assert.equal(live.ok, true);
      assert.equal(live.presence.status, "live");
      assert.deepEqual(live.presence.details, { streamId: "s1" });
      const seenLive = await bobSees.waitFor((p) => p.userId === id("alice") && p.status === "live");
      assert.deepEqual(seenLive.details, { streamId: "s1" });
      assert.ok(seenLive.version > on.version, "versions grow");

      await aliceSees.waitFor((p) => p.userId === id("alice") && p.status === "live");
      alice.disconnect();
      const off = await bobSees.waitFor((p) => p.userId === id("alice") && p.status === "offline");
      assert.equal(off.online, false);
      assert.equal(off.details, null);
      assert.ok(Date.parse(off.lastSeen) > 0, "lastSeen is set when going offline");
      assert.ok(off.version > seenLive.version);
      await barrier(gw, bobSees);
      assert.deepEqual(
        bobSees.of(id("alice")).map((p) => p.status),
        ["online", "live", "offline"],
        "every change announced once",
      );
      bob.disconnect();
    });

    test("the gender rule holds for pushes, presence:get and presence:list-online", async () => {
      const m = await gw.connect(user(id("vis-m"), "male"), opts);
      const mSees = recorder(m);
      const o = await gw.connect(user(id("vis-o"), "other"), opts);
      const oSees = recorder(o);
      const m2 = await gw.connect(user(id("vis-m2"), "male"), opts);
      const f = await gw.connect(user(id("vis-f"), "female"), opts);

      await barrier(gw, mSees);
      assert.deepEqual(mSees.of(id("vis-m2")), [], "a man sees no man");
      assert.deepEqual(mSees.of(id("vis-o")), [], "a man sees no other");
      assert.equal(mSees.of(id("vis-f")).length, 1, "a man sees a woman");
      await oSees.waitFor((p) => p.userId === id("vis-f"));
      await oSees.waitFor((p) => p.userId === id("vis-m2"));

      const got = await ask(m, "presence:get", { userIds: [id("vis-m2"), id("vis-o"), id("vis-f"), id("vis-m")] });
      assert.equal(got.ok, true);
      assert.deepEqual(got.presences.map((p) => p.userId).sort(), [id("vis-f"), id("vis-m")].sort());

      const listed = await ask(m, "presence:list-online", { limit: 500 });
      const ids = listed.users.map((u) => u.userId);
      assert.ok(ids.includes(id("vis-f")) && ids.includes(id("vis-m")), "women and himself");
      assert.ok(!ids.includes(id("vis-m2")) && !ids.includes(id("vis-o")));
      assert.ok(listed.users.every((u) => u.gender === "female" || u.userId === id("vis-m")));

      // A man's own changes reach him although men are not his audience.
      const mSelf = await ask(m, "presence:set-status", { status: "in_call", details: { with: "x" } });
      assert.equal(mSelf.ok, true);
      await mSees.waitFor((p) => p.userId === id("vis-m") && p.status === "in_call");
      for (const s of [m, m2, o, f]) s.disconnect();
    });

    test("statuses: same status again is acked but not announced; new details are a change", async () => {
      const v = await gw.connect(user(id("st-viewer"), "female"), opts);
      const seen = recorder(v);
      const u = await gw.connect(user(id("st-u"), "female"), opts);
      await seen.waitFor((p) => p.userId === id("st-u") && p.online);

      const a = await ask(u, "presence:set-status", { status: "in_call", details: { callId: 1 } });
      const b = await ask(u, "presence:set-status", { status: "in_call", details: { callId: 1 } });
      assert.equal(b.ok, true);
      assert.equal(b.presence.version, a.presence.version, "no change, same version");
      const c = await ask(u, "presence:set-status", { status: "in_call", details: { callId: 2 } });
      assert.ok(c.presence.version > a.presence.version);
      const d = await ask(u, "presence:set-status", { status: "online", details: { ignored: true } });
      assert.equal(d.presence.details, null, "online keeps no details");

      for (const bad of [{ status: "offline" }, { status: "busy" }, { status: 3 }, {}, "live", null]) {
        const r = await ask(u, "presence:set-status", bad);
        assert.equal(r.ok, false, JSON.stringify(bad));
        assert.equal(r.error.code, "bad_request");
      }
      const big = await ask(u, "presence:set-status", { status: "live", details: { x: "y".repeat(3000) } });
      assert.equal(big.error.code, "bad_request");

      await barrier(gw, seen);
      assert.deepEqual(
        seen.of(id("st-u")).map((p) => [p.status, p.details]),
        [["online", null], ["in_call", { callId: 1 }], ["in_call", { callId: 2 }], ["online", null]],
      );
      u.disconnect();
      v.disconnect();
    });

    test("presence:get: unseen users are offline with version 0; limits are enforced", async () => {
      const u = await gw.connect(user(id("get-u"), "female"), opts);
      const r = await ask(u, "presence:get", { userIds: [id("never-seen")] });
      assert.equal(r.ok, true);
      assert.deepEqual(r.presences, [
        { userId: id("never-seen"), status: "offline", online: false, gender: "other",
          lastSeen: null, updatedAt: null, version: 0, details: null },
      ]);
      const many = Array.from({ length: 201 }, (_, i) => `x${i}`);
      const tooMany = await ask(u, "presence:get", { userIds: many });
      assert.deepEqual([tooMany.ok, tooMany.error.code], [false, "bad_request"]);
      const ok200 = await ask(u, "presence:get", { userIds: many.slice(0, 200) });
      assert.equal(ok200.presences.length, 200);
      for (const bad of [{ userIds: "a" }, { userIds: [1] }, { userIds: [""] }, {}, [1, 2]]) {
        const e = await ask(u, "presence:get", bad);
        assert.equal(e.error?.code, "bad_request", JSON.stringify(bad));
      }
      u.disconnect();
    });

    test("presence:list-online pages with cursors, each user once", async () => {
      const names = Array.from({ length: 7 }, (_, i) => id(`page-${i}`));
      const socks = await Promise.all(names.map((n) => gw.connect(user(n, "female"), opts)));
      const viewer = socks[0];
      const got = [];
      let cursor = null;
      let pages = 0;
      do {
        const r = await ask(viewer, "presence:list-online", { limit: 3, cursor });
        assert.equal(r.ok, true);
        assert.ok(r.users.length <= 3);
        got.push(...r.users.map((u) => u.userId));
        cursor = r.nextCursor;
        pages++;
      } while (cursor && pages < 100);
      assert.equal(new Set(got).size, got.length, "no user twice");
      for (const n of names) assert.ok(got.includes(n), `${n} listed`);
      for (const bad of [{ limit: 501 }, { limit: 0 }, { limit: "x" }, { cursor: "%%%" }, { cursor: 5 }]) {
        const e = await ask(viewer, "presence:list-online", bad);
        assert.equal(e.error?.code, "bad_request", JSON.stringify(bad));
      }
      const dflt = await ask(viewer, "presence:list-online");
      assert.equal(dflt.ok, true, "no payload means the defaults");
      socks.forEach((s) => s.disconnect());
    });

    test("several connections of one user: online once, offline when the last closes", async () => {
      const v = await gw.connect(user(id("mc-viewer"), "other"), opts);
      const seen = recorder(v);
      const a = await gw.connect(user(id("mc-u"), "male"), opts);
      const b = await gw.connect(user(id("mc-u"), "male"), opts);
      await seen.waitFor((p) => p.userId === id("mc-u") && p.online);
      a.disconnect();
      await barrier(gw, seen);
      assert.deepEqual(seen.of(id("mc-u")).map((p) => p.status), ["online"], "one tab closing is not offline");
      b.disconnect();
      await seen.waitFor((p) => p.userId === id("mc-u") && !p.online);
      await barrier(gw, seen);
      assert.deepEqual(seen.of(id("mc-u")).map((p) => p.status), ["online", "offline"]);
      v.disconnect();
    });
  });
}
