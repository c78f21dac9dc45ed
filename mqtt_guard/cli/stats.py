"""`mqtt-guard stats CLIENT_OR_USER` and `mqtt-guard top`: analytics from Redis, for people and scripts.

Both read only what the brokers flushed to Redis (docs/analytics.md), so they show every broker
sharing the Redis, lag the brokers by at most `metrics.flush_interval`, and work over SSH.
"""

from __future__ import annotations

import argparse
import asyncio
import json
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from ..metrics import counters as C
from ..ops.stats import gather_failures, gather_stats, gather_top
from ..store.keys import Keys
from ..store.stats import KIND_CLIENT, KIND_USER
from . import timefmt
from .common import CliError, run_with_redis

if TYPE_CHECKING:  # rich is imported when output is rendered: other commands start faster
    from rich.console import Console, Group


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser(
        "stats", help="counters, quota use and message rate of a client id or username; --failures: refused CONNECTs"
    )
    p.add_argument("name", metavar="CLIENT_OR_USER", nargs="?", help="a client id or a username (see --client, --user)")
    g = p.add_mutually_exclusive_group()
    g.add_argument(
        "--client",
        dest="kind",
        action="store_const",
        const=KIND_CLIENT,
        help="NAME is a client id (default: a client id if one has stats, else a username)",
    )
    g.add_argument("--user", dest="kind", action="store_const", const=KIND_USER, help="NAME is a username")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.add_argument("--day", action="store_true", help="also the 1 min history of the last 24 h")
    p.add_argument(
        "--failures",
        action="store_true",
        help="instead of a client or user: the source addresses and usernames with the most refused CONNECTs",
    )
    p.add_argument("--days", type=int, default=1, help="with --failures: UTC days to add up, today included (1-8)")
    p.add_argument("--limit", type=int, default=20, help="with --failures: rows of each table (default %(default)s)")
    p.set_defaults(func=cmd_stats, kind=None)

    p = sub.add_parser("top", help="live table of the busiest clients by message rate (all brokers)")
    p.add_argument("--once", action="store_true", help="print one frame and exit")
    p.add_argument("--json", action="store_true", help="one JSON document (implies --once)")
    p.add_argument("--width", type=int, help="terminal width (default: the terminal's)")
    p.add_argument("--limit", type=int, default=20, help="rows (default %(default)s)")
    p.add_argument("--users", action="store_true", help="rank usernames instead of client ids")
    p.add_argument("--interval", type=float, default=1.0, help="refresh period in seconds (default %(default)s)")
    p.set_defaults(func=cmd_top)


def describe_block(block: dict[str, Any], now: float | None = None) -> str:
    """A block as `quota show` words it: `until 2026-12-08T00:00:00Z (in 8 h 25 min): reason (by who)`."""
    text = f"{timefmt.block_until(block.get('until'), now)}: {block.get('reason') or 'no reason given'}"
    return text + (f" (by {block['by']})" if block.get("by") else "")


