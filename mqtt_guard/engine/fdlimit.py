"""The open-files limit (RLIMIT_NOFILE): every connection holds a descriptor, and at the limit the
listeners cannot accept. Nothing said so before: a fleet that outgrew the limit just saw connections
closed at once, with nothing in the broker's log.

- `raise_open_files_limit` at start: the soft limit goes up to the hard one (as mosquitto and most
  servers do), and a WARNING says when it stays below what the listeners' `max_connections` need.
- `FdLimitWatch` reports, in one rate-limited ERROR a person can act on, that connections are being
  refused at the limit, and counts it (`connections_refused_fd_limit`). The event loops fail
  differently: asyncio's accept() gets EMFILE/ENFILE and hands it to the loop's exception handler (with
  a traceback, up to a hundred times per retry, once a second); uvloop's libuv accepts such a
  connection on a reserve descriptor and closes it at once, reporting nothing. So under asyncio each
  reported failure counts, and under uvloop a check once a second (one open and close of /dev/null,
  never per connection or per message) counts each second it finds the limit reached.
"""

from __future__ import annotations

import asyncio
import errno
import logging
import os
import resource
from collections.abc import Sequence
from typing import Any, Protocol

from ..config import ListenerConfig
from ..logutil import RateLimitedLog
from ..metrics import counters as C

log = logging.getLogger("mqtt_guard.broker")
UNLIMITED_WANT = 4096  # descriptors wanted when a listener has no max_connections
RESERVE = 32  # descriptors besides the connections: Redis connections, log and config files, the loop itself
CHECK_INTERVAL = 1.0  # s between checks under uvloop
ACCEPT_FAILED = "socket.accept() out of system resource"  # asyncio's exception-handler message
FD_ERRORS = (errno.EMFILE, errno.ENFILE)
WHAT_TO_DO = "raise the limit: LimitNOFILE= in the systemd unit, or `ulimit -n` in the shell that starts the broker"


class Incr(Protocol):
    def incr(self, client_id: str | None, name: str, n: int = 1) -> None: ...


def wanted(listeners: Sequence[ListenerConfig]) -> int:
    """The descriptors the listeners may need: their max_connections (UNLIMITED_WANT for one without)."""
    return sum(listener.max_connections or UNLIMITED_WANT for listener in listeners)


def raise_open_files_limit(listeners: Sequence[ListenerConfig]) -> tuple[int, int]:
    """Raise the soft RLIMIT_NOFILE to the hard one and log what was done; WARNING if the soft limit
    stays below what the listeners need. Returns the (soft, hard) limit in force."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != hard and hard != resource.RLIM_INFINITY:  # (an unlimited soft limit is refused by some kernels)
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
        except (ValueError, OSError) as exc:
            log.warning("could not raise the open-files limit from %s to %s: %s", _n(soft), _n(hard), exc)
        else:
            log.info("raised the open-files limit (RLIMIT_NOFILE) from %s to the hard limit %s", _n(soft), _n(hard))
            soft = hard
    need = wanted(listeners)
    if soft != resource.RLIM_INFINITY and soft < need + RESERVE:
        log.warning(
            "the open-files limit (RLIMIT_NOFILE soft=%s, hard=%s) is below the %d connections the listeners "
            "may take (max_connections, %d where unlimited) plus %d for the broker itself: connections past "
            "it will be refused; %s",
            _n(soft),
            _n(hard),
            need,
            UNLIMITED_WANT,
            RESERVE,
            WHAT_TO_DO,
        )
    return soft, hard


def _n(limit: int) -> str:
    return "unlimited" if limit == resource.RLIM_INFINITY else str(limit)


class FdLimitWatch:
    """Reports and counts connections refused at the open-files limit (see the module docstring)."""

    def __init__(self, listeners: str, counters: Incr, interval: float = 60.0) -> None:
        """`listeners`: how the log line names them (e.g. "tcp://0.0.0.0:1883"); `interval`: seconds
        between two ERROR lines (the next one says how many were held back)."""
        self.listeners = listeners
        self._counters = counters
        self._log = RateLimitedLog(log, interval)
        self._loop: asyncio.AbstractEventLoop | None = None
        self._timer: asyncio.TimerHandle | None = None
        self._previous_handler: Any = None

    def start(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        if type(loop).__module__.split(".")[0] == "uvloop":
            self._timer = loop.call_later(CHECK_INTERVAL, self._check)
        else:
            self._previous_handler = loop.get_exception_handler()
            loop.set_exception_handler(self._exception)

    def stop(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if self._loop is not None and self._loop.get_exception_handler() == self._exception:
            self._loop.set_exception_handler(self._previous_handler)
        self._loop = None

    def refused(self, listener: str) -> None:
        """One refusal (or one second of refusals) at the limit: counted; logged at most once a minute."""
        self._counters.incr(None, C.REFUSED_FD_LIMIT)
        soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        self._log.log(
            logging.ERROR,
            "fd limit",
            "refusing connections on %s: the broker is at its open-files limit (RLIMIT_NOFILE soft=%s, "
            "hard=%s), every connection holds one; %s",
            listener,
            _n(soft),
            _n(hard),
            WHAT_TO_DO,
        )

    def _check(self) -> None:
        loop = self._loop
        if loop is None:
            return
        try:
            os.close(os.open(os.devnull, os.O_RDONLY))
        except OSError as exc:
            if exc.errno in FD_ERRORS:
                self.refused(self.listeners)
        self._timer = loop.call_later(CHECK_INTERVAL, self._check)

    def _exception(self, loop: asyncio.AbstractEventLoop, context: dict[str, Any]) -> None:
        exc = context.get("exception")
        if context.get("message") == ACCEPT_FAILED and isinstance(exc, OSError) and exc.errno in FD_ERRORS:
            sock = context.get("socket")
            try:
                name = "{}:{}".format(*sock.getsockname()[:2]) if sock is not None else self.listeners
            except (OSError, TypeError):
                name = self.listeners
            self.refused(name)
            return
        if self._previous_handler is not None:
            self._previous_handler(loop, context)
        else:
            loop.default_exception_handler(context)
