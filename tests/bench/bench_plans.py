"""Micro-benchmark of the quota accounting per message with several windows and APIs (issue 19; not
collected by pytest). No Redis: the pure book (quota/allowance.py) with leases already held.

    .venv/bin/python tests/bench/bench_plans.py [ROOT] [--modes base,multi,api]

ROOT (default: this tree) is put first on sys.path, so the `base` mode can be run against another
checkout for a same-minute A/B (`base` uses nothing issue 19 added). Each figure is the minimum over
15 repeats of 20,000 calls, in ns per call (the minimum is what the code costs; load only adds).

Modes: `base` one window per limit (events, bytes, rate), no API defined; `multi` the same user with
`events 1e9/1m,1e9/1d,1e9/1mo`; `api` one window, an API `stocks/#` defined, the user with a per-API
limit and the topic in the API; `meter` the API defined but no per-API limit (only metered per API).
"""

from __future__ import annotations

import sys
import time
import timeit
from pathlib import Path
from typing import Any

args = [a for a in sys.argv[1:] if not a.startswith("--")]
ROOT = Path(args[0]).resolve() if args else Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))
MODES = next((a.split("=", 1)[1] for a in sys.argv[1:] if a.startswith("--modes=")), "base,multi,meter,api").split(",")


def bench(mode: str) -> dict[str, float]:
    from mqtt_guard.acl.policy import Subject
    from mqtt_guard.config import QuotaConfig
    from mqtt_guard.guard_client import GuardClient
    from mqtt_guard.metrics.counters import Counters
    from mqtt_guard.quota.allowance import Allowances, ClientQuota, UserQuota
    from mqtt_guard.quota.bucket import TokenBucket
    from mqtt_guard.quota.limits import parse_limits
    from mqtt_guard.quota.stretch import DeliveryGroup, open_stretch, settle_stretch
    from mqtt_guard.store.keys import Keys

    book = Allowances(QuotaConfig(), Keys("t:"), Counters(), lambda: None, lambda *a: None, time.time)
    fields = {"events": "1000000000/1d", "bytes": "100000GB/1d", "rate": "1000000000/s"}
    if mode == "multi":
        fields["events"] = "1000000000/1m,1000000000/1d,1000000000/1mo"
    if mode == "api":  # (mode "meter": APIs defined, no per-API limit: only counted per API)
        fields["api:stocks:events"] = "1000000000/1d"
    user = book.users["u"] = UserQuota("u", parse_limits(fields, {}))
    book.set_entries(user, time.time())
    for e in user.current.values():
        e.held = 10**15
    clients = []
    for i in range(10):
        c = GuardClient(f"u-{i}", "u", Subject(username="u", client_id=f"u-{i}"))
        cq = ClientQuota(c, f"c{i}", time.time(), user=user)
        if i == 0:
            cq.bucket = TokenBucket(1e9, 1e9)
        book.clients[c.client_id] = user.clients[c.client_id] = cq
        clients.append(c)
    topic = "stocks/x"
    kw: dict[str, Any] = {}
    if mode in ("api", "meter"):
        from mqtt_guard.quota.apis import Apis

        book.apis = Apis({"stocks": ("stocks/#",)})
        kw = {"topic": topic}
    book.version += 1
    pub = clients[0]
    group = DeliveryGroup(book, clients, **kw)
    one = DeliveryGroup(book, clients[:1], **kw)

    def run(stmt: Any, n: int = 20_000) -> float:
        return min(timeit.repeat(stmt, number=n, repeat=15)) / n * 1e9

    def stretch() -> None:
        st = open_stretch(book, pub, 400, 2000)
        st.n += 1
        st.b += 64
        settle_stretch(book, st)

    return {
        "admit_publish": run(lambda: book.admit_publish(pub, topic, 64, 1)),
        "admit_delivery": run(lambda: book.admit_delivery(pub, topic, 64)),
        "group(10).admit per client": run(lambda: group.admit(topic, 64)) / 10,
        "group(1).admit": run(lambda: one.admit(topic, 64)),
        "stretch open+settle": run(stretch),
    }


if __name__ == "__main__":
    for mode in MODES:
        print(f"{mode:<6} " + "  ".join(f"{k} {v:,.0f}" for k, v in bench(mode).items()))
