"""Polling a condition with a timeout: the one helper the tests use to wait for something that happens
in another process or task (a broker, Redis, the invalidation listener) within a bounded time.

`until` returns the condition's last result, so `assert until(lambda: ...)` fails with the test's own
message; `expect` fails by itself and names the last value; `until_async` waits on an event loop;
`until_text` waits for a log or output file to contain a text.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import TypeVar

T = TypeVar("T")


def until(check: Callable[[], T], timeout: float = 5.0, interval: float = 0.02) -> T:
    """Call `check()` every `interval` seconds until it returns something truthy or `timeout` seconds
    have passed (it is called once more at the deadline); return its last result."""
    deadline = time.monotonic() + timeout
    while True:
        result = check()
        if result or time.monotonic() > deadline:
            return result
        time.sleep(interval)


def expect(check: Callable[[], T], timeout: float = 10.0, interval: float = 0.05) -> T:
    """`until`, failing the test (AssertionError with the last value) when the condition never holds."""
    result = until(check, timeout, interval)
    if not result:
        raise AssertionError(f"condition not met within {timeout}s; last value: {result!r}")
    return result


def until_text(
    read: Callable[[], str],
    text: str,
    timeout: float = 5.0,
    interval: float = 0.05,
    alive: Callable[[], bool] | None = None,
) -> str | None:
    """`until` for a log or output: call `read()` until what it returns contains `text`; return that, or
    None when `timeout` passes first (or, with `alive`, as soon as `alive()` is false: the process that
    writes it has exited). The caller raises its own error, naming its own log."""
    content = ""

    def seen() -> bool:
        nonlocal content
        content = read()
        return text in content or (alive is not None and not alive())

    until(seen, timeout, interval)
    return content if text in content else None


async def until_async(
    check: Callable[[], T] | Callable[[], Awaitable[T]], timeout: float = 5.0, interval: float = 0.02
) -> T:
    """`until` on an event loop: sleeps with asyncio.sleep, so the tasks under test run meanwhile;
    `check` may be a coroutine function."""
    deadline = time.monotonic() + timeout
    while True:
        result = check()
        if asyncio.iscoroutine(result):
            result = await result
        if result or time.monotonic() > deadline:
            return result  # type: ignore[return-value]  # awaited above when it was a coroutine
        await asyncio.sleep(interval)
