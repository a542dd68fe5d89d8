// The delivery matrix: every shape of client a browser or an app produces must hear every
// presence change it may see, and nothing it may not, for as long as it is connected.
//
// Why shapes: the fan-out writes some frames straight onto a client's connection and leaves
// the others to the library (README, "Large audiences"), so which connection a socket's
// frames go to depends on how its Engine.IO session began and what happened on it since:
// websocket only, long-polling only, polling upgraded to WebSocket, several namespaces sharing
// one session (socket.io-client gives io(url) and io(url + "/dashboard") one Manager), `/`
// joined before, after, or long after the upgrade, `/` left and joined again (a token refresh,
// also with another gender), and a Manager reconnecting after its transport closed. A shape
// that picks the wrong connection leaves a viewer connected and deaf, which no other check
// notices: the handshake and every ack still work.
//
// One scenario per engine (one memory replica; three Redis replicas, the viewers on two, the
// changers on the third): every viewer gets ready concurrently, then three users change (two
// women, whom every viewer may see, and a man, whom male viewers must not), then each viewer
// is judged on what it heard. One test per cell (shape x mode) reports that cell's verdict, and
// a table shows the whole matrix at a glance.
import { describe, test, before, after } from "node:test";
import assert from "node:assert/strict";
import { Manager } from "socket.io-client";
import { startGateway, token, user, ask, waitUntil, withDeadline } from "../helpers.mjs";

const REDIS_URL = process.env.TEST_REDIS_URL ?? "redis://127.0.0.1:6379";
const ENV = {
  RATE_LIMIT_PER_SEC: "0",
  // Viewers say nothing while they wait for their shape (shape 6 waits over 11 s); being
  // swept for it is the lifecycle tests' subject, and would muddle this one's.
  PRESENCE_HEARTBEAT_TIMEOUT_MS: "120000",
};
const ADMIN = token({ sub: "dm-admin", roles: ["admin"] });
const RUN = `${process.pid.toString(36)}${Date.now().toString(36).slice(-4)}`;
// How long a healthy viewer may take to hear the last change once it is committed, on a
// machine running several test files at once. A deaf viewer costs this once per engine.
const HEARD_WITHIN_MS = 10_000;

const MODES = { broadcast: {}, subscriptions: { presence: "subscriptions" }, batch: { batch: true } };
const ALL_MODES = Object.keys(MODES);
const BROADCAST = ["broadcast"];
const AS_IS = [["male", "male"], ["female", "female"]];
const SWITCHED = [["female", "male"], ["male", "female"]];

/**
 * The shapes. `ready(v)` brings viewer `v` to the state the shape names; only then do the
 * changes start, so every change after it must arrive. `route` is how the server must send
 * to the `/` socket: `direct` onto its WebSocket when its session was created on one or `/`
 * joined after the upgrade, `library` when `/` joined while the session was on long-polling,
 * `either` when the shape races the upgrade. `genders` are the viewers' genders at
 * the start and after `ready` (each cell has a male and a female viewer: the man must not hear
 * the male changer, the woman must).
 */
