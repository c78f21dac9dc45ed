"""The other brokers' subscription filters in a trie: which brokers want a message on a topic.

Every broker of the cluster holds one `FilterTable` with the entries (filters, `$share/G/F`) of every
other live broker (store/cluster.py keeps it equal to Redis). A PUBLISH is forwarded once to each broker
in `brokers_for(topic)`; the lookup walks the topic's levels and follows, at each node, the literal
child, the `+` child and the `#` child that exist: its cost depends on the topic's depth and on the
wildcard branches present, not on the number of filters or brokers.

Matching is MQTT's (acl/topics.py `topic_matches` is the oracle the tests compare against): `+` one
level (an empty one too), `#` the parent and every level below, and a filter whose first level is a
wildcard never matches a topic starting with `$` [MQTT-4.7.2-1]. A shared entry `$share/G/F` matches on
`F`; `shared_for(topic)` tells, per (group, filter), which brokers have members (issue 18 item 3).

Answers are cached per topic until the table changes (`version`), as the engine caches its routes:
filter sets change rarely next to the rate of PUBLISH.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

from .filters import split_entry

__all__ = ["FilterTable"]

CACHE_SIZE = 10_000  # topics whose answer is kept (the cache is emptied when full or at any change)

_EMPTY: frozenset[str] = frozenset()


class _Node:
    __slots__ = ("children", "brokers", "groups", "filter")

    def __init__(self) -> None:
        self.children: dict[str, _Node] = {}
        self.filter = ""  # the filter that ends here (set when an entry ends here)
        # broker -> how many of its entries end here (the plain filter, and one per shared group)
        self.brokers: dict[str, int] | None = None
        # group -> brokers with `$share/<group>/<the filter ending here>`
        self.groups: dict[str, set[str]] | None = None

    def empty(self) -> bool:
        return not self.children and not self.brokers


class FilterTable:
    """Entries of other brokers, indexed by filter level. Event loop only (no locking)."""

    __slots__ = ("_root", "_by_broker", "_cache", "version", "empty", "on_empty")

    def __init__(self) -> None:
        self._root = _Node()
        self._by_broker: dict[str, set[str]] = {}
        self._cache: dict[str, frozenset[str]] = {}
        self.version = 0  # bumped at every change: answers computed before may be stale
        self.empty = True  # no broker has any entry: nothing is routed anywhere
        # told `empty` each time it flips (the engine's one-attribute test per PUBLISH, cluster/node.py)
        self.on_empty: Callable[[bool], None] | None = None

    # -- changes ---------------------------------------------------------------------------------

    def add(self, broker: str, entry: str) -> bool:
        """`broker` has a subscriber to `entry` (a filter or `$share/G/F`). False if it was known."""
        mine = self._by_broker.setdefault(broker, set())
        if entry in mine:
            return False
        mine.add(entry)
        group, topic_filter = split_entry(entry)
        node = self._root
        for level in topic_filter.split("/"):
            child = node.children.get(level)
            if child is None:
                child = node.children[level] = _Node()
            node = child
        if node.brokers is None:
            node.brokers = {}
            node.filter = topic_filter
        node.brokers[broker] = node.brokers.get(broker, 0) + 1
        if group is not None:
            if node.groups is None:
                node.groups = {}
            node.groups.setdefault(group, set()).add(broker)
        self._changed()
        return True

    def remove(self, broker: str, entry: str) -> bool:
        """`broker` no longer has a subscriber to `entry`. False if it was not known."""
        mine = self._by_broker.get(broker)
        if mine is None or entry not in mine:
            return False
        mine.discard(entry)
        if not mine:
            del self._by_broker[broker]
        group, topic_filter = split_entry(entry)
        levels = topic_filter.split("/")
        path = [self._root]
        node = self._root
        for level in levels:
            node = node.children[level]
            path.append(node)
        assert node.brokers is not None
        n = node.brokers[broker] - 1
        if n:
            node.brokers[broker] = n
        else:
            del node.brokers[broker]
            if not node.brokers:
                node.brokers = None
        if group is not None and node.groups is not None:
            members = node.groups[group]
            members.discard(broker)
            if not members:
                del node.groups[group]
            if not node.groups:
                node.groups = None
        for i in range(len(levels), 0, -1):  # prune the nodes that no longer lead anywhere
            if not path[i].empty():
                break
            del path[i - 1].children[levels[i - 1]]
        self._changed()
        return True

    def replace(self, broker: str, entries: Iterable[str]) -> None:
        """`broker`'s whole set (a full publication or a resync): what it no longer has goes."""
        new = set(entries)
        old = self._by_broker.get(broker, set())
        for entry in old - new:
            self.remove(broker, entry)
        for entry in new - old:
            self.add(broker, entry)

    def drop(self, broker: str) -> None:
        """`broker` is gone (dead, reaped, left): none of its entries routes anything any more."""
        for entry in list(self._by_broker.get(broker, ())):
            self.remove(broker, entry)

    def clear(self) -> None:
        self._root = _Node()
        self._by_broker = {}
        self._changed()

    def _changed(self) -> None:
        self.version += 1
        if self._cache:
            self._cache = {}
        empty = not self._by_broker
        if empty is not self.empty:
            self.empty = empty
            if self.on_empty is not None:
                self.on_empty(empty)

    # -- what is known ---------------------------------------------------------------------------

    def brokers(self) -> frozenset[str]:
        """The brokers with at least one entry."""
        return frozenset(self._by_broker)

    def entries(self, broker: str) -> frozenset[str]:
        return frozenset(self._by_broker.get(broker, ()))

    def __len__(self) -> int:
        """Entries of all brokers."""
        return sum(len(e) for e in self._by_broker.values())

    # -- lookups ---------------------------------------------------------------------------------

    def brokers_for(self, topic: str) -> frozenset[str]:
        """The brokers with an entry matching the topic name `topic` (a valid topic: no wildcards)."""
        hit = self._cache.get(topic)
        if hit is not None:
            return hit
        out: set[str] = set()
        for node in self._matching(topic):
            assert node.brokers is not None
            out.update(node.brokers)
        answer = frozenset(out) if out else _EMPTY
        if len(self._cache) >= CACHE_SIZE:
            self._cache = {}
        self._cache[topic] = answer
        return answer

    def shared_for(self, topic: str) -> dict[tuple[str, str], frozenset[str]]:
        """(group, filter) -> the brokers with members of that shared subscription, for every shared
        entry matching `topic`: what a fleet-wide one-delivery-per-group choice starts from."""
        out: dict[tuple[str, str], frozenset[str]] = {}
        for node in self._matching(topic):
            if node.groups:
                for group, members in node.groups.items():
                    out[(group, node.filter)] = frozenset(members)
        return out

    def _matching(self, topic: str) -> list[_Node]:
        """Every node where entries matching `topic` end (each once)."""
        out: list[_Node] = []
        levels = topic.split("/")
        n = len(levels)
        dollar = topic.startswith("$")
        stack = [(self._root, 0)]
        pop, push, emit = stack.pop, stack.append, out.append
        while stack:
            node, i = pop()
            children = node.children
            if i == n:
                if node.brokers:
                    emit(node)
                h = children.get("#")  # "a/#" also matches "a"
                if h is not None and h.brokers:
                    emit(h)
                continue
            if i or not dollar:  # [MQTT-4.7.2-1]: no wildcard at the first level for "$" topics
                h = children.get("#")
                if h is not None and h.brokers:
                    emit(h)
                p = children.get("+")
                if p is not None:
                    push((p, i + 1))
            c = children.get(levels[i])
            if c is not None:
                push((c, i + 1))
        return out
