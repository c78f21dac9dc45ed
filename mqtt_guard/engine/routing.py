"""Subscription matching for the engine: a topic trie, and the per-topic route cache entry.

amqtt keeps subscriptions in a dict `filter -> [(session, qos)]` and matches every PUBLISH against every
filter (`Broker._matches`, a split and a level loop per filter). GuardedBroker keeps that dict (plugins
and amqtt code read it) and indexes its filters in a `TopicTrie`, so matching costs one walk over the
topic's levels plus the `+`/`#` branches actually present, whatever the number of subscriptions.

Matching follows MQTT 3.1.1 4.7: `+` matches exactly one level (empty included), `#` matches the parent
level and any number of levels below it, and topics starting with `$` are not matched by a filter that
starts with a wildcard [MQTT-4.7.2-1].
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

__all__ = ["TopicTrie"]


class _Node:
    __slots__ = ("children", "filter")

    def __init__(self) -> None:
        self.children: dict[str, _Node] = {}
        self.filter: str | None = None  # the subscription filter that ends at this node


class TopicTrie:
    """The set of subscription filters, indexed by level. Not thread-safe (event loop only)."""

    __slots__ = ("_root", "_count", "_added", "_removed")

    def __init__(self) -> None:
        self._root = _Node()
        self._count = 0
        self._added: Callable[[str], None] | None = None
        self._removed: Callable[[str], None] | None = None

    def watch(self, added: Callable[[str], None], removed: Callable[[str], None]) -> None:
        """Tell `added(filter)` when a filter enters the set and `removed(filter)` when it leaves it (the
        cluster's view of this broker's filters, engine/remote.py): every subscription of every session,
        persistent ones offline included, passes through the trie, so this is the one place to watch.
        `clear` tells nothing (a shutdown: the cluster is left as a whole)."""
        self._added, self._removed = added, removed

    def filters(self) -> Iterator[str]:
        """Every filter in the set."""
        stack = [self._root]
        while stack:
            node = stack.pop()
            if node.filter is not None:
                yield node.filter
            stack.extend(node.children.values())

    def __len__(self) -> int:
        return self._count

    def add(self, topic_filter: str) -> None:
        node = self._root
        for level in topic_filter.split("/"):
            child = node.children.get(level)
            if child is None:
                child = node.children[level] = _Node()
            node = child
        if node.filter is None:
            node.filter = topic_filter
            self._count += 1
            if self._added is not None:
                self._added(topic_filter)

    def remove(self, topic_filter: str) -> None:
        path = [self._root]
        levels = topic_filter.split("/")
        node = self._root
        for level in levels:
            child = node.children.get(level)
            if child is None:
                return
            node = child
            path.append(node)
        if node.filter is None:
            return
        node.filter = None
        self._count -= 1
        if self._removed is not None:
            self._removed(topic_filter)
        # prune the nodes that no longer lead anywhere
        for i in range(len(levels), 0, -1):
            n = path[i]
            if n.filter is not None or n.children:
                break
            del path[i - 1].children[levels[i - 1]]

    def clear(self) -> None:
        self._root = _Node()
        self._count = 0

    def match(self, topic: str) -> list[str]:
        """Every filter that matches the topic name `topic` (no duplicates)."""
        out: list[str] = []
        levels = topic.split("/")
        n = len(levels)
        dollar = topic.startswith("$")
        # iterative walk: (node, index of the next level)
        stack = [(self._root, 0)]
        while stack:
            node, i = stack.pop()
            children = node.children
            if i == n:
                if node.filter is not None:
                    out.append(node.filter)
                h = children.get("#")  # "a/#" also matches "a" [MQTT-4.7.1-2]
                if h is not None and h.filter is not None:
                    out.append(h.filter)
                continue
            if i or not dollar:
                h = children.get("#")
                if h is not None and h.filter is not None:
                    out.append(h.filter)
                p = children.get("+")
                if p is not None:
                    stack.append((p, i + 1))
            c = children.get(levels[i])
            if c is not None:
                stack.append((c, i + 1))
        return out
