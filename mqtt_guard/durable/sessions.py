"""Persistent sessions in Redis (issue 17 item 2): what a stored session holds, and its encodings.

A persistent session (MQTT 3.1.1 clean session 0, MQTT 5 Session Expiry Interval > 0) lives in the
memory of the broker that serves it, as before; Redis holds a copy that any broker can resume from:

- the **record** (`SessionRecord`, JSON): protocol level, username, expiry, subscriptions with their
  options, the will and its delay, and the broker that owns the session (`broker`: stable across that
  broker's restarts; `proc`: the process, whose kick queue reaches it). Written whole (idempotent SET)
  when the session connects, subscribes, unsubscribes or goes offline.
- the **messages** (`StoredMessage`, a compact binary form): every QoS 1/2 message queued for the
  session or in flight to it, with its packet id once sent and its QoS 2 state (PUBREL pending), so a
  resume re-sends exactly what memory would have; QoS 0 queued offline when `durable.queue_qos0_messages`.
  The inbound QoS 2 packet ids waiting for PUBREL (`inbound`), so a PUBLISH the client re-sends with DUP
  after a restart is not routed twice.

Everything here is pure: the broker (engine/durable.py) turns its sessions and deliveries into these
and back; mqtt_guard/store/sessions.py holds the Redis keys and commands. A record or message that
cannot be decoded raises `CorruptSession` with the reason: the caller logs it and treats the session as
absent (never a crash, never half a session).
"""

from __future__ import annotations

import base64
import binascii
import json
import struct
from dataclasses import dataclass, field
from typing import Any

RECORD_VERSION = 1
MESSAGE_VERSION = 1

# A stored message's field in the session's message hash: "m:" + 16 hex digits (a per-session sequence
# number: the hash's fields sorted are the queue's order); an inbound QoS 2 packet id: "i:" + the id.
MESSAGE_FIELD = "m:"
INBOUND_FIELD = "i:"

_MSG = struct.Struct(">BBBHdHI")  # version, qos, flags, packet id, expires (unix s, 0: none), topic len, props len
FLAG_RETAIN = 1
FLAG_RELEASED = 2  # QoS 2: PUBREC received, PUBREL pending (payload dropped)
FLAG_V5 = 4  # an MQTT 5 delivery (its properties travel with it)


class CorruptSession(ValueError):
    """A stored session record or message that cannot be decoded; the text says what is wrong."""


@dataclass(frozen=True, slots=True)
class StoredSubscription:
    """One subscription: its filter (a shared one is `$share/GROUP/FILTER`), the granted QoS, the
    MQTT 5 options byte as subscribed (No Local, Retain As Published, Retain Handling; 3.1.1: the QoS),
    the Subscription Identifier (0: none)."""

    filter: str
    qos: int
    options: int = 0
    sub_id: int = 0


@dataclass(frozen=True, slots=True)
class StoredWill:
    topic: str
    payload: bytes
    qos: int
    retain: bool
    delay: int = 0  # MQTT 5 Will Delay Interval, s
    props: bytes = b""  # MQTT 5: the will's properties that travel with it (encoded)
    expiry: int | None = None  # MQTT 5: the will's Message Expiry Interval, s


@dataclass(slots=True)
class SessionRecord:
    """A persistent session, as stored. `expiry`: how long it outlives its connection, s (None: until
    dropped); `broker`/`proc`: the owner (stable id / process id); `offline_since`: unix s (None while
    connected)."""

    client_id: str
    level: int = 4
    username: str | None = None
    anonymous: bool = False
    expiry: float | None = None
    subscriptions: list[StoredSubscription] = field(default_factory=list)
    will: StoredWill | None = None
    broker: str = ""
    proc: str = ""
    offline_since: float | None = None


@dataclass(slots=True)
class StoredMessage:
    """A message for the session: queued (packet_id 0), in flight (packet_id set), or a QoS 2 delivery
    whose PUBREC came (`released`: only the PUBREL is owed, no payload). `expires`: unix s of its
    Message Expiry Interval (0.0: none). `props`: MQTT 5 properties of the delivery (`v5`)."""

    topic: bytes
    payload: bytes
    qos: int
    retain: bool = False
    packet_id: int = 0
    released: bool = False
    v5: bool = False
    props: bytes = b""
    expires: float = 0.0


@dataclass(slots=True)
class StoredSession:
    """What a resume reads: the record, the messages in queue order, the inbound QoS 2 ids, and the
    next free sequence number."""

    record: SessionRecord
    messages: list[tuple[int, StoredMessage]]
    inbound: set[int]
    next_seq: int


