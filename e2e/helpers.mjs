// Helpers for end-to-end tests: start the real gateway binary as a process, sign tokens,
// connect with the official socket.io-client, and wait on conditions with deadlines.
import { spawn, execFileSync } from "node:child_process";
import { createHmac } from "node:crypto";
import { fileURLToPath } from "node:url";
import path from "node:path";
import os from "node:os";
import net from "node:net";
import WebSocket from "ws";
import { io, Manager } from "socket.io-client";

const here = path.dirname(fileURLToPath(import.meta.url));
export const BIN = process.env.GATEWAY_BIN ?? path.join(here, "..", "target", "debug", "presence-gateway");
export const SECRET = "e2e-secret-0123456789abcdef-0123456789";
export const TRANSPORTS = [["websocket"], ["polling"]];

/** Short timeouts, so timing tests take seconds, not the production defaults. */
export const FAST = {
  PRESENCE_HEARTBEAT_TIMEOUT_MS: "1500",
  PRESENCE_SWEEP_INTERVAL_MS: "250",
};

/** Start a gateway; resolves once it logs `listening on`. */
export async function startGateway(env = {}, { expectExit = false, args = [] } = {}) {
  const procEnvNodeId = `e2e-${process.pid}-${Math.random().toString(36).slice(2, 8)}`;
  const proc = spawn(BIN, args, {
    env: {
      PATH: process.env.PATH,
      APP_ENV: "development",
      JWT_SECRET: SECRET,
      HOST: "127.0.0.1",
      PORT: "0",
      NODE_ID: procEnvNodeId,
      RUST_LOG: "info",
      // Tests poll authenticated endpoints faster than any client would; the limit itself is
      // tested in limits.test.mjs.
      HTTP_RATE_LIMIT_PER_SEC: "0",
      // A development start without a key keeps its secret here, not in the working tree.
      DEV_SECRET_FILE: path.join(os.tmpdir(), `pgw-e2e-dev-secret-${process.pid}`),
      ...env,
    },
    stdio: ["ignore", "pipe", "pipe"],
  });
  let out = "";
  const exited = new Promise((resolve) => proc.on("exit", (code, signal) => resolve({ code, signal })));
  proc.stdout.on("data", (d) => (out += d));
  proc.stderr.on("data", (d) => (out += d));
  if (expectExit) {
    const r = await withDeadline(exited, 10_000, "gateway did not exit");
    return { ...r, output: out };
  }
  const port = await withDeadline(
    new Promise((resolve, reject) => {
      const check = () => {
        const m = out.match(/listening on [^\s]+:(\d+)/);
        if (m) resolve(Number(m[1]));
      };
      proc.stdout.on("data", check);
      proc.stderr.on("data", check);
      exited.then((r) => reject(new Error(`gateway exited early (${JSON.stringify(r)}):\n${out}`)));
    }),
    15_000,
    "gateway did not start",
  );
  const url = `http://127.0.0.1:${port}`;
  const sockets = [];
  return {
    url,
    nodeId: env.NODE_ID ?? procEnvNodeId,
    port,
    proc,
    exited,
    output: () => out,
    /** Connect and remember the socket for cleanup. */
    connect: async (auth, opts) => {
      const s = await connect(url, auth, opts);
      sockets.push(s);
      return s;
    },
    socket: (auth, opts) => {
      const s = io(url, { auth, reconnection: false, forceNew: true, ...opts });
      sockets.push(s);
      return s;
    },
    http: (p, { token, method = "GET", body } = {}) => httpJson(url + p, { token, method, body }),
    async stop() {
      for (const s of sockets) s.disconnect();
      if (proc.exitCode === null && proc.signalCode === null) proc.kill("SIGTERM");
      return withDeadline(exited, 10_000, "gateway did not stop");
    },
  };
}

function b64url(x) {
  return Buffer.from(typeof x === "string" ? x : JSON.stringify(x)).toString("base64url");
}

/** An HS256 JWT. `claims` override the defaults; `header` overrides the header. */
export function token(claims = {}, { secret = SECRET, header = { alg: "HS256", typ: "JWT" } } = {}) {
  const now = Math.floor(Date.now() / 1000);
  const body = { exp: now + 3600, iat: now, ...claims };
  for (const k of Object.keys(body)) if (body[k] === undefined) delete body[k];
  const unsigned = `${b64url(header)}.${b64url(body)}`;
  const sig = createHmac("sha256", secret).update(unsigned).digest("base64url");
  return `${unsigned}.${sig}`;
}

export const user = (sub, gender, extra = {}) => ({ token: token({ sub, gender, ...extra }) });

/** Connect; resolves when connected, rejects with the connect_error. */
export function connect(url, auth, opts = {}) {
  const s = io(url, { auth, reconnection: false, forceNew: true, timeout: 5000, ...opts });
  return withDeadline(
    new Promise((resolve, reject) => {
      s.once("connect", () => resolve(s));
      s.once("connect_error", (e) => {
        s.close();
        reject(e);
      });
    }),
    8000,
    "connect timed out",
  );
}

/** Emit with an ack and a deadline. */
export function ask(s, event, ...args) {
  return s.timeout(5000).emitWithAck(event, ...args);
}

/** Record every presence-update a socket receives. */
export function recorder(s) {
  const seen = [];
  s.on("presence-update", (p) => seen.push(p));
  return {
    seen,
    of: (userId) => seen.filter((p) => p.userId === userId),
    /** Wait until an update matching `pred` arrives; returns it. */
    waitFor: (pred, ms = 5000, what = "presence-update") =>
      waitUntil(() => seen.find(pred), ms, `no ${what} matching ${pred}`),
  };
}

