"""Quota windows, aligned to UTC so every broker, the sidecar and the CLI agree on when one resets.

A window `N<unit>` (unit s, m, h, d or w) is one of the consecutive N-unit intervals counted from
1970-01-01 00:00:00 UTC; weeks are counted from Monday 1970-01-05 00:00 UTC. So `1d` resets at
00:00 UTC, `1h` on the hour, `15m` at :00/:15/:30/:45, `1w` on Monday 00:00 UTC. `2h` resets at
00:00, 02:00, ... UTC; a length that does not divide a day (`5h`) simply continues across midnight.
Leap seconds do not exist in unix time, so a day is always 86400 s.
"""

from __future__ import annotations

import datetime as dt
import re
from dataclasses import dataclass

UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}
WEEK_ORIGIN = 4 * 86400  # 1970-01-05 00:00 UTC was a Monday


@dataclass(frozen=True, slots=True)
class Window:
    count: int
    unit: str

    @property
    def seconds(self) -> int:
        return self.count * UNITS[self.unit]

    @property
    def origin(self) -> int:
        return WEEK_ORIGIN if self.unit == "w" else 0

    def start(self, now: float) -> int:
        """Unix second at which the window containing `now` began."""
        length = self.seconds
        return int((now - self.origin) // length) * length + self.origin

    def end(self, now: float) -> int:
        return self.start(now) + self.seconds

    def __str__(self) -> str:
        return f"{self.count}{self.unit}"


def parse_window(text: str) -> Window:
    m = re.fullmatch(r"\s*(\d*)\s*([smhdw])\s*", text)
    if not m or (m.group(1) and int(m.group(1)) < 1):
        raise ValueError(f"expected a window like 1d, 12h, 15m, 30s or 1w, got {text!r}")
    return Window(int(m.group(1) or 1), m.group(2))


def utc(ts: float) -> str:
    return dt.datetime.fromtimestamp(ts, dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
