#!/usr/bin/env bash
# Delivery under faults: three replicas (separate processes) on a Redis of their own, and
# `loadgen audit` for SECS seconds while a fault schedule runs: kill -9 of a replica (back 5 s
# later), a rolling SIGTERM restart of all three, Redis restarted empty, Redis paused 5 s, and
# another kill -9. With CLUSTER=1 Redis is a cluster of 3 masters + 3 replicas, and the Redis
# faults are a master killed (its replica promoted, the old master back as a replica) and a
# master paused past the cluster's node timeout. Prints the schedule as it runs and loadgen's
# JSON; exits 1 if any anomaly was counted (2 if the set-up failed).
#
# Usage: loadtest/audit.sh [SECS]   (default 600)
#   VIEWERS=3000 CHANGERS=100 RATE=10   loadgen audit's --viewers, --changers, --rate
#   DEV=1        debug builds (target/debug) instead of release;  BUILD=0 uses the binaries as they are
#   CLUSTER=1    Redis Cluster on CLUSTER_PORT..+5 (default 7201-7206)
#   FAULTS=0     no faults (the same audit on a quiet cluster)
#   PORT=3400    replicas on PORT, PORT+1, PORT+2;  REDIS_PORT=6390 the standalone Redis
#   EXTRA_ENV="K=V …" more replica settings;  LOADGEN_ARGS="…" more loadgen audit options
# The Redis (or the cluster) is started here and stopped at the end: the faults restart it
# empty, so it must not be one other tests use. Logs stay in the directory printed first.
set -euo pipefail
cd "$(dirname "$0")/.."
SECS=${1:-${SECS:-600}}
VIEWERS=${VIEWERS:-3000} CHANGERS=${CHANGERS:-100} RATE=${RATE:-10}
PORT=${PORT:-3400} REDIS_PORT=${REDIS_PORT:-6390} CLUSTER_PORT=${CLUSTER_PORT:-7201}
export JWT_SECRET=${JWT_SECRET:-loadtest-secret-0123456789abcdef-0123}
if [ "${DEV:-0}" = 1 ]; then
  [ "${BUILD:-1}" = 0 ] || { cargo build -q --bin presence-gateway && cargo build -q -p loadgen; }
  GW=./target/debug/presence-gateway LG=./target/debug/loadgen
else
  [ "${BUILD:-1}" = 0 ] || { cargo build -q --release --bin presence-gateway && cargo build -q --release -p loadgen; }
  GW=./target/release/presence-gateway LG=./target/release/loadgen
fi
WORK=$(mktemp -d /tmp/audit.XXXXXX)
FLOG=$WORK/faults.log
: > "$FLOG"
echo "audit: logs in $WORK" >&2
T0=$(date +%s%3N)

# A fault (or its end), logged for loadgen (`<epoch ms> <what>`) and printed.
fault() {
  local ms; ms=$(date +%s%3N)
  echo "$ms $*" >> "$FLOG"
  printf 'audit: %7.1f s  %s\n' "$(awk -v a="$ms" -v b="$T0" 'BEGIN {print (a - b) / 1000}')" "$*" >&2
}
wait_for() { # wait_for <tries of 0.1 s> <command…>
  local n=$1; shift
  for _ in $(seq 1 "$n"); do "$@" >/dev/null 2>&1 && return 0; sleep 0.1; done
  return 1
}

# Redis: standalone, or a 3 + 3 cluster.
REDIS_PORTS=()
redis_start() { # redis_start <port> [cluster options…]
  local p=$1; shift
  mkdir -p "$WORK/redis-$p"
  redis-server --port "$p" --bind 127.0.0.1 --save "" --appendonly no --daemonize yes \
    --dir "$WORK/redis-$p" --logfile "$WORK/redis-$p/log" --pidfile "$WORK/redis-$p/pid" "$@"
  wait_for 100 redis-cli -p "$p" ping
}
redis_pid() { cat "$WORK/redis-$1/pid"; }
CLUSTER_OPTS=(--cluster-enabled yes --cluster-config-file nodes.conf --cluster-node-timeout 2000)
if [ "${CLUSTER:-0}" = 1 ]; then
  for i in 0 1 2 3 4 5; do REDIS_PORTS+=($((CLUSTER_PORT + i))); done
else
  REDIS_PORTS=("$REDIS_PORT")
