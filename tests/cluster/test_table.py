"""cluster/table.py: the other brokers' filters in a trie, against a brute-force oracle that asks the
reference matcher (acl/topics.py `topic_matches`) about every entry of every broker."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mqtt_guard.acl.topics import topic_matches, validate_filter
from mqtt_guard.cluster.filters import split_entry
from mqtt_guard.cluster.table import FilterTable

CASES = [
    # entry, topic, routed
    ("a/b", "a/b", True),
    ("a/+", "a/", True),
    ("a/#", "a", True),
    ("#", "a/b/c", True),
    ("#", "$SYS/x", False),  # [MQTT-4.7.2-1]
    ("+/x", "$SYS/x", False),
    ("+/#", "$x", False),
    ("$SYS/#", "$SYS/x", True),
    ("a/+", "a/$x", True),  # only the first level is special
    ("$share/g/a/+", "a/b", True),
    ("$share/g/#", "$SYS/x", False),
    ("a/+/c", "a/b", False),
]


@pytest.mark.parametrize(("entry", "topic", "routed"), CASES)
def test_table_cases(entry: str, topic: str, routed: bool) -> None:
    t = FilterTable()
    t.add("b1", entry)
    assert t.brokers_for(topic) == ({"b1"} if routed else set())


def test_add_remove_replace_drop_and_the_cache() -> None:
    t = FilterTable()
    assert t.add("b1", "a/+") and not t.add("b1", "a/+")
    t.add("b2", "a/#")
    assert t.brokers_for("a/x") == {"b1", "b2"}
    v = t.version
    t.remove("b1", "a/+")
    assert t.version > v
    assert t.brokers_for("a/x") == {"b2"}  # the cached answer went with the change
    t.replace("b2", ["c"])
    assert t.brokers_for("a/x") == set() and t.brokers_for("c") == {"b2"}
    t.drop("b2")
    assert t.brokers() == set() and len(t) == 0
    assert t._root.children == {}  # pruned
    assert not t.remove("b2", "c")


def test_shared_for_names_the_brokers_of_each_group() -> None:
    t = FilterTable()
    t.add("b1", "$share/g/s/+")
    t.add("b2", "$share/g/s/+")
    t.add("b2", "$share/h/s/#")
    t.add("b3", "s/+")
    assert t.brokers_for("s/1") == {"b1", "b2", "b3"}
    assert t.shared_for("s/1") == {("g", "s/+"): {"b1", "b2"}, ("h", "s/#"): {"b2"}}
    t.remove("b2", "$share/g/s/+")
    assert t.shared_for("s/1") == {("g", "s/+"): {"b1"}, ("h", "s/#"): {"b2"}}
    assert t.brokers_for("s/1") == {"b1", "b2", "b3"}  # b2 still has its group h


# -- properties ---------------------------------------------------------------------------------

LEVELS = ["a", "b", "", "$x", "+"]
TOPIC_LEVELS = ["a", "b", "", "$x", "c"]
BROKERS = ["b1", "b2", "b3"]


@st.composite
def filters(draw: st.DrawFn) -> str:
    levels = draw(st.lists(st.sampled_from(LEVELS), min_size=0, max_size=4))
    if not levels or draw(st.booleans()):
        levels.append("#")
    f = "/".join(levels) or "#"
    assert validate_filter(f) is None
    return f


entries = st.one_of(filters(), st.tuples(st.sampled_from(["g", "h"]), filters()).map(lambda p: f"$share/{p[0]}/{p[1]}"))
topics = st.lists(st.sampled_from(TOPIC_LEVELS), min_size=1, max_size=5).map("/".join).filter(bool)
op = st.one_of(
    st.tuples(st.just("add"), st.sampled_from(BROKERS), entries),
    st.tuples(st.just("remove"), st.sampled_from(BROKERS), entries),
    st.tuples(st.just("replace"), st.sampled_from(BROKERS), st.lists(entries, max_size=6)),
    st.tuples(st.just("drop"), st.sampled_from(BROKERS), st.none()),
)


def oracle(model: dict[str, set[str]], topic: str) -> set[str]:
    return {b for b, es in model.items() if any(topic_matches(split_entry(e)[1], topic) for e in es)}


def shared_oracle(model: dict[str, set[str]], topic: str) -> dict[tuple[str, str], set[str]]:
    out: dict[tuple[str, str], set[str]] = {}
    for b, es in model.items():
        for e in es:
            group, f = split_entry(e)
            if group is not None and topic_matches(f, topic):
                out.setdefault((group, f), set()).add(b)
    return out


@settings(max_examples=400, deadline=None)
@given(st.lists(op, max_size=40), st.lists(topics, min_size=1, max_size=8))
def test_table_equals_brute_force(ops: list[tuple[str, str, object]], ts: list[str]) -> None:
    t = FilterTable()
    model: dict[str, set[str]] = {}
    for kind, broker, arg in ops:
        if kind == "add":
            assert isinstance(arg, str)
            t.add(broker, arg)
            model.setdefault(broker, set()).add(arg)
        elif kind == "remove":
            assert isinstance(arg, str)
            t.remove(broker, arg)
            model.get(broker, set()).discard(arg)
        elif kind == "replace":
            assert isinstance(arg, list)
            t.replace(broker, arg)
            model[broker] = set(arg)
        else:
            t.drop(broker)
            model.pop(broker, None)
        for topic in ts:  # asked between changes too: a cached answer must never outlive a change
            assert t.brokers_for(topic) == oracle(model, topic), topic
    model = {b: es for b, es in model.items() if es}
    assert t.brokers() == set(model)
    assert all(t.entries(b) == es for b, es in model.items())
    for topic in ts:
        assert t.shared_for(topic) == shared_oracle(model, topic), topic
    for b in list(model):
        t.drop(b)
    assert t._root.children == {} and len(t) == 0  # nothing left behind


def test_empty_flips_once_each_way_and_tells_its_watcher():
    """`empty` is what the engine reads per PUBLISH (ClusterNode.alone): told only when it flips."""
    table = FilterTable()
    told: list[bool] = []
    table.on_empty = told.append
    assert table.empty
    table.add("b1", "a/#")
    table.add("b2", "x")
    table.remove("b1", "a/#")
    assert not table.empty and told == [False]
    table.drop("b2")
    assert table.empty and told == [False, True]
