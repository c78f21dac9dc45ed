"""durable/sessions.py: a stored session record and its messages decode to what was encoded; anything
else stored under the keys gives CorruptSession with a reason, never another exception."""

from __future__ import annotations

import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mqtt_guard.durable.sessions import (
    CorruptSession,
    SessionRecord,
    StoredMessage,
    StoredSubscription,
    StoredWill,
    decode_message,
    decode_record,
    decode_session,
    encode_message,
    encode_record,
    inbound_field,
    message_field,
)

texts = st.text(min_size=1, max_size=30).filter(lambda t: "\x00" not in t)
subs = st.builds(
    StoredSubscription,
    texts,
    st.integers(0, 2),
    st.integers(0, 255),
    st.integers(0, 268435455),
)
wills = st.builds(
    StoredWill,
    texts,
    st.binary(max_size=50),
    st.integers(0, 2),
    st.booleans(),
    st.integers(0, 0xFFFFFFFF),
    st.binary(max_size=20),
    st.none() | st.integers(0, 0xFFFFFFFF),
)
records = st.builds(
    SessionRecord,
    client_id=st.text(max_size=30),
    level=st.sampled_from([3, 4, 5]),
    username=st.none() | st.text(max_size=20),
    anonymous=st.booleans(),
    expiry=st.none() | st.floats(0, 1e9, allow_nan=False),
    subscriptions=st.lists(subs, max_size=5),
    will=st.none() | wills,
    broker=st.text(max_size=20),
    proc=st.text(max_size=20),
    offline_since=st.none() | st.floats(0, 2e9, allow_nan=False),
)


@st.composite
def messages(draw: st.DrawFn) -> StoredMessage:
    qos = draw(st.integers(1, 2)) if draw(st.booleans()) else draw(st.integers(0, 2))
    packet_id = draw(st.integers(0, 65535)) if qos else 0
    released = qos == 2 and packet_id > 0 and draw(st.booleans())
    return StoredMessage(
        topic=draw(st.binary(min_size=1, max_size=40)),
        payload=b"" if released else draw(st.binary(max_size=200)),
        qos=qos,
        retain=draw(st.booleans()),
        packet_id=packet_id,
        released=released,
        v5=draw(st.booleans()),
        props=draw(st.binary(max_size=30)),
        expires=draw(st.floats(0, 2e9, allow_nan=False)),
    )


@given(records)
def test_record_round_trip(record: SessionRecord) -> None:
    assert decode_record(encode_record(record)) == record


@given(messages())
def test_message_round_trip(message: StoredMessage) -> None:
    assert decode_message(encode_message(message)) == message


@settings(max_examples=300)
@given(st.binary(max_size=80))
def test_any_bytes_as_a_message_decode_or_say_why(raw: bytes) -> None:
    try:
        decode_message(raw)
    except CorruptSession as exc:
        assert str(exc)


@settings(max_examples=300)
@given(st.text(max_size=80) | st.binary(max_size=80))
def test_any_text_as_a_record_decodes_or_says_why(raw: str | bytes) -> None:
    try:
        decode_record(raw)
    except CorruptSession as exc:
        assert str(exc)


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=10),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=12,
)


@settings(max_examples=300)
@given(
    records,
    st.sampled_from(["v", "client_id", "level", "username", "anonymous", "expiry", "subs", "will", "broker", "proc"]),
    json_values,
)
def test_a_record_with_any_field_changed_decodes_or_says_why(record: SessionRecord, key: str, value: object) -> None:
    data = json.loads(encode_record(record))
    data[key] = value
    try:
        decode_record(json.dumps(data))
    except CorruptSession as exc:
        assert str(exc)


def test_session_orders_messages_and_reads_inbound_ids() -> None:
    record = SessionRecord("c1", level=5, expiry=60.0, subscriptions=[StoredSubscription("a/#", 1, 0x21, 7)])
    m1 = StoredMessage(b"a/1", b"one", 1)
    m2 = StoredMessage(b"a/2", b"", 2, packet_id=9, released=True)
    fields = {
        message_field(17).encode(): encode_message(m2),
        message_field(3).encode(): encode_message(m1),
        inbound_field(42).encode(): b"",
        b"~n": b"2",
        b"~b": b"10",
    }
    stored = decode_session(encode_record(record).encode(), fields)
    assert stored.record == record
    assert [seq for seq, _ in stored.messages] == [3, 17]
    assert stored.messages[0][1] == m1 and stored.messages[1][1] == m2
    assert stored.inbound == {42}
    assert stored.next_seq == 18


def test_one_corrupt_message_makes_the_session_corrupt() -> None:
    record = encode_record(SessionRecord("c1"))
    with pytest.raises(CorruptSession, match="shorter than its header"):
        decode_session(record, {message_field(1).encode(): b"\x01\x01"})
    with pytest.raises(CorruptSession, match="no sequence number"):
        decode_session(record, {b"m:zz": encode_message(StoredMessage(b"t", b"p", 1))})
