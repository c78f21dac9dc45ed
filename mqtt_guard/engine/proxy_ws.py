"""A plain `websockets` listener behind a load balancer (`proxy_protocol: true`): the PROXY header comes
before the HTTP upgrade, so the websockets connection itself takes it off the first bytes.

websockets' `serve` builds each connection through `create_connection`; `ProxiedWebSocket` is that
connection with three changes: a source outside `trusted_proxies` is aborted as it connects; the
bytes up to the end of the header are parsed (engine/proxy_protocol.py) and only what follows goes to
the HTTP handshake; `remote_address` is the client the header names, which amqtt's WebSocketsWriter
hands the broker as the peer. A malformed header aborts the connection; a header that does not come is
ended by websockets' opening-handshake timeout (`open_timeout`, 10 s). Every refusal is logged as on
the TCP listeners (engine/proxy_listener.py). A `wss` listener cannot do this: its TLS handshake starts
at accept time, before any protocol object sees a byte (the config refuses that combination).
"""

from __future__ import annotations

import asyncio
from typing import Any

from websockets.asyncio.server import ServerConnection

from .proxy_listener import Network, Peer, is_trusted, log, refused
from .proxy_protocol import ProxyProtocolError, parse


class ProxiedWebSocket(ServerConnection):
    def __init__(self, *args: Any, trusted: tuple[Network, ...], name: str, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._trusted = trusted
        self._name = name
        self._head: bytes | None = b""  # bytes before the header's end; None once the header is read
        self._client: Peer | None = None
        self._refused = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(transport)
        peer = transport.get_extra_info("peername")
        if not peer or not is_trusted(peer[0], self._trusted):
            self._refuse("the source is not in trusted_proxies")

    def data_received(self, data: bytes) -> None:
        head = self._head
        if head is None:
            super().data_received(data)
            return
        if self._refused:
            return
        head += data
        try:
            header = parse(head)
        except ProxyProtocolError as exc:
            self._refuse(f"invalid PROXY protocol header: {exc}", kind="invalid header")
            return
        if header is None:
            self._head = head
            return
        self._head = None
        self._client = header.source or self._socket_peer()
        rest = head[header.length :]
        if rest:
            super().data_received(rest)

    def eof_received(self) -> None:
        if self._head is not None and not self._refused:
            self._refused = True  # (nothing to refuse: the handshake that fails now is not logged)
            log.info("connection from proxy %s closed before its PROXY protocol header", self._where())
        super().eof_received()

    async def handshake(self, *args: Any, **kwargs: Any) -> None:
        """websockets' opening handshake, ended quietly for a connection refused here (logged already;
        websockets would log the aborted handshake as failed, with a traceback)."""
        if self._refused:
            return
        try:
            await super().handshake(*args, **kwargs)
        except asyncio.CancelledError:  # websockets' open_timeout
            if self._head is not None:
                refused(self._socket_peer(), self._name, "no complete PROXY protocol header in time")
            raise
        except Exception:
            if not self._refused:
                raise

    @property
    def remote_address(self) -> Any:
        return self._client if self._client is not None else super().remote_address

    def _refuse(self, reason: str, kind: str | None = None) -> None:
        self._refused = True
        self._head = b""
        refused(self._socket_peer(), self._name, reason, kind)
        self.transport.abort()

    def _socket_peer(self) -> Peer:
        peer = self.transport.get_extra_info("peername")
        return (peer[0], peer[1]) if peer else ("unknown", 0)

    def _where(self) -> str:
        host, port = self._socket_peer()
        return f"{host}:{port}"


__all__ = ["ProxiedWebSocket"]
