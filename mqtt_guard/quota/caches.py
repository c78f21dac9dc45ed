"""In-process copies of quota limits and blocks, so that a CONNECT needs no Redis round trip.

Both are trusted only while the invalidation listener (Redis client tracking, `store/invalidation.py`)
is connected: it tells the broker about every write to `quota:user:<u>`, `quota:default` and
`block:*`, whoever made it. Every invalidation bumps a generation; a value read from Redis is
cached only if no invalidation that could concern it arrived while the read was in flight (the
reply may predate the write that the invalidation announces). A listener that reconnects calls
`on_reset`: everything cached is dropped (blocks are loaded again), since invalidations may have
been missed meanwhile. Untrusted: callers read Redis as before (docs/quotas.md "CONNECT cost").
"""

from __future__ import annotations

import asyncio
import enum
import logging
import time
from collections import OrderedDict
from collections.abc import Callable, Sequence
from typing import Final, Protocol

from ..logutil import RateLimitedLog
from ..store.connection import REDIS_ERRORS
from ..store.quota import Block, QuotaStore
from ..tasks import cancel_and_wait
from .limits import Limits
from .plans import Sources, effective

log = logging.getLogger("mqtt_guard.quota")
drop_log = RateLimitedLog(log)


class Unknown(enum.Enum):
    """BlockCache.lookup: not known here, read Redis."""

    UNKNOWN = "unknown"


UNKNOWN: Final = Unknown.UNKNOWN


class Tracking(Protocol):
    """What the caches need of the invalidation listener (store/invalidation.py): whether it is
    connected now (else nothing cached is trusted), and the key prefixes it is told about."""

    @property
    def connected(self) -> asyncio.Event: ...

    @property
    def prefixes(self) -> Sequence[str]: ...


class LimitsCache:
    """Parsed limits per user. `last` is the last known value of every user seen (also what applies
    while Redis is down); `fresh` the subset still trusted to equal Redis."""

    def __init__(self, connected: Callable[[], bool], size: int) -> None:
        self.connected = connected
        self.size = size
        self.gen = 0
        self.last: OrderedDict[str, Limits] = OrderedDict()
        self.fresh: set[str] = set()

    def get(self, username: str, plan: str | None = None) -> Limits | None:
        """The user's limits (with a token's plan claim `plan`) if trusted, else None (read Redis)."""
        key = cache_key(username, plan)
        if key in self.fresh and self.connected():
            return self.last[key]
        return None

    def parse(self, username: str, sources: Sources, plan: str | None = None, token: int = -1) -> Limits:
        """The user's limits from what Redis holds (quota/plans.py; logging malformed values and missing
        plans), cached; `plan`: a token's plan claim; `token` from `begin()` before the read."""
        limits = effective(sources, plan)
        username = cache_key(username, plan)
        for problem in limits.problems:
            drop_log.log(
                logging.ERROR,
                ("limits", username, problem),
                "quota limits of user %r: ignoring %s",
                username,
                problem,
            )
        self.put(username, limits, token)
        return limits

    def begin(self) -> int:
        """Call before a read of limits from Redis; pass the result to `put`."""
        return self.gen if self.connected() else -1

    def put(self, username: str, limits: Limits, token: int) -> None:
        self.last[username] = limits
        self.last.move_to_end(username)
        if token >= 0 and token == self.gen and self.connected():
            self.fresh.add(username)
        else:
            self.fresh.discard(username)
        while len(self.last) > self.size:
            old, _ = self.last.popitem(last=False)
            self.fresh.discard(old)

    def invalidate(self, usernames: set[str] | None) -> None:
        """Some users' hashes (None: the default hash, or anything) changed."""
        self.gen += 1
        if usernames is None:
            self.fresh.clear()
        else:
            self.fresh = {k for k in self.fresh if k.partition(PLAN_SEP)[0] not in usernames}


PLAN_SEP = "\0"


def cache_key(username: str, plan: str | None) -> str:
    """Limits are cached per user, and per user and token plan claim for clients that carry one."""
    return username if not plan else f"{username}{PLAN_SEP}{plan}"


