# mqtt-guard container image (docs/deploy.md):
#   docker build -t mqtt-guard:0.1.0 .
#   docker run -e MQTT_GUARD_REDIS_URL=redis://redis:6379/0 -p 1883:1883 mqtt-guard:0.1.0
#   docker run --rm -e MQTT_GUARD_REDIS_URL=... mqtt-guard:0.1.0 user add alice    (any CLI command)
# The entrypoint is the `mqtt-guard` command; the default command runs the broker on the config file
# deploy/mqtt-guard.yaml (mount another one over /etc/mqtt-guard/mqtt-guard.yaml). tests/deploy/ checks
# this file's rules and starts the broker exactly as ENTRYPOINT + CMD + ENV say.

# --- build: a virtual environment with mqtt-guard and its pinned dependencies (all wheels) -----------
FROM python:3.12.8-slim-bookworm AS build
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_NO_CACHE_DIR=1
WORKDIR /src
COPY pyproject.toml README.md LICENSE ./
COPY mqtt_guard ./mqtt_guard
RUN python -m venv /opt/mqtt-guard \
    && /opt/mqtt-guard/bin/pip install --no-compile . \
    && /opt/mqtt-guard/bin/python -m compileall -q /opt/mqtt-guard/lib

# --- runtime: the same slim Python, the venv, a config file and an unprivileged user -----------------
FROM python:3.12.8-slim-bookworm
LABEL org.opencontainers.image.title="mqtt-guard" \
      org.opencontainers.image.description="MQTT broker with Redis-backed auth, ACLs, quotas and analytics" \
      org.opencontainers.image.licenses="Apache-2.0"
RUN groupadd --system --gid 10001 mqtt-guard \
    && useradd --system --uid 10001 --gid mqtt-guard --no-create-home --home-dir /nonexistent \
       --shell /usr/sbin/nologin mqtt-guard
COPY --from=build /opt/mqtt-guard /opt/mqtt-guard
COPY deploy/mqtt-guard.yaml /etc/mqtt-guard/mqtt-guard.yaml
ENV PATH=/opt/mqtt-guard/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    MQTT_GUARD_REDIS_URL=redis://redis:6379/0
USER 10001:10001
# MQTT, MQTT over TLS, MQTT over WebSockets, /metrics and probes of the broker, of the sidecar
EXPOSE 1883 8883 8083 9883 9884
# Alive, not ready: an unhealthy container gets replaced (Swarm), and a Redis outage is no reason to.
HEALTHCHECK --interval=15s --timeout=3s --start-period=10s --retries=3 \
    CMD ["python", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:9883/livez', timeout=2)"]
STOPSIGNAL SIGTERM
ENTRYPOINT ["mqtt-guard"]
CMD ["broker", "-c", "/etc/mqtt-guard/mqtt-guard.yaml"]
