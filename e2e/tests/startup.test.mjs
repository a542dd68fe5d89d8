// Section 1: start-up validation (exit 2, one line naming the variable), development start,
// and the token subcommand.
import { test } from "node:test";
import assert from "node:assert/strict";
import { execFileSync, spawnSync } from "node:child_process";
import { mkdtempSync } from "node:fs";
import os from "node:os";
import path from "node:path";
import { startGateway, connect, BIN, SECRET } from "../helpers.mjs";

for (const [env, variable] of [
  [{ PORT: "http" }, "PORT"],
  [{ PORT: "70000" }, "PORT"],
  [{ HOST: "localhost:3000" }, "HOST"],
  [{ PRESENCE_HEARTBEAT_TIMEOUT_MS: "soon" }, "PRESENCE_HEARTBEAT_TIMEOUT_MS"],
  [{ PRESENCE_SWEEP_INTERVAL_MS: "-1" }, "PRESENCE_SWEEP_INTERVAL_MS"],
  [{ VISIBILITY_POLICY: "everyone" }, "VISIBILITY_POLICY"],
  [{ APP_ENV: "staging" }, "APP_ENV"],
  [{ REDIS_URL: "http://x" }, "REDIS_URL"],
  [{ SOCKET_ALLOW_INSECURE_USERID: "maybe" }, "SOCKET_ALLOW_INSECURE_USERID"],
  [{ JWT_PUBLIC_KEY_FILE: "/nonexistent.pem", JWT_SECRET: "" }, "JWT_PUBLIC_KEY_FILE"],
  [{ APP_ENV: "production", JWT_SECRET: "" }, "JWT_SECRET"],
  [{ APP_ENV: "", NODE_ENV: "staging", JWT_SECRET: "" }, "JWT_SECRET"],
  [{ APP_ENV: "production", JWT_SECRET: "x".repeat(31) }, "JWT_SECRET"],
  // Section 12's webhook variables.
  [{ WEBHOOK_URL: "http://backend/hook", WEBHOOK_SECRET: "s", WEBHOOK_EVENTS: "stats.event" }, "WEBHOOK_EVENTS"],
  [{ WEBHOOK_URL: "ftp://backend/hook", WEBHOOK_SECRET: "s" }, "WEBHOOK_URL"],
  [{ WEBHOOK_URL: "http://backend/hook" }, "WEBHOOK_SECRET"],
  [{ WEBHOOK_SECRET: "s" }, "WEBHOOK_SECRET"],
  [{ WEBHOOK_URL: "http://backend/hook", WEBHOOK_SECRET: "s", WEBHOOK_EVENTS: "user.typing" }, "WEBHOOK_EVENTS"],
  [{ WEBHOOK_URL: "http://backend/hook", WEBHOOK_SECRET: "s", WEBHOOK_OFFLINE_DELAY_MS: "soon" }, "WEBHOOK_OFFLINE_DELAY_MS"],
  [{ WEBHOOK_URL: "http://backend/hook", WEBHOOK_SECRET: "s", WEBHOOK_BATCH_MAX: "0" }, "WEBHOOK_BATCH_MAX"],
  [{ WEBHOOK_URL: "http://backend/hook", WEBHOOK_SECRET: "s", WEBHOOK_QUEUE_MAX: "-1" }, "WEBHOOK_QUEUE_MAX"],
  [{ APP_ENV: "production", JWT_SECRET: "p".repeat(40), WEBHOOK_URL: "https://backend/hook", WEBHOOK_SECRET: "short" }, "WEBHOOK_SECRET"],
]) {
  test(`bad ${variable} (${JSON.stringify(env)}) stops start-up with exit 2`, async () => {
    const r = await startGateway(env, { expectExit: true });
    assert.equal(r.code, 2, r.output);
    const lines = r.output.trim().split("\n");
    assert.equal(lines.length, 1, r.output);
    assert.match(lines[0], new RegExp(`^error: ${variable}: `));
  });
}

test("production without a key says how to fix it", async () => {
  const r = await startGateway({ APP_ENV: "production", JWT_SECRET: "" }, { expectExit: true });
  assert.match(r.output, /JWT_SECRET/);
  assert.match(r.output, /JWT_PUBLIC_KEY_FILE/);
  assert.match(r.output, /APP_ENV=development|--dev/);
});

test("a development start with nothing configured prints tokens that work", async () => {
  const gw = await startGateway({ JWT_SECRET: "", APP_ENV: "", NODE_ENV: "development" });
  try {
    const m = gw.output().match(/token: "([^"]+)" \} \}\)\s+\/\/ alice/);
    assert.ok(m, gw.output());
    const s = await connect(gw.url, { token: m[1] });
    s.disconnect();
  } finally {
    await gw.stop();
  }
});

test("presence-gateway token signs with JWT_SECRET", async () => {
  const t = execFileSync(BIN, ["token", "--sub", "cli-u", "--gender", "female", "--role", "user", "--ttl", "600"], {
    env: { PATH: process.env.PATH, JWT_SECRET: SECRET },
  }).toString().trim();
  const claims = JSON.parse(Buffer.from(t.split(".")[1], "base64url").toString());
  assert.equal(claims.sub, "cli-u");
  assert.equal(claims.gender, "female");
  assert.deepEqual(claims.roles, ["user"]);
  const gw = await startGateway();
  try {
    (await connect(gw.url, { token: t })).disconnect();
  } finally {
    await gw.stop();
  }
});

test("token --dev mints tokens a running development gateway accepts; token --help lists only its options", async () => {
  const dir = mkdtempSync(path.join(os.tmpdir(), "pgw-dev-"));
  const env = { PATH: process.env.PATH, DEV_SECRET_FILE: path.join(dir, "secret") };
  const gw = await startGateway({ JWT_SECRET: "", APP_ENV: "", DEV_SECRET_FILE: env.DEV_SECRET_FILE }, { args: ["--dev"] });
  try {
    assert.match(gw.output(), /token --dev --sub/, "the banner says how to mint more");
    // Minted after the start, for a user the banner did not name.
    const t = execFileSync(BIN, ["token", "--dev", "--sub", "carol", "--gender", "female"], { env }).toString().trim();
    const s = await connect(gw.url, { token: t });
    s.disconnect();
  } finally {
    await gw.stop();
  }
  const help = execFileSync(BIN, ["token", "--help"], { env }).toString();
  for (const flag of ["--dev", "--sub", "--gender", "--role", "--name", "--ttl"]) assert.match(help, new RegExp(flag));
  for (const flag of ["--host", "--port"]) assert.doesNotMatch(help, new RegExp(flag), `token --help offers ${flag}`);
  // Without a secret or --dev, token says what to do.
  const r = spawnSync(BIN, ["token", "--sub", "x"], { env: { PATH: process.env.PATH, APP_ENV: "development", DEV_SECRET_FILE: env.DEV_SECRET_FILE } });
  assert.equal(r.status, 0, "APP_ENV=development works like --dev");
  const prod = spawnSync(BIN, ["token", "--sub", "x"], { env: { PATH: process.env.PATH } });
  assert.equal(prod.status, 2);
  assert.match(prod.stderr.toString(), /JWT_SECRET/);
});

test("--dev with a configured JWT_SECRET prints no token signed with it", async () => {
  const gw = await startGateway({ JWT_SECRET: "a-real-deployment-secret-0123456789abcdef" }, { args: ["--dev"] });
  try {
    assert.doesNotMatch(gw.output(), /eyJ[\w-]+\.[\w-]+\.[\w-]+/, gw.output());
    assert.match(gw.output(), /presence-gateway token --sub/);
  } finally {
    await gw.stop();
  }
});