class BlockCache:
    """The blocks in force (`block:user:<u>`, `block:client:<id>`), loaded by a SCAN at start and after
    every listener reset, then kept fresh key by key from invalidations. A block ends locally at its
    `until` (its key's TTL), like in Redis."""

    def __init__(self, store: QuotaStore, connected: Callable[[], bool], tracked: bool) -> None:
        self.store = store
        self.keys = store.keys
        self.head = store.keys.blocks_head()
        self.connected = connected
        self.tracked = tracked  # the listener tracks the block prefix (else: always read Redis)
        self.blocks: dict[str, Block] = {}
        self.loaded = False
        self.gen = 0  # bumped by on_reset
        self.dirty: dict[str, int] = {}  # key -> invalidations not re-read yet
        self._task: asyncio.Task[None] | None = None
        self._stopped = False

    # -- reads ---------------------------------------------------------------------------------------
    def lookup(self, client_id: str, username: str | None) -> Block | Unknown | None:
        """The block of a CONNECT (client block first), None, or UNKNOWN (read Redis)."""
        if not (self.loaded and self.tracked and self.connected()):
            return UNKNOWN
        keys = [self.keys.block_client(client_id)]
        if username:
            keys.append(self.keys.block_user(username))
        if any(k in self.dirty for k in keys):
            return UNKNOWN
        now = time.time()
        for key in keys:
            block = self.blocks.get(key)
            if block is not None:
                if block.until > now:
                    return block
                del self.blocks[key]
        return None

    def note(self, block: Block) -> None:
        """A block this broker just wrote (its invalidation follows): in force here at once."""
        if block.key not in self.dirty:
            self.blocks[block.key] = block

    # -- invalidation ------------------------------------------------------------------------------------
    def on_keys(self, keys: list[str]) -> None:
        touched = False
        for key in keys:
            if key.startswith(self.head):
                self.dirty[key] = self.dirty.get(key, 0) + 1
                self.blocks.pop(key, None)
                touched = True
        if touched:
            self._schedule()

    def on_reset(self) -> None:
        self.gen += 1
        self.loaded = False
        self.blocks.clear()
        self.dirty.clear()
        self._schedule()

    def start(self) -> None:
        if self.tracked:
            self._schedule()

    async def stop(self) -> None:
        self._stopped = True
        await cancel_and_wait(self._task)

    def _schedule(self) -> None:
        if self.tracked and not self._stopped and (self._task is None or self._task.done()):
            try:
                self._task = asyncio.get_running_loop().create_task(self._run(), name="mqtt-guard-blocks")
            except RuntimeError:
                pass

    async def _run(self) -> None:
        """Load everything when not loaded, then re-read invalidated keys until none is left. (Not a
        `tasks.Coalescer`: the first round is a full load, and rounds wait for the invalidation
        channel to be connected.)"""
        while not self._stopped and (not self.loaded or self.dirty):
            if not self.connected():
                await asyncio.sleep(0.1)  # a reset follows the reconnection and schedules us again
                if not self.connected():
                    continue
            try:
                if not self.loaded:
                    await self._load()
                else:
                    await self._reread()
            except asyncio.CancelledError:
                raise
            except REDIS_ERRORS as exc:
                log.debug("block cache: Redis unreachable (%s); CONNECTs read blocks from Redis", exc)
                await asyncio.sleep(0.5)
            except Exception:
                log.exception("block cache refresh failed; CONNECTs read blocks from Redis")
                await asyncio.sleep(0.5)

    async def _load(self) -> None:
        gen = self.gen
        found = await self.store.all_blocks()
        if gen != self.gen or not self.connected():
            return
        for key, block in found.items():
            if key not in self.dirty:  # an invalidated key is read again by _reread
                self.blocks[key] = block
        self.loaded = True
        # Operators (and tests) see from here on that a CONNECT reads no block from Redis.
        log.info("block cache loaded: %d block(s) in force; CONNECTs check blocks in memory", len(self.blocks))

    async def _reread(self) -> None:
        gen, snapshot = self.gen, dict(self.dirty)
        read = await self.store.read_blocks(sorted(snapshot))
        if gen != self.gen:
            return
        for key, block in read.items():
            if self.dirty.get(key) != snapshot[key]:
                continue  # changed again while we read: read it once more
            del self.dirty[key]
            if block is None:
                self.blocks.pop(key, None)
            else:
                self.blocks[key] = block
