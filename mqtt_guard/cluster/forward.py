"""Messages between brokers: what travels (`RemoteMessage`), how a batch is packed into one Redis stream
entry, and how the receiving side keeps each sender's batches in order and exactly once.

A PUBLISH is forwarded once to each broker whose filters match its topic (table.py), in the inbox
stream of that broker (store/cluster.py `Outbox`/`Inbox`): every message of one event-loop iteration
for one destination is one entry (`pack`), so the Redis cost is one command per destination per
iteration, not per message. Each entry carries its sender (`o`) and a sequence number per sender and
destination (`s`): a batch the sender had to send again (its connection dropped before Redis
answered) is recognised and skipped (`Sequencer`), and a missing number says that batches were lost
(the inbox was trimmed while the receiver was away longer than it holds).

The packed form is versioned (first byte) so brokers of two releases can share a cluster during a
rolling upgrade: a receiver refuses (logs, counts) a version it does not know instead of misreading it.
"""

from __future__ import annotations

import struct
from typing import NamedTuple

__all__ = ["FORMAT", "PackError", "RemoteMessage", "Sequencer", "pack", "pack_one", "unpack"]

FORMAT = 1
_HEAD = struct.Struct("!BIHHHII")  # flags, expiry s, topic, client id, username, properties, payload lengths
_QOS = 0x03
_RETAIN = 0x04
_EXPIRY = 0x08
_USERNAME = 0x10
_MAX_PROPS = 0xFFFFFFFF


class PackError(ValueError):
    """A batch that cannot be read (unknown format, truncated): the sender is a newer or broken broker."""


class RemoteMessage(NamedTuple):
    """One PUBLISH (or will, or retained message) on its way to another broker, with everything the
    receiving broker needs to deliver it as if it had been published there:

    - `topic`, `payload`, `qos`, `retain`: as published (the receiving broker applies each receiver's
      granted QoS, RETAIN rules and Retain As Published);
    - `properties`: the MQTT 5 properties that travel to subscribers, encoded as on the wire
      (engine/mqtt5.py `Message5.forwarded`; empty for a 3.1.1 publisher);
    - `expiry`: the Message Expiry Interval left when it was forwarded, in seconds (None: none);
    - `client_id`, `username`: the publisher, for No Local (a client's own message is not sent back to
      it on another broker: a client id is connected on one broker only, but a session can move) and
      for the receivers' analytics;
    - `origin`: the broker it was published on. A message that came from another broker is never
      forwarded again (each broker forwards only what its own clients published).

    A NamedTuple, not a frozen dataclass: the receiving side makes one per message, and a frozen
    dataclass's `__init__` costs ~3x as much (every field through `object.__setattr__`)."""

    topic: str
    payload: bytes
    qos: int = 0
    retain: bool = False
    properties: bytes = b""
    expiry: int | None = None
    client_id: str = ""
    username: str | None = None
    origin: str = ""


def pack_one(m: RemoteMessage) -> bytes:
    """One message's record (made once per message, shared by every destination's batch)."""
    topic = m.topic.encode()
    cid = m.client_id.encode()
    user = m.username.encode() if m.username is not None else b""
    flags = (m.qos & _QOS) | (_RETAIN if m.retain else 0)
    if m.expiry is not None:
        flags |= _EXPIRY
    if m.username is not None:
        flags |= _USERNAME
    head = _HEAD.pack(flags, m.expiry or 0, len(topic), len(cid), len(user), len(m.properties), len(m.payload))
    return b"".join((head, topic, cid, user, m.properties, m.payload))


def pack(records: list[bytes]) -> bytes:
    """A batch of records (`pack_one`) as one stream entry's payload."""
    return bytes((FORMAT,)) + b"".join(records)


def unpack(blob: bytes, origin: str) -> list[RemoteMessage]:
    """The messages of a batch, in the order they were packed."""
    if not blob or blob[0] != FORMAT:
        raise PackError(f"unknown cluster batch format {blob[:1]!r} (this broker reads {FORMAT})")
    out: list[RemoteMessage] = []
    at, end = 1, len(blob)
    unpack_from, size = _HEAD.unpack_from, _HEAD.size
    try:
        while at < end:
            flags, expiry, lt, lc, lu, lp, lpl = unpack_from(blob, at)
            at += size
            topic = blob[at : at + lt].decode()
            at += lt
            cid = blob[at : at + lc].decode()
            at += lc
            user = blob[at : at + lu].decode() if flags & _USERNAME else None
            at += lu
            props = blob[at : at + lp]
            at += lp
            payload = blob[at : at + lpl]
            at += lpl
            if at > end:
                raise PackError("truncated cluster batch")
            out.append(
                RemoteMessage(
                    topic,
                    payload,
                    flags & _QOS,
                    bool(flags & _RETAIN),
                    props,
                    expiry if flags & _EXPIRY else None,
                    cid,
                    user,
                    origin,
                )
            )
    except (struct.error, UnicodeDecodeError) as exc:
        raise PackError(f"unreadable cluster batch: {exc}") from None
    return out


class Sequencer:
    """The receiving side's memory of each sender's last batch: `check(origin, seq)` -> how many batches
    were missed before this one (0: in order), or -1 when this one was seen already (a re-send)."""

    __slots__ = ("_last",)

    def __init__(self) -> None:
        self._last: dict[str, int] = {}

    def check(self, origin: str, seq: int) -> int:
        last = self._last.get(origin, 0)
        if seq <= last:
            return -1
        self._last[origin] = seq
        return seq - last - 1

    def forget(self, origin: str) -> None:
        """The sender is gone (its numbers will not come again: a broker id is per process)."""
        self._last.pop(origin, None)
