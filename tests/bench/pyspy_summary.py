"""Summarise py-spy raw (collapsed) stack files: where the broker's CPU goes.

    .venv/bin/python tests/bench/pyspy_summary.py /tmp/prof/guard-on-fanin_qos0-*.txt [--top 30]

Each input line is ``frame;frame;...;frame COUNT`` (``py-spy record --format raw``), root first. Prints
the share of samples per function *inclusive* (anywhere on the stack) and *self* (the leaf). Idle samples
(the event loop waiting in ``select``/``epoll``; py-spy records them only with ``--idle``) are counted
separately and left out of the percentages when ``--busy`` is given, so runs of different length compare.
"""

from __future__ import annotations

import argparse
import re
import sys
from collections import Counter
from pathlib import Path

FRAME = re.compile(r"^(?P<func>.*?) \((?P<file>[^()]*?)(?::(?P<line>\d+))?\)$")

# Self time (the sampled leaf frame) grouped for docs/performance.md; the first matching rule wins.
CATEGORIES: list[tuple[str, tuple[str, ...]]] = [
    (
        "quota accounting",
        ("QuotaEnforcer.", "(allowance.py", "(stretch.py", "Guard.admit_", "Limits.", "TokenBucket.", "Entry."),
    ),
    (
        "ACL decisions",
        ("Guard.may", "AclPolicy.", "LiveAcl.", "_check_sync", "_topic_filtering", "Subject."),
    ),
    (
        "counters / analytics",
        (
            "Counters.",
            "MetricsService.",
            "StatsWriter.",
            "Redis",
            "Pipeline",
            "redis",
            "Connection.",
            "Encoder.",
            "Timeout.",
            "(stats.py)",
            "(connection.py)",
            "(client.py)",
            "(core.py)",
            "(hiredis.py)",
        ),
    ),
    (
        "reader: parse + validate",
        (
            "_reader_loop",
            "_publish (handler",
            "_new_topic",
            "parse_fixed_header",
            "decode_utf8",
            "check_topic",
            "Cursor.",
            "_on_publish",
            "_dispatch",
            "_flush_in",
            "_read_chunk",
            "StreamReader.",
            "data_received",
        ),
    ),
    (
        "routing: match, fan-out, queues",
        (
            "_route",
            "_fanout",
            "_make_route",
            "_match",
            "publish_fast",
            "handle_publish",
            "TopicTrie",
            "Broker._matches",
            "OutQueue.",
            "queue_of",
            "Delivery.",
        ),
    ),
    (
        "writing: coalesce + send",
        (
            "emit",
            "_flush_coalesced",
            "_write_frames",
            "_writer_loop",
            "writable",
            "wake",
            "_ack",
            "send (handler",
            "encode_publish",
            "Event.set",
        ),
    ),
    ("event loop, sockets (C, uvloop)", ("Runner.run", "run_until_complete", "run_forever")),
]


def category(leaf: str) -> str:
    for name, needles in CATEGORIES:
        if any(n in leaf for n in needles):
            return name
    return "other"


def parse_line(line: str) -> tuple[list[str], int] | None:
    line = line.rstrip("\n")
    if not line:
        return None
    stack, _, count = line.rpartition(" ")
    try:
        n = int(count)
    except ValueError:
        return None
    frames = []
    for fr in stack.split(";"):
        m = FRAME.match(fr)
        if m:
            f = m.group("file").rsplit("/", 1)[-1]
            frames.append(f"{m.group('func')} ({f})")
        else:
            frames.append(fr)
    return frames, n


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("files", nargs="+")
    ap.add_argument("--top", type=int, default=35)
    ap.add_argument("--busy", action="store_true", help="percentages of non-idle samples only")
    a = ap.parse_args(argv)
    incl: Counter[str] = Counter()
    self_: Counter[str] = Counter()
    total = idle = 0
    for path in a.files:
        for line in Path(path).read_text(errors="replace").splitlines():
            parsed = parse_line(line)
            if parsed is None:
                continue
            frames, n = parsed
            leaf = frames[-1] if frames else "?"
            # uvloop's run_forever leaf with nothing Python above it = waiting in epoll
            if leaf.startswith(("select (", "poll (")) or (len(frames) <= 3 and "run_forever" in leaf):
                idle += n
                if a.busy:
                    continue
            total += n
            for f in set(frames):
                incl[f] += n
            self_[leaf] += n
    if not total:
        print("no samples")
        return 1
    print(
        f"{total + (idle if a.busy else 0)} samples in {len(a.files)} file(s); idle (event loop waiting): "
        f"{idle} ({100 * idle / max(1, total + (idle if a.busy else 0)):.1f} %)"
        + ("; percentages below are of busy samples" if a.busy else "")
    )
    print()
    print(f"{'incl %':>7} {'self %':>7}  function (file)")
    for f, n in incl.most_common(a.top):
        print(f"{100 * n / total:7.1f} {100 * self_[f] / total:7.1f}  {f}")
    print()
    cats: Counter[str] = Counter()
    for f, n in self_.items():
        cats[category(f)] += n
    print("self time by category:")
    for c, n in cats.most_common():
        print(f"{100 * n / total:7.1f}  {c}")
    print()
    print("top self:")
    for f, n in self_.most_common(a.top):
        print(f"{100 * n / total:7.1f}  {f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
