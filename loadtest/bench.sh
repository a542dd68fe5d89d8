#!/usr/bin/env bash
# Reproducible benchmarks on this machine: builds release binaries, starts one gateway per
# scenario (memory engine, production mode with a fixed secret), runs loadgen against it,
# prints loadgen's JSON. Usage: loadtest/bench.sh [rules-fanout2|rules-subs20k|webhooks|idle5k|idle10k|floor10k|floor-fanout2|idle15k|fanout|fanout5|storm|storm-db|churn|redis-idle10k|redis-fanout|redis-fanout10k|redis-fanout10k-slow|redis-deaf10k-x5|search|report|all]
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --release --workspace -q
export JWT_SECRET=loadtest-secret-0123456789abcdef-0123
GW=${GW:-./target/release/presence-gateway}
LG=./target/release/loadgen
PORT=${PORT:-3300}

run() { # run <gateway env...> -- <loadgen args...>
  local envs=() ; while [ "$1" != "--" ]; do envs+=("$1"); shift; done; shift
  # The load generator is one identity per client, many clients per address, and queries the
  # API as fast as it can: the limits meant for the open internet are off here.
  env HTTP_RATE_LIMIT_PER_SEC=0 MAX_CONNECTIONS_PER_USER=0 HANDSHAKE_RATE_PER_IP=0 WIDGET_JOIN_RATE_PER_IP=0 "${envs[@]}" HOST=127.0.0.1 PORT=$PORT RUST_LOG=warn ${SERVER:-$GW} > /tmp/bench-gw.log 2>&1 &
  local pid=$!
  for _ in $(seq 1 100); do curl -sf "127.0.0.1:$PORT/healthz" >/dev/null && break; sleep 0.1; done
  $LG --target 127.0.0.1:$PORT --pids $pid --json "$@" || true
  kill -TERM $pid; wait $pid || true
}

REDIS_PORTS=${REDIS_PORTS:-6379}
# Commands Redis ran (all of REDIS_PORTS), and those of one command (`redis_calls spublish`).
redis_calls() {
  local p n=0
  for p in $REDIS_PORTS; do
    n=$(( n + $(redis-cli -p "$p" info commandstats | awk -F'[=,:]' -v c="cmdstat_${1:-}" '$1 ~ "^"c {n+=$3} END {print n+0}') ))
  done
  echo $n
}

# Three Redis-backed replicas; loadgen spreads clients over them. PEER=1: the Node peer
# (../shared/peers/node-presence, `npm ci` there once) instead, started the same way.
# PIN=1: the replicas and Redis on CPU 0, the load generator alone on CPU 1 (as if the clients
# were on another machine; the servers then share one core, whichever they are).
PEER_DIR=${PEER_DIR:-../shared/peers/node-presence}
SRV_CPU=() LG_CPU=()
if [ "${PIN:-0}" = 1 ]; then
  SRV_CPU=(taskset -c 0) LG_CPU=(taskset -c 1)
  for p in $REDIS_PORTS; do
    taskset -a -p -c 0 "$(redis-cli -p "$p" info server | awk -F: '/^process_id:/ {print $2+0}')" >/dev/null
  done
  trap 'for p in $REDIS_PORTS; do taskset -a -p -c 0-1 "$(redis-cli -p "$p" info server | awk -F: "/^process_id:/ {print \$2+0}")" >/dev/null; done' EXIT
