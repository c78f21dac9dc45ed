"""How we build Redis clients from a URL, so every process connects the same way.

Supported URLs: ``redis://``, ``rediss://`` and ``unix://`` (single node, via redis-py's own
parser). Sentinel and Cluster are handled by the scale-out work; they are rejected here with a
clear message rather than silently treated as a single node.
"""

from __future__ import annotations

import redis.asyncio as aioredis

DEFAULT_REDIS_URL = "redis://127.0.0.1:6379/0"
REDIS_ERRORS: tuple[type[BaseException], ...] = (
    aioredis.ConnectionError,
    aioredis.TimeoutError,
    ConnectionError,
    OSError,
)


class RedisUrlError(ValueError):
    pass


def make_async_client(url: str, *, socket_timeout: float = 2.0) -> aioredis.Redis:
    """A decode_responses client with short timeouts: a dead Redis must fail fast, not hang CONNECT."""
    scheme = url.split("://", 1)[0].lower() if "://" in url else ""
    if scheme not in ("redis", "rediss", "unix"):
        raise RedisUrlError(f"unsupported Redis URL scheme {scheme!r} in {url!r}: use redis://, rediss:// or unix://")
    return aioredis.Redis.from_url(
        url,
        decode_responses=True,
        socket_timeout=socket_timeout,
        socket_connect_timeout=socket_timeout,
        health_check_interval=30,
    )
