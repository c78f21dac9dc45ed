#!/usr/bin/env bash
# `make run`: a local redis-server (data under .run/), the guarded broker, the sidecar and a demo user.
#
# Ports: REDIS_PORT (default: the port of the last run, kept in .run/redis-port, so the admin commands
# printed last time still work; on a first run 6379 when free, else a free port), MQTT_PORT (default
# 1883, or a free port when 1883 is taken), ADMIN_PORT (the admin HTTP API: default 9884, or a free port). MQTT_GUARD_PREFIX (default mqg:) is honoured throughout.
# `source .run/env` sets MQTT_GUARD_REDIS_URL and MQTT_GUARD_PREFIX, which the mqtt-guard CLI reads.
#
# Sourced (by tests) it only defines the functions; run, it calls main.
set -euo pipefail

PY=${PY:-.venv/bin/python}
DEFAULT_REDIS_PORT=6379

# A port nothing listens on: binding it succeeds. No connection is made, so no server logs a probe.
port_free() {
  "$PY" - "$1" <<'PY'
import socket, sys
s = socket.socket()
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as servers bind: TIME_WAIT leftovers do not count
try:
    s.bind(("127.0.0.1", int(sys.argv[1])))
except OSError:
    sys.exit(1)
PY
}

free_port() { "$PY" -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

# Something is listening on the port: read from the kernel's socket table (/proc/net/tcp{,6}) instead
# of connecting, because a connect-and-close probe makes the broker log "closed before a complete CONNECT".
listening() {
  "$PY" - "$1" <<'PY'
import sys
port = f"{int(sys.argv[1]):04X}"
for table in ("/proc/net/tcp", "/proc/net/tcp6"):
    try:
        rows = open(table).read().splitlines()[1:]
    except OSError:
        continue
    for row in rows:
        fields = row.split()
        if fields[1].rsplit(":", 1)[1] == port and fields[3] == "0A":  # 0A = LISTEN
            sys.exit(0)
sys.exit(1)
PY
}

# The redis-server of an earlier run that is still up (its pid file names a live process).
our_redis_alive() { [[ -s "$1/redis.pid" ]] && kill -0 "$(cat "$1/redis.pid")" 2>/dev/null; }

# The Redis port for this run, in order: $REDIS_PORT; the port of the last run (kept in RUN/redis-port)
# unless something else took it; 6379 when free; any free port.
choose_redis_port() {
  local run=$1 saved
  if [[ -n "${REDIS_PORT:-}" ]]; then
    echo "$REDIS_PORT"
    return
  fi
  if [[ -s "$run/redis-port" ]]; then
    saved=$(cat "$run/redis-port")
    if port_free "$saved" || our_redis_alive "$run"; then
      echo "$saved"
      return
    fi
    echo "run-local: port $saved of the last run is taken by another program; choosing another" >&2
  fi
  if port_free "$DEFAULT_REDIS_PORT"; then echo "$DEFAULT_REDIS_PORT"; else free_port; fi
}

# RUN/redis-port for the next run, and RUN/env for `source`: the URL and prefix the CLI reads.
write_env() {
  local run=$1 port=$2 prefix=$3
  echo "$port" > "$run/redis-port"
  {
    echo "# written by make run (deploy/run-local.sh): source it to point mqtt-guard at this Redis"
    printf 'export MQTT_GUARD_REDIS_URL=%q\n' "redis://127.0.0.1:${port}/0"
    printf 'export MQTT_GUARD_PREFIX=%q\n' "$prefix"
  } > "$run/env"
}

main() {
  cd "$(dirname "$0")/.."
  bash deploy/ensure-deps.sh --run
  RUN=.run  # global: the EXIT trap reads it after main returns
  mkdir -p "$RUN/redis"
  local prefix=${MQTT_GUARD_PREFIX:-mqg:}
  export MQTT_GUARD_PREFIX=$prefix

  REDIS_PORT=$(choose_redis_port "$RUN")
  MQTT_PORT=${MQTT_PORT:-1883}
  if ! port_free "$MQTT_PORT"; then MQTT_PORT=$(free_port); fi
  ADMIN_PORT=${ADMIN_PORT:-9884}
  if ! port_free "$ADMIN_PORT"; then ADMIN_PORT=$(free_port); fi
  export MQTT_GUARD_REDIS_URL="redis://127.0.0.1:${REDIS_PORT}/0"
  write_env "$RUN" "$REDIS_PORT" "$prefix"

  # The broker needs no Redis configuration: it learns of edits through client tracking (Redis >= 6).
  if our_redis_alive "$RUN" && redis-cli -p "$REDIS_PORT" ping >/dev/null 2>&1; then
    echo "run-local: reusing the redis-server still running from the last run (pid $(cat "$RUN/redis.pid"))" >&2
  else
    redis-server --port "$REDIS_PORT" --bind 127.0.0.1 --dir "$PWD/$RUN/redis" --appendonly yes \
      --daemonize yes --pidfile "$PWD/$RUN/redis.pid" --logfile "$PWD/$RUN/redis.log"
  fi
  pids=()
  cleanup() {
    for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
    wait 2>/dev/null || true
    [[ -f "$RUN/redis.pid" ]] && kill "$(cat "$RUN/redis.pid")" 2>/dev/null || true
  }
  trap cleanup EXIT INT TERM
  for _ in $(seq 50); do redis-cli -p "$REDIS_PORT" ping >/dev/null 2>&1 && break; sleep 0.1; done

  if [[ ! -s "$RUN/demo-password" ]]; then
    "$PY" -c 'import secrets; print(secrets.token_urlsafe(12))' > "$RUN/demo-password"
  fi
  local DEMO_PW
  DEMO_PW=$(cat "$RUN/demo-password")
  if ! .venv/bin/mqtt-guard user show demo >/dev/null 2>&1; then
    printf '%s\n' "$DEMO_PW" | .venv/bin/mqtt-guard user add demo --password-stdin >/dev/null
  fi
  # The demo user may publish, subscribe and receive on demo/# (under MQTT_GUARD_PREFIX, as the CLI writes).
  .venv/bin/mqtt-guard acl allow --user demo 'demo/#' readwrite >/dev/null

  .venv/bin/mqtt-guard broker --bind "127.0.0.1:${MQTT_PORT}" & pids+=($!)
  .venv/bin/mqtt-guard sidecar & pids+=($!)
  # The admin API with a fresh read-write token (the last run's is revoked: shown once, never stored).
  .venv/bin/mqtt-guard admin token revoke make-run >/dev/null 2>&1 || true
  local ADMIN_TOKEN
  ADMIN_TOKEN=$(.venv/bin/mqtt-guard admin token create make-run | awk '{print $NF}')
  .venv/bin/mqtt-guard admin --bind "127.0.0.1:${ADMIN_PORT}" & pids+=($!)
  for _ in $(seq 100); do
    listening "$MQTT_PORT" && break
    kill -0 "${pids[0]}" 2>/dev/null || { echo "run-local: the broker exited" >&2; exit 1; }
    sleep 0.1
  done
  for _ in $(seq 100); do
    listening "$ADMIN_PORT" && break
    kill -0 "${pids[2]}" 2>/dev/null || { echo "run-local: the admin API exited" >&2; exit 1; }
    sleep 0.1
  done
  local subscribe="mosquitto_sub -h 127.0.0.1 -p ${MQTT_PORT} -u demo -P '${DEMO_PW}' -t 'demo/#' -v"
  command -v mosquitto_sub >/dev/null || subscribe+="   # needs mosquitto-clients (apt-get install mosquitto-clients)"
  cat <<MSG

mqtt-guard is running.
  Redis:  ${MQTT_GUARD_REDIS_URL}   prefix ${prefix}   (data in $RUN/redis; the port is kept for the next run)
  MQTT:   127.0.0.1:${MQTT_PORT}
  Demo user: demo / ${DEMO_PW}
  Admin API: http://127.0.0.1:${ADMIN_PORT}/api   (OpenAPI: http://127.0.0.1:${ADMIN_PORT}/openapi.json)
  Dashboard: http://127.0.0.1:${ADMIN_PORT}/   (log in with the admin token)
  Admin token (shown once; a new one each run): ${ADMIN_TOKEN}

Try it in another terminal:
  ${subscribe}
  mosquitto_pub -h 127.0.0.1 -p ${MQTT_PORT} -u demo -P '${DEMO_PW}' -t demo/hello -m hi
  mosquitto_pub -h 127.0.0.1 -p ${MQTT_PORT} -u demo -P wrong -t demo/hello -m hi   # not authorised
Admin (this Redis and prefix, in any shell):
  source $RUN/env
  .venv/bin/mqtt-guard user list
  curl -H 'Authorization: Bearer ${ADMIN_TOKEN}' http://127.0.0.1:${ADMIN_PORT}/api/sessions

Ctrl-C stops everything.
MSG
  wait "${pids[0]}"
}

if [[ "${BASH_SOURCE[0]}" == "$0" ]]; then
  main "$@"
fi
