// The user's own rules (section 11) from a client: "appear offline", hide the last seen, and
// block someone from their profile screen. Run against a gateway with
// URL=… TOKEN=… OTHER=<a user id> node examples/rules.mjs
import { io } from "socket.io-client";

const url = process.env.URL ?? "http://localhost:3000";
const me = io(url, { auth: { token: process.env.TOKEN } });
me.on("connect", async () => {
  // "Appear offline": everyone else sees me offline as of now; I still see them, and myself.
  const hidden = await me.emitWithAck("presence:set-privacy", { invisible: true, lastSeen: "nobody" });
  console.log("privacy:", JSON.stringify(hidden.privacy));

  // "Block" on a profile screen: neither of us sees the other again, on any screen.
  const blocked = await me.emitWithAck("presence:block", { userId: process.env.OTHER });
  console.log("blocked:", blocked.ok);
  const got = await me.emitWithAck("presence:get", { userIds: [process.env.OTHER] });
  console.log("visible after the block:", got.presences.length);

  // Undo both.
  await me.emitWithAck("presence:unblock", { userId: process.env.OTHER });
  const shown = await me.emitWithAck("presence:set-privacy", { invisible: false, lastSeen: "everyone" });
  console.log("privacy:", JSON.stringify(shown.privacy));
  me.disconnect();
});
