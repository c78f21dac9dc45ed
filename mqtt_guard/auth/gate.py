"""The broker's side of login throttling and bans: the bans in force in memory, failure counting, and
their exchange with Redis in batches (rules: auth/throttle.py; Redis calls: store/bans.py).

Per CONNECT nothing here touches Redis: `check` is a dict lookup (a scan of the admin's wider networks
when there are any) and `failed` a count in memory. Failures go to Redis in one pipeline per flush
(every `FLUSH_INTERVAL` while there are any), which returns the cluster-wide counts, so a guesser
spreading over brokers is banned too. A ban this broker decides is in force here at once and written to
Redis with the next flush; other brokers learn of bans (theirs, an admin's `mqtt-guard ban`, an
`unban`) through the invalidation listener, which tracks `<prefix>ban:`, and re-read just those keys.
At start and after the listener reconnects, every ban is loaded with one SCAN.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable

from ..config import ThrottleConfig
from ..logutil import RateLimitedLog
from ..store.bans import BanStore
from ..store.connection import REDIS_ERRORS
from ..store.keys import Keys
from ..tasks import Coalescer, cancel_and_wait
from .throttle import KIND_AUTO, KIND_USER, Ban, BanTable, FailureCounter, Verdict, parse_network

log = logging.getLogger("mqtt_guard.auth.throttle")
ban_log = RateLimitedLog(log, interval=1.0)

FLUSH_INTERVAL = 0.1  # seconds between failure-count pipelines while logins fail
_LOAD = ""  # the Coalescer item that means "load every ban" (no ban id is empty)


class LoginGate:
    def __init__(
        self, config: ThrottleConfig, store: BanStore, keys: Keys, *, by: str, tracked: asyncio.Event | None = None
    ) -> None:
        """`tracked`: set while the invalidation listener tracks `ban:` keys; a full load waits for it (a
        ban written between the SCAN and the start of tracking would go unseen)."""
        self.config = config
        self.tracked = tracked
        self.store = store
        self.keys = keys
        self.by = by
        self.enabled = config.enabled
        self.table = BanTable()
        self.counter = FailureCounter(
            max_failures=config.max_failures,
            max_user_failures=config.max_user_failures,
            window=config.window,
            exempt=[parse_network(x) for x in config.exempt],
        )
        self._writes: dict[str, Ban] = {}  # bans decided here, not yet written to Redis
        self._refresh: Coalescer[str] = Coalescer(self._reread, "mqtt-guard-bans")
        self._flusher: asyncio.Task[None] | None = None
        self._closed = False
        # Called with each admin ban that asks to disconnect the clients of its network (`ban --kick`),
        # when this broker first sees it.
        self.on_kick: Callable[[Ban], None] | None = None

    # -- per CONNECT ------------------------------------------------------------------------------------
    def check(self, address: str | None, username: str | None) -> Ban | None:
        """The ban a CONNECT falls under (address canonical: throttle.canonical_address), or None."""
        return self.table.lookup(address, username, time.time())

    def refused(self, address: str | None, username: str | None) -> bool:
        """Banned now? (Asked again when a queued password check's turn comes: no hash for a guess made
        before its address was banned.)"""
        return self.table.lookup(address, username, time.time()) is not None

    def suspect(self, address: str | None) -> bool:
        """Did this address fail a login within the window? Its checks are shed first when busy."""
        return self.counter.recent(address, time.monotonic())

    def failed(self, address: str | None, username: str | None) -> None:
        """A login failed (wrong password, unknown user, no password): count it, ban past a threshold."""
        if not self.enabled or address is None:
            return
        for verdict in self.counter.failed(address, username, time.monotonic()):
            self._ban(verdict)
        self._schedule_flush()

    # -- bans ----------------------------------------------------------------------------------------------
    def _ban(self, verdict: Verdict) -> None:
        kind = KIND_AUTO if verdict.username is None else KIND_USER
        ban = Ban(
            kind,
            verdict.address,
            time.time() + self.config.ban_for,
            reason=f"{verdict.failures} failed logins within {self.config.window:g} s",
            by=self.by,
            username=verdict.username,
            failures=verdict.failures,
        )
        self.table.put(ban)
        self._writes[ban.id] = ban
        ban_log.log(
            logging.WARNING,
            kind,
            "refusing %s for %g s without checking passwords: %s",
            f"address {ban.network}" if kind == KIND_AUTO else f"username {ban.username!r} from {ban.network}",
            self.config.ban_for,
            ban.reason,
        )

    # -- Redis -----------------------------------------------------------------------------------------------
    def _schedule_flush(self) -> None:
        if not self._closed and (self._flusher is None or self._flusher.done()):
            self._flusher = asyncio.get_running_loop().create_task(self._flush_loop(), name="mqtt-guard-throttle")

    async def _flush_loop(self) -> None:
        while not self._closed:
            await asyncio.sleep(FLUSH_INTERVAL)
            if not (self.counter.pending_addr or self.counter.pending_pair or self._writes):
                return
            await self.flush()

    async def flush(self) -> None:
        """Add the counts to Redis (one pipeline), ban what the cluster-wide counts call for, write the
        bans decided here. What Redis refuses is kept for the next flush."""
        addr, pair = self.counter.drain()
        if addr or pair:
            try:
                totals_addr, totals_pair = await self.store.add(addr, pair, self.config.window)
            except REDIS_ERRORS as exc:
                log.debug("failed-login counts not written (%s); retrying", exc)
                self.counter.restore(addr, pair)
                totals_addr, totals_pair = {}, {}
            now = time.monotonic()
            for a, total in totals_addr.items():
                verdict = self.counter.merge(a, None, total, now)
                if verdict is not None:
                    self._ban(verdict)
            for (a, u), total in totals_pair.items():
                verdict = self.counter.merge(a, u, total, now)
                if verdict is not None:
                    self._ban(verdict)
        writes, self._writes = self._writes, {}
        for ban_id, ban in writes.items():
            try:
                await self.store.put(ban)
            except REDIS_ERRORS as exc:
                log.debug("ban %s not written (%s); retrying", ban_id, exc)
                self._writes.setdefault(ban_id, ban)

    def on_keys(self, keys: list[str]) -> None:
        """Invalidated keys: re-read the ban keys among them."""
        ids = [i for i in map(self.keys.ban_id_of, keys) if i]
        if ids:
            self._refresh.add(ids)

    def on_reset(self) -> None:
        """Changes may have been missed: load every ban again."""
        self._refresh.add([_LOAD])

    def start(self) -> None:
        self.on_reset()

    async def close(self) -> None:
        self._closed = True
        await cancel_and_wait(self._flusher)
        await self._refresh.stop()

    async def _reread(self, batch: set[str]) -> set[str]:
        if _LOAD in batch and self.tracked is not None and not self.tracked.is_set():
            try:
                await asyncio.wait_for(self.tracked.wait(), 5)
            except TimeoutError:
                pass  # Redis is likely away: the SCAN fails and is retried, or loads what there is
        try:
            if _LOAD in batch:
                found = {ban.id: ban for ban in await self.store.all()}
                for ban_id in [b.id for b in self.table.all() if b.id not in found and b.id not in self._writes]:
                    self.table.remove(ban_id)
                fresh: dict[str, Ban | None] = dict(found)
            else:
                fresh = await self.store.read(sorted(batch))
        except REDIS_ERRORS as exc:
            log.debug("bans not read (%s); retrying", exc)
            return batch
        for ban_id, ban in fresh.items():
            if ban is None:
                if ban_id not in self._writes:  # ours, not written yet: stays
                    self.table.remove(ban_id)
                continue
            new = ban_id not in self.table
            self.table.put(ban)
            if new and ban.kick and self.on_kick is not None:
                self.on_kick(ban)
        return set()
