"""How we build Redis clients from a URL, so every process (broker, sidecar, CLI) connects the same way.

Supported URLs:
- ``redis://[[user]:password@]host:port/db``, ``rediss://…`` (TLS) and ``unix:///path?db=N``: one node;
- ``redis+sentinel://[[user]:password@]host:port[,host:port…]/service[/db]``: Redis Sentinel; the
  client asks the sentinels for the current master and follows fail-overs.
Redis Cluster is not supported yet (our Lua scripts and tracking need per-slot handling); such URLs
are refused with a clear message instead of being treated as a single node.
"""

from __future__ import annotations

from typing import Any
from urllib.parse import unquote, urlsplit

import redis.asyncio as aioredis
from redis.asyncio.sentinel import Sentinel

DEFAULT_REDIS_URL = "redis://127.0.0.1:6379/0"
REDIS_ERRORS: tuple[type[BaseException], ...] = (
    aioredis.ConnectionError,
    aioredis.TimeoutError,
    ConnectionError,
    OSError,
)


class RedisUrlError(ValueError):
    pass


POOL_SIZE = 64
"""Connections per client. A CONNECT storm is far more concurrent than this; it queues for a connection
(each Redis call is well under a millisecond) instead of being refused."""
POOL_WAIT = 10.0
"""Seconds a command waits for a free connection before it fails as 'Redis unavailable'. Only a Redis
that stops answering keeps every connection busy this long (each command has `socket_timeout`)."""


def make_async_client(
    url: str,
    *,
    socket_timeout: float | None = 2.0,
    pool_size: int = POOL_SIZE,
    pool_wait: float = POOL_WAIT,
    **kwargs: Any,
) -> aioredis.Redis:
    """A decode_responses client with short timeouts: a dead Redis must fail fast, not hang CONNECT.

    The connection pool waits for a free connection (up to `pool_wait` seconds) instead of raising
    redis-py's MaxConnectionsError, a ConnectionError that reads as "Redis unavailable": 1,000 devices
    connecting at once after a restart must all get in while Redis is healthy (issue 15).

    Extra keyword arguments (e.g. ``protocol=2``, ``client_name=…``, ``single_connection_client``)
    go to redis-py unchanged.
    """
    scheme = url.split("://", 1)[0].lower() if "://" in url else ""
    options: dict[str, Any] = {
        "decode_responses": True,
        "socket_timeout": socket_timeout,
        "socket_connect_timeout": socket_timeout,
        **kwargs,
    }
    if scheme in ("redis", "rediss", "unix"):
        options.setdefault("health_check_interval", 30)
        single = bool(options.pop("single_connection_client", False))
        pool = aioredis.BlockingConnectionPool.from_url(url, max_connections=pool_size, timeout=pool_wait, **options)
        client = aioredis.Redis(connection_pool=pool, single_connection_client=single)
        client.auto_close_connection_pool = True  # the client owns its pool (what Redis.from_pool does)
        return client
    if scheme == "redis+sentinel":
        return _sentinel_client(url, options)
    raise RedisUrlError(
        f"unsupported Redis URL scheme {scheme!r} in {redact(url)!r}: "
        "use redis://, rediss://, unix:// or redis+sentinel://host:port[,host:port]/service[/db]"
    )


def _sentinel_client(url: str, options: dict[str, Any]) -> aioredis.Redis:
    parts = urlsplit(url)
    hosts: list[tuple[str, int]] = []
    netloc = parts.netloc.rsplit("@", 1)[-1]
    for item in netloc.split(","):
        host, _, port = item.rpartition(":")
        if not host or not port.isdigit():
            raise RedisUrlError(f"sentinel address {item!r} in {redact(url)!r} must be host:port")
        hosts.append((host, int(port)))
    path = [p for p in parts.path.split("/") if p]
    if not path:
        raise RedisUrlError(f"{redact(url)!r}: the master's service name is missing (…/mymaster/0)")
    service = path[0]
    db = int(path[1]) if len(path) > 1 else 0
    username = unquote(parts.username) if parts.username else None
    password = unquote(parts.password) if parts.password else None
    single = options.pop("single_connection_client", False)
    sentinel = Sentinel(  # type: ignore[no-untyped-call]  # redis-py leaves Sentinel.__init__ unannotated
        hosts, socket_timeout=options["socket_timeout"], sentinel_kwargs={"socket_timeout": options["socket_timeout"]}
    )
    client: aioredis.Redis = sentinel.master_for(service, db=db, username=username, password=password, **options)
    if single:
        client.single_connection_client = True  # tolerated: the pool hands back the same idle connection
    return client


def redact(url: str) -> str:
    """The URL without its password, for logs and error messages."""
    if "@" not in url:
        return url
    scheme, _, rest = url.partition("://")
    return f"{scheme}://***@{rest.rsplit('@', 1)[1]}"
