"""Token parsing, filter/topic validation and rule-hash parsing."""

from __future__ import annotations

import itertools

import pytest

from mqtt_guard.acl.rules import (
    TOKENS,
    Perm,
    Rule,
    RuleProblem,
    format_tokens,
    parse_rules,
    parse_tokens,
    validate_filter,
    validate_topic,
)

P, S, R, A, N = Perm.PUBLISH, Perm.SUBSCRIBE, Perm.RECEIVE, Perm.ALL, Perm(0)


@pytest.mark.parametrize(
    ("value", "allow", "deny"),
    [
        ("publish", P, N),
        ("subscribe", S, N),
        ("receive", R, N),
        ("read", S | R, N),
        ("write", P, N),
        ("readwrite", A, N),
        ("all", A, N),
        ("deny", N, A),
        ("deny-publish", N, P),
        ("deny-write", N, P),
        ("deny-subscribe", N, S),
        ("deny-receive", N, R),
        ("deny-read", N, S | R),
    ],
)
def test_every_token(value: str, allow: Perm, deny: Perm) -> None:
    assert parse_tokens(value) == (allow, deny)


def test_token_table_is_complete() -> None:
    assert set(TOKENS) == {
        "publish",
        "subscribe",
        "receive",
        "read",
        "write",
        "readwrite",
        "all",
        "deny",
        "deny-publish",
        "deny-write",
        "deny-subscribe",
        "deny-receive",
        "deny-read",
    }


@pytest.mark.parametrize(
    ("value", "allow", "deny"),
    [
        ("read,deny-publish", S | R, P),
        ("publish,subscribe", P | S, N),
        ("subscribe,receive", S | R, N),
        ("read,write", A, N),
        ("readwrite,deny-receive", A, R),
        ("read,deny-read", S | R, S | R),
        ("publish,publish,write", P, N),
        ("deny-subscribe,deny-receive,deny-write", N, A),
        ("READ, Deny-Publish", S | R, P),
        ("  read  ,\twrite\n", A, N),
        ("read,,write,", A, N),  # empty items are ignored
        ("ALL", A, N),
    ],
)
def test_token_mixes_case_and_whitespace(value: str, allow: Perm, deny: Perm) -> None:
    assert parse_tokens(value) == (allow, deny)


@pytest.mark.parametrize("value", ["reed", "read,pubish", "deny-all", "read write", "deny_publish", "*"])
def test_unknown_token_raises(value: str) -> None:
    with pytest.raises(ValueError, match="unknown token"):
        parse_tokens(value)


def test_unknown_token_message_names_the_token() -> None:
    with pytest.raises(ValueError, match="unknown token 'Pubish'"):
        parse_tokens("read, Pubish ")


@pytest.mark.parametrize("value", ["", "   ", ",", " , ,"])
def test_empty_value_raises(value: str) -> None:
    with pytest.raises(ValueError, match="empty value"):
        parse_tokens(value)


def test_format_tokens_examples() -> None:
    assert format_tokens(S | R, P) == "read,deny-publish"
    assert format_tokens(A, N) == "readwrite"
    assert format_tokens(N, A) == "deny"
    assert format_tokens(P, N) == "publish"
    assert format_tokens(S, R) == "subscribe,deny-receive"
    assert format_tokens(R | P, S | R) == "receive,publish,deny-read"


def test_format_tokens_round_trip_all_combinations() -> None:
    for a, d in itertools.product(range(8), range(8)):
        if not a and not d:
            with pytest.raises(ValueError):
                format_tokens(Perm(a), Perm(d))
            continue
        text = format_tokens(Perm(a), Perm(d))
        assert parse_tokens(text) == (Perm(a), Perm(d)), text


def test_rule_value_property() -> None:
    assert Rule("a/#", S | R, P, "user:x").value == "read,deny-publish"


@pytest.mark.parametrize(
    "f",
    [
        "a",
        "a/b",
        "#",
        "+",
        "a/#",
        "+/+",
        "a/+/b",
        "/",
        "a//b",
        "$SYS/#",
        "%u/#",
        "a%u",
        "ü/ß",
        "x" * 65535,
        "é" * 32767,
    ],
)
def test_valid_filters(f: str) -> None:
    assert validate_filter(f) is None


