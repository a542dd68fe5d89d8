// Issue 25, point 1: no presence amplifier. One token that joins and leaves `/` as fast as it
// can (on one Engine.IO session, or over new sessions, on two replicas) must not make a viewer
// on another replica receive thousands of updates of its user: every join pays from the
// session's budget, and the user's flapping is damped cluster-wide (PRESENCE_FLAP_LIMIT,
// PRESENCE_FLAP_HOLD_MS), while another user's changes keep reaching that viewer within a
// second, and an honest user who reconnects a few times is never delayed.
import { test, describe, before, after } from "node:test";
import assert from "node:assert/strict";
import WebSocket from "ws";
import { startGateway, user, token, recorder, waitUntil, rawSession } from "../helpers.mjs";

const REDIS_URL = process.env.TEST_REDIS_URL ?? "redis://127.0.0.1:6379";
const FLOOD_MS = 5000;

/**
 * Join `/` (`40{token}`) and, once the join is answered, leave it (`41`), for `ms`. A join sent
 * the instant after a leave can go unanswered while the gateway still records the close (and a
 * leave of a namespace not joined ends the session), so the script waits 5 ms after each leave
 * and opens a new session if one ends, as an attacker's script tuned to the server would.
 */
async function cycleJoins(gw, auth, ms) {
  const join = `40${JSON.stringify(auth)}`;
  const until = Date.now() + ms;
  const total = { sessions: 0, sent: 0, joined: 0, refused: 0 };
  while (Date.now() < until) {
    const { ws, counts } = await rawSession(gw);
    total.sessions++;
    while (Date.now() < until && ws.readyState === WebSocket.OPEN) {
      const answered = counts.joined + counts.refused;
      ws.send(join);
      total.sent++;
      const deadline = Date.now() + 200;
      while (counts.joined + counts.refused === answered && Date.now() < deadline) {
        await new Promise((r) => setTimeout(r, 1));
      }
      ws.send("41");
      await new Promise((r) => setTimeout(r, 5));
    }
    ws.close();
    total.joined += counts.joined;
    total.refused += counts.refused;
  }
  return total;
}

/** New sessions one after another (four at a time, alternately on each replica), each joining `/` once. */
async function cycleSessions(gws, auth, ms) {
  const until = Date.now() + ms;
  let opened = 0;
  let joined = 0;
  const loop = async (k) => {
    while (Date.now() < until) {
      const gw = gws[(opened + k) % gws.length];
      opened++;
      const { ws, counts } = await rawSession(gw);
      ws.send(`40${JSON.stringify(auth)}`);
      await waitUntil(() => counts.joined + counts.refused > 0 || ws.readyState !== WebSocket.OPEN, 5000, "join answered");
      joined += counts.joined;
      ws.close();
    }
  };
  await Promise.all([0, 1, 2, 3].map(loop));
  return { opened, joined };
}

describe("no presence amplifier (two replicas on one Redis, no offline grace)", () => {
  const prefix = `e2eamp${process.pid}x${Date.now() % 100000}`;
  const env = { REDIS_URL, REDIS_KEY_PREFIX: prefix, PRESENCE_OFFLINE_GRACE_MS: "0" };
  let a, b;
  before(async () => ([a, b] = await Promise.all([startGateway(env), startGateway(env)])));
  after(async () => Promise.all([a, b].map((g) => g?.stop())));

  /** Flood with `flood()` while another user changes status every 250 ms; what the viewer saw. */
  async function measure(victimId, flood) {
    const viewer = await b.connect(user(`${victimId}-viewer`, "male"));
    const seen = recorder(viewer);
    const calm = await a.connect(user(`${victimId}-calm`, "female"));
    await seen.waitFor((p) => p.userId === `${victimId}-calm` && p.online);
    const sentAt = new Map();
    let n = 0;
    const ticker = setInterval(() => {
      n++;
      sentAt.set(n, Date.now());
      calm.emit("presence:set-status", { status: "live", details: { n } });
    }, 250);
    const arrivedAt = new Map();
    viewer.on("presence-update", (p) => {
      if (p.userId === `${victimId}-calm` && p.details?.n) arrivedAt.set(p.details.n, Date.now());
    });
    let result;
    try {
      result = await flood();
    } finally {
      clearInterval(ticker);
    }
    await waitUntil(() => arrivedAt.has(n), 5000, `the last calm change (${arrivedAt.size} of ${n} arrived)`);
    const updates = seen.of(victimId).length;
    const lags = [...sentAt].map(([k, t]) => (arrivedAt.get(k) ?? Infinity) - t);
    viewer.disconnect();
    calm.disconnect();
    return { ...result, updates, calmChanges: n, worstLagMs: Math.max(...lags) };
  }

  test("joining and leaving `/` on one session as fast as possible", async () => {
    const r = await measure("amp-one", () => cycleJoins(a, { token: token({ sub: "amp-one", gender: "female" }) }, FLOOD_MS));
    console.log(`one session, ${FLOOD_MS} ms: ${JSON.stringify(r)}`);
    assert.ok(r.updates <= 30, `the viewer received ${r.updates} updates of the flapping user`);
    assert.ok(r.joined <= r.sessions * (40 + (20 * FLOOD_MS) / 1000), `${r.joined} joins accepted on ${r.sessions} sessions`);
    assert.ok(r.refused > 0, "joins past the session's budget are refused");
    // Both limits are counted where an operator looks.
    const metrics = (await a.http("/metrics")).text;
    const value = (name) => Number(metrics.split("\n").find((l) => l.startsWith(name))?.split(" ").pop() ?? 0);
    assert.ok(value("presence_flap_holds_total") > 0, "presence_flap_holds_total counts the holds");
    assert.ok(value('gateway_handshake_failures_total{node="' + a.nodeId + '",reason="rate_limited"}') >= r.refused, "refused joins are counted");
    assert.ok(r.worstLagMs < 1000, `another user's change took ${r.worstLagMs} ms to reach the viewer`);
  });

  test("new sessions one after another, on both replicas", async () => {
    const r = await measure("amp-new", () => cycleSessions([a, b], { token: token({ sub: "amp-new", gender: "female" }) }, FLOOD_MS));
    console.log(`new sessions, ${FLOOD_MS} ms: ${JSON.stringify(r)}`);
    assert.ok(r.joined > 20, `the flood ran (${r.joined} joins)`);
    assert.ok(r.updates <= 30, `the viewer received ${r.updates} updates of the flapping user`);
    assert.ok(r.worstLagMs < 1000, `another user's change took ${r.worstLagMs} ms to reach the viewer`);
  });

  test("an honest user who reconnects a few times is never delayed", async () => {
    const viewer = await b.connect(user("amp-honest-viewer", "male"));
    const seen = recorder(viewer);
    for (let i = 0; i < 4; i++) {
      const s = await a.connect(user("amp-honest", "female"));
      await seen.waitFor((p) => p.userId === "amp-honest" && p.online && seen.of("amp-honest").length === 2 * i + 1);
      const t = Date.now();
      s.disconnect();
      await seen.waitFor((p) => p.userId === "amp-honest" && !p.online && seen.of("amp-honest").length === 2 * i + 2, 5000, `offline ${i + 1}`);
      assert.ok(Date.now() - t < 1000, `offline ${i + 1} announced ${Date.now() - t} ms after the close`);
    }
    viewer.disconnect();
  });
});