def render_stats(data: dict[str, Any], console: Console) -> None:
    from rich import box
    from rich.console import Group
    from rich.table import Table
    from rich.text import Text

    kind, ident = data["kind"], data["id"]
    title = f"{kind} {ident}"
    if kind == KIND_CLIENT and data.get("username"):
        title += f" (user {data['username']})"
    head = Table.grid(padding=(0, 2))
    if kind == KIND_CLIENT:
        state = "connected" if data["connected"] else "disconnected"
        head.add_row("state", f"{state} on {data.get('broker') or '?'}")
        head.add_row("connected since", timefmt.when(data.get("connected_since")))
        if not data["connected"]:
            head.add_row("disconnected at", timefmt.when(data.get("disconnected_at")))
        head.add_row("queue depth", str(data.get("queue_depth") if data.get("queue_depth") is not None else "-"))
    head.add_row("last activity", timefmt.when(data.get("last_seen")))
    counters = data["counters"]
    table = Table(box=box.SIMPLE, show_header=True, title=None)
    table.add_column("counter")
    table.add_column("value", justify="right")
    for name in (
        C.MSGS_IN,
        C.MSGS_OUT,
        C.BYTES_IN,
        C.BYTES_OUT,
        C.WITHHELD,
        C.DENIED_SUBSCRIBE,
        C.CONNECTS,
        C.PROTOCOL_ERRORS,
    ):
        table.add_row(name, str(counters.get(name, 0)))
    for label, v in data["publish_errors"].items():
        table.add_row(f"publish error: {label}", str(v))
    for label, v in data["auth_failures"].items():
        table.add_row(f"auth failure: {label}", str(v))
    for label, v in data["kicks"].items():
        table.add_row(f"kicked: {label}", str(v))
    rate = data["rate"]
    total = [i + o for i, o in zip(rate["messages_in"], rate["messages_out"], strict=True)]
    peak = max(total, default=0)
    spark = Text.assemble(
        ("rate, last hour ", "bold"),
        (f"[{rate['sparkline']}]", "cyan"),
        f"  peak {peak / rate['resolution_seconds']:.1f} msg/s, {sum(total)} messages",
    )
    parts: list[Any] = [Text(title, style="bold"), head, table, spark]
    if "rate_day" in data:
        parts.append(Text.assemble(("rate, last 24 h ", "bold"), (f"[{data['rate_day']['sparkline']}]", "cyan")))
    if "quota" in data:
        q = Table.grid(padding=(0, 2))
        for metric, u in data["quota"]["metrics"].items():
            resets = timefmt.until(u["resets_at"]) if u.get("resets_at") is not None else "-"
            q.add_row(
                f"quota {metric}",
                f"{u['used']} of {u['limit']} per {u['window']} ({u['left']} left, resets at {resets})",
            )
        if data["quota"].get("blocked"):
            q.add_row("quota block", describe_block(data["quota"]["blocked"]))
        parts.append(q)
    console.print(Group(*parts))


def render_failures(data: dict[str, Any], console: Console) -> None:
    from rich import box
    from rich.console import Group
    from rich.table import Table
    from rich.text import Text

    span = "today (UTC)" if data["days"] == 1 else f"the last {data['days']} UTC days"
    parts: list[Any] = [Text(f"refused CONNECTs, {span}", style="bold")]
    tables = ((data["addresses"], "source address", "address"), (data["users"], "username", "username"))
    for rows, column, ident in tables:
        table = Table(box=box.SIMPLE_HEAD, title_justify="left")
        table.add_column(column, overflow="fold")
        table.add_column("refused", justify="right")
        for row in rows:
            table.add_row(row[ident], str(row["failures"]))
        if not rows:
            table.caption = "(none)"
            table.caption_justify = "left"
        parts.append(table)
    totals = ", ".join(f"{reason} {n}" for reason, n in data["totals"].items()) or "none"
    parts.append(Text(f"all brokers since first counted, by reason: {totals}"))
    if data["untracked"]:
        parts.append(Text(f"not ranked (a flush's table was full): {data['untracked']}"))
    console.print(Group(*parts))


def cmd_stats(args: argparse.Namespace) -> int:
    if args.failures:
        return _cmd_failures(args)
    if args.name is None:
        raise CliError("give a client id or username, or --failures")

    async def body(redis: Any, keys: Keys) -> int:
        data = await gather_stats(redis, keys, args.name, args.kind, day=args.day)
        if data is None:
            what = {KIND_CLIENT: "client id", KIND_USER: "username"}.get(args.kind or "", "client id or username")
            raise CliError(f"no stats for {what} {args.name!r} (nothing counted yet, or expired)")
        _show(data, args.json, render_stats)
        return 0

    return run_with_redis(args, body)


def _show(data: dict[str, Any], as_json: bool, render: Callable[[dict[str, Any], Any], None]) -> None:
    """`--json` prints the data as it was gathered; otherwise `render` draws it with rich."""
    if as_json:
        print(json.dumps(data, indent=2, sort_keys=True))
    else:
        from rich.console import Console

        render(data, Console())


