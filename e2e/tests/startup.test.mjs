// Section 1: start-up validation (exit 2, one line naming the variable), development start,
// and the token subcommand.
import { test } from "node:test";
import assert from "node:assert/strict";
import { execFileSync } from "node:child_process";
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
