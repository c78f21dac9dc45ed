"""The broker's writes to the session registry, batched, and its reserved session slots.

Every open, close and slot change of this broker goes through one ordered queue and is applied by
one Lua call per batch (`store.quota.REGISTRY_LUA`): a batch is sent on the next loop iteration when
somebody awaits one of its results (a CONNECT that needs Redis' word on `sessions`), else after
`BATCH_DELAY`, so a burst of CONNECTs and DISCONNECTs costs one round trip for many. One batch is in
flight at a time, so Redis sees the operations in the order they were made (an open before the close
of the same connection).

A connection that ends before its registration was sent (a CONNECT and DISCONNECT within one batch
window) is never registered: its open and close are folded into one 't' operation, which only asks
Redis who held the client id before, so that a take-over of a connection on another broker is still
carried out (the broker that held it is asked to kick it). While this broker is the only one the registry
knows (`alone`: no other broker, live or dead and not yet reaped, could hold a client id), nobody else
can hold the client id either: the 't' operations are answered here and nothing is sent for them.

Session slots keep `sessions` exact without a round trip per CONNECT: a broker reserves a few slots
of a user in `sessions:slots:<u>`, counted against the limit by every open exactly like registered
connections (registered + reserved <= limit, each change atomic). A CONNECT that can take a local
slot is admitted at once and its registration (which consumes the slot in Redis) follows in the next
batch; without one it awaits a checked open. Slots are granted only while the user stays far from its
limit (2 x the slot block free after granting), handed back when it gets close, when unused for
`quota.linger`, when the limit changes, at shutdown; a dead broker's slots go when it is reaped.
"""

from __future__ import annotations

import asyncio
import logging
import math
from collections.abc import Callable
from dataclasses import dataclass

from ..store.connection import REDIS_ERRORS
from ..store.quota import QuotaStore, RegistryOp, RegistryResult

log = logging.getLogger("mqtt_guard.quota")

BATCH_DELAY = 0.02  # seconds a batch waits for more operations when nobody awaits it (a call costs
# ~250 us of broker CPU in redis-py: at 4 ms, a CONNECT+DISCONNECT paid ~100 us of it at 1,300 conn/s)
BATCH_MAX = 500  # operations per Lua call (a call blocks Redis while it runs)
SLOTS_MAX = 100  # at most this many slots of one user per broker

Done = Callable[[RegistryResult | BaseException], None]


def _report(done: Done | None, res: RegistryResult | BaseException) -> None:
    if done is not None:
        try:
            done(res)
        except Exception:  # a callback's bug must not stop the queue
            log.exception("session registry callback failed")


# REGISTRY_LUA's answer to a 't' operation for a client id no broker held (or only this one)
_NOBODY_HELD_IT = RegistryResult(True, 0, 0, "", "", -1)


def slot_block(limit: int, fraction: float) -> int:
    """How many slots of a user a broker holds at most."""
    return max(1, min(SLOTS_MAX, math.ceil(limit * fraction)))


@dataclass(slots=True)
class SlotState:
    """This broker's slots of one user, as seen from here."""

    limit: int  # the `sessions` limit they count against
    block: int
    redis: int = 0  # held in Redis after the last applied operation
    pending: int = 0  # taken by CONNECTs here whose registration is not applied yet
    frozen: int = 0  # returns in flight: nothing may be taken meanwhile
    sessions: int = 0  # the user's registered sessions at the last slots operation
    others: int = 0  # slots of other brokers at the last slots operation
    last_used: float = 0.0  # monotonic: last CONNECT or DISCONNECT of the user here

    @property
    def available(self) -> int:
        return 0 if self.frozen else self.redis - self.pending

    def close_to_limit(self) -> bool:
        """Too close to the limit to keep slots (as of the last slots operation)."""
        return self.limit - self.sessions - self.others - self.block < 2 * self.block