const SHAPES = [
  {
    id: "1", route: "direct", name: "websocket only", transports: ["websocket"], modes: ALL_MODES,
    ready: (v) => v.joinRoot(),
  },
  {
    id: "2", route: "library", name: "polling only", transports: ["polling"], modes: BROADCAST,
    ready: (v) => v.joinRoot(),
  },
  {
    id: "3", route: "library", name: "polling then upgrade, / at once", modes: ALL_MODES,
    async ready(v) {
      await v.joinRoot();
      await v.upgraded();
    },
  },
  {
    id: "4", route: "library", name: "2nd namespace, / before the upgrade", modes: BROADCAST,
    async ready(v) {
      await v.joinRoot();
      await v.joinSecond();
      await v.upgraded();
    },
  },
  {
    id: "4b", route: "either", name: "2nd namespace and / created together", modes: BROADCAST,
    async ready(v) {
      // A page that calls io(url + "/dashboard") and io(url) as it loads: both CONNECTs leave
      // on polling, and the upgrade may complete before the server has handled `/`'s, so `/`
      // may be joined on either transport (the failure message says which).
      await Promise.all([v.joinSecond(), v.joinRoot()]);
      await v.upgraded();
    },
  },
  {
    id: "5", route: "direct", name: "2nd namespace, / after the upgrade", modes: ALL_MODES,
    async ready(v) {
      await v.joinSecond();
      await v.upgraded();
      await v.joinRoot();
    },
  },
  {
    id: "6", route: "direct", name: "2nd namespace, / 11 s after the upgrade", modes: BROADCAST,
    async ready(v) {
      await v.joinSecond();
      await v.upgraded();
      // Longer than hyper's 10 s idle and header timeouts on the session's first (polling)
      // connection: whatever belonged to that connection is gone by the time `/` joins. The
      // one fixed wait in this file; it is the shape itself, not a guess at a delay.
      await new Promise((r) => setTimeout(r, 11_000));
      await v.joinRoot();
    },
  },
  {
    id: "7", route: "direct", name: "upgraded session, / left and joined again", modes: ALL_MODES,
    async ready(v) {
      await v.joinBoth();
      await v.upgraded();
      await v.rejoin();
    },
  },
  {
    id: "8", route: "direct", name: "websocket only, / left and joined again", transports: ["websocket"], modes: BROADCAST,
    async ready(v) {
      await v.joinBoth();
      await v.rejoin();
    },
  },
  {
    id: "9u", route: "direct", name: "upgraded session, / rejoined with the other gender", modes: BROADCAST, genders: SWITCHED,
    async ready(v) {
      await v.joinBoth();
      await v.upgraded();
      await v.rejoin();
    },
  },
  {
    id: "9w", route: "direct", name: "websocket only, / rejoined with the other gender", transports: ["websocket"], modes: BROADCAST, genders: SWITCHED,
    async ready(v) {
      await v.joinBoth();
      await v.rejoin();
    },
  },
  {
    id: "10", route: "either", name: "Manager reconnects after its transport closed", modes: ALL_MODES,
    async ready(v) {
      await v.joinBoth();
      await v.upgraded();
      // socket.io-client then joins both namespaces again at once on a new polling session,
      // as shape 4b does.
      await v.transportClosed();
      await v.upgraded();
    },
  },
];

const CELLS = SHAPES.flatMap((shape) => shape.modes.map((mode) => ({ shape, mode, key: `${shape.id}/${mode}` })));
const describeCell = (cell) => `shape ${cell.shape.id} (${cell.shape.name}), ${cell.mode}`;

/** Each changer's announcements, in order: every step below is one change (section 3). */
const STEPS = ["online", "live", "in_call", "online", "offline", "online", "live"];
const CHANGERS = [
  // w1 changes once more after everyone else is done: a viewer that has that change has
  // everything committed before it (changes are fanned out in commit order), so "nothing of
  // the man" is checked after a barrier, not after a wait.
  { key: "w1", gender: "female", expected: [...STEPS, "in_call"] },
  { key: "w2", gender: "female", expected: STEPS },
  { key: "m1", gender: "male", expected: STEPS },
].map((c) => ({ ...c, id: `dm-${RUN}-${c.key}` }));
const CHANGER_IDS = CHANGERS.map((c) => c.id);

/** The visibility rule under VISIBILITY_POLICY=gender: a man sees women, anyone else sees all. */
const sees = (viewerGender, userGender) => viewerGender !== "male" || userGender === "female";

/** Resolves when `s` (created, or `connect()`ed) is connected; rejects with its refusal. */
function joined(s) {
  return withDeadline(
    new Promise((resolve, reject) => {
      s.once("connect", resolve);
      s.once("connect_error", (e) => reject(new Error(`${s.nsp} refused: ${e.message}`)));
    }),
    10_000,
    `${s.nsp} did not connect`,
  );
}

/**
 * One viewer as a browser tab or an app holds it: its own Manager (one Engine.IO session,
 * reconnecting by itself), maybe a second namespace on it, and a `/` socket that records every
 * presence it hears, by either event.
 */
class Viewer {
  constructor(gw, cell, [startGender, gender]) {
    this.gw = gw;
    this.cell = cell;
    this.gender = gender;
    this.startGender = startGender;
    this.userId = `dm-${RUN}-${cell.key.replace("/", "-")}-${startGender[0]}${gender[0]}`;
    this.heard = [];
    this.manager = new Manager(gw.url, cell.shape.transports ? { transports: cell.shape.transports } : {});
    this.sockets = [];
  }

  get label() {
    const who = this.startGender === this.gender ? this.gender : `${this.startGender}→${this.gender}`;
    return `${who} viewer ${this.userId}`;
  }

