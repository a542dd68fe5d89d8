# Bring up the services the tests need when none is running. Sourced by scripts/test.sh.
# Each function is idempotent: a service that already answers is left alone.

have() { command -v "$1" >/dev/null 2>&1; }

apt_install() {
  if [ "$(id -u)" = 0 ]; then
    DEBIAN_FRONTEND=noninteractive apt-get update -qq >/dev/null
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$@" >/dev/null
  else
    echo "need root to install $*" >&2
    return 1
  fi
}

ensure_node() {
  have node && have npm && return 0
  echo "==> installing Node.js"
  apt_install nodejs npm
}

# The console's browser tests drive Debian's Chromium (puppeteer-core, no downloaded browser).
ensure_chromium() {
  have chromium && return 0
  echo "==> installing Chromium (Debian's, for the console's browser tests)"
  apt_install chromium
}

redis_up() { redis-cli -h 127.0.0.1 -p "${1:-6379}" ping 2>/dev/null | grep -q PONG; }

ensure_redis() {
  redis_up && return 0
  have redis-server || { echo "==> installing Redis"; apt_install redis-server redis-tools; }
  echo "==> starting Redis on 127.0.0.1:6379"
  mkdir -p /tmp/pg-test-redis
  redis-server --daemonize yes --bind 127.0.0.1 --port 6379 --save "" --appendonly no \
    --dir /tmp/pg-test-redis --logfile /tmp/pg-test-redis/redis.log
  for _ in $(seq 1 100); do redis_up && return 0; sleep 0.1; done
  echo "Redis did not start" >&2
  return 1
}

pg_up() { pg_isready -h 127.0.0.1 -p 5432 -q 2>/dev/null; }

ensure_postgres() {
  pg_up && return 0
  if ! ls /etc/postgresql/*/main >/dev/null 2>&1; then
    echo "==> installing PostgreSQL"
    apt_install postgresql postgresql-contrib
  fi
  echo "==> starting PostgreSQL"
  local v
  v=$(ls /etc/postgresql | sort -V | tail -n 1)
  pg_ctlcluster --skip-systemctl-redirect "$v" main start || true
  for _ in $(seq 1 100); do pg_up && break; sleep 0.2; done
  pg_up || { echo "PostgreSQL did not start" >&2; return 1; }
  # Tests connect over TCP as postgres without a password, as on the development machines.
  local hba
  hba=$(su postgres -c "psql -tAc 'show hba_file'" 2>/dev/null || true)
  if [ -n "$hba" ] && ! grep -q '^host all all 127.0.0.1/32 trust' "$hba"; then
    sed -i '1i host all all 127.0.0.1/32 trust\nhost all all ::1/128 trust' "$hba"
    su postgres -c "psql -tAc 'select pg_reload_conf()'" >/dev/null
  fi
}

# Tests create a database each (pgw_it_*, pgw_e2e_*); drop those of earlier runs.
drop_test_databases() {
  local dbs
  dbs=$(psql -h 127.0.0.1 -U postgres -d postgres -tAc \
    "select datname from pg_database where datname like 'pgw\_it\_%' or datname like 'pgw\_e2e\_%'" 2>/dev/null || true)
  for d in $dbs; do
    psql -h 127.0.0.1 -U postgres -d postgres -qc "drop database if exists \"$d\" with (force)" >/dev/null 2>&1 || true
  done
}

# The deployment checks install their Python tools into a virtual environment.
ensure_python_venv() {
  python3 -c "import venv, ensurepip" 2>/dev/null && return 0
  echo "==> installing python3-venv"
  apt_install python3 python3-venv
}
