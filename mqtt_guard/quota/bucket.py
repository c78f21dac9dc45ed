"""Token bucket for the `rate` limit: local to one connection, no Redis involved.

A client connects to one broker at a time, so its publish rate is decided where it is connected.
"""

from __future__ import annotations

import time
from collections.abc import Callable


class TokenBucket:
    __slots__ = ("rate", "burst", "tokens", "stamp", "clock")

    def __init__(self, rate: float, burst: float, clock: Callable[[], float] = time.monotonic) -> None:
        self.rate = rate
        self.burst = burst
        self.tokens = burst  # a fresh connection may send a full burst
        self.clock = clock
        self.stamp = clock()

    def take(self, n: float = 1.0) -> bool:
        now = self.clock()
        tokens = self.tokens + (now - self.stamp) * self.rate
        self.stamp = now
        if tokens > self.burst:
            tokens = self.burst
        if tokens >= n:
            self.tokens = tokens - n
            return True
        self.tokens = tokens
        return False

    def give_back(self, n: float = 1.0) -> None:
        self.tokens = min(self.burst, self.tokens + n)

    def reconfigure(self, rate: float, burst: float) -> None:
        self.take(0)  # bring the level up to date under the old rate
        self.rate = rate
        self.burst = burst
        self.tokens = min(self.tokens, burst)
