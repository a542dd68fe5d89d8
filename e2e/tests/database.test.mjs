// PostgreSQL behind the live path: users from token claims, the gender of a token without
// one, presence written within the debounces, lastSeen after the engine forgot a user,
// search with the visibility rule, and the admin's database-versus-live check.
import { test } from "node:test";
import assert from "node:assert/strict";
import { spawnSync } from "node:child_process";
import { BIN, startGateway, user, token, ask, recorder, barrier, waitUntil } from "../helpers.mjs";
import { freshDatabase, psql, storedPresence } from "../db.mjs";

const admin = token({ sub: "db-admin", roles: ["admin"] });

async function withDatabase(env = {}) {
  const url = freshDatabase();
  const gw = await startGateway({ DATABASE_URL: url, ...env });
  await waitUntil(async () => (await gw.http("/api/health")).json?.dependencies?.database === "up", 10000, "database up");
  return { url, gw };
}

test("users are kept from token claims, and a token without gender takes the stored one", async () => {
  const { url, gw } = await withDatabase({ PRESENCE_DB_ONLINE_DEBOUNCE_MS: "100" });
  try {
    psql(url, "INSERT INTO users (id, name, gender) VALUES ('db-fem', 'Fem From Db', 'female')");
    const man = await gw.connect(user("db-man", "male", { name: "Mister Man" }));
    const seen = recorder(man);
    // No gender claim: the database says female, so the man sees her.
    await gw.connect({ token: token({ sub: "db-fem" }) });
    const p = await seen.waitFor((p) => p.userId === "db-fem" && p.online);
    assert.equal(p.gender, "female");
    // Unknown to the database too: `other`, which a man does not see.
    await gw.connect({ token: token({ sub: "db-anon" }) });
    await barrier(gw, seen);
    assert.equal(seen.of("db-anon").length, 0);
    const rows = await waitUntil(() => {
      const r = psql(url, "SELECT id, name, gender FROM users WHERE id IN ('db-man', 'db-fem', 'db-anon') ORDER BY id");
      return r.length === 3 && r;
    }, 5000, "users upserted");
    assert.deepEqual(rows, [
      ["db-anon", "", ""],
      ["db-fem", "Fem From Db", "female"],
      ["db-man", "Mister Man", "male"],
    ]);
  } finally {
    await gw.stop();
  }
});

test("online reaches the database within its debounce, offline at once, newest version kept", async () => {
  const { url, gw } = await withDatabase({ PRESENCE_DB_ONLINE_DEBOUNCE_MS: "500", PRESENCE_DB_OFFLINE_DEBOUNCE_MS: "0" });
  try {
    const t0 = Date.now();
    const s = await gw.connect(user("db-u1", "female"));
    const online = await waitUntil(() => storedPresence(url, "db-u1"), 3000, "online row");
    assert.equal(online.status, "online");
    assert.ok(Date.now() - t0 < 500 + 1500, `online written ${Date.now() - t0} ms after connect`);
    const live = await ask(s, "presence:set-status", { status: "in_call", details: { with: "x" } });
    await waitUntil(() => storedPresence(url, "db-u1")?.status === "in_call", 3000, "in_call row");
    assert.equal(storedPresence(url, "db-u1").version, live.presence.version);
    const t1 = Date.now();
    s.disconnect();
    const off = await waitUntil(() => {
      const r = storedPresence(url, "db-u1");
      return r?.status === "offline" && r;
    }, 3000, "offline row");
    assert.ok(Date.now() - t1 < 1500, `offline written ${Date.now() - t1} ms after disconnect`);
    assert.ok(off.version > live.presence.version);
    assert.ok(off.lastSeenMs >= t1 - 1000 && off.lastSeenMs <= Date.now());
  } finally {
    await gw.stop();
  }
});

