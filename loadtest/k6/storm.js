// Connect storm: VUS clients connect as fast as k6 opens them and stay for HOLD seconds.
// Watch /api/health onlineUsers reach VUS. k6 run -e BASE_URL=... -e JWT_SECRET=... -e VUS=10000
import ws from "k6/ws";
import http from "k6/http";
import { Counter, Trend } from "k6/metrics";
import { client, wsUrl } from "./lib/sio.js";
import { tokenFor } from "./lib/token.js";

const connectTime = new Trend("sio_connect_ms", true);
const refused = new Counter("sio_connect_refused");
const HOLD = Number(__ENV.HOLD || 60);

export const options = {
  scenarios: { storm: { executor: "per-vu-iterations", vus: Number(__ENV.VUS || 5000), iterations: 1, maxDuration: `${HOLD + 120}s` } },
  thresholds: { sio_connect_ms: ["p(99)<2000"], sio_connect_refused: ["count==0"] },
};

export function teardown() {
  const h = http.get(`${__ENV.BASE_URL || "http://127.0.0.1:3000"}/api/health`);
  console.log(`health after the storm: ${h.body}`);
}

export default function () {
  const started = Date.now();
  ws.connect(wsUrl(__ENV.BASE_URL || "http://127.0.0.1:3000"), {}, (socket) => {
    const sio = client(socket, { token: tokenFor(__VU, `k6-storm-${__VU}`, "male") }, {
      onConnect: () => {
        connectTime.add(Date.now() - started);
        socket.setInterval(() => sio.emit("user:heartbeat"), 5000);
        socket.setTimeout(() => socket.close(), HOLD * 1000);
      },
      onError: () => { refused.add(1); socket.close(); },
    });
  });
}