fi
for p in "${REDIS_PORTS[@]}"; do
  if redis-cli -p "$p" ping >/dev/null 2>&1; then
    echo "audit: something already answers on port $p; this script restarts its Redis empty, so it wants the port to itself" >&2
    exit 2
  fi
done
for p in "$PORT" $((PORT + 1)) $((PORT + 2)); do
  if (exec 3<>"/dev/tcp/127.0.0.1/$p") 2>/dev/null; then
    echo "audit: port $p is taken (PORT=… moves the replicas)" >&2
    exit 2
  fi
done

PIDS=(0 0 0)
cleanup() {
  for pid in "${PIDS[@]}"; do [ "$pid" != 0 ] && kill -TERM "$pid" 2>/dev/null || true; done
  [ -n "${LGPID:-}" ] && kill -TERM "$LGPID" 2>/dev/null || true
  for p in "${REDIS_PORTS[@]}"; do
    kill -CONT "$(redis_pid "$p" 2>/dev/null)" 2>/dev/null || true
    redis-cli -p "$p" shutdown nosave >/dev/null 2>&1 || true
  done
  wait 2>/dev/null || true
}
trap cleanup EXIT

if [ "${CLUSTER:-0}" = 1 ]; then
  for p in "${REDIS_PORTS[@]}"; do redis_start "$p" "${CLUSTER_OPTS[@]}"; done
  redis-cli --cluster create $(for p in "${REDIS_PORTS[@]}"; do printf '127.0.0.1:%s ' "$p"; done) \
    --cluster-replicas 1 --cluster-yes > "$WORK/cluster-create.log"
  cluster_ok() { redis-cli -p "$1" cluster info | grep -q cluster_state:ok; }
  wait_for 300 cluster_ok "$CLUSTER_PORT" || { echo "audit: the cluster did not form" >&2; exit 2; }
  REDIS_URL="redis-cluster://127.0.0.1:$CLUSTER_PORT$(for p in "${REDIS_PORTS[@]:1}"; do printf '%snode=127.0.0.1:%s' "$([ "$p" = $((CLUSTER_PORT + 1)) ] && echo '?' || echo '&')" "$p"; done)"
else
  redis_start "$REDIS_PORT"
  REDIS_URL=redis://127.0.0.1:$REDIS_PORT
fi

# Replicas: the load generator's limits off (one identity per client, many clients per
# address), fast sweeps so that a killed replica's users settle within the audit's drain.
replica_start() { # replica_start <i>
  local i=$1
  env REDIS_URL="$REDIS_URL" REDIS_KEY_PREFIX=audit$$ NODE_ID=audit-$i \
    RATE_LIMIT_PER_SEC=0 HTTP_RATE_LIMIT_PER_SEC=0 MAX_CONNECTIONS_PER_USER=0 HANDSHAKE_RATE_PER_IP=0 \
    PRESENCE_HEARTBEAT_TIMEOUT_MS=10000 PRESENCE_SWEEP_INTERVAL_MS=2000 PRESENCE_SHUTDOWN_GRACE_MS=3000 \
    HOST=127.0.0.1 PORT=$((PORT + i)) RUST_LOG=${RUST_LOG:-warn,presence_gateway::gateway::fanout=info} \
    ${EXTRA_ENV:-} "$GW" >> "$WORK/gw$i.log" 2>&1 &
  PIDS[$i]=$!
}
replica_ready() { wait_for 300 curl -sf "127.0.0.1:$((PORT + $1))/readyz"; }
for i in 0 1 2; do replica_start $i; done
for i in 0 1 2; do replica_ready $i || { echo "audit: replica $i not ready (see $WORK/gw$i.log)" >&2; exit 2; }; done

