"""ACL rule values: permissions, tokens, and parsing of one subject's rule hash.

Rules are stored in Redis as one hash per subject (``user:<name>``,
``group:<name>``, ``pattern``, ``anonymous``): field = topic filter, value =
comma-separated permission tokens.  This module turns such a hash into
:class:`Rule` objects without touching Redis, so the same code serves the
broker, the CLI and tests.

Tokens (case-insensitive, surrounding whitespace ignored, empty items between
commas ignored, duplicates harmless):

=================  ===================================
token              meaning
=================  ===================================
``publish``        grant PUBLISH
``subscribe``      grant SUBSCRIBE
``receive``        grant RECEIVE (delivery to the client)
``read``           grant SUBSCRIBE + RECEIVE
``write``          grant PUBLISH
``readwrite``      grant all three (alias ``all``)
``deny``           deny all three
``deny-publish``   deny PUBLISH (alias ``deny-write``)
``deny-subscribe`` deny SUBSCRIBE
``deny-receive``   deny RECEIVE
``deny-read``      deny SUBSCRIBE + RECEIVE
=================  ===================================

One value may mix grants and denies (``read,deny-publish``); a deny always
wins over a grant, also within the same value.

Malformed entries never raise and never grant.  :func:`parse_rules` returns
them as :class:`RuleProblem` data:

* bad filter, empty value, non-string field/value: the entry is skipped;
* unknown token: the entry's grants are dropped, but the *deny* tokens that
  were recognised are kept (a deny-only rule).  Dropping a deny because a
  neighbouring token has a typo would silently open access when the policy
  default is allow; keeping it can only make the ACL stricter (fail closed).
"""

from __future__ import annotations

import enum
from collections.abc import Mapping
from dataclasses import dataclass

from mqtt_guard.acl.topics import validate_filter, validate_topic

__all__ = [
    "Perm",
    "Rule",
    "RuleProblem",
    "TOKENS",
    "format_tokens",
    "parse_rules",
    "parse_tokens",
    "validate_filter",
    "validate_topic",
]


class Perm(enum.IntFlag):
    """The three actions an ACL rule can grant or deny."""

    NONE = 0
    PUBLISH = 1
    SUBSCRIBE = 2
    RECEIVE = 4
    ALL = 7


_P, _S, _R = int(Perm.PUBLISH), int(Perm.SUBSCRIBE), int(Perm.RECEIVE)
_A = _P | _S | _R

TOKENS: Mapping[str, tuple[int, int]] = {
    "publish": (_P, 0),
    "subscribe": (_S, 0),
    "receive": (_R, 0),
    "read": (_S | _R, 0),
    "write": (_P, 0),
    "readwrite": (_A, 0),
    "all": (_A, 0),
    "deny": (0, _A),
    "deny-publish": (0, _P),
    "deny-write": (0, _P),
    "deny-subscribe": (0, _S),
    "deny-receive": (0, _R),
    "deny-read": (0, _S | _R),
}
"""Token -> (granted bits, denied bits).  Keys are lower case."""


@dataclass(frozen=True, slots=True)
class Rule:
    """One parsed ACL entry: a topic filter with granted and denied actions.

    ``subject`` names the hash the rule came from ("user:alice",
    "group:ops", "pattern", "anonymous") so decisions can explain themselves.
    ``filter`` is kept verbatim; for pattern/anonymous rules it may contain
    the whole-level placeholders ``%u``/``%c`` that the policy substitutes
    per client.
    """

    filter: str
    allow: Perm
    deny: Perm
    subject: str

    @property
    def value(self) -> str:
        """The canonical token string for this rule (as :func:`format_tokens`)."""
        return format_tokens(self.allow, self.deny)


@dataclass(frozen=True, slots=True)
class RuleProblem:
    """A malformed hash entry, reported instead of raising.

    ``value`` is the raw value as read (decoded when it was bytes) so an
    operator can find and fix the entry.
    """

    subject: str
    filter: str
    value: str
    reason: str


def _scan_tokens(value: str) -> tuple[int, int, list[str], bool]:
    """Return (allow bits, deny bits, unknown tokens, saw any token).

    The lenient core shared by :func:`parse_tokens` (which raises) and
    :func:`parse_rules` (which reports and fails closed).
    """
    allow = deny = 0
    unknown: list[str] = []
    seen = False
    for raw in value.split(","):
        tok = raw.strip().lower()
        if not tok:
            continue
        seen = True
        bits = TOKENS.get(tok)
        if bits is None:
            unknown.append(raw.strip())
        else:
            allow |= bits[0]
            deny |= bits[1]
    return allow, deny, unknown, seen


