// A woman who becomes a man (or `other`) is never shown online to a man again: he gets her
// once as offline, with a greater version, and then nothing of her — whether the new gender
// comes with a new token or from a database change while she is connected.
import { test } from "node:test";
import assert from "node:assert/strict";
import { startGateway, user, token, ask, recorder, barrier, waitUntil } from "../helpers.mjs";
import { freshDatabase, psql } from "../db.mjs";

async function sawHerGo(seen, id, before) {
  const gone = await seen.waitFor((p) => p.userId === id && !p.online, 5000, `${id} gone`);
  assert.equal(gone.status, "offline");
  assert.ok(gone.version > before.version, "a greater version");
  assert.equal(gone.details, null);
  return gone;
}

for (const [name, env] of [
  ["memory engine", {}],
  ["Redis engine, two replicas", { REDIS_URL: process.env.TEST_REDIS_URL ?? "redis://127.0.0.1:6379" }],
]) {
  test(`${name}: a new token with another gender leaves no ghost`, async () => {
    const e = env.REDIS_URL ? { ...env, REDIS_KEY_PREFIX: `gc${process.pid}x${Date.now() % 1e6}` } : env;
    const a = await startGateway(e);
    const b = env.REDIS_URL ? await startGateway(e) : a;
    try {
      const man = await a.connect(user("gc-man", "male"));
      const seen = recorder(man);
      const asWoman = await b.connect(user("gc-w", "female"));
      const online = await seen.waitFor((p) => p.userId === "gc-w" && p.online);
      // A second connection whose token says male: the newest handshake decides.
      const asMan = await b.connect(user("gc-w", "male"));
      await sawHerGo(seen, "gc-w", online);
      // Her older connection speaking again does not undo it, nor does anything else of hers.
      await ask(asWoman, "presence:set-status", { status: "live", details: { x: 1 } });
      await ask(asMan, "presence:set-status", { status: "in_call", details: { y: 2 } });
      asWoman.emit("user:heartbeat");
      await barrier(b, seen);
      assert.deepEqual(seen.of("gc-w").map((p) => p.online), [true, false], "online once, then gone, then nothing");
      const got = await ask(man, "presence:get", { userIds: ["gc-w"] });
      assert.deepEqual(got.presences, [], "not visible to him any more");
      const listed = await ask(man, "presence:list-online", { limit: 500 });
      assert.ok(!listed.users.some((p) => p.userId === "gc-w"));
      // She still sees herself, as she is now.
      const self = await ask(asMan, "presence:get", { userIds: ["gc-w"] });
      assert.deepEqual([self.presences[0].gender, self.presences[0].status], ["male", "in_call"]);
    } finally {
      await a.stop();
      if (b !== a) await b.stop();
    }
  });
}

test("a gender changed in the database applies at once to a connected user whose token carries none", async () => {
  const url = freshDatabase();
  const gw = await startGateway({ DATABASE_URL: url });
  try {
    await waitUntil(async () => (await gw.http("/api/health")).json?.dependencies?.database === "up", 10000, "database up");
    psql(url, "INSERT INTO users (id, name, gender) VALUES ('gcdb-w', 'W', 'female')");
    const man = await gw.connect(user("gcdb-man", "male"));
    const seen = recorder(man);
    const her = await gw.connect({ token: token({ sub: "gcdb-w" }) });
    const resyncs = [];
    her.on("presence:resync", (r) => resyncs.push(r));
    const online = await seen.waitFor((p) => p.userId === "gcdb-w" && p.online);
    assert.equal(online.gender, "female", "from the database");
    psql(url, "UPDATE users SET gender = 'other' WHERE id = 'gcdb-w'");
    await sawHerGo(seen, "gcdb-w", online);
    await waitUntil(() => resyncs.length > 0, 5000, "her presence:resync");
    assert.deepEqual(resyncs[0], { reason: "gender" });
    await ask(her, "presence:set-status", { status: "live", details: { z: 3 } });
    await barrier(gw, seen);
    assert.deepEqual(seen.of("gcdb-w").map((p) => p.online), [true, false]);
    assert.deepEqual((await ask(man, "presence:get", { userIds: ["gcdb-w"] })).presences, []);
    // Her own view follows her new gender too (`other` sees everyone, herself included).
    const self = await ask(her, "presence:get", { userIds: ["gcdb-w", "gcdb-man"] });
    assert.deepEqual(self.presences.map((p) => [p.userId, p.gender]), [["gcdb-w", "other"], ["gcdb-man", "male"]]);
  } finally {
    await gw.stop();
  }
});
