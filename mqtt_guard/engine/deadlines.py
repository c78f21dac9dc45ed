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
import logging
from types import TracebackType
from typing import Any, Protocol

log = logging.getLogger("mqtt_guard.broker")


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


class Due(Protocol):
    def due(self) -> None: ...


class Wheel:
    """Many long timers (one per connection: keep-alive) on one timer: a timing wheel of `tick`-second
    slots. Each item waits in the slot of its due time (a dict entry, ~40 bytes, instead of a
    TimerHandle with its arguments, ~600 bytes, per connection); while any item waits, one timer runs
    every `tick` seconds and calls `due()` on the items of the slots that have come, which add
    themselves again if they are not due yet. An item is called within `tick` after its time; the work
    per tick is the items that come due, never a pass over all of them."""

    def __init__(self, loop: asyncio.AbstractEventLoop, tick: float = 0.25) -> None:
        self.tick = tick
        self._loop = loop
        self._slots: dict[int, dict[Due, None]] = {}
        self._next = int(loop.time() / tick)  # the first slot not swept yet
        self._timer: asyncio.TimerHandle | None = None
        self.size = 0

    def add(self, item: Due, when: float) -> int:
        """Call `item.due()` at loop time `when` (within `tick` after it); returns its slot, for `remove`."""
        if self._timer is None and not self._slots:  # idle until now: nothing to catch up with
            self._next = int(self._loop.time() / self.tick)
        slot = -int(-when // self.tick)  # ceil: the slot is swept at or after `when`
        if slot < self._next:
            slot = self._next
        bucket = self._slots.get(slot)
        if bucket is None:
            bucket = self._slots[slot] = {}
        bucket[item] = None
        self.size += 1
        if self._timer is None:
            self._timer = self._loop.call_later(self.tick, self._sweep)
        return slot

    def remove(self, item: Due, slot: int) -> None:
        bucket = self._slots.get(slot)
        if bucket is not None and bucket.pop(item, 0) is None:
            self.size -= 1
            if not bucket:
                del self._slots[slot]

    def _sweep(self) -> None:
        self._timer = None
        now_slot = int(self._loop.time() / self.tick)
        slots = self._slots
        for slot in range(self._next, now_slot + 1):
            self._next = slot + 1  # items that add themselves again go to a later slot
            bucket = slots.pop(slot, None)
            if bucket is None:
                continue
            self.size -= len(bucket)
            for item in bucket:
                try:
                    item.due()
                except Exception:  # one item's failure must not drop the others of its slot
                    log.exception("keep-alive check failed")
        if slots:
            self._timer = self._loop.call_later(self.tick, self._sweep)


_wheels: dict[asyncio.AbstractEventLoop, Wheel] = {}


def wheel_for(loop: asyncio.AbstractEventLoop) -> Wheel:
    """The keep-alive wheel of `loop` (one per event loop; wheels of closed loops are dropped here)."""
    wheel = _wheels.get(loop)
    if wheel is None:
        for old in [lp for lp in _wheels if lp.is_closed()]:
            del _wheels[old]
        wheel = _wheels[loop] = Wheel(loop)
    return wheel
