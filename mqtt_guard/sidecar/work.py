"""How the sidecar finds work besides its deadlines: changed keys, and the reconciliation sweep.

`Work` turns the names of changed keys (Redis client-side caching invalidations, whoever wrote them:
the CLI, the admin API, redis-cli, a broker's block) into sessions to evaluate: a user's limits, user
hash (`expires_at`), group set or block names the user's sessions; a client block the client id; the
default limits every session (their deadlines re-timed in Redis at once, RETIME_LUA, not an evaluation
each); a plan or a group's plan (`quota:plan:*`, `quota:group:*`) every session, in an urgent sweep (any
session may be on it, through its user, its groups or its token's plan claim). Named
sessions wait in `named` and are evaluated `URGENT_SLICE` a tick, so one user with 100,000 sessions does
not make a tick outlast the leader's lease. A lost invalidation channel means a sweep at once: changes
may have been missed.

`Sweep` is the safety net for anything no event and no deadline reported (a lost event, a bug): every
session is evaluated once per `sidecar.sweep_interval`, in slices spread over that interval, so its
cost is that of evaluating every session once per interval, averaged (docs/quotas.md).
"""

from __future__ import annotations

import math

from ..store.keys import Keys

# Sessions an urgent sweep evaluates per tick at most (~0.12 s of sidecar CPU at the measured 59 us per
# evaluation): a tick stays far shorter than `leader_ttl` (3 s), so a new leader sweeping 100,000
# sessions does not lose its lead mid-tick and hand the same sweep to the next sidecar, and deadlines
# due meanwhile are not held up behind it. 100,000 sessions: done in 50 ticks.
URGENT_SLICE = 2000


class Work:
    """Users and client ids named by changed keys since the last tick (sets: a key changed many times
    is one evaluation)."""

    def __init__(self, keys: Keys) -> None:
        self.keys = keys
        self.users: set[str] = set()
        self.clients: set[str] = set()
        self.sweep_now = False  # changes may have been missed
        self.default_changed = False  # the default limits changed: every session's deadline re-timed
        self.named: dict[str, None] = {}  # sessions named by events, not yet evaluated (in order)
        self._block_user = keys.block_user("")
        self._block_client = keys.block_client("")
        self._plan = keys.quota_plan("")
        self._group = keys.quota_group("")
        self._user = keys.user("")
        self._groups_tail = keys.user_groups("")[len(self._user) :]  # ':groups'

    def prefixes(self) -> list[str]:
        """The key prefixes whose changes can change a decision (tracked in broadcast mode)."""
        k = self.keys
        return [k.quota_user(""), k.quota_default(), k.user(""), k.blocks_head(), k.quota_plan(""), k.quota_group("")]

    def changed(self, names: list[str]) -> None:
        keys = self.keys
        for name in names:
            if name == keys.quota_default():
                self.default_changed = True
            elif name.startswith(self._block_client):
                self.clients.add(name[len(self._block_client) :])
            elif name.startswith(self._block_user):
                self.users.add(name[len(self._block_user) :])
            elif name.startswith(self._plan) or name.startswith(self._group):
                # a plan or a group's plan changed: any session may be on it (through its user, its groups
                # or its token's claim), so every one is evaluated, `URGENT_SLICE` a tick
                self.sweep_now = True
            elif name.startswith(self._user) and name.endswith(self._groups_tail):
                self.users.add(name[len(self._user) : -len(self._groups_tail)])  # its groups' plans apply
            else:
                user = keys.quota_user_of(name) or keys.username_of(name)
                if user is not None:
                    self.users.add(user)

    def missed(self) -> None:
        """Changes may have been missed (the channel was lost, Redis flushed): look at everything."""
        self.sweep_now = True

    def take(self) -> tuple[set[str], set[str]]:
        users, clients = self.users, self.clients
        self.users, self.clients = set(), set()
        return users, clients

    def drop(self) -> None:
        """Not the leader: what the events named is the leader's to act on."""
        self.take()
        self.named.clear()
        self.default_changed = False

    def name(self, client_ids: list[str]) -> None:
        """Sessions to evaluate, after those named before them."""
        self.named.update(dict.fromkeys(client_ids))

    def take_named(self, n: int = 0) -> list[str]:
        """Up to `n` (default `URGENT_SLICE`) named sessions, oldest first."""
        n = n or URGENT_SLICE
        named = self.named
        if len(named) <= n:
            part = list(named)
            named.clear()
            return part
        part = [cid for cid, _ in zip(named, range(n), strict=False)]
        for cid in part:
            del named[cid]
        return part


class Sweep:
    """Every registered session once per `interval`, a slice per tick; `urgent`: as fast as ticks that
    stay short allow (`URGENT_SLICE` a tick)."""

    def __init__(self, interval: float, tick: float) -> None:
        self.interval = interval
        self.tick = tick
        self._ids: list[str] = []
        self._per_tick = 0
        self._next = 0.0  # monotonic time the next sweep starts (0: at the first tick)

    def idle(self, mono: float) -> bool:
        """Whether a new sweep is due (the last one is done and its interval has passed)."""
        return not self._ids and mono >= self._next

    def start(self, ids: list[str], mono: float, *, urgent: bool) -> None:
        """A sweep of `ids`: spread over `interval` (ending a little before it), or from the next tick on,
        `URGENT_SLICE` a tick."""
        self._ids = list(reversed(ids))  # (taken from the end)
        if urgent:
            self._per_tick = URGENT_SLICE
        else:
            ticks = max(1, math.floor(0.9 * self.interval / self.tick))
            self._per_tick = max(1, math.ceil(len(ids) / ticks))
        self._next = mono + self.interval

    def take(self) -> list[str]:
        if not self._ids:
            return []
        n = self._per_tick
        part = self._ids[-n:]
        del self._ids[-n:]
        return part

    @property
    def remaining(self) -> int:
        return len(self._ids)
