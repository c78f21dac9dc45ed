#!/usr/bin/env bash
# `make run`: a local redis-server (data under .run/), the guarded broker, and a demo user.
# Ports: REDIS_PORT (default: a free port), MQTT_PORT (default 1883, or a free one if 1883 is taken).
set -euo pipefail
cd "$(dirname "$0")/.."
bash deploy/ensure-deps.sh
RUN=.run
mkdir -p "$RUN/redis"
PY=.venv/bin/python

free_port() { "$PY" -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
port_busy() { "$PY" -c "import socket,sys; s=socket.socket(); sys.exit(0 if s.connect_ex(('127.0.0.1',$1))==0 else 1)"; }

REDIS_PORT=${REDIS_PORT:-$(free_port)}
MQTT_PORT=${MQTT_PORT:-1883}
if port_busy "$MQTT_PORT"; then MQTT_PORT=$(free_port); fi
export MQTT_GUARD_REDIS_URL="redis://127.0.0.1:${REDIS_PORT}/0"

redis-server --port "$REDIS_PORT" --bind 127.0.0.1 --dir "$PWD/$RUN/redis" --appendonly yes \
  --notify-keyspace-events KEA --daemonize yes --pidfile "$PWD/$RUN/redis.pid" --logfile "$PWD/$RUN/redis.log"
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
DEMO_PW=$(cat "$RUN/demo-password")
if ! .venv/bin/mqtt-guard user show demo >/dev/null 2>&1; then
  printf '%s\n' "$DEMO_PW" | .venv/bin/mqtt-guard user add demo --password-stdin >/dev/null
fi
# The demo user may use demo/# (ignored until ACLs are enabled in the broker build you run).
redis-cli -p "$REDIS_PORT" HSET mqg:acl:user:demo "demo/#" readwrite >/dev/null

.venv/bin/mqtt-guard broker --bind "127.0.0.1:${MQTT_PORT}" & pids+=($!)
if .venv/bin/mqtt-guard sidecar --help >/dev/null 2>&1; then
  .venv/bin/mqtt-guard sidecar & pids+=($!)
fi
for _ in $(seq 100); do port_busy "$MQTT_PORT" && break; sleep 0.1; done
cat <<MSG

mqtt-guard is running.
  Redis:  redis://127.0.0.1:${REDIS_PORT}/0   (data in $RUN/redis)
  MQTT:   127.0.0.1:${MQTT_PORT}
  Demo user: demo / ${DEMO_PW}

Try it in another terminal:
  mosquitto_sub -h 127.0.0.1 -p ${MQTT_PORT} -u demo -P '${DEMO_PW}' -t 'demo/#' -v
  mosquitto_pub -h 127.0.0.1 -p ${MQTT_PORT} -u demo -P '${DEMO_PW}' -t demo/hello -m hi
  mosquitto_pub -h 127.0.0.1 -p ${MQTT_PORT} -u demo -P wrong -t demo/hello -m hi   # not authorised
Admin:  MQTT_GUARD_REDIS_URL=redis://127.0.0.1:${REDIS_PORT}/0 .venv/bin/mqtt-guard user list

Ctrl-C stops everything.
MSG
wait "${pids[0]}"