  auth(gender) {
    return { token: token({ sub: this.userId, gender }), ...MODES[this.cell.mode] };
  }

  joinRoot() {
    const s = (this.root = this.manager.socket("/", { auth: this.auth(this.startGender) }));
    this.sockets.push(s);
    s.on("presence-update", (p) => this.heard.push({ event: "presence-update", p }));
    s.on("presence-batch", (b) => b.updates.forEach((p) => this.heard.push({ event: "presence-batch", p })));
    s.on("connect", () => (this.joinedOn = this.manager.engine.transport.name));
    // Subscriptions live with the server's socket: again after every (re)join, as the README's
    // on-screen example does. Registered before `joined` so `ready` finds the latest one.
    if (this.cell.mode === "subscriptions") {
      s.on("connect", () => {
        this.subscribed = ask(s, "presence:subscribe", { userIds: CHANGER_IDS });
        // A subscription the socket left before its ack is superseded, not a failure.
        this.subscribed.catch(() => {});
      });
    }
    return joined(s);
  }

  joinSecond() {
    const dash = { token: token({ sub: `${this.userId}-dash`, roles: ["dashboard"] }) };
    const s = this.manager.socket("/dashboard", { auth: dash });
    this.sockets.push(s);
    return joined(s);
  }

  /** `/`, then a second namespace on the same session: the order of shape 4. */
  async joinBoth() {
    await this.joinRoot();
    await this.joinSecond();
  }

  upgraded() {
    return waitUntil(() => this.manager.engine?.transport?.name === "websocket", 10_000, "the upgrade to websocket");
  }

  /** The server's view of this user's `/` connections (on every replica). */
  async connections() {
    const r = await this.gw.http(`/api/admin/users/${this.userId}`, { token: ADMIN });
    return r.json?.connections ?? [];
  }

  serverHolds(n) {
    return waitUntil(async () => (await this.connections()).length === n, 5000, `the server to hold ${n} / connection(s) of ${this.userId}`);
  }

  /** A token refresh: leave `/`, then join again on the same Socket with a new token. */
  async rejoin() {
    // socketioxide can lose a DISCONNECT that arrives before its connect handler ran, and
    // ignores a CONNECT for a socket whose close it is still handling (fanout.test.mjs): the
    // client waits out both, so that this test is about delivery, not that race.
    await this.serverHolds(1);
    this.root.disconnect();
    await this.serverHolds(0);
    this.root.auth = this.auth(this.gender);
    const done = joined(this.root);
    this.root.connect();
    await done;
  }

  /** Close the Engine.IO session under the sockets; socket.io-client reconnects by itself. */
  async transportClosed() {
    const before = this.manager.engine.id;
    this.manager.engine.close();
    await waitUntil(
      () => this.root.connected && this.manager.engine?.id && this.manager.engine.id !== before,
      15_000,
      "the Manager to reconnect after its transport closed",
    );
  }

  async ready() {
    await this.cell.shape.ready(this);
    if (this.cell.mode === "subscriptions") {
      const r = await this.subscribed;
      if (!r?.ok) throw new Error(`presence:subscribe refused: ${JSON.stringify(r)}`);
    }
  }

  heardOf(userId) {
    return this.heard.filter((h) => h.p.userId === userId).map((h) => h.p);
  }

  /** Has it heard the last change of everyone it may see (and, unbatched, every change)? */
  caughtUp(truth) {
    return CHANGERS.filter((c) => sees(this.gender, c.gender)).every((c) => {
      const heard = this.heardOf(c.id);
      const enough = this.cell.mode === "batch" || heard.length >= c.expected.length;
      return enough && heard.at(-1)?.version >= truth.get(c.id).version;
    });
  }

  close() {
    this.manager.reconnection(false);
    for (const s of this.sockets) s.disconnect();
    this.manager._close?.();
  }
}

const isSubsequence = (xs, of) => {
  let i = 0;
  for (const x of of) if (i < xs.length && xs[i] === x) i++;
  return i === xs.length;
};