test("a user the engine has forgotten keeps their lastSeen and gender, from the database", async () => {
  const { url, gw } = await withDatabase({ PRESENCE_DB_ONLINE_DEBOUNCE_MS: "100", PRESENCE_SHUTDOWN_GRACE_MS: "60000" });
  let gw2;
  try {
    const gone = await gw.connect(user("db-gone", "female"));
    await gw.connect(user("db-left-on", "female"));
    gone.disconnect();
    const stored = await waitUntil(() => {
      const r = storedPresence(url, "db-gone");
      return r?.status === "offline" && r;
    }, 3000, "offline row");
    await waitUntil(() => storedPresence(url, "db-left-on")?.online, 3000, "left-on online row");
    // The only replica stops while db-left-on is connected: with the memory engine nobody is
    // online once it is gone, and db-left-on was last seen at the stop.
    const stopping = Date.now();
    await gw.stop();
    const atStop = storedPresence(url, "db-left-on");
    assert.equal(atStop.status, "offline", "stored offline by the stopping replica");
    assert.ok(atStop.lastSeenMs >= stopping - 1000 && atStop.lastSeenMs <= Date.now(), "lastSeen is the stop");
    // A replica killed without a chance to write (simulated: a row left online) is settled
    // by the next start, with its last change as lastSeen.
    psql(url, `INSERT INTO user_presence (user_id, status, online, version, updated_at)
               VALUES ('db-killed', 'online', true, 5, now() - interval '1 hour')`);
    gw2 = await startGateway({ DATABASE_URL: url });
    const man = await gw2.connect(user("db-viewer", "male"));
    const r = await ask(man, "presence:get", { userIds: ["db-gone", "db-never"] });
    assert.equal(r.ok, true);
    // db-never is `other` (no record anywhere), invisible to a man; db-gone is a woman.
    assert.deepEqual(r.presences.map((p) => p.userId), ["db-gone"]);
    const p = r.presences[0];
    assert.equal(p.online, false);
    assert.equal(p.gender, "female");
    assert.equal(Date.parse(p.lastSeen), stored.lastSeenMs);
    assert.equal(p.version, stored.version);
    const viaHttp = await gw2.http("/api/presence/db-gone", { token: token({ sub: "db-viewer", gender: "male" }) });
    assert.equal(viaHttp.status, 200);
    assert.equal(viaHttp.json.lastSeen, p.lastSeen);
    const killed = await waitUntil(() => {
      const x = storedPresence(url, "db-killed");
      return x?.status === "offline" && x;
    }, 5000, "the last run's online user settled offline");
    assert.ok(Math.abs(killed.lastSeenMs - (stopping - 3600_000)) < 60_000, "lastSeen is its last change");
  } finally {
    await gw.stop();
    await gw2?.stop();
  }
});

test("search: literal, case-insensitive, visibility in the query, bounded, with live presence", async () => {
  const { url, gw } = await withDatabase();
  try {
    psql(
      url,
      `INSERT INTO users (id, name, gender) VALUES
        ('s-f1', 'Anna 100% Real', 'female'), ('s-f2', 'anna_b', 'female'), ('s-m1', 'Anna Man', 'male'),
        ('s-o1', 'ANNA other', 'other'), ('s-f3', 'annaXb', 'female'), ('s-f4', 'Anna (.*) [x] ''q''', 'female')`,
    );
    await gw.connect(user("s-f1", "female", { name: "Anna 100% Real" }));
    const man = token({ sub: "s-viewer", gender: "male" });
    const woman = token({ sub: "s-viewer2", gender: "female" });
    // Sorted here: the order of equal-looking names is the database collation's to choose.
    const ids = (r) => r.json.users.map((u) => u.userId).sort();
    let r = await gw.http("/api/users/search?q=anna", { token: woman });
    assert.equal(r.status, 200);
    assert.deepEqual(ids(r), ["s-f1", "s-f2", "s-f3", "s-f4", "s-m1", "s-o1"]);
    r = await gw.http("/api/users/search?q=ANNA", { token: man });
    assert.deepEqual(ids(r), ["s-f1", "s-f2", "s-f3", "s-f4"], "a man sees women only");
    r = await gw.http(`/api/users/search?q=${encodeURIComponent("a_b")}`, { token: woman });
    assert.deepEqual(ids(r), ["s-f2"], "_ is literal");
    r = await gw.http(`/api/users/search?q=${encodeURIComponent("100%")}`, { token: woman });
    assert.deepEqual(ids(r), ["s-f1"], "% is literal");
    r = await gw.http(`/api/users/search?q=${encodeURIComponent("(.*) [x] 'q'")}`, { token: woman });
    assert.deepEqual(ids(r), ["s-f4"], "regex characters and quotes are literal");
    r = await gw.http(`/api/users/search?q=${encodeURIComponent("(.*)")}`, { token: woman });
    assert.deepEqual(ids(r), ["s-f4"]);
    r = await gw.http(`/api/users/search?q=${encodeURIComponent("an")}`, { token: woman });
    assert.deepEqual(ids(r), ["s-f1", "s-f2", "s-f3", "s-f4", "s-m1", "s-o1"], "two characters");
    r = await gw.http(`/api/users/search?q=${encodeURIComponent("nn")}`, { token: woman });
    assert.deepEqual(ids(r), ["s-f1", "s-f2", "s-f3", "s-f4", "s-m1", "s-o1"], "two characters inside names");
    r = await gw.http(`/api/users/search?q=${encodeURIComponent("Xb")}`, { token: woman });
    assert.deepEqual(ids(r), ["s-f3"], "two characters inside one name, case-insensitive");
    r = await gw.http(`/api/users/search?q=${encodeURIComponent("%")}`, { token: woman });
    assert.deepEqual(ids(r), ["s-f1"], "one character, literal, inside a name");
    r = await gw.http(`/api/users/search?q=${encodeURIComponent("_")}`, { token: woman });
    assert.deepEqual(ids(r), ["s-f2"], "_ alone is literal");
    r = await gw.http(`/api/users/search?q=${encodeURIComponent("q")}`, { token: man });
    assert.deepEqual(ids(r), ["s-f4"], "one character inside a name, visible users only");
    r = await gw.http("/api/users/search?q=anna&limit=2", { token: woman });
    assert.equal(r.json.users.length, 2);
    const first = (await gw.http("/api/users/search?q=real", { token: woman })).json.users[0];
    assert.equal(first.name, "Anna 100% Real");
    assert.equal(first.presence.online, true, "live presence, not the database's lagging copy");
    for (const bad of ["", "?q=", "?q=a&limit=0", "?q=a&limit=101", `?q=${"x".repeat(129)}`]) {
      const b = await gw.http(`/api/users/search${bad}`, { token: woman });
      assert.equal(b.status, 400, bad);
      assert.equal(b.json.error.code, "bad_request");
    }
    assert.equal((await gw.http("/api/users/search?q=a")).status, 401);
  } finally {
    await gw.stop();
  }
});

