"""cli/timefmt.py: the one way the CLI writes moments and durations."""

from __future__ import annotations

from mqtt_guard.cli import timefmt

NOW = 1_796_601_600.0  # 2026-12-07T00:00:00Z


def test_durations_read_at_a_glance():
    assert timefmt.duration(-5) == "0 s"
    assert timefmt.duration(45.9) == "45 s"
    assert timefmt.duration(119) == "119 s"
    assert timefmt.duration(7 * 60 + 3) == "7 min"
    assert timefmt.duration(8 * 3600 + 25 * 60 + 59) == "8 h 25 min"
    assert timefmt.duration(3 * 86400 + 4 * 3600) == "3 d 4 h"


def test_moments_are_iso_utc_with_their_distance():
    assert timefmt.utc(NOW) == "2026-12-07T00:00:00Z"
    assert timefmt.until(NOW + 8 * 3600 + 25 * 60, NOW) == "2026-12-07T08:25:00Z (in 8 h 25 min)"
    assert timefmt.ago(NOW - 180, NOW) == "2026-12-06T23:57:00Z (3 min ago)"
    assert timefmt.when(None, NOW) == "-"
    assert timefmt.when(NOW + 60, NOW).endswith("(in 60 s)")
    assert timefmt.when(NOW - 60, NOW).endswith("(60 s ago)")
    assert timefmt.block_until(NOW + 30, NOW) == "until 2026-12-07T00:00:30Z (in 30 s)"
    assert timefmt.block_until(None, NOW) == "until lifted (no expiry)"
