"""Topic matching, filter covering and the compiled trie.

The trie is checked against the plain reference functions, and the reference
functions against independent oracles (a regex translation for matching, a
brute force over a finite topic universe for covering).
"""

from __future__ import annotations

import itertools
import re
from functools import lru_cache

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mqtt_guard.acl.matcher import RuleMatcher, filter_covers, topic_matches
from mqtt_guard.acl.rules import Perm, Rule
from mqtt_guard.acl.topics import validate_filter

P, S, R, A, N = Perm.PUBLISH, Perm.SUBSCRIBE, Perm.RECEIVE, Perm.ALL, Perm(0)

# ---------------------------------------------------------------- matching


MATCH_CASES = [
    # filter, topic, expected
    ("a", "a", True),
    ("a", "b", False),
    ("a", "a/b", False),
    ("a/b", "a", False),
    ("a/+", "a/b", True),
    ("a/+", "a", False),
    ("a/+", "a/b/c", False),
    ("a/+", "a/", True),  # "+" matches an empty level
    ("a/+/b", "a//b", True),
    ("+/+", "/", True),
    ("+", "/", False),
    ("/+", "/x", True),
    ("a/#", "a", True),  # "#" includes the parent
    ("a/#", "a/", True),
    ("a/#", "a/b/c", True),
    ("a/#", "ab", False),
    ("a/b/#", "a", False),
    ("#", "a", True),
    ("#", "/", True),
    ("#", "a/b/c", True),
    ("+/#", "a", True),
    ("+/#", "a/b", True),
    # MQTT-4.7.2-1: wildcards in the first level do not match $-topics
    ("#", "$SYS", False),
    ("#", "$SYS/broker/x", False),
    ("+/broker/x", "$SYS/broker/x", False),
    ("+/#", "$x", False),
    ("$SYS/#", "$SYS/broker/x", True),
    ("$SYS/#", "$SYS", True),
    ("$SYS/+/x", "$SYS/broker/x", True),
    ("$SYS", "$SYS", True),
    ("a/+", "a/$x", True),  # only the first level is special
    ("a/#", "a/$x/y", True),
    ("$x", "$y", False),
    ("%u", "%u", True),
]


@pytest.mark.parametrize(("f", "t", "expected"), MATCH_CASES)
def test_topic_matches_table(f: str, t: str, expected: bool) -> None:
    assert topic_matches(f, t) is expected


@pytest.mark.parametrize(("f", "t", "expected"), MATCH_CASES)
def test_trie_match_agrees_with_table(f: str, t: str, expected: bool) -> None:
    rule = Rule(f, P | R, S, "user:t")
    allow, deny, deny_rule, grant_rule = RuleMatcher([rule]).match(t)
    if expected:
        assert (allow, deny, deny_rule, grant_rule) == (P | R, S, rule, rule)
    else:
        assert (allow, deny, deny_rule, grant_rule) == (N, N, None, None)


# ---------------------------------------------------------------- covering

COVER_CASES = [
    # outer (rule), inner (subscription), expected
    ("a/#", "a/+/b", True),
    ("a/#", "a/#", True),
    ("a/#", "a", True),
    ("a/#", "a/b/c", True),
    ("a/#", "b/#", False),
    ("+/+", "a/+", True),
    ("+/+", "a/#", False),
    ("+/+", "+/+", True),
    ("+/+", "a/b/c", False),
    ("#", "x/#", True),
    ("#", "#", True),
    ("#", "+/+/#", True),
    ("a/+", "a/#", False),
    ("a/+", "a/+", True),
    ("a/+", "a/b", True),
    ("a/b", "a/+", False),
    ("a/b", "a/b", True),
    ("a/+/#", "a/#", False),  # "a/#" also matches "a"
    ("a/+/#", "a/b/#", True),
    ("+/#", "#", True),  # they differ only on the (invalid) empty topic
    ("+/+/#", "/#", True),  # likewise
    ("+/+/#", "/+/#", True),
    ("+/#", "a/#", True),
    ("a", "a/#", False),
    # $-topics
    ("#", "$SYS/#", False),
    ("#", "$SYS/x", False),
    ("+/#", "$SYS/x", False),
    ("+/x", "$SYS/x", False),
    ("$SYS/#", "$SYS/broker/x", True),
    ("$SYS/#", "$SYS/#", True),
    ("$SYS/#", "#", False),
    ("#", "+/x", True),  # "+/x" itself never matches $-topics
    ("a/#", "a/$x", True),
]