fi
run3() { # run3 <loadgen args...>
  local pids=() targets=() run=$RANDOM  # a key prefix per run: no run sees another's users
  for i in 0 1 2; do
    if [ "${PEER:-0}" = 1 ]; then
      (cd "$PEER_DIR" && REDIS_URL=redis://127.0.0.1:6379 REDIS_KEY_PREFIX=peer$$-$run NODE_ID=peer-$i \
        APP_ENV=production RATE_LIMIT_PER_SEC=0 LOG_LEVEL=warn HOST=127.0.0.1 PORT=$((PORT + i)) \
        exec env ${EXTRA_ENV:-} "${SRV_CPU[@]}" node server.js) > /tmp/bench-peer$i.log 2>&1 &
    else
      env REDIS_URL=${BENCH_REDIS_URL:-redis://127.0.0.1:6379} REDIS_KEY_PREFIX=bench$$-$run NODE_ID=bench-$i RATE_LIMIT_PER_SEC=0 \
        HTTP_RATE_LIMIT_PER_SEC=0 MAX_CONNECTIONS_PER_USER=0 HANDSHAKE_RATE_PER_IP=0 WIDGET_JOIN_RATE_PER_IP=0 \
        HOST=127.0.0.1 PORT=$((PORT + i)) RUST_LOG=warn ${EXTRA_ENV:-} "${SRV_CPU[@]}" $GW > /tmp/bench-gw$i.log 2>&1 &
    fi
    pids+=($!); targets+=(127.0.0.1:$((PORT + i)))
  done
  for i in 0 1 2; do for _ in $(seq 1 100); do curl -sf "127.0.0.1:$((PORT + i))/readyz" >/dev/null && break; sleep 0.1; done; done
  local before before_cpu before_pub; before=$(redis_calls); before_cpu=$(redis_cpu)
  before_pub=$(( $(redis_calls publish) + $(redis_calls spublish) ))
  if [ "${LOADGENS:-1}" = 2 ]; then
    # Two load generators at once (one process holds about 19,000 sockets here), each its
    # own users; each reports the replicas' CPU over its own window.
    # Both start their changes together, once both have connected (about a minute here).
    local at=$(( $(date +%s%3N) + ${START_IN_MS:-75000} ))
    $LG --target "$(IFS=,; echo "${targets[*]}")" --pids "$(IFS=,; echo "${pids[*]}")" --prefix lgA --json "$@" --start-at-ms $at > /tmp/bench-lgA.json &
    local a=$!
    $LG --target "$(IFS=,; echo "${targets[*]}")" --pids "$(IFS=,; echo "${pids[*]}")" --prefix lgB --json "$@" --start-at-ms $at > /tmp/bench-lgB.json || true
    wait $a || true
    cat /tmp/bench-lgA.json /tmp/bench-lgB.json
  else
    "${LG_CPU[@]}" $LG --target "$(IFS=,; echo "${targets[*]}")" --pids "$(IFS=,; echo "${pids[*]}")" --json "$@" || true
  fi
  # BEFORE_STOP: a command run while the replicas still serve (the webhook scenario waits
  # there for the last events and reads the replicas' counters).
  ${BEFORE_STOP:-true}
  echo "{\"server\": \"$([ "${PEER:-0}" = 1 ] && echo node-presence || echo presence-gateway)\", \"redis_commands\": $(( $(redis_calls) - before )), \"redis_publishes\": $(( $(redis_calls publish) + $(redis_calls spublish) - before_pub )), \"redis_cpu_s\": $(awk -v a="$(redis_cpu)" -v b="$before_cpu" 'BEGIN {printf "%.3f", a - b}')}"
  kill -TERM "${pids[@]}"; wait "${pids[@]}" || true
}

# Redis's own CPU (user + system seconds, all of REDIS_PORTS), from INFO.
redis_cpu() {
  local p
  for p in $REDIS_PORTS; do redis-cli -p "$p" info cpu; done | awk -F: '/^used_cpu_(sys|user):/ {s+=$2} END {printf "%.3f", s}'
}

# side <loadgen args...>: the gateway and the Node peer, alternately, three times each, in one
# run (the machine's noise falls on both; BENCHMARKS.md quotes the medians).
# ROUNDS=n rounds instead of three; ONLY=gateway or ONLY=peer runs just that side (to try the
# instrument, not to compare). OLD_GW=<binary>: an earlier build of the gateway too, in each
# round ("presence-gateway (old)"), to show a change gave no ground (use six rounds or more:
# the same binary twice in a row differs by up to 10 % in one round).
side() {
  for r in $(seq 1 "${ROUNDS:-3}"); do
    # The old build first in odd rounds, second in even ones, so that neither always meets the
    # same minutes: the same binary under two labels differed by 13-15 % over three rounds here
    # (an A/A run, BENCHMARKS.md session 12).
    if [ -n "${OLD_GW:-}" ] && [ $((r % 2)) = 1 ]; then echo "round $r: presence-gateway (old)"; GW=$OLD_GW run3 "$@"; fi
    if [ "${ONLY:-gateway}" = gateway ]; then echo "round $r: presence-gateway"; run3 "$@"; fi
    if [ -n "${OLD_GW:-}" ] && [ $((r % 2)) = 0 ]; then echo "round $r: presence-gateway (old)"; GW=$OLD_GW run3 "$@"; fi
    if [ "${ONLY:-peer}" = peer ]; then echo "round $r: node-presence"; PEER=1 run3 "$@"; fi
  done
}

WEBHOOK_BENCH_SECRET=bench-webhook-secret-0123456789abcdef
# Until the receiver has had nothing new for 5 s (the offline delay is 3 s), then its figures
# and the changes the three replicas committed.
wait_webhooks() {
  local last=-1 now same=0
  while [ $same -lt 5 ]; do
    now=$(curl -sf 127.0.0.1:3399/summary | python3 -c 'import json,sys; print(json.load(sys.stdin)["events"])')
    if [ "$now" = "$last" ]; then same=$((same + 1)); else same=0; last=$now; fi
    sleep 1
  done
  local published=0 unsent=0 i m
  for i in 0 1 2; do
    m=$(curl -sf "127.0.0.1:$((PORT + i))/metrics")
    published=$(( published + $(awk '/^presence_updates_published_total/ {n+=$2} END {print n+0}' <<<"$m") ))
    unsent=$(( unsent + $(awk '/^webhook_changes_unsent_total/ {n+=$2} END {print n+0}' <<<"$m") ))
  done
  local x=""
  for c in xadd xreadgroup xack xdel xautoclaim xlen xtrim; do x="$x\"$c\": $(redis_calls $c), "; done
  echo "{\"webhook_receiver\": $(curl -sf 127.0.0.1:3399/summary), \"changes_committed\": $published, \"changes_unsent\": $unsent, \"redis_stream_commands\": {${x%, }}}"
}

# A throwaway 3-master Redis Cluster on 7101-7103.
cluster_up() {
  local d; d=$(mktemp -d)
  for p in 7101 7102 7103; do
    redis-server --port $p --bind 127.0.0.1 --cluster-enabled yes --cluster-config-file nodes-$p.conf \
      --dir "$d" --save "" --appendonly no --daemonize yes --logfile "$d/$p.log"
  done
  for p in 7101 7102 7103; do for _ in $(seq 1 50); do redis-cli -p $p ping >/dev/null 2>&1 && break; sleep 0.1; done; done
  redis-cli --cluster create 127.0.0.1:7101 127.0.0.1:7102 127.0.0.1:7103 --cluster-replicas 0 --cluster-yes >/dev/null
  for _ in $(seq 1 100); do redis-cli -p 7101 cluster info | grep -q cluster_state:ok && break; sleep 0.1; done
}
cluster_down() { for p in 7101 7102 7103; do redis-cli -p $p shutdown nosave >/dev/null 2>&1 || true; done; }

# How the load generator reads its viewers in issue 24's scenarios (`loadgen fanout --help`):
# READERS threads, NAP_US between looks in a burst, STAMP=kernel (arrival at the socket) or read.
READING=(--readers "${READERS:-1}" --nap-us "${NAP_US:-500}" --stamp "${STAMP:-kernel}")

PGURL=${BENCH_DATABASE_URL:-postgres://postgres@127.0.0.1:5432}

# seeded <database> <table> <seed.sql>: a migrated database whose <table> holds at least
# 1,000,000 rows, seeded once and kept for later runs. A migration edited since the last run
# is re-applied (they are idempotent) rather than refused.
seeded() {
  local db=$1 table=$2 seed=$3
  psql "$PGURL/postgres" -tAc "select 1 from pg_database where datname='$db'" | grep -q 1 \
    || psql "$PGURL/postgres" -qc "create database $db"
  DATABASE_URL=$PGURL/$db $GW migrate \
    || { psql "$PGURL/$db" -qc "delete from _sqlx_migrations" && DATABASE_URL=$PGURL/$db $GW migrate \
         && psql "$PGURL/$db" -qc "VACUUM (ANALYZE)"; }
  if [ "$(psql "$PGURL/$db" -tAc "select count(*) from $table")" -lt 1000000 ]; then
    echo "seeding $db from $seed (a few minutes)..." >&2
    time psql "$PGURL/$db" -q -f "$seed"
  fi
}

case "${1:-all}" in
  idle5k|all)   run X=1 -- idle --clients 5000 --heartbeat-ms 5000 --hold-s 30 ;;&
  idle10k|all)  run X=1 -- idle --clients 10000 --heartbeat-ms 5000 --hold-s 30 ;;&
  # The same clients on a bare socketioxide server with the gateway's Socket.IO settings
  # (examples/socketioxide_floor.rs): the library's own memory per connection.
  floor10k|all) cargo build --release --example socketioxide_floor -q
    SERVER=./target/release/examples/socketioxide_floor run X=1 -- idle --clients 10000 --heartbeat-ms 5000 --hold-s 30 ;;&
  idle15k|all)  run X=1 -- --procs 2 idle --clients 15000 --heartbeat-ms 5000 --hold-s 30 ;;&
  fanout|all)   run RATE_LIMIT_PER_SEC=0 -- fanout --viewers 5000 --changers 20 --rate 20 --duration-s 30 ;;&
  fanout5|all)  run RATE_LIMIT_PER_SEC=0 -- fanout --viewers 5000 --changers 10 --rate 5 --duration-s 30 ;;&
  storm|all)    run X=1 -- --procs 2 storm --clients 10000 ;;&
  churn|all)    run X=1 -- churn --clients 300 --viewers 50 --duration-s 30 ;;&
  storm-db|all) # the storm with PostgreSQL: until every connect is stored by the writer
    psql "$PGURL/postgres" -qc "drop database if exists pgw_bench_storm" -c "create database pgw_bench_storm"
    DATABASE_URL=$PGURL/pgw_bench_storm $GW migrate
    run DATABASE_URL=$PGURL/pgw_bench_storm -- --procs 2 storm --clients 10000
    psql "$PGURL/pgw_bench_storm" -tAc "select 'rows in user_presence: ' || count(*) || ', online: ' || count(*) filter (where online) from user_presence" ;;&
  redis-idle10k|all) run3 --redis 127.0.0.1:6379 idle --clients 10000 --heartbeat-ms 5000 --hold-s 30 ;;&
  redis-fanout|all)  run3 fanout --viewers 5000 --changers 20 --rate 20 --duration-s 30 ;;&
  redis-fanout10k|all) run3 fanout --viewers 10000 --changers 10 --rate 10 --duration-s 30 ;;&
  # Issue 13's deaf-viewer scenario, five times in a row: every viewer connected throughout
  # must receive all 300 changes (viewers_connected_but_deaf and missing 0 in each run).
  redis-deaf10k-x5) for i in 1 2 3 4 5; do echo "run $i"; run3 fanout --viewers 10000 --changers 20 --rate 10 --duration-s 30; done ;;&
  # The same viewers at a fifth of the rate: how long one change takes to reach 10,000
  # sockets when the machine is not saturated.
  redis-fanout10k-slow|all) run3 fanout --viewers 10000 --changers 2 --rate 2 --duration-s 30 ;;&
  # Issue 15: beside the Node peer, three replicas on Redis, 10,000 viewers, unsaturated (2
  # changes/s) and at 10 changes/s.
  peer-fanout2) side fanout --viewers 10000 --changers 2 --rate 2 --duration-s 30 ;;&
  # Issue 26: peer-fanout2's scenario on our three replicas with section 11's load and without,
  # alternately: every viewer and changer holding 50 blocks, 1 % of the viewers invisible, and
  # a blocked user connected on each replica (so every delivery is checked against a block
  # list); the same deliveries are expected. Then the cost of block checks at 10,000 blocks.
  # The two alternate which goes first, round by round (neither always meets the same minutes).
  rules-fanout2) for r in $(seq 1 "${ROUNDS:-3}"); do
      for which in $( [ $((r % 2)) = 1 ] && echo "none rules" || echo "rules none"); do
        if [ "$which" = none ]; then echo "round $r: no rules"; run3 fanout --viewers 10000 --changers 2 --rate "${RATE:-2}" --duration-s 30
        else echo "round $r: 50 blocks each, 1 % invisible"; run3 fanout --viewers 10000 --changers 2 --rate "${RATE:-2}" --duration-s 30 --rules-blocks 50 --rules-invisible-pct 1; fi
      done; done
    cargo build --release --example block_checks -q && ./target/release/examples/block_checks ;;&
  # The floor beside the peer: examples/write_floor.rs, one process that does nothing but one
  # write per socket per change (both cores writing), against the Node peer, three rounds.
  floor-fanout2) cargo build --release --example write_floor -q
    for r in 1 2 3; do
      echo "round $r: write floor"; SERVER=./target/release/examples/write_floor run X=1 -- fanout --viewers 10000 --changers 2 --rate 2 --duration-s 30
      echo '{"server": "write-floor"}'
      echo "round $r: node-presence"; PEER=1 run3 fanout --viewers 10000 --changers 2 --rate 2 --duration-s 30; done ;;&
  # The same floor in issue 24's scenario, read by the load generator's readers (a floor found
  # with the task-per-socket reader was the reader's own); ONLY=floor skips the peer.
  floor-fanout2x20) cargo build --release --example write_floor -q
    for r in $(seq 1 "${ROUNDS:-3}"); do
      echo "round $r: write floor"; SERVER=./target/release/examples/write_floor run X=1 -- fanout --viewers 10000 --changers 20 --rate 2 --duration-s 30 "${READING[@]}"
      echo '{"server": "write-floor"}'
      if [ "${ONLY:-peer}" = peer ]; then echo "round $r: node-presence"; PEER=1 run3 fanout --viewers 10000 --changers 20 --rate 2 --duration-s 30 "${READING[@]}"; fi; done ;;&
  # Issue 24's scenario (the independent load generator's): 20 changers, 2 changes/s in all.
  # READERS=0 reads the viewers with one task each (the instrument before session 10).
  peer-fanout2x20) side fanout --viewers 10000 --changers 20 --rate 2 --duration-s 30 "${READING[@]}" ;;&
  peer-fanout10) side fanout --viewers 10000 --changers 10 --rate 10 --duration-s 30 ;;&
  # The same with batch:true beside the peer, both at their default batch period (100 ms).
  peer-batch10) side fanout --batch --viewers 10000 --changers 10 --rate 10 --duration-s 30 ;;&
  # The same at 10 changes/s with batch:true, batches of 100 ms (the default) and of 1 s,
  # each round beside the same without batching (what the CPU per update is compared with).
  batch10) for r in 1 2 3; do echo "round $r: no batching"
      run3 fanout --viewers 10000 --changers 10 --rate 10 --duration-s 30
      for ms in 100 1000; do echo "round $r: PRESENCE_BATCH_MS=$ms"
      EXTRA_ENV="PRESENCE_BATCH_MS=$ms" run3 fanout --batch --viewers 10000 --changers 10 --rate 10 --duration-s 30; done; done ;;&
  # Subscriptions: 20,000 clients over three replicas (two load generators of 10,000), each
  # subscribed to 50 others, 200 changes/s in all; beside the peer.
  subs20k) for r in 1 2 3; do
      echo "round $r: presence-gateway"; LOADGENS=2 run3 subs --subscribers 10000 --per 50 --rate 100 --duration-s 30
      echo "round $r: node-presence"; PEER=1 LOADGENS=2 run3 subs --subscribers 10000 --per 50 --rate 100 --duration-s 30; done ;;&
  # Issue 26: the same with section 11's load (each user blocks 50: the connected blocker of
  # each replica, then users who never connect; 1 % invisible, whose changes then reach
  # nobody), each round beside the same run without it. The two load generators start their
  # changes together once both set up their rules and the replicas are quiet again.
  rules-subs20k) for r in $(seq 1 "${ROUNDS:-3}"); do
      for which in $( [ $((r % 2)) = 1 ] && echo "none rules" || echo "rules none"); do
        if [ "$which" = none ]; then echo "round $r: no rules"; LOADGENS=2 run3 subs --subscribers 10000 --per 50 --rate 100 --duration-s 30
        else echo "round $r: 50 blocks each, 1 % invisible"; START_IN_MS=${RULES_START_IN_MS:-300000} LOADGENS=2 run3 subs --subscribers 10000 --per 50 --rate 100 --duration-s 30 --rules-blocks 50 --rules-invisible-pct 1; fi
      done; done ;;&
  # Cost follows what is watched: the same 5,000 watching clients and change rate, alone and
  # with 15,000 more sockets that watch users who never change (heartbeats every 60 s, so
  # their idle cost stays out of the figure).
  # The bus: Redis commands, publishes and CPU per change, standalone and on a 3-master
  # cluster started here (ports 7101-7103), with 5,000 subscription clients at 200 changes/s.
  bus) for r in 1 2 3; do
      # Each at 200 changes/s and with no change at all: the difference is what the changes
      # cost Redis (connects, subscriptions and heartbeats are in both).
      for rate in 200 0; do
        echo "round $r: standalone, $rate changes/s"; run3 subs --subscribers 5000 --per 50 --rate $rate --duration-s 20
        cluster_up
        echo "round $r: cluster, $rate changes/s"; REDIS_PORTS="7101 7102 7103" BENCH_REDIS_URL="redis-cluster://127.0.0.1:7101?node=127.0.0.1:7102&node=127.0.0.1:7103" \
          run3 subs --subscribers 5000 --per 50 --rate $rate --duration-s 20
        cluster_down
      done; done ;;&
  # Each also with no change at all over the same window: the difference is what the changes
  # cost, apart from what the connected sockets cost anyway (pings, heartbeats).
  subs-cost) for r in 1 2 3; do for rate in 100 0; do
      echo "round $r: 5,000 online, $rate changes/s"; EXTRA_ENV="PRESENCE_HEARTBEAT_TIMEOUT_MS=120000" run3 subs --subscribers 5000 --per 50 --rate $rate --duration-s 20 --heartbeat-ms 60000
      echo "round $r: 20,000 online, $rate changes/s"; EXTRA_ENV="PRESENCE_HEARTBEAT_TIMEOUT_MS=120000" LOADGENS=2 run3 subs --subscribers 10000 --watching 2500 --per 50 --rate $((rate / 2)) --duration-s 20 --heartbeat-ms 60000; done; done ;;&
  # Issue 27: webhooks at the subscription benchmark's change rate (200 changes/s over 20,000
  # sockets on three Redis replicas), on and off alternately. The receiver
  # (loadtest/webhook-receiver.mjs) counts what arrives and when; before the replicas stop,
  # wait_webhooks waits until nothing more arrives and prints it with the changes the replicas
  # committed (presence_updates_published_total), which must all have arrived.
  # The changes start 90 s after launch in both (75 s elsewhere): the 20,000 onlines of the
  # connections are sent by then, so the CPU window holds the 200 changes/s alone.
  webhooks) export START_IN_MS=${START_IN_MS:-90000}; for r in $(seq 1 "${ROUNDS:-3}"); do
      echo "round $r: webhooks off"; LOADGENS=2 run3 subs --subscribers 10000 --per 50 --rate 100 --duration-s 30
      node loadtest/webhook-receiver.mjs 3399 "$WEBHOOK_BENCH_SECRET" & recv=$!
      redis-cli config resetstat >/dev/null  # the stream commands below are this round's
      echo "round $r: webhooks on"; EXTRA_ENV="WEBHOOK_URL=http://127.0.0.1:3399/hook WEBHOOK_SECRET=$WEBHOOK_BENCH_SECRET" \
        BEFORE_STOP=wait_webhooks LOADGENS=2 run3 subs --subscribers 10000 --per 50 --rate 100 --duration-s 30
      kill $recv; wait $recv 2>/dev/null || true
    done ;;&
  search|all)
    seeded pgw_bench_search users loadtest/seed-users.sql
    run DATABASE_URL=$PGURL/pgw_bench_search -- search --rounds 100 ;;&
  report|all)
    seeded pgw_bench_stats stats_events loadtest/seed-messages.sql
    run DATABASE_URL=$PGURL/pgw_bench_stats -- report --rounds 20 \
      --windows "2026-11-15T00:00:00Z,2026-11-22T00:00:00Z;2026-11-21T00:00:00Z,2026-11-22T00:00:00Z" ;;&
  *) ;;
esac