# The faults.
kill9() { # kill9 <i>: kill -9, back 5 s later
  fault "kill -9 replica $1 (:$((PORT + $1)))"
  kill -9 "${PIDS[$1]}" 2>/dev/null || true; wait "${PIDS[$1]}" 2>/dev/null || true
  sleep 5
  replica_start "$1"; replica_ready "$1" || true
  fault "replica $1 back"
}
rolling() { # SIGTERM each replica in turn; each back before the next goes
  for i in 0 1 2; do
    fault "SIGTERM replica $i (rolling restart)"
    kill -TERM "${PIDS[$i]}" 2>/dev/null || true; wait "${PIDS[$i]}" 2>/dev/null || true
    replica_start "$i"; replica_ready "$i" || true
    fault "replica $i back"
    sleep 5
  done
}
redis_empty() {
  fault "Redis shutdown nosave (restarts empty)"
  redis-cli -p "$REDIS_PORT" shutdown nosave >/dev/null 2>&1 || true
  sleep 2
  redis_start "$REDIS_PORT"
  fault "Redis back, empty"
}
redis_pause() {
  local pid; pid=$(redis_pid "$REDIS_PORT")
  fault "Redis SIGSTOP (5 s)"
  kill -STOP "$pid" || true; sleep 5; kill -CONT "$pid" || true
  fault "Redis SIGCONT"
}
# The port of the master serving slot 0, as the first live node that answers sees it.
master_of_slot0() {
  local p m
  for p in "${REDIS_PORTS[@]}"; do
    m=$(redis-cli -p "$p" cluster nodes 2>/dev/null | awk '$3 ~ /master/ && $3 !~ /fail/ {
      for (i = 9; i <= NF; i++) if ($i ~ /^0(-|$)/) { split($2, a, "[:@]"); print a[2]; exit } }')
    [ -n "$m" ] && { echo "$m"; return 0; }
  done
  return 1
}
cluster_failover() { # kill -9 a master; its replica takes over; the old master comes back as a replica
  local p; p=$(master_of_slot0)
  fault "kill -9 Redis Cluster master :$p"
  kill -9 "$(redis_pid "$p")" || true
  local other; for other in "${REDIS_PORTS[@]}"; do [ "$other" != "$p" ] && break; done
  promoted() { local m; m=$(master_of_slot0) && [ "$m" != "$p" ] && redis-cli -p "$other" cluster info | grep -q cluster_state:ok; }
  wait_for 300 promoted && fault "replica promoted (slot 0 now on :$(master_of_slot0))" || fault "no promotion within 30 s"
  sleep 10
  redis_start "$p" "${CLUSTER_OPTS[@]}"
  fault "old master :$p back (a replica now)"
}
cluster_pause() { # a master silent past the node timeout: failed over, then back as a replica
  local p; p=$(master_of_slot0)
  fault "Redis Cluster master :$p SIGSTOP (5 s)"
  kill -STOP "$(redis_pid "$p")" || true; sleep 5; kill -CONT "$(redis_pid "$p")" || true
  fault "master :$p SIGCONT"
}

"$LG" --target "127.0.0.1:$PORT,127.0.0.1:$((PORT + 1)),127.0.0.1:$((PORT + 2))" --json audit \
  --viewers "$VIEWERS" --changers "$CHANGERS" --rate "$RATE" --secs "$SECS" --fault-log "$FLOG" \
  ${LOADGEN_ARGS:-} > "$WORK/loadgen.json" 2> "$WORK/loadgen.err" &
LGPID=$!
# The schedule counts from the first change (once every viewer connected).
for _ in $(seq 1 6000); do
  grep -q "changes start" "$WORK/loadgen.err" 2>/dev/null && break
  kill -0 "$LGPID" 2>/dev/null || break
  sleep 0.1
done
cat "$WORK/loadgen.err" >&2
TC=$(date +%s%3N)
at() { # at <fraction of SECS, in percent>: sleep until then; false if loadgen is gone
  local until=$(( TC + SECS * 10 * $1 ))
  while [ "$(date +%s%3N)" -lt "$until" ]; do kill -0 "$LGPID" 2>/dev/null || return 1; sleep 0.2; done
}
if [ "${FAULTS:-1}" = 1 ]; then
  if [ "${CLUSTER:-0}" = 1 ]; then
    at 10 && kill9 1
    at 25 && rolling
    at 45 && cluster_failover
    at 60 && cluster_pause
    at 75 && kill9 2
  else
    at 10 && kill9 1
    at 25 && rolling
    at 45 && redis_empty
    at 60 && redis_pause
    at 75 && kill9 2
  fi
fi
wait "$LGPID" || true
LGPID=
tail -n +2 "$WORK/loadgen.err" >&2 || true
cat "$WORK/loadgen.json"
total=$(jq -r '.anomalies_total // "none"' "$WORK/loadgen.json" 2>/dev/null || echo none)
if [ "$total" = none ]; then
  echo "audit: loadgen gave no report (see $WORK)" >&2
  exit 2
fi
echo "audit: anomalies $(jq -c .anomalies "$WORK/loadgen.json"); logs in $WORK" >&2
[ "$total" = 0 ]
