"""The broker process's log output: the per-connection lines written through `logutil.info`'s buffer read
exactly like ordinary log lines, in order, and a log set-up that is not the runner's own gets ordinary
records. Each case runs in a fresh interpreter with the broker's logging set-up, as `mqtt-guard broker`."""

from __future__ import annotations

import re
import subprocess
import sys
import textwrap
import time

LINE = re.compile(r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3} (INFO|WARNING) ([\w.]+): (.*)$")


def _stderr_of(body: str, level: str = "info") -> list[tuple[str, str, str]]:
    script = textwrap.dedent(
        f"""
        import asyncio, logging
        from mqtt_guard.engine.runner import setup_logging
        from mqtt_guard.logutil import info
        setup_logging({level!r})
        log = logging.getLogger("mqtt_guard.broker")
    """
    ) + textwrap.dedent(body)
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=30)
    assert done.returncode == 0, done.stderr
    lines = done.stderr.splitlines()
    parsed = [LINE.match(line) for line in lines]
    assert all(parsed), lines
    return [m.groups() for m in parsed if m]


def test_buffered_lines_keep_their_order_among_ordinary_records() -> None:
    out = _stderr_of("""
        async def main():
            info(log, "client %r connected from %s as %s (%s)", "dev-1", "127.0.0.1:5000", "alice", "password")
            log.warning("ordinary %d", 1)
            info(log, "client %r (%s) disconnected", "dev-1", "127.0.0.1:5000")
            await asyncio.sleep(0)
            info(log, "third")
        asyncio.run(main())
        info(log, "outside the loop")
        log.info("plain %s", "info")
    """)
    assert out == [
        ("INFO", "mqtt_guard.broker", "client 'dev-1' connected from 127.0.0.1:5000 as alice (password)"),
        ("WARNING", "mqtt_guard.broker", "ordinary 1"),
        ("INFO", "mqtt_guard.broker", "client 'dev-1' (127.0.0.1:5000) disconnected"),
        ("INFO", "mqtt_guard.broker", "third"),
        ("INFO", "mqtt_guard.broker", "outside the loop"),
        ("INFO", "mqtt_guard.broker", "plain info"),
    ]


def test_a_line_still_buffered_at_exit_is_written() -> None:
    out = _stderr_of("""
        async def main():
            info(log, "last words %d", 7)
        loop = asyncio.new_event_loop()
        loop.run_until_complete(main())   # the loop stops before the buffered line's write is due
        loop.close()
        asyncio.run(main())   # a new loop writes its lines (and the ones left over) itself
        log.warning("second loop done")
    """)
    assert out == [("INFO", "mqtt_guard.broker", "last words 7")] * 2 + [
        ("WARNING", "mqtt_guard.broker", "second loop done")
    ]


def test_filters_and_extra_handlers_get_ordinary_records() -> None:
    out = _stderr_of("""
        import sys
        seen = []
        class Drop(logging.Filter):
            def filter(self, record):
                seen.append(record.getMessage())
                return "secret" not in record.getMessage()
        log.addFilter(Drop())
        info(log, "visible %s", "line")
        info(log, "a secret line")
        log.removeFilter(log.filters[0])
        extra = logging.StreamHandler(sys.stdout)
        logging.getLogger("mqtt_guard").addHandler(extra)
        info(log, "to both")
        assert seen == ["visible line", "a secret line"], seen
    """)
    assert out == [("INFO", "mqtt_guard.broker", "visible line"), ("INFO", "mqtt_guard.broker", "to both")]


def test_info_lines_obey_the_log_level() -> None:
    out = _stderr_of(
        """
        info(log, "not shown")
        log.warning("shown")
    """,
        level="warning",
    )
    assert out == [("WARNING", "mqtt_guard.broker", "shown")]


def test_rate_limited_lines_say_how_many_were_held_back(caplog) -> None:
    import logging

    from mqtt_guard.logutil import RateLimitedLog

    limited = RateLimitedLog(logging.getLogger("mqtt_guard.test"), interval=0.05)
    with caplog.at_level(logging.INFO, logger="mqtt_guard.test"):
        for _ in range(5):
            limited.log(logging.INFO, "k", "refused %s", "x")
        limited.log(logging.INFO, "other", "refused %s", "y")  # another key is not held back
        time.sleep(0.06)
        limited.log(logging.INFO, "k", "refused %s", "x")
    lines = [r.getMessage() for r in caplog.records]
    assert lines[:2] == ["refused x", "refused y"]
    assert lines[2].startswith("refused x (and 4 more like it in the last ") and len(lines) == 3
    assert limited.suppressed == 4
