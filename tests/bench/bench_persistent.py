"""QoS 1 towards offline persistent sessions (issue 17 item 7; not collected by pytest).

    .venv/bin/python tests/bench/bench_persistent.py [--rounds 3] [--count 5000] [--subs 10] [--window 100]

S persistent subscribers (clean session 0, `bp/#` at QoS 1) connect, subscribe and go away; one
publisher then sends N QoS 1 messages to `bp/x` with W un-PUBACKed in flight and waits for every PUBACK.
Reported per target: acknowledged messages per second (each stored for S offline sessions: S x N
messages into Redis for mqtt-guard, into mosquitto's persistence for mosquitto), the publisher's PUBACK
latency (p50/p99, ms), and a check that one subscriber gets all N when it comes back.

Targets: `guard` (mqtt-guard, durable state on: every message written to Redis before its PUBACK,
batched) and `mosquitto` (`persistence true`; mosquitto 2.0 writes its database at intervals and at
exit, not before its PUBACK: the comparison is of cost, not of the same promise). Rounds interleave the
targets. Starts its own redis-server and brokers on free ports; stops them by PID.
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from tests.bench.mqttraw import (  # noqa: E402 - after the path set-up
    CONNACK,
    PUBACK,
    PUBLISH,
    PacketReader,
    encode_connect,
    encode_disconnect,
    encode_puback,
    encode_publish,
    encode_subscribe,
    open_socket,
    parse_publish,
    read_packet,
)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_port(port: int, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
            return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"nothing listens on {port}")


def connect(port: int, cid: str, clean: bool) -> tuple[socket.socket, PacketReader, bool]:
    sock = open_socket("127.0.0.1", port)
    reader = PacketReader()
    sock.sendall(encode_connect(cid, clean_session=clean, keepalive=60))
    _t, _f, body = read_packet(sock, reader, 10, want=CONNACK)
    if body[1] != 0:
        raise ConnectionRefusedError(f"CONNACK {body[1]}")
    return sock, reader, bool(body[0] & 1)


def bye(sock: socket.socket) -> None:
    try:
        sock.sendall(encode_disconnect())
    finally:
        sock.close()


def one_round(port: int, subs: int, count: int, window: int) -> dict[str, float]:
    tag = uuid.uuid4().hex[:6]
    ids = [f"bp-{tag}-{i}" for i in range(subs)]
    for cid in ids:
        sock, reader, _ = connect(port, cid, clean=False)
        sock.sendall(encode_subscribe(1, [("bp/#", 1)]))
        read_packet(sock, reader, 10)
        bye(sock)
    time.sleep(0.3)  # (the broker sees them go)
    sock, reader, _ = connect(port, f"bp-pub-{tag}", clean=True)
    payload = os.urandom(64)
    sent_at: dict[int, float] = {}
    latencies: list[float] = []
    next_id, acked, sent = 1, 0, 0
    t0 = time.perf_counter()
    while acked < count:
        while sent < count and len(sent_at) < window:
            sent_at[next_id] = time.perf_counter()
            sock.sendall(encode_publish("bp/x", payload, 1, next_id))
            next_id = next_id % 65535 + 1
            sent += 1
        _t, _f, body = read_packet(sock, reader, 60, want=PUBACK)
        pid = (body[0] << 8) | body[1]
        start = sent_at.pop(pid, None)
        if start is not None:
            latencies.append(time.perf_counter() - start)
            acked += 1
    elapsed = time.perf_counter() - t0
    bye(sock)
    # one subscriber comes back: all N are there
    sock, reader, present = connect(port, ids[0], clean=False)
    got = 0
    try:
        while got < count:
            ptype, flags, body = read_packet(sock, reader, 30, want=PUBLISH)
            _topic, _qos, pid, _payload = parse_publish(flags, body)
            if pid:
                sock.sendall(encode_puback(pid))
            got += 1
    except TimeoutError:
        pass
    bye(sock)
    for cid in ids[1:]:  # clean up: the others' sessions go
        s, _r, _p = connect(port, cid, clean=True)
        bye(s)
    latencies.sort()
    return {
        "msg_per_s": count / elapsed,
        "stored_per_s": count * subs / elapsed,
        "p50_ms": statistics.median(latencies) * 1000,
        "p99_ms": latencies[int(len(latencies) * 0.99) - 1] * 1000,
        "delivered": got,
        "present": float(present),
    }


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--count", type=int, default=5000)
    ap.add_argument("--subs", type=int, default=10)
    ap.add_argument("--window", type=int, default=100)
    ap.add_argument("--targets", default="guard,mosquitto")
    a = ap.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="mqg-bench-persistent-"))
    procs: list[subprocess.Popen[bytes]] = []
    ports: dict[str, int] = {}
    try:
        rport = free_port()
        procs.append(
            subprocess.Popen(
                [
                    "redis-server",
                    "--port",
                    str(rport),
                    "--bind",
                    "127.0.0.1",
                    "--dir",
                    str(tmp),
                    "--save",
                    "",
                    "--appendonly",
                    "yes",
                    "--appendfsync",
                    "everysec",
                ],
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
        )
        wait_port(rport)
        targets = a.targets.split(",")
        if "guard" in targets:
            port = ports["guard"] = free_port()
            cfg = tmp / "guard.yaml"
            cfg.write_text(
                "auth:\n  allow_anonymous: true\nacl:\n  default: allow\n"
                f"limits:\n  max_queued_messages: {a.count + 100}\n  backpressure_max_stall: 0\n"
                "log:\n  level: warning\n"
            )
            procs.append(
                subprocess.Popen(
                    [
                        sys.executable,
                        "-m",
                        "mqtt_guard",
                        "--redis-url",
                        f"redis://127.0.0.1:{rport}/0",
                        "--prefix",
                        "bench:",
                        "broker",
                        "--config",
                        str(cfg),
                        "--bind",
                        f"127.0.0.1:{port}",
                    ],
                    cwd=ROOT,
                    stdout=subprocess.DEVNULL,
                    stderr=open(tmp / "guard.log", "wb"),
                )
            )
            wait_port(port)
        exe = shutil.which("mosquitto") or ("/usr/sbin/mosquitto" if Path("/usr/sbin/mosquitto").exists() else None)
        if "mosquitto" in targets and exe:
            port = ports["mosquitto"] = free_port()
            conf = tmp / "mosquitto.conf"
            conf.write_text(
                f"listener {port} 127.0.0.1\nallow_anonymous true\npersistence true\n"
                f"persistence_location {tmp}/\nmax_queued_messages {a.count + 100}\n"
            )
            procs.append(subprocess.Popen([exe, "-c", str(conf)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
            wait_port(port)
        results: dict[str, list[dict[str, float]]] = {name: [] for name in ports}
        for rd in range(a.rounds):
            order = list(ports) if rd % 2 == 0 else list(reversed(ports))
            for name in order:
                results[name].append(one_round(ports[name], a.subs, a.count, a.window))
        print(
            f"QoS 1 to {a.subs} offline persistent sessions, {a.count} messages, window {a.window}, {a.rounds} rounds"
        )
        print("| target | acked msg/s | stored msg/s | PUBACK p50 ms | PUBACK p99 ms | delivered on return |")
        print("|---|---|---|---|---|---|")
        for name, runs in results.items():

            def span(key: str, fmt: str = "{:,.0f}", runs: list[dict[str, float]] = runs) -> str:
                values = sorted(r[key] for r in runs)
                return fmt.format(values[0]) + ("" if len(values) == 1 else " - " + fmt.format(values[-1]))

            print(
                f"| {name} | {span('msg_per_s')} | {span('stored_per_s')} | {span('p50_ms', '{:.2f}')} | "
                f"{span('p99_ms', '{:.2f}')} | {span('delivered')} of {a.count} |"
            )
        return 0
    finally:
        for p in procs:
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
        for p in procs:
            try:
                p.wait(10)
            except subprocess.TimeoutExpired:
                p.kill()
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    raise SystemExit(main())