test("check-online-status lists the users on which the database and live presence disagree", async () => {
  const { url, gw } = await withDatabase({ PRESENCE_DB_ONLINE_DEBOUNCE_MS: "100" });
  try {
    await gw.connect(user("c-live", "female"));
    await waitUntil(() => storedPresence(url, "c-live")?.online, 3000, "online row");
    let r = await gw.http("/api/check-online-status", { token: admin });
    assert.equal(r.status, 200);
    assert.equal(r.json.count, 0);
    // The database is wrong both ways.
    psql(url, "INSERT INTO user_presence (user_id, status, online, version) VALUES ('c-ghost', 'live', true, 5)");
    psql(url, "UPDATE user_presence SET status = 'offline', online = false WHERE user_id = 'c-live'");
    r = await gw.http("/api/check-online-status", { token: admin });
    const by = Object.fromEntries(r.json.disagreements.map((d) => [d.userId, d]));
    assert.equal(r.json.count, 2);
    assert.equal(by["c-ghost"].live.status, "offline");
    assert.equal(by["c-ghost"].database.status, "live");
    assert.equal(by["c-live"].live.status, "online");
    assert.equal(by["c-live"].database.status, "offline");
    assert.equal((await gw.http("/api/check-online-status", { token: token({ sub: "x", gender: "female" }) })).status, 403);
  } finally {
    await gw.stop();
  }
});

test("Redis cluster of two replicas: each writes what it committed; a killed replica's users reach the database offline", async () => {
  const url = freshDatabase();
  const prefix = `dbk${process.pid}x${Date.now() % 1e6}`;
  const env = {
    DATABASE_URL: url,
    REDIS_URL: process.env.TEST_REDIS_URL ?? "redis://127.0.0.1:6379",
    REDIS_KEY_PREFIX: prefix,
    PRESENCE_DB_ONLINE_DEBOUNCE_MS: "100",
    PRESENCE_HEARTBEAT_TIMEOUT_MS: "1500",
    PRESENCE_SWEEP_INTERVAL_MS: "250",
  };
  const a = await startGateway(env);
  const b = await startGateway(env);
  try {
    const onA = await a.connect(user("k-on-a", "female"));
    await b.connect(user("k-on-b", "female"));
    await waitUntil(() => storedPresence(url, "k-on-a")?.online && storedPresence(url, "k-on-b")?.online, 5000, "both rows online");
    const s = await ask(onA, "presence:set-status", { status: "live" });
    await waitUntil(() => storedPresence(url, "k-on-a")?.version === s.presence.version, 5000, "live written");
    b.proc.kill("SIGKILL");
    // b's user goes silent: a's sweep takes them offline, and a writes it.
    const off = await waitUntil(() => {
      const r = storedPresence(url, "k-on-b");
      return r?.status === "offline" && r;
    }, 1500 + 2 * 250 + 3000, "the killed replica's user offline in the database");
    assert.ok(off.lastSeenMs > 0);
    const check = await a.http("/api/check-online-status", { token: admin });
    assert.equal(check.json.count, 0, JSON.stringify(check.json.disagreements));
  } finally {
    await a.stop();
    await b.stop().catch(() => {});
  }
});