# -- the record ----------------------------------------------------------------------------------------


def encode_record(record: SessionRecord) -> str:
    will = record.will
    data: dict[str, Any] = {
        "v": RECORD_VERSION,
        "client_id": record.client_id,
        "level": record.level,
        "username": record.username,
        "anonymous": record.anonymous,
        "expiry": record.expiry,
        "subs": [[s.filter, s.qos, s.options, s.sub_id] for s in record.subscriptions],
        "will": None
        if will is None
        else {
            "topic": will.topic,
            "payload": _b64(will.payload),
            "qos": will.qos,
            "retain": will.retain,
            "delay": will.delay,
            "props": _b64(will.props),
            "expiry": will.expiry,
        },
        "broker": record.broker,
        "proc": record.proc,
        "offline_since": record.offline_since,
    }
    return json.dumps(data, separators=(",", ":"))


def decode_record(raw: str | bytes) -> SessionRecord:
    """The record stored as `raw`; CorruptSession saying what is wrong."""
    try:
        data = json.loads(raw)
    except (ValueError, UnicodeDecodeError) as exc:
        raise CorruptSession(f"session record is not JSON: {exc}") from None
    if not isinstance(data, dict):
        raise CorruptSession("session record is not a JSON object")
    if data.get("v") != RECORD_VERSION:
        raise CorruptSession(f"session record version {data.get('v')!r} is not {RECORD_VERSION}")
    try:
        subs = []
        for entry in _typed(data, "subs", list):
            if not isinstance(entry, list) or len(entry) != 4:
                raise CorruptSession(f"subscription entry {entry!r} is not [filter, qos, options, id]")
            flt, qos, options, sub_id = entry
            if not isinstance(flt, str) or not flt:
                raise CorruptSession(f"subscription filter {flt!r} is not a non-empty string")
            subs.append(
                StoredSubscription(
                    flt,
                    _int(qos, "qos", 0, 2),
                    _int(options, "options", 0, 255),
                    _int(sub_id, "subscription id", 0, 268435455),
                )
            )
        will = None
        w = data.get("will")
        if w is not None:
            if not isinstance(w, dict):
                raise CorruptSession("will is not an object")
            topic = _typed(w, "topic", str)
            expiry = w.get("expiry")
            will = StoredWill(
                topic,
                _unb64(_typed(w, "payload", str)),
                _int(w.get("qos"), "will qos", 0, 2),
                bool(_typed(w, "retain", bool)),
                _int(w.get("delay", 0), "will delay", 0, 0xFFFFFFFF),
                _unb64(_typed(w, "props", str)),
                None if expiry is None else _int(expiry, "will expiry", 0, 0xFFFFFFFF),
            )
        expiry = data.get("expiry")
        if expiry is not None and (not isinstance(expiry, int | float) or isinstance(expiry, bool) or expiry < 0):
            raise CorruptSession(f"expiry {expiry!r} is not a number of seconds")
        username = data.get("username")
        if username is not None and not isinstance(username, str):
            raise CorruptSession(f"username {username!r} is not a string")
        offline = data.get("offline_since")
        if offline is not None and (not isinstance(offline, int | float) or isinstance(offline, bool)):
            raise CorruptSession(f"offline_since {offline!r} is not a time")
        return SessionRecord(
            client_id=_typed(data, "client_id", str),
            level=_int(data.get("level"), "level", 3, 5),
            username=username,
            anonymous=bool(_typed(data, "anonymous", bool)),
            expiry=None if expiry is None else float(expiry),
            subscriptions=subs,
            will=will,
            broker=_typed(data, "broker", str),
            proc=_typed(data, "proc", str),
            offline_since=None if offline is None else float(offline),
        )
    except CorruptSession:
        raise
    except (KeyError, TypeError, ValueError) as exc:
        raise CorruptSession(f"session record is malformed: {exc!r}") from None


# -- messages ------------------------------------------------------------------------------------------


def message_field(seq: int) -> str:
    """The hash field of the message with sequence number `seq` (sorted fields = queue order)."""
    return f"{MESSAGE_FIELD}{seq:016x}"


def inbound_field(packet_id: int) -> str:
    return f"{INBOUND_FIELD}{packet_id}"


