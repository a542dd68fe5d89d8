// Idle clients heartbeating every 5 s. k6 run -e BASE_URL=https://presence.example.com
//   -e JWT_SECRET=... -e VUS=2000 -e HOLD=300 loadtest/k6/idle.js
import ws from "k6/ws";
import { check } from "k6";
import { Counter, Trend } from "k6/metrics";
import { client, wsUrl } from "./lib/sio.js";
import { tokenFor } from "./lib/token.js";

const connectTime = new Trend("sio_connect_ms", true);
const refused = new Counter("sio_connect_refused");
const heartbeatAcks = new Counter("sio_heartbeat_acks");
const HOLD = Number(__ENV.HOLD || 60);

export const options = {
  scenarios: { idle: { executor: "per-vu-iterations", vus: Number(__ENV.VUS || 1000), iterations: 1, maxDuration: `${HOLD + 120}s` } },
  thresholds: { sio_connect_ms: ["p(99)<1000"], sio_connect_refused: ["count==0"], checks: ["rate>0.99"] },
};

export default function () {
  const started = Date.now();
  const res = ws.connect(wsUrl(__ENV.BASE_URL || "http://127.0.0.1:3000"), {}, (socket) => {
    const sio = client(socket, { token: tokenFor(__VU, `k6-idle-${__VU}`, "male") }, {
      onConnect: () => {
        connectTime.add(Date.now() - started);
        socket.setInterval(() => sio.emitWithAck("user:heartbeat", undefined, (a) => a.ok && heartbeatAcks.add(1)), 5000);
        socket.setTimeout(() => socket.close(), HOLD * 1000);
      },
      onError: () => { refused.add(1); socket.close(); },
    });
  });
  check(res, { "upgraded to websocket": (r) => r && r.status === 101 });
}
