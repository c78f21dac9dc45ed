"""A compiled rule set: a topic trie answering "which rules apply to T?".

The policy evaluates every PUBLISH and every delivery against the rules of a
client, so the set is compiled once into a trie keyed by filter level.  A
lookup walks the topic's levels and follows at most the literal child, the
``+`` child, and the ``#`` bucket of each node, so its cost depends on the
topic depth and on how many wildcard branches actually exist, not on the
number of rules.

Two queries exist:

* :meth:`RuleMatcher.match` - rules whose filter *matches* a topic name
  (PUBLISH and RECEIVE).
* :meth:`RuleMatcher.covering` - rules whose filter *covers* a subscription
  filter, i.e. matches every topic the subscription can match (SUBSCRIBE).

Both return the union of the granted and denied bits of the applicable rules
plus, for explanations, the first applicable deny rule and grant rule in rule
order (the order rules were given to the constructor).  The ``$`` rule of MQTT
(a filter starting with a wildcard does not match topics starting with
``$``) is applied at the root.

The reference semantics live in :mod:`mqtt_guard.acl.topics`; this module
re-exports :func:`topic_matches` and :func:`filter_covers` from there.
"""

from __future__ import annotations

from collections.abc import Iterable

from mqtt_guard.acl.rules import Perm, Rule
from mqtt_guard.acl.topics import filter_covers, topic_matches, validate_filter

__all__ = ["RuleMatcher", "filter_covers", "topic_matches"]

_ALL = int(Perm.ALL)


class _Bucket:
    """Rules that end at one trie position, with their bits pre-OR-ed.

    ``entries`` holds ``(order, allow, deny, rule)`` sorted by ``order`` so
    the first entry with a relevant bit is the first such rule overall.
    """

    __slots__ = ("allow", "deny", "entries")

    def __init__(self) -> None:
        self.allow = 0
        self.deny = 0
        self.entries: list[tuple[int, int, int, Rule]] = []

    def add(self, order: int, allow: int, deny: int, rule: Rule) -> None:
        self.allow |= allow
        self.deny |= deny
        self.entries.append((order, allow, deny, rule))

    def first(self, bit_index: int, action: int) -> tuple[int, Rule] | None:
        """First entry whose allow (bit_index 1) or deny (2) bits hit *action*."""
        for entry in self.entries:
            if entry[bit_index] & action:  # type: ignore[operator]  # bit_index is 1 or 2: an int field
                return entry[0], entry[3]
        return None


class _Node:
    """One trie level: literal children, the ``+`` child, and rule buckets.

    ``end`` holds rules whose filter ends exactly here; ``hash`` holds rules
    whose filter continues with a final ``#`` (they match this node's topic
    and everything below it).
    """

    __slots__ = ("children", "plus", "end", "hash")

    def __init__(self) -> None:
        self.children: dict[str, _Node] = {}
        self.plus: _Node | None = None
        self.end: _Bucket | None = None
        self.hash: _Bucket | None = None


