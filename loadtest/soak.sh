#!/usr/bin/env bash
# Soak: churn (clients connecting, holding 0.2-1.5 s, leaving, again) over three replicas on a
# Redis of their own, with each replica's RSS sampled every SAMPLE_S seconds. The question it
# answers: does memory level off under churn, or does something grow with every connection?
#
# Usage: loadtest/soak.sh [SECONDS (default 1800)]
# Env: CLIENTS (1000), VIEWERS (50), SAMPLE_S (30), PORT (3500), REDIS_PORT (6391).
# Prints one line per sample (elapsed s, each replica's RSS in MiB), then loadgen's churn JSON,
# then per replica: RSS at the first sample after the clients arrived, at the end, and the
# growth per minute over the first and the last third of the run.
set -euo pipefail
cd "$(dirname "$0")/.."
SECS=${1:-1800}
CLIENTS=${CLIENTS:-1000} VIEWERS=${VIEWERS:-50} SAMPLE_S=${SAMPLE_S:-30}
PORT=${PORT:-3500} REDIS_PORT=${REDIS_PORT:-6391}
export JWT_SECRET=loadtest-secret-0123456789abcdef-0123
cargo build --release --workspace -q
GW=./target/release/presence-gateway LG=./target/release/loadgen
work=$(mktemp -d /tmp/soak.XXXXXX)

redis-server --port "$REDIS_PORT" --bind 127.0.0.1 --save "" --appendonly no --daemonize yes \
  --logfile "$work/redis.log" --pidfile "$work/redis.pid" >/dev/null
pids=()
cleanup() {
  for p in "${pids[@]}"; do kill -TERM "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
  redis-cli -p "$REDIS_PORT" shutdown nosave >/dev/null 2>&1 || true
}
trap cleanup EXIT
for _ in $(seq 1 50); do redis-cli -p "$REDIS_PORT" ping >/dev/null 2>&1 && break; sleep 0.1; done

targets=()
for i in 0 1 2; do
  env REDIS_URL=redis://127.0.0.1:$REDIS_PORT REDIS_KEY_PREFIX=soak$$ NODE_ID=soak-$i \
    RATE_LIMIT_PER_SEC=0 HTTP_RATE_LIMIT_PER_SEC=0 MAX_CONNECTIONS_PER_USER=0 HANDSHAKE_RATE_PER_IP=0 \
    HOST=127.0.0.1 PORT=$((PORT + i)) RUST_LOG=warn $GW > "$work/gw$i.log" 2>&1 &
  pids+=($!) targets+=(127.0.0.1:$((PORT + i)))
done
for i in 0 1 2; do
  for _ in $(seq 1 100); do curl -sf "127.0.0.1:$((PORT + i))/healthz" >/dev/null && break; sleep 0.1; done
done

rss_mib() { awk '/^VmRSS:/ {printf "%.1f", $2 / 1024}' "/proc/$1/status"; }
(
  start=$(date +%s)
  while sleep "$SAMPLE_S"; do
    line="$(( $(date +%s) - start ))"
    for p in "${pids[@]}"; do line+=" $(rss_mib "$p")"; done
    echo "$line"
  done
) > "$work/rss.txt" &
sampler=$!

$LG --target "$(IFS=,; echo "${targets[*]}")" --json churn --clients "$CLIENTS" --viewers "$VIEWERS" \
  --duration-s "$SECS" > "$work/churn.json" || true
kill "$sampler" 2>/dev/null || true

echo "elapsed_s rss_mib_replica0 rss_mib_replica1 rss_mib_replica2"
cat "$work/rss.txt"
cat "$work/churn.json"
python3 - "$work/rss.txt" <<'EOF'
import sys
rows = [list(map(float, l.split())) for l in open(sys.argv[1]) if l.strip()]
if len(rows) < 6:
    sys.exit("too few samples")
third = len(rows) // 3
for r in range(1, len(rows[0])):
    first, last = rows[0], rows[-1]
    def slope(a, b):
        return (b[r] - a[r]) / ((b[0] - a[0]) / 60)
    print(f"replica {r - 1}: {first[r]:.1f} MiB at {first[0]:.0f} s, {last[r]:.1f} MiB at {last[0]:.0f} s; "
          f"growth {slope(rows[0], rows[third]):+.3f} MiB/min over the first third, "
          f"{slope(rows[-third - 1], rows[-1]):+.3f} MiB/min over the last")
EOF