test("migrate needs nothing but the database (a deployment's migration job holds no JWT key)", () => {
  const url = freshDatabase();
  // Exactly the Helm migration job's environment: production, no key, the replicas' gap.
  const env = { PATH: process.env.PATH, DATABASE_URL: url, APP_ENV: "production", STATS_SESSION_GAP_MS: "600000" };
  for (const run of [1, 2]) {
    const r = spawnSync(BIN, ["migrate"], { env, encoding: "utf8", timeout: 90_000 });
    assert.equal(r.status, 0, `run ${run}: ${r.stderr}`);
    assert.match(r.stderr, /migrations applied/);
  }
  assert.deepEqual(psql(url, "SELECT session_gap_ms FROM stats_settings"), [["600000"]], "rollups built for the configured gap");
  // Serving still refuses to start without a key in production.
  const serve = spawnSync(BIN, [], { env, encoding: "utf8", timeout: 30_000 });
  assert.equal(serve.status, 2);
  assert.match(serve.stderr, /JWT_SECRET/);
});

test("Redis engine, shutdown grace 0: the offline of every user the shutdown closed reaches the database before exit", async () => {
  const url = freshDatabase();
  const env = {
    DATABASE_URL: url,
    REDIS_URL: process.env.TEST_REDIS_URL ?? "redis://127.0.0.1:6379",
    REDIS_KEY_PREFIX: `sd${process.pid}x${Date.now() % 1e6}`,
    PRESENCE_SHUTDOWN_GRACE_MS: "0",
    PRESENCE_DB_ONLINE_DEBOUNCE_MS: "0",
    PRESENCE_DB_OFFLINE_DEBOUNCE_MS: "0",
  };
  const gw = await startGateway(env);
  try {
    await waitUntil(async () => (await gw.http("/api/health")).json?.dependencies?.database === "up", 10000, "database up");
    const ids = Array.from({ length: 300 }, (_, i) => `sd-user-${i}`);
    for (let i = 0; i < ids.length; i += 50) await Promise.all(ids.slice(i, i + 50).map((id) => gw.connect(user(id, "female"), { reconnection: false, transports: ["websocket"] })));
    // One query for all of them (a psql per user per poll would be the slow part).
    const online = () => Number(psql(url, "SELECT count(*) FROM user_presence WHERE user_id LIKE 'sd-user-%' AND online")[0][0]);
    await waitUntil(() => online() === ids.length, 15000, "stored online");
    gw.proc.kill("SIGTERM");
    const r = await gw.exited;
    assert.equal(r.code, 0);
    assert.equal(online(), 0, "stored online after the replica that closed them exited");
    assert.equal(Number(psql(url, "SELECT count(*) FROM user_presence WHERE user_id LIKE 'sd-user-%' AND NOT online")[0][0]), ids.length);
  } finally {
    await gw.stop();
  }
});

test("search re-checks visibility with the gender it returns (the live one, not the database's older copy)", async () => {
  // A long online debounce keeps the database's copy of the new gender from arriving.
  const { url, gw } = await withDatabase({ PRESENCE_DB_ONLINE_DEBOUNCE_MS: "60000" });
  try {
    psql(url, "INSERT INTO users (id, name, gender) VALUES ('srch-turned', 'Quentin Turnedmale', 'female'), ('srch-she', 'Quinn Turnedstill', 'female')");
    await gw.connect(user("srch-turned", "male"));
    await gw.connect(user("srch-she", "female"));
    const man = token({ sub: "srch-viewer", gender: "male" });
    const r = await gw.http("/api/users/search?q=Turned", { token: man });
    assert.equal(r.status, 200, r.text);
    assert.deepEqual(r.json.users.map((u) => [u.userId, u.gender]), [["srch-she", "female"]]);
  } finally {
    await gw.stop();
  }
});
