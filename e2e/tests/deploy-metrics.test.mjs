// Every metric the shipped Grafana dashboard and Prometheus alerts use is exposed by a running
// gateway (with Redis and PostgreSQL, so every family exists). Metrics of other exporters
// (Prometheus' `up`, kube-state-metrics) are named here and skipped.
import { test } from "node:test";
import assert from "node:assert/strict";
import { readFileSync } from "node:fs";
import path from "node:path";
import { fileURLToPath } from "node:url";
import { startGateway, waitUntil } from "../helpers.mjs";
import { freshDatabase } from "../db.mjs";

const chart = path.join(path.dirname(fileURLToPath(import.meta.url)), "..", "..", "helm", "presence-gateway");
const OTHER_EXPORTERS = new Set(["up", "kube_deployment_status_replicas_available", "kube_deployment_spec_replicas"]);

function usedMetrics() {
  const dashboard = JSON.parse(readFileSync(path.join(chart, "files", "dashboard.json"), "utf8"));
  const exprs = dashboard.panels.flatMap((p) => p.targets.map((t) => t.expr));
  exprs.push(...dashboard.templating.list.map((v) => v.query).filter((q) => typeof q === "string"));
  exprs.push(readFileSync(path.join(chart, "templates", "prometheusrule.yaml"), "utf8"));
  const names = new Set();
  for (const e of exprs) for (const m of e.matchAll(/\b([a-z_][a-z0-9_]*)\{/g)) names.add(m[1]);
  for (const e of exprs) for (const m of e.matchAll(/label_values\(([a-z_][a-z0-9_]*)/g)) names.add(m[1]);
  return [...names].map((n) => n.replace(/_(bucket|sum|count)$/, "")).filter((n) => !OTHER_EXPORTERS.has(n));
}

test("every metric the dashboard and the alerts use is exposed by a running gateway", async () => {
  const names = [...new Set(usedMetrics())];
  assert.ok(names.length >= 15, `found ${names.length} metric names`);
  const gw = await startGateway({
    DATABASE_URL: freshDatabase(),
    REDIS_URL: process.env.TEST_REDIS_URL ?? "redis://127.0.0.1:6379",
    REDIS_KEY_PREFIX: `dm${process.pid}`,
  });
  try {
    await waitUntil(async () => (await gw.http("/api/health")).json?.dependencies?.database === "up", 10000, "database up");
    const text = (await gw.http("/metrics")).text;
    const exposed = new Set([...text.matchAll(/^# TYPE (\S+) /gm)].map((m) => m[1]));
    const missing = names.filter((n) => !exposed.has(n));
    assert.deepEqual(missing, [], `used by the dashboard or alerts but not exposed: ${missing.join(", ")}`);
  } finally {
    await gw.stop();
  }
});

test("METRICS_PORT: /metrics only on its own port, never on the one clients reach", async () => {
  // A port of its own per run (the Helm chart uses 9100).
  const port = 20000 + ((process.pid * 7) % 20000);
  const gw = await startGateway({ METRICS_PORT: String(port) });
  try {
    assert.match(gw.output(), new RegExp(`metrics on 127\\.0\\.0\\.1:${port}`));
    const onMain = await gw.http("/metrics");
    assert.deepEqual([onMain.status, onMain.json?.error?.code], [404, "not_found"], "not on the main port");
    const r = await fetch(`http://127.0.0.1:${port}/metrics`);
    assert.equal(r.status, 200);
    assert.match(await r.text(), /presence_online_users_by_gender/);
    assert.equal((await fetch(`http://127.0.0.1:${port}/api/health`)).status, 404, "nothing else there");
  } finally {
    await gw.stop();
  }
});
