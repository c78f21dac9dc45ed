"""Shared subscriptions (`$share/GROUP/FILTER`, MQTT 5 section 4.8.2; mosquitto offers them on 3.1.1 too).

A message that matches FILTER goes to ONE member of each group subscribed to it, chosen among the
members that can take it now (connected, allowed to receive it, not over their queue limits or their
quota): round robin, or the member with the least queued (`least_loaded`). This module is the pure part:
the name rules and the choice. The broker (engine/broker.py) keeps one `ShareGroup` per (group, filter)
and asks it for a member per message; what "can take it" means is the broker's (`eligible`).

The ACL decides a shared subscription on FILTER, without `$share/GROUP/` (the group is a delivery
detail, not a topic), and RECEIVE per delivery as for any subscription.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Generic, TypeVar

from ..reasons import Reason
from .protocol import ProtocolViolation, check_topic_filter

SHARE_PREFIX = "$share/"

E = TypeVar("E")


def parse_share(topic_filter: str) -> tuple[str, str] | None:
    """(group, filter) of a shared subscription's filter, None for an ordinary one. A malformed one is a
    protocol violation [MQTT-4.8.2-1/2]: the group is at least one character, without "/", "+" or "#",
    and is followed by "/" and a valid topic filter."""
    if not topic_filter.startswith(SHARE_PREFIX):
        return None
    group, sep, real = topic_filter[len(SHARE_PREFIX) :].partition("/")
    if not group or not sep or "+" in group or "#" in group:
        raise ProtocolViolation(
            f"invalid shared subscription {topic_filter!r}: $share/GROUP/FILTER with a group name "
            "without '/', '+' or '#' [MQTT-4.8.2-1/2]",
            code=Reason.PROTOCOL_ERROR,
        )
    if not real:
        raise ProtocolViolation(
            f"invalid shared subscription {topic_filter!r}: no topic filter after the group [MQTT-4.8.2-2]",
            code=Reason.PROTOCOL_ERROR,
        )
    check_topic_filter(real)
    return group, real


class ShareGroup(Generic[E]):
    """The members of one (group, filter), in subscription order, and whose turn it is. `E` is what the
    broker keeps per member (its session, granted QoS and options)."""

    __slots__ = ("name", "filter", "members", "_next", "_entries")

    def __init__(self, name: str, topic_filter: str) -> None:
        self.name = name
        self.filter = topic_filter
        self.members: dict[str, E] = {}  # client id -> entry (insertion order: subscription order)
        self._next = 0  # round robin: the index the next search starts at
        self._entries: list[E] | None = None  # the members as a list, made once per membership change

    def __len__(self) -> int:
        return len(self.members)

    def add(self, client_id: str, entry: E) -> None:
        """A member subscribes (again: its entry is replaced, its place kept)."""
        self.members[client_id] = entry
        self._entries = None

    def remove(self, client_id: str) -> bool:
        """A member leaves; True when it was one. The rotation goes on where it was: the member whose turn
        was next keeps it (one that came before the leaver moves one place down with the list), as
        mosquitto 2.0's rotated list does (mosquitto-compat/SHARED.md finding 8)."""
        members = self.members
        if client_id not in members:
            return False
        n = len(members)
        turn = self._next % n
        if list(members).index(client_id) < turn:
            turn -= 1
        self._next = turn
        del members[client_id]
        self._entries = None
        return True

    def pick(self, eligible: Callable[[E], bool], load: Callable[[E], int] | None = None) -> E | None:
        """The member that gets the next message: None when no member is eligible. Round robin over
        the eligible members (each gets its turn in subscription order; an ineligible one is skipped
        and keeps no credit); with `load` (least loaded), the eligible member with the smallest load,
        ties broken by the round-robin order."""
        entries = self._entries
        if entries is None:
            entries = self._entries = list(self.members.values())
        n = len(entries)
        if not n:
            return None
        start = self._next % n
        best: E | None = None
        best_at = -1
        best_load = 0
        for i in range(n):
            at = (start + i) % n
            entry = entries[at]
            if not eligible(entry):
                continue
            if load is None:
                self._next = at + 1
                return entry
            value = load(entry)
            if best is None or value < best_load:
                best, best_at, best_load = entry, at, value
                if value == 0:
                    break  # (nothing is less loaded than an empty queue)
        if best is not None:
            self._next = best_at + 1
        return best
