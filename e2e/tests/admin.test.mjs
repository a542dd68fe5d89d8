// The admin API (section 10) on three replicas sharing Redis, and on one memory-engine
// replica: every live replica with its sockets, one user's connections across the cluster,
// and a disconnect that closes them all with a namespace disconnect (socket.io-client does not
// come back), takes the user offline once, and is logged with the caller's identity.
import { test } from "node:test";
import assert from "node:assert/strict";
import { startGateway, token, user, recorder, barrier, waitUntil, FAST, connect } from "../helpers.mjs";

const REDIS_URL = process.env.TEST_REDIS_URL ?? "redis://127.0.0.1:6379";
const admin = token({ sub: "ops-anna", roles: ["admin"] });
const dash = token({ sub: "dash", roles: ["dashboard"] });
const ADMIN_TOKEN = "static-admin-token-for-e2e-0123456789";

async function cluster(n = 3) {
  const prefix = `e2e-admin-${process.pid}-${Date.now()}`;
  const env = { REDIS_URL, REDIS_KEY_PREFIX: prefix, ADMIN_TOKEN, ...FAST };
  return Promise.all(Array.from({ length: n }, () => startGateway(env)));
}

const closedBy = (s) => new Promise((resolve) => s.once("disconnect", resolve));

test("nodes: every live replica with its sockets per namespace, and a stopped one leaves", async () => {
  const [a, b, c] = await cluster();
  try {
    await a.connect(user("n-1", "female"));
    await a.connect(user("n-2", "male"));
    await b.connect(user("n-3", "other"), { transports: ["polling"] });
    await connect(c.url + "/dashboard", { token: dash });
    const nodes = await waitUntil(async () => {
      const r = await c.http("/api/admin/nodes", { token: admin });
      const byNode = Object.fromEntries((r.json?.nodes ?? []).map((n) => [n.node, n]));
      const ok = byNode[a.nodeId]?.sockets["/"] === 2 && byNode[b.nodeId]?.sockets["/"] === 1 &&
        byNode[c.nodeId]?.sockets["/dashboard"] === 1 && Object.keys(byNode).length === 3;
      return ok && byNode;
    }, 8000, "three replicas with their sockets");
    for (const n of Object.values(nodes)) {
      assert.ok(Date.parse(n.startedAt) <= Date.parse(n.lastSeenAt), JSON.stringify(n));
      assert.ok(Date.now() - Date.parse(n.lastSeenAt) < 5000, "recently seen");
      assert.deepEqual(Object.keys(n.sockets).sort(), ["/", "/dashboard", "/widget"]);
    }
    // A replica that stops withdraws itself at once.
    await b.stop();
    await waitUntil(async () => {
      const r = await a.http("/api/admin/nodes", { token: admin });
      return r.json.nodes.length === 2 && !r.json.nodes.some((n) => n.node === b.nodeId);
    }, 5000, "the stopped replica gone");
  } finally {
    await Promise.all([a.stop(), b.stop(), c.stop()]);
  }
});

