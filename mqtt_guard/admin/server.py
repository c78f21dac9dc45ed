"""The admin API's HTTP server (aiohttp): authentication, errors as JSON, health probes, TLS.

Every /api request carries `Authorization: Bearer TOKEN`; the token is looked up by its digest in Redis
(store/tokens.py) on each request, so a revoked token stops working at once. A read-only token gets 403
on any method but GET. Errors are `{"error": ..., "detail": ...}` with a 4xx status; a Redis outage is a
503. The probes (/livez, /readyz, /healthz) are the shared ones of metrics/health.py and, with
/openapi.json, need no token.

The dashboard (static files under /, docs/dashboard.md) logs in once with `POST /api/session`, which
sets an HttpOnly, SameSite=Strict session cookie; a request authenticated by that cookie that changes
anything must also carry the session's CSRF token in `X-CSRF-Token` (403 without it), so a page of
another site cannot make the browser act with the admin's cookie. A request with an Authorization
header is judged by its token alone (API clients never see the cookie).
"""

from __future__ import annotations

import asyncio
import hmac
import json
import logging
import ssl
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from aiohttp import web

from ..config import AdminConfig, split_bind
from ..metrics.health import health_routes
from ..ops import OpError
from ..store.connection import REDIS_ERRORS
from ..store.tokens import AdminToken, TokenStore
from .api import COOKIE, CSRF_HEADER, ROUTES, Ctx, Route
from .openapi import PUBLIC, document
from .schema import problems

log = logging.getLogger("mqtt_guard.admin")

CTX = web.AppKey("ctx", Ctx)
MAX_BODY = 64 * 1024
PING_INTERVAL = 2.0
SHUTDOWN_TIMEOUT = 2.0  # seconds requests in progress (event streams) get at SIGTERM


class ApiError(Exception):
    def __init__(self, status: int, error: str, detail: str) -> None:
        super().__init__(detail)
        self.status, self.error, self.detail = status, error, detail


def error(status: int, kind: str, detail: str, **headers: str) -> web.Response:
    return web.json_response({"error": kind, "detail": detail}, status=status, headers=headers or None)


OP_ERRORS = {400: "bad_request", 404: "not_found", 409: "conflict", 422: "invalid"}


@web.middleware
async def guard(
    request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
) -> web.StreamResponse:
    ctx = request.app[CTX]
    try:
        if not _public(request):
            store = TokenStore(ctx.redis, ctx.keys)
            header = request.headers.get("Authorization")
            cookie = request.cookies.get(COOKIE)
            found: AdminToken | None
            if header is None and cookie:
                session = await store.session(cookie)
                if session is None:
                    return error(401, "unauthorized", "the session expired or was ended: log in again")
                if request.method not in ("GET", "HEAD") and not hmac.compare_digest(
                    request.headers.get(CSRF_HEADER, "").encode(), session.csrf.encode()
                ):
                    return error(
                        403, "csrf", f"a request with the session cookie that changes something needs {CSRF_HEADER}"
                    )
                found = session.token
                request["session"] = session
            else:
                kind, _, token = (header or "").partition(" ")
                if kind.lower() != "bearer" or not token.strip():
                    return error(
                        401, "unauthorized", "send Authorization: Bearer TOKEN", **{"WWW-Authenticate": "Bearer"}
                    )
                found = await store.lookup(token.strip())
                if found is None:
                    return error(401, "unauthorized", "unknown or revoked token", **{"WWW-Authenticate": "Bearer"})
            if found.read_only and request.method not in ("GET", "HEAD") and not _safe(request):
                return error(403, "forbidden", f"token {found.name!r} is read-only")
            request["token"] = found
        return await handler(request)
    except ApiError as exc:
        return error(exc.status, exc.error, exc.detail)
    except OpError as exc:
        return error(exc.status, OP_ERRORS.get(exc.status, "error"), str(exc))
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        return error(exc.status, exc.reason.lower().replace(" ", "_"), f"{request.method} {request.path}: {exc.reason}")
    except REDIS_ERRORS as exc:
        return error(503, "redis_unavailable", f"cannot reach Redis: {exc}")
    except ConnectionResetError:  # the client went away: nobody to answer, nothing to log
        raise
    except Exception:  # a bug: logged once here with its traceback, which stays out of the response
        log.exception("admin API: %s %s failed", request.method, request.path)
        return error(500, "internal", f"{request.method} {request.path}: internal error (see the admin server's log)")


SAFE = {(r.method, r.path) for r in ROUTES if not r.writes}
OPEN_ROUTES = {(r.method, r.path) for r in ROUTES if r.public}
STATIC = Path(__file__).parent / "static"
STATIC_PREFIX = "/static/"
# The dashboard's pages load only what the package ships: no inline script, no other origin.
PAGE_HEADERS = {
    "Content-Security-Policy": "default-src 'self'; img-src 'self' data:; frame-ancestors 'none'; form-action 'self'",
    "X-Frame-Options": "DENY",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-cache",
}