class RuleMatcher:
    """Immutable-after-construction trie over a set of rules.

    Rules are assumed to carry valid filters (``parse_rules`` guarantees it);
    an invalid filter given directly is rejected with ``ValueError`` because
    it would otherwise match something unintended.
    """

    __slots__ = ("_root", "_rules")

    def __init__(self, rules: Iterable[Rule] = ()) -> None:
        self._root = _Node()
        self._rules: list[Rule] = []
        for rule in rules:
            self.add(rule.filter, rule)

    @classmethod
    def from_entries(cls, entries: Iterable[tuple[str, Rule]]) -> RuleMatcher:
        """Build from ``(effective filter, rule)`` pairs.

        The policy uses this for pattern rules: it inserts the filter with
        ``%u``/``%c`` substituted, while decisions keep quoting the original
        rule so operators see the rule they actually wrote.
        """
        m = cls()
        for f, rule in entries:
            m.add(f, rule)
        return m

    def add(self, filter: str, rule: Rule) -> None:  # MQTT term
        """Insert *rule* under *filter*; only for use while building."""
        bad = validate_filter(filter)
        if bad is not None:
            raise ValueError(f"invalid filter {filter!r}: {bad}")
        order = len(self._rules)
        self._rules.append(rule)
        allow, deny = int(rule.allow) & _ALL, int(rule.deny) & _ALL
        node = self._root
        for level in filter.split("/"):
            if level == "#":
                if node.hash is None:
                    node.hash = _Bucket()
                node.hash.add(order, allow, deny, rule)
                return
            if level == "+":
                if node.plus is None:
                    node.plus = _Node()
                node = node.plus
            else:
                child = node.children.get(level)
                if child is None:
                    child = node.children[level] = _Node()
                node = child
        if node.end is None:
            node.end = _Bucket()
        node.end.add(order, allow, deny, rule)

    def __len__(self) -> int:
        return len(self._rules)

    @property
    def rules(self) -> tuple[Rule, ...]:
        """The rules in insertion order (the order used for explanations)."""
        return tuple(self._rules)

    # -- queries -------------------------------------------------------------

    def _buckets_matching(self, topic: str) -> list[_Bucket]:
        """Every bucket whose rules match the topic name *topic*."""
        levels = topic.split("/")
        n = len(levels)
        out: list[_Bucket] = []
        root = self._root
        # Root handled separately: wildcards there must skip $-topics.
        if not levels[0].startswith("$"):
            if root.hash is not None:
                out.append(root.hash)
            if root.plus is not None:
                self._walk(root.plus, levels, 1, n, out)
        child = root.children.get(levels[0])
        if child is not None:
            self._walk(child, levels, 1, n, out)
        return out

    @staticmethod
    def _walk(node: _Node, levels: list[str], i: int, n: int, out: list[_Bucket]) -> None:
        """Depth-first walk below the root; ``node`` has consumed ``i`` levels."""
        stack = [(node, i)]
        pop, push, emit = stack.pop, stack.append, out.append
        while stack:
            node, i = pop()
            if node.hash is not None:
                emit(node.hash)  # "x/#" also matches "x" itself
            if i == n:
                if node.end is not None:
                    emit(node.end)
                continue
            if node.plus is not None:
                push((node.plus, i + 1))
            child = node.children.get(levels[i])
            if child is not None:
                push((child, i + 1))

    def _buckets_covering(self, sub_filter: str) -> list[_Bucket]:
        """Every bucket whose rules cover the subscription filter *sub_filter*."""
        levels = sub_filter.split("/")
        n = len(levels)
        out: list[_Bucket] = []
        root = self._root
        first = levels[0]
        if not first.startswith("$"):
            if root.hash is not None:
                out.append(root.hash)
            plus = root.plus
            if plus is not None:
                if first == "#":
                    # "+/#" covers "#": they differ only on the empty topic
                    # (see topics.parent_is_empty).
                    if n == 1 and plus.hash is not None:
                        out.append(plus.hash)
                else:
                    self._walk_cover(plus, levels, 1, n, out)
        if first != "+" and first != "#":
            child = root.children.get(first)
            if child is not None:
                self._walk_cover(child, levels, 1, n, out)
        return out

    @staticmethod
    def _walk_cover(node: _Node, levels: list[str], i: int, n: int, out: list[_Bucket]) -> None:
        """Like :meth:`_walk` but a rule level must be at least as wide."""
        stack = [(node, i)]
        pop, push, emit = stack.pop, stack.append, out.append
        while stack:
            node, i = pop()
            if node.hash is not None:
                emit(node.hash)
            if i == n:
                if node.end is not None:
                    emit(node.end)
                continue
            level = levels[i]
            if level == "#":
                # Only a rule "#" at this depth (emitted above) covers it, or
                # "+/#" when the parent would be the empty topic ("/#").
                if i == 1 and levels[0] == "" and node.plus is not None and node.plus.hash is not None:
                    emit(node.plus.hash)
                continue
            if node.plus is not None:
                push((node.plus, i + 1))
            if level != "+":
                child = node.children.get(level)
                if child is not None:
                    push((child, i + 1))

    @staticmethod
    def _reduce(buckets: list[_Bucket], action: int) -> tuple[int, int, Rule | None, Rule | None]:
        """OR the bits of *buckets* and pick the first deny/grant rule for *action*."""
        allow = deny = 0
        for b in buckets:
            allow |= b.allow
            deny |= b.deny
        deny_rule = grant_rule = None
        if deny & action:
            best = None
            for b in buckets:
                if b.deny & action:
                    hit = b.first(2, action)
                    if hit is not None and (best is None or hit[0] < best[0]):
                        best = hit
            deny_rule = best[1] if best is not None else None
        if allow & action:
            best = None
            for b in buckets:
                if b.allow & action:
                    hit = b.first(1, action)
                    if hit is not None and (best is None or hit[0] < best[0]):
                        best = hit
            grant_rule = best[1] if best is not None else None
        return allow, deny, deny_rule, grant_rule

    def match_bits(self, topic: str, action: int = _ALL) -> tuple[int, int, Rule | None, Rule | None]:
        """:meth:`match` with plain ``int`` bits (no enum overhead); hot path."""
        return self._reduce(self._buckets_matching(topic), action)

    def covering_bits(self, sub_filter: str, action: int = _ALL) -> tuple[int, int, Rule | None, Rule | None]:
        """:meth:`covering` with plain ``int`` bits; hot path."""
        return self._reduce(self._buckets_covering(sub_filter), action)

    def match(self, topic: str, action: Perm | int = Perm.ALL) -> tuple[Perm, Perm, Rule | None, Rule | None]:
        """Rules whose filter matches the topic name *topic*.

        Returns ``(allow, deny, deny_rule, grant_rule)``: the union of the
        granted and denied permissions of all matching rules, the first
        matching rule (in rule order) denying something in *action*, and the
        first matching rule granting something in *action*.  *topic* must be
        a valid topic name.
        """
        allow, deny, d, g = self.match_bits(topic, int(action))
        return Perm(allow), Perm(deny), d, g

    def covering(self, sub_filter: str, action: Perm | int = Perm.ALL) -> tuple[Perm, Perm, Rule | None, Rule | None]:
        """Rules whose filter covers the subscription filter *sub_filter*.

        Same shape as :meth:`match`.  *sub_filter* must be a valid filter.
        """
        allow, deny, d, g = self.covering_bits(sub_filter, int(action))
        return Perm(allow), Perm(deny), d, g