@pytest.mark.parametrize(
    ("f", "why"),
    [
        ("", "empty"),
        ("a/#/b", "last"),
        ("#/a", "last"),
        ("a#", "mixed"),
        ("a/b+", "mixed"),
        ("+a/b", "mixed"),
        ("a/##", "mixed"),
        ("a/++", "mixed"),
        ("a\x00b", "NUL"),
        ("x" * 65536, "65535"),
        ("é" * 32768, "65535"),
        ("a\ud800", "UTF-8"),
    ],
)
def test_invalid_filters(f: str, why: str) -> None:
    reason = validate_filter(f)
    assert reason is not None and why in reason


@pytest.mark.parametrize("t", ["a", "a/b", "/", "a//b", "$SYS/x", "%u", "x" * 65535])
def test_valid_topics(t: str) -> None:
    assert validate_topic(t) is None


@pytest.mark.parametrize("t", ["", "a/+", "a/#", "#", "+", "a+b", "a\x00", "x" * 65536, "\udfff"])
def test_invalid_topics(t: str) -> None:
    assert validate_topic(t) is not None


def test_parse_rules_good_hash() -> None:
    rules, problems = parse_rules("user:alice", {"b/#": "read", "a/+": " Write ", "c": "read,deny-publish"})
    assert problems == []
    # sorted by filter, independent of hash iteration order
    assert rules == [
        Rule("a/+", P, N, "user:alice"),
        Rule("b/#", S | R, N, "user:alice"),
        Rule("c", S | R, P, "user:alice"),
    ]


def test_parse_rules_reports_and_skips_bad_filters() -> None:
    rules, problems = parse_rules(
        "group:ops", {"ok/#": "read", "a/#/b": "read", "x+": "all", "": "all", "n\x00": "deny"}
    )
    assert rules == [Rule("ok/#", S | R, N, "group:ops")]
    assert {p.filter for p in problems} == {"a/#/b", "x+", "", "n\x00"}
    assert all(p.subject == "group:ops" and p.reason.startswith("bad filter") for p in problems)


def test_parse_rules_unknown_token_never_grants() -> None:
    rules, problems = parse_rules("user:bob", {"a": "read,wirte"})
    assert rules == []
    assert problems == [RuleProblem("user:bob", "a", "read,wirte", "unknown token 'wirte'; entry skipped")]


def test_parse_rules_unknown_token_keeps_recognised_denies() -> None:
    # Fail closed: the deny the operator clearly wrote stays in force.
    rules, problems = parse_rules("user:bob", {"a/#": "readwrite,deny-publish,bogus"})
    assert rules == [Rule("a/#", N, P, "user:bob")]
    assert len(problems) == 1
    assert "'bogus'" in problems[0].reason and "denies kept" in problems[0].reason


@pytest.mark.parametrize("value", ["", "  ", ","])
def test_parse_rules_empty_value_reported(value: str) -> None:
    rules, problems = parse_rules("pattern", {"a": value})
    assert rules == []
    assert problems == [RuleProblem("pattern", "a", value, "empty value")]


def test_parse_rules_accepts_bytes_and_reports_garbage() -> None:
    rules, problems = parse_rules(
        "user:x",
        {b"a/b": b"read", b"\xff": b"read", "c": b"\xfe", "d": 5},  # type: ignore[dict-item]  # deliberately wrong types: Redis data is not trusted
    )
    assert rules == [Rule("a/b", S | R, N, "user:x")]
    assert len(problems) == 3


def test_parse_rules_never_raises_on_broken_mapping() -> None:
    class Broken(dict):  # type: ignore[type-arg]  # a throwaway broken mapping
        def items(self):  # type: ignore[override]  # deliberately raises
            raise RuntimeError("connection lost")

    rules, problems = parse_rules("user:x", Broken())
    assert rules == [] and len(problems) == 1


def test_perm_values() -> None:
    assert (int(P), int(S), int(R), int(A)) == (1, 2, 4, 7)
    assert P | S | R == A
