"""A listener behind a load balancer: connections start with a PROXY protocol header (`proxy_protocol:
true`), sent by one of the listener's `trusted_proxies`, which names the client's own address.

Why an accept loop of its own instead of `loop.create_server`: on a TLS listener the header comes
before the TLS handshake, and asyncio starts TLS at accept time. Here each accepted socket is read
exactly up to the end of its header (no byte of the client's own is consumed: version 2 says its
length, a version 1 line is looked at with MSG_PEEK for its CRLF), then handed to the event loop with
`connect_accepted_socket` (TLS, if the listener has it, starts there), serving the connection as any
other with the client's address as the peer. Plain TCP listeners go the same way, so there is one path
for both; a listener without `proxy_protocol` keeps `create_server` and pays nothing for this.

Refused, each with a rate-limited log line and the socket closed: a source outside `trusted_proxies`
(before any byte is read), a header that is malformed (engine/proxy_protocol.py), and one not complete
within `limits.connect_timeout` (the broker's shared Deadlines, no timer per socket). The client's
CONNECT then has its own connect_timeout, as on any listener.
"""

from __future__ import annotations

import asyncio
import errno
import functools
import ipaddress
import logging
import socket
import ssl
from collections.abc import Callable, Iterable

from ..logutil import RateLimitedLog
from .deadlines import Deadlines
from .fdlimit import FD_ERRORS, WHAT_TO_DO
from .proxy_protocol import V1_MAX, ProxyHeader, ProxyProtocolError, parse, v1_end, wanted

log = logging.getLogger("mqtt_guard.broker")
refusal_log = RateLimitedLog(log)  # per source host and reason: a misconfigured balancer retries a lot
BACKLOG = 100  # as asyncio's create_server
ACCEPT_PAUSE = 0.1  # s an accept loop waits after a failed accept (the open-files limit): no busy loop
ACCEPT_TRANSIENT = frozenset({errno.ECONNABORTED, errno.EPROTO, errno.EAGAIN, errno.EINTR})

Peer = tuple[str, int]
StreamFactory = Callable[[Peer], asyncio.Protocol]
"""Makes the protocol serving one connection, given the client's (address, port)."""

Network = ipaddress.IPv4Network | ipaddress.IPv6Network


def trusted_networks(cidrs: Iterable[str]) -> tuple[Network, ...]:
    """The `trusted_proxies` of a listener (validated by the config) as networks."""
    return tuple(ipaddress.ip_network(c, strict=False) for c in cidrs)


def is_trusted(host: str, networks: tuple[Network, ...]) -> bool:
    """Whether a connection from `host` may send a PROXY header (an IPv4 peer on a dual-stack socket,
    ::ffff:a.b.c.d, is matched as a.b.c.d)."""
    try:
        address = ipaddress.ip_address(host.partition("%")[0])
    except ValueError:
        return False
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        address = address.ipv4_mapped
    return any(address in network for network in networks)


class ProxyListener:
    """The `asyncio.Server` of one `proxy_protocol` listener, as amqtt's Server wrapper uses it
    (`close`, `wait_closed`, `sockets`)."""

    def __init__(
        self,
        loop: asyncio.AbstractEventLoop,
        sockets: list[socket.socket],
        factory: StreamFactory,
        *,
        ssl_context: ssl.SSLContext | None,
        trusted: tuple[Network, ...],
        timeout: float,
        deadlines: Deadlines,
        name: str,
    ) -> None:
        self._loop = loop
        self.sockets = sockets
        self._factory = factory
        self._ssl = ssl_context
        self._trusted = trusted
        self._timeout = timeout
        self._deadlines = deadlines
        self._name = name
        self._accepting = [loop.create_task(self._accept(sock)) for sock in sockets]
        for task, sock in zip(self._accepting, sockets, strict=True):
            # closed once its accept loop has ended: the loop has let go of the descriptor by then
            task.add_done_callback(functools.partial(_close_socket, sock))
        self._pending: set[asyncio.Task[None]] = set()  # connections still reading their header

    @classmethod
    async def start(
        cls,
        host: str | None,
        port: int,
        factory: StreamFactory,
        *,
        ssl_context: ssl.SSLContext | None,
        trusted: tuple[Network, ...],
        timeout: float,
        deadlines: Deadlines,
        name: str,
        reuse_port: bool = False,
    ) -> ProxyListener:
        loop = asyncio.get_running_loop()
        sockets = await _listening_sockets(loop, host, port, reuse_port=reuse_port)
        return cls(
            loop,
            sockets,
            factory,
            ssl_context=ssl_context,
            trusted=trusted,
            timeout=timeout,
            deadlines=deadlines,
            name=name,
        )

    def close(self) -> None:
        """Stop accepting; connections still reading their header are dropped (served ones stay)."""
        for task in (*self._accepting, *self._pending):
            task.cancel()

    async def wait_closed(self) -> None:
        await asyncio.gather(*self._accepting, *self._pending, return_exceptions=True)

    async def _accept(self, listening: socket.socket) -> None:
        loop = self._loop
        while True:
            try:
                conn, address = await loop.sock_accept(listening)
            except OSError as exc:
                if exc.errno in ACCEPT_TRANSIENT:  # the peer gave up before the accept: as asyncio does
                    continue
                if exc.errno in FD_ERRORS:
                    message = f"open-files limit reached; {WHAT_TO_DO}"
                else:
                    message = str(exc)
                refusal_log.log(
                    logging.ERROR,
                    ("accept", self._name, exc.errno),
                    "PROXY protocol listener %s cannot accept connections (%s): %s",
                    self._name,
                    errno.errorcode.get(exc.errno or 0, exc.errno),
                    message,
                )
                await asyncio.sleep(ACCEPT_PAUSE)
                continue
            conn.setblocking(False)
            peer: Peer = (address[0], address[1])
            if not is_trusted(peer[0], self._trusted):
                conn.close()
                refused(peer, self._name, "the source is not in trusted_proxies")
                continue
            task = loop.create_task(self._handshake(conn, peer))
            self._pending.add(task)
            task.add_done_callback(self._pending.discard)

    async def _handshake(self, conn: socket.socket, proxy: Peer) -> None:
        """Read the header within the timeout, then serve the connection as the client's."""
        try:
            async with self._deadlines.deadline(self._timeout):
                header = await read_header(self._loop, conn)
        except TimeoutError:
            conn.close()
            refused(proxy, self._name, f"no complete PROXY protocol header within {self._timeout:.1f} s")
            return
        except ProxyProtocolError as exc:
            conn.close()
            refused(proxy, self._name, f"invalid PROXY protocol header: {exc}", kind="invalid header")
            return
        except (OSError, EOFError):
            conn.close()
            log.info("connection from proxy %s:%d closed before its PROXY protocol header", *proxy)
            return
        except BaseException:  # cancelled (listener closing): the socket is not handed on
            conn.close()
            raise
        client = header.source or proxy
        try:
            await self._loop.connect_accepted_socket(lambda: self._factory(client), conn, ssl=self._ssl)
        except OSError as exc:  # a TLS handshake that fails or times out (ssl.SSLError, TimeoutError)
            conn.close()
            why = str(exc) or type(exc).__name__
            log.info("connection from %s:%d (via proxy %s:%d) failed: %s", *client, *proxy, why)


