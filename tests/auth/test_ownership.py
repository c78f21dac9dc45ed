"""The client id rule (mqtt_guard/auth/ownership.py): examples, and properties against a naive oracle."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mqtt_guard.auth.ownership import HELD, PREFIX, SEPARATORS, refusal

IDENTITIES = st.sampled_from([None, "alice", "bob", "alice-bob", "al"])
IDS = st.one_of(
    st.sampled_from(["alice-1", "alice/k", "alice:x", "alice_2", "alice", "alice.1", "alice-", "bob-1", "al-1"]),
    st.sampled_from(["alice-bob-1", "alicebob", "dev-7", "sec-1", "", "x"]),
    st.text(alphabet="ab-_/:.lice", max_size=12),
)


def test_owner_examples():
    assert refusal("owner", "dev", "alice", held=False, holder=None) is None
    assert refusal("owner", "dev", "alice", held=True, holder="alice") is None  # the same user takes over
    r = refusal("owner", "dev", "bob", held=True, holder="alice")
    assert r is not None and (r.code, r.kind) == (2, HELD)
    assert refusal("owner", "dev", None, held=True, holder="alice") is not None  # anonymous vs named
    assert refusal("owner", "dev", "alice", held=True, holder=None) is not None  # named vs anonymous
    assert refusal("owner", "dev", None, held=True, holder=None) is None  # anonymous among themselves


@pytest.mark.parametrize("client_id", ["alice-1", "alice/kitchen", "alice:x", "alice_2", "alice-"])
def test_username_prefix_accepts(client_id):
    assert refusal("username-prefix", client_id, "alice", held=False, holder=None) is None


@pytest.mark.parametrize("client_id", ["alice", "alice1", "alice.1", "xalice-1", "bob-1", "Alice-1", ""])
def test_username_prefix_refuses(client_id):
    r = refusal("username-prefix", client_id, "alice", held=False, holder=None)
    assert r is not None and (r.code, r.kind) == (2, PREFIX)


def test_username_prefix_anonymous_and_generated():
    assert refusal("username-prefix", "anon-1", None, held=False, holder=None) is not None
    assert refusal("username-prefix", "amqtt/xyz", "alice", held=False, holder=None, generated=True) is None
    # overlapping prefixes: the owner rule still protects a held id
    assert refusal("username-prefix", "alice-bob-1", "alice", held=True, holder="alice-bob") is not None


def test_any_and_prefixes():
    assert refusal("any", "dev", "bob", held=True, holder="alice") is None
    r = refusal("any", "dev", "bob", held=False, holder=None, prefixes=("sec-",))
    assert r is not None and (r.code, r.kind) == (5, PREFIX)  # mosquitto's answer (measured)
    assert refusal("any", "sec-dev", "bob", held=False, holder=None, prefixes=("sec-", "x")) is None
    # prefixes apply to generated ids too (mosquitto refuses an empty id under clientid_prefixes)
    assert refusal("any", "amqtt/1", None, held=False, holder=None, prefixes=("sec-",), generated=True) is not None


def oracle(policy, client_id, username, held, holder, prefixes, generated):
    """The rule as the docs state it, written naively: the CONNACK code or 0."""
    if prefixes and not any(client_id[: len(p)] == p for p in prefixes):
        return 5
    if policy == "any":
        return 0
    if policy == "username-prefix" and not generated:
        if username is None:
            return 2
        if not any(client_id.startswith(username + sep) for sep in SEPARATORS):
            return 2
    if held and holder != username:
        return 2
    return 0


@settings(max_examples=2000, deadline=None)
@given(
    st.sampled_from(["owner", "username-prefix", "any"]),
    IDS,
    IDENTITIES,
    st.booleans(),
    IDENTITIES,
    st.lists(st.sampled_from(["sec-", "alice", "", "dev"]), max_size=2).map(tuple),
    st.booleans(),
)
def test_matches_the_oracle(policy, client_id, username, held, holder, prefixes, generated):
    r = refusal(policy, client_id, username, held=held, holder=holder, prefixes=prefixes, generated=generated)
    assert (r.code if r is not None else 0) == oracle(policy, client_id, username, held, holder, prefixes, generated)


@settings(max_examples=500, deadline=None)
@given(st.sampled_from(["owner", "username-prefix", "any"]), IDS, IDENTITIES, st.booleans())
def test_the_holder_itself_is_never_refused_for_holding(policy, client_id, username, generated):
    """Whatever the policy, a client is never refused because its own identity holds the id."""
    held = refusal(policy, client_id, username, held=True, holder=username, generated=generated)
    free = refusal(policy, client_id, username, held=False, holder=None, generated=generated)
    assert held == free
