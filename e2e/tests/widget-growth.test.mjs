// Issue 25, point 2: no anonymous database growth. Every `/widget` join stores a
// `widget_opened` row; joins pay from the session's budget and, by default, from the client
// address's (WIDGET_JOIN_RATE_PER_IP / WIDGET_JOIN_BURST_PER_IP, 2/s and 60 by default, 1/s
// and 30 here), so a visitor
// script joining and leaving as fast as it can adds a bounded number of rows.
import { test, before, after } from "node:test";
import assert from "node:assert/strict";
import WebSocket from "ws";
import { spawn } from "node:child_process";
import { startGateway, token, connect, waitUntil, rawSession } from "../helpers.mjs";
import { freshDatabase, psql } from "../db.mjs";

const CYCLES = 1000;
let gw, url;

before(async () => {
  url = freshDatabase();
  gw = await startGateway({ DATABASE_URL: url, WIDGET_JOIN_RATE_PER_IP: "1", WIDGET_JOIN_BURST_PER_IP: "30" });
  // The migrations run after the replica answers: the first count must not race them.
  await waitUntil(async () => (await gw.http("/api/health")).json?.dependencies?.database === "up", 10000, "database up");
});
after(async () => gw?.stop());

const opened = () => Number(psql(url, "SELECT count(*) FROM stats_events WHERE type = 'widget_opened'")[0][0]);

const join = (visitorId) => `40/widget,${JSON.stringify({ visitorId, channel: "web" })}`;

async function answered(ws, counts, before) {
  // The join's answer, or the session's end.
  await waitUntil(() => counts.joined + counts.refused > before || ws.readyState !== WebSocket.OPEN, 5000, "join answered");
}

test(`${CYCLES} join/leave cycles on a session add a bounded number of rows`, async () => {
  const rows = opened();
  const t0 = Date.now();
  const total = { sessions: 0, joined: 0, refused: 0 };
  let cycles = 0;
  // As the amplifier test's script: 5 ms after each leave (a join sent the instant after a
  // leave can go unanswered), a new session when the library ends one (a leave of a namespace
  // whose join was refused ends it).
  while (cycles < CYCLES) {
    const { ws, counts } = await rawSession(gw, "/widget");
    total.sessions++;
    while (cycles < CYCLES && ws.readyState === WebSocket.OPEN) {
      const n = counts.joined + counts.refused;
      ws.send(join("growth-one"));
      cycles++;
      const deadline = Date.now() + 200;
      while (counts.joined + counts.refused === n && Date.now() < deadline) await new Promise((r) => setTimeout(r, 1));
      ws.send("41/widget,");
      await new Promise((r) => setTimeout(r, 5));
    }
    ws.close();
    total.joined += counts.joined;
    total.refused += counts.refused;
  }
  const added = opened() - rows;
  const seconds = (Date.now() - t0) / 1000;
  console.log(`${CYCLES} join/leave cycles in ${seconds.toFixed(1)} s over ${total.sessions} sessions: ${total.joined} joins accepted, ${total.refused} refused, ${added} rows`);
  // The address's budget (30 at once, 1 a second) is the tighter one here.
  assert.ok(added <= 30 + Math.ceil(seconds) + 1, `${added} rows`);
  // A join answered after its session was given up on still stored its row.
  assert.ok(added >= total.joined, `${added} rows for ${total.joined} joins`);
});

test(`${CYCLES} sessions from one address, each joining once, add a bounded number of rows`, async () => {
  // The address's budget was spent by the test before: wait for it to hold one join again.
  const rows = opened();
  const t0 = Date.now();
  let joined = 0;
  for (let i = 0; i < CYCLES; i++) {
    const { ws, counts } = await rawSession(gw, "/widget");
    ws.send(join(`growth-many-${i}`));
    await answered(ws, counts, 0);
    joined += counts.joined;
    ws.close();
  }
  const added = opened() - rows;
  const seconds = (Date.now() - t0) / 1000;
  console.log(`${CYCLES} sessions from one address in ${seconds.toFixed(1)} s: ${joined} joins accepted, ${added} rows`);
  assert.ok(added <= 30 + Math.ceil(seconds) + 1, `${added} rows`);
});

test("a flood of widget messages from many sockets is refused before it can starve POST /api/events", async () => {
  const dbUrl = freshDatabase();
  // No per-socket or per-address limit: the flood is as large as fifty sockets can make it.
  const own = await startGateway({ DATABASE_URL: dbUrl, RATE_LIMIT_PER_SEC: "0", WIDGET_JOIN_RATE_PER_IP: "0" });
  const widgets = await Promise.all(Array.from({ length: 50 }, (_, i) => connect(`${own.url}/widget`, { visitorId: `flood-${i}`, channel: "web" })));
  // Hold the statistics' commit lock, as a slow database would: everything queues.
  const SEQ_LOCK = 0x0070677374617473n;
  const holder = spawn("psql", [dbUrl, "-c", `SELECT pg_advisory_lock(${SEQ_LOCK})`, "-c", "SELECT pg_sleep(60)"], { stdio: "ignore" });
  try {
    await waitUntil(() => Number(psql(dbUrl, "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND granted")[0][0]) > 0, 10_000, "the lock held");
    const acks = { refused: 0, other: 0 };
    const pending = [];
    for (let round = 0; round < 240; round++) {
      for (const w of widgets) {
        pending.push(
          w.timeout(120_000).emitWithAck("widget:message", { text: "spam" }).then(
            (a) => (a.ok ? null : a.error.code === "unavailable" ? acks.refused++ : acks.other++),
            () => null,
          ),
        );
      }
      await new Promise((r) => setImmediate(r));
    }
    await waitUntil(() => acks.refused > 0, 20_000, "widget messages refused");
    const publisher = token({ sub: "flood-bot", roles: ["publisher"] });
    const posted = own.http("/api/events", {
      token: publisher,
      method: "POST",
      body: { type: "new_message", visitorId: "publisher-v", channel: "web", sender: "user", text: "hi", humanMode: false },
    });
    // Let the database go: what was queued is stored, the publisher's event among it.
    assert.equal(Number(psql(dbUrl, "SELECT count(*) FROM stats_events WHERE type = 'new_message'")[0][0]), 0, "nothing stored while locked");
    holder.kill();
    const r = await posted;
    console.log(`widget messages sent ${pending.length}, refused ${acks.refused}; POST /api/events answered ${r.status}`);
    assert.equal(r.status, 202, JSON.stringify(r.json));
    assert.equal(acks.other, 0);
    for (const w of widgets) w.disconnect();
  } finally {
    holder.kill();
    await own.stop();
  }
});
