"""Micro-benchmarks of the per-message hot path (issue 7 item 4; not collected by pytest).

    .venv/bin/python tests/bench/bench_hotpath.py [--out tests/bench/results/hotpath.json]

Each line is the median of 5 timed batches, in nanoseconds per operation, on this machine:

* packet encode/decode: `encode_publish` (64-byte payload), `parse_fixed_header`, the reader's
  PUBLISH fast path (`GuardedHandler._publish` with the routing stubbed out: parse, validate, count);
* topic matching: `TopicTrie.match` against 1,000 filters, next to amqtt's `Broker._matches` scan
  over the same filters;
* delivery: `OutQueue.offer0` of a shared frame to a connected subscriber (emit into the coalesced
  write buffer);
* ACL: `Guard.may` for a cached decision of a user with 1,000 rules (PUBLISH and RECEIVE);
* quota accounting: `Guard.admit_publish` and `Guard.admit_delivery` for a user with events (in and
  out), bytes and rate limits far above what the benchmark spends, i.e. the accounting, not denials;
  `Guard.delivery_group(...).admit` for one message to 10 clients of that user (one spend per user,
  what the engine does per cached route) and to one client.

Starts its own redis-server (the Guard needs one for the quota leases); stops it by PID.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from amqtt.broker import Broker  # noqa: E402 - after the sys.path set-up that lets the script run on its own

from mqtt_guard.acl.rules import Perm  # noqa: E402 - after the sys.path set-up that lets the script run on its own
from mqtt_guard.auth.authenticator import AuthResult, Outcome  # noqa: E402 - after the sys.path set-up that lets the script run on its own
from mqtt_guard.config import GuardConfig  # noqa: E402 - after the sys.path set-up that lets the script run on its own
from mqtt_guard.engine import mqtt5  # noqa: E402 - after the sys.path set-up that lets the script run on its own
from mqtt_guard.engine.protocol import encode_publish, parse_fixed_header  # noqa: E402 - after the sys.path set-up that lets the script run on its own
from mqtt_guard.engine.queues import OutQueue  # noqa: E402 - after the sys.path set-up that lets the script run on its own
from mqtt_guard.engine.routing import TopicTrie  # noqa: E402 - after the sys.path set-up that lets the script run on its own
from mqtt_guard.guard import Guard  # noqa: E402 - after the sys.path set-up that lets the script run on its own
from mqtt_guard.store.users import UserRecord  # noqa: E402 - after the sys.path set-up that lets the script run on its own
from tests.bench.run import acl_filters, free_port  # noqa: E402 - after the sys.path set-up that lets the script run on its own

DEFAULT_OUT = ROOT / "tests" / "bench" / "results" / "hotpath.json"


def timeit(fn, n: int, reps: int = 5) -> float:
    """Median ns per call of fn() over `reps` batches of `n` calls."""
    out = []
    for _ in range(reps):
        t0 = time.perf_counter_ns()
        for _ in range(n):
            fn()
        out.append((time.perf_counter_ns() - t0) / n)
    return statistics.median(out)


class Port:
    def __init__(self) -> None:
        self.n = 0

    def writable(self) -> bool:
        return True

    def emit(self, frame: bytes, payload_len: int) -> None:
        self.n += 1

    def wake(self) -> None:
        pass


def engine_benchmarks(results: dict) -> None:
    payload = b"\x5a" * 64
    topic = b"bench/run/0"
    results["encode_publish QoS0 64 B"] = timeit(lambda: encode_publish(topic, payload, 0, False), 200_000)
    frame = encode_publish(topic, payload, 0, False)
    results["parse_fixed_header"] = timeit(lambda: parse_fixed_header(frame, 0), 200_000)

    from mqtt_guard.engine.handler import GuardedHandler

    class PM:
        _event_plugin_callbacks: dict = {}

    async def reader_fast_path() -> float:
        h = GuardedHandler(PM(), loop=asyncio.get_running_loop())
        h._route_now = lambda *a: None  # the broker's synchronous route, stubbed
        first, length, hlen = parse_fixed_header(frame, 0)
        return timeit(lambda: h._publish(first, frame, 0, hlen, hlen + length), 200_000)

    results["reader PUBLISH fast path (parse+validate+count, routing stubbed)"] = asyncio.run(reader_fast_path())

    async def reader_fast_path5() -> float:  # an MQTT 5 client's PUBLISH without properties (issue 16)
        h = GuardedHandler(PM(), loop=asyncio.get_running_loop())
        h._route_now = lambda *a: None  # the broker's synchronous route, stubbed
        frame5 = mqtt5.encode_publish(topic, payload, 0, False, False, 0)
        first, length, hlen = parse_fixed_header(frame5, 0)
        return timeit(lambda: h._publish5(first, frame5, 0, hlen, hlen + length), 200_000)

    results["reader PUBLISH fast path, MQTT 5 without properties"] = asyncio.run(reader_fast_path5())

    filters = acl_filters(1000, "bench/#")
    trie = TopicTrie()
    for f in filters:
        trie.add(f)
    results["TopicTrie.match, 1,000 filters"] = timeit(lambda: trie.match("bench/run/0"), 100_000)
    b = Broker.__new__(Broker)
    import logging

    b.logger = logging.getLogger("amqtt")
    results["amqtt Broker._matches scan, 1,000 filters"] = timeit(
        lambda: [f for f in filters if b._matches("bench/run/0", f)], 200
    )

    q = OutQueue(1000, 0, 20)
    q.online, q.port = True, Port()  # type: ignore[assignment]  # a stub port: the bench measures the queue, not the socket
    results["OutQueue.offer0 (subscriber keeps up)"] = timeit(lambda: q.offer0(frame, 64, 75), 200_000)


def start_redis(tmp: Path) -> tuple[subprocess.Popen, int]:
    exe = shutil.which("redis-server")
    if not exe:
        raise SystemExit("redis-server not installed")
    port = free_port()
    p = subprocess.Popen(
        [exe, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no", "--dir", str(tmp)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    import socket

    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5) as s:
                s.sendall(b"PING\r\n")
                if s.recv(16).startswith(b"+PONG"):
                    return p, port
        except OSError:
            time.sleep(0.05)
    p.kill()
    raise SystemExit("redis-server did not start")


async def guard_benchmarks(results: dict, redis_port: int) -> None:
    import redis.asyncio as aioredis

    config = GuardConfig()
    config.redis.url = f"redis://127.0.0.1:{redis_port}/0"
    config.redis.prefix = "hp:"
    r = aioredis.Redis(port=redis_port, decode_responses=True)
    await r.hset("hp:acl:user:bench", mapping={f: "readwrite" for f in acl_filters(1000, "bench/#")})
    await r.hset(
        "hp:quota:user:bench",
        mapping={
            "events": "2000000000/1d",
            "bytes": "500GB/1d",
            "rate": "5000000/s:5000000",
            "events_direction": "both",
        },
    )
    await r.aclose()
    g = Guard(config)
    await g.start()
    try:
        clients = [await g.attach(f"c{i}", AuthResult(Outcome.OK, "bench", UserRecord("bench"))) for i in range(10)]
        c = clients[0]
        for _ in range(3):  # the first spends wait for the first lease
            g.admit_publish(c, "bench/run/0", 64, 0)
            await asyncio.sleep(0.2)
        results["Guard.may PUBLISH, cached, 1,000 rules"] = timeit(
            lambda: g.may(c, Perm.PUBLISH, "bench/run/0"), 200_000
        )
        results["Guard.may RECEIVE, cached, 1,000 rules"] = timeit(
            lambda: g.may(c, Perm.RECEIVE, "bench/run/0"), 200_000
        )
        results["Guard.admit_publish (events+bytes+rate quota)"] = timeit(
            lambda: g.admit_publish(c, "bench/run/0", 64, 0), 100_000
        )
        results["Guard.admit_delivery (events+bytes quota)"] = timeit(
            lambda: g.admit_delivery(c, "bench/run/0", 64), 100_000
        )
        group = g.delivery_group(clients)
        results["Guard.delivery_group(10 clients of one user).admit, per client"] = (
            timeit(lambda: group.admit("bench/run/0", 64), 20_000) / 10
        )
        one = g.delivery_group(clients[:1])
        results["Guard.delivery_group(1 client).admit"] = timeit(lambda: one.admit("bench/run/0", 64), 100_000)
        results["10 x Guard.admit_delivery (per client)"] = (
            timeit(lambda: [g.admit_delivery(x, "bench/run/0", 64) for x in clients], 20_000) / 10
        )
    finally:
        await g.close()


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default=str(DEFAULT_OUT))
    a = ap.parse_args(argv)
    results: dict[str, float] = {}
    engine_benchmarks(results)
    tmp = Path(tempfile.mkdtemp(prefix="mqtt-guard-hotpath-"))
    proc, port = start_redis(tmp)
    try:
        try:
            import uvloop

            asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())
        except ImportError:
            pass
        asyncio.run(guard_benchmarks(results, port))
    finally:
        os.kill(proc.pid, signal.SIGTERM)
        proc.wait(10)
        shutil.rmtree(tmp, ignore_errors=True)
    width = max(map(len, results))
    for name, ns in results.items():
        print(f"{name:{width}s} {ns:10,.0f} ns")
    out = Path(a.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(
        json.dumps({"python": platform.python_version(), "machine": platform.machine(), "ns_per_op": results}, indent=2)
    )
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
