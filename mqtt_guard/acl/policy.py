"""The ACL decision: who may publish, subscribe to, or receive which topic.

Decision order (documented for operators, tested in ``tests/acl``):

1. Superusers may do everything (the topic must still be a valid topic name,
   or for SUBSCRIBE a valid filter).
2. An invalid topic/filter is denied ("invalid topic: ...").
3. The client's rule set is: the rules of ``user:<username>``, of every
   ``group:<g>`` in ``Subject.groups`` (sorted by name), the ``pattern``
   rules with ``%u``/``%c`` substituted, and the rules of its access token
   (``Subject.rules``, a trusted ``acl`` claim; docs/tokens.md).  An anonymous client
   (``username is None``) gets only the ``anonymous`` rules (``%c``
   substituted, ``%u`` rules skipped); its groups are ignored.
4. Among the applicable rules a deny of the action wins over any grant;
   otherwise a grant allows; otherwise the configured default applies.

Which rules apply:

* PUBLISH and RECEIVE of topic T: rules whose filter *matches* T.
* SUBSCRIBE to filter F: rules whose filter *covers* F, i.e. matches every
  topic F can match.  This holds for grants **and** denies: a deny rule only
  blocks a subscription it covers.  A deny that merely intersects F (deny
  ``a/secret`` vs. SUBSCRIBE ``a/#``) does not block the subscription; the
  per-delivery RECEIVE check withholds the denied topics instead.  So to hide
  a topic from wildcard subscribers use ``deny-read`` or ``deny-receive``;
  ``deny-subscribe`` alone only stops subscriptions the deny filter covers.

Placeholders: in ``pattern`` and ``anonymous`` rules a level that is exactly
``%u`` or ``%c`` is replaced by the username / client id (``a%u`` is a
literal).  If the value is unsafe - ``None``, empty, containing ``+``, ``#``,
``/`` or NUL - the rule is skipped for that client, as mosquitto does.  As a
hardening beyond mosquitto, a value starting with ``$`` is also unsafe when
it would land in the *first* level (otherwise user ``$SYS`` would gain
``$SYS/#`` from ``%u/#``).  Placeholders in ``user:``/``group:`` rules are
literals.

Caching: the client-independent part of a rule set (user, group and
placeholder-free pattern/anonymous rules) is compiled once per
(username, groups) and shared by all sessions of that user; the placeholder
rules are compiled per client.  Client states are cached per
:class:`Subject` (the full value: username, client id, groups and superuser
flag, so a changed subject is a different key) and decisions per
(subject, action, topic) inside that state.  ``set_rules``/``drop_rules``
drop exactly the compiled parts and states that depend on the changed subject
key, ``clear`` drops all.  All caches are bounded.  The
class is not thread-safe; it is meant to be used from the broker's event
loop.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from dataclasses import dataclass, field

from mqtt_guard.acl.matcher import RuleMatcher
from mqtt_guard.acl.rules import Perm, Rule
from mqtt_guard.acl.topics import validate_filter, validate_topic

__all__ = ["AclPolicy", "Decision", "Subject", "is_safe_placeholder_value"]

_log = logging.getLogger(__name__)

_PUB, _SUB, _RECV = int(Perm.PUBLISH), int(Perm.SUBSCRIBE), int(Perm.RECEIVE)
PATTERN_KEY = "pattern"
ANONYMOUS_KEY = "anonymous"


@dataclass(frozen=True, slots=True)
class Decision:
    """The answer to one ACL question, with the rule that decided it.

    ``reason`` is one of "superuser", "deny rule", "grant rule", "default",
    or "invalid topic: <why>" / "invalid filter: <why>".
    """

    allowed: bool
    rule: Rule | None
    reason: str


_SUPERUSER = Decision(True, None, "superuser")
_DEFAULT_ALLOW = Decision(True, None, "default")
_DEFAULT_DENY = Decision(False, None, "default")


@dataclass(frozen=True, slots=True)
class Subject:
    """The identity an ACL question is asked for.

    ``username is None`` means an anonymous client.  The hash is computed
    once, because a Subject is hashed on every decision; keep one Subject per
    session so lookups also hit the identity shortcut of dict comparisons.
    """

    username: str | None
    client_id: str
    groups: frozenset[str] = frozenset()
    superuser: bool = False
    # Rules the client's access token carries (auth/access_token.py, a trusted `acl` claim): they join its
    # rule set like its placeholder rules (per client), under the same deny-wins order.
    rules: tuple[Rule, ...] = ()
    _hash: int = field(init=False, repr=False, compare=False, default=0)

    def __post_init__(self) -> None:
        if not isinstance(self.groups, frozenset):
            object.__setattr__(self, "groups", frozenset(self.groups))  # type: ignore[unreachable]  # any iterable is accepted
        h = hash((self.username, self.client_id, self.groups, self.superuser, self.rules))
        object.__setattr__(self, "_hash", h)

    def __hash__(self) -> int:
        return self._hash

    @property
    def anonymous(self) -> bool:
        return self.username is None


def is_safe_placeholder_value(value: str | None, *, first_level: bool = False) -> bool:
    """Can *value* replace a ``%u``/``%c`` level without widening the rule?

    A ``+``, ``#`` or ``/`` would turn one literal level into a wildcard or
    several levels; NUL and the empty string are never legitimate.  A leading
    ``$`` in the first level would reach into ``$``-topics.
    """
    if not value:
        return False
    if "+" in value or "#" in value or "/" in value or "\x00" in value:
        return False
    return not (first_level and value[0] == "$")


@dataclass(frozen=True, slots=True)
class _Template:
    """A pattern/anonymous rule pre-split for fast per-client substitution."""

    rule: Rule
    levels: tuple[str, ...]
    user_at: tuple[int, ...]
    client_at: tuple[int, ...]

    @property
    def has_placeholders(self) -> bool:
        return bool(self.user_at or self.client_at)

    @classmethod
    def of(cls, rule: Rule) -> _Template:
        levels = tuple(rule.filter.split("/"))
        u = tuple(i for i, lv in enumerate(levels) if lv == "%u")
        c = tuple(i for i, lv in enumerate(levels) if lv == "%c")
        return cls(rule, levels, u, c)

    def instantiate(self, username: str | None, client_id: str) -> str | None:
        """The filter for one client, or ``None`` if the rule must be skipped."""
        if not self.user_at and not self.client_at:
            return self.rule.filter
        levels = list(self.levels)
        for idx in self.user_at:
            if username is None or not is_safe_placeholder_value(username, first_level=idx == 0):
                return None
            levels[idx] = username
        for idx in self.client_at:
            if not is_safe_placeholder_value(client_id, first_level=idx == 0):
                return None
            levels[idx] = client_id
        f = "/".join(levels)
        return f if validate_filter(f) is None else None


_BaseKey = tuple[str | None, frozenset[str]]


class _Base:
    """The client-independent part of a rule set, shared by all sessions.

    Keyed by (username, groups): user rules, group rules and the pattern (or
    anonymous) rules without placeholders.  Sharing it means a user with a
    thousand rules is compiled once, not once per connection.
    """

    __slots__ = ("matcher", "deps")

    def __init__(self, matcher: RuleMatcher, deps: frozenset[str]) -> None:
        self.matcher = matcher
        self.deps = deps


class _ClientState:
    """The rule set of one Subject plus its decision caches.

    ``base`` is shared (see :class:`_Base`); ``extra`` holds this client's
    instantiated placeholder rules (``None`` when there are none).  ``caches``
    maps the action bit to a ``topic -> Decision`` dict, so a cache hit costs
    two dict lookups and no allocation.
    """

    __slots__ = ("base", "extra", "deps", "caches", "size")

    def __init__(self, base: _Base, extra: RuleMatcher | None) -> None:
        self.base = base
        self.extra = extra
        self.deps = base.deps
        self.caches: dict[int, dict[str, Decision]] = {_PUB: {}, _SUB: {}, _RECV: {}}
        self.size = 0


class AclPolicy:
    """Holds parsed rules per subject key and answers ACL decisions.

    Subject keys are "user:<name>", "group:<name>", "pattern" and
    "anonymous".  Compiled matchers are cached per client Subject and
    decisions per (client, action, topic) in bounded caches; replacing the
    rules of a subject key invalidates exactly the clients depending on it.
    """

    def __init__(
        self,
        *,
        default_allow: bool = False,
        decision_cache_size: int = 100_000,
        matcher_cache_size: int = 10_000,
    ) -> None:
        if decision_cache_size < 1 or matcher_cache_size < 1:
            raise ValueError("cache sizes must be positive")
        self._default = _DEFAULT_ALLOW if default_allow else _DEFAULT_DENY
        self._max_decisions = decision_cache_size
        self._max_states = matcher_cache_size
        self._rules: dict[str, tuple[Rule, ...]] = {}
        # pattern/anonymous rules split by whether they need substitution
        self._plain: dict[str, tuple[Rule, ...]] = {}
        self._templates: dict[str, tuple[_Template, ...]] = {}
        self._bases: dict[_BaseKey, _Base] = {}
        self._states: dict[Subject, _ClientState] = {}
        self._n_decisions = 0
        # Bumped whenever a decision may change (rules set or dropped, a client's state forgotten):
        # callers that cache decisions themselves (the engine's per-topic routes) compare it.
        self.version = 0

    # -- rule management ---------------------------------------------------

    @property
    def default_allow(self) -> bool:
        return self._default.allowed

    def set_rules(self, subject_key: str, rules: Iterable[Rule]) -> None:
        """Replace the rules of *subject_key* (e.g. after Redis changed)."""
        rules = tuple(self._valid_only(subject_key, rules))
        self._forget_rules(subject_key)
        if rules:
            self._rules[subject_key] = rules
            if subject_key in (PATTERN_KEY, ANONYMOUS_KEY):
                templates = [_Template.of(r) for r in rules]
                self._plain[subject_key] = tuple(t.rule for t in templates if not t.has_placeholders)
                self._templates[subject_key] = tuple(t for t in templates if t.has_placeholders)
        self._invalidate(subject_key)

    @staticmethod
    def _valid_only(subject_key: str, rules: Iterable[Rule]) -> Iterable[Rule]:
        """Skip rules with invalid filters instead of raising.

        ``parse_rules`` already reports and drops these; a hand-built bad
        rule reaching here is logged and dropped so that a rule update can
        never fail half-way and leave the previous (possibly broader) rules
        in force.
        """
        for rule in rules:
            bad = validate_filter(rule.filter)
            if bad is None:
                yield rule
            else:
                _log.warning("ACL %s: ignoring rule with invalid filter %r: %s", subject_key, rule.filter, bad)

    def drop_rules(self, subject_key: str) -> None:
        """Forget all rules of *subject_key* (the Redis hash was deleted)."""
        self._forget_rules(subject_key)
        self._invalidate(subject_key)

    def _forget_rules(self, subject_key: str) -> None:
        self._rules.pop(subject_key, None)
        self._plain.pop(subject_key, None)
        self._templates.pop(subject_key, None)

    def clear(self) -> None:
        """Forget every rule and every cached matcher and decision."""
        self._rules.clear()
        self._plain.clear()
        self._templates.clear()
        self._bases.clear()
        self._states.clear()
        self._n_decisions = 0
        self.version += 1

    def rules_for(self, subject_key: str) -> tuple[Rule, ...]:
        """The rules currently held for *subject_key* (empty if none)."""
        return self._rules.get(subject_key, ())

    def subject_keys(self) -> list[str]:
        """All subject keys that currently have rules."""
        return list(self._rules)

    def forget(self, subject: Subject) -> None:
        """Drop the cached matcher and decisions of a client (on disconnect)."""
        self.version += 1
        st = self._states.pop(subject, None)
        if st is not None:
            self._n_decisions -= st.size

    def _invalidate(self, subject_key: str) -> None:
        """Drop every base and client state whose rule set includes *subject_key*."""
        self.version += 1
        for k in [k for k, b in self._bases.items() if subject_key in b.deps]:
            del self._bases[k]
        for s in [s for s, st in self._states.items() if subject_key in st.deps]:
            self.forget(s)

    # -- compilation ---------------------------------------------------------

    @staticmethod
    def deps_of(subject: Subject) -> frozenset[str]:
        """The subject keys whose rules make up *subject*'s rule set."""
        if subject.username is None:
            return frozenset((ANONYMOUS_KEY,))
        keys = {f"user:{subject.username}", PATTERN_KEY}
        keys.update(f"group:{g}" for g in subject.groups)
        return frozenset(keys)

    def entries_for(self, subject: Subject) -> list[tuple[str, Rule]]:
        """``(effective filter, rule)`` pairs for *subject*, in explanation order.

        Order: user rules, group rules (groups sorted), pattern rules without
        placeholders, then pattern rules with placeholders substituted; for
        an anonymous client the anonymous rules in the same plain-then-
        substituted order.  Placeholder rules whose value is unsafe for this
        client are left out.  This is the rule set decisions are made on.
        """
        return self._base_entries(subject.username, subject.groups) + self._extra_entries(subject)

    def _base_entries(self, username: str | None, groups: frozenset[str]) -> list[tuple[str, Rule]]:
        get = self._rules.get
        if username is None:
            return [(r.filter, r) for r in self._plain.get(ANONYMOUS_KEY, ())]
        out = [(r.filter, r) for r in get(f"user:{username}", ())]
        for g in sorted(groups):
            out.extend((r.filter, r) for r in get(f"group:{g}", ()))
        out.extend((r.filter, r) for r in self._plain.get(PATTERN_KEY, ()))
        return out

    def _extra_entries(self, subject: Subject) -> list[tuple[str, Rule]]:
        key = ANONYMOUS_KEY if subject.username is None else PATTERN_KEY
        out: list[tuple[str, Rule]] = []
        for t in self._templates.get(key, ()):
            f = t.instantiate(subject.username, subject.client_id)
            if f is not None:
                out.append((f, t.rule))
        out.extend((r.filter, r) for r in subject.rules)
        return out

    def _base_for(self, subject: Subject) -> _Base:
        """The shared base of *subject*, compiling it on first use."""
        groups = subject.groups if subject.username is not None else frozenset()
        key = (subject.username, groups)
        base = self._bases.get(key)
        if base is None:
            bases = self._bases
            while len(bases) >= self._max_states:
                del bases[next(iter(bases))]
            matcher = RuleMatcher.from_entries(self._base_entries(subject.username, groups))
            base = bases[key] = _Base(matcher, self.deps_of(subject))
        return base

    def _compile(self, subject: Subject) -> _ClientState:
        """Build and cache the state of a client not seen since invalidation."""
        states = self._states
        while len(states) >= self._max_states:
            self.forget(next(iter(states)))
        extra_entries = self._extra_entries(subject)
        extra = RuleMatcher.from_entries(extra_entries) if extra_entries else None
        st = states[subject] = _ClientState(self._base_for(subject), extra)
        return st

    def matcher_for(self, subject: Subject) -> RuleMatcher:
        """A matcher over *subject*'s whole rule set, for inspection and tools.

        Decisions use the cached base + per-client parts instead; this builds
        a fresh combined matcher on every call.
        """
        return RuleMatcher.from_entries(self.entries_for(subject))

    # -- decisions -----------------------------------------------------------

    def _evaluate(self, st: _ClientState, action: int, topic: str) -> Decision:
        """Uncached decision for a non-superuser."""
        if action == _SUB:
            bad = validate_filter(topic)
            if bad is not None:
                return Decision(False, None, f"invalid filter: {bad}")
            allow, deny, deny_rule, grant_rule = st.base.matcher.covering_bits(topic, action)
            if st.extra is not None:
                a2, d2, dr2, gr2 = st.extra.covering_bits(topic, action)
                allow, deny = allow | a2, deny | d2
                deny_rule, grant_rule = deny_rule or dr2, grant_rule or gr2
        else:
            bad = validate_topic(topic)
            if bad is not None:
                return Decision(False, None, f"invalid topic: {bad}")
            allow, deny, deny_rule, grant_rule = st.base.matcher.match_bits(topic, action)
            if st.extra is not None:
                a2, d2, dr2, gr2 = st.extra.match_bits(topic, action)
                allow, deny = allow | a2, deny | d2
                deny_rule, grant_rule = deny_rule or dr2, grant_rule or gr2
        if deny & action:
            return Decision(False, deny_rule, "deny rule")
        if allow & action:
            return Decision(True, grant_rule, "grant rule")
        return self._default

    def _miss(self, subject: Subject, action: Perm, topic: str) -> Decision:
        """Slow path: compile if needed, evaluate, store in the bounded cache."""
        if action not in (_PUB, _SUB, _RECV):
            raise ValueError(f"action must be exactly one of PUBLISH/SUBSCRIBE/RECEIVE, got {action!r}")
        if subject.superuser:
            bad = validate_filter(topic) if action == _SUB else validate_topic(topic)
            if bad is None:
                return _SUPERUSER
            kind = "filter" if action == _SUB else "topic"
            return Decision(False, None, f"invalid {kind}: {bad}")
        st = self._states.get(subject)
        if st is None:
            st = self._compile(subject)
        a = int(action)
        cache = st.caches[a]
        d = cache.get(topic)
        if d is not None:
            return d
        d = self._evaluate(st, a, topic)
        if self._n_decisions >= self._max_decisions:
            self._evict()
        cache[topic] = d
        st.size += 1
        self._n_decisions += 1
        return d

    def _evict(self) -> None:
        """Free decision slots by emptying the oldest non-empty client caches.

        Emptied states move to the back of the (insertion-ordered) state dict
        so the next eviction finds a non-empty one at the front; this keeps
        eviction amortised O(1) without per-hit LRU bookkeeping.
        """
        states = self._states
        while self._n_decisions >= self._max_decisions and states:
            subject = next(iter(states))
            st = states.pop(subject)
            if st.size:
                for c in st.caches.values():
                    c.clear()
                self._n_decisions -= st.size
                st.size = 0
            states[subject] = st

    def decide(self, subject: Subject, action: Perm, topic: str) -> Decision:
        """Decide whether *subject* may do *action* on *topic*.

        *action* is exactly one of ``Perm.PUBLISH``, ``Perm.SUBSCRIBE``,
        ``Perm.RECEIVE``; for SUBSCRIBE *topic* is the subscription filter.
        """
        if not subject.superuser:
            st = self._states.get(subject)
            if st is not None:
                cache = st.caches.get(action)
                if cache is not None:
                    d = cache.get(topic)
                    if d is not None:
                        return d
        return self._miss(subject, action, topic)

    def allowed(self, subject: Subject, action: Perm, topic: str) -> bool:
        """``decide(subject, action, topic).allowed``, with the same fast path."""
        if not subject.superuser:
            st = self._states.get(subject)
            if st is not None:
                cache = st.caches.get(action)
                if cache is not None:
                    d = cache.get(topic)
                    if d is not None:
                        return d.allowed
        return self._miss(subject, action, topic).allowed

    def stats(self) -> dict[str, int]:
        """Cache occupancy, for metrics."""
        return {
            "clients": len(self._states),
            "bases": len(self._bases),
            "decisions": self._n_decisions,
            "subject_keys": len(self._rules),
        }
