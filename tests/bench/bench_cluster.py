"""Forwarding between brokers through Redis: Streams or pub/sub with an acknowledged resend (issue 18
item 2; not collected by pytest).

    .venv/bin/python tests/bench/bench_cluster.py [--rounds 5] [--messages 20000] [--bursts 50,1] [--propagation 200]

Both designs carry the same batches (cluster/forward.py `pack`: every message of one event-loop
iteration for one destination in one Redis command) from a sending broker to a receiving one, with
the same guarantee wanted for QoS 1/2 (a receiver whose connection drops for a few seconds gets what was
sent meanwhile, nothing twice):

- `streams`: the real `Outbox`/`Inbox` of store/cluster.py: XADD MAXLEN ~ per destination per
  iteration; the receiver XREADs from its last id (a reconnect goes on from there) and trims what it
  read once a second.
- `pubsub`: PUBLISH per destination per iteration; the sender keeps each batch until the receiver
  acknowledges it (the receiver PUBLISHes the highest sequence it got from each sender, once per
  iteration) and re-sends what is unacknowledged after 1 s; the receiver skips what it has already
  (the same `Sequencer`). Without the acknowledgement pub/sub loses whatever is published while the
  receiver is disconnected, so this is the cheapest pub/sub design with the guarantee.

Sender and receiver run in this one process, on one event loop, as they do in a broker (every broker
is both): "CPU" is this process's CPU time (`time.process_time`) per forwarded message, both sides
together; "Redis" is Redis' own CPU (INFO cpu) per message; the rate is messages per second from the
first send to the last delivery. `--bursts`: messages per event-loop iteration (50: a busy broker; 1:
every message alone, the per-command cost). The options run interleaved (the order alternates each
round) because this machine is shared: compare ranges of the same rounds. `--propagation N` first
measures how long a new filter on one broker takes to be routable on another (N samples). Starts its
own redis-server on a free port and stops it.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import os
import platform
import struct
import sys
import time
from collections import OrderedDict
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import redis.asyncio as aioredis  # noqa: E402

from mqtt_guard.cluster.filters import LocalFilters  # noqa: E402
from mqtt_guard.cluster.forward import RemoteMessage, Sequencer, pack, pack_one, unpack  # noqa: E402
from mqtt_guard.cluster.table import FilterTable  # noqa: E402
from mqtt_guard.store.cluster import Inbox, Outbox, RouteLink  # noqa: E402
from mqtt_guard.store.connection import make_async_client  # noqa: E402
from mqtt_guard.store.keys import Keys  # noqa: E402
from tests.helpers.servers import RedisServer  # noqa: E402

WINDOW = 10_000  # messages sent and not yet delivered, at most (the sender waits past it)
PAYLOAD = b"x" * 100
_ENV = struct.Struct("!HI")  # pub/sub envelope: origin length, sequence


# -- the pub/sub design ------------------------------------------------------------------------------


class PubSubSender:
    def __init__(self, url: str, prefix: str, me: str) -> None:
        self.redis = make_async_client(url, decode_responses=False, pool_size=2)
        self.prefix = prefix
        self.me = me
        self._open: dict[str, list[bytes]] = {}
        self._seq: dict[str, int] = {}
        self.unacked: dict[str, OrderedDict[int, tuple[float, bytes]]] = {}
        self._scheduled = False
        self._waiting: list[dict[str, list[bytes]]] = []
        self._wake = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []

    async def start(self) -> None:
        self._pubsub = self.redis.pubsub()
        await self._pubsub.subscribe(f"{self.prefix}ack:{self.me}")
        self._tasks = [asyncio.create_task(t) for t in (self._acks(), self._resend(), self._run())]

    def send(self, record: bytes, destinations: list[str]) -> None:
        for d in destinations:
            self._open.setdefault(d, []).append(record)
        if not self._scheduled:
            self._scheduled = True
            asyncio.get_running_loop().call_soon(self._flush)

    def _flush(self) -> None:
        # one pipeline in flight, as the Outbox: batches must reach Redis in their sequence order
        self._scheduled = False
        self._waiting.append(self._open)
        self._open = {}
        self._wake.set()

    async def _run(self) -> None:
        origin = self.me.encode()
        while True:
            if not self._waiting:
                self._wake.clear()
                await self._wake.wait()
                continue
            rounds, self._waiting = self._waiting, []
            now = time.monotonic()
            async with self.redis.pipeline(transaction=False) as pipe:
                for batches in rounds:
                    for d, records in batches.items():
                        seq = self._seq.get(d, 0) + 1
                        self._seq[d] = seq
                        body = _ENV.pack(len(origin), seq) + origin + pack(records)
                        self.unacked.setdefault(d, OrderedDict())[seq] = (now, body)
                        pipe.publish(f"{self.prefix}in:{d}", body)
                await pipe.execute()

    async def _acks(self) -> None:
        while True:
            msg = await self._pubsub.get_message(ignore_subscribe_messages=True, timeout=1.0)
            if msg is None:
                continue
            dest, _, seq = msg["data"].decode().rpartition(" ")
            pending = self.unacked.get(dest)
            upto = int(seq)
            while pending:
                first = next(iter(pending))
                if first > upto:
                    break
                del pending[first]

    async def _resend(self) -> None:
        while True:
            await asyncio.sleep(0.5)
            old = time.monotonic() - 1.0
            for d, pending in self.unacked.items():
                for seq, (at, body) in list(pending.items()):
                    if at > old:
                        break
                    pending[seq] = (time.monotonic(), body)
                    await self.redis.publish(f"{self.prefix}in:{d}", body)

    async def close(self) -> None:
        for t in self._tasks:
            t.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        await self._pubsub.aclose()  # type: ignore[no-untyped-call]
        await self.redis.aclose()


class PubSubReceiver:
    def __init__(self, url: str, prefix: str, me: str, on_remote: Any) -> None:
        self.redis = make_async_client(url, decode_responses=False, pool_size=2, socket_timeout=None)
        self.prefix = prefix
        self.me = me
        self.on_remote = on_remote
        self.sequencer = Sequencer()
        self._acks: dict[str, int] = {}
        self._scheduled = False
        self._tasks: set[asyncio.Task[None]] = set()  # (acks out of order are harmless: the highest counts)

    async def start(self) -> None:
        self._pubsub = self.redis.pubsub()
        await self._pubsub.subscribe(f"{self.prefix}in:{self.me}")
        self._task = asyncio.create_task(self._read())

    async def _read(self) -> None:
        while True:
            msg = await self._pubsub.get_message(ignore_subscribe_messages=True, timeout=1.0)
            if msg is None:
                continue
            data = msg["data"]
            n, seq = _ENV.unpack_from(data)
            origin = data[_ENV.size : _ENV.size + n].decode()
            if self.sequencer.check(origin, seq) >= 0:
                for m in unpack(data[_ENV.size + n :], origin):
                    self.on_remote(m)
            self._acks[origin] = max(seq, self._acks.get(origin, 0))
            if not self._scheduled:
                self._scheduled = True
                asyncio.get_running_loop().call_soon(self._ack)

    def _ack(self) -> None:
        self._scheduled = False
        acks, self._acks = self._acks, {}
        self._tasks.add(t := asyncio.get_running_loop().create_task(self._send_acks(acks)))
        t.add_done_callback(self._tasks.discard)

    async def _send_acks(self, acks: dict[str, int]) -> None:
        async with self.redis.pipeline(transaction=False) as pipe:
            for origin, seq in acks.items():
                pipe.publish(f"{self.prefix}ack:{origin}", f"{self.me} {seq}")
            await pipe.execute()

    async def close(self) -> None:
        await asyncio.gather(*self._tasks, return_exceptions=True)  # the last acknowledgements
        self._task.cancel()
        await asyncio.gather(self._task, return_exceptions=True)
        await self._pubsub.aclose()  # type: ignore[no-untyped-call]
        await self.redis.aclose()


# -- one run -----------------------------------------------------------------------------------------


async def redis_cpu(r: aioredis.Redis) -> float:
    info = await r.info("cpu")
    return float(info["used_cpu_user"]) + float(info["used_cpu_sys"])


async def run_one(url: str, option: str, n: int, burst: int, tag: str) -> dict[str, float]:
    prefix = f"bench{tag}:"
    keys = Keys(prefix)
    got = 0
    done = asyncio.Event()

    def on_remote(_m: RemoteMessage) -> None:
        nonlocal got
        got += 1
        if got >= n:
            done.set()

    sender_id, receiver_id = f"s{tag}", f"r{tag}"
    if option == "streams":
        out = Outbox(url, keys, sender_id)
        inbox = Inbox(url, keys, receiver_id, on_remote)
        inbox.start()
        await asyncio.sleep(0.2)

        def send(record: bytes) -> None:
            out.send(record, 1, [receiver_id])

    else:
        psend = PubSubSender(url, prefix, sender_id)
        precv = PubSubReceiver(url, prefix, receiver_id, on_remote)
        await psend.start()
        await precv.start()
        await asyncio.sleep(0.2)

        def send(record: bytes) -> None:
            psend.send(record, [receiver_id])

    probe = make_async_client(url)
    topics = [f"bench/{i}/state" for i in range(10)]
    gc.collect()
    r0 = await redis_cpu(probe)
    c0, t0 = time.process_time(), time.perf_counter()
    sent = 0
    while sent < n:
        for _ in range(min(burst, n - sent)):
            m = RemoteMessage(topics[sent % 10], PAYLOAD, 1, client_id="pub-1", username="u1", origin=sender_id)
            send(pack_one(m))
            sent += 1
        await asyncio.sleep(0)
        while sent - got > WINDOW:
            await asyncio.sleep(0.001)
    await asyncio.wait_for(done.wait(), 60)
    c1, t1 = time.process_time(), time.perf_counter()
    r1 = await redis_cpu(probe)
    if option == "streams":
        await inbox.stop()
        await out.close()
    else:
        await psend.close()
        await precv.close()
    await probe.flushdb()
    await probe.aclose()
    return {
        "rate": n / (t1 - t0),
        "cpu_us": (c1 - c0) / n * 1e6,
        "redis_us": (r1 - r0) / n * 1e6,
    }


async def propagation(url: str, samples: int) -> list[float]:
    """Milliseconds from a new filter on broker B (`subscribed` + the end of that iteration) until broker A
    routes its topic to B: the freshness of the other brokers' tables."""
    keys = Keys("benchprop:")
    fa, fb = LocalFilters(), LocalFilters()
    ta, tb = FilterTable(), FilterTable()
    la = RouteLink(url, keys, "A", fa, ta)
    lb = RouteLink(url, keys, "B", fb, tb)
    la.start()
    lb.start()
    await la.synced.wait()
    await lb.synced.wait()
    await asyncio.sleep(0.2)
    out = []
    for i in range(samples):
        topic = f"prop/{i}"
        t0 = time.perf_counter()
        fb.subscribe(topic)
        lb.changed()
        while not ta.brokers_for(topic):
            await asyncio.sleep(0)
        out.append((time.perf_counter() - t0) * 1000)
        await asyncio.sleep(0.005)
    await la.stop()
    await lb.stop()
    return out


