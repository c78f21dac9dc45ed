"""Analytics read from Redis: a client's or user's counters and rate history, the busiest clients,
refused CONNECTs (what `mqtt-guard stats` and `top` show, and the admin API serves).

Everything comes from what the brokers flushed to Redis (docs/analytics.md): every broker sharing the
Redis, lagging the brokers by at most `metrics.flush_interval`.
"""

from __future__ import annotations

import time
from typing import Any

from ..metrics import counters as C
from ..metrics.rates import RES_1M, RES_10S, bucket_range, sparkline
from ..store.keys import Keys
from ..store.quota import QuotaStore
from ..store.stats import (
    ERROR_FIELDS,
    ERROR_KIND_PREFIX,
    FAILED_ADDR,
    FAILED_USER,
    KIND_BROKER,
    KIND_CLIENT,
    KIND_USER,
    StatsReader,
)
from .quota import describe_quota

GAUGE_FIELDS = {
    C.G_CONNECTED,
    C.G_CONNECTED_SINCE,
    C.G_DISCONNECTED_AT,
    C.G_QUEUE_DEPTH,
    C.G_BROKER,
    C.G_USERNAME,
    C.G_LAST_SEEN,
}


# -- stats ----------------------------------------------------------------------------------------
def split_fields(h: dict[str, str]) -> tuple[dict[str, int], dict[str, str]]:
    counters: dict[str, int] = {}
    gauges: dict[str, str] = {}
    for k, v in h.items():
        if k in GAUGE_FIELDS:
            gauges[k] = v
        else:
            try:
                counters[k] = int(v)
            except ValueError:
                gauges[k] = v
    return counters, gauges


def _num(v: str | None) -> float | None:
    try:
        return float(v) if v not in (None, "") else None
    except ValueError:
        return None


def _reasons(counters: dict[str, int], prefix: str) -> dict[str, int]:
    return {k[len(prefix) :]: v for k, v in sorted(counters.items()) if k.startswith(prefix)}


async def quota_use(redis: Any, keys: Keys, username: str | None) -> dict[str, Any] | None:
    """The user's quota use in its current windows, as `mqtt-guard quota show` computes it; None when the
    user has no limits or the quota module is not there (the output then omits quota)."""
    if not username:
        return None
    try:
        info = await describe_quota(QuotaStore(redis, keys), keys, username)
    except Exception:  # noqa: BLE001 - quota display is best-effort here; `quota show` reports errors
        return None
    usage = info.get("usage") or {}
    if not usage and not info.get("block"):
        return None
    metrics = {
        m: {k: u.get(k) for k in ("used", "limit", "left", "window", "resets_at", "resets_in", "refused")}
        for m, u in usage.items()
    }
    percents = [100.0 * u["used"] / u["limit"] for u in metrics.values() if u.get("limit")]
    return {"percent": round(max(percents), 1) if percents else None, "metrics": metrics, "blocked": info.get("block")}


