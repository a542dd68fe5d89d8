// The newcomer's path from the README: a development start with nothing configured, then
// the README's JavaScript example with the tokens the start printed.
import { test } from "node:test";
import assert from "node:assert/strict";
import { execFile } from "node:child_process";
import { fileURLToPath } from "node:url";
import { readFileSync } from "node:fs";
import { startGateway, waitUntil, token } from "../helpers.mjs";

test("README example: two users see each other come online, go live, go offline", async () => {
  const gw = await startGateway({ JWT_SECRET: "", APP_ENV: "", NODE_ENV: "" }, { args: ["--dev"] });
  try {
    const m = gw.output().match(/export ALICE=(\S+) BOB=(\S+)/);
    assert.ok(m, gw.output());
    const example = fileURLToPath(new URL("../examples/two-users.mjs", import.meta.url));
    const out = await new Promise((resolve, reject) =>
      execFile(process.execPath, [example], { env: { ...process.env, URL: gw.url, ALICE: m[1], BOB: m[2] }, timeout: 15_000 },
        (err, stdout, stderr) => (err ? reject(new Error(`${err.message}\n${stdout}\n${stderr}`)) : resolve(stdout))),
    );
    const lines = out.trim().split("\n");
    assert.deepEqual(
      lines.filter((l) => l.startsWith("bob sees alice")).map((l) => l.split(":")[1].trim().split(" ")[0]),
      ["online", "live", "offline"],
      out,
    );
    assert.match(out, /alice sees online: .*bob/);
    // It says where the console is, with a token that signs in to it.
    const c = gw.output().match(/Console: http:\/\/localhost:(\d+)\/ui\/ +sign in with the admin token: (\S+)/);
    assert.ok(c, gw.output());
    assert.equal(Number(c[1]), gw.port);
    assert.equal((await fetch(`${gw.url}/ui/`)).status, 200);
    assert.equal((await gw.http("/api/admin/nodes", { token: c[2] })).status, 200);
  } finally {
    await gw.stop();
  }
});

test("the README's JavaScript snippet is the example the test above runs", () => {
  const readme = readFileSync(fileURLToPath(new URL("../../README.md", import.meta.url)), "utf8");
  const example = readFileSync(fileURLToPath(new URL("../examples/two-users.mjs", import.meta.url)), "utf8");
  const code = example.slice(example.indexOf('import { io }')).trim();
  assert.ok(readme.includes("```js\n" + code + "\n```"), "README's snippet differs from e2e/examples/two-users.mjs");
});

test("README on-screen example: a subscription socket in batches follows who is on screen", async () => {
  const gw = await startGateway({ PRESENCE_BATCH_MS: "50" });
  try {
    const example = fileURLToPath(new URL("../examples/on-screen.mjs", import.meta.url));
    const carol = token({ sub: "carol", gender: "female" });
    const child = execFile(process.execPath, [example], {
      env: { ...process.env, URL: gw.url, TOKEN: carol, ON_SCREEN: "alice,dave", UNTIL: "alice:live" }, timeout: 15_000,
    });
    let out = "";
    child.stdout.on("data", (d) => (out += d));
    child.stderr.on("data", (d) => (out += d));
    // alice is on screen (offline, never seen, in the snapshot), then comes online and goes live;
    // eve is not on screen and never shows.
    await waitUntil(() => out.includes("alice: offline"), 10_000, "the snapshot");
    const eve = await gw.connect({ token: token({ sub: "eve", gender: "female" }) });
    const alice = await gw.connect({ token: token({ sub: "alice", gender: "female" }) });
    await alice.timeout(5000).emitWithAck("presence:set-status", { status: "live" });
    await new Promise((resolve) => child.on("exit", resolve));
    // (Her coming online and going live may share one batch: only the newest shows.)
    assert.match(out, /alice: offline\n(.*\n)*alice: live/, out);
    assert.doesNotMatch(out, /eve/, out);
    eve.disconnect();
  } finally {
    await gw.stop();
  }
});

test("the README's on-screen snippet is e2e/examples/on-screen.mjs", () => {
  const readme = readFileSync(fileURLToPath(new URL("../../README.md", import.meta.url)), "utf8");
  const example = readFileSync(fileURLToPath(new URL("../examples/on-screen.mjs", import.meta.url)), "utf8");
  const code = example.slice(example.indexOf("import { io }")).trim();
  assert.ok(readme.includes("```js\n" + code + "\n```"), "README's snippet differs from e2e/examples/on-screen.mjs");
});

test("README rules example: appear offline, hide the last seen, block from a profile screen", async () => {
  const gw = await startGateway();
  try {
    const other = await gw.connect({ token: token({ sub: "rules-other", gender: "female" }) });
    const seen = [];
    other.on("presence-update", (p) => p.userId === "rules-me" && seen.push(p));
    const example = fileURLToPath(new URL("../examples/rules.mjs", import.meta.url));
    const out = await new Promise((resolve, reject) =>
      execFile(process.execPath, [example], { env: { ...process.env, URL: gw.url, TOKEN: token({ sub: "rules-me", gender: "female" }), OTHER: "rules-other" }, timeout: 15_000 },
        (err, stdout, stderr) => (err ? reject(new Error(`${err.message}\n${stdout}\n${stderr}`)) : resolve(stdout))),
    );
    assert.equal(
      out.trim(),
      ['privacy: {"invisible":true,"lastSeen":"nobody"}', "blocked: true", "visible after the block: 0", 'privacy: {"invisible":false,"lastSeen":"everyone"}'].join("\n"),
    );
    // The other saw them go offline when they turned invisible, with no lastSeen; back online
    // once visible again; then offline when they left (their last seen shown again).
    await waitUntil(() => seen.length >= 4 && !seen.at(-1).online, 5000, "their leaving");
    assert.deepEqual([seen[0].online, seen[1].online, seen[1].lastSeen], [true, false, null], JSON.stringify(seen));
    assert.ok(seen.some((p) => p.online && p.version > seen[1].version), JSON.stringify(seen));
    other.disconnect();
  } finally {
    await gw.stop();
  }
});

test("the README's rules snippet is e2e/examples/rules.mjs", () => {
  const readme = readFileSync(fileURLToPath(new URL("../../README.md", import.meta.url)), "utf8");
  const example = readFileSync(fileURLToPath(new URL("../examples/rules.mjs", import.meta.url)), "utf8");
  const code = example.slice(example.indexOf("import { io }")).trim();
  assert.ok(readme.includes("```js\n" + code + "\n```"), "README's snippet differs from e2e/examples/rules.mjs");
});