def micro() -> dict[str, float]:
    """The per-message pieces the engine integration will add to its paths, in ns (best of 7 repeats):
    `pack_one` (publishing broker, once per forwarded message), `unpack` per message (receiving broker),
    and `brokers_for` with 10,000 filters of 10 brokers plus one that matches, cached (the common case:
    the answer is kept per topic until the table changes) and not."""
    import random
    import timeit

    m = RemoteMessage("devices/d-17/state", PAYLOAD, 1, client_id="d-17", username="u17", origin="b1")
    blob = pack([pack_one(m)] * 50)
    table = FilterTable()
    rng = random.Random(1)
    for b in range(10):
        for _ in range(1000):
            table.add(f"b{b}", f"devices/d-{rng.randrange(100_000)}/+")
    table.add("b3", "devices/+/state")
    topics = iter([f"devices/d-{i}/state" for i in range(200_000)])

    def best(fn: Any, n: int) -> float:
        return min(timeit.repeat(fn, number=n, repeat=7)) / n * 1e9

    return {
        "pack_one": best(lambda: pack_one(m), 20_000),
        "unpack per message": best(lambda: unpack(blob, "b1"), 2_000) / 50,
        "brokers_for cached": best(lambda: table.brokers_for("devices/d-17/state"), 100_000),
        "brokers_for uncached": best(lambda: table.brokers_for(next(topics)), 20_000),
    }