test("a user's connections on every replica; disconnect closes them all, offline once, audited", async () => {
  const [a, b, c] = await cluster();
  try {
    const viewer = await c.connect(user("adm-viewer", "female"));
    const seen = recorder(viewer);
    const s1 = await a.connect(user("adm-target", "female"), { transports: ["websocket"] });
    const s2 = await b.connect(user("adm-target", "female"), { transports: ["polling"] });
    const r = await waitUntil(async () => {
      const r = await c.http("/api/admin/users/adm-target", { token: admin });
      return r.json?.connections?.length === 2 && r;
    }, 8000, "both connections listed");
    assert.equal(r.status, 200);
    assert.equal(r.json.presence.userId, "adm-target");
    assert.equal(r.json.presence.online, true);
    const byNode = Object.fromEntries(r.json.connections.map((x) => [x.node, x]));
    assert.equal(byNode[a.nodeId].transport, "websocket");
    assert.equal(byNode[b.nodeId].transport, "polling");
    // Socket ids are Engine.IO session ids, credentials: an opaque id is shown instead.
    for (const [gw, s] of [[a, s1], [b, s2]]) {
      const id = byNode[gw.nodeId].id;
      assert.ok(!id.includes(s.id) && !id.includes(s.io.engine.id), `${id} shows the session id`);
      assert.match(id, new RegExp(`^${gw.nodeId}:[0-9a-f]{16}$`));
    }
    assert.notEqual(byNode[a.nodeId].id, byNode[b.nodeId].id);
    for (const gw of [a, b]) {
      const st = await gw.http("/api/debug/socket-status", { token: admin });
      const mine = st.json.sockets.find((x) => x.userId === "adm-target");
      assert.equal(mine.id, byNode[gw.nodeId].id, "the debug view names it the same way");
    }
    for (const x of r.json.connections) {
      assert.equal(x.namespace, "/");
      assert.ok(Date.parse(x.connectedAt) <= Date.parse(x.lastHeardAt) + 1, JSON.stringify(x));
    }

    const reasons = [closedBy(s1), closedBy(s2)];
    const d = await c.http("/api/admin/users/adm-target/disconnect", { token: admin, method: "POST" });
    assert.equal(d.status, 202);
    assert.deepEqual(d.json, { connections: 2 });
    // A namespace disconnect: socket.io-client reports it so, and does not reconnect.
    assert.deepEqual(await Promise.all(reasons), ["io server disconnect", "io server disconnect"]);
    await seen.waitFor((u) => u.userId === "adm-target" && !u.online, 5000, "offline announced");
    const after = await c.http("/api/admin/users/adm-target", { token: admin });
    assert.equal(after.json.presence.online, false);
    assert.deepEqual(after.json.connections, []);
    // Offline once, announced once, whatever each replica did.
    await barrier(a, seen);
    assert.equal(seen.of("adm-target").filter((u) => !u.online).length, 1);
    // The action is in the asking replica's log with the caller, and in each holder's.
    assert.match(c.output(), /admin disconnect requested.*caller="jwt:ops-anna".*user="adm-target".*connections=2/);
    for (const gw of [a, b]) assert.match(gw.output(), /admin disconnected a user.*caller="jwt:ops-anna".*user="adm-target".*connections=1/);
    for (const gw of [a, b, c]) assert.doesNotMatch(gw.output(), new RegExp(`${s1.id}|${s2.id}`), "no session id in any log");
  } finally {
    await Promise.all([a.stop(), b.stop(), c.stop()]);
  }
});

test("the admin API: admin JWT or ADMIN_TOKEN only; 404 for a user never seen; bad ids refused", async () => {
  const [a] = await cluster(1);
  try {
    for (const [method, path] of [["GET", "/api/admin/nodes"], ["GET", "/api/admin/users/x"], ["POST", "/api/admin/users/x/disconnect"]]) {
      assert.equal((await a.http(path, { method })).status, 401, path);
      const r = await a.http(path, { method, token: dash });
      assert.equal(r.status, 403, path);
      assert.equal(r.json.error.code, "forbidden");
      assert.equal((await a.http(path, { method, token: token({ sub: "u", roles: ["user"] }) })).status, 403, path);
    }
    assert.equal((await a.http("/api/admin/nodes", { token: ADMIN_TOKEN })).status, 200);
    const never = await a.http("/api/admin/users/never-seen-anywhere", { token: ADMIN_TOKEN });
    assert.equal(never.status, 404);
    assert.equal(never.json.error.code, "not_found");
    const long = await a.http(`/api/admin/users/${"x".repeat(129)}`, { token: ADMIN_TOKEN });
    assert.equal(long.status, 400);
    const none = await a.http("/api/admin/users/nobody-here/disconnect", { token: ADMIN_TOKEN, method: "POST" });
    assert.deepEqual([none.status, none.json], [202, { connections: 0 }]);
  } finally {
    await a.stop();
  }
});