async def gather_stats(
    redis: Any, keys: Keys, name: str, kind: str | None, *, day: bool = False, now: float | None = None
) -> dict[str, Any] | None:
    now = time.time() if now is None else now
    reader = StatsReader(redis, keys)
    entity = await reader.entity(name, kind)
    if entity is None:
        return None
    counters, gauges = split_fields(entity.fields)
    starts, ins, outs = await reader.history(entity.kind, name, resolution=RES_10S, now=now)
    username = name if entity.kind == KIND_USER else (gauges.get(C.G_USERNAME) or None)
    out: dict[str, Any] = {
        "kind": entity.kind,
        "id": name,
        "username": username,
        "counters": counters,
        "publish_errors": {label: counters.get(field, 0) for field, label in ERROR_FIELDS.items()},
        "auth_failures": _reasons(counters, C.AUTH_FAILED_PREFIX),
        "kicks": _reasons(counters, C.KICKED_PREFIX),
    }
    if entity.kind == KIND_CLIENT:
        out["connected"] = gauges.get(C.G_CONNECTED) == "1"
        out["broker"] = gauges.get(C.G_BROKER)
        out["connected_since"] = _num(gauges.get(C.G_CONNECTED_SINCE))
        out["disconnected_at"] = _num(gauges.get(C.G_DISCONNECTED_AT))
        depth = _num(gauges.get(C.G_QUEUE_DEPTH))
        out["queue_depth"] = int(depth) if depth is not None else None
    out["last_seen"] = _num(gauges.get(C.G_LAST_SEEN))
    out["rate"] = {
        "resolution_seconds": RES_10S[1],
        "start": starts[0],
        "messages_in": ins,
        "messages_out": outs,
        "sparkline": sparkline([i + o for i, o in zip(ins, outs, strict=True)], 60),
    }
    if entity.kind == KIND_CLIENT:  # publish errors by reason over time, for the reasons it has any of
        out["errors_history"] = {}
        for field, label in ERROR_FIELDS.items():
            if counters.get(field):
                _, errs, _ = await reader.history(ERROR_KIND_PREFIX + label, name, resolution=RES_10S, now=now)
                out["errors_history"][label] = errs
    if day:
        d_starts, d_ins, d_outs = await reader.history(entity.kind, name, resolution=RES_1M, now=now)
        out["rate_day"] = {
            "resolution_seconds": RES_1M[1],
            "start": d_starts[0],
            "messages_in": d_ins,
            "messages_out": d_outs,
            "sparkline": sparkline([i + o for i, o in zip(d_ins, d_outs, strict=True)], 96),
        }
    quota = await quota_use(redis, keys, username)
    if quota is not None:
        out["quota"] = quota
    return out


async def gather_failures(
    redis: Any, keys: Keys, *, limit: int = 20, days: int = 1, now: float | None = None
) -> dict[str, Any]:
    """Who is being refused: the top source addresses and usernames of the last `days` UTC days, and the
    broker totals of refused CONNECTs by reason (which also count what the rankings did not keep)."""
    now = time.time() if now is None else now
    reader = StatsReader(redis, keys)
    addresses = await reader.failures(FAILED_ADDR, limit=limit, days=days, now=now)
    users = await reader.failures(FAILED_USER, limit=limit, days=days, now=now)
    totals, _ = split_fields(await reader.totals())
    return {
        "time": round(now, 3),
        "days": days,
        "addresses": [{"address": a, "failures": n} for a, n in addresses],
        "users": [{"username": u, "failures": n} for u, n in users],
        "totals": _reasons(totals, C.AUTH_FAILED_PREFIX),
        "untracked": totals.get(C.FAILURES_UNTRACKED, 0),
    }


async def gather_top(redis: Any, keys: Keys, *, users: bool, limit: int, now: float | None = None) -> dict[str, Any]:
    now = time.time() if now is None else now
    reader = StatsReader(redis, keys)
    kind = KIND_USER if users else KIND_CLIENT
    covered, ranked = await reader.top(kind, limit=limit, now=now)
    hashes = await reader.many(kind, [ident for ident, _, _ in ranked])
    rows = []
    for (ident, rin, rout), h in zip(ranked, hashes, strict=True):
        counters, gauges = split_fields(h)
        row: dict[str, Any] = {
            "id": ident,
            "rate_in": round(rin, 3),
            "rate_out": round(rout, 3),
            "messages_in": counters.get(C.MSGS_IN, 0),
            "messages_out": counters.get(C.MSGS_OUT, 0),
            "errors": {label: counters.get(field, 0) for field, label in ERROR_FIELDS.items()},
        }
        if kind == KIND_CLIENT:
            row["username"] = gauges.get(C.G_USERNAME) or None
            row["connected"] = gauges.get(C.G_CONNECTED) == "1"
            row["broker"] = gauges.get(C.G_BROKER)
        quota = await quota_use(redis, keys, ident if users else row.get("username"))
        if quota is not None:
            row["quota"] = quota
        rows.append(row)
    brokers = await reader.brokers()
    return {
        "time": round(now, 3),
        "window_seconds": round(covered, 3),
        "kind": kind,
        "rows": rows,
        "brokers": [
            {
                "id": b,
                "heartbeat_age": round(max(0.0, now - t), 3),
                "clients_connected": int(h.get("clients_connected", 0) or 0),
            }
            for b, t, h in brokers
        ],
    }