/** What a user of this viewer would notice is wrong; empty when nothing is. */
async function problemsOf(v) {
  const problems = [];
  const batch = v.cell.mode === "batch";
  const wrongEvent = batch ? "presence-update" : "presence-batch";
  const wrong = v.heard.filter((h) => h.event === wrongEvent).length;
  if (wrong) problems.push(`${wrong} presence(s) arrived as ${wrongEvent}`);
  // What the viewer's own socket answers is what its screen should show.
  let answer;
  try {
    const r = await ask(v.root, "presence:get", { userIds: CHANGER_IDS });
    answer = new Map(r.presences.map((p) => [p.userId, p]));
  } catch (e) {
    problems.push(`presence:get over its socket failed: ${e.message}`);
  }
  for (const c of CHANGERS) {
    const heard = v.heardOf(c.id);
    if (!sees(v.gender, c.gender)) {
      if (heard.length) problems.push(`heard ${heard.length} update(s) of ${c.key} (${c.gender}), whom it may not see: [${heard.map((p) => p.status)}]`);
      if (answer?.has(c.id)) problems.push(`presence:get over its socket answers ${c.key} (${c.gender}), whom it may not see`);
      continue;
    }
    if (heard.length === 0) {
      problems.push(`deaf: none of the ${c.expected.length} changes of ${c.key} arrived`);
      continue;
    }
    const versions = heard.map((p) => p.version);
    if (versions.some((x, i) => i > 0 && x <= versions[i - 1])) problems.push(`versions of ${c.key} do not strictly increase: [${versions}]`);
    const statuses = heard.map((p) => p.status);
    if (batch ? !isSubsequence(statuses, c.expected) : statuses.join() !== c.expected.join()) {
      problems.push(`${c.key}: heard [${statuses}], expected ${batch ? "a subsequence of " : ""}[${c.expected}]`);
    }
    const last = heard.at(-1);
    const now = answer?.get(c.id);
    if (answer && (last.version !== now?.version || last.status !== now?.status)) {
      problems.push(`shows ${c.key} as ${last.status} v${last.version}; presence:get answers ${now ? `${now.status} v${now.version}` : "nothing"}`);
    }
  }
  if (problems.length) {
    // Where each side thinks the socket is: the first thing to look at for a deaf one.
    const server = await v.connections().catch(() => []);
    const seenBy = server.map((c) => `${c.node} ${c.transport}`).join(", ") || "no / connection";
    problems.push(`(socket ${v.root.id}: / joined over ${v.joinedOn}; client engine now on ${v.manager.engine?.transport?.name}; server: ${seenBy})`);
  }
  return problems;
}

/** One gateway, or three on Redis: `viewers` hold the viewers (in turn), `changers` the rest. */
async function cluster(engine) {
  if (engine === "memory") {
    const gw = await startGateway(ENV);
    return { viewers: [gw], changers: gw, all: [gw] };
  }
  const env = { ...ENV, REDIS_URL, REDIS_KEY_PREFIX: `e2e-dm-${RUN}` };
  const all = await Promise.all([startGateway(env), startGateway(env), startGateway(env)]);
  return { viewers: all.slice(0, 2), changers: all[2], all };
}

async function setStatus(s, status, details) {
  const r = await ask(s, "presence:set-status", details ? { status, details } : { status });
  assert.equal(r.ok, true, `set-status ${status}: ${JSON.stringify(r)}`);
}

/** Until the probe (who may see everyone) reads `status` for `id`. */
const statusIs = (probe, id, status) =>
  waitUntil(async () => (await ask(probe, "presence:get", { userIds: [id] })).presences[0]?.status === status, 5000, `${id} ${status}`);

/** One changer's STEPS; returns its connection, still up. */
async function change(gw, probe, c) {
  const auth = user(c.id, c.gender);
  let s = await gw.connect(auth, { transports: ["websocket"] });
  await setStatus(s, "live", { stream: c.key });
  await setStatus(s, "in_call", { call: c.key });
  await setStatus(s, "online");
  s.disconnect();
  // Back only once the offline is committed: a connection that came first would keep the
  // user online, and the offline would never be announced.
  await statusIs(probe, c.id, "offline");
  s = await gw.connect(auth, { transports: ["websocket"] });
  await setStatus(s, "live", { stream: `${c.key}-again` });
  return s;
}

/**
 * The way each viewer's frames went, from the server's own account (the shape's `route`): the
 * fast path really runs against this library where it should, and only there. And no socket fell back because the server could not read the
 * library's bytes (`no_connect`, `unreadable`): what an upgrade of socketioxide that changes
 * them would show first.
 */
