"""Keeps the in-process AclPolicy equal to what Redis holds, for the clients that are connected.

Rules are loaded per subject ("user:alice", "group:ops", "pattern", "anonymous") when the first
client needing them connects, and reloaded when the invalidation listener reports that their hash
changed. The new rules replace the old ones only once loaded, so an edit never opens a window in
which nothing (or everything) is allowed. Malformed entries are skipped and reported; they never
grant anything.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable

from ..store.acl import AclStore
from ..store.connection import REDIS_ERRORS
from ..store.keys import SUBJECT_ANONYMOUS, SUBJECT_PATTERN, Keys, group_subject, user_subject
from ..tasks import Coalescer
from .policy import AclPolicy, Decision, Subject
from .rules import Perm, RuleProblem, parse_rules

log = logging.getLogger("mqtt_guard.acl")

_PROBLEM_LOG_INTERVAL = 60.0


def subject_keys_for(subject: Subject) -> list[str]:
    """The Redis subjects whose rules apply to a client."""
    if subject.username is None:
        return [SUBJECT_ANONYMOUS]
    return [user_subject(subject.username), *(group_subject(g) for g in sorted(subject.groups)), SUBJECT_PATTERN]


class LiveAcl:
    def __init__(self, store: AclStore, keys: Keys, policy: AclPolicy) -> None:
        self.store = store
        self.keys = keys
        self.policy = policy
        self.problems: dict[str, list[RuleProblem]] = {}
        self.problem_count = 0
        self.loaded: set[str] = set()
        self.reloads = 0
        self._reloads: Coalescer[str] = Coalescer(self._reload, "mqtt-guard-acl-reload")
        self._problem_logged: dict[tuple[str, str], float] = {}

    # -- loading ----------------------------------------------------------------------------
    async def prepare(self, subject: Subject) -> None:
        """Make sure every subject this client depends on is loaded (one round trip if any is not)."""
        missing = [s for s in subject_keys_for(subject) if s not in self.loaded]
        if missing:
            await self._load(missing)

    async def _load(self, subjects: Iterable[str]) -> None:
        raw = await self.store.load(subjects)
        for subject, mapping in raw.items():
            self.apply(subject, mapping)

    def apply(self, subject: str, mapping: dict[str, str]) -> None:
        rules, problems = parse_rules(subject, mapping)
        self.policy.set_rules(subject, rules)
        self.loaded.add(subject)
        self.problem_count += len(problems) - len(self.problems.get(subject, ()))
        if problems:
            self.problems[subject] = problems
            self._report(problems)
        else:
            self.problems.pop(subject, None)

    def _report(self, problems: list[RuleProblem]) -> None:
        now = time.monotonic()
        for p in problems:
            key = (p.subject, p.filter)
            if now - self._problem_logged.get(key, -_PROBLEM_LOG_INTERVAL) >= _PROBLEM_LOG_INTERVAL:
                self._problem_logged[key] = now
                log.error(
                    "skipped malformed ACL rule in %s: %r = %r: %s",
                    self.keys.acl(p.subject),
                    p.filter,
                    p.value,
                    p.reason,
                )

    # -- invalidation -----------------------------------------------------------------------
    def on_keys(self, keys: list[str]) -> None:
        changed = {s for s in map(self.keys.acl_subject_of, keys) if s is not None and s in self.loaded}
        if changed:
            self._schedule(changed)

    def on_reset(self) -> None:
        self._schedule(set(self.loaded))

    def _schedule(self, subjects: set[str]) -> None:
        self._reloads.add(subjects)

    async def _reload(self, batch: set[str]) -> set[str] | None:
        """Reload changed subjects (whatever arrives meanwhile is the next batch); on a Redis error the
        previous rules stay and the batch is retried."""
        try:
            await self._load(batch)
        except REDIS_ERRORS as exc:
            log.warning("could not reload ACL rules (%s); keeping the previous rules until Redis is back", exc)
            return batch
        self.reloads += 1
        return None

    async def wait_idle(self) -> None:
        await self._reloads.wait_idle()

    # -- decisions (hot path: in-process only) -------------------------------------------------
    def allowed(self, subject: Subject, action: Perm, topic: str) -> bool:
        return self.policy.allowed(subject, action, topic)

    def decide(self, subject: Subject, action: Perm, topic: str) -> Decision:
        return self.policy.decide(subject, action, topic)
