// A client that leaves `/` and joins it again at once, on the same session (a token refresh
// done without waiting), must hear back every time, and then receive updates. socketioxide
// ignores a CONNECT for a socket whose disconnect handler is still running; the gateway's
// handler waited on the presence store (Redis), so a quick rejoin could go unanswered for ever.
import { test, before, after } from "node:test";
import assert from "node:assert/strict";
import { Manager } from "socket.io-client";
import { startGateway, user, token, recorder, withDeadline, waitUntil } from "../helpers.mjs";

const REDIS_URL = process.env.TEST_REDIS_URL ?? "redis://127.0.0.1:6379";
let gw;

before(async () => {
  gw = await startGateway({ REDIS_URL, REDIS_KEY_PREFIX: `e2erj${process.pid}x${Date.now() % 100000}` });
});
after(async () => gw?.stop());

const connected = (s) =>
  new Promise((resolve, reject) => {
    s.once("connect", resolve);
    s.once("connect_error", (e) => reject(new Error(`refused: ${e.message}`)));
  });

for (const transports of [["websocket"], ["polling"]]) {
  test(`leaving / and joining again at once, 20 times over ${transports[0]}: answered every time, then updates arrive`, async () => {
    const who = `rj-${transports[0]}`;
    const m = new Manager(gw.url, { reconnection: false, transports, forceNew: true });
    const root = m.socket("/", { auth: user(who, "male") });
    try {
      let done = connected(root);
      root.connect();
      await withDeadline(done, 5000, "first join");
      for (let i = 0; i < 20; i++) {
        root.disconnect();
        done = connected(root);
        root.connect();
        await withDeadline(done, 5000, `rejoin ${i + 1} answered`);
      }
      const seen = recorder(root);
      const w = await gw.connect(user(`${who}-w`, "female"));
      await seen.waitFor((p) => p.userId === `${who}-w` && p.online, 5000, "an update after the rejoins");
      // The registry holds exactly the one live socket of this user.
      await waitUntil(async () => {
        const r = await gw.http(`/api/admin/users/${who}`, { token: token({ sub: "rj-admin", roles: ["admin"] }) });
        return r.json?.connections?.length === 1 && r.json.presence.online;
      }, 5000, "one connection, online");
      w.disconnect();
    } finally {
      root.disconnect();
      m._close?.();
    }
  });
}
