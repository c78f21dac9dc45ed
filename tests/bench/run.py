"""Benchmark harness (issue 7): plain amqtt, mosquitto, mqtt-guard with guards off / on.

    .venv/bin/python -m tests.bench.run                 # 3 rounds, all cases, all targets
    .venv/bin/python -m tests.bench.run --quick         # short smoke run (1 round)
    .venv/bin/python tests/bench/run.py --rounds 5 --targets amqtt,guard-off --cases fanin_qos0

Starts its own redis-server and every broker target on free 127.0.0.1 ports,
runs every case against every target (round -> case -> target, target order
rotated each round), each run in a separate load-generator process
(``loadgen.py``), and writes ``runs.jsonl`` (appended), ``summary.json`` and
``summary.md`` to ``--out``. Everything it starts is stopped by PID, also on
Ctrl-C and on errors. See README.md for what the numbers mean.
"""

from __future__ import annotations

import argparse
import atexit
import datetime as _dt
import json
import os
import platform
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
    __package__ = "tests.bench"

from . import mqttraw as mr

BENCH_DIR = Path(__file__).resolve().parent
REPO = BENCH_DIR.parents[1]
VENV_BIN = REPO / ".venv" / "bin"
LOADGEN = BENCH_DIR / "loadgen.py"
CONNS = BENCH_DIR / "conns.py"
CLK_TCK = os.sysconf("SC_CLK_TCK")

ALL_TARGETS = ("amqtt", "mosquitto", "guard-off", "guard-on")
ALL_CASES = (
    "fanin_qos0",
    "fanin5_qos0",
    "fanin_qos1",
    "fanin5_qos1",
    "fanout_qos0",
    "fanout5_qos0",
    "connect_rate",
    "latency",
    "iot",
    "connections",
)
# highest MQTT protocol level a target speaks (5 unless listed): amqtt 0.12 refuses MQTT 5 CONNECTs,
# so the MQTT 5 cases show "n/a" for it instead of a failure
MAX_LEVEL = {"amqtt": 4}
GUARD_PREFIX = "bench:"

# --------------------------------------------------------------------------
# guard-off / guard-on
# --------------------------------------------------------------------------

# guard-off: the mqtt-guard broker with its guards as far off as the config
# allows, to measure the engine's own cost against plain amqtt.
GUARD_OFF = {
    "broker_args": ["--allow-anonymous"],
    # Since the Redis ACL landed (default deny), an anonymous client may not
    # even SUBSCRIBE without a rule, so guard-off sets the ACL default to allow.
    # Return {} to run the bare command line of the issue (no --config).
    # (The analytics counters and their flush to Redis cannot be switched off: they run here too.)
    "config": lambda ctx: {"acl": {"default": "allow"}},
}

GUARD_ON = {
    # every client of the guard-on target (publishers, subscribers, connect_rate)
    # authenticates with this user; created with `mqtt-guard ... user add`
    "username": "bench",
    "password": "bench-Pw-7f3a9c",
    # ACL rules written to Redis for that user: HSET bench:acl:user:bench <filter> <access>
    "acl_key": GUARD_PREFIX + "acl:user:bench",
    "acl_rules": 1000,  # total; one of them is acl_match_filter
    "acl_match_filter": "bench/#",
    "acl_access": "readwrite",
    # the bench user's quota (`mqtt-guard quota set bench ...`, docs/quotas.md): every per-message limit
    # on (events in and out, bytes, publish rate token bucket, sessions, slow-consumer marks), all far
    # above what a run sends, so the cost of the accounting is measured, not denials
    "quota_args": [
        "--events",
        "2000000000/1d",
        "--events-direction",
        "both",
        "--bytes",
        "500GB/1d",
        "--rate",
        "5000000/s:5000000",
        "--sessions",
        "100000",
        "--max-queue",
        "100000",
        "--queue-grace",
        "60s",
    ],
    # broker arguments on top of `--redis-url U --prefix bench: broker --bind H:P --config FILE`.
    # No --allow-anonymous here: on the command line it overrides the config's
    # auth.allow_anonymous=false, and guard-on must refuse anonymous clients.
    "broker_args": [],
    # guard features the config below does not switch on; listed in the summary so guard-on numbers are
    # not mistaken for the full guard (empty: everything is on)
    "pending": [],
}


def guard_on_config(ctx: Ctx) -> dict:
    """The YAML document passed as ``broker --config FILE`` to the guard-on target.

    Keys follow mqtt_guard/config.py (validated strictly, unknown keys stop the broker). Listeners come
    from --bind; redis url/prefix from the CLI flags. Every guard is on: password auth (anonymous
    refused), the Redis ACL (default deny, 1,000 rules for the bench user), quotas (the bench user's
    limits, written in setup_guard_on) and analytics (counters flushed to Redis every second, per-user
    and top-N series, /metrics served, $SYS published).
    """
    return {
        "redis": {"url": ctx.redis_url, "prefix": GUARD_PREFIX},
        # every client authenticates with a password; anonymous clients refused
        "auth": {"allow_anonymous": False},
        # topic ACLs from Redis, default deny: only the bench user's bench/# rule lets traffic through
        "acl": {"default": "deny"},
        # analytics (docs/analytics.md)
        "metrics": {
            "flush_interval": "1s",
            "prometheus_bind": f"127.0.0.1:{ctx.metrics_port}",
            "per_user_allowlist": [GUARD_ON["username"]],
            "top_n": 10,
            "sys_interval": "10s",
        },
        "plugins": {"mqtt_guard.plugins.sys.GuardSysPlugin": {}},
    }


def acl_filters(n: int, match_filter: str) -> list[str]:
    """``n`` ACL filters: ``match_filter`` plus realistic filters that never match bench/..."""
    out = [match_filter]
    patterns = (
        "devices/d-{i}/+/state",
        "devices/d-{i}/telemetry/#",
        "sites/s-{s}/d-{i}/cmd",
        "fleet/{s}/+/d-{i}/status",
    )
    i = 0
    while len(out) < n:
        out.append(patterns[i % len(patterns)].format(i=i, s=i % 37))
        i += 1
    return out


# --------------------------------------------------------------------------
# process bookkeeping: everything we start is stopped by its PID
# --------------------------------------------------------------------------


