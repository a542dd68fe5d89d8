// Two users see each other come online, go live, and go offline.
// Run: cargo run -- --dev   (prints ALICE=… BOB=… tokens), then
//      cd e2e && npm ci && ALICE=… BOB=… node examples/two-users.mjs
import { io } from "socket.io-client";

const url = process.env.URL ?? "http://localhost:3000";
const bob = io(url, { auth: { token: process.env.BOB } }); // male: sees women (and himself)
bob.on("connect_error", (e) => console.error("bob refused:", e.message));
bob.on("presence-update", (p) => {
  console.log(`bob sees ${p.userId}: ${p.status}`, p.details ?? "");
  if (p.userId === "alice" && p.status === "offline") bob.disconnect();
});

bob.on("connect", () => {
  const alice = io(url, { auth: { token: process.env.ALICE } }); // female: sees everyone
  const beat = setInterval(() => alice.emit("user:heartbeat"), 5000); // keep presence alive
  alice.on("connect", async () => {
    const online = await alice.emitWithAck("presence:list-online", { limit: 100 });
    console.log("alice sees online:", online.users.map((u) => u.userId).join(", "));
    await alice.emitWithAck("presence:set-status", { status: "live", details: { streamId: "s1" } });
    clearInterval(beat);
    alice.disconnect();
  });
});
