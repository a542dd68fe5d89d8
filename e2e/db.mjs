// PostgreSQL for end-to-end tests, through the psql client: a fresh database per test on the
// server the test command ensures, or a whole server of a test's own that it may stop.
import { execFileSync, spawnSync } from "node:child_process";
import { mkdtempSync, chmodSync, readdirSync } from "node:fs";
import os from "node:os";
import path from "node:path";

export const PG_SERVER = process.env.TEST_DATABASE_URL ?? "postgres://postgres@127.0.0.1:5432";

let n = 0;
/** A new, empty database on the shared server; returns its URL. */
export function freshDatabase(server = PG_SERVER) {
  const name = `pgw_e2e_${process.pid}_${Date.now() % 1e9}_${++n}`;
  psql(`${server}/postgres`, `CREATE DATABASE ${name}`);
  return `${server}/${name}`;
}

/** Run SQL; returns the rows as arrays of strings (psql's unaligned output). */
export function psql(url, sql) {
  const out = execFileSync("psql", [url, "-v", "ON_ERROR_STOP=1", "-tAF", "\t", "-c", sql], {
    stdio: ["ignore", "pipe", "pipe"],
  }).toString();
  return out
    .split("\n")
    .filter((l) => l.length > 0)
    .map((l) => l.split("\t"));
}

/** The stored presence of a user: {status, online, version, lastSeen} or null. */
export function storedPresence(url, userId) {
  const rows = psql(
    url,
    `SELECT status, online, version, floor(extract(epoch FROM last_seen) * 1000)::int8 FROM user_presence WHERE user_id = '${userId.replace(/'/g, "''")}'`,
  );
  if (rows.length === 0) return null;
  const [status, online, version, lastSeen] = rows[0];
  return { status, online: online === "t", version: Number(version), lastSeenMs: lastSeen ? Number(lastSeen) : null };
}

function pgBin(tool) {
  const versions = readdirSync("/usr/lib/postgresql").sort((a, b) => Number(b) - Number(a));
  return path.join("/usr/lib/postgresql", versions[0], "bin", tool);
}

/**
 * A PostgreSQL server of the test's own, on its own port, that the test may stop and start.
 * PostgreSQL refuses to run as root, so as root it runs as the `postgres` user.
 */
export function ownPostgres(port) {
  const dir = mkdtempSync(path.join(os.tmpdir(), "pgw-pg-"));
  chmodSync(dir, 0o777);
  const data = path.join(dir, "data");
  const asPg = (tool, args) => {
    const cmd = pgBin(tool);
    const r =
      process.getuid?.() === 0
        ? spawnSync("runuser", ["-u", "postgres", "--", cmd, ...args], { encoding: "utf8" })
        : spawnSync(cmd, args, { encoding: "utf8" });
    if (r.status !== 0) throw new Error(`${tool} failed: ${r.stderr || r.stdout}`);
  };
  asPg("initdb", ["-D", data, "-A", "trust", "-U", "postgres", "--no-sync"]);
  const opts = `-p ${port} -k ${dir} -c listen_addresses=127.0.0.1 -c fsync=off`;
  const server = `postgres://postgres@127.0.0.1:${port}`;
  return {
    server,
    start: () => asPg("pg_ctl", ["-D", data, "-o", opts, "-l", path.join(dir, "log"), "-w", "start"]),
    stop: () => asPg("pg_ctl", ["-D", data, "-m", "fast", "-w", "stop"]),
    /** Stop if running; for cleanup. */
    destroy: () => {
      try {
        asPg("pg_ctl", ["-D", data, "-m", "immediate", "-w", "stop"]);
      } catch {}
    },
  };
}