class Procs:
    def __init__(self):
        self.live: dict[int, tuple[str, subprocess.Popen, int]] = {}

    def start(
        self, name: str, argv: list[str], log_path: Path | None, stop_signal=signal.SIGTERM, **kw
    ) -> subprocess.Popen:
        out = open(log_path, "ab") if log_path else subprocess.DEVNULL
        try:
            # own session: a terminal Ctrl-C reaches only the harness, which then
            # stops the children itself (amqtt must get SIGINT to shut down cleanly)
            p = subprocess.Popen(
                argv,
                stdout=out,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,
                cwd=kw.pop("cwd", str(REPO)),
                **kw,
            )
        finally:
            if log_path:
                out.close()
        self.live[p.pid] = (name, p, stop_signal)
        return p

    def stop(self, pid: int, timeout: float = 5.0) -> int | None:
        entry = self.live.pop(pid, None)
        if entry is None:
            return None
        _name, p, sig = entry
        if p.poll() is None:
            for s, wait in ((sig, timeout), (signal.SIGKILL, 3.0)):
                try:
                    os.kill(p.pid, s)
                except ProcessLookupError:
                    break
                try:
                    p.wait(wait)
                    break
                except subprocess.TimeoutExpired:
                    continue
        # children the process left behind in its own session (process group == its pid)
        try:
            os.killpg(p.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
        return p.returncode

    def stop_all(self) -> None:
        for pid in list(self.live)[::-1]:
            try:
                self.stop(pid)
            except Exception as e:  # keep stopping the others
                print(f"warning: could not stop pid {pid}: {e}", file=sys.stderr)


PROCS = Procs()
atexit.register(PROCS.stop_all)


def _sigterm(_signo, _frame):
    raise KeyboardInterrupt("SIGTERM")


# --------------------------------------------------------------------------
# helpers
# --------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def tail(path: Path, n: int = 8) -> str:
    try:
        lines = path.read_text(errors="replace").strip().splitlines()
    except OSError:
        return ""
    return " | ".join(x.strip() for x in lines[-n:])[-800:]


def proc_ticks(pid: int) -> int | None:
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            data = f.read()
    except OSError:
        return None
    fields = data[data.rindex(b")") + 2 :].split()
    return int(fields[11]) + int(fields[12])


def rss_mb(pid: int) -> float | None:
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return round(int(line.split()[1]) / 1024, 1)
    except OSError:
        return None
    return None


def wait_idle(pid: int, max_wait: float = 10.0, threshold_pct: float = 10.0, window: float = 0.3) -> float:
    """Wait until ``pid`` uses < threshold % CPU over ``window`` s; return seconds waited."""
    t0 = time.monotonic()
    while time.monotonic() - t0 < max_wait:
        a = proc_ticks(pid)
        time.sleep(window)
        b = proc_ticks(pid)
        if a is None or b is None:
            break
        if (b - a) / CLK_TCK / window * 100 < threshold_pct:
            break
    return round(time.monotonic() - t0, 2)


def redis_ping(port: int, timeout: float = 1.0) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=timeout) as s:
            s.sendall(b"*1\r\n$4\r\nPING\r\n")
            return s.recv(64).startswith(b"+PONG")
    except OSError:
        return False


def machine_busy(window: float) -> float | None:
    """Whole-machine CPU use over ``window`` s, out of nproc*100 %."""

    def idle() -> int:
        with open("/proc/stat") as f:
            v = [int(x) for x in f.readline().split()[1:9]]
        return v[3] + v[4]

    try:
        i0, t0 = idle(), time.monotonic()
        time.sleep(window)
        i1, t1 = idle(), time.monotonic()
    except OSError:
        return None
    ncpu = os.cpu_count() or 1
    return round(max(0.0, ncpu * 100 - (i1 - i0) / CLK_TCK / (t1 - t0) * 100), 1)


def machine_facts() -> dict:
    facts = {
        "nproc": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count(),
        "cpu_count": os.cpu_count(),
        "cpu_model": None,
        "python": platform.python_version(),
        "python_executable": sys.executable,
        "kernel": platform.release(),
        "hostname": platform.node(),
    }
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                facts["cpu_model"] = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                facts["mem_gib"] = round(int(line.split()[1]) / 1024 / 1024, 1)
    except OSError:
        pass
    try:
        import importlib.metadata as md

        for pkg in ("amqtt", "redis", "uvloop"):
            try:
                facts[f"{pkg}_version"] = md.version(pkg)
            except md.PackageNotFoundError:
                pass
    except ImportError:
        pass
    for key, argv in (
        ("mosquitto_version", ["mosquitto", "-h"]),
        ("redis_server_version", ["redis-server", "--version"]),
    ):
        if shutil.which(argv[0]):
            try:
                txt = subprocess.run(argv, capture_output=True, text=True, timeout=5).stdout
                facts[key] = txt.strip().splitlines()[0] if txt.strip() else None
            except (OSError, subprocess.SubprocessError):
                pass
    try:
        facts["git_commit"] = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True, text=True, timeout=5
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        pass
    return facts


# --------------------------------------------------------------------------
# targets
# --------------------------------------------------------------------------


class Unavailable(Exception):
    pass


@dataclass
class Ctx:
    tmp: Path
    redis_port: int | None = None
    redis_pid: int | None = None
    redis_error: str | None = None
    metrics_port: int = 0  # guard-on's /metrics

    @property
    def redis_url(self) -> str:
        return f"redis://127.0.0.1:{self.redis_port}/0"


@dataclass
class TargetSpec:
    name: str
    argv: list[str]
    port: int
    username: str | None = None
    password: str | None = None
    stop_signal: int = signal.SIGINT
    notes: list[str] = field(default_factory=list)


@dataclass
class Target:
    name: str
    status: str = "pending"  # running | unavailable | died
    reason: str | None = None
    spec: TargetSpec | None = None
    proc: subprocess.Popen | None = None
    log: Path | None = None
    counts: dict = field(default_factory=dict)  # case -> per-client count
    calib: dict = field(default_factory=dict)

    @property
    def available(self) -> bool:
        return self.status == "running"


def guard_cli(ctx: Ctx) -> list[str]:
    """How to invoke the mqtt-guard CLI: this tree's module (cwd = the tree: in a git worktree the venv's
    console script would import the package the venv was installed from), else the console script."""
    exe = VENV_BIN / "mqtt-guard"
    if (REPO / "mqtt_guard" / "cli" / "main.py").exists():
        py = VENV_BIN / "python"
        return [
            str(py if py.exists() else sys.executable),
            "-c",
            "import sys; from mqtt_guard.cli.main import main; sys.exit(main())",
        ]
    if exe.exists():
        return [str(exe)]
    raise Unavailable(f"mqtt-guard CLI not found ({exe} missing and mqtt_guard/cli/main.py absent)")


def need_redis(ctx: Ctx) -> None:
    if not ctx.redis_port:
        raise Unavailable(f"redis-server not running: {ctx.redis_error}")


def target_amqtt(ctx: Ctx, port: int) -> TargetSpec:
    exe = VENV_BIN / "amqtt"
    if not exe.exists():  # (a git worktree has no .venv of its own: the interpreter's venv, else PATH)
        exe = Path(sys.executable).with_name("amqtt")
    if not exe.exists():
        found = shutil.which("amqtt")
        if not found:
            raise Unavailable("amqtt CLI not found")
        exe = Path(found)
    cfg = ctx.tmp / "amqtt.yaml"
    cfg.write_text(
        "listeners:\n"
        "  default:\n"
        "    type: tcp\n"
        f"    bind: 127.0.0.1:{port}\n"
        "plugins:\n"
        "  amqtt.plugins.authentication.AnonymousAuthPlugin:\n"
        "    allow_anonymous: true\n"
    )
    return TargetSpec(
        "amqtt",
        [str(exe), "-c", str(cfg)],
        port,
        stop_signal=signal.SIGINT,
        notes=["plain amqtt CLI, one tcp listener, AnonymousAuthPlugin only"],
    )


def target_mosquitto(ctx: Ctx, port: int) -> TargetSpec:
    exe = shutil.which("mosquitto") or ("/usr/sbin/mosquitto" if Path("/usr/sbin/mosquitto").exists() else None)
    if not exe:
        raise Unavailable("mosquitto not installed")
    cfg = ctx.tmp / "mosquitto.conf"
    cfg.write_text(f"listener {port} 127.0.0.1\nallow_anonymous true\n")
    return TargetSpec(
        "mosquitto",
        [exe, "-c", str(cfg)],
        port,
        stop_signal=signal.SIGTERM,
        notes=[
            "default limits: max_queued_messages 1000, max_inflight_messages 20 "
            "(QoS1 fan-in drops what overflows the subscriber queue)"
        ],
    )


def guard_base_argv(ctx: Ctx, port: int) -> list[str]:
    return guard_cli(ctx) + [
        "--redis-url",
        ctx.redis_url,
        "--prefix",
        GUARD_PREFIX,
        "broker",
        "--bind",
        f"127.0.0.1:{port}",
    ]


