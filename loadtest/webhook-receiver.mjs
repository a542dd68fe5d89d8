// The benchmarks' webhook receiver (`loadtest/bench.sh webhooks`): answers 204 to every
// request, checks each signature, and counts what arrived: events by type, distinct ids,
// repeats, and each event's delay from its commit (`at`) to its arrival here (both clocks are
// this machine's). GET /summary answers the figures as JSON.
//   node loadtest/webhook-receiver.mjs <port> <secret>
import http from "node:http";
import crypto from "node:crypto";

const [port, secret] = [Number(process.argv[2] ?? 3399), process.argv[3] ?? ""];
const ids = new Set();
const byType = {};
const delays = [];
const delaysByType = {};
let requests = 0, events = 0, repeats = 0, badSignatures = 0, lastAt = 0;

function quantile(sorted, q) {
  return sorted.length ? sorted[Math.min(sorted.length - 1, Math.floor(q * sorted.length))] : null;
}

http.createServer((req, res) => {
  if (req.method === "GET") {
    const figures = (xs) => {
      const d = [...xs].sort((a, b) => a - b);
      return { p50: quantile(d, 0.5), p99: quantile(d, 0.99), max: d.length ? d[d.length - 1] : null };
    };
    const byTypeDelay = Object.fromEntries(Object.entries(delaysByType).map(([t, xs]) => [t, figures(xs)]));
    res.writeHead(200, { "content-type": "application/json" });
    res.end(JSON.stringify({ requests, events, distinct: ids.size, repeats, badSignatures, byType, lastArrivalMs: lastAt,
      delayMs: figures(delays), delayMsByType: byTypeDelay }));
    return;
  }
  const chunks = [];
  req.on("data", (c) => chunks.push(c));
  req.on("end", () => {
    const now = Date.now();
    const body = Buffer.concat(chunks).toString();
    const ts = req.headers["x-presence-timestamp"];
    const want = "sha256=" + crypto.createHmac("sha256", secret).update(`${ts}.${body}`).digest("hex");
    if (want !== req.headers["x-presence-signature"]) badSignatures++;
    requests++;
    lastAt = now;
    for (const e of JSON.parse(body).events) {
      events++;
      if (ids.has(e.id)) repeats++;
      ids.add(e.id);
      byType[e.type] = (byType[e.type] ?? 0) + 1;
      delays.push(now - Date.parse(e.at));
      (delaysByType[e.type] ??= []).push(now - Date.parse(e.at));
    }
    res.writeHead(204);
    res.end();
  });
}).listen(port, "127.0.0.1");
