"""Limits changed in Redis: the invalidation listener names the keys written (`quota:user:<u>`,
`quota:default`, plans `quota:plan:<p>`, group plans `quota:group:<g>`, a user's groups, the APIs
`quota:apis`, blocks, the brokers key), whoever wrote them. A plan change applies to the connected
clients on it as fast as a change of their own hash (milliseconds; every user known here is read again,
since any of them may be on the plan). The cached limits and blocks are
dropped at once; the limits of users with clients here are read again in one background task
(`tasks.Coalescer`: a burst of changes costs one read per user), and their entries, rate buckets and
session slots follow the new values.
"""

from __future__ import annotations

import time
from collections.abc import Callable

from ..config import QuotaConfig
from ..store.connection import REDIS_ERRORS
from ..store.keys import Keys
from ..store.quota import QuotaStore
from ..tasks import Coalescer
from .allowance import Allowances
from .bucket import TokenBucket
from .caches import BlockCache, LimitsCache
from .ledger import Entry
from .registry import SessionRegistry
from .sync import LeaseSync


class LimitReloads:
    def __init__(
        self,
        config: QuotaConfig,
        keys: Keys,
        store: QuotaStore,
        book: Allowances,
        limits: LimitsCache,
        blocks: BlockCache,
        registry: SessionRegistry,
        sync: LeaseSync,
        brokers_changed: Callable[[], None],
        apis_changed: Callable[[], None] = lambda: None,
    ) -> None:
        """`apis_changed`: the API definitions (`quota:apis`) were written: read them again."""
        self.config = config
        self.keys = keys
        self.store = store
        self.book = book
        self.limits = limits
        self.blocks = blocks
        self.registry = registry
        self.sync = sync
        self.brokers_changed = brokers_changed
        self.apis_changed = apis_changed
        self._reloads: Coalescer[str] = Coalescer(self._reload, "mqtt-guard-quota-limits")

    def on_keys(self, keys: list[str]) -> None:
        users: set[str] = set()
        changed: set[str] = set()
        default = self.keys.quota_default()
        brokers = self.keys.brokers()
        plans_head, groups_head = self.keys.quota_plan(""), self.keys.quota_group("")
        apis = self.keys.quota_apis()
        known = self.book.users
        everybody = False
        for key in keys:
            if key == brokers:
                self.brokers_changed()
                continue
            if key == default or key.startswith(plans_head) or key.startswith(groups_head):
                # the default, a plan or a group's plan: any user may be on it (plans change rarely)
                everybody = True
                users |= set(known)
                continue
            if key == apis:
                self.apis_changed()
                continue
            username = self.keys.quota_user_of(key) or self.keys.groups_user_of(key)
            if username is not None:
                changed.add(username)
                if username in known:
                    users.add(username)
        if everybody or changed:
            self.limits.invalidate(None if everybody else changed)
        self.blocks.on_keys(keys)
        self._reloads.add(users)

    def on_reset(self) -> None:
        """The invalidation listener reconnected (changes may have been missed): trust nothing cached."""
        self.brokers_changed()
        self.apis_changed()
        self.limits.invalidate(None)
        self.blocks.on_reset()
        self._reloads.add(self.book.users)

    async def _reload(self, users: set[str]) -> set[str] | None:
        """Read the limits of `users` again and apply them; all of them again later if Redis is down."""
        batch = sorted(users)
        token = self.limits.begin()
        try:
            plans = {u: p for u in batch if (p := self._token_plan(u))}
            sources = await self.store.load_limits(batch, plans)
        except REDIS_ERRORS as exc:
            self.book.redis_lost(exc)
            return users
        now = time.time()
        touched: list[Entry] = []
        for username in batch:
            user = self.book.users.get(username)
            limits = self.limits.parse(username, sources[username], plans.get(username), token)
            self.registry.limit_changed(username, limits.sessions, self.config.lease_fraction)
            if user is None:
                continue
            user.limits = limits
            self.book.set_entries(user, now)
            touched += user.current.values()
            for cq in user.clients.values():
                cq.kicking = False
                if limits.rate is None:
                    cq.bucket = None
                elif cq.bucket is None:
                    cq.bucket = TokenBucket(limits.rate.per_second, limits.rate.burst)
                else:
                    cq.bucket.reconfigure(limits.rate.per_second, limits.rate.burst)
        touched += [e for e in self.book.entries.values() if e.release]
        try:
            await self.sync.sync(touched)
        except REDIS_ERRORS as exc:
            self.book.redis_lost(exc)
        return None

    def _token_plan(self, username: str) -> str | None:
        user = self.book.users.get(username)
        return user.token_plan if user is not None else None

    async def close(self) -> None:
        await self._reloads.stop()
