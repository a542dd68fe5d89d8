// A real HTTP receiver for webhook tests: records every request (headers and raw body), and
// answers what the test says (`answer`: a status, or "hang" to never answer).
import http from "node:http";

/** The README's verification snippet (Node). */
export { verifyWebhook } from "./examples/verify-webhook.mjs";
import { verifyWebhook } from "./examples/verify-webhook.mjs";
export const verify = (secret, timestamp, body, signature) => verifyWebhook(secret, body, timestamp, signature);

export async function startReceiver() {
  const r = {
    requests: [],
    answer: 200,
    /** Every event of every request that was answered 2xx, in arrival order. */
    get taken() {
      return r.requests.filter((q) => q.status >= 200 && q.status < 300).flatMap((q) => q.json.events);
    },
    /** Every event received, answered or not. */
    get seen() {
      return r.requests.flatMap((q) => q.json.events);
    },
  };
  const handle = (req, res) => {
    const chunks = [];
    req.on("data", (c) => chunks.push(c));
    req.on("end", () => {
      const body = Buffer.concat(chunks).toString();
      const status = r.answer;
      const q = { at: Date.now(), headers: req.headers, body, json: JSON.parse(body), status, method: req.method, url: req.url };
      r.requests.push(q);
      if (status === "hang") return;
      res.writeHead(status, { "content-type": "application/json" });
      res.end("{}");
    });
  };
  let server = http.createServer(handle);
  await new Promise((resolve) => server.listen(0, "127.0.0.1", resolve));
  const port = server.address().port;
  /** Stop listening: connections are refused until `up`. */
  r.down = () => {
    server.closeAllConnections();
    return new Promise((resolve) => server.close(resolve));
  };
  r.up = () => {
    server = http.createServer(handle);
    return new Promise((resolve) => server.listen(port, "127.0.0.1", resolve));
  };
  r.url = `http://127.0.0.1:${port}/hooks/presence`;
  r.close = () => {
    server.closeAllConnections();
    return new Promise((resolve) => server.close(resolve));
  };
  return r;
}