test("memory engine: the one replica is the cluster; disconnect works the same", async () => {
  const gw = await startGateway({ ADMIN_TOKEN });
  try {
    const s = await gw.connect(user("mem-target", "male"));
    const nodes = await waitUntil(async () => {
      const r = await gw.http("/api/admin/nodes", { token: ADMIN_TOKEN });
      return r.json.nodes.length === 1 && r.json.nodes[0].sockets["/"] === 1 && r.json.nodes;
    }, 5000, "the replica's report");
    assert.equal(nodes[0].node, gw.nodeId);
    const closed = closedBy(s);
    const d = await gw.http("/api/admin/users/mem-target/disconnect", { token: ADMIN_TOKEN, method: "POST" });
    assert.deepEqual([d.status, d.json], [202, { connections: 1 }]);
    assert.equal(await closed, "io server disconnect");
    const u = await gw.http("/api/admin/users/mem-target", { token: ADMIN_TOKEN });
    assert.equal(u.json.presence.online, false);
    assert.match(gw.output(), /admin disconnect requested.*caller="ADMIN_TOKEN".*user="mem-target".*connections=1/);
  } finally {
    await gw.stop();
  }
});

test("ADMIN_TOKEN is its own caller: a JWT with sub admin shares neither its budget nor its audit name; logged values cannot forge fields", async () => {
  const [a] = await cluster(1);
  const limited = await startGateway({ ADMIN_TOKEN, HTTP_RATE_LIMIT_PER_SEC: "1", HTTP_RATE_LIMIT_BURST: "2" });
  try {
    const jwtAdmin = token({ sub: "admin", roles: ["admin"] });
    const codes = [];
    for (let i = 0; i < 3; i++) codes.push((await limited.http("/api/admin/nodes", { token: jwtAdmin })).status);
    assert.deepEqual(codes, [200, 200, 429], "the JWT's budget is spent");
    assert.equal((await limited.http("/api/admin/nodes", { token: ADMIN_TOKEN })).status, 200, "the static token has its own");

    // A subject written to forge log fields is logged quoted, as one value.
    const forger = "x connections=0 node=evil";
    const s = await a.connect(user(forger, "female"));
    await a.http(`/api/admin/users/${encodeURIComponent(forger)}/disconnect`, { token: ADMIN_TOKEN, method: "POST" });
    await waitUntil(() => /admin disconnected a user/.test(a.output()), 5000, "the audit line");
    const line = a.output().split("\n").find((l) => l.includes("admin disconnect requested"));
    assert.match(line, /caller="ADMIN_TOKEN" user="x connections=0 node=evil" connections=1/);
    s.disconnect();
  } finally {
    await Promise.all([a.stop(), limited.stop()]);
  }
});

test("a socket whose token expires is told so and disconnected then, on / and on /dashboard; the admin disconnect reaches /dashboard too", async () => {
  const [a] = await cluster(1);
  try {
    // Tokens are accepted up to 30 s past their exp (clock skew); these stop being accepted,
    // and their sockets close, in 3 s.
    const exp = Math.floor(Date.now() / 1000) - 27;
    const end = (exp + 30) * 1000;
    const closed = (s) => new Promise((resolve) => s.once("disconnect", (why) => resolve([why, Date.now()])));
    const told = (s) => new Promise((resolve) => s.once("auth:expired", resolve));
    const u = await a.connect(user("exp-u", "female", { exp }));
    const d = await connect(`${a.url}/dashboard`, { token: token({ sub: "exp-d", roles: ["dashboard"], exp }) });
    const lasting = await a.connect(user("exp-lasting", "female"));
    const [uTold, dTold, uClosed, dClosed] = [told(u), told(d), closed(u), closed(d)];
    assert.deepEqual(await uTold, { code: "unauthorized", message: "token expired; connect again with a new token" });
    await dTold;
    for (const [why, at] of [await uClosed, await dClosed]) {
      assert.equal(why, "io server disconnect", "socket.io-client does not reconnect from it");
      assert.ok(at >= end && at < end + 3000, `closed ${at - end} ms after the expiry`);
    }
    assert.equal(lasting.connected, true, "a socket whose token has not expired stays");

    const dash = await connect(`${a.url}/dashboard`, { token: token({ sub: "ops-bob", roles: ["dashboard"] }) });
    const dashClosed = closed(dash);
    const r = await a.http("/api/admin/users/ops-bob/disconnect", { token: ADMIN_TOKEN, method: "POST" });
    assert.deepEqual([r.status, r.json], [202, { connections: 1 }]);
    assert.equal((await dashClosed)[0], "io server disconnect");
    lasting.disconnect();
  } finally {
    await a.stop();
  }
});