def encode_message(m: StoredMessage) -> bytes:
    flags = (FLAG_RETAIN if m.retain else 0) | (FLAG_RELEASED if m.released else 0) | (FLAG_V5 if m.v5 else 0)
    head = _MSG.pack(MESSAGE_VERSION, m.qos, flags, m.packet_id, m.expires, len(m.topic), len(m.props))
    return b"".join((head, m.topic, m.props, b"" if m.released else m.payload))


def decode_message(raw: bytes) -> StoredMessage:
    if len(raw) < _MSG.size:
        raise CorruptSession(f"stored message of {len(raw)} bytes is shorter than its header")
    version, qos, flags, packet_id, expires, tlen, plen = _MSG.unpack_from(raw)
    if version != MESSAGE_VERSION:
        raise CorruptSession(f"stored message version {version} is not {MESSAGE_VERSION}")
    if qos > 2 or flags & ~(FLAG_RETAIN | FLAG_RELEASED | FLAG_V5):
        raise CorruptSession(f"stored message with QoS {qos} / flags {flags:#x}")
    if flags & FLAG_RELEASED and (qos != 2 or not packet_id):
        raise CorruptSession("stored message released (PUBREL pending) without being a QoS 2 delivery in flight")
    if not expires == expires or expires < 0:  # (NaN)
        raise CorruptSession(f"stored message expiry {expires!r}")
    start = _MSG.size
    if start + tlen + plen > len(raw) or not tlen:
        raise CorruptSession("stored message topic/properties run past its end (or its topic is empty)")
    topic = raw[start : start + tlen]
    props = raw[start + tlen : start + tlen + plen]
    return StoredMessage(
        topic=topic,
        payload=raw[start + tlen + plen :],
        qos=qos,
        retain=bool(flags & FLAG_RETAIN),
        packet_id=packet_id,
        released=bool(flags & FLAG_RELEASED),
        v5=bool(flags & FLAG_V5),
        props=props,
        expires=expires,
    )


def decode_session(record_raw: str | bytes, fields: dict[Any, Any]) -> StoredSession:
    """A stored session from its record and its message hash (HGETALL: str or bytes fields). Messages in
    queue order; CorruptSession for a bad record or a bad message field (the session is then treated as
    absent as a whole: resuming half of it would lose the rest silently)."""
    record = decode_record(record_raw)
    messages: list[tuple[int, StoredMessage]] = []
    inbound: set[int] = set()
    for key, value in fields.items():
        name = key.decode("utf-8", "replace") if isinstance(key, bytes) else str(key)
        if name.startswith(MESSAGE_FIELD):
            try:
                seq = int(name[len(MESSAGE_FIELD) :], 16)
            except ValueError:
                raise CorruptSession(f"message field {name!r} has no sequence number") from None
            raw = value if isinstance(value, bytes) else str(value).encode("latin-1")
            messages.append((seq, decode_message(raw)))
        elif name.startswith(INBOUND_FIELD):
            try:
                pid = int(name[len(INBOUND_FIELD) :])
            except ValueError:
                raise CorruptSession(f"inbound field {name!r} has no packet id") from None
            if not 0 < pid < 65536:
                raise CorruptSession(f"inbound packet id {pid} out of range")
            inbound.add(pid)
        # (other fields: the counters the store keeps, "~n" and "~b")
    messages.sort(key=lambda sm: sm[0])
    next_seq = messages[-1][0] + 1 if messages else 1
    return StoredSession(record, messages, inbound, next_seq)


def expiry_ms(expiry: float | None) -> int | None:
    """The key TTL (ms) of an offline session with this expiry (None: no TTL); at least 1 ms."""
    if expiry is None:
        return None
    return max(1, int(expiry * 1000))


# -- helpers -------------------------------------------------------------------------------------------


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def _unb64(text: str) -> bytes:
    try:
        return base64.b64decode(text.encode("ascii"), validate=True)
    except (binascii.Error, UnicodeEncodeError) as exc:
        raise CorruptSession(f"invalid base64: {exc}") from None


def _typed(data: dict[str, Any], key: str, kind: type) -> Any:
    if key not in data:
        raise CorruptSession(f"session record has no {key!r}")
    value = data[key]
    if not isinstance(value, kind) or (kind is not bool and isinstance(value, bool)):
        raise CorruptSession(f"{key!r} is {type(value).__name__}, not {kind.__name__}")
    return value


def _int(value: Any, what: str, low: int, high: int) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or not low <= value <= high:
        raise CorruptSession(f"{what} {value!r} is not an integer in [{low}, {high}]")
    return value
