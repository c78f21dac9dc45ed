"""$SYS/broker/... topics: the common subset mosquitto publishes, built from the MetricsService.

Pure functions here; mqtt_guard/plugins/sys.py publishes them through the broker (retained, so a new
subscriber gets the current values at once, and only the values that changed since the last round).
Who may read them is the ACL's business: rules with a leading wildcard never match `$` topics, so a
client needs an explicit `$SYS/#` (or narrower) read rule, or to be a superuser.

Differences from mosquitto, documented in docs/analytics.md: `messages/received|sent` count PUBLISH
packets only (mosquitto counts every packet), and `bytes/...` count PUBLISH payload bytes.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING

from .. import __version__
from . import counters as C

if TYPE_CHECKING:
    from .service import BrokerSample, MetricsService

ROOT = "$SYS/broker/"

# Load averages: topic part -> counter name.
LOADS = {
    "messages/received": C.MSGS_IN,
    "messages/sent": C.MSGS_OUT,
    "publish/received": C.MSGS_IN,
    "publish/sent": C.MSGS_OUT,
    "publish/dropped": C.DROPPED_QUEUE_FULL,
    "bytes/received": C.BYTES_IN,
    "bytes/sent": C.BYTES_OUT,
    "connections": C.CONNECTS,
}


def sys_topics(service: MetricsService, sample: BrokerSample | None = None, now: float | None = None) -> dict[str, str]:
    """Topic -> payload text for one $SYS round."""
    now = time.time() if now is None else now
    counters = service.counters
    total = counters.total
    connected = counters.connected_count()
    t: dict[str, str] = {
        "version": f"mqtt-guard version {__version__}",
        "uptime": f"{int(now - service.started)} seconds",
        "clients/connected": str(connected),
        "clients/maximum": str(counters.clients_maximum),
        "messages/received": str(total(C.MSGS_IN)),
        "messages/sent": str(total(C.MSGS_OUT)),
        "publish/messages/received": str(total(C.MSGS_IN)),
        "publish/messages/sent": str(total(C.MSGS_OUT)),
        "publish/messages/dropped": str(total(C.DROPPED_QUEUE_FULL)),
        "publish/bytes/received": str(total(C.BYTES_IN)),
        "publish/bytes/sent": str(total(C.BYTES_OUT)),
        "bytes/received": str(total(C.BYTES_IN)),
        "bytes/sent": str(total(C.BYTES_OUT)),
    }
    if sample is not None:
        t["clients/total"] = str(max(sample.sessions_total, connected))
        t["clients/disconnected"] = str(max(0, sample.sessions_total - connected))
        t["subscriptions/count"] = str(sample.subscriptions)
        t["retained messages/count"] = str(sample.retained)
        t["store/messages/count"] = str(sum(sample.queue_depths.values()))
    for part, name in LOADS.items():
        avg = service.load[name]
        for window, value in avg.as_dict().items():
            t[f"load/{part}/{window}"] = f"{value:.2f}"
    return {ROOT + k: v for k, v in t.items()}


class SysState:
    """Remembers what was published, so each round sends only the values that changed."""

    def __init__(self) -> None:
        self.last: dict[str, str] = {}

    def changed(self, topics: dict[str, str]) -> dict[str, str]:
        out = {k: v for k, v in topics.items() if self.last.get(k) != v}
        self.last.update(out)
        return out