def target_guard_off(ctx: Ctx, port: int) -> TargetSpec:
    need_redis(ctx)
    argv = guard_base_argv(ctx, port) + list(GUARD_OFF["broker_args"])
    notes = ["mqtt-guard broker, anonymous clients"]
    doc = GUARD_OFF["config"](ctx)
    if doc:
        cfg = ctx.tmp / "guard-off.yaml"
        write_yaml(cfg, doc)
        argv += ["--config", str(cfg)]
        notes.append("config: " + json.dumps(doc))
    return TargetSpec("guard-off", argv, port, notes=notes)


def setup_guard_on(ctx: Ctx) -> list[str]:
    """Create the bench user (CLI, password on stdin) and its ACL rules (redis-py)."""
    argv = guard_cli(ctx) + [
        "--redis-url",
        ctx.redis_url,
        "--prefix",
        GUARD_PREFIX,
        "user",
        "add",
        GUARD_ON["username"],
        "--password-stdin",
    ]
    try:
        r = subprocess.run(
            argv, input=GUARD_ON["password"] + "\n", capture_output=True, text=True, timeout=30, cwd=REPO
        )
    except (OSError, subprocess.SubprocessError) as e:
        raise Unavailable(f"`mqtt-guard user add` failed to run: {e}") from e
    if r.returncode != 0:
        msg = (r.stderr or r.stdout).strip().splitlines()
        raise Unavailable(f"`mqtt-guard user add` exited {r.returncode}: {' | '.join(msg[-3:])[-400:]}")
    try:
        import redis  # redis-py, a project dependency
    except ImportError as e:
        raise Unavailable(f"redis-py not importable in {sys.executable}: {e}") from e
    try:
        rc = redis.Redis(host="127.0.0.1", port=ctx.redis_port, db=0, socket_timeout=10)
        filters = acl_filters(GUARD_ON["acl_rules"], GUARD_ON["acl_match_filter"])
        rc.delete(GUARD_ON["acl_key"])
        rc.hset(GUARD_ON["acl_key"], mapping={f: GUARD_ON["acl_access"] for f in filters})
        n = rc.hlen(GUARD_ON["acl_key"])
        rc.close()
    except Exception as e:
        raise Unavailable(f"writing ACL rules to Redis failed: {type(e).__name__}: {e}") from e
    if n != GUARD_ON["acl_rules"]:
        raise Unavailable(f"expected {GUARD_ON['acl_rules']} ACL rules in {GUARD_ON['acl_key']}, found {n}")
    argv = guard_cli(ctx) + [
        "--redis-url",
        ctx.redis_url,
        "--prefix",
        GUARD_PREFIX,
        "quota",
        "set",
        GUARD_ON["username"],
        *GUARD_ON["quota_args"],
    ]
    try:
        r = subprocess.run(argv, capture_output=True, text=True, timeout=30, cwd=REPO)
    except (OSError, subprocess.SubprocessError) as e:
        raise Unavailable(f"`mqtt-guard quota set` failed to run: {e}") from e
    if r.returncode != 0:
        msg = (r.stderr or r.stdout).strip().splitlines()
        raise Unavailable(f"`mqtt-guard quota set` exited {r.returncode}: {' | '.join(msg[-3:])[-400:]}")
    return [
        f"user {GUARD_ON['username']} created via CLI; {n} ACL rules in {GUARD_ON['acl_key']} "
        f"(1 matching {GUARD_ON['acl_match_filter']!r}); quota: `quota set {GUARD_ON['username']} "
        f"{' '.join(GUARD_ON['quota_args'])}`"
    ]


def check_metrics_endpoint(port: int) -> str:
    """guard-on's analytics really run: /metrics answers with the broker's counters."""
    import urllib.request

    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as resp:
            body = resp.read().decode(errors="replace")
    except OSError as e:
        raise Unavailable(f"analytics: /metrics on 127.0.0.1:{port} does not answer: {e}") from e
    if "mqtt_guard" not in body:
        raise Unavailable(f"analytics: /metrics on 127.0.0.1:{port} has no mqtt_guard series")
    return f"/metrics on 127.0.0.1:{port}: {sum(1 for x in body.splitlines() if x and x[0] != '#')} samples"


def write_yaml(path: Path, doc: dict) -> None:
    try:
        import yaml

        path.write_text(yaml.safe_dump(doc, sort_keys=False))
    except ImportError:
        path.write_text(json.dumps(doc, indent=2))  # JSON is valid YAML


def target_guard_on(ctx: Ctx, port: int) -> TargetSpec:
    need_redis(ctx)
    ctx.metrics_port = free_port()
    argv = guard_base_argv(ctx, port)  # raises Unavailable if the CLI is missing
    notes = setup_guard_on(ctx)
    cfg = ctx.tmp / "guard-on.yaml"
    write_yaml(cfg, guard_on_config(ctx))
    notes.append("config: " + json.dumps(guard_on_config(ctx)))
    if GUARD_ON["pending"]:
        notes.append(f"NOT YET ON: {', '.join(GUARD_ON['pending'])} (tests/bench/run.py guard_on_config)")
    return TargetSpec(
        "guard-on",
        argv + list(GUARD_ON["broker_args"]) + ["--config", str(cfg)],
        port,
        username=GUARD_ON["username"],
        password=GUARD_ON["password"],
        notes=notes,
    )


TARGET_BUILDERS: dict[str, Callable[[Ctx, int], TargetSpec]] = {
    "amqtt": target_amqtt,
    "mosquitto": target_mosquitto,
    "guard-off": target_guard_off,
    "guard-on": target_guard_on,
}


def broker_smoke(spec: TargetSpec, timeout: float = 5.0) -> None:
    """CONNECT, SUBSCRIBE bench/#, PUBLISH one message to bench/..., receive it."""
    sock, reader = mr.mqtt_connect("127.0.0.1", spec.port, "bench-smoke", spec.username, spec.password, timeout=timeout)
    try:
        mr.mqtt_subscribe(sock, reader, "bench/#", 0, timeout=timeout)
        sock.sendall(mr.encode_publish("bench/smoke/x", b"ping"))
        deadline = time.monotonic() + timeout
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError("own PUBLISH to bench/smoke/x was not delivered back")
            _t, flags, body = mr.read_packet(sock, reader, left, want=mr.PUBLISH)
            topic, *_ = mr.parse_publish(flags, body)
            if topic == "bench/smoke/x":
                break
        sock.sendall(mr.encode_disconnect())
    finally:
        sock.close()


def start_target(ctx: Ctx, name: str, startup_timeout: float) -> Target:
    t = Target(name)
    port = free_port()
    try:
        spec = TARGET_BUILDERS[name](ctx, port)
    except Unavailable as e:
        t.status, t.reason = "unavailable", str(e)
        return t
    t.spec = spec
    t.log = ctx.tmp / f"{name}.log"
    try:
        t.proc = PROCS.start(name, spec.argv, t.log, stop_signal=spec.stop_signal)
    except OSError as e:
        t.status, t.reason = "unavailable", f"could not start {spec.argv[0]}: {e}"
        return t
    deadline = time.monotonic() + startup_timeout
    last_err = "no answer"
    while time.monotonic() < deadline:
        if t.proc.poll() is not None:
            t.status = "unavailable"
            t.reason = f"exited with code {t.proc.returncode} at startup: {tail(t.log, 4)}"
            PROCS.stop(t.proc.pid)
            return t
        try:
            broker_smoke(spec)
            if name == "guard-on":
                try:
                    spec.notes.append(check_metrics_endpoint(ctx.metrics_port))
                except Unavailable as e:
                    t.status, t.reason = "unavailable", str(e)
                    PROCS.stop(t.proc.pid)
                    return t
            t.status = "running"
            return t
        except ConnectionRefusedError as e:  # not listening yet, or CONNACK refusal
            last_err = str(e)
            if "CONNACK" in last_err:
                break
        except (OSError, mr.ProtocolError, TimeoutError) as e:
            last_err = f"{type(e).__name__}: {e}"
            if isinstance(e, PermissionError):
                break
        time.sleep(0.2)
    t.status = "unavailable"
    t.reason = f"not usable within {startup_timeout:.0f}s: {last_err}; log: {tail(t.log, 3)}"
    PROCS.stop(t.proc.pid)
    return t


