"""cluster/filters.py: the deduplicated filter set with reference counts, checked against a model (a
plain multiset) under random subscribe/unsubscribe sequences, and the shared-subscription entries."""

from __future__ import annotations

from collections import Counter

from hypothesis import given, settings
from hypothesis import strategies as st

from mqtt_guard.cluster.filters import LocalFilters, routing_filter, split_entry

ENTRIES = ["a/b", "a/+", "#", "$SYS/#", "$share/g/a/+", "$share/h/a/+", "x/#"]


def test_the_set_changes_only_with_the_first_and_the_last_subscriber() -> None:
    f = LocalFilters()
    assert f.subscribe("a/+") is True
    assert f.subscribe("a/+") is False  # a second client: nothing new for the cluster
    assert f.take_delta().added == {"a/+"}
    assert f.unsubscribe("a/+") is False
    assert not f.take_delta()  # one subscriber left
    assert f.unsubscribe("a/+") is True
    d = f.take_delta()
    assert d.removed == {"a/+"} and not d.added
    assert f.unsubscribe("a/+") is False  # not held: ignored
    assert len(f) == 0 and not f.take_delta()


def test_a_filter_that_comes_and_goes_between_two_publications_is_no_change() -> None:
    f = LocalFilters()
    f.subscribe("t/1")
    f.take_delta()
    f.subscribe("t/2")
    f.unsubscribe("t/2")
    f.unsubscribe("t/1")
    f.subscribe("t/1")
    assert f.changed and not f.take_delta()


def test_take_full_includes_pending_changes() -> None:
    f = LocalFilters()
    f.subscribe("a")
    f.subscribe("b")
    assert f.take_full() == {"a", "b"}
    assert not f.changed
    f.unsubscribe("a")
    assert f.take_delta().removed == {"a"}


def test_shared_subscriptions_are_entries_of_their_own_matched_on_their_filter() -> None:
    f = LocalFilters()
    for e in ("$share/g/a/+", "$share/h/a/+", "a/+", "$share/g/a/+"):
        f.subscribe(e)
    assert f.entries() == {"$share/g/a/+", "$share/h/a/+", "a/+"}
    assert f.count("$share/g/a/+") == 2
    assert split_entry("$share/g/a/+") == ("g", "a/+")
    assert split_entry("$share/g/#") == ("g", "#")
    assert split_entry("a/+") == (None, "a/+")
    assert split_entry("$share/g") == (None, "$share/g")  # not a shared subscription's shape
    assert split_entry("$share//a") == (None, "$share//a")
    assert routing_filter("$share/g/$SYS/#") == "$SYS/#"


ops = st.lists(st.tuples(st.booleans(), st.sampled_from(ENTRIES)), max_size=60)


@settings(max_examples=300, deadline=None)
@given(st.lists(ops, min_size=1, max_size=5))
def test_counts_and_deltas_agree_with_a_multiset_model(rounds: list[list[tuple[bool, str]]]) -> None:
    """Random subscribe/unsubscribe runs, a delta taken after each run: the counts equal the model's, each
    delta is exactly the difference between the sets before and after the run, and replaying the deltas
    rebuilds the set (what the other brokers hold)."""
    f = LocalFilters()
    model: Counter[str] = Counter()
    seen_by_others: set[str] = set()
    for run in rounds:
        before = set(model)
        for sub, entry in run:
            if sub:
                became = f.subscribe(entry)
                assert became == (model[entry] == 0)
                model[entry] += 1
            else:
                went = f.unsubscribe(entry)
                assert went == (model[entry] == 1)
                if model[entry]:
                    model[entry] -= 1
                if not model[entry]:
                    del model[entry]
        after = set(model)
        d = f.take_delta()
        assert d.added == after - before and d.removed == before - after
        seen_by_others = (seen_by_others | d.added) - d.removed
        assert seen_by_others == f.entries() == after
        assert all(f.count(e) == n for e, n in model.items())
