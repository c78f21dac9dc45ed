"""This broker's subscription filters as the other brokers need to know them: deduplicated, with
reference counts, and the changes since they were last told (issue 18 item 1).

Many clients subscribe to the same filters (every device of a fleet to `fleet/+/cmd`); the other
brokers only need to know that *some* client here wants `fleet/+/cmd`. So each filter is counted: the
set the cluster sees changes only when a filter's first subscriber comes or its last one goes, and a
subscribe/unsubscribe of a filter others already hold costs a dict update and nothing in Redis.

An entry is the subscription filter as the client gave it. A shared subscription `$share/G/F` is its
own entry, distinct from the plain `F` and from `$share/H/F`: the routing table (table.py) matches it
on `F` (the messages this broker needs) and keeps the group `G`, which is what a fleet-wide "one
delivery per group" (item 3) needs to choose one broker per group. What is left for item 3 is in
docs/scaling.md ("Shared subscriptions").

Changes are collected until `take_delta()`: a filter added and removed again before the next
publication (one event-loop iteration, see store/cluster.py) is no change at all.
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["SHARE_PREFIX", "Delta", "LocalFilters", "routing_filter", "split_entry"]

SHARE_PREFIX = "$share/"


def split_entry(entry: str) -> tuple[str | None, str]:
    """(group, filter) of an entry: `$share/G/F` -> (G, F); a plain filter -> (None, filter).

    The engine has validated the subscription (engine/shared.py `parse_share`: a group of at least one
    character without `/`, `+`, `#`, then `/` and a valid filter); an entry that starts with
    `$share/` but is not of that shape is taken as a plain filter, which never matches anything a
    client can publish (nobody may publish to a `$share/` topic)."""
    if entry.startswith(SHARE_PREFIX):
        group, sep, real = entry[len(SHARE_PREFIX) :].partition("/")
        if group and sep and real:
            return group, real
    return None, entry


def routing_filter(entry: str) -> str:
    """The filter an entry is matched on: `F` for `$share/G/F`, the entry itself otherwise."""
    return split_entry(entry)[1]


@dataclass(frozen=True, slots=True)
class Delta:
    """What changed in the set since the last `take_delta`: entries that appeared, entries that went."""

    added: frozenset[str]
    removed: frozenset[str]

    def __bool__(self) -> bool:
        return bool(self.added or self.removed)


class LocalFilters:
    """The deduplicated entries of this broker's subscriptions, with the number of subscriptions of
    each. Event loop only (no locking)."""

    __slots__ = ("_counts", "_dirty")

    def __init__(self) -> None:
        self._counts: dict[str, int] = {}
        # entry -> whether it was in the set at the last `take_delta` (kept only for entries touched since)
        self._dirty: dict[str, bool] = {}

    def __len__(self) -> int:
        return len(self._counts)

    def __contains__(self, entry: object) -> bool:
        return entry in self._counts

    def count(self, entry: str) -> int:
        """Subscriptions to `entry` on this broker."""
        return self._counts.get(entry, 0)

    def subscribe(self, entry: str) -> bool:
        """A subscription to `entry` was made (a client subscribing again to a filter it holds is not a
        new subscription: the engine calls this once per session and filter). True when the entry is new
        to the set."""
        n = self._counts.get(entry, 0)
        self._counts[entry] = n + 1
        if n:
            return False
        self._dirty.setdefault(entry, False)
        return True

    def unsubscribe(self, entry: str) -> bool:
        """A subscription to `entry` ended (UNSUBSCRIBE, a clean session closing, a session dropped).
        True when it was the last one and the entry left the set; an entry not held is ignored."""
        n = self._counts.get(entry, 0)
        if n > 1:
            self._counts[entry] = n - 1
            return False
        if n == 0:
            return False
        del self._counts[entry]
        self._dirty.setdefault(entry, True)
        return True

    def entries(self) -> frozenset[str]:
        """The whole set (a full publication: start-up, resync)."""
        return frozenset(self._counts)

    @property
    def changed(self) -> bool:
        """Some entry was touched since the last `take_delta` (it may turn out to be no change)."""
        return bool(self._dirty)

    def take_delta(self) -> Delta:
        """The net change since the last call (entries both added and removed in between are no change),
        and start collecting anew."""
        added: list[str] = []
        removed: list[str] = []
        counts = self._counts
        for entry, was in self._dirty.items():
            now = entry in counts
            if now and not was:
                added.append(entry)
            elif was and not now:
                removed.append(entry)
        self._dirty = {}
        return Delta(frozenset(added), frozenset(removed))

    def take_full(self) -> frozenset[str]:
        """The whole set for a full publication, and start collecting changes anew (the full set
        includes every pending change)."""
        self._dirty = {}
        return frozenset(self._counts)
