"""Time arithmetic shared by the flusher, the CLI and the exporters: rate-history buckets, mosquitto-style
load averages, and event-loop lag.
"""

from __future__ import annotations

import asyncio
import math
import time
from dataclasses import dataclass

from ..tasks import cancel_and_wait

# Rate history resolutions: (name used in key names, bucket seconds, how long buckets are kept).
RES_10S = ("10s", 10, 3600)  # 10 s buckets for the last hour
RES_1M = ("1m", 60, 86400)  # 1 min buckets for the last 24 h
RESOLUTIONS = (RES_10S, RES_1M)

# Directions of the rate history: messages the client sent (in) and was sent (out).
DIR_IN = "in"
DIR_OUT = "out"


def bucket_start(t: float, seconds: int) -> int:
    return int(t // seconds) * seconds


def next_boundary(t: float, seconds: int) -> float:
    return (math.floor(t / seconds) + 1) * seconds


def bucket_range(now: float, seconds: int, span: int) -> list[int]:
    """Bucket starts covering the last `span` seconds up to and including the current bucket, oldest first."""
    last = bucket_start(now, seconds)
    n = span // seconds
    return [last - seconds * (n - 1 - i) for i in range(n)]


SPARK_CHARS = " ▁▂▃▄▅▆▇█"


def sparkline(values: list[float], width: int | None = None) -> str:
    """Values as block characters (zero is a space, the maximum a full block); averaged down to `width`."""
    if width is not None and width > 0 and len(values) > width:
        step = len(values) / width
        values = [
            sum(values[int(i * step) : int((i + 1) * step)]) / max(1, int((i + 1) * step) - int(i * step))
            for i in range(width)
        ]
    top = max(values, default=0)
    if top <= 0:
        return " " * len(values)
    out = []
    for v in values:
        if v <= 0:
            out.append(SPARK_CHARS[0])
        else:
            out.append(SPARK_CHARS[max(1, min(8, math.ceil(v / top * 8)))])
    return "".join(out)


@dataclass
class LoadAverage:
    """mosquitto's $SYS/broker/load/...: an exponentially decaying average of a count per minute over
    1, 5 and 15 minutes, updated from a monotonically increasing total."""

    one: float = 0.0
    five: float = 0.0
    fifteen: float = 0.0
    _last_total: int | None = None
    _last_time: float | None = None

    def update(self, total: int, now: float | None = None) -> None:
        now = time.monotonic() if now is None else now
        if self._last_total is None or self._last_time is None:
            self._last_total, self._last_time = total, now
            return
        dt = now - self._last_time
        if dt <= 0:
            return
        per_minute = (total - self._last_total) * 60.0 / dt
        for attr, window in (("one", 60.0), ("five", 300.0), ("fifteen", 900.0)):
            e = math.exp(-dt / window)
            setattr(self, attr, per_minute + e * (getattr(self, attr) - per_minute))
        self._last_total, self._last_time = total, now

    def as_dict(self) -> dict[str, float]:
        return {"1min": self.one, "5min": self.five, "15min": self.fifteen}


class LoopLagMonitor:
    """How late the event loop wakes a sleeping task: a blocked loop delays every client.

    Reusable by any asyncio process (the broker uses it; the sidecar can export its own `lag`)."""

    def __init__(self, interval: float = 0.5) -> None:
        self.interval = interval
        self.lag = 0.0  # seconds, the latest measurement
        self.max_lag = 0.0  # largest since start
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._run(), name="mqtt-guard-loop-lag")

    async def stop(self) -> None:
        await cancel_and_wait(self._task)
        self._task = None

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            before = loop.time()
            await asyncio.sleep(self.interval)
            self.lag = max(0.0, loop.time() - before - self.interval)
            self.max_lag = max(self.max_lag, self.lag)
