"""The HTTP upgrade of a secured websockets listener (`require_token`, `allowed_origins`; docs/tokens.md).

Why the design looks like this:
- The check runs in websockets' `process_request`, before the `101 Switching Protocols` answer: a
  refused client gets an HTTP status and a one-line reason and never a WebSocket, so it cannot send a
  single MQTT byte (a token checked only at CONNECT would let anyone open WebSockets and hold them for
  `connect_timeout`).
- The order is the cheap checks first: the `mqtt` subprotocol offered (400), the Origin allowed (403),
  then the bearer token, verified by the Guard (`verify_bearer`: 401 for a missing, malformed, invalid
  or expired token, 403 for a revoked one).
- The verified token is kept for the connection (`take`, keyed by the websockets connection object, weakly:
  a connection that dies before its CONNECT leaves nothing behind); the CONNECT's identity must then be
  the token's (auth/authenticator.py `_check_token`).
"""

from __future__ import annotations

import logging
import weakref
from collections.abc import Awaitable, Callable, Sequence
from http import HTTPStatus
from http.cookies import CookieError, SimpleCookie
from typing import Any
from urllib.parse import parse_qs, urlsplit

from websockets.asyncio.server import ServerConnection
from websockets.http11 import Request, Response

from ..logutil import RateLimitedLog
from .proxy_listener import Peer

log = logging.getLogger("mqtt_guard.broker")
refusal_log = RateLimitedLog(log)

Verify = Callable[[str | None, str | None], Awaitable[tuple[Any, int, str]]]
"""The Guard's `verify_bearer`: (token, source address) -> (the verified token, 0, "") or (None, HTTP status,
reason)."""


def bearer_from(headers: Any, path: str, sources: Sequence[str]) -> str | None:
    """The token of a request, from the first of `sources` that carries one: `header` (Authorization:
    Bearer), `cookie:NAME`, `query:NAME`."""
    for source in sources:
        kind, _, name = source.partition(":")
        if kind == "header":
            value = headers.get("Authorization", "")
            scheme, _, token = value.partition(" ")
            if scheme.lower() == "bearer" and token.strip():
                return str(token.strip())
        elif kind == "cookie":
            jar: SimpleCookie = SimpleCookie()
            try:
                for line in headers.get_all("Cookie"):
                    jar.load(line)
            except CookieError:
                continue
            morsel = jar.get(name)
            if morsel is not None and morsel.value:
                return morsel.value
        elif kind == "query":
            values = parse_qs(urlsplit(path).query).get(name)
            if values and values[0]:
                return values[0]
    return None


def offers_mqtt(headers: Any) -> bool:
    offered = ",".join(headers.get_all("Sec-WebSocket-Protocol"))
    return "mqtt" in (p.strip() for p in offered.split(","))


class UpgradeCheck:
    """websockets' `process_request` for one listener."""

    def __init__(
        self,
        verify: Verify,
        *,
        name: str,
        require_token: bool,
        sources: Sequence[str],
        origins: Sequence[str],
    ) -> None:
        self.verify = verify
        self.name = name
        self.require_token = require_token
        self.sources = tuple(sources)
        self.origins = frozenset(origins)
        self._tokens: weakref.WeakKeyDictionary[ServerConnection, Any] = weakref.WeakKeyDictionary()
        self.refused = 0

    async def __call__(self, connection: ServerConnection, request: Request) -> Response | None:
        headers = request.headers
        if not offers_mqtt(headers):
            return self._refuse(connection, HTTPStatus.BAD_REQUEST, "the mqtt subprotocol is required")
        if self.origins and headers.get("Origin") not in self.origins:
            return self._refuse(connection, HTTPStatus.FORBIDDEN, "origin not allowed")
        if not self.require_token:
            return None
        # the source address: its bans and failed-login count apply as to a CONNECT
        token, status, reason = await self.verify(
            bearer_from(headers, request.path, self.sources), _peer(connection)[0]
        )
        if token is None:
            return self._refuse(connection, HTTPStatus(status), reason)
        self._tokens[connection] = token
        return None

    def take(self, connection: object) -> Any:
        """The token verified at the upgrade of `connection` (None: none)."""
        try:
            return self._tokens.pop(connection, None)  # type: ignore[call-overload]  # any object may be asked
        except TypeError:  # not weakly referenceable: not one of ours
            return None

    def _refuse(self, connection: ServerConnection, status: HTTPStatus, reason: str) -> Response:
        self.refused += 1
        peer = _peer(connection)
        refusal_log.log(
            logging.WARNING,
            (peer[0], status, reason),
            "refused websockets upgrade from %s:%d on %s: %s (HTTP %d)",
            peer[0],
            peer[1],
            self.name,
            reason,
            int(status),
        )
        response = connection.respond(status, reason + "\n")
        if status == HTTPStatus.UNAUTHORIZED:
            response.headers["WWW-Authenticate"] = 'Bearer realm="mqtt", error="invalid_token"'
        return response


def _peer(connection: ServerConnection) -> Peer:
    address = connection.remote_address
    return (str(address[0]), int(address[1])) if address else ("unknown", 0)