def start_redis(ctx: Ctx) -> None:
    exe = shutil.which("redis-server")
    if not exe:
        ctx.redis_error = "redis-server not installed"
        return
    port = free_port()
    data = ctx.tmp / "redis"
    data.mkdir()
    argv = [
        exe,
        "--port",
        str(port),
        "--bind",
        "127.0.0.1",
        "--save",
        "",
        "--appendonly",
        "no",
        "--dir",
        str(data),
        "--daemonize",
        "no",
        "--protected-mode",
        "no",
    ]
    p = PROCS.start("redis", argv, ctx.tmp / "redis.log", stop_signal=signal.SIGTERM)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        if p.poll() is not None:
            ctx.redis_error = f"redis-server exited {p.returncode}: {tail(ctx.tmp / 'redis.log', 3)}"
            PROCS.stop(p.pid)
            return
        if redis_ping(port):
            ctx.redis_port, ctx.redis_pid = port, p.pid
            return
        time.sleep(0.1)
    ctx.redis_error = "redis-server did not answer PING within 10s"
    PROCS.stop(p.pid)


# --------------------------------------------------------------------------
# cases and runs
# --------------------------------------------------------------------------

# kind "burst": the count (messages per publisher) is calibrated per target so
# that a run lasts about --run-seconds; "timed": fixed duration.
CASES = {
    "fanin_qos0": {
        "kind": "burst",
        "args": ["--pubs", "4"],
        "clients": 4,
        "per": "pub",
        "probe": 500,
        "min": 100,
        "max": 500_000,
        "desc": "4 publishers -> 1 subscriber on bench/#, 64 B, QoS0; delivered msg/s",
    },
    "fanin_qos1": {
        "kind": "burst",
        "args": ["--pubs", "4", "--window", "100"],
        "clients": 4,
        "per": "pub",
        "probe": 250,
        "min": 100,
        "max": 60_000,
        "desc": "same, publishers QoS1 with 100 un-PUBACKed in flight each, subscriber QoS1; delivered msg/s",
    },
    "fanout_qos0": {
        "kind": "burst",
        "args": ["--subs", "10"],
        "clients": 10,
        "per": "sub",
        "probe": 500,
        "min": 100,
        "max": 400_000,
        "desc": "1 publisher -> 10 subscribers on bench/fan, QoS0; deliveries/s",
    },
    "connect_rate": {
        "kind": "timed",
        "args": ["--concurrency", "4"],
        "desc": "4 concurrent raw clients: CONNECT(+user/pass if auth)+CONNACK+DISCONNECT+close; conn/s",
    },
    "latency": {
        "kind": "timed",
        "args": ["--rate", "1000"],
        "desc": "1 publisher -> 1 subscriber, paced 1,000 msg/s QoS0; end-to-end latency",
    },
    "iot": {
        "kind": "timed",
        "args": ["--clients", "1000", "--client-rate", "3", "--workers", "4", "--setup-timeout", "90"],
        "desc": "1,000 connected devices (keepalive 60), each publishing 3 QoS0 msg/s to its own topic "
        "(3,000 msg/s in all, evenly paced) -> 1 subscriber on bench/#; broker CPU per message "
        "and end-to-end latency",
    },
    "connections": {
        "kind": "conns",
        "once": True,  # first round only: ~1-2 min per target (amqtt connects ~450 clients/s); make bench < 10 min
        "desc": "N idle connections (keep-alive 60, clean session; 10,000, --quick 300): broker RSS per "
        "connection; the latency case (1,000 msg/s) while they are connected; then 20 cycles of M clients "
        "(1,000, --quick 100) connecting and disconnecting with the same client ids: RSS after the last "
        "cycle against after the first (issue 15)",
    },
}

# MQTT 5 twins of the burst cases (issue 16 item 7): the same load generator case ("loadgen") with every
# client speaking MQTT 5 (empty property blocks), to hold the v5 figures against the 3.1.1 ones
for _base in ("fanin_qos0", "fanin_qos1", "fanout_qos0"):
    CASES[_base.replace("_", "5_", 1)] = {
        **CASES[_base],
        "args": CASES[_base]["args"] + ["--level", "5"],
        "loadgen": _base,
        "level": 5,
        "desc": f"`{_base}` with MQTT 5 clients (CONNECT level 5, SUBSCRIBE options, PUBLISH with empty properties)",
    }


def unsupported(target: str, case: str) -> str | None:
    """Why ``target`` cannot run ``case`` (its MQTT level), or None."""
    level = CASES[case].get("level", 4)
    return f"{target} does not speak MQTT {level}" if level > MAX_LEVEL.get(target, 5) else None


# metrics tabulated per case: (label, path into the run record, higher is better)
METRICS = {
    "fanin_qos0": [("msg/s", ("rate",), True)],
    "fanin5_qos0": [("msg/s", ("rate",), True)],
    "fanin_qos1": [("msg/s", ("rate",), True)],
    "fanin5_qos1": [("msg/s", ("rate",), True)],
    "fanout_qos0": [("deliveries/s", ("rate",), True)],
    "fanout5_qos0": [("deliveries/s", ("rate",), True)],
    # CPU per connection too: with 4 clients in a closed loop a fast broker is not always busy (a CONNACK
    # has to reach the client and its next CONNECT come back), so conn/s understates what it can take
    "connect_rate": [("conn/s", ("rate",), True), ("broker CPU µs/conn", ("broker_us_per_msg",), False)],
    "latency": [
        ("p50 µs", ("latency_us", "p50"), False),
        ("p90 µs", ("latency_us", "p90"), False),
        ("p99 µs", ("latency_us", "p99"), False),
        ("max µs", ("latency_us", "max"), False),
    ],
    "iot": [
        ("broker CPU µs/msg", ("broker_us_per_msg",), False),
        ("p50 µs", ("latency_us", "p50"), False),
        ("p99 µs", ("latency_us", "p99"), False),
        ("max µs", ("latency_us", "max"), False),
    ],
    "connections": [
        ("RSS KB per idle connection", ("conns", "kb_per_conn"), False),
        ("p50 µs, N connected", ("latency_us", "p50"), False),
        ("p99 µs, N connected", ("latency_us", "p99"), False),
        ("RSS growth % cycle 1 -> 20", ("conns", "cycle_growth_pct"), False),
    ],
}


@dataclass
class Settings:
    run_seconds: float
    timed_seconds: float
    latency_seconds: float
    iot_seconds: float
    idle_timeout: float
    max_time: float
    probe_runs: int
    idle_conns: int = 10_000  # connections case: idle connections held
    cycle_conns: int = 1_000  # connections case: clients per connect/disconnect cycle
    cycles: int = 20
    pyspy_dir: Path | None = None  # --pyspy: record the broker with py-spy during every measured run
    pyspy_rate: int = 250


