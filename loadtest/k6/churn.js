// Churn: VUS clients connect, stay 0.2-1.5 s, leave, again; WATCHERS women-seeing viewers
// count announcements per user and flag any two in a row with the same status (a doubled or
// flapping announcement). k6 run -e BASE_URL=... -e JWT_SECRET=... -e VUS=300 -e WATCHERS=20
import ws from "k6/ws";
import { sleep } from "k6";
import { Counter } from "k6/metrics";
import { client, wsUrl } from "./lib/sio.js";
import { tokenFor } from "./lib/token.js";

const doubled = new Counter("presence_doubled_announcements");
const announcements = new Counter("presence_announcements");
const WATCHERS = Number(__ENV.WATCHERS || 20);
const DURATION = Number(__ENV.DURATION || 60);

export const options = {
  scenarios: {
    watchers: { executor: "per-vu-iterations", exec: "watch", vus: WATCHERS, iterations: 1, maxDuration: `${DURATION + 60}s` },
    churners: { executor: "constant-vus", exec: "churn", vus: Number(__ENV.VUS || 300), duration: `${DURATION}s`, startTime: "5s" },
  },
  thresholds: { presence_doubled_announcements: ["count==0"] },
};

export function watch() {
  const last = {};
  ws.connect(wsUrl(__ENV.BASE_URL || "http://127.0.0.1:3000"), {}, (socket) => {
    const sio = client(socket, { token: tokenFor(__VU, `k6-watch-${__VU}`, "female") }, {
      onConnect: () => {
        socket.setInterval(() => sio.emit("user:heartbeat"), 5000);
        socket.setTimeout(() => socket.close(), (DURATION + 20) * 1000);
      },
      onEvent: (name, p) => {
        if (name !== "presence-update" || !p.userId.startsWith("k6-churn-")) return;
        announcements.add(1);
        if (last[p.userId] === p.online) doubled.add(1);
        last[p.userId] = p.online;
      },
    });
  });
}

export function churn() {
  ws.connect(wsUrl(__ENV.BASE_URL || "http://127.0.0.1:3000"), {}, (socket) => {
    client(socket, { token: tokenFor(__VU, `k6-churn-${__VU}`, "female") }, {
      onConnect: () => socket.setTimeout(() => socket.close(), 200 + Math.random() * 1300),
      onError: () => socket.close(),
    });
  });
  sleep(0.05 + Math.random() * 0.45);
}
