"""The health probes every mqtt-guard process serves, and the tiny HTTP server under them and /metrics.

Names, once for the broker and the sidecar (issue 21):
- `/livez`: 200 whenever the event loop turns. It never looks at Redis: a Redis outage must not get
  every pod restarted (a restart cannot fix Redis and drops every client).
- `/readyz`: 200 while the process does its job, else 503 with the reason in the body. For a broker
  (`BrokerReadiness`): its listeners are open and it is not draining, and Redis is reachable or the
  configured fail mode still admits clients (`auth.on_redis_down: cached`); under `deny` a broker
  whose Redis is away refuses every CONNECT, so a load balancer should send clients elsewhere.
- `/healthz`: the older name of `/readyz`.

This module imports nothing of prometheus_client, so the probes can be served without /metrics
(`metrics.health_bind`): the Guard only imports metrics/prometheus.py when `metrics.prometheus_bind` is set.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable

from ..config import split_bind

log = logging.getLogger("mqtt_guard.metrics")

Route = Callable[[str], tuple[int, bytes, str]]
"""A path's handler: (Accept header) -> (status, body, content type)."""

Readiness = Callable[[], str | None]
"""None when ready, else why not (the body of the 503)."""

TEXT = "text/plain; charset=utf-8"


class BrokerReadiness:
    """What a broker's /readyz answers. The runner sets `listening` once the listeners are open and
    `draining` at SIGTERM (so a load balancer stops sending new clients before the listeners close);
    `redis_up` is the analytics' view of Redis (its last flush got through, MetricsService.redis_up),
    and `serves_without_redis` is true when the CONNECT fail mode still admits clients while Redis is
    away (`auth.on_redis_down: cached`)."""

    def __init__(self, redis_up: Callable[[], bool | None], serves_without_redis: bool) -> None:
        self.redis_up = redis_up
        self.serves_without_redis = serves_without_redis
        self.listening = False
        self.draining = False

    def __call__(self) -> str | None:
        if self.draining:
            return "draining: shutting down\n"
        if not self.listening:
            return "starting: listeners not open yet\n"
        if not self.redis_up() and not self.serves_without_redis:
            return "redis unreachable (auth.on_redis_down: deny)\n"
        return None


def health_routes(ready: Readiness) -> dict[str, Route]:
    """`/livez`, `/readyz` and `/healthz` (module docstring) over `ready`."""

    def live(_: str) -> tuple[int, bytes, str]:
        return 200, b"ok\n", TEXT

    def readiness(_: str) -> tuple[int, bytes, str]:
        why = ready()
        return (200, b"ok\n", TEXT) if why is None else (503, why.encode(), TEXT)

    return {"/livez": live, "/readyz": readiness, "/healthz": readiness}


async def serve_http(bind: str, routes: dict[str, Route]) -> asyncio.AbstractServer:
    """A minimal HTTP/1.1 server on the caller's event loop: `routes` maps a path to a Route. GET and
    HEAD only; one request per connection."""
    host, port = split_bind(bind, "metrics bind")

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10)
            lines = head.decode("latin-1").split("\r\n")
            method, _, rest = lines[0].partition(" ")
            path = rest.partition(" ")[0].split("?", 1)[0]
            headers = {k.strip().lower(): v.strip() for k, _, v in (ln.partition(":") for ln in lines[1:] if ln)}
            route = routes.get(path)
            if method not in ("GET", "HEAD"):
                status, body, ctype = 405, b"method not allowed\n", TEXT
            elif route is None:
                status, body, ctype = 404, f"not found; try {', '.join(sorted(routes))}\n".encode(), TEXT
            else:
                status, body, ctype = route(headers.get("accept", ""))
            reason = {200: "OK", 404: "Not Found", 405: "Method Not Allowed", 503: "Service Unavailable"}.get(
                status, "Error"
            )
            writer.write(
                f"HTTP/1.1 {status} {reason}\r\nContent-Type: {ctype}\r\nContent-Length: {len(body)}\r\n"
                "Connection: close\r\n\r\n".encode("latin-1")
            )
            if method != "HEAD":
                writer.write(body)
            await writer.drain()
        except (asyncio.IncompleteReadError, asyncio.LimitOverrunError, TimeoutError, ConnectionError):
            pass
        except Exception:  # a bad request must not kill the server
            log.exception("metrics request failed")
        finally:
            writer.close()
            try:
                await writer.wait_closed()
            except Exception:  # noqa: BLE001 - the client may be gone already; nothing to do
                pass

    return await asyncio.start_server(handle, host, port)


async def start_health_endpoint(bind: str, ready: Readiness) -> asyncio.AbstractServer | None:
    """The probes alone on `bind` (`metrics.health_bind`), logged; None when `bind` cannot be served
    (the broker runs on without it, as with /metrics)."""
    try:
        server = await serve_http(bind, health_routes(ready))
    except OSError as exc:
        log.error("cannot serve the probes on %s: %s (the broker runs on without them)", bind, exc.strerror or exc)
        return None
    log.info("serving health probes on http://%s/livez and /readyz", bind)
    return server


__all__ = ["BrokerReadiness", "Readiness", "Route", "health_routes", "serve_http", "start_health_endpoint"]
