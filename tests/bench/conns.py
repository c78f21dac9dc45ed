"""Many idle MQTT connections from one process, for the `connections` bench case (issue 15, memory).

    python tests/bench/conns.py hold --port P --n 10000 [--username U --password W]
        connect N clients (keep-alive 60, clean session), print one JSON line {"ready": ...} once every
        CONNACK is in, hold them until stdin closes, then DISCONNECT them all and print {"closed": ...}
    python tests/bench/conns.py cycles --port P --n 1000 --cycles 20 --pid BROKER_PID
        connect N clients and disconnect them again, --cycles times with the same client ids; after each
        cycle (once the broker is idle again) print one JSON line with the broker's RSS

The clients are asyncio Protocols on one event loop (no threads, a few hundred bytes each), so 10,000
of them cost this process little; connections come from 127.0.0.2-127.0.0.41 in turn so that many
cycles do not run out of ephemeral ports (TIME_WAIT). The fd limit is raised to its hard limit.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import resource
import struct
import sys
import time

SOURCES = [f"127.0.0.{i}" for i in range(2, 42)]


def _s(b: bytes) -> bytes:
    return struct.pack("!H", len(b)) + b


def connect_frame(cid: str, user: str | None, pw: str | None, keepalive: int = 60) -> bytes:
    flags = 0x02
    payload = _s(cid.encode())
    if user is not None:
        flags |= 0x80
        payload += _s(user.encode())
        if pw is not None:
            flags |= 0x40
            payload += _s(pw.encode())
    body = _s(b"MQTT") + bytes((4, flags)) + struct.pack("!H", keepalive) + payload
    n, rl = len(body), bytearray()
    while True:
        d, n = n % 128, n // 128
        rl.append(d | (0x80 if n else 0))
        if not n:
            break
    return b"\x10" + bytes(rl) + body


class Client(asyncio.Protocol):
    __slots__ = ("connack", "buf", "transport")

    def __init__(self, connack: asyncio.Future) -> None:
        self.connack = connack
        self.buf = b""
        self.transport = None

    def connection_made(self, transport) -> None:
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        if self.connack.done():
            return  # (idle clients get nothing else; a PINGRESP would land here)
        self.buf += data
        if len(self.buf) >= 4:
            self.connack.set_result(self.buf[3])

    def connection_lost(self, exc) -> None:
        if not self.connack.done():
            self.connack.set_exception(ConnectionError("closed before CONNACK"))


async def open_many(a, prefix: str) -> tuple[list, int, str | None]:
    loop = asyncio.get_running_loop()
    sem = asyncio.Semaphore(a.concurrency)
    transports: list = [None] * a.n
    errors = 0
    first_error = None

    async def one(i: int) -> None:
        nonlocal errors, first_error
        async with sem:
            fut = loop.create_future()
            tr = None
            try:
                tr, _ = await loop.create_connection(
                    lambda: Client(fut), a.host, a.port, local_addr=(SOURCES[i % len(SOURCES)], 0)
                )
                tr.write(connect_frame(f"{prefix}{i}", a.username, a.password))
                rc = await asyncio.wait_for(fut, 60)
                if rc != 0:
                    raise ConnectionError(f"CONNACK {rc}")
                transports[i] = tr
            except Exception as e:
                errors += 1
                first_error = first_error or f"{type(e).__name__}: {e}"
                if tr is not None:
                    tr.abort()

    await asyncio.gather(*(one(i) for i in range(a.n)))
    return [t for t in transports if t is not None], errors, first_error


async def close_all(transports: list) -> None:
    for t in transports:
        t.write(b"\xe0\x00")  # DISCONNECT
        t.close()
    await asyncio.sleep(0.1)


def rss_kb(pid: int) -> int | None:
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1])
    except OSError:
        return None
    return None


def cpu_ticks(pid: int) -> int:
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            fields = f.read().rsplit(b")", 1)[1].split()
        return int(fields[11]) + int(fields[12])
    except OSError:
        return 0


async def settle(pid: int, max_wait: float = 10.0) -> None:
    """Until the broker's CPU is quiet for 0.3 s (its closes and periodic work done)."""
    deadline = time.monotonic() + max_wait
    while time.monotonic() < deadline:
        t0 = cpu_ticks(pid)
        await asyncio.sleep(0.3)
        if cpu_ticks(pid) - t0 <= 3:
            return


async def hold(a) -> None:
    t0 = time.monotonic()
    transports, errors, first_error = await open_many(a, "idle-")
    print(
        json.dumps({"ready": len(transports), "errors": errors, "error": first_error, "s": time.monotonic() - t0}),
        flush=True,
    )
    await asyncio.get_running_loop().run_in_executor(None, sys.stdin.read)
    await close_all(transports)
    print(json.dumps({"closed": len(transports)}), flush=True)


async def cycles(a) -> None:
    for c in range(a.cycles):
        t0 = time.monotonic()
        transports, errors, first_error = await open_many(a, "cycle-")
        connected = time.monotonic() - t0
        await close_all(transports)
        await settle(a.pid)
        rec = {"cycle": c + 1, "connected": len(transports), "errors": errors, "connect_s": round(connected, 2)}
        rec.update(error=first_error, rss_kb=rss_kb(a.pid))
        print(json.dumps(rec), flush=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("mode", choices=("hold", "cycles"))
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--n", type=int, default=1000)
    ap.add_argument("--cycles", type=int, default=20)
    ap.add_argument("--pid", type=int, default=0, help="cycles: the broker, whose RSS is read")
    ap.add_argument("--username")
    ap.add_argument("--password")
    ap.add_argument("--concurrency", type=int, default=200, help="CONNECTs in flight at once")
    a = ap.parse_args()
    _soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    try:
        import uvloop

        uvloop.install()
    except ImportError:
        pass
    asyncio.run(hold(a) if a.mode == "hold" else cycles(a))


if __name__ == "__main__":
    main()
