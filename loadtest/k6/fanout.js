// Fan-out: CHANGERS women set `live` with a send time in details; the other VUs (men, who see
// only women) measure delivery latency. k6 run -e BASE_URL=... -e JWT_SECRET=... -e VUS=2000
//   -e CHANGERS=10 -e RATE=20 -e DURATION=60 loadtest/k6/fanout.js
// Clocks: latency is measured across VUs of one k6 process, so one clock; with k6 cloud or
// several machines, run changers and viewers on one host or sync clocks first.
import ws from "k6/ws";
import { Counter, Trend } from "k6/metrics";
import { client, wsUrl } from "./lib/sio.js";
import { tokenFor } from "./lib/token.js";

const latency = new Trend("presence_delivery_ms", true);
const received = new Counter("presence_updates_received");
const sent = new Counter("presence_changes_sent");
const CHANGERS = Number(__ENV.CHANGERS || 10);
const RATE = Number(__ENV.RATE || 20);
const DURATION = Number(__ENV.DURATION || 60);

export const options = {
  scenarios: { fanout: { executor: "per-vu-iterations", vus: Number(__ENV.VUS || 1000) + CHANGERS, iterations: 1, maxDuration: `${DURATION + 120}s` } },
  thresholds: { presence_delivery_ms: ["p(99)<50"] },
};

export default function () {
  const changer = __VU <= CHANGERS;
  const id = changer ? `k6-changer-${__VU}` : `k6-viewer-${__VU}`;
  ws.connect(wsUrl(__ENV.BASE_URL || "http://127.0.0.1:3000"), {}, (socket) => {
    let seq = 0;
    const sio = client(socket, { token: tokenFor(__VU, id, changer ? "female" : "male") }, {
      onConnect: () => {
        socket.setInterval(() => sio.emit("user:heartbeat"), 5000);
        if (changer) {
          // Viewers connect meanwhile; changes start after a settling delay.
          socket.setTimeout(() => socket.setInterval(() => {
            seq += 1;
            sio.emit("presence:set-status", { status: "live", details: { c: __VU, s: seq, t: Date.now() } });
            sent.add(1);
          }, (1000 * CHANGERS) / RATE), 10000);
        }
        socket.setTimeout(() => socket.close(), (DURATION + 15) * 1000);
      },
      onEvent: (name, p) => {
        if (!changer && name === "presence-update" && p.details && p.details.t) {
          latency.add(Date.now() - p.details.t);
          received.add(1);
        }
      },
      onError: () => socket.close(),
    });
  });
}