def _cmd_failures(args: argparse.Namespace) -> int:
    if args.name is not None or args.kind is not None or args.day:
        raise CliError("--failures takes no client or user (and no --client, --user, --day)")
    if not 1 <= args.days <= 8 or args.limit < 1:
        raise CliError("--days must be 1 to 8 (a ranking is kept a week after its day) and --limit >= 1")

    async def body(redis: Any, keys: Keys) -> int:
        data = await gather_failures(redis, keys, limit=args.limit, days=args.days)
        _show(data, args.json, render_failures)
        return 0

    return run_with_redis(args, body)


# -- top ------------------------------------------------------------------------------------------
def _quota_cell(row: dict[str, Any]) -> str:
    q = row.get("quota")
    if not q:
        return "-"
    if q.get("blocked"):
        return "blocked"
    used = q.get("percent")
    return f"{used:.0f}%" if isinstance(used, (int, float)) else "-"


def render_top(data: dict[str, Any]) -> Group:
    from rich import box
    from rich.console import Group
    from rich.table import Table
    from rich.text import Text

    users = data["kind"] == KIND_USER
    alive = sum(1 for b in data["brokers"] if b["heartbeat_age"] < 10)
    window = f"{data['window_seconds']:.0f}s"
    title = (
        f"busiest {'users' if users else 'clients'} over the last {window}  "
        f"({alive}/{len(data['brokers'])} brokers alive, {timefmt.utc(data['time'])})"
    )
    table = Table(title=title, box=box.SIMPLE_HEAD, expand=False, title_justify="left")
    table.add_column("user" if users else "client", overflow="fold")
    if not users:
        table.add_column("user", overflow="ellipsis")
    # Two kinds of column, said in the headers and the caption: rates over the ranking window, and
    # totals since the counters started (the stats hash lives metrics.stats_ttl past its last update).
    table.add_column("in/s", justify="right")
    table.add_column("out/s", justify="right")
    table.add_column("total\nin", justify="right")
    table.add_column("total\nout", justify="right")
    table.add_column("acl\ndenied", justify="right")
    table.add_column("over\nquota", justify="right")
    table.add_column("queue\ndropped", justify="right")
    table.add_column("quota\nuse", justify="right")
    legend = Text(
        f"in/s, out/s: average over the last {window}; the other counts: "
        "totals since first counted; quota use: of the user's allowance in its current window"
    )
    for row in data["rows"]:
        e = row["errors"]
        cells = [row["id"]]
        if not users:
            cells.append(row.get("username") or "-")
        cells += [
            f"{row['rate_in']:.1f}",
            f"{row['rate_out']:.1f}",
            str(row["messages_in"]),
            str(row["messages_out"]),
            str(e["acl_denied"]),
            str(e["over_quota"]),
            str(e["queue_full"]),
            _quota_cell(row),
        ]
        table.add_row(*cells)
    if not data["rows"]:
        table.caption = "(no messages in the last seconds)"
        table.caption_justify = "left"
    return Group(table, legend)


def cmd_top(args: argparse.Namespace) -> int:
    if args.limit < 1 or args.interval <= 0:
        raise CliError("--limit must be >= 1 and --interval > 0")
    once = args.once or args.json
    from rich.console import Console
    from rich.live import Live

    async def body(redis: Any, keys: Keys) -> int:
        if once:
            data = await gather_top(redis, keys, users=args.users, limit=args.limit)
            if args.json:
                print(json.dumps(data, indent=2, sort_keys=True))
            else:
                Console(width=args.width, highlight=False).print(render_top(data))
            return 0
        console = Console(width=args.width, highlight=False)
        with Live(console=console, auto_refresh=False, screen=False, transient=False) as live:
            while True:
                data = await gather_top(redis, keys, users=args.users, limit=args.limit)
                live.update(render_top(data), refresh=True)
                await asyncio.sleep(args.interval)

    try:
        return run_with_redis(args, body)
    except KeyboardInterrupt:
        return 0


__all__ = ["register", "gather_stats", "gather_top", "render_top", "render_stats", "gather_failures", "render_failures"]
