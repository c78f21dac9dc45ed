"""How every CLI command writes a moment and a duration, so `stats`, `top`, `quota show` and `kick` agree.

A moment is ISO 8601 in UTC (`2026-12-08T00:00:00Z`, the form the brokers log and the JSON outputs
carry), followed where it helps by its distance from now in words (`in 8 h 25 min`, `3 min ago`):
an admin reading a block or a window reset wants both "when" and "how long".
"""

from __future__ import annotations

import time

from ..quota.windows import utc

__all__ = ["ago", "block_until", "duration", "until", "utc", "when"]


def duration(seconds: float) -> str:
    """`45 s`, `7 min`, `8 h 25 min`, `3 d 4 h`: coarse enough to read at a glance."""
    seconds = max(0, int(seconds))
    if seconds < 120:
        return f"{seconds} s"
    if seconds < 7200:
        return f"{seconds // 60} min"
    if seconds < 3 * 86400:
        return f"{seconds // 3600} h {seconds % 3600 // 60} min"
    return f"{seconds // 86400} d {seconds % 86400 // 3600} h"


def until(ts: float, now: float | None = None) -> str:
    """A moment to come: `2026-12-08T00:00:00Z (in 8 h 25 min)`."""
    now = time.time() if now is None else now
    return f"{utc(ts)} (in {duration(ts - now)})"


def block_until(ts: float | None, now: float | None = None) -> str:
    """How long a block holds: `until 2026-12-08T00:00:00Z (in 8 h 25 min)`, or `until lifted` for a
    block without an expiry (`until` None)."""
    return "until lifted (no expiry)" if ts is None else f"until {until(ts, now)}"


def ago(ts: float, now: float | None = None) -> str:
    """A past moment: `2026-12-07T15:34:00Z (3 min ago)`."""
    now = time.time() if now is None else now
    return f"{utc(ts)} ({duration(now - ts)} ago)"


def when(ts: float | None, now: float | None = None) -> str:
    """A moment that may be unknown (`-`), past or future."""
    if ts is None:
        return "-"
    now = time.time() if now is None else now
    return until(ts, now) if ts > now else ago(ts, now)
