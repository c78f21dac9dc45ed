"""Sidecar CPU with many idle sessions, before and after (issue 23; not collected by pytest).

    .venv/bin/python -m tests.bench.bench_sidecar [--clients 10000] [--window 20] [--before REV]
                                                  [--out tests/bench/results/sidecar.json]

One redis-server, one broker, N idle devices (a lean asyncio raw-socket client in a process of its own:
CONNECT with a username and password, keepalive 0, then nothing), each with a one-hour `session_time`.
Then, in the same minutes, for each sidecar:

* `before`: the sidecar of `--before` (default `main`: the commit before the deadline work; extracted
  with `git archive` and run from there), which evaluates every session every interval;
* `after`: this tree's sidecar (deadlines, events, sweep), default config (`sweep_interval` 10 min);
* `sweep`: this tree's sidecar with `sweep_interval` = `--sweep-window` seconds, to measure what one
  session costs the reconciliation sweep (and any evaluation: the sweep, deadline and event paths
  share one implementation);
* `connects`: this tree's sidecar while `--burst` more devices connect (one connect event each), to
  measure the cost of one event.

Each sidecar runs alone (the previous one stopped), is given `--settle` seconds (it takes the lead and
does its first sweep), then the sidecar's, the broker's and Redis' CPU (utime + stime from /proc) are
read over `--window` seconds. The projection to `--project` sessions adds to the measured idle cost
the sweep's share (sessions x µs per evaluation / sweep_interval) and the events (connects and
disconnects of session_time ends: sessions / session_time, one evaluation each, plus their deadlines).
Writes JSON to --out and prints a table.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import resource
import signal
import struct
import subprocess
import sys
import tarfile
import tempfile
import time
from pathlib import Path

from tests.helpers.servers import ROOT, BrokerProcess, RedisServer, guard_cmd, run_cli, wait_port

PREFIX = "benchsc:"
TICKS = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICKS  # utime, stime


# -- the idle devices (run as `--devices` in a process of their own) ------------------------------------
def _s(b: bytes) -> bytes:
    return struct.pack("!H", len(b)) + b


def _connect_packet(client_id: str, username: str, password: str) -> bytes:
    body = _s(b"MQTT") + bytes([4, 0xC2]) + struct.pack("!H", 0) + _s(client_id.encode())
    body += _s(username.encode()) + _s(password.encode())
    n, rl = len(body), bytearray()
    while True:
        b, n = n % 128, n // 128
        rl.append(b | (0x80 if n else 0))
        if not n:
            break
    return bytes([0x10]) + bytes(rl) + body


async def _devices(port: int, start: int, count: int, parallel: int) -> None:
    writers = []
    sem = asyncio.Semaphore(parallel)
    failed = 0

    async def one(i: int) -> None:
        nonlocal failed
        async with sem:
            for _ in range(5):
                try:
                    reader, writer = await asyncio.open_connection("127.0.0.1", port)
                    writer.write(_connect_packet(f"dev-{i}", "dev", "pw"))
                    ack = await asyncio.wait_for(reader.readexactly(4), 30)
                    if ack[3] == 0:
                        writers.append((reader, writer))
                        return
                    writer.close()
                except (OSError, asyncio.IncompleteReadError, TimeoutError):
                    pass
                await asyncio.sleep(0.5)
            failed += 1

    await asyncio.gather(*(one(i) for i in range(start, start + count)))
    print(f"connected {len(writers)} failed {failed}", flush=True)
    await asyncio.get_running_loop().run_in_executor(None, sys.stdin.readline)  # held until told
    for _, w in writers:
        w.close()


def start_devices(port: int, start: int, count: int) -> subprocess.Popen:
    proc = subprocess.Popen(
        [sys.executable, "-m", "tests.bench.bench_sidecar", "--devices", str(port), str(start), str(count)],
        cwd=ROOT,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    assert proc.stdout is not None
    line = proc.stdout.readline().strip()
    print(f"  devices {start}..{start + count - 1}: {line}", flush=True)
    return proc


def stop_devices(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        assert proc.stdin is not None
        proc.stdin.close()
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


# -- sidecars ----------------------------------------------------------------------------------------
def extract(rev: str) -> Path:
    """The tree of `rev` (its `mqtt_guard` package) in a temp dir, to run its sidecar from there."""
    tmp = Path(tempfile.mkdtemp(prefix="mqg-before-"))
    archive = subprocess.run(["git", "archive", rev, "mqtt_guard"], cwd=ROOT, capture_output=True, check=True)
    tar_path = tmp / "tree.tar"
    tar_path.write_bytes(archive.stdout)
    with tarfile.open(tar_path) as tar:
        tar.extractall(tmp, filter="data")
    return tmp


def start_sidecar(redis_url: str, cwd: Path, config: Path) -> subprocess.Popen:
    cmd = guard_cmd("--redis-url", redis_url, "--prefix", PREFIX, "sidecar", "-c", str(config))
    return subprocess.Popen(cmd, cwd=cwd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def stop(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def measure(pids: dict[str, int], seconds: float) -> dict[str, float]:
    before = {name: cpu_seconds(pid) for name, pid in pids.items()}
    time.sleep(seconds)
    return {name: (cpu_seconds(pid) - before[name]) / seconds * 100 for name, pid in pids.items()}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--clients", type=int, default=10_000)
    ap.add_argument("--window", type=float, default=20.0, help="seconds of CPU measurement per sidecar")
    ap.add_argument("--settle", type=float, default=8.0, help="seconds a sidecar runs before its window")
    ap.add_argument("--before", default="main", help="git revision of the `before` sidecar ('' = skip)")
    ap.add_argument("--sweep-window", type=float, default=20.0, help="sweep_interval of the `sweep` run")
    ap.add_argument("--burst", type=int, default=2000, help="devices connecting during the `connects` run")
    ap.add_argument("--project", type=int, default=100_000)
    ap.add_argument("--out", default=str(ROOT / "tests/bench/results/sidecar.json"))
    ap.add_argument("--devices", nargs=3, type=int, help=argparse.SUPPRESS)
    a = ap.parse_args(argv)
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    if a.devices:
        port, start, count = a.devices
        asyncio.run(_devices(port, start, count, parallel=200))
        return 0
    if hard < a.clients + a.burst + 500:
        print(f"open-files limit {hard} is below {a.clients + a.burst + 500}: raise it (ulimit -Hn)")
        return 2

    tmp = Path(tempfile.mkdtemp(prefix="mqg-bench-sidecar-"))
    redis_server = RedisServer().start()
    procs: list[subprocess.Popen] = []
    broker: BrokerProcess | None = None
    results: dict[str, object] = {"clients": a.clients, "window_s": a.window, "rev_before": a.before}
    try:
        url = redis_server.url
        for args in (
            ("user", "add", "dev", "--password-stdin"),
            ("quota", "set", "dev", "--session-time", "1h", "--sessions", str(10 * a.clients)),
        ):
            cp = run_cli(url, PREFIX, *args, input="pw\n")
            assert cp.returncode == 0, cp.stderr
        port = BrokerProcess(url, PREFIX).port
        broker_cfg = tmp / "broker.yaml"
        broker_cfg.write_text(f"listeners:\n  - bind: 127.0.0.1:{port}\n    max_connections: {2 * a.clients + 1000}\n")
        broker = BrokerProcess(url, PREFIX, args=["--config", str(broker_cfg)], port=port, bind=False).start()
        wait_port(port)
        print(f"connecting {a.clients} idle devices ...", flush=True)
        t0 = time.monotonic()
        procs.append(start_devices(port, 0, a.clients))
        print(f"  in {time.monotonic() - t0:.1f} s; letting the broker settle", flush=True)
        time.sleep(5)
        assert broker.proc is not None and redis_server.proc is not None
        pids = {"broker": broker.proc.pid, "redis": redis_server.proc.pid}
        cfg_default = tmp / "sidecar.yaml"
        cfg_default.write_text("sidecar:\n  interval: 1s\n")
        cfg_sweep = tmp / "sidecar-sweep.yaml"
        cfg_sweep.write_text(f"sidecar:\n  interval: 1s\n  sweep_interval: {a.sweep_window:g}s\n")
        runs: list[tuple[str, Path, Path]] = []
        if a.before:
            runs.append(("before", extract(a.before), cfg_default))
        runs += [("after", ROOT, cfg_default), ("sweep", ROOT, cfg_sweep), ("connects", ROOT, cfg_default)]
        baseline = measure(pids, a.window)
        results["no_sidecar"] = baseline
        print(f"  no sidecar: {fmt(baseline)}", flush=True)
        for name, cwd, cfg in runs:
            sidecar = start_sidecar(url, cwd, cfg)
            try:
                # The sweep run: its window starts once the first sweep at leadership is over and covers
                # exactly two of its sweeps (each spread over 0.9 x sweep_interval).
                time.sleep(a.sweep_window + 0.5 if name == "sweep" else a.settle)
                if name == "connects":
                    burst_pids = {**pids, "sidecar": sidecar.pid}
                    before = {n: cpu_seconds(p) for n, p in burst_pids.items()}
                    t0 = time.monotonic()
                    extra = start_devices(port, a.clients, a.burst)
                    procs.append(extra)
                    time.sleep(3)  # every connect evaluated (next tick) and timed
                    took = time.monotonic() - t0
                    used = {n: cpu_seconds(p) - before[n] for n, p in burst_pids.items()}
                    idle = results["after"]["sidecar"] / 100 * took  # type: ignore[index]
                    results["per_connect_us"] = (used["sidecar"] - idle) / a.burst * 1e6
                    print(f"  connects: sidecar µs per connect event {results['per_connect_us']:.0f}", flush=True)
                    stop_devices(extra)
                    continue
                got = measure({**pids, "sidecar": sidecar.pid}, 2 * a.sweep_window if name == "sweep" else a.window)
                results[name] = got
                print(f"  {name}: {fmt(got)}", flush=True)
            finally:
                stop(sidecar)
            time.sleep(1)
        after = results["after"]["sidecar"]  # type: ignore[index]
        sweep = results["sweep"]["sidecar"]  # type: ignore[index]
        per_eval_us = max(0.0, (sweep - after) / 100 / (a.clients / a.sweep_window)) * 1e6
        results["per_eval_us"] = per_eval_us
        n, sweep_interval, session_time = a.project, 600.0, 3600.0
        fixed = after  # (the window saw no sweep slice: the first sweep comes sweep_interval after the lead)
        projection = {
            "sessions": n,
            "fixed_pct": max(0.0, fixed),
            "sweep_pct": n * per_eval_us / 1e6 / sweep_interval * 100,
            "events_pct": n / session_time * (per_eval_us + results["per_connect_us"]) / 1e6 * 100,  # type: ignore[operator]
        }
        projection["total_pct"] = projection["fixed_pct"] + projection["sweep_pct"] + projection["events_pct"]
        at_n = {
            "sweep_pct": a.clients * per_eval_us / 1e6 / sweep_interval * 100,
            "events_pct": a.clients / session_time * (per_eval_us + results["per_connect_us"]) / 1e6 * 100,  # type: ignore[operator]
        }
        results["after_with_sweep_share_pct"] = after + at_n["sweep_pct"]
        results["projection"] = projection
        print(
            f"sidecar after, with the sweep's share (600 s): {results['after_with_sweep_share_pct']:.2f} % of a core; "
            f"µs per evaluation {per_eval_us:.0f}; projection to {n}: {projection['total_pct']:.2f} % "
            f"(fixed {projection['fixed_pct']:.2f}, sweep {projection['sweep_pct']:.2f}, "
            f"session_time ends and reconnects {projection['events_pct']:.2f})",
            flush=True,
        )
        out = Path(a.out)
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(results, indent=2))
        print(f"written {out}")
    finally:
        for p in procs:
            stop_devices(p)
        if broker is not None:
            broker.stop(signal.SIGINT)
        redis_server.cleanup()
    return 0


def fmt(cpu: dict[str, float]) -> str:
    return ", ".join(f"{name} {pct:.1f} %" for name, pct in cpu.items())


if __name__ == "__main__":
    sys.exit(main())
