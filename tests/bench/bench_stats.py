"""Broker CPU of the analytics flush (issue 9, CONNECT target; not collected by pytest).

    .venv/bin/python tests/bench/bench_stats.py [--chunk 250,1000] [--reps 5] [--out tests/bench/results/stats.json]

What the broker's event loop pays to write one flush to Redis with `StatsWriter` (split + write of
every part), measured with `time.process_time` (this process only; Redis is another process), for
two shapes of flush:

* `connect`: 2,000 new clients in one flush window, as in the connect-rate benchmark with a
  password: each connected (connect event, `connects`), published 3 and received 2 messages
  (`messages_*`, `bytes_*`, rate history per client and for the user) and disconnected (disconnect
  event) — the work one CONNECT+DISCONNECT brings to the flusher. Reported per client entry.
* `iot`: 1,000 devices already connected (their connect events flushed earlier), 3 messages each in
  the window, plus one subscriber receiving all 3,000 (the 1,000-device benchmark case).

For each: µs of broker CPU per client (split + every write), Redis' own CPU per client (INFO cpu), the
longest single `write()` call (wall clock, and the CPU this process spent in it), the CPU of `split()`,
and the longest event-loop stall seen by a probe task that yields continuously during a separate
flush (what message delivery waits for at worst): wall clock, which includes time the OS gave the
CPU to Redis or anything else on a loaded machine, and this thread's CPU time in that gap, which is
the loop's own work and the number to compare (the stall on an idle machine). GC pauses during the
probed flush are reported too (the broker's GC thresholds are applied unless --gc-defaults).
Each number is the median of `--reps` flushes, each into a fresh key prefix; "(max)" the worst.

The batches are built with the real `Counters` → `batch_from_drain` path, so they have production's
shape. Starts its own redis-server on a free port; stops it by PID. Writes JSON to
tests/bench/results/ (git-ignored) and prints a table.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import os
import platform
import shutil
import signal
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import redis.asyncio as aioredis  # noqa: E402 - after the sys.path set-up that lets the script run on its own

from mqtt_guard.metrics import counters as C  # noqa: E402 - after the sys.path set-up that lets the script run on its own
from mqtt_guard.store.keys import Keys  # noqa: E402 - after the sys.path set-up that lets the script run on its own
from mqtt_guard.store.stats import Batch, StatsWriter, batch_from_drain  # noqa: E402 - after the sys.path set-up that lets the script run on its own
from tests.bench.bench_hotpath import start_redis  # noqa: E402 - after the sys.path set-up that lets the script run on its own

DEFAULT_OUT = ROOT / "tests" / "bench" / "results" / "stats.json"
TTL = 30 * 86400


def production_chunk() -> int:
    """The part size MetricsService uses (a module constant since issue 9; 250 before)."""
    from mqtt_guard.metrics import service

    return int(getattr(service, "FLUSH_CHUNK", 250))


def connect_batch(n: int, now: float) -> Batch:
    """n new clients of user `bench`, each connected, counted and disconnected within one window."""
    c = C.Counters()
    c.drain(now=now - 1.0)
    for i in range(n):
        cid = f"bench-{i:06d}"
        c.connected(cid, "bench", now=now - 0.5)
        c.incr(cid, C.MSGS_IN, 3)
        c.incr(cid, C.BYTES_IN, 192)
        c.incr(cid, C.MSGS_OUT, 2)
        c.incr(cid, C.BYTES_OUT, 128)
        c.disconnected(cid, now=now - 0.4)
    return batch_from_drain(c.drain(now=now))


def iot_batch(n: int, now: float) -> Batch:
    """n connected devices (connect events already flushed) publishing 3 messages each, one subscriber."""
    c = C.Counters()
    for i in range(n):
        c.connected(f"dev-{i:05d}", "fleet", now=now - 60)
    c.connected("sub", "ops", now=now - 60)
    c.drain(now=now - 1.0)
    for i in range(n):
        cid = f"dev-{i:05d}"
        c.incr(cid, C.MSGS_IN, 3)
        c.incr(cid, C.BYTES_IN, 192)
    c.incr("sub", C.MSGS_OUT, 3 * n)
    c.incr("sub", C.BYTES_OUT, 192 * n)
    c.set_gauge("sub", C.G_QUEUE_DEPTH, 7)
    return batch_from_drain(c.drain(now=now))


class StallProbe:
    """Yields to the loop continuously and records the longest gap between two of its turns; also the
    longest garbage-collector pause meanwhile (a stall, but not one the write path decides)."""

    def __init__(self) -> None:
        self.longest = 0.0  # wall clock: what a message waited, including time the OS ran something else
        self.longest_cpu = 0.0  # this thread's CPU time in that gap: the loop's own work, whatever the load
        self.longest_gc = 0.0
        self._gc_start = 0.0
        self._stop = False
        gc.callbacks.append(self._gc)

    def _gc(self, phase: str, info: dict[str, Any]) -> None:
        if phase == "start":
            self._gc_start = time.perf_counter()
        else:
            self.longest_gc = max(self.longest_gc, time.perf_counter() - self._gc_start)

    async def run(self) -> None:
        last, last_cpu = time.perf_counter(), time.thread_time()
        while not self._stop:
            await asyncio.sleep(0)
            t, c = time.perf_counter(), time.thread_time()
            self.longest = max(self.longest, t - last)
            self.longest_cpu = max(self.longest_cpu, c - last_cpu)
            last, last_cpu = t, c

    def stop(self) -> None:
        self._stop = True
        gc.callbacks.remove(self._gc)


async def redis_cpu(r: aioredis.Redis) -> float:
    info = await r.info("cpu")
    return float(info["used_cpu_user"]) + float(info["used_cpu_sys"])


async def one_flush(r: aioredis.Redis, shape: str, chunk: int, rep: int, probe: bool) -> dict[str, Any]:
    now = time.time()
    batch = connect_batch(2000, now) if shape == "connect" else iot_batch(1000, now)
    clients = len(batch.clients)
    keys = Keys(f"bs{rep}{shape}{chunk}{'p' if probe else ''}:")
    w = StatsWriter(r, keys, "bench-broker", ttl=TTL, chunk=chunk)
    await r.ping()
    rcpu0 = await redis_cpu(r)
    stall: StallProbe | None = None
    task = None
    if probe:
        stall = StallProbe()
        task = asyncio.get_running_loop().create_task(stall.run())
        await asyncio.sleep(0.01)
    longest_wall = longest_cpu = 0.0
    cpu0 = time.process_time()
    c0 = time.process_time()
    parts = w.split(batch)
    split_cpu = time.process_time() - c0
    await asyncio.sleep(0)  # as MetricsService.flush does: the split and the first part are two stalls
    for part in parts:
        t0, c0 = time.perf_counter(), time.process_time()
        await w.write(part, now=now)
        longest_wall = max(longest_wall, time.perf_counter() - t0)
        longest_cpu = max(longest_cpu, time.process_time() - c0)
    cpu = time.process_time() - cpu0
    if stall is not None and task is not None:
        stall.stop()
        await task
    rcpu = await redis_cpu(r) - rcpu0
    # the flush must have landed
    total = await r.hgetall(keys.stats_total())
    if shape == "connect":
        assert int(total.get(C.CONNECTS, 0)) == 2000, total
        h = await r.hgetall(keys.stats_client("bench-001999"))
        assert h.get(C.MSGS_IN) == "3" and h.get(C.G_CONNECTED) == "0" and h.get(C.G_USERNAME) == "bench", h
    else:
        assert int(total.get(C.MSGS_IN, 0)) == 3000, total
    return {
        "parts": len(parts),
        "clients": clients,
        "split_cpu_ms": split_cpu * 1e3,
        "cpu_us_per_client": cpu / clients * 1e6,
        "redis_cpu_us_per_client": rcpu / clients * 1e6,
        "longest_write_ms": longest_wall * 1e3,
        "longest_write_cpu_ms": longest_cpu * 1e3,
        "loop_stall_ms": (stall.longest * 1e3) if stall is not None else None,
        "loop_stall_cpu_ms": (stall.longest_cpu * 1e3) if stall is not None else None,
        "gc_pause_ms": (stall.longest_gc * 1e3) if stall is not None else None,
    }


async def run(port: int, chunks: list[int], reps: int) -> list[dict[str, Any]]:
    r = aioredis.Redis(port=port, decode_responses=True, socket_timeout=10)
    rows = []
    try:
        for shape in ("connect", "iot"):
            for chunk in chunks:
                await one_flush(r, shape, chunk, 99, probe=False)  # warm-up: script load, connections
                runs = [await one_flush(r, shape, chunk, rep, probe=False) for rep in range(reps)]
                probed = [await one_flush(r, shape, chunk, rep, probe=True) for rep in range(reps)]
                row: dict[str, Any] = {
                    "shape": shape,
                    "chunk": chunk,
                    "parts": runs[0]["parts"],
                    "clients": runs[0]["clients"],
                }
                for name in (
                    "cpu_us_per_client",
                    "redis_cpu_us_per_client",
                    "longest_write_ms",
                    "split_cpu_ms",
                    "longest_write_cpu_ms",
                ):
                    row[name] = statistics.median(x[name] for x in runs)
                row["loop_stall_ms"] = statistics.median(x["loop_stall_ms"] for x in probed)
                row["loop_stall_ms_max"] = max(x["loop_stall_ms"] for x in probed)
                row["loop_stall_cpu_ms"] = statistics.median(x["loop_stall_cpu_ms"] for x in probed)
                row["loop_stall_cpu_ms_max"] = max(x["loop_stall_cpu_ms"] for x in probed)
                row["gc_pause_ms_max"] = max(x["gc_pause_ms"] for x in probed)
                rows.append(row)
                await r.flushdb()
    finally:
        await r.aclose()
    return rows


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--chunk", default="", help="comma-separated part sizes (default: MetricsService's)")
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--no-uvloop", action="store_true")
    ap.add_argument("--gc-defaults", action="store_true", help="CPython's GC thresholds, not the broker's")
    ap.add_argument("--label", default="", help="stored in the JSON (e.g. before/after)")
    ap.add_argument("--out", default=str(DEFAULT_OUT))
    a = ap.parse_args(argv)
    chunks = [int(x) for x in a.chunk.split(",") if x] or [production_chunk()]
    if not a.no_uvloop:
        try:
            import uvloop

            asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())
        except ImportError:
            pass
    if not a.gc_defaults:  # as the broker runs (mqtt_guard/engine/runner.py)
        from mqtt_guard.engine.runner import tune_gc

        tune_gc()
    tmp = Path(tempfile.mkdtemp(prefix="mqtt-guard-bench-stats-"))
    proc, port = start_redis(tmp)
    try:
        rows = asyncio.run(run(port, chunks, a.reps))
    finally:
        os.kill(proc.pid, signal.SIGTERM)
        proc.wait(10)
        shutil.rmtree(tmp, ignore_errors=True)
    cols = [
        ("shape", "shape", "s"),
        ("chunk", "chunk", "d"),
        ("parts", "parts", "d"),
        ("clients", "clients", "d"),
        ("µs CPU/client", "cpu_us_per_client", ".1f"),
        ("Redis µs/client", "redis_cpu_us_per_client", ".1f"),
        ("longest write ms", "longest_write_ms", ".2f"),
        ("(its CPU ms)", "longest_write_cpu_ms", ".2f"),
        ("split CPU ms", "split_cpu_ms", ".2f"),
        ("stall ms", "loop_stall_ms", ".2f"),
        ("(max)", "loop_stall_ms_max", ".2f"),
        ("stall CPU ms", "loop_stall_cpu_ms", ".2f"),
        ("(max)", "loop_stall_cpu_ms_max", ".2f"),
        ("GC pause max ms", "gc_pause_ms_max", ".2f"),
    ]
    print("  ".join(f"{title:>{len(title)}s}" for title, _, _ in cols))
    for x in rows:
        print("  ".join(f"{x[key]:>{len(title)}{fmt}}" for title, key, fmt in cols))
    out = Path(a.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(
        json.dumps(
            {
                "label": a.label,
                "python": platform.python_version(),
                "machine": platform.machine(),
                "reps": a.reps,
                "rows": rows,
            },
            indent=2,
        )
    )
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