class SessionRegistry:
    def __init__(self, store: QuotaStore, broker_id: str, on_error: Callable[[BaseException], None]) -> None:
        self.store = store
        self.broker_id = broker_id
        self.on_error = on_error
        self.slots: dict[str, SlotState] = {}
        self.failed_closes: list[RegistryOp] = []  # retried at the heartbeat
        self.batches = 0  # Lua calls made (tests, stats)
        self._ops: list[tuple[RegistryOp, Done | None]] = []
        self._urgent = False  # somebody awaits an operation queued: send without waiting for more
        self._awaited = 0  # awaited operations queued (not yet sent)
        self._task: asyncio.Task[None] | None = None
        self._wake: asyncio.Future[None] | None = None
        # (client id, conn) -> index in _ops of an open not sent yet and not awaited (see the docstring)
        self._open_at: dict[tuple[str, str], int] = {}
        self.folded = 0  # opens and closes folded into one 't' operation (tests, stats)
        # No other broker in the registry: set by the enforcer from its heartbeat and from Redis' word after
        # the brokers key changed; False whenever that is not known.
        self.alone = False
        self.answered = 0  # 't' operations answered here while alone (tests, stats)

    # -- queueing ----------------------------------------------------------------------------------------
    def submit(self, op: RegistryOp, done: Done | None = None, *, urgent: bool = False) -> None:
        if op.kind == "c" and self._open_at:
            at = self._open_at.pop((op.client_id, op.conn), None)
            if at is not None:  # its open was not sent yet: register nothing, only check for a take-over
                opened, opened_done = self._ops[at]
                self._ops[at] = (
                    RegistryOp(
                        "t",
                        opened.client_id,
                        opened.conn,
                        opened.username,
                        opened.since,
                        opened.limit,
                        opened.extra,
                        opened.owner,
                    ),
                    opened_done,
                )
                self.folded += 1
                return
        elif op.kind == "o" and not urgent and op.extra != "r":
            self._open_at[(op.client_id, op.conn)] = len(self._ops)
        self._ops.append((op, done))
        if urgent:
            self._awaited += 1
            self._urgent = True
            if self._wake is not None and not self._wake.done():
                self._wake.set_result(None)
        if self._task is None or self._task.done():
            self._task = asyncio.get_running_loop().create_task(self._run(), name="mqtt-guard-registry")

    async def call(self, op: RegistryOp) -> RegistryResult:
        """Submit and await the result (sent on the next loop iteration, with whatever else is queued)."""
        fut: asyncio.Future[RegistryResult] = asyncio.get_running_loop().create_future()

        def done(res: RegistryResult | BaseException) -> None:
            if fut.done():
                return
            if isinstance(res, BaseException):
                fut.set_exception(res)
            else:
                fut.set_result(res)

        self.submit(op, done, urgent=True)
        return await fut

    async def drain(self) -> None:
        """Wait until everything queued so far was applied (or failed)."""
        while self._task is not None and not self._task.done():
            self._urgent = True
            if self._wake is not None and not self._wake.done():
                self._wake.set_result(None)
            await asyncio.shield(self._task)

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        while self._ops:
            if not self._urgent:
                self._wake = loop.create_future()
                handle = loop.call_later(BATCH_DELAY, _wake_up, self._wake)
                try:
                    await self._wake
                finally:
                    handle.cancel()
                    self._wake = None
            batch, self._ops = self._ops[:BATCH_MAX], self._ops[BATCH_MAX:]
            if self._ops:
                n = len(batch)
                self._open_at = {key: at - n for key, at in self._open_at.items() if at >= n}
            else:
                self._open_at.clear()
            if not self._ops:
                self._awaited = 0
            self._urgent = self._awaited > 0
            await self._apply(batch)

    async def _apply(self, batch: list[tuple[RegistryOp, Done | None]]) -> None:
        if self.alone:
            batch = self._answer_alone(batch)
            if not batch:
                return
        ops = [op for op, _ in batch]
        try:
            results = await self.store.registry(self.broker_id, ops)
            self.batches += 1
        except asyncio.CancelledError:
            raise
        except REDIS_ERRORS as exc:
            self._failed(batch, exc)
            return
        except Exception as exc:  # a bug must not stop the queue
            log.exception("session registry batch failed")
            self._failed(batch, exc)
            return
        for (op, done), res in zip(batch, results, strict=True):
            self._account(op, res)
            _report(done, res)

    def _answer_alone(self, batch: list[tuple[RegistryOp, Done | None]]) -> list[tuple[RegistryOp, Done | None]]:
        """Answer the batch's 't' operations as Redis would while no other broker exists; the rest."""
        rest = []
        for op, done in batch:
            if op.kind != "t":
                rest.append((op, done))
                continue
            self.answered += 1
            self._account(op, _NOBODY_HELD_IT)
            _report(done, _NOBODY_HELD_IT)
        return rest

    def _failed(self, batch: list[tuple[RegistryOp, Done | None]], exc: BaseException) -> None:
        self.on_error(exc)
        for op, done in batch:
            self._account(op, None)
            if op.kind == "c":
                self.failed_closes.append(op)
            _report(done, exc)
        for st in self.slots.values():
            st.redis = 0  # unknown now: take no slot until a slots operation tells again

    def _account(self, op: RegistryOp, res: RegistryResult | None) -> None:
        """Keep the local view of this broker's slots in step with Redis."""
        st = self.slots.get(op.username or "")
        if st is None:
            return
        if op.extra == "s" and op.kind in ("o", "t"):
            st.pending -= 1
        if op.kind == "l":
            if op.extra == "0":
                st.frozen -= 1
            if res is not None:
                st.sessions, st.others = res.sessions, res.reserved
        if res is not None and res.mine >= 0:
            st.redis = res.mine

    # -- slots ---------------------------------------------------------------------------------------------
    def take_slot(self, username: str, limit: int, now: float) -> bool:
        """Take one of this broker's slots of the user for a CONNECT (then submit an 's' open)."""
        st = self.slots.get(username)
        if st is None or st.limit != limit or st.available <= 0:
            return False
        st.pending += 1
        st.last_used = now
        return True

    def state(self, username: str, limit: int, fraction: float, now: float) -> SlotState:
        """The slot state of a user with a `sessions` limit (a changed limit hands the old slots back)."""
        st = self.slots.get(username)
        if st is None:
            st = self.slots[username] = SlotState(limit, slot_block(limit, fraction), last_used=now)
        elif st.limit != limit:
            self.give_back(username)
            st.limit, st.block = limit, slot_block(limit, fraction)
        st.last_used = now
        return st

    def give_back(self, username: str) -> None:
        """Hand all of this broker's slots of the user back (limit changed, unused, close to the limit).
        Nothing may be taken until Redis applied it."""
        st = self.slots.get(username)
        if st is None or st.redis <= 0:
            return
        st.frozen += 1
        self.submit(RegistryOp("l", "", "", username, limit=st.limit, extra="0"))

    def keep(self, username: str, now: float) -> tuple[int, int | None]:
        """For the close of a session of the user: how many slots the close may leave us (0: none), and
        the limit they count against."""
        st = self.slots.get(username)
        if st is None:
            return 0, None
        st.last_used = now
        return (0 if st.frozen else st.block), st.limit

    def limit_changed(self, username: str, limit: int | None, fraction: float) -> None:
        """The user's `sessions` changed: slots taken under the old limit go back before any is taken."""
        st = self.slots.get(username)
        if st is None or st.limit == limit:
            return
        self.give_back(username)
        if limit is None:
            st.limit, st.block = 0, 1  # take_slot never matches: no limit, no slots
        else:
            st.limit, st.block = limit, slot_block(limit, fraction)

    def maintain(self, username: str, active: bool, full: bool) -> None:
        """At the heartbeat: top the user's slots up while it is active and far from its limit, hand them
        back when it is close to it or inactive; `full`: also refresh what is known of the others."""
        st = self.slots.get(username)
        if st is None or st.frozen:
            return
        if not active:
            if st.redis > 0:
                self.give_back(username)
            elif st.pending <= 0:
                del self.slots[username]
            return
        # Within twice the margin of the limit the others are looked at every heartbeat, else every few.
        near = st.limit - st.sessions - st.others - st.redis < 4 * st.block
        if st.close_to_limit() and st.redis > 0:
            self.give_back(username)
        elif st.redis < st.block or full or near:
            # A grant (only while far from the limit), or a look at the others' sessions and slots.
            self.submit(RegistryOp("l", "", "", username, limit=st.limit, extra=str(st.block)))

    def forget_all(self) -> None:
        """Redis lost this broker's registrations (it was reaped, or Redis restarted empty)."""
        for st in self.slots.values():
            st.redis = 0


def _wake_up(fut: asyncio.Future[None]) -> None:
    if not fut.done():
        fut.set_result(None)
