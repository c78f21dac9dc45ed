"""In-process counters per client and per broker: the hot path only ever increments a dict entry.

Everything that counts (ACL denials, queue drops, quota refusals, messages in and out) goes through
`Counters.incr`, so the analytics work has a single source to flush to Redis in batches and to export
to Prometheus, and nothing is counted twice.
"""

from __future__ import annotations

from collections import defaultdict

# Counter names, defined once.
MSGS_IN = "messages_in"
BYTES_IN = "bytes_in"
MSGS_OUT = "messages_out"
BYTES_OUT = "bytes_out"
DENIED_PUBLISH = "publish_denied"
DENIED_SUBSCRIBE = "subscribe_denied"
WITHHELD = "deliveries_withheld"  # receive denied
DROPPED_QUEUE_FULL = "dropped_queue_full"
OVER_QUOTA = "over_quota"
PROTOCOL_ERRORS = "protocol_errors"
PLUGIN_ERRORS = "plugin_errors"


class Counters:
    def __init__(self) -> None:
        self.per_client: defaultdict[str, defaultdict[str, int]] = defaultdict(lambda: defaultdict(int))
        self.totals: defaultdict[str, int] = defaultdict(int)

    def incr(self, client_id: str | None, name: str, n: int = 1) -> None:
        self.totals[name] += n
        if client_id is not None:
            self.per_client[client_id][name] += n

    def client(self, client_id: str) -> dict[str, int]:
        return dict(self.per_client.get(client_id, {}))

    def total(self, name: str) -> int:
        return self.totals.get(name, 0)
