// Issue 25, point 4: work proportional to what is paid. Each request is measured by what it
// makes the replica do: Redis round trips (a Redis of this test's own, so nothing else counts)
// and database queries (`gateway_database_queries_total`), and budgets are charged by the ids a
// request names.
import { test, before, after } from "node:test";
import assert from "node:assert/strict";
import { spawn } from "node:child_process";
import net from "node:net";
import { startGateway, user, token, ask, waitUntil } from "../helpers.mjs";
import { freshDatabase } from "../db.mjs";

const port = 22000 + (process.pid % 5000);
let redis, gw;

/** One INFO field of the test's Redis. */
function info(field) {
  return new Promise((resolve, reject) => {
    const s = net.connect(port, "127.0.0.1", () => s.write("INFO\r\n"));
    let text = "";
    s.on("data", (d) => {
      text += d;
      const m = text.match(new RegExp(`${field}:(\\d+)`));
      if (m && text.includes("\r\n\r\n# Keyspace")) {
        resolve(Number(m[1]));
        s.destroy();
      }
    });
    s.on("error", reject);
  });
}

async function metric(name) {
  const text = (await gw.http("/metrics")).text;
  return text.split("\n").filter((l) => l.startsWith(name)).reduce((n, l) => n + Number(l.split(" ").pop()), 0);
}

before(async () => {
  redis = spawn("redis-server", ["--port", String(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"], { stdio: "ignore" });
  await waitUntil(() => info("redis_version").then(() => true, () => false), 5000, "test Redis up");
  gw = await startGateway({ REDIS_URL: `redis://127.0.0.1:${port}`, DATABASE_URL: freshDatabase() });
});
after(async () => {
  await gw?.stop();
  redis?.kill();
});

test("presence:list-online reads every bucket in one round trip, not one per bucket and gender", async () => {
  const s = await gw.connect(user("work-lister", "male"));
  const w = await gw.connect(user("work-w", "female"));
  await ask(s, "presence:list-online", { limit: 50 });
  const N = 20;
  const reads = await info("total_reads_processed");
  for (let i = 0; i < N; i++) {
    const r = await ask(s, "presence:list-online", { limit: 10 });
    assert.equal(r.ok, true, JSON.stringify(r));
    assert.ok(r.users.some((u) => u.userId === "work-w"));
  }
  const perRequest = ((await info("total_reads_processed")) - reads) / N;
  console.log(`presence:list-online over 64 buckets: ${perRequest.toFixed(1)} Redis reads per request`);
  // Redis counts the reads it makes from a client: one per command when they come one round
  // trip at a time (64 buckets here: 67 reads before), a few per pipeline now (four rounds of
  // 4, 8, 16 and 36 buckets for a page this sparse; the client's writes arrive in pieces),
  // plus whatever the replica's own loops read meanwhile.
  assert.ok(perRequest <= 32, `${perRequest} Redis reads per request`);
  s.disconnect();
  w.disconnect();
});

test("unknown ids are asked of the database once, not on every presence:get or presence:subscribe", async () => {
  const s = await gw.connect(user("work-getter", "male"));
  const ids = Array.from({ length: 200 }, (_, i) => `nobody-${i}`);
  const before = await metric('gateway_database_queries_total{query="last_known"}');
  for (let i = 0; i < 3; i++) {
    const r = await ask(s, "presence:get", { userIds: ids });
    assert.equal(r.ok, true, JSON.stringify(r).slice(0, 200));
    assert.equal(r.presences.length, 0, "made-up ids of men are not shown to a man");
  }
  const afterGets = await metric('gateway_database_queries_total{query="last_known"}');
  console.log(`3 presence:get of the same 200 unknown ids: ${afterGets - before} database queries`);
  assert.equal(afterGets - before, 1);
  // Subscribing to 300 made-up ids, leaving them all, and again (12 requests each).
  const subs = await gw.connect({ ...user("work-sub", "male"), presence: "subscriptions" });
  const many = Array.from({ length: 300 }, (_, i) => `ghost-${i}`);
  for (let i = 0; i < 2; i++) {
    const r = await ask(subs, "presence:subscribe", { userIds: many });
    assert.equal(r.ok, true, JSON.stringify(r).slice(0, 200));
    assert.equal((await ask(subs, "presence:unsubscribe", { all: true })).ok, true);
  }
  const afterSubs = await metric('gateway_database_queries_total{query="last_known"}');
  console.log(`2 presence:subscribe of the same 300 unknown ids: ${afterSubs - afterGets} database queries`);
  assert.equal(afterSubs - afterGets, 1);
  subs.disconnect();
  s.disconnect();
});

test("a request pays for the ids it names: 200-id presence:get floods are cut at the budget", async () => {
  const s = await gw.connect(user("work-flood", "male"));
  const ids = Array.from({ length: 200 }, (_, i) => `flood-${i}`);
  const acks = [];
  for (let i = 0; i < 10; i++) acks.push(await ask(s, "presence:get", { userIds: ids }));
  const served = acks.filter((a) => a.ok).length;
  console.log(`10 presence:get of 200 ids on a fresh budget (40): ${served} served`);
  // 8 requests' worth each: five, not forty, from a full budget of 40.
  assert.ok(served >= 4 && served <= 6, `${served} served`);
  assert.equal(acks.at(-1).error?.code, "rate_limited");
  s.disconnect();
});

test("a search the index cannot serve reads names by prefix only", async () => {
  const t = token({ sub: "work-searcher", gender: "male" });
  const before = await metric('gateway_database_queries_total{query="search"}');
  const r = await gw.http("/api/users/search?q=---", { token: t });
  assert.equal(r.status, 200);
  assert.equal((await metric('gateway_database_queries_total{query="search"}')) - before, 1, "one bounded query");
});