def start_pyspy(t: Target, case: str, st: Settings, rec: dict) -> tuple[subprocess.Popen, Path] | None:
    """py-spy record of the broker for the length of one run (raw collapsed stacks, one file per run)."""
    if st.pyspy_dir is None or t.name == "mosquitto" or t.proc is None:
        return None
    exe = VENV_BIN / "py-spy"
    if not exe.exists():
        found = shutil.which("py-spy")
        if not found:
            rec["pyspy_error"] = "py-spy not installed (.venv/bin/pip install py-spy)"
            return None
        exe = Path(found)
    st.pyspy_dir.mkdir(parents=True, exist_ok=True)
    n = len(list(st.pyspy_dir.glob(f"{t.name}-{case}-*.txt")))
    path = st.pyspy_dir / f"{t.name}-{case}-{n + 1}.txt"
    p = subprocess.Popen(
        [
            str(exe),
            "record",
            "--pid",
            str(t.proc.pid),
            "--rate",
            str(st.pyspy_rate),
            "--format",
            "raw",
            "--nonblocking",
            "--output",
            str(path),
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    time.sleep(0.5)  # py-spy attaches
    return p, path


def stop_pyspy(spy: tuple[subprocess.Popen, Path] | None, rec: dict) -> None:
    if spy is None:
        return
    p, path = spy
    try:
        os.kill(p.pid, signal.SIGINT)
        p.wait(20)
    except (ProcessLookupError, subprocess.TimeoutExpired):
        p.kill()
        p.wait()
    rec["pyspy_file"] = str(path)


def loadgen_run(ctx: Ctx, t: Target, case: str, count: int | None, st: Settings, measure: bool = True) -> dict:
    spec = t.spec
    assert spec is not None and t.proc is not None
    cd = CASES[case]
    argv = [
        sys.executable,
        str(LOADGEN),
        cd.get("loadgen", case),
        "--host",
        "127.0.0.1",
        "--port",
        str(spec.port),
        "--broker-pids",
        str(t.proc.pid),
        "--redis-pid",
        str(ctx.redis_pid or 0),
        "--idle-timeout",
        str(st.idle_timeout),
        "--max-time",
        str(st.max_time),
    ] + cd["args"]
    if spec.username is not None:
        argv += ["--username", spec.username]
        if spec.password is not None:
            argv += ["--password", spec.password]
    if count is not None:
        argv += ["--count", str(count)]
    if case == "connect_rate":
        argv += ["--duration", str(st.timed_seconds)]
    elif case == "latency":
        argv += ["--duration", str(st.latency_seconds)]
    elif case == "iot":
        argv += ["--duration", str(st.iot_seconds)]
    rec: dict = {"target": t.name, "case": case}
    if t.proc.poll() is not None:
        t.status = "died"
        t.reason = f"broker exited with code {t.proc.returncode}: {tail(t.log, 3)}"
        rec.update(ok=False, error=t.reason)
        return rec
    rec["pre_idle_wait_s"] = wait_idle(t.proc.pid)
    spy = start_pyspy(t, case, st, rec) if measure else None
    p = subprocess.Popen(
        argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=REPO, start_new_session=True
    )
    try:
        out, err = p.communicate(timeout=st.max_time + 40)
    except subprocess.TimeoutExpired:
        os.killpg(p.pid, signal.SIGKILL)
        out, err = p.communicate()
        rec.update(ok=False, error=f"load generator timed out after {st.max_time + 40:.0f}s")
        return rec
    except BaseException:
        try:
            os.killpg(p.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        p.wait()
        raise
    finally:
        stop_pyspy(spy, rec)
    line = out.strip().splitlines()[-1] if out.strip() else ""
    try:
        rec.update(json.loads(line))
        rec["case"] = case  # the load generator names its own case: fanin_qos0 for fanin5_qos0
    except json.JSONDecodeError:
        rec.update(
            ok=False, error=f"load generator exited {p.returncode} without a result: {(err or out).strip()[-600:]}"
        )
    rec["broker_rss_mb"] = rss_mb(t.proc.pid)
    if t.proc.poll() is not None:
        t.status = "died"
        t.reason = f"broker exited with code {t.proc.returncode} during {case}: {tail(t.log, 3)}"
        rec["ok"] = False
        rec["error"] = ((rec.get("error") or "") + "; " + t.reason).lstrip("; ")
    return rec


def conns_run(ctx: Ctx, t: Target, st: Settings) -> dict:
    """The connections case: hold st.idle_conns idle connections (RSS per connection), run the latency
    case while they are connected, release them, then st.cycles connect/disconnect cycles (RSS after
    each)."""
    spec = t.spec
    assert spec is not None and t.proc is not None
    pid = t.proc.pid
    base = [sys.executable, str(CONNS)]
    creds = ["--username", spec.username, "--password", spec.password or ""] if spec.username else []
    conns: dict = {"idle_conns": st.idle_conns, "cycle_conns": st.cycle_conns, "cycles": st.cycles}
    rec: dict = {"target": t.name, "case": "connections", "conns": conns}
    wait_idle(pid)
    rss0 = rss_mb(pid)
    argv = base + ["hold", "--port", str(spec.port), "--n", str(st.idle_conns)] + creds
    holder = subprocess.Popen(
        argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=REPO
    )
    try:
        assert holder.stdout is not None and holder.stdin is not None
        line = holder.stdout.readline()
        ready = json.loads(line) if line.strip() else {"ready": 0, "error": (holder.stderr.read() or "")[-400:]}
        conns.update(held=ready.get("ready"), connect_errors=ready.get("errors"), connect_s=ready.get("s"))
        if ready.get("errors") or not ready.get("ready"):
            rec.update(ok=False, error=f"idle connections: {ready.get('errors')} errors, first: {ready.get('error')}")
            return rec
        wait_idle(pid)
        time.sleep(1.0)
        rss1 = rss_mb(pid)
        if rss0 is not None and rss1 is not None:
            conns.update(rss_before_mb=rss0, rss_held_mb=rss1)
            conns["kb_per_conn"] = round((rss1 - rss0) * 1024 / st.idle_conns, 2)
        lat = loadgen_run(ctx, t, "latency", None, st)
        for k in ("ok", "error", "latency_us", "lost", "expected", "broker_cpu_pct", "gen_cpu_pct", "machine_busy_pct"):
            if k in lat:
                rec[k] = lat[k]
        holder.stdin.close()
        holder.wait(60)
    finally:
        if holder.poll() is None:
            holder.kill()
            holder.wait()
    if not rec.get("ok"):
        return rec
    wait_idle(pid)
    argv = base + ["cycles", "--port", str(spec.port), "--n", str(st.cycle_conns), "--cycles", str(st.cycles)]
    p = subprocess.run(
        argv + ["--pid", str(pid)] + creds, capture_output=True, text=True, cwd=REPO, timeout=st.cycles * 120
    )
    rows = [json.loads(x) for x in p.stdout.splitlines() if x.startswith("{")]
    conns["cycle_rss_mb"] = [round((r.get("rss_kb") or 0) / 1024, 1) for r in rows]
    conns["cycle_errors"] = sum(r.get("errors") or 0 for r in rows)
    if len(rows) != st.cycles or conns["cycle_errors"]:
        first = next((r["error"] for r in rows if r.get("error")), None)
        err = f"cycles: {len(rows)} done, {conns['cycle_errors']} errors ({first}); {p.stderr[-300:]}"
        rec.update(ok=False, error=err)
        return rec
    first_rss, last_rss = rows[0]["rss_kb"], rows[-1]["rss_kb"]
    conns["cycle_growth_pct"] = round((last_rss - first_rss) * 100 / first_rss, 2)
    rec["broker_rss_mb"] = rss_mb(pid)
    return rec


def calibrate(ctx: Ctx, t: Target, case: str, st: Settings, log: Callable[[dict], None]) -> int:
    """Messages per client so that the run lasts about st.run_seconds on this target."""
    cd = CASES[case]
    count = cd["probe"]
    for i in range(st.probe_runs):
        rec = loadgen_run(ctx, t, case, count, st, measure=False)
        rec.update(phase="calibration", probe=i)
        log(rec)
        if not rec.get("ok") or not rec.get("sent"):
            t.calib[case] = {"error": rec.get("error"), "count": count}
            return count
        # messages per second the target moved (sent, so that a lossy broker is
        # not given a bigger burst than it can take either)
        secs = max(rec.get("duration_s") or 0, rec.get("publish_s") or 0, 1e-3)
        msgs_per_s = rec["sent"] / secs
        per_client_per_s = msgs_per_s / (cd["clients"] if cd["per"] == "pub" else 1)
        new = int(per_client_per_s * st.run_seconds)
        new = max(cd["min"], min(cd["max"], new))
        t.calib[case] = {
            "probe_count": count,
            "probe_secs": round(secs, 3),
            "msgs_per_s": round(msgs_per_s, 1),
            "count": new,
        }
        if secs >= 0.3 or i == st.probe_runs - 1:
            return new
        # too short to trust: probe again at ~0.5 s
        count = max(cd["min"], min(cd["max"], int(per_client_per_s * 0.5)))
    return count


def share_counts(targets: dict[str, Target], cases: list[str]) -> None:
    """guard-off and guard-on move the same bursts (the smaller calibrated count of the two), and so do
    an MQTT 5 case and its 3.1.1 twin on one target.

    The guard overhead target (issue 7) is their ratio; with counts calibrated separately one noisy
    probe gave one of them a burst 1.7x the other's, and burst length changes the rate measured. The
    same holds for the MQTT 5 / 3.1.1 ratio (issue 16 item 7)."""
    for t in targets.values():
        for case in cases:
            base = CASES[case].get("loadgen")
            if base in t.counts and case in t.counts:
                t.counts[case] = t.counts[base] = min(t.counts[case], t.counts[base])
    pair = [targets[n] for n in ("guard-off", "guard-on") if n in targets and targets[n].available]
    if len(pair) != 2:
        return
    for case in cases:
        counts = [t.counts[case] for t in pair if case in t.counts]
        if len(counts) == 2:
            for t in pair:
                t.counts[case] = min(counts)
            print(f"guard-off and guard-on share count {min(counts)} per client for {case}", flush=True)


# --------------------------------------------------------------------------
# summary
# --------------------------------------------------------------------------


def dig(rec: dict, path: tuple) -> float | None:
    v = rec
    for k in path:
        if not isinstance(v, dict) or k not in v:
            return None
        v = v[k]
    return v if isinstance(v, (int, float)) else None


def stats(vals: list[float]) -> dict | None:
    vals = [v for v in vals if v is not None]
    if not vals:
        return None
    return {"median": statistics.median(vals), "min": min(vals), "max": max(vals), "n": len(vals)}


def fmt_num(v: float | None) -> str:
    if v is None:
        return "–"
    if abs(v) >= 100:
        return f"{v:,.0f}"
    if abs(v) >= 10:
        return f"{v:.1f}"
    return f"{v:.2f}"


def fmt_stat(s: dict | None) -> str:
    if not s:
        return "–"
    if s["n"] == 1:
        return fmt_num(s["median"])
    return f"{fmt_num(s['median'])} [{fmt_num(s['min'])}–{fmt_num(s['max'])}]"


def fmt_ratio(s: dict | None) -> str:
    if not s:
        return "–"
    if s["n"] == 1:
        return f"{s['median']:.2f}×"
    return f"{s['median']:.2f}× [{s['min']:.2f}–{s['max']:.2f}]"


def summarize(
    runs: list[dict], targets: dict[str, Target], cases: list[str], facts: dict, meta: dict
) -> tuple[dict, str]:
    measured = [r for r in runs if r.get("phase") == "measure"]
    rounds = sorted({r["round"] for r in measured})
    summary: dict = {"meta": meta, "machine": facts, "targets": {}, "cases": {}}
    for name, t in targets.items():
        summary["targets"][name] = {
            "status": t.status,
            "reason": t.reason,
            "argv": t.spec.argv if t.spec else None,
            "port": t.spec.port if t.spec else None,
            "auth": bool(t.spec and t.spec.username),
            "notes": t.spec.notes if t.spec else [],
            "count_per_client": t.counts,
            "calibration": t.calib,
        }
    for case in cases:
        cs: dict = {"description": CASES[case]["desc"], "metrics": {}}
        by = {(r["target"], r["round"]): r for r in measured if r["case"] == case}
        for label, path, higher in METRICS[case]:
            ms: dict = {"higher_is_better": higher, "targets": {}}
            for name in targets:
                recs = [by.get((name, rd)) for rd in rounds]
                ok = [r for r in recs if r and r.get("ok")]
                vals = [dig(r, path) for r in ok]
                entry = {
                    "values": vals,
                    "stat": stats(vals),
                    "runs": len([r for r in recs if r]),
                    "ok_runs": len(ok),
                    "errors": sorted({r.get("error") for r in recs if r and not r.get("ok") and r.get("error")}),
                    "lost": [r.get("lost") for r in ok],
                    "expected": [r.get("expected") for r in ok],
                    "sent": [r.get("sent") for r in ok],
                    "delivered": [r.get("delivered") for r in ok],
                    "conn_errors": [r.get("errors") for r in ok if case == "connect_rate"],
                    "duration_s": stats([r.get("duration_s") for r in ok]),
                    "broker_cpu_pct": stats([r.get("broker_cpu_pct") for r in ok]),
                    "gen_cpu_pct": stats([r.get("gen_cpu_pct") for r in ok]),
                    "redis_cpu_pct": stats([r.get("redis_cpu_pct") for r in ok]),
                    "machine_busy_pct": stats([r.get("machine_busy_pct") for r in ok]),
                }
                twin = CASES[case].get("loadgen")
                by_twin = {(r["target"], r["round"]): r for r in measured if r["case"] == twin}
                for base, key, other in (
                    ("amqtt", "ratio_amqtt", by),
                    ("guard-off", "ratio_guard_off", by),
                    (name, "ratio_v311", by_twin),  # MQTT 5 case / its 3.1.1 twin, same target and round
                ):
                    if key == "ratio_v311" and not twin:
                        continue
                    ratios = []
                    for rd in rounds:
                        a, b = by.get((name, rd)), other.get((base, rd))
                        if a and b and a.get("ok") and b.get("ok"):
                            va, vb = dig(a, path), dig(b, path)
                            if va is not None and vb:
                                ratios.append(va / vb)
                    entry[key] = stats(ratios)
                ms["targets"][name] = entry
            cs["metrics"][label] = ms
        summary["cases"][case] = cs

    # ---- markdown
    L: list[str] = []
    L.append(f"# mqtt-guard benchmark ({meta['started']})")
    L.append("")
    L.append(
        f"Machine: {facts.get('nproc')} CPUs ({facts.get('cpu_model')}), {facts.get('mem_gib')} GiB, "
        f"Linux {facts.get('kernel')}, Python {facts.get('python')}; amqtt {facts.get('amqtt_version')}, "
        f"{facts.get('mosquitto_version')}, {(facts.get('redis_server_version') or '')[:40]}; "
        f"git {facts.get('git_commit')}. Machine busy before start: {facts.get('busy_before_start_pct')}% "
        f"of {facts.get('cpu_count', 0) * 100}%."
    )
    L.append(
        f"Command: `{meta['command']}`; rounds: {len(rounds)}; burst runs sized for ~{meta['run_seconds']} s; "
        f"elapsed {meta.get('elapsed_s', 0):.0f} s."
    )
    L.append("")
    L.append(
        "Cells: **median [min–max] over rounds**. ×amqtt / ×guard-off: ratio to that target computed "
        "within each round, then the median [min–max] of those ratios (for latency rows >1 means slower). "
        "CPU: 100% = one core, over the delivery window; gen = the load generator's processes; "
        "busy = whole machine, out of "
        f"{facts.get('cpu_count', 0) * 100}%."
    )
    L.append("")
    L.append("| target | status | command / notes |")
    L.append("|---|---|---|")
    for name, t in targets.items():
        info = t.reason if t.status != "running" else "; ".join(t.spec.notes) if t.spec else ""
        if t.status == "running" and t.spec and t.spec.username:
            info += f" (clients authenticate as {t.spec.username!r})"
        L.append(f"| {name} | {t.status} | {info} |")
    L.append("")
    L.append(
        "| case | metric | target | value | ×amqtt | ×guard-off | lost / expected | broker CPU % | "
        "gen CPU % | redis CPU % | busy % | n per client |"
    )
    L.append("|---|---|---|---|---|---|---|---|---|---|---|---|")
    lossy: list[str] = []
    for case in cases:
        for label, ms in summary["cases"][case]["metrics"].items():
            for name, e in ms["targets"].items():
                t = targets[name]
                if unsupported(name, case):
                    if label == next(iter(summary["cases"][case]["metrics"])):
                        L.append(f"| {case} | {label} | {name} | n/a ({unsupported(name, case)}) | | | | | | | | |")
                    continue
                if t.status == "unavailable":
                    if label == next(iter(summary["cases"][case]["metrics"])):
                        L.append(f"| {case} | {label} | {name} | unavailable | | | | | | | | |")
                    continue
                val = fmt_stat(e["stat"])
                if e["ok_runs"] < e["runs"]:
                    val += f" ({e['ok_runs']}/{e['runs']} ok)"
                    if e["errors"]:
                        val += f" — error: {e['errors'][0][:160]}"
                lost_cell = ""
                if case == "connect_rate":
                    ce = [x for x in e["conn_errors"] if x is not None]
                    lost_cell = f"{statistics.median(ce):,.0f} connect errors" if ce else "n/a"
                elif e["lost"] and any(x is not None for x in e["lost"]):
                    lv = [x for x in e["lost"] if x is not None]
                    ev = [x for x in e["expected"] if x is not None]
                    lm = statistics.median(lv)
                    lost_cell = f"{lm:,.0f} / {statistics.median(ev):,.0f}" if ev else f"{lm:,.0f}"
                    if max(lv) > 0:
                        lost_cell += f" **LOST in {sum(1 for x in lv if x)}/{len(lv)} runs**"
                        if label == next(iter(summary["cases"][case]["metrics"])):
                            lossy.append(
                                f"{case}/{name}: lost {', '.join(f'{x:,}' for x in lv)} of "
                                f"{', '.join(f'{x:,}' for x in ev)}"
                            )
                n_cell = (
                    str(t.counts.get(case, ""))
                    if CASES[case]["kind"] == "burst"
                    else (
                        f"{meta['timed_seconds']} s"
                        if case == "connect_rate"
                        else f"{meta['iot_seconds']} s"
                        if case == "iot"
                        else f"{meta['idle_conns']:,} idle; {meta['cycles']} x {meta['cycle_conns']:,}"
                        if case == "connections"
                        else f"{meta['latency_seconds']} s"
                    )
                )
                L.append(
                    f"| {case} | {label} | {name} | {val} | {fmt_ratio(e['ratio_amqtt'])} | "
                    f"{fmt_ratio(e['ratio_guard_off'])} | {lost_cell} | {fmt_stat(e['broker_cpu_pct'])} | "
                    f"{fmt_stat(e['gen_cpu_pct'])} | {fmt_stat(e['redis_cpu_pct'])} | "
                    f"{fmt_stat(e['machine_busy_pct'])} | {n_cell} |"
                )
    L.append("")
    if lossy:
        L.append("**Runs that lost messages** (rates count only what was delivered):")
        for x in lossy:
            L.append(f"- {x}")
        L.append("")
    v5 = [
        f"- `{case}` {name}: {fmt_ratio(e['ratio_v311'])}"
        for case in cases
        for ms in list(summary["cases"][case]["metrics"].values())[:1]
        for name, e in ms["targets"].items()
        if e.get("ratio_v311")
    ]
    if v5:
        L.append(
            "**MQTT 5 / MQTT 3.1.1** (issue 16 item 7: within 15 % with the guards on), same target, within each round:"
        )
        L.extend(v5)
        L.append("")
    L.append("Cases:")
    for case in cases:
        L.append(f"- `{case}`: {CASES[case]['desc']}")
    if "guard-on" in targets and targets["guard-on"].status == "running":
        L.append("")
        if GUARD_ON["pending"]:
            L.append(
                f"**guard-on is incomplete**: auth (password per client) and the Redis ACL "
                f"({GUARD_ON['acl_rules']} rules) are on; {', '.join(GUARD_ON['pending'])} are not configured "
                "yet (tests/bench/run.py `guard_on_config`)."
            )
        else:
            L.append(
                f"**guard-on is complete**: password auth (anonymous refused), the Redis ACL "
                f"({GUARD_ON['acl_rules']} rules, default deny), quotas (events in+out, bytes, rate, sessions, "
                "slow-consumer marks for the bench user) and analytics (counters flushed to Redis every "
                "second, /metrics, $SYS) are all on."
            )
    L.append("")
    return summary, "\n".join(L)


# --------------------------------------------------------------------------
# main
# --------------------------------------------------------------------------


def parse_args(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="short smoke run: 1 round, ~0.5 s runs")
    ap.add_argument("--rounds", type=int, default=None, help="rounds (default 3, --quick: 1)")
    ap.add_argument("--targets", default=",".join(ALL_TARGETS), help=f"comma list of {', '.join(ALL_TARGETS)}")
    ap.add_argument("--cases", default=",".join(ALL_CASES), help=f"comma list of {', '.join(ALL_CASES)}")
    ap.add_argument("--out", default=str(BENCH_DIR / "results"), help="output directory")
    ap.add_argument(
        "--run-seconds", type=float, default=None, help="target duration of a burst run (default 2.0, --quick 0.5)"
    )
    ap.add_argument(
        "--idle-timeout", type=float, default=20.0, help="a run ends when nothing is delivered for this long"
    )
    ap.add_argument("--startup-timeout", type=float, default=20.0)
    ap.add_argument("--keep-tmp", action="store_true", help="keep configs and broker logs")
    ap.add_argument(
        "--pyspy",
        metavar="DIR",
        default=None,
        help="record every Python broker with py-spy during each measured run (raw stacks in DIR; "
        "summarise with tests/bench/pyspy_summary.py); profiling costs the broker some speed",
    )
    ap.add_argument("--idle-conns", type=int, default=None, help="connections case: idle connections (10,000)")
    ap.add_argument("--cycle-conns", type=int, default=None, help="connections case: clients per cycle (1,000)")
    a = ap.parse_args(argv)
    a.targets = [x.strip() for x in a.targets.split(",") if x.strip()]
    a.cases = [x.strip() for x in a.cases.split(",") if x.strip()]
    for x in a.targets:
        if x not in ALL_TARGETS:
            ap.error(f"unknown target {x!r}")
    for x in a.cases:
        if x not in ALL_CASES:
            ap.error(f"unknown case {x!r}")
    if a.rounds is None:
        a.rounds = 1 if a.quick else 3
    if a.run_seconds is None:
        a.run_seconds = 0.5 if a.quick else 2.0
    return a


def main(argv=None) -> int:
    a = parse_args(argv)
    t_start = time.monotonic()
    started = _dt.datetime.now().astimezone().isoformat(timespec="seconds")
    signal.signal(signal.SIGTERM, _sigterm)
    # also when started from a non-interactive shell, where background jobs
    # inherit SIGINT as *ignored*: a handled signal is reset to the default in
    # the children at exec, so amqtt's SIGINT shutdown works
    signal.signal(signal.SIGINT, signal.default_int_handler)
    st = Settings(
        run_seconds=a.run_seconds,
        timed_seconds=0.5 if a.quick else 2.0,
        latency_seconds=1.0 if a.quick else 3.0,
        iot_seconds=2.0 if a.quick else 6.0,
        idle_timeout=a.idle_timeout,
        max_time=60.0,
        probe_runs=2,
        pyspy_dir=Path(a.pyspy) if a.pyspy else None,
        idle_conns=a.idle_conns or (300 if a.quick else 10_000),
        cycle_conns=a.cycle_conns or (100 if a.quick else 1_000),
    )
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    session = _dt.datetime.now().strftime("%Y%m%dT%H%M%S") + "-" + os.urandom(2).hex()
    facts = machine_facts()
    facts["busy_before_start_pct"] = machine_busy(1.0)
    print(
        f"machine: nproc={facts['nproc']} cpu={facts['cpu_model']!r} python={facts['python']} "
        f"kernel={facts['kernel']} amqtt={facts.get('amqtt_version')} {facts.get('mosquitto_version')} "
        f"git={facts.get('git_commit')}; machine busy before start: {facts['busy_before_start_pct']}% "
        f"of {facts['cpu_count'] * 100}%",
        flush=True,
    )
    if (facts["busy_before_start_pct"] or 0) > 20:
        print("warning: the machine is already busy; numbers will be noisy", flush=True)
    print(
        f"session {session}: rounds={a.rounds} targets={','.join(a.targets)} cases={','.join(a.cases)} out={out}",
        flush=True,
    )
    meta = {
        "session": session,
        "started": started,
        "command": " ".join([Path(sys.argv[0]).name] + sys.argv[1:]),
        "rounds": a.rounds,
        "run_seconds": st.run_seconds,
        "timed_seconds": st.timed_seconds,
        "latency_seconds": st.latency_seconds,
        "iot_seconds": st.iot_seconds,
        "idle_conns": st.idle_conns,
        "cycle_conns": st.cycle_conns,
        "cycles": st.cycles,
        "quick": a.quick,
    }

    tmp = Path(tempfile.mkdtemp(prefix="mqtt-guard-bench-"))
    ctx = Ctx(tmp=tmp)
    runs: list[dict] = []
    targets: dict[str, Target] = {}
    jsonl = open(out / "runs.jsonl", "a")

    def log(rec: dict) -> None:
        rec.setdefault("session", session)
        rec.setdefault("ts", _dt.datetime.now().astimezone().isoformat(timespec="seconds"))
        runs.append(rec)
        jsonl.write(json.dumps(rec) + "\n")
        jsonl.flush()

    interrupted = False
    try:
        if any(x.startswith("guard") for x in a.targets):
            start_redis(ctx)
            print(
                "redis: " + (f"port {ctx.redis_port} pid {ctx.redis_pid}" if ctx.redis_port else str(ctx.redis_error)),
                flush=True,
            )
        for name in a.targets:
            t = start_target(ctx, name, a.startup_timeout)
            targets[name] = t
            if t.available:
                print(f"target {name}: running, port {t.spec.port}, pid {t.proc.pid}", flush=True)
            else:
                print(f"target {name}: {t.status}: {t.reason}", flush=True)

        # calibration (not part of the results)
        for name, t in targets.items():
            if not t.available:
                continue
            for case in a.cases:
                if CASES[case]["kind"] != "burst" or unsupported(name, case):
                    continue
                t.counts[case] = calibrate(ctx, t, case, st, log)
                c = t.calib.get(case, {})
                print(
                    f"calibrate {name:9s} {case:12s}: ~{fmt_num(c.get('msgs_per_s'))} msg/s -> "
                    f"count {t.counts[case]} per client" + (f" (probe failed: {c['error']})" if c.get("error") else ""),
                    flush=True,
                )
        share_counts(targets, a.cases)

        avail = [n for n in a.targets if targets[n].available]
        for rd in range(1, a.rounds + 1):
            k = (rd - 1) % max(1, len(avail))
            order = avail[k:] + avail[:k]  # rotate so no target always runs first
            for case in a.cases:
                if CASES[case].get("once") and rd > 1:
                    continue
                for name in order:
                    t = targets[name]
                    if unsupported(name, case):
                        continue
                    if not t.available:
                        rec = {"target": name, "case": case, "ok": False, "error": f"target {t.status}: {t.reason}"}
                    elif case == "connections":
                        rec = conns_run(ctx, t, st)
                    else:
                        rec = loadgen_run(ctx, t, case, t.counts.get(case), st)
                    rec.update(phase="measure", round=rd)
                    log(rec)
                    print(progress_line(rec), flush=True)
    except KeyboardInterrupt:
        interrupted = True
        print("\ninterrupted: stopping everything that was started", flush=True)
    finally:
        PROCS.stop_all()
        jsonl.close()
        if a.keep_tmp:
            print(f"configs and logs kept in {tmp}")
        else:
            shutil.rmtree(tmp, ignore_errors=True)

    meta["elapsed_s"] = round(time.monotonic() - t_start, 1)
    meta["interrupted"] = interrupted
    summary, md = summarize(runs, targets, a.cases, facts, meta)
    (out / "summary.json").write_text(json.dumps(summary, indent=2))
    (out / "summary.md").write_text(md)
    print()
    print(md)
    print(
        f"wrote {out / 'runs.jsonl'} (appended), {out / 'summary.json'}, {out / 'summary.md'}; "
        f"total {meta['elapsed_s']:.0f} s"
    )
    return 130 if interrupted else 0


def progress_line(r: dict) -> str:
    head = f"[r{r.get('round')}] {r['case']:12s} {r['target']:9s}"
    if not r.get("ok"):
        return f"{head} FAILED: {r.get('error')}"
    if r["case"] in ("latency", "iot"):
        lat = r.get("latency_us", {})
        main = (
            f"p50 {fmt_num(lat.get('p50'))} µs, p99 {fmt_num(lat.get('p99'))} µs, "
            f"max {fmt_num(lat.get('max'))} µs, lost {r.get('lost')}"
        )
        if r["case"] == "iot":
            main += (
                f", {r.get('clients')} clients, {fmt_num(r.get('rate'))} msg/s, "
                f"broker {fmt_num(r.get('broker_us_per_msg'))} µs/msg"
            )
    elif r["case"] == "connect_rate":
        main = f"{fmt_num(r.get('rate'))} conn/s, errors {r.get('errors')}"
    elif r["case"] == "connections":
        c, lat = r.get("conns", {}), r.get("latency_us", {})
        main = (
            f"{c.get('held')} idle: {fmt_num(c.get('kb_per_conn'))} KB/conn, p50 {fmt_num(lat.get('p50'))} µs, "
            f"p99 {fmt_num(lat.get('p99'))} µs; {c.get('cycles')} cycles x {c.get('cycle_conns')}: RSS "
            f"{c.get('cycle_rss_mb', [None])[0]} -> {c.get('cycle_rss_mb', [None])[-1]} MB "
            f"({fmt_num(c.get('cycle_growth_pct'))} %)"
        )
    else:
        main = (
            f"{fmt_num(r.get('rate'))} {r.get('rate_unit')}, delivered {r.get('delivered'):,}/"
            f"{r.get('expected'):,}" + (f" LOST {r['lost']:,}" if r.get("lost") else "")
        )
    return (
        f"{head} {main}; broker {fmt_num(r.get('broker_cpu_pct'))}%, gen {fmt_num(r.get('gen_cpu_pct'))}%, "
        f"busy {fmt_num(r.get('machine_busy_pct'))}%, {r.get('duration_s')} s"
    )


if __name__ == "__main__":
    sys.exit(main())
