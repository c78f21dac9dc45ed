"""What the sidecar decides about one registered session: nothing, or a kick (perhaps with a block).

Pure: the sidecar loop gathers the facts from Redis, this module judges them. Order of the checks
(the first that applies wins): an active block, the user's `expires_at`, `session_time`, `events`
or `bytes` over with `on_exceed: disconnect`, then a slow consumer (`max_queue` + `queue_grace`).
"""

from __future__ import annotations

from dataclasses import dataclass

from ..quota.limits import Limits
from ..quota.windows import utc
from ..reasons import BLOCKED, KICKED, SESSION_TIME, SLOW_CONSUMER, USER_REVOKED, quota_disconnect
from ..store.quota import Block


@dataclass(frozen=True, slots=True)
class Usage:
    """One metric of a user in the current window, as Redis counts it."""

    used: int
    refused: int  # attempts refused because the allowance was used up
    limit: int
    window_end: int  # unix seconds


@dataclass(frozen=True, slots=True)
class Decision:
    reason: str
    code: int = KICKED  # the MQTT 5 DISCONNECT reason the client is told (mqtt_guard/reasons.py)
    block_until: float = 0.0  # unix seconds; 0 = no block
    block_user: bool = False  # the block applies to the user (window reset), not to the client id


def _float(value: str | None) -> float | None:
    try:
        return float(value) if value not in (None, "") else None
    except ValueError:
        return None


def evaluate(
    session: dict[str, str],
    limits: Limits,
    *,
    now: float,
    expires_at: float | None = None,
    usage: dict[str, Usage] | None = None,
    block: Block | None = None,
) -> Decision | None:
    if block is not None and block.until > now:
        return Decision(f"blocked: {block.reason}", BLOCKED)
    if expires_at is not None and now >= expires_at:
        return Decision("user expired", USER_REVOKED)
    since = _float(session.get("since"))
    if limits.session_time is not None and since is not None and now - since >= limits.session_time:
        return Decision(f"session time {limits.session_time:g}s exceeded (connected {now - since:.1f}s)", SESSION_TIME)
    if limits.on_exceed == "disconnect":
        for metric, u in (usage or {}).items():
            if u.refused > 0 or u.used > u.limit:
                return Decision(
                    f"{metric} quota {u.limit} used up until {utc(u.window_end)}",
                    quota_disconnect(metric),
                    block_until=float(u.window_end),
                    block_user=True,
                )
    if limits.max_queue is not None:
        depth = int(_float(session.get("queue_messages")) or 0)
        over_since = _float(session.get("queue_over_since"))
        if depth > limits.max_queue and over_since is not None and now - over_since >= limits.queue_grace:
            return Decision(
                f"slow consumer: {depth} messages queued, more than max_queue {limits.max_queue} "
                f"for {now - over_since:.1f}s (queue_grace {limits.queue_grace:g}s)",
                SLOW_CONSUMER,
            )
    return None


def next_check(
    session: dict[str, str],
    limits: Limits,
    *,
    now: float,
    expires_at: float | None = None,
) -> float | None:
    """When `evaluate` may next decide differently for this session with no new event: the earliest of
    the user's `expires_at`, the end of `session_time`, the end of `queue_grace` of a queue already over
    `max_queue`; None if only an event can change it (a block, a limit edit, a queue crossing `max_queue`,
    quota usage: those reach the sidecar as events). Kept next to `evaluate` so the two rules cannot
    drift apart: it is the sidecar's deadline (`<prefix>sidecar:due`) for the session."""
    due: list[float] = []
    if expires_at is not None:
        due.append(expires_at)
    since = _float(session.get("since"))
    if limits.session_time is not None and since is not None:
        due.append(since + limits.session_time)
    if limits.max_queue is not None:
        depth = int(_float(session.get("queue_messages")) or 0)
        over_since = _float(session.get("queue_over_since"))
        if depth > limits.max_queue and over_since is not None:
            due.append(over_since + limits.queue_grace)
    return max(min(due), now) if due else None