def parse_tokens(value: str) -> tuple[Perm, Perm]:
    """Parse a rule value into ``(allow, deny)``.

    Raises ``ValueError("unknown token 'x'")`` for the first unknown token and
    ``ValueError("empty value")`` when there is no token at all; use
    :func:`parse_rules` for the never-raising, reporting variant.
    """
    if not isinstance(value, str):
        raise ValueError("value is not a string")
    allow, deny, unknown, seen = _scan_tokens(value)
    if unknown:
        raise ValueError(f"unknown token {unknown[0]!r}")
    if not seen:
        raise ValueError("empty value")
    return Perm(allow), Perm(deny)


def format_tokens(allow: Perm, deny: Perm) -> str:
    """Render ``(allow, deny)`` as the canonical value string.

    Grants come first, then denies, using the shortest standard tokens:
    ``readwrite``, ``read``, ``publish``, ``subscribe``, ``receive``,
    ``deny``, ``deny-read``, ``deny-publish``, ``deny-subscribe``,
    ``deny-receive``.  ``parse_tokens(format_tokens(a, d)) == (a, d)``.
    Raises ``ValueError`` when both are empty, because no valid value
    expresses "nothing".
    """
    a, d = int(allow) & _A, int(deny) & _A
    if not a and not d:
        raise ValueError("a rule must grant or deny something")
    parts: list[str] = []
    if a == _A:
        parts.append("readwrite")
    else:
        if a & (_S | _R) == _S | _R:
            parts.append("read")
        else:
            if a & _S:
                parts.append("subscribe")
            if a & _R:
                parts.append("receive")
        if a & _P:
            parts.append("publish")
    if d == _A:
        parts.append("deny")
    else:
        if d & (_S | _R) == _S | _R:
            parts.append("deny-read")
        else:
            if d & _S:
                parts.append("deny-subscribe")
            if d & _R:
                parts.append("deny-receive")
        if d & _P:
            parts.append("deny-publish")
    return ",".join(parts)


def _as_text(x: object) -> str | None:
    """Decode a Redis field/value; ``None`` if it is neither str nor UTF-8 bytes.

    The store is expected to use ``decode_responses=True``, but accepting
    bytes costs nothing and keeps a misconfigured client from crashing us.
    """
    if isinstance(x, str):
        return x
    if isinstance(x, (bytes, bytearray)):
        try:
            return bytes(x).decode("utf-8")
        except UnicodeDecodeError:
            return None
    return None


def _parse_entry(subject: str, key: object, val: object) -> tuple[Rule | None, RuleProblem | None]:
    """Parse one hash entry into at most one rule and at most one problem."""
    f = _as_text(key)
    v = _as_text(val)
    shown_f = f if f is not None else repr(key)
    shown_v = v if v is not None else repr(val)
    if f is None:
        return None, RuleProblem(subject, shown_f, shown_v, "filter is not valid UTF-8 text")
    bad = validate_filter(f)
    if bad is not None:
        return None, RuleProblem(subject, f, shown_v, f"bad filter: {bad}")
    if v is None:
        return None, RuleProblem(subject, f, shown_v, "value is not valid UTF-8 text")
    allow, deny, unknown, seen = _scan_tokens(v)
    if not seen:
        return None, RuleProblem(subject, f, v, "empty value")
    if unknown:
        names = ", ".join(repr(u) for u in unknown)
        noun = "token" if len(unknown) == 1 else "tokens"
        if deny:
            rule = Rule(f, Perm.NONE, Perm(deny), subject)
            reason = f"unknown {noun} {names}; grants ignored, denies kept"
        else:
            rule = None
            reason = f"unknown {noun} {names}; entry skipped"
        return rule, RuleProblem(subject, f, v, reason)
    return Rule(f, Perm(allow), Perm(deny), subject), None


def parse_rules(subject: str, mapping: Mapping[str, str]) -> tuple[list[Rule], list[RuleProblem]]:
    """Parse one subject's rule hash; never raises.

    Entries are processed in sorted filter order so that the resulting rule
    order (used to pick the rule quoted in a decision) does not depend on
    Redis' hash iteration order.
    """
    rules: list[Rule] = []
    problems: list[RuleProblem] = []
    try:
        items = list(mapping.items())
    except Exception as exc:  # noqa: BLE001 - a broken mapping must not take the broker down
        return [], [RuleProblem(subject, "", "", f"cannot read rules: {exc!r}")]
    items.sort(key=lambda kv: (_as_text(kv[0]) or "", repr(kv[0])))
    for key, val in items:
        rule, problem = _parse_entry(subject, key, val)
        if rule is not None:
            rules.append(rule)
        if problem is not None:
            problems.append(problem)
    return rules, problems
