// Section 9 from a client's side: follow only the users on screen (a subscription socket),
// in batches, and keep the screen right across reconnects and resyncs. Run by
// e2e/tests/readme.test.mjs; the README shows it from the import on.
import { io } from "socket.io-client";

const url = process.env.URL ?? "http://localhost:3000";
let onScreen = (process.env.ON_SCREEN ?? "alice,bob").split(",");
const shown = new Map(); // userId -> the presence the screen shows

function apply(p) {
  const had = shown.get(p.userId);
  if (had && had.version >= p.version) return; // older than what is shown: drop it
  shown.set(p.userId, p);
  console.log(`${p.userId}: ${p.status}`);
  if (process.env.UNTIL === `${p.userId}:${p.status}`) socket.disconnect();
}

const socket = io(url, { auth: { token: process.env.TOKEN, presence: "subscriptions", batch: true } });
async function follow(ids) {
  const r = await socket.emitWithAck("presence:subscribe", { userIds: ids });
  if (!r.ok) return console.error("subscribe refused:", r.error.code, r.error.message);
  r.presences.forEach(apply); // the snapshot; every later change has a greater version
}
socket.on("connect", () => follow(onScreen)); // subscriptions live with the socket: again after a reconnect
socket.on("presence:resync", () => follow(onScreen)); // this replica may have missed changes
socket.on("presence-batch", ({ updates }) => updates.forEach(apply));

// The list scrolled: stop following who left the screen, follow who came.
export async function scrolled(ids) {
  const left = onScreen.filter((id) => !ids.includes(id));
  if (left.length) await socket.emitWithAck("presence:unsubscribe", { userIds: left });
  onScreen = ids;
  await follow(ids);
}