def _safe(request: web.Request) -> bool:
    """The request's route changes nothing (a GET, or a POST like acl check)."""
    resource = request.match_info.route.resource
    return resource is not None and (request.method, resource.canonical) in SAFE


def _public(request: web.Request) -> bool:
    """No token needed: the probes, the OpenAPI document, the dashboard's static files, the login."""
    path = request.path
    if path in PUBLIC or path.startswith(STATIC_PREFIX):
        return True
    resource = request.match_info.route.resource
    return resource is not None and (request.method, resource.canonical) in OPEN_ROUTES


def _no_constant(name: str) -> Any:
    """json.loads takes NaN, Infinity and -Infinity, which JSON does not have: refuse them (400 bad_json)."""
    raise ValueError(f"{name} is not a JSON value")


def endpoint(r: Route) -> Callable[[web.Request], Awaitable[web.StreamResponse]]:
    async def handle(request: web.Request) -> web.StreamResponse:
        body: Any = None
        if r.body is not None:
            raw = await request.read()
            try:
                body = json.loads(raw, parse_constant=_no_constant) if raw.strip() else {}
            except ValueError as exc:
                raise ApiError(400, "bad_json", f"the body is not JSON: {exc}") from None
            found = problems(r.body, body)
            if found:
                raise ApiError(422, "invalid_body", "; ".join(found))
        result = await r.handler(request.app[CTX], request, body)
        if isinstance(result, web.StreamResponse):
            return result
        return web.json_response(result, status=r.status)

    return handle


def make_app(ctx: Ctx) -> web.Application:
    app = web.Application(middlewares=[guard], client_max_size=MAX_BODY)
    app[CTX] = ctx
    for r in ROUTES:
        app.router.add_route(r.method, r.path, endpoint(r))

    def ready() -> str | None:
        return None if ctx.redis_rtt is not None else "redis unreachable\n"

    for path, probe in health_routes(ready).items():

        async def health(request: web.Request, probe: Any = probe) -> web.Response:
            status, body, ctype = probe(request.headers.get("Accept", ""))
            return web.Response(status=status, body=body, headers={"Content-Type": ctype})

        app.router.add_get(path, health)
    spec = document()

    async def openapi(_: web.Request) -> web.Response:
        return web.json_response(spec)

    app.router.add_get("/openapi.json", openapi)

    async def index(_: web.Request) -> web.FileResponse:
        return web.FileResponse(STATIC / "index.html", headers=PAGE_HEADERS)

    app.router.add_get("/", index)
    app.router.add_static(STATIC_PREFIX, STATIC, append_version=False)
    app.on_response_prepare.append(_page_headers)
    return app


async def _page_headers(request: web.Request, response: web.StreamResponse) -> None:
    if request.path.startswith(STATIC_PREFIX):
        response.headers.update(PAGE_HEADERS)


async def ping(ctx: Ctx) -> None:
    """Readiness and the Redis round trip shown by /api/brokers."""
    started = time.monotonic()
    try:
        await ctx.redis.ping()
        ctx.redis_rtt = time.monotonic() - started
    except REDIS_ERRORS:
        ctx.redis_rtt = None
    ctx.redis_checked = time.time()


async def pinger(ctx: Ctx, stop: asyncio.Event) -> None:
    while not stop.is_set():
        await ping(ctx)
        try:
            await asyncio.wait_for(stop.wait(), PING_INTERVAL)
        except TimeoutError:
            pass


def tls_context(config: AdminConfig) -> ssl.SSLContext | None:
    if not config.certfile:
        return None
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(config.certfile, config.keyfile)
    return context


async def serve(ctx: Ctx, config: AdminConfig, stop: asyncio.Event) -> None:
    """Serve until `stop` is set."""
    host, port = split_bind(config.bind, "admin.bind")
    await ping(ctx)
    # an open event stream must not hold SIGTERM up for aiohttp's default minute
    runner = web.AppRunner(make_app(ctx), access_log=None, shutdown_timeout=SHUTDOWN_TIMEOUT)
    await runner.setup()
    site = web.TCPSite(runner, host, port, ssl_context=tls_context(config))
    await site.start()
    scheme = "https" if config.certfile else "http"
    log.info("admin API on %s://%s:%d/api (OpenAPI: /openapi.json), dashboard on /", scheme, host, port)
    task = asyncio.create_task(pinger(ctx, stop), name="mqtt-guard-admin-ping")
    try:
        await stop.wait()
    finally:
        await task
        await runner.cleanup()
