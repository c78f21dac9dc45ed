"""Log lines that could repeat per message are rate-limited, so a misbehaving client cannot flood logs."""

from __future__ import annotations

import logging
import time


class RateLimitedLog:
    def __init__(self, logger: logging.Logger, interval: float = 60.0, max_keys: int = 10_000) -> None:
        self.logger = logger
        self.interval = interval
        self.max_keys = max_keys
        self._last: dict[object, float] = {}
        self.suppressed = 0

    def log(self, level: int, key: object, msg: str, *args: object, exc_info: bool = False) -> None:
        now = time.monotonic()
        last = self._last.get(key)
        if last is not None and now - last < self.interval:
            self.suppressed += 1
            return
        if len(self._last) >= self.max_keys:
            self._last.clear()
        self._last[key] = now
        self.logger.log(level, msg, *args, exc_info=exc_info)
