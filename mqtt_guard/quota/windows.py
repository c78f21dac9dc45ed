"""Quota windows, aligned to UTC so every broker, the sidecar and the CLI agree on when one resets.

A window `N<unit>` (unit s, m, h, d or w) is one of the consecutive N-unit intervals counted from
1970-01-01 00:00:00 UTC; weeks are counted from Monday 1970-01-05 00:00 UTC. So `1d` resets at
00:00 UTC, `1h` on the hour, `15m` at :00/:15/:30/:45, `1w` on Monday 00:00 UTC. `2h` resets at
00:00, 02:00, ... UTC; a length that does not divide a day (`5h`) simply continues across midnight.
Leap seconds do not exist in unix time, so a day is always 86400 s.

`N mo` is N calendar months (UTC), counted from January 1970: `1mo` resets on the 1st of each month
at 00:00 UTC, `3mo` on the 1st of January, April, July and October, `12mo` on New Year. A month is
not a fixed number of seconds, so every window end is asked of the window (`end_of`), never computed
as start + length.
"""

from __future__ import annotations

import calendar
import datetime as dt
import re
from dataclasses import dataclass

UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}
MONTH = "mo"
MONTH_NOMINAL = 2_629_746  # seconds: the mean Gregorian month (only to compare windows, see `seconds`)
WEEK_ORIGIN = 4 * 86400  # 1970-01-05 00:00 UTC was a Monday


def month_index(ts: float) -> int:
    """Months since January 1970 of the UTC month containing unix second `ts`."""
    d = dt.datetime.fromtimestamp(ts, dt.UTC)
    return (d.year - 1970) * 12 + d.month - 1


def month_start(index: int) -> int:
    """Unix second of 00:00 UTC on the 1st of month `index` (months since January 1970)."""
    year, month = divmod(index, 12)
    return calendar.timegm((1970 + year, month + 1, 1, 0, 0, 0))


@dataclass(frozen=True, slots=True)
class Window:
    count: int
    unit: str

    @property
    def seconds(self) -> int:
        """The length; for calendar months the nominal one (a mean month): only for comparing windows."""
        if self.unit == MONTH:
            return self.count * MONTH_NOMINAL
        return self.count * UNITS[self.unit]

    @property
    def origin(self) -> int:
        return WEEK_ORIGIN if self.unit == "w" else 0

    def start(self, now: float) -> int:
        """Unix second at which the window containing `now` began."""
        if self.unit == MONTH:
            return month_start(month_index(now) // self.count * self.count)
        length = self.seconds
        return int((now - self.origin) // length) * length + self.origin

    def end_of(self, start: int) -> int:
        """Unix second at which the window that began at `start` ends (the next one begins)."""
        if self.unit == MONTH:
            return month_start(month_index(start) + self.count)
        return start + self.seconds

    def end(self, now: float) -> int:
        return self.end_of(self.start(now))

    def __str__(self) -> str:
        return f"{self.count}{self.unit}"


def parse_window(text: str) -> Window:
    m = re.fullmatch(r"\s*(\d*)\s*(mo|[smhdw])\s*", text)
    if not m or (m.group(1) and int(m.group(1)) < 1):
        raise ValueError(f"expected a window like 1d, 12h, 15m, 30s, 1w or 1mo (calendar month, UTC), got {text!r}")
    return Window(int(m.group(1) or 1), m.group(2))


def utc(ts: float) -> str:
    return dt.datetime.fromtimestamp(ts, dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