@pytest.mark.parametrize(("outer", "inner", "expected"), COVER_CASES)
def test_filter_covers_table(outer: str, inner: str, expected: bool) -> None:
    assert filter_covers(outer, inner) is expected


@pytest.mark.parametrize(("outer", "inner", "expected"), COVER_CASES)
def test_trie_covering_agrees_with_table(outer: str, inner: str, expected: bool) -> None:
    rule = Rule(outer, S, R, "user:t")
    got = RuleMatcher([rule]).covering(inner)
    assert got == ((S, R, rule, rule) if expected else (N, N, None, None))


# ---------------------------------------------------------------- explanations


def test_union_of_bits_and_first_rule_in_order() -> None:
    r1 = Rule("a/#", S | R, N, "user:u")
    r2 = Rule("a/+", P, R, "group:g")
    r3 = Rule("a/b", N, P, "pattern")
    r4 = Rule("#", P, N, "pattern")
    m = RuleMatcher([r1, r2, r3, r4])
    assert m.match("a/b") == (A, P | R, r2, r1)  # default action ALL: first rule with any bit
    assert m.match("a/b", P) == (A, P | R, r3, r2)  # grant for publish: r2 precedes r4
    assert m.match("a/b", R) == (A, P | R, r2, r1)
    assert m.match("a/c", P) == (A, R, None, r2)
    assert m.match("z", S) == (P, N, None, None)


def test_same_filter_in_several_rules() -> None:
    r1 = Rule("x", S, N, "user:u")
    r2 = Rule("x", N, S, "group:g")
    m = RuleMatcher([r1, r2])
    assert m.match("x", S) == (S, S, r2, r1)
    assert len(m) == 2 and m.rules == (r1, r2)


def test_empty_matcher() -> None:
    m = RuleMatcher([])
    assert m.match("a") == (N, N, None, None)
    assert m.covering("#") == (N, N, None, None)


def test_invalid_filter_rejected_by_matcher() -> None:
    with pytest.raises(ValueError):
        RuleMatcher([Rule("a/#/b", A, N, "user:u")])


def test_from_entries_uses_effective_filter_but_quotes_rule() -> None:
    rule = Rule("sensors/%u/#", A, N, "pattern")
    m = RuleMatcher.from_entries([("sensors/alice/#", rule)])
    assert m.match("sensors/alice/t") == (A, N, None, rule)
    assert m.match("sensors/%u/t") == (N, N, None, None)


# ---------------------------------------------------------------- properties

FILTER_LEVELS = ["a", "b", "", "$x", "+"]
TOPIC_LEVELS = ["a", "b", "", "$x", "c"]


@st.composite
def filters(draw: st.DrawFn, max_levels: int = 4) -> str:
    levels = draw(st.lists(st.sampled_from(FILTER_LEVELS), min_size=0, max_size=max_levels))
    if not levels or draw(st.booleans()):
        levels.append("#")
    f = "/".join(levels)
    return f if f else "#"


topics = st.lists(st.sampled_from(TOPIC_LEVELS), min_size=1, max_size=5).map("/".join).filter(bool)
perms = st.integers(0, 7).map(Perm)
rules = st.builds(lambda f, a, d: Rule(f, a, d, "user:t"), filters(), perms, perms)


def regex_oracle(f: str) -> re.Pattern[str]:
    """An independent translation of MQTT matching into a regex."""
    levels = f.split("/")
    parts: list[str] = []
    for i, lv in enumerate(levels):
        sep = "/" if i else ""
        if lv == "#":
            parts.append("(?:/.*)?" if i else ".*")
            break
        parts.append(sep + ("[^/]*" if lv == "+" else re.escape(lv)))
    body = "".join(parts)
    guard = "(?!\\$)" if levels[0] in ("+", "#") else ""
    return re.compile(guard + body, re.DOTALL)


