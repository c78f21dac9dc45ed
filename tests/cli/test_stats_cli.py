"""`mqtt-guard stats` and `top` word times as `quota show` does, and say what each number is."""

from __future__ import annotations

import re

ISO = r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ"


def test_stats_shows_a_block_and_a_window_reset_as_quota_show_does(cli, add_user, rds, prefix):
    add_user("bob", "pw")
    rds.hset(f"{prefix}stats:user:bob", mapping={"messages_in": "3", "last_seen": "1796601600"})
    assert cli("quota", "set", "bob", "--events", "10/1d").returncode == 0
    kicked = cli("kick", "--user", "bob", "--block", "8h", "--reason", "too noisy")
    assert kicked.returncode == 0, kicked.stderr
    eight_h = r"\(in (7 h 59|8 h 0) min\)"
    assert re.search(rf"blocked for 8h \(until {ISO} {eight_h}\)", kicked.stdout), kicked.stdout

    text = " ".join(cli("stats", "--user", "bob").stdout.split())  # rich wraps at 80 columns
    block = re.search(rf"quota block until ({ISO}) {eight_h}: too noisy \(by cli:", text)
    assert block, text
    assert "'reason'" not in text  # not a raw dict
    assert re.search(rf"quota events 0 of 10 per 1d \(10 left, resets at {ISO} \(in [^)]+\)\)", text), text
    assert not re.search(r"resets in [\d.]+s", text)
    assert "last activity 2026-12-07T00:00:00Z (" in text

    shown = cli("quota", "show", "bob").stdout
    # the same words (the distance from now may have moved by a minute between the two calls)
    assert re.search(rf"blocked until {re.escape(block.group(1))} {eight_h}: too noisy", shown), shown


def test_top_says_which_columns_are_rates_and_which_are_totals(cli):
    out = cli("top", "--once", "--width", "100")
    assert out.returncode == 0, out.stderr
    text = " ".join(out.stdout.split())
    assert re.search(rf"busiest clients over the last \d+s \(0/0 brokers alive, {ISO}\)", text), text
    assert "in/s, out/s: average over the last" in text
    assert "the other counts: totals since first counted" in text
    header = next(line for line in out.stdout.splitlines() if "in/s" in line)
    assert header.split()[:4] == ["client", "user", "in/s", "out/s"]