def fmt_range(values: list[float], digits: int = 1) -> str:
    lo, hi = min(values), max(values)
    return f"{lo:,.{digits}f}-{hi:,.{digits}f}"


async def main_async(args: argparse.Namespace) -> dict[str, Any]:
    server = RedisServer().start()
    results: dict[str, list[dict[str, float]]] = {}
    try:
        options = ["streams", "pubsub"]
        for option in options:  # warm-up (imports, connections, Redis' allocator): not recorded
            await run_one(server.url, option, 2000, 50, f"w{option[0]}")
        if args.micro:
            for name, ns in micro().items():
                print(f"{name}: {ns:,.0f} ns", flush=True)
        if args.propagation:
            delays = sorted(await propagation(server.url, args.propagation))
            results["propagation_ms"] = [{"ms": d} for d in delays]
            print(
                f"filter propagation, {len(delays)} samples: median {delays[len(delays) // 2]:.2f} ms, "
                f"p90 {delays[int(len(delays) * 0.9)]:.2f} ms, max {delays[-1]:.2f} ms",
                flush=True,
            )
        for rnd in range(args.rounds):
            for burst in args.bursts:
                order = options if rnd % 2 == 0 else options[::-1]
                for option in order:
                    n = args.messages if burst > 1 else max(1000, args.messages // 10)
                    res = await run_one(server.url, option, n, burst, f"{rnd}{option[0]}{burst}")
                    results.setdefault(f"{option} burst {burst}", []).append(res)
                    print(
                        f"round {rnd + 1} {option:8} burst {burst:3}: {res['rate']:9,.0f} msg/s "
                        f"{res['cpu_us']:6.1f} us CPU/msg, Redis {res['redis_us']:5.2f} us/msg",
                        flush=True,
                    )
    finally:
        server.cleanup()
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--messages", type=int, default=20_000)
    parser.add_argument("--bursts", default="50,1", help="messages per event-loop iteration, comma-separated")
    parser.add_argument("--micro", action=argparse.BooleanOptionalAction, default=True, help="per-message pieces")
    parser.add_argument("--propagation", type=int, default=200, help="filter propagation samples (0: none)")
    parser.add_argument("--out", default=str(ROOT / "tests" / "bench" / "results" / "cluster.json"))
    args = parser.parse_args()
    args.bursts = [int(b) for b in args.bursts.split(",")]
    try:
        import uvloop

        uvloop.install()
        loop_name = "uvloop"
    except ImportError:
        loop_name = "asyncio"
    results = asyncio.run(main_async(args))
    load = os.getloadavg()[0]
    print(f"\n{args.rounds} interleaved rounds, {loop_name}, {platform.python_version()}, load {load:.1f}")
    print(f"{'option':22} {'msg/s':>20} {'broker CPU us/msg':>20} {'Redis CPU us/msg':>18}")
    for name, runs in results.items():
        if name == "propagation_ms":
            continue
        print(
            f"{name:22} {fmt_range([r['rate'] for r in runs], 0):>20} "
            f"{fmt_range([r['cpu_us'] for r in runs]):>20} {fmt_range([r['redis_us'] for r in runs], 2):>18}"
        )
    for burst in args.bursts:  # the same round's two runs, compared: what the noise of a shared machine spares
        a, b = results.get(f"streams burst {burst}", []), results.get(f"pubsub burst {burst}", [])
        cpu = [x["cpu_us"] / y["cpu_us"] for x, y in zip(a, b, strict=False)]
        rate = [x["rate"] / y["rate"] for x, y in zip(a, b, strict=False)]
        if cpu:
            print(
                f"burst {burst}: streams/pubsub within a round: CPU per message {fmt_range(cpu, 2)}, "
                f"rate {fmt_range(rate, 2)}"
            )
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps({"loop": loop_name, "results": results}, indent=2))


if __name__ == "__main__":
    main()