@settings(max_examples=500, deadline=None)
@given(filters(), topics)
def test_topic_matches_agrees_with_regex_oracle(f: str, t: str) -> None:
    assert validate_filter(f) is None
    assert topic_matches(f, t) == bool(regex_oracle(f).fullmatch(t))


def brute_match(rule_list: list[Rule], topic: str, action: int) -> tuple[Perm, Perm, Rule | None, Rule | None]:
    hits = [r for r in rule_list if topic_matches(r.filter, topic)]
    return brute_reduce(hits, action)


def brute_cover(rule_list: list[Rule], sub: str, action: int) -> tuple[Perm, Perm, Rule | None, Rule | None]:
    hits = [r for r in rule_list if filter_covers(r.filter, sub)]
    return brute_reduce(hits, action)


def brute_reduce(hits: list[Rule], action: int) -> tuple[Perm, Perm, Rule | None, Rule | None]:
    allow, deny = N, N
    for r in hits:
        allow |= r.allow
        deny |= r.deny
    deny_rule = next((r for r in hits if r.deny & action), None)
    grant_rule = next((r for r in hits if r.allow & action), None)
    return allow, deny, deny_rule, grant_rule


@settings(max_examples=400, deadline=None)
@given(st.lists(rules, max_size=25), st.lists(topics, min_size=1, max_size=8), st.sampled_from([1, 2, 4, 7]))
def test_trie_match_equals_brute_force(rule_list: list[Rule], ts: list[str], action: int) -> None:
    m = RuleMatcher(rule_list)
    for t in ts:
        assert m.match(t, action) == brute_match(rule_list, t, action), t


@settings(max_examples=400, deadline=None)
@given(st.lists(rules, max_size=25), st.lists(filters(), min_size=1, max_size=8), st.sampled_from([1, 2, 4, 7]))
def test_trie_covering_equals_brute_force(rule_list: list[Rule], subs: list[str], action: int) -> None:
    m = RuleMatcher(rule_list)
    for f in subs:
        assert m.covering(f, action) == brute_cover(rule_list, f, action), f


# A finite universe is enough for covering: with filters of at most 3
# levels, a witness topic (matched by inner, not by outer) never needs more
# than 4 levels, and needs no level names beyond the filter alphabet plus one
# fresh name ("c").
UNIVERSE_FILTER_LEVELS = 3


@lru_cache(maxsize=1)
def universe() -> tuple[str, ...]:
    out: list[str] = []
    for n in range(1, UNIVERSE_FILTER_LEVELS + 2):
        for combo in itertools.product(TOPIC_LEVELS, repeat=n):
            t = "/".join(combo)
            if t:  # the empty string is not a valid topic
                out.append(t)
    return tuple(out)


def brute_covers(outer: str, inner: str) -> bool:
    return all(topic_matches(outer, t) for t in universe() if topic_matches(inner, t))


@settings(max_examples=600, deadline=None)
@given(filters(UNIVERSE_FILTER_LEVELS - 1), filters(UNIVERSE_FILTER_LEVELS - 1))
def test_filter_covers_equals_brute_force(outer: str, inner: str) -> None:
    assert filter_covers(outer, inner) == brute_covers(outer, inner)


def test_filter_covers_exhaustive_small() -> None:
    """Every pair of filters with up to 2 levels (+ optional '#'), exhaustively."""
    fs = set()
    for n in range(0, 3):
        for combo in itertools.product(FILTER_LEVELS, repeat=n):
            for tail in ((), ("#",)):
                f = "/".join(combo + tail)
                if f and validate_filter(f) is None:
                    fs.add(f)
    for outer in fs:
        for inner in fs:
            assert filter_covers(outer, inner) == brute_covers(outer, inner), (outer, inner)
