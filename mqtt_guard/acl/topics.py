"""MQTT 3.1.1 topic names and topic filters: validation and reference matching.

This module is the *specification* the compiled matcher (``matcher.py``) is
tested against, so it favours obviously-correct code over speed.  Validation
is cheap enough to run on every cache miss of the policy.

Rules implemented (MQTT 3.1.1 section 4.7):

* Levels are separated by ``/``; empty levels are legal (``a//b`` has three
  levels, the middle one empty).
* ``+`` matches exactly one level (which may be empty); ``#`` matches the
  level it stands on and every level below, *including the parent*: ``a/#``
  matches ``a``.
* A filter whose first level is a wildcard never matches a topic whose first
  level starts with ``$`` (MQTT-4.7.2-1).  A literal first level such as
  ``$SYS`` matches normally.
* Topics and filters are non-empty, contain no NUL and are at most 65535
  bytes of UTF-8.  Topic names (PUBLISH) contain no wildcards.
"""

from __future__ import annotations

__all__ = [
    "MAX_BYTES",
    "filter_covers",
    "parent_is_empty",
    "topic_matches",
    "validate_filter",
    "validate_topic",
]

MAX_BYTES = 65535
"""Longest topic/filter in UTF-8 bytes (the MQTT string length prefix)."""


def _encoding_problem(s: str) -> str | None:
    """Return a reason if *s* cannot be sent as an MQTT UTF-8 string.

    Only non-ASCII strings are encoded (to count bytes and to catch lone
    surrogates), so the common ASCII case costs one ``isascii`` call.
    """
    if s.isascii():
        return "longer than 65535 bytes" if len(s) > MAX_BYTES else None
    try:
        n = len(s.encode("utf-8"))
    except UnicodeEncodeError:
        return "not valid UTF-8"
    return "longer than 65535 bytes" if n > MAX_BYTES else None


def validate_topic(t: object) -> str | None:
    """Return ``None`` if *t* is a valid PUBLISH topic name, else a reason.

    Used by the policy before evaluating rules so that a wildcard or NUL in a
    topic can never be mistaken for a filter by the matcher.
    """
    if not isinstance(t, str):
        return "not a string"
    if not t:
        return "empty topic"
    if "\x00" in t:
        return "contains NUL"
    if "+" in t or "#" in t:
        return "wildcards are not allowed in a topic name"
    return _encoding_problem(t)


def validate_filter(f: object) -> str | None:
    """Return ``None`` if *f* is a valid topic filter, else a reason.

    The same check guards both rule filters (so a malformed rule is skipped
    instead of matching something unintended) and SUBSCRIBE filters.
    """
    if not isinstance(f, str):
        return "not a string"
    if not f:
        return "empty filter"
    if "\x00" in f:
        return "contains NUL"
    if "+" in f or "#" in f:
        levels = f.split("/")
        last = len(levels) - 1
        for i, level in enumerate(levels):
            if level == "#":
                if i != last:
                    return "'#' must be the last level"
            elif level != "+" and ("+" in level or "#" in level):
                return f"wildcard mixed with other characters in level {level!r}"
    return _encoding_problem(f)


def topic_matches(filter: str, topic: str) -> bool:  # MQTT term
    """Reference implementation: does *filter* match the topic name *topic*?

    Both arguments are assumed valid (see :func:`validate_filter` and
    :func:`validate_topic`).  Plain and slow on purpose: it is the oracle the
    trie in ``matcher.py`` is property-tested against.
    """
    f = filter.split("/")
    t = topic.split("/")
    if t[0].startswith("$") and f[0] in ("+", "#"):
        return False
    for i, level in enumerate(f):
        if level == "#":
            return True  # this level and everything below, incl. the parent
        if i >= len(t):
            return False
        if level != "+" and level != t[i]:
            return False
    return len(f) == len(t)


def parent_is_empty(levels: list[str], i: int) -> bool:
    """Is the parent matched by a ``#`` at level *i* the (invalid) empty topic?

    ``#`` at level 0 and ``/#`` would match the empty string as their parent;
    since that is no valid topic, such a ``#`` effectively requires one more
    level, which a rule ``+/#`` at the same position provides.
    """
    return i == 0 or (i == 1 and levels[0] == "")


def filter_covers(outer: str, inner: str) -> bool:
    """Does filter *outer* match every topic that filter *inner* can match?

    This is the test for granting a SUBSCRIBE: a rule must cover the whole
    subscription, otherwise the client could receive topics the rule does not
    allow.  Both filters are assumed valid.  Examples: ``a/#`` covers
    ``a/+/b``, ``a/#`` and ``a``; ``+/+`` covers ``a/+`` but not ``a/#``;
    ``a/+`` does not cover ``a/#`` (which also matches ``a`` and ``a/b/c``).

    Only valid (non-empty) topics count, which makes ``+/#`` cover ``#`` and
    ``+/+/#`` cover ``/#``: the only topic the inner filter matches that the
    outer one does not is the empty string.
    """
    r = outer.split("/")
    f = inner.split("/")
    # A wildcard first level in *outer* never matches $-topics; *inner* only
    # produces $-topics when its first level is a literal starting with "$".
    if r[0] in ("+", "#") and f[0].startswith("$"):
        return False
    nr, nf = len(r), len(f)
    for i in range(nr):
        rl = r[i]
        if rl == "#":
            return True
        if i >= nf:
            return False  # inner matches a topic with fewer levels
        fl = f[i]
        if fl == "#":
            # inner matches this level and everything below, and its parent;
            # only "#" (handled above) covers that - unless the parent is the
            # empty string, which is no valid topic (see docstring).
            return rl == "+" and nr == i + 2 and r[i + 1] == "#" and parent_is_empty(f, i)
        if rl == "+":
            continue
        if fl != rl:  # fl == "+" (wider than a literal) or another literal
            return False
    return nr == nf