def refused(proxy: Peer, listener: str, reason: str, kind: str | None = None) -> None:
    """Log a refused connection: once a minute per source host and kind of reason (default: the reason;
    a misconfigured balancer retries a lot, and the details of malformed headers vary)."""
    refusal_log.log(
        logging.WARNING,
        (proxy[0], kind or reason),
        "refused connection from %s:%d on PROXY protocol listener %s: %s",
        proxy[0],
        proxy[1],
        listener,
        reason,
    )


async def read_header(loop: asyncio.AbstractEventLoop, conn: socket.socket) -> ProxyHeader:
    """The PROXY header at the start of a connection, read without taking one byte past it.
    Raises ProxyProtocolError (malformed) or EOFError (closed first)."""
    data = b""
    while True:
        header = parse(data)
        if header is not None:
            return header
        n = wanted(data)
        if not n:  # a version 1 line: look ahead for its CRLF, then take the line (or what is there of it)
            ahead = await _recv(loop, conn, V1_MAX - len(data), socket.MSG_PEEK)
            if not ahead:
                raise EOFError
            end = v1_end(data + ahead)
            n = len(ahead) if end < 0 else end - len(data)
        chunk = await _recv(loop, conn, n)
        if not chunk:
            raise EOFError
        data += chunk


async def _recv(loop: asyncio.AbstractEventLoop, conn: socket.socket, n: int, flags: int = 0) -> bytes:
    """`conn.recv(n, flags)` once data is there (loop.sock_recv takes no flags)."""
    while True:
        try:
            return conn.recv(n, flags)
        except (BlockingIOError, InterruptedError):
            pass
        ready: asyncio.Future[None] = loop.create_future()
        fd = conn.fileno()
        loop.add_reader(fd, _set_done, ready)
        try:
            await ready
        finally:
            loop.remove_reader(fd)


def _close_socket(sock: socket.socket, _: object) -> None:
    sock.close()


def _set_done(future: asyncio.Future[None]) -> None:
    if not future.done():
        future.set_result(None)


async def _listening_sockets(
    loop: asyncio.AbstractEventLoop, host: str | None, port: int, *, reuse_port: bool = False
) -> list[socket.socket]:
    """Listening sockets for HOST:PORT, as `loop.create_server` makes them (every address the host
    resolves to, SO_REUSEADDR, IPv6 sockets IPv6-only so an IPv4 one can share the port; SO_REUSEPORT
    for `--workers`: the kernel spreads new connections over the workers' sockets)."""
    infos = await loop.getaddrinfo(host or None, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    sockets: list[socket.socket] = []
    seen: set[tuple[int, object]] = set()
    try:
        for family, kind, proto, _, address in infos:
            if (family, address) in seen:
                continue
            seen.add((family, address))
            sock = socket.socket(family, kind, proto)
            sockets.append(sock)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            if reuse_port:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
            if family == socket.AF_INET6:
                sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
            try:
                sock.bind(address)
            except OSError as exc:
                raise OSError(exc.errno, f"cannot bind {address!r}: {exc.strerror}") from None
            sock.listen(BACKLOG)
            sock.setblocking(False)
    except BaseException:
        for sock in sockets:
            sock.close()
        raise
    return sockets


__all__ = ["Network", "Peer", "ProxyListener", "is_trusted", "read_header", "refused", "trusted_networks"]