async function checkRoutes(gws, live, problems) {
  const routes = new Map();
  for (const gw of gws.all) {
    const r = await gw.http("/api/debug/socket-status", { token: ADMIN });
    for (const s of r.json?.sockets ?? []) routes.set(s.userId, s.delivery);
    const metrics = await (await fetch(`${gw.url}/metrics`)).text();
    for (const reason of ["no_connect", "unreadable"]) {
      const line = metrics.split("\n").find((l) => l.startsWith("presence_direct_fallbacks_total") && l.includes(`reason="${reason}"`));
      assert.ok(line?.endsWith(" 0"), `${gw.nodeId}: ${line ?? `no presence_direct_fallbacks_total{reason="${reason}"}`}`);
    }
  }
  for (const v of live) {
    const want = v.cell.shape.route;
    const got = routes.get(v.userId);
    if (want !== "either" && got !== want) problems.get(v).push(`its frames go by ${got ?? "nothing (no socket)"}, not ${want}`);
  }
}

/** Verdicts per cell: `{ ok, problems }`, each problem prefixed with its viewer. */
async function runMatrix(engine, gws) {
  const viewers = [];
  for (const cell of CELLS) {
    // In turn: on Redis each cell has a viewer on each of the two viewers' replicas.
    for (const genders of cell.shape.genders ?? AS_IS) {
      viewers.push(new Viewer(gws.viewers[viewers.length % gws.viewers.length], cell, genders));
    }
  }
  const probe = await gws.changers.connect(user(`dm-${RUN}-probe`, "other"), { transports: ["websocket"] });
  const changers = [];
  try {
    const notReady = new Map();
    await Promise.all(viewers.map((v) => v.ready().catch((e) => notReady.set(v, `not ready: ${e.message}`))));
    changers.push(...(await Promise.all(CHANGERS.map((c) => change(gws.changers, probe, c)))));
    await setStatus(changers[0], "in_call", { last: true });
    const r = await ask(probe, "presence:get", { userIds: CHANGER_IDS });
    const truth = new Map(r.presences.map((p) => [p.userId, p]));
    assert.deepEqual(CHANGERS.map((c) => truth.get(c.id)?.status), ["in_call", "live", "live"], "the changers' final states");
    const live = viewers.filter((v) => !notReady.has(v));
    // A deaf viewer is judged when its deadline passes; the others as soon as they caught up.
    await Promise.all(live.map((v) => waitUntil(() => v.caughtUp(truth), HEARD_WITHIN_MS).catch(() => {})));
    const problems = new Map(await Promise.all(viewers.map(async (v) => [v, notReady.has(v) ? [notReady.get(v)] : await problemsOf(v)])));
    await checkRoutes(gws, live, problems);
    const results = new Map(CELLS.map((cell) => {
      const mine = viewers.filter((v) => v.cell === cell);
      const all = mine.flatMap((v) => problems.get(v).map((p) => `${v.label}: ${p}`));
      return [cell.key, { ok: all.length === 0, problems: all }];
    }));
    console.log(table(engine, results));
    return results;
  } finally {
    viewers.forEach((v) => v.close());
    changers.forEach((s) => s.disconnect());
    probe.disconnect();
  }
}

function table(engine, results) {
  const head = ["shape", ...ALL_MODES];
  const rows = SHAPES.map((s) => [
    `${s.id.padEnd(3)} ${s.name}`,
    ...ALL_MODES.map((m) => {
      const r = results.get(`${s.id}/${m}`);
      return r === undefined ? "-" : r.ok ? "pass" : "FAIL";
    }),
  ]);
  const widths = head.map((_, i) => Math.max(...[head, ...rows].map((r) => r[i].length)));
  const line = (r) => r.map((x, i) => x.padEnd(widths[i])).join("  ");
  return [`delivery matrix, ${engine} engine`, line(head), ...rows.map(line)].join("\n");
}

for (const engine of ["memory", "redis"]) {
  const where = engine === "memory" ? "memory engine" : "three Redis replicas";
  describe(`delivery matrix on the ${where}`, () => {
    let gws;
    let results;
    before(async () => {
      gws = await cluster(engine);
      results = await runMatrix(engine, gws);
    }, { timeout: 120_000 });
    after(() => Promise.all(gws?.all.map((g) => g.stop()) ?? []));

    for (const cell of CELLS) {
      test(describeCell(cell), () => {
        const r = results.get(cell.key);
        assert.ok(r.ok, `${where}, ${describeCell(cell)}:\n  ${r.problems.join("\n  ")}`);
      });
    }
  });
}
