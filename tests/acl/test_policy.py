"""AclPolicy: combination of subjects, placeholders, caching, SUBSCRIBE semantics."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mqtt_guard.acl.matcher import filter_covers, topic_matches
from mqtt_guard.acl.policy import AclPolicy, Decision, Subject, is_safe_placeholder_value
from mqtt_guard.acl.rules import Perm, Rule, parse_rules

PUB, SUB, RECV = Perm.PUBLISH, Perm.SUBSCRIBE, Perm.RECEIVE


def policy(hashes: dict[str, dict[str, str]], **kw: object) -> AclPolicy:
    p = AclPolicy(**kw)  # type: ignore[arg-type]  # AclPolicy options as loose keyword values
    for key, mapping in hashes.items():
        rules, problems = parse_rules(key, mapping)
        assert problems == []
        p.set_rules(key, rules)
    return p


ALICE = Subject("alice", "c-alice", frozenset({"ops"}))
BOB = Subject("bob", "c-bob", frozenset())
ANON = Subject(None, "c-anon", frozenset())


def check(p: AclPolicy, s: Subject, action: Perm, topic: str) -> bool:
    """decide() and allowed() must agree, cached or not."""
    first = p.decide(s, action, topic)
    assert p.allowed(s, action, topic) is first.allowed
    assert p.decide(s, action, topic) is first  # second call is a cache hit
    return first.allowed


# ---------------------------------------------------------------- combination


def test_group_deny_beats_user_grant() -> None:
    p = policy({"user:alice": {"plant/#": "readwrite"}, "group:ops": {"plant/valves/#": "deny-publish"}})
    d = p.decide(ALICE, PUB, "plant/valves/1")
    assert d == Decision(False, Rule("plant/valves/#", Perm(0), PUB, "group:ops"), "deny rule")
    assert check(p, ALICE, PUB, "plant/pumps/1")
    assert check(p, ALICE, RECV, "plant/valves/1")  # only publish was denied
    assert not check(p, BOB, PUB, "plant/pumps/1")  # bob has no rules


def test_user_deny_beats_pattern_grant() -> None:
    p = policy({"pattern": {"#": "readwrite"}, "user:bob": {"secret/#": "deny"}})
    assert not check(p, BOB, RECV, "secret/x")
    assert check(p, BOB, RECV, "public/x")
    assert check(p, ALICE, RECV, "secret/x")


def test_grant_and_deny_in_one_value() -> None:
    p = policy({"user:bob": {"a/#": "read,deny-publish", "b": "readwrite,deny-read"}})
    assert check(p, BOB, SUB, "a/#")
    assert check(p, BOB, RECV, "a/x")
    assert not check(p, BOB, PUB, "a/x")
    assert check(p, BOB, PUB, "b")
    assert not check(p, BOB, SUB, "b")
    assert not check(p, BOB, RECV, "b")


def test_explanation_quotes_first_rule_in_subject_order() -> None:
    p = policy({"user:alice": {"a/#": "read"}, "group:ops": {"a/+": "read"}, "pattern": {"#": "read"}})
    assert p.decide(ALICE, RECV, "a/b").rule == Rule("a/#", SUB | RECV, Perm(0), "user:alice")
    assert p.decide(BOB, RECV, "a/b").rule == Rule("#", SUB | RECV, Perm(0), "pattern")


def test_groups_are_all_applied() -> None:
    p = policy({"group:g1": {"one": "publish"}, "group:g2": {"two": "publish"}})
    s = Subject("carol", "c", frozenset({"g1", "g2"}))
    assert check(p, s, PUB, "one") and check(p, s, PUB, "two")
    assert not check(p, s, PUB, "three")


# ---------------------------------------------------------------- defaults, superuser


def test_default_deny() -> None:
    p = policy({"user:bob": {"a": "publish"}})
    d = p.decide(BOB, PUB, "b")
    assert d == Decision(False, None, "default")
    assert p.default_allow is False


def test_default_allow_still_honours_denies() -> None:
    p = policy({"user:bob": {"a": "deny-publish"}}, default_allow=True)
    assert p.decide(BOB, PUB, "b") == Decision(True, None, "default")
    assert not check(p, BOB, PUB, "a")
    assert check(p, BOB, RECV, "a")
    assert check(p, ANON, PUB, "anything")


def test_superuser_may_do_everything() -> None:
    p = policy({"user:root": {"#": "deny"}})
    root = Subject("root", "c", frozenset(), superuser=True)
    for action, topic in [(PUB, "$SYS/x"), (SUB, "#"), (RECV, "a/b"), (SUB, "$SYS/#")]:
        assert p.decide(root, action, topic) == Decision(True, None, "superuser")
        assert p.allowed(root, action, topic)
    # ...but not with a malformed topic or filter
    assert not p.allowed(root, PUB, "a/#")
    assert p.decide(root, SUB, "a/#/b").reason.startswith("invalid filter")


def test_superuser_flag_change_is_not_stale() -> None:
    p = policy({"user:alice": {"a": "publish"}})
    assert not check(p, ALICE, PUB, "b")
    su = Subject("alice", "c-alice", frozenset({"ops"}), superuser=True)
    assert check(p, su, PUB, "b")
    assert not check(p, ALICE, PUB, "b")


# ---------------------------------------------------------------- actions


def test_read_write_receive_distinctions() -> None:
    p = policy(
        {
            "user:bob": {
                "r": "read",
                "w": "write",
                "s": "subscribe",
                "v": "receive",
                "p": "publish",
                "rw": "readwrite",
                "all": "all",
            }
        }
    )
    expected = {
        "r": (False, True, True),
        "w": (True, False, False),
        "s": (False, True, False),
        "v": (False, False, True),
        "p": (True, False, False),
        "rw": (True, True, True),
        "all": (True, True, True),
    }
    for topic, (pub, sub, recv) in expected.items():
        assert (check(p, BOB, PUB, topic), check(p, BOB, SUB, topic), check(p, BOB, RECV, topic)) == (pub, sub, recv), (
            topic
        )


@pytest.mark.parametrize("action", [Perm.ALL, Perm(0), SUB | RECV, 3, "publish"])
def test_action_must_be_exactly_one(action: object) -> None:
    p = policy({"user:bob": {"#": "readwrite"}})
    with pytest.raises(ValueError):
        p.decide(BOB, action, "a")  # type: ignore[arg-type]  # deliberately not one Perm
    with pytest.raises(ValueError):
        p.allowed(BOB, action, "a")  # type: ignore[arg-type]  # deliberately not one Perm


def test_plain_int_actions_work() -> None:
    p = policy({"user:bob": {"a": "publish"}})
    assert p.allowed(BOB, 1, "a")  # type: ignore[arg-type]  # a plain int where a Perm is declared
    assert p.allowed(BOB, PUB, "a")


def test_invalid_topics_and_filters_are_denied() -> None:
    p = policy({"user:bob": {"#": "readwrite"}})
    assert p.decide(BOB, PUB, "a/+").reason.startswith("invalid topic")
    assert not check(p, BOB, RECV, "a/#")
    assert not check(p, BOB, PUB, "")
    assert not check(p, BOB, PUB, "a\x00")
    assert p.decide(BOB, SUB, "a/#/b").reason.startswith("invalid filter")
    assert not check(p, BOB, SUB, "a+")
    assert check(p, BOB, SUB, "a/+")


# ---------------------------------------------------------------- SUBSCRIBE semantics


def test_subscribe_needs_a_covering_grant() -> None:
    p = policy({"user:bob": {"a/#": "read", "x/+": "read"}})
    assert check(p, BOB, SUB, "a/#")
    assert check(p, BOB, SUB, "a/+/b")
    assert check(p, BOB, SUB, "a")
    assert check(p, BOB, SUB, "x/+")
    assert check(p, BOB, SUB, "x/y")
    assert not check(p, BOB, SUB, "x/#")  # would include x and x/y/z
    assert not check(p, BOB, SUB, "#")
    assert not check(p, BOB, SUB, "+/b")


def test_subscribe_deny_only_when_it_covers() -> None:
    p = policy({"user:bob": {"a/#": "read", "a/secret": "deny-read", "a/priv/#": "deny-subscribe"}})
    # deny a/secret merely intersects a/#: the subscription is allowed ...
    assert check(p, BOB, SUB, "a/#")
    # ... and the delivery check withholds the denied topic
    assert not check(p, BOB, RECV, "a/secret")
    assert check(p, BOB, RECV, "a/public")
    # a deny that covers the subscription blocks it
    assert not check(p, BOB, SUB, "a/secret")
    assert not check(p, BOB, SUB, "a/priv/#")
    assert not check(p, BOB, SUB, "a/priv/+/x")
    assert p.decide(BOB, SUB, "a/priv/x").rule == Rule("a/priv/#", Perm(0), SUB, "user:bob")
    # deny-subscribe alone does not affect deliveries (documented)
    assert check(p, BOB, RECV, "a/priv/x")


def test_sys_topics() -> None:
    p = policy({"user:bob": {"#": "readwrite"}, "user:alice": {"$SYS/#": "read", "#": "read"}})
    assert not check(p, BOB, RECV, "$SYS/broker/x")
    assert not check(p, BOB, PUB, "$SYS/broker/x")
    assert not check(p, BOB, SUB, "$SYS/#")
    assert not check(p, BOB, SUB, "$SYS/broker/x")
    assert check(p, BOB, SUB, "#")  # fine: "#" never delivers $-topics
    assert check(p, BOB, RECV, "a/$SYS")
    assert check(p, ALICE, RECV, "$SYS/broker/x")
    assert check(p, ALICE, SUB, "$SYS/#")
    assert check(p, ALICE, SUB, "$SYS/broker/+")
    plus = policy({"user:bob": {"+/broker/#": "read"}})
    assert not check(plus, BOB, RECV, "$SYS/broker/x")
    assert check(plus, BOB, RECV, "x/broker/y")


# ---------------------------------------------------------------- anonymous


def test_anonymous_gets_only_anonymous_rules() -> None:
    p = policy(
        {
            "anonymous": {"public/#": "read"},
            "pattern": {"#": "readwrite"},
            "group:ops": {"#": "readwrite"},
            "user:None": {"#": "readwrite"},
            "user:": {"#": "readwrite"},
        }
    )
    anon_in_group = Subject(None, "c", frozenset({"ops"}))
    for s in (ANON, anon_in_group):
        assert check(p, s, RECV, "public/x")
        assert check(p, s, SUB, "public/#")
        assert not check(p, s, PUB, "public/x")
        assert not check(p, s, RECV, "private/x")
    # authenticated clients do not get anonymous rules
    q = policy({"anonymous": {"public/#": "read"}})
    assert not check(q, BOB, RECV, "public/x")


def test_anonymous_placeholders() -> None:
    p = policy({"anonymous": {"anon/%c/#": "readwrite", "anon/%u/#": "readwrite"}})
    assert check(p, ANON, PUB, "anon/c-anon/x")
    assert not check(p, ANON, PUB, "anon/%u/x")  # %u rule skipped, not literal
    assert not check(p, ANON, PUB, "anon/other/x")


# ---------------------------------------------------------------- placeholders


def test_pattern_substitution() -> None:
    p = policy(
        {
            "pattern": {
                "sensors/%u/#": "readwrite",
                "clients/%c": "publish",
                "both/%u/%c": "publish",
                "lit/a%u": "publish",
                "lit/%u%c": "publish",
            }
        }
    )
    assert check(p, BOB, PUB, "sensors/bob/t")
    assert check(p, BOB, SUB, "sensors/bob/#")
    assert not check(p, BOB, PUB, "sensors/alice/t")
    assert not check(p, BOB, SUB, "sensors/+/t")
    assert check(p, BOB, PUB, "clients/c-bob")
    assert not check(p, BOB, PUB, "clients/c-alice")
    assert check(p, BOB, PUB, "both/bob/c-bob")
    assert not check(p, BOB, PUB, "both/bob/c-alice")
    # placeholders only count as whole levels
    assert check(p, BOB, PUB, "lit/a%u")
    assert not check(p, BOB, PUB, "lit/abob")
    assert check(p, BOB, PUB, "lit/%u%c")
    # the explanation quotes the rule as written
    assert p.decide(BOB, PUB, "sensors/bob/t").rule == Rule("sensors/%u/#", Perm.ALL, Perm(0), "pattern")


def test_placeholders_are_literal_in_user_and_group_rules() -> None:
    p = policy({"user:bob": {"u/%u": "publish"}, "group:ops": {"c/%c": "publish"}})
    assert check(p, BOB, PUB, "u/%u")
    assert not check(p, BOB, PUB, "u/bob")
    assert check(p, ALICE, PUB, "c/%c")
    assert not check(p, ALICE, PUB, "c/c-alice")


@pytest.mark.parametrize("username", ["a/b", "+", "#", "a+", "b#", "x\x00y", "", "/"])
def test_unsafe_usernames_never_match_placeholder_rules(username: str) -> None:
    p = policy({"pattern": {"sensors/%u/#": "readwrite", "open": "publish"}})
    s = Subject(username, "cid", frozenset())
    for topic in ["sensors/a/b/x", "sensors/a/x", "sensors/x", "sensors/+", "sensors/a", "sensors/%u/x"]:
        if "+" not in topic:
            assert not check(p, s, PUB, topic), topic
    assert not check(p, s, SUB, "sensors/#")
    assert not check(p, s, SUB, "sensors/+/#")
    assert check(p, s, PUB, "open")  # other pattern rules still apply


@pytest.mark.parametrize("client_id", ["x/#", "+", "#", "a/b", "", "\x00"])
def test_unsafe_client_ids_never_match_placeholder_rules(client_id: str) -> None:
    p = policy({"pattern": {"clients/%c/#": "readwrite"}})
    s = Subject("bob", client_id, frozenset())
    assert not check(p, s, PUB, "clients/x/y")
    assert not check(p, s, SUB, "clients/#")
    assert not check(p, s, SUB, "clients/x/#")
    assert not check(p, s, RECV, "clients/a/b")


def test_dollar_placeholder_in_first_level_is_refused() -> None:
    p = policy({"pattern": {"%u/#": "readwrite", "home/%u/#": "readwrite"}})
    sys_user = Subject("$SYS", "c", frozenset())
    assert not check(p, sys_user, RECV, "$SYS/broker/x")
    assert not check(p, sys_user, SUB, "$SYS/#")
    assert check(p, sys_user, RECV, "home/$SYS/x")  # not the first level: fine
    assert check(p, BOB, RECV, "bob/x")


def test_is_safe_placeholder_value() -> None:
    assert is_safe_placeholder_value("bob")
    assert is_safe_placeholder_value("$x")
    assert not is_safe_placeholder_value("$x", first_level=True)
    for bad in (None, "", "a/b", "+", "#", "\x00"):
        assert not is_safe_placeholder_value(bad)


# ---------------------------------------------------------------- caching


def test_set_rules_invalidates_affected_clients() -> None:
    p = policy({"user:alice": {"a": "publish"}, "user:bob": {"a": "publish"}})
    assert check(p, ALICE, PUB, "a") and check(p, BOB, PUB, "a")
    bob_decision = p.decide(BOB, PUB, "a")
    rules, _ = parse_rules("user:alice", {"a": "deny"})
    p.set_rules("user:alice", rules)
    assert not check(p, ALICE, PUB, "a")
    assert p.decide(BOB, PUB, "a") is bob_decision  # bob's cache untouched


def test_set_rules_on_group_and_pattern_invalidates() -> None:
    p = policy({"group:ops": {"g": "publish"}})
    assert check(p, ALICE, PUB, "g")
    assert not check(p, ALICE, PUB, "p")
    p.set_rules("group:ops", [])
    assert not check(p, ALICE, PUB, "g")
    p.set_rules("pattern", parse_rules("pattern", {"p": "publish"})[0])
    assert check(p, ALICE, PUB, "p")
    assert check(p, BOB, PUB, "p")
    assert not check(p, ANON, PUB, "p")
    p.set_rules("anonymous", parse_rules("anonymous", {"p": "publish"})[0])
    assert check(p, ANON, PUB, "p")


def test_drop_rules_and_clear() -> None:
    p = policy({"user:bob": {"a": "publish"}, "pattern": {"b": "publish"}})
    assert check(p, BOB, PUB, "a") and check(p, BOB, PUB, "b")
    p.drop_rules("user:bob")
    assert not check(p, BOB, PUB, "a")
    assert check(p, BOB, PUB, "b")
    p.drop_rules("user:nobody")  # harmless
    p.clear()
    assert not check(p, BOB, PUB, "b")
    assert p.stats() == {"clients": 1, "bases": 1, "decisions": 1, "subject_keys": 0}


def test_sessions_of_one_user_share_the_compiled_base() -> None:
    p = policy({"user:bob": {"a/#": "readwrite"}, "pattern": {"c/%c": "publish", "all": "publish"}})
    sessions = [Subject("bob", f"id{i}", frozenset()) for i in range(5)]
    for s in sessions:
        assert check(p, s, PUB, "a/x") and check(p, s, PUB, "all")
        assert check(p, s, PUB, f"c/{s.client_id}")
        assert not check(p, s, PUB, "c/other")
    assert p.stats()["clients"] == 5 and p.stats()["bases"] == 1
    # a rule change reaches every session, including through the shared base
    p.set_rules("user:bob", parse_rules("user:bob", {"a/#": "deny"})[0])
    assert p.stats()["bases"] == 0 and p.stats()["clients"] == 0
    for s in sessions:
        assert not check(p, s, PUB, "a/x")
        assert check(p, s, PUB, f"c/{s.client_id}")
    p.set_rules("pattern", parse_rules("pattern", {"c/%c": "deny"})[0])
    for s in sessions:
        assert not check(p, s, PUB, f"c/{s.client_id}")
        assert not check(p, s, PUB, "all")


def test_matcher_for_and_entries_for() -> None:
    p = policy({"user:bob": {"u": "publish"}, "group:g": {"g": "read"}, "pattern": {"p/%u": "publish", "q": "read"}})
    s = Subject("bob", "c", frozenset({"g"}))
    assert [f for f, _ in p.entries_for(s)] == ["u", "g", "q", "p/bob"]
    assert p.matcher_for(s).match("p/bob")[0] == PUB
    assert p.deps_of(s) == {"user:bob", "group:g", "pattern"}
    assert p.deps_of(ANON) == {"anonymous"}


def test_changed_groups_are_not_stale() -> None:
    p = policy({"group:ops": {"ops/#": "readwrite"}})
    assert check(p, ALICE, PUB, "ops/x")
    demoted = Subject("alice", "c-alice", frozenset())
    assert not check(p, demoted, PUB, "ops/x")
    promoted = Subject("bob", "c-bob", {"ops"})  # type: ignore[arg-type]  # any iterable is accepted
    assert promoted.groups == frozenset({"ops"})
    assert check(p, promoted, PUB, "ops/x")


def test_changed_client_id_is_not_stale() -> None:
    p = policy({"pattern": {"c/%c": "publish"}})
    assert check(p, Subject("bob", "one", frozenset()), PUB, "c/one")
    assert not check(p, Subject("bob", "two", frozenset()), PUB, "c/one")


def test_equal_subjects_share_cache() -> None:
    p = policy({"user:bob": {"a": "publish"}})
    d = p.decide(BOB, PUB, "a")
    assert p.decide(Subject("bob", "c-bob", frozenset()), PUB, "a") is d


def test_decision_cache_is_bounded() -> None:
    p = policy({"user:bob": {"t/#": "publish"}, "user:alice": {"t/+": "publish"}}, decision_cache_size=50)
    for i in range(500):
        assert check(p, BOB, PUB, f"t/{i}/x")
        assert check(p, ALICE, PUB, f"t/{i}")
        assert not check(p, ALICE, PUB, f"t/{i}/x")
        assert p.stats()["decisions"] <= 50
    assert p.stats()["decisions"] > 0


def test_matcher_cache_is_bounded_and_forget() -> None:
    p = policy({"pattern": {"c/%c": "publish"}}, matcher_cache_size=10)
    for i in range(100):
        s = Subject("bob", f"id{i}", frozenset())
        assert check(p, s, PUB, f"c/id{i}")
        assert p.stats()["clients"] <= 10
    s = Subject("bob", "id99", frozenset())
    p.forget(s)
    p.forget(s)  # idempotent
    assert p.stats()["clients"] == 9
    assert check(p, s, PUB, "c/id99")


def test_bad_cache_sizes_rejected() -> None:
    with pytest.raises(ValueError):
        AclPolicy(decision_cache_size=0)


def test_set_rules_drops_invalid_hand_built_rules() -> None:
    p = AclPolicy()
    p.set_rules("user:bob", [Rule("a/#/b", Perm.ALL, Perm(0), "user:bob"), Rule("ok", PUB, Perm(0), "user:bob")])
    assert p.rules_for("user:bob") == (Rule("ok", PUB, Perm(0), "user:bob"),)
    assert check(p, BOB, PUB, "ok")
    assert p.subject_keys() == ["user:bob"]


# ---------------------------------------------------------------- model check

SUBJECT_KEYS = ["user:u1", "user:u2", "group:g1", "group:g2", "pattern", "anonymous"]
LEVELS = ["a", "b", "u1", "c1", "$x", ""]
FILTER_LEVELS = LEVELS + ["+", "%u", "%c"]


@st.composite
def rule_filters(draw: st.DrawFn) -> str:
    levels = draw(st.lists(st.sampled_from(FILTER_LEVELS), min_size=0, max_size=3))
    if not levels or draw(st.booleans()):
        levels.append("#")
    return "/".join(levels) or "#"


@st.composite
def sub_filters(draw: st.DrawFn) -> str:
    levels = draw(st.lists(st.sampled_from(LEVELS + ["+"]), min_size=0, max_size=3))
    if not levels or draw(st.booleans()):
        levels.append("#")
    return "/".join(levels) or "#"


perm_bits = st.integers(0, 7).map(Perm)
rule_sets = st.dictionaries(
    st.sampled_from(SUBJECT_KEYS),
    st.lists(st.tuples(rule_filters(), perm_bits, perm_bits), max_size=6),
    max_size=6,
)
subjects = st.builds(
    Subject,
    st.sampled_from([None, "u1", "u2", "a/b", "+"]),
    st.sampled_from(["c1", "c2", "x/#"]),
    st.frozensets(st.sampled_from(["g1", "g2"])),
    st.booleans(),
)
questions = st.tuples(
    st.sampled_from([PUB, SUB, RECV]),
    st.lists(st.sampled_from(LEVELS), min_size=1, max_size=4).map("/".join).filter(bool),
    sub_filters(),
)


def model_decide(rules: dict[str, list[Rule]], s: Subject, action: Perm, topic: str, default: bool) -> bool:
    """A deliberately naive restatement of the documented policy."""
    if s.superuser:
        return True
    if s.username is None:
        keys = ["anonymous"]
    else:
        keys = [f"user:{s.username}", *(f"group:{g}" for g in s.groups), "pattern"]
    applicable: list[tuple[str, Rule]] = []
    for key in keys:
        for r in rules.get(key, []):
            f = r.filter
            if key in ("pattern", "anonymous"):
                levels = f.split("/")
                ok = True
                for i, lv in enumerate(levels):
                    if lv in ("%u", "%c"):
                        v = s.username if lv == "%u" else s.client_id
                        if not v or any(ch in v for ch in "+#/\x00") or (i == 0 and v.startswith("$")):
                            ok = False
                        else:
                            levels[i] = v
                if not ok:
                    continue
                f = "/".join(levels)
            applicable.append((f, r))
    test = filter_covers if action == SUB else topic_matches
    hits = [r for f, r in applicable if test(f, topic)]
    if any(r.deny & action for r in hits):
        return False
    if any(r.allow & action for r in hits):
        return True
    return default


@settings(max_examples=300, deadline=None)
@given(rule_sets, rule_sets, st.lists(st.tuples(subjects, questions), min_size=1, max_size=12), st.booleans())
def test_policy_matches_model_across_updates(
    before: dict,
    after: dict,
    asks: list,
    default: bool,  # type: ignore[type-arg]  # hypothesis-drawn values
) -> None:
    p = AclPolicy(default_allow=default, decision_cache_size=7, matcher_cache_size=3)

    def load(spec: dict) -> dict[str, list[Rule]]:  # type: ignore[type-arg]  # a hypothesis-drawn spec
        out = {k: [Rule(f, a, d, k) for f, a, d in v] for k, v in spec.items()}
        for k in SUBJECT_KEYS:
            if k in out:
                p.set_rules(k, out[k])
            else:
                p.drop_rules(k)
        return out

    for spec in (before, after):
        model = load(spec)
        for _ in range(2):  # second round is served from the caches
            for s, (action, topic, sub) in asks:
                t = sub if action == SUB else topic
                expected = model_decide(model, s, action, t, default)
                assert p.allowed(s, action, t) is expected, (s, action, t)
                assert p.decide(s, action, t).allowed is expected