export async function waitUntil(fn, ms = 5000, what = "condition") {
  const deadline = Date.now() + ms;
  for (;;) {
    const v = await fn();
    if (v) return v;
    if (Date.now() > deadline) throw new Error(`timed out after ${ms} ms waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 20));
  }
}

/**
 * A Redis server of the test's own (on `port`), for what must not touch the shared one
 * (pausing it, cutting its clients): `cli(...args)` runs redis-cli against it.
 */
export async function ownRedis(port) {
  const cli = (...args) => execFileSync("redis-cli", ["-p", String(port), ...args]).toString().trim();
  const proc = spawn("redis-server", ["--port", String(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"], { stdio: "ignore" });
  await waitUntil(() => {
    try {
      return cli("ping") === "PONG";
    } catch {
      return false;
    }
  }, 5000, `a Redis of the test's own on ${port}`);
  return { url: `redis://127.0.0.1:${port}`, cli, stop: () => proc.kill("SIGKILL") };
}

export function withDeadline(p, ms, what) {
  let t;
  return Promise.race([
    p.finally(() => clearTimeout(t)),
    new Promise((_, reject) => (t = setTimeout(() => reject(new Error(`${what} within ${ms} ms`)), ms))),
  ]);
}

let markers = 0;
/**
 * A barrier for asserting that something did NOT happen: a fresh (female, so visible to
 * everyone) marker user comes online. Changes are committed in order, fanned out in order
 * and queued per socket in order, so once `rec` has seen the marker, it has seen every
 * change committed before it.
 */
export async function barrier(gw, rec) {
  const id = `marker-${process.pid}-${++markers}`;
  const m = await gw.connect(user(id, "female"));
  await rec.waitFor((p) => p.userId === id && p.online, 5000, `barrier ${id}`);
  m.disconnect();
}

/** Wait until a sweep has run after time `t` (ms since the epoch). */
export async function sweptAfter(gw, t) {
  await waitUntil(async () => {
    const h = await gw.http("/api/health");
    return h.json?.presence?.lastSweepAt && Date.parse(h.json.presence.lastSweepAt) > t;
  }, 10_000, "a sweep");
}

export async function httpJson(url, { token, method = "GET", body } = {}) {
  const headers = {};
  if (token) headers.authorization = `Bearer ${token}`;
  if (body !== undefined) headers["content-type"] = "application/json";
  const res = await fetch(url, { method, headers, body: body === undefined ? undefined : JSON.stringify(body) });
  const text = await res.text();
  let json = null;
  try {
    json = JSON.parse(text);
  } catch {}
  return { status: res.status, json, text };
}

/**
 * One Engine.IO session carrying several namespaces (socket.io-client multiplexes them over
 * one Manager): a `/dashboard` socket keeps the session open while a `/` socket for `auth`
 * leaves and re-joins. `join(s)` connects a socket of the session and waits for it.
 */
export async function multiplexed(gw, auth, who) {
  const m = new Manager(gw.url, { reconnection: false, transports: ["websocket"], forceNew: true });
  const join = (s) => {
    const done = new Promise((resolve, reject) => (s.once("connect", resolve), s.once("connect_error", reject)));
    s.connect();
    return withDeadline(done, 5000, `join ${s.nsp}`);
  };
  const keep = m.socket("/dashboard", { auth: { token: token({ sub: `${who}-dash`, roles: ["dashboard"] }) } });
  await join(keep);
  const socket = m.socket("/", { auth });
  await join(socket);
  return {
    manager: m,
    socket,
    join,
    close() {
      keep.disconnect();
      socket.disconnect();
      m._close?.();
    },
  };
}

/**
 * The status of a request sent with exactly this request line target and these header lines
 * (fetch would merge repeated header names into one line, and refuse some values).
 */
export function rawStatus(gw, target, lines) {
  return new Promise((resolve, reject) => {
    const sock = net.connect(gw.port, "127.0.0.1", () =>
      sock.write([`GET ${target} HTTP/1.1`, "Host: 127.0.0.1", "Connection: close", ...lines, "", ""].join("\r\n")),
    );
    let head = "";
    sock.on("data", (d) => {
      head += d;
      const m = head.match(/^HTTP\/1\.1 (\d+)/);
      if (m) {
        resolve(Number(m[1]));
        sock.destroy();
      }
    });
    sock.on("error", (e) => (e.code === "ECONNRESET" || e.code === "EPIPE" ? resolve(0) : reject(e)));
  });
}

/**
 * A raw Engine.IO WebSocket session, as an attacker's script would open it: it answers pings
 * and counts the answers to its joins of namespace `nsp` (`""` for `/`, or `"/widget"`).
 */
export async function rawSession(gw, nsp = "") {
  const ws = new WebSocket(`${gw.url.replace("http", "ws")}/socket.io/?EIO=4&transport=websocket`);
  const counts = { joined: 0, refused: 0 };
  ws.on("message", (d) => {
    const m = d.toString();
    if (m === "2") ws.send("3");
    else if (m.startsWith(`40${nsp}`)) counts.joined++;
    else if (m.startsWith(`44${nsp}`)) counts.refused++;
  });
  await withDeadline(new Promise((resolve, reject) => (ws.once("message", resolve), ws.once("error", reject))), 5000, "open");
  return { ws, counts };
}
