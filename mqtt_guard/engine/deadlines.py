"""Deadlines for many short waits, checked by one shared timer instead of a timer per wait.

Every new socket waits for its CONNECT under `limits.connect_timeout`. `asyncio.timeout` arms and
cancels a TimerHandle per socket (and leaves cancelled handles in the loop's heap), a measurable share
of a CONNECT's cost at thousands of connections per second. Here each wait is one dict entry; while
any wait is registered, one timer runs every `tick` seconds and cancels the tasks whose deadline has
passed, which then see TimeoutError as with `asyncio.timeout`. A deadline is enforced within `tick`.

Objects other than tasks can be watched too (`watch`): a socket that has not sent its whole CONNECT yet
has no task (engine/transport.py); at its deadline the sweep calls its `expire()`.
"""

from __future__ import annotations

import asyncio
from types import TracebackType
from typing import Any, Protocol


class Expiring(Protocol):
    def expire(self) -> None: ...


class Deadlines:
    def __init__(self, tick: float) -> None:
        self.tick = tick
        self._due: dict[asyncio.Task[Any] | Expiring, float] = {}  # task -> loop time by which its wait must end
        self._expired: set[asyncio.Task[Any]] = set()  # cancelled by the sweep
        self._timer: asyncio.TimerHandle | None = None
        # the broker's loop, looked up once: asyncio.get_running_loop() and current_task() without a loop
        # make a getpid() system call each (CPython checks for a fork)
        self._loop: asyncio.AbstractEventLoop | None = None

    def deadline(self, seconds: float) -> _Deadline:
        """Like `asyncio.timeout(seconds)` for the current task (`async with`), enforced within `tick`."""
        return _Deadline(self, seconds)

    def watch(self, item: Expiring, seconds: float) -> None:
        """Call `item.expire()` once `seconds` have passed, unless `unwatch(item)` comes first."""
        self._add(item, seconds, self._running_loop())

    def _running_loop(self) -> asyncio.AbstractEventLoop:
        loop = self._loop
        if loop is None or loop.is_closed():
            loop = self._loop = asyncio.get_running_loop()
        return loop

    def unwatch(self, item: Expiring) -> None:
        self._due.pop(item, None)

    def _add(self, item: asyncio.Task[Any] | Expiring, seconds: float, loop: asyncio.AbstractEventLoop) -> None:
        self._due[item] = loop.time() + seconds
        if self._timer is None:
            self._timer = loop.call_later(self.tick, self._sweep, loop)

    def _sweep(self, loop: asyncio.AbstractEventLoop) -> None:
        self._timer = None
        now = loop.time()
        for item, due in list(self._due.items()):
            if due > now:
                continue
            if not isinstance(item, asyncio.Task):
                del self._due[item]
                item.expire()
            elif item not in self._expired and not item.done():
                self._expired.add(item)
                item.cancel()
        if self._due:
            self._timer = loop.call_later(self.tick, self._sweep, loop)


class _Deadline:
    __slots__ = ("_owner", "_seconds", "_task")

    def __init__(self, owner: Deadlines, seconds: float) -> None:
        self._owner = owner
        self._seconds = seconds
        self._task: asyncio.Task[Any] | None = None

    async def __aenter__(self) -> None:
        owner = self._owner
        loop = owner._running_loop()  # noqa: SLF001 - _Deadline is Deadlines' own context object (same module)
        task = self._task = asyncio.current_task(loop)
        assert task is not None
        owner._add(task, self._seconds, loop)  # noqa: SLF001 - _Deadline is Deadlines' own context object (same module)

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> bool:
        owner, task = self._owner, self._task
        if task is None:  # (__aenter__ did not run)
            return False
        owner._due.pop(task, None)  # noqa: SLF001 - _Deadline is Deadlines' own context object (same module)
        if task in owner._expired:  # noqa: SLF001 - _Deadline is Deadlines' own context object (same module)
            owner._expired.discard(task)  # noqa: SLF001 - _Deadline is Deadlines' own context object (same module)
            if exc_type is asyncio.CancelledError:  # our cancel (the sweep runs only while the body waits)
                task.uncancel()
                raise TimeoutError from exc
        return False
