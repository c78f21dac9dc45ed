"""Logging helpers: rate-limited lines (a misbehaving client cannot flood the log) and the broker process's
own stderr handler, with a cheap path for the lines written for every connection.

Two INFO lines per connection ("connected", "disconnected") through `logging`'s record machinery (a
LogRecord of ~30 fields, filters, the handler lock, a formatter, a write and a flush each) were about a
tenth of the broker's CPU per CONNECT. `info()` writes such a line straight into the handler's buffer when
nothing but that handler would see the record (no filters, no other handlers on the way up): the same
text, written with the other lines of the next 10 ms in one write (lines a SIGKILL catches in the buffer
are lost; a clean exit writes them). Anything else (another handler, a filter, a test's log
capture, the mosquitto-compat log set-up) gets an ordinary `logger.info` call.
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from typing import TextIO

LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
# A worker of `broker --workers N` (mqtt_guard/workers.py) marks its lines after the time: "... w1 INFO ...".
WORKER_TAG = f" w{os.environ['MQTT_GUARD_WORKER'].partition('/')[0]}" if os.environ.get("MQTT_GUARD_WORKER") else ""
_MAX_BUFFERED = 256  # lines held before they are written even if WRITE_DELAY has not passed
WRITE_DELAY = 0.01  # seconds a buffered line may wait (one write per ~20 CONNECTs at full rate)


class RateLimitedLog:
    """A log line per key at most once per `interval` seconds: what a client can repeat (a denied
    PUBLISH, a refused CONNECT, a withheld delivery) must not flood the log. The next line of a key
    says how many were held back since its last one, so nothing goes unnoticed."""

    def __init__(self, logger: logging.Logger, interval: float = 60.0, max_keys: int = 10_000) -> None:
        self.logger = logger
        self.interval = interval
        self.max_keys = max_keys
        self._last: dict[object, float] = {}
        self._held: dict[object, int] = {}  # key -> lines held back since its last line
        self.suppressed = 0

    def log(self, level: int, key: object, msg: str, *args: object, exc_info: bool = False) -> None:
        now = time.monotonic()
        last = self._last.get(key)
        if last is not None and now - last < self.interval:
            self.suppressed += 1
            self._held[key] = self._held.get(key, 0) + 1
            return
        if len(self._last) >= self.max_keys:
            self._last.clear()
            self._held.clear()
        self._last[key] = now
        held = self._held.pop(key, 0)
        if held:
            msg = f"{msg} (and {held} more like it in the last {now - last:.0f} s)" if last is not None else msg
        self.logger.log(level, msg, *args, exc_info=exc_info)


class FastFormatter(logging.Formatter):
    """logging's default format, with the date and time formatted once per second instead of per record
    (time.strftime was a fifth of the cost of the two log lines of every connection)."""

    def __init__(self, fmt: str) -> None:
        super().__init__(fmt)
        self._second = -1
        self._stamp = ""
        self._uses_time = super().usesTime()

    def usesTime(self) -> bool:  # logging's name
        return self._uses_time

    def formatTime(self, record: logging.LogRecord, datefmt: str | None = None) -> str:
        if datefmt:
            return super().formatTime(record, datefmt)
        return self.stamp(record.created)

    def stamp(self, created: float) -> str:
        second = int(created)
        if second != self._second:
            self._second = second
            self._stamp = time.strftime(self.default_time_format, self.converter(second))
        return "%s,%03d%s" % (self._stamp, (created - second) * 1000, WORKER_TAG)  # noqa: UP031 - half an f-string's cost


class LineHandler(logging.StreamHandler[TextIO]):
    """The broker process's stderr handler (LOG_FORMAT). Ordinary records are written at once, as by a
    StreamHandler; `info()` lines wait in a buffer for up to WRITE_DELAY (or until an ordinary record
    comes, so the order of lines is kept)."""

    def __init__(self, stream: TextIO | None = None) -> None:
        super().__init__(stream)
        self.fast_formatter = FastFormatter(LOG_FORMAT)
        self.setFormatter(self.fast_formatter)
        self._lines: list[str] = []
        self._scheduled_on: asyncio.AbstractEventLoop | None = None  # the loop that will write the lines

    def line(self, level: str, name: str, message: str) -> None:
        self._lines.append(f"{self.fast_formatter.stamp(time.time())} {level} {name}: {message}\n")
        if len(self._lines) >= _MAX_BUFFERED:
            self.write_lines()
            return
        pending = self._scheduled_on
        if pending is not None and pending.is_running():
            return  # a write is due on this (running) loop; get_running_loop() costs a getpid() call
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:  # no event loop in this thread: write now
            self.write_lines()
            return
        loop.call_later(WRITE_DELAY, self.write_lines)
        self._scheduled_on = loop

    def write_lines(self) -> None:
        self._scheduled_on = None
        if not self._lines:
            return
        self.acquire()
        try:
            text, self._lines = "".join(self._lines), []
            try:
                self.stream.write(text)
                self.stream.flush()
            except Exception:  # noqa: BLE001 - as logging does: a broken stderr must not stop the broker
                pass
        finally:
            self.release()

    def emit(self, record: logging.LogRecord) -> None:
        if self._lines:
            self.write_lines()
        super().emit(record)

    def flush(self) -> None:
        if self._lines:
            self.write_lines()
        super().flush()


def _line_handler(logger: logging.Logger) -> LineHandler | None:
    """The LineHandler that alone would see `logger`'s records, else None."""
    node: logging.Logger | None = logger
    while node is not None:
        if node.filters or node.disabled:
            return None
        if node.parent is None:  # the root
            handlers = node.handlers
            if (
                len(handlers) == 1
                and type(handlers[0]) is LineHandler
                and not handlers[0].filters
                and handlers[0].level <= logging.INFO
            ):
                return handlers[0]
            return None
        if node.handlers or not node.propagate:
            return None
        node = node.parent
    return None


def info(logger: logging.Logger, msg: str, *args: object) -> None:
    """`logger.info(msg, *args)`, through the LineHandler's buffer when nothing else would see it."""
    if not logger.isEnabledFor(logging.INFO):
        return
    handler = _line_handler(logger)
    if handler is None:
        logger.info(msg, *args)
        return
    handler.line("INFO", logger.name, msg % args if args else msg)
