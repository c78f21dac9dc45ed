"""APIs: named sets of topic filters (`mqtt-guard api add stocks 'stocks/#' 'quotes/+/live'`), pure.

A message belongs to every API one of whose filters matches its topic. Per-API limits
(`api:<NAME>:events`, quota/limits.py) count only those messages; metering (quota/meter.py) counts
them per API besides the overall traffic. The match of a topic is computed once and cached, like the
engine's routes: the per-message cost is one dict lookup.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping

from ..acl.topics import topic_matches, validate_filter

NAME = re.compile(r"[A-Za-z0-9_.-]{1,64}")
MATCH_CACHE = 10_000  # topics remembered (cleared when full, like the engine's route cache)


def check_name(name: str) -> str:
    if not NAME.fullmatch(name):
        raise ValueError(f"API name {name!r}: use 1-64 letters, digits, '_', '.' or '-'")
    return name


def check_filters(filters: list[str]) -> list[str]:
    if not filters:
        raise ValueError("an API needs at least one topic filter")
    for f in filters:
        problem = validate_filter(f)
        if problem:
            raise ValueError(f"topic filter {f!r}: {problem}")
    return filters


class Apis:
    """The APIs defined, and which of them each topic belongs to."""

    __slots__ = ("filters", "_cache")

    def __init__(self, filters: Mapping[str, tuple[str, ...]]) -> None:
        self.filters = dict(filters)
        self._cache: dict[str, tuple[str, ...]] = {}

    @classmethod
    def parse(cls, raw: Mapping[str, str]) -> Apis:
        """From the `quota:apis` hash (name -> JSON list of filters); malformed entries are skipped."""
        out: dict[str, tuple[str, ...]] = {}
        for name, text in raw.items():
            try:
                value = json.loads(text)
                out[check_name(name)] = tuple(check_filters([str(f) for f in value]))
            except (ValueError, TypeError):
                continue
        return cls(out)

    def match(self, topic: str) -> tuple[str, ...]:
        """The APIs `topic` belongs to (sorted; cached)."""
        found = self._cache.get(topic)
        if found is None:
            found = tuple(sorted(name for name, fs in self.filters.items() if any(topic_matches(f, topic) for f in fs)))
            if len(self._cache) >= MATCH_CACHE:
                self._cache.clear()
            self._cache[topic] = found
        return found