async def gather_overview(redis: Any, keys: Keys, *, now: float | None = None) -> dict[str, Any]:
    """The deployment at a glance (the dashboard's overview): messages in/out per 10 s bucket over the last
    hour, added up over the brokers that sent a heartbeat in that hour (and per broker, from the broker
    members of the rate history: one ZSCORE per bucket and broker, not a walk over every client), the
    broker totals of publish errors by reason, refused CONNECTs by reason and kicks."""
    now = time.time() if now is None else now
    reader = StatsReader(redis, keys)
    _, seconds, keep = RES_10S
    per: dict[str, dict[str, list[int]]] = {}
    starts: list[int] = []
    for b, beat, _h in await reader.brokers():
        if beat < now - keep:
            continue
        starts, ins, outs = await reader.history(KIND_BROKER, b, resolution=RES_10S, now=now)
        per[b] = {"messages_in": ins, "messages_out": outs}
    if not starts:
        starts = bucket_range(now, seconds, keep)
    n = len(starts)
    totals, _ = split_fields(await reader.totals())
    return {
        "time": round(now, 3),
        "rate": {
            "resolution_seconds": seconds,
            "start": starts[0],
            "messages_in": [sum(p["messages_in"][i] for p in per.values()) for i in range(n)],
            "messages_out": [sum(p["messages_out"][i] for p in per.values()) for i in range(n)],
            "brokers": per,
        },
        "counters": {k: totals.get(k, 0) for k in (C.MSGS_IN, C.MSGS_OUT, C.BYTES_IN, C.BYTES_OUT)},
        "publish_errors": {label: totals.get(field, 0) for field, label in ERROR_FIELDS.items()},
        "auth_failures": _reasons(totals, C.AUTH_FAILED_PREFIX),
        "kicks": _reasons(totals, C.KICKED_PREFIX),
    }


async def with_traffic(redis: Any, keys: Keys, rows: list[dict[str, Any]], *, now: float | None = None) -> None:
    """Add to each session row (one page of `GET /api/sessions`: a bounded number) what its client pushes,
    from the analytics every client has: messages in/out so far, the rate over the last 10 s, and its
    publish errors. Two pipelined round trips for the page, whatever the fleet's size."""
    if not rows:
        return
    reader = StatsReader(redis, keys)
    ids = [r["client_id"] for r in rows]
    hashes = await reader.many(KIND_CLIENT, ids)
    _, rates = await reader.recent(KIND_CLIENT, ids, now=now)
    for row, h, (rin, rout) in zip(rows, hashes, rates, strict=True):
        counters, _ = split_fields(h)
        row["messages_in"] = counters.get(C.MSGS_IN, 0)
        row["messages_out"] = counters.get(C.MSGS_OUT, 0)
        row["rate_in"] = round(rin, 3)
        row["rate_out"] = round(rout, 3)
        row["publish_errors"] = sum(counters.get(field, 0) for field in ERROR_FIELDS)


async def fleet_rates(redis: Any, keys: Keys, direction: str, *, now: float | None = None) -> dict[str, float]:
    """Every client's message rate per second over the last 10 s (`direction` in, out or both), as
    `with_traffic` shows it: the key a sort of the whole fleet by rate needs (one round trip; clients
    without traffic are absent)."""
    return await StatsReader(redis, keys).all_rates(KIND_CLIENT, direction, now=now)
