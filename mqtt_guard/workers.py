"""`mqtt-guard broker --workers N`: N broker processes serving the same listener ports (issue 18 item 4).

One CPython process moves messages on one core. With `workers: N` (or `auto`, one per core) the
process started by the operator becomes a supervisor: it starts N workers, each the same command with
`MQTT_GUARD_WORKER=i/N` in its environment, and each a complete broker (its own Guard, its own broker id
in Redis: to the rest of the deployment N workers are N brokers, each a member of the cluster, so a
message published on one worker reaches the subscribers on the others, docs/scaling.md). Every worker
opens every listener with SO_REUSEPORT, so the kernel spreads new connections over them.

What the operator sees is one broker:
- Signals: SIGTERM/SIGINT stop every worker (each drains as one broker does, `shutdown.drain_grace`); a
  second signal is passed on too, cutting the drains short; SIGHUP (reload) reaches every worker. The
  supervisor exits 0 when every worker stopped cleanly, else 1.
- Probes (issue 21): the supervisor serves `/livez`, `/readyz` and `/healthz` on `metrics.health_bind`
  (or on `metrics.prometheus_bind`) for all its workers; each worker serves its probes on a private
  loopback port the supervisor polls. `/readyz` is 200 when every worker is ready; `/livez` fails only
  when a running worker's event loop stops answering. Each worker's `/metrics` is on
  `metrics.workers_port_from` + its index (default: the Prometheus port + 10 + its index; the
  supervisor's port answers the probes only).
- A worker that dies is started again after a second; one that cannot stay up (`CRASH_LIMIT` exits
  within `CRASH_WINDOW`) stops the whole broker with exit code 1, so systemd or Kubernetes restarts it.
- systemd: the supervisor says READY=1 once every worker listens (as one broker does: a worker not ready
  only because Redis is away must not fail the unit's start); the workers do not talk to systemd.
- Logs: the workers write to the supervisor's stderr, each line carrying its worker number.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import os
import signal
import sys
import time
from dataclasses import dataclass

from .config import GuardConfig, split_bind
from .metrics.health import TEXT, Route, serve_http
from .sdnotify import ENV as NOTIFY_ENV
from .sdnotify import notify

log = logging.getLogger("mqtt_guard.workers")

ENV = "MQTT_GUARD_WORKER"  # "i/N": this process is worker i of N
HEALTH_ENV = "MQTT_GUARD_WORKER_HEALTH"  # the worker's private probe address (127.0.0.1:PORT)
POLL = 0.5  # seconds between probe polls of each worker
PROBE_TIMEOUT = 2.0  # a worker's probe answer must come within this
STUCK_AFTER = 10.0  # a running worker whose /livez has not answered for this long fails /livez
START_GRACE = 30.0  # a starting worker is not asked to answer /livez before this
RESTART_DELAY = 1.0
CRASH_LIMIT = 5
CRASH_WINDOW = 60.0
WORKER_PORT_OFFSET = 10  # worker i's /metrics: the Prometheus port + 10 + i, unless metrics.workers_port_from


@dataclass(frozen=True, slots=True)
class Slot:
    """Which worker this process is."""

    index: int
    count: int


def slot_from_env() -> Slot | None:
    raw = os.environ.get(ENV)
    if not raw:
        return None
    index, _, count = raw.partition("/")
    return Slot(int(index), int(count))


def as_worker(config: GuardConfig, slot: Slot) -> GuardConfig:
    """The configuration a worker runs with: its probes on the private address the supervisor polls,
    its /metrics on the Prometheus port + 1 + its index."""
    metrics = dataclasses.replace(config.metrics, health_bind=os.environ.get(HEALTH_ENV) or None)
    if config.metrics.prometheus_bind:
        host, port = split_bind(config.metrics.prometheus_bind, "metrics.prometheus_bind")
        first = config.metrics.workers_port_from or port + WORKER_PORT_OFFSET
        metrics.prometheus_bind = f"{host}:{first + slot.index}"
    return dataclasses.replace(config, metrics=metrics, workers=1)


def _free_loopback_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


class Worker:
    """One worker process and what the supervisor last heard from it."""

    def __init__(self, index: int) -> None:
        self.index = index
        self.proc: asyncio.subprocess.Process | None = None
        self.health = f"127.0.0.1:{_free_loopback_port()}"
        self.started = 0.0
        self.ready: str | None = "starting\n"  # None: its /readyz said 200, else why not
        self.listening = False  # its /readyz said anything but "starting" (its listeners are open)
        self.last_live = 0.0  # monotonic time of its last /livez 200
        self.exits: list[float] = []  # monotonic times it exited unasked

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.returncode is None


class Supervisor:
    def __init__(self, config: GuardConfig, argv: list[str] | None = None) -> None:
        self.config = config
        self.argv = argv if argv is not None else [sys.executable, "-m", "mqtt_guard", *sys.argv[1:]]
        self.workers = [Worker(i) for i in range(config.workers)]
        self.stopping = False
        self.failed = False
        self.told_ready = False
        self._done = asyncio.Event()

    # -- the workers ---------------------------------------------------------------------------------
    async def _start(self, worker: Worker) -> None:
        env = dict(os.environ)
        env[ENV] = f"{worker.index}/{len(self.workers)}"
        env[HEALTH_ENV] = worker.health
        env.pop(NOTIFY_ENV, None)  # only the supervisor talks to systemd
        worker.proc = await asyncio.create_subprocess_exec(*self.argv, env=env, preexec_fn=_die_with_parent)
        worker.started = time.monotonic()
        worker.ready = "starting\n"
        worker.listening = False
        log.info("worker %d started (pid %d)", worker.index, worker.proc.pid)

    async def _watch(self, worker: Worker) -> None:
        """Wait for the worker to exit; start it again unless the broker is stopping or it crash-loops."""
        while True:
            assert worker.proc is not None
            code = await worker.proc.wait()
            if self.stopping:
                if code != 0:
                    self.failed = True
                    log.error("worker %d (pid %d) stopped with exit code %d", worker.index, worker.proc.pid, code)
                return
            now = time.monotonic()
            worker.exits = [t for t in worker.exits if now - t < CRASH_WINDOW] + [now]
            if len(worker.exits) >= CRASH_LIMIT:
                log.error(
                    "worker %d exited %d times within %.0f s (last exit code %d): stopping the broker",
                    worker.index,
                    len(worker.exits),
                    CRASH_WINDOW,
                    code,
                )
                self.failed = True
                self.stop()
                return
            log.error(
                "worker %d (pid %d) exited unexpectedly with code %d: starting it again in %.0f s",
                worker.index,
                worker.proc.pid,
                code,
                RESTART_DELAY,
            )
            worker.ready = f"exited with code {code}, restarting\n"
            await asyncio.sleep(RESTART_DELAY)
            if self.stopped():  # (a stop may have come during the delay)
                return
            await self._start(worker)

    def stopped(self) -> bool:
        return self.stopping

    def stop(self) -> None:
        """SIGTERM to every worker (the first time: a drain; again: the drains are cut short)."""
        if not self.stopping:
            log.info("stopping %d workers", len(self.workers))
            notify("STOPPING=1")
        self.stopping = True
        for worker in self.workers:
            if worker.running:
                assert worker.proc is not None
                with contextlib.suppress(ProcessLookupError):
                    worker.proc.send_signal(signal.SIGTERM)

    def reload(self) -> None:
        for worker in self.workers:
            if worker.running:
                assert worker.proc is not None
                with contextlib.suppress(ProcessLookupError):
                    worker.proc.send_signal(signal.SIGHUP)

    # -- probes --------------------------------------------------------------------------------------
    async def _poll(self) -> None:
        while True:
            await asyncio.gather(*(self._probe(w) for w in self.workers if w.running))
            if not self.told_ready and all(w.listening for w in self.workers):
                self.told_ready = True
                notify("READY=1")
                log.info("all %d workers listening", len(self.workers))
            await asyncio.sleep(POLL)

    async def _probe(self, worker: Worker) -> None:
        live = await _get(worker.health, "/livez")
        if live is not None and live[0] == 200:
            worker.last_live = time.monotonic()
        ready = await _get(worker.health, "/readyz")
        if ready is None:
            worker.ready = "not answering its probes\n"
        else:
            worker.ready = None if ready[0] == 200 else ready[1].decode(errors="replace") or "not ready\n"
            worker.listening = worker.listening or not (worker.ready or "").startswith("starting")

    def readiness(self) -> str | None:
        """None when every worker is ready, else one line per worker that is not."""
        if self.stopping:
            return "draining: shutting down\n"
        lines = [f"worker {w.index}: {w.ready}" for w in self.workers if w.ready is not None or not w.running]
        return "".join(line if line.endswith("\n") else line + "\n" for line in lines) or None

    def liveness(self) -> str | None:
        """None unless a running worker, past its start-up, has not answered /livez for STUCK_AFTER."""
        now = time.monotonic()
        stuck = [
            w.index
            for w in self.workers
            if w.running and now - w.started > START_GRACE and now - max(w.last_live, w.started) > STUCK_AFTER
        ]
        return f"workers not answering: {', '.join(map(str, stuck))}\n" if stuck else None

    def routes(self) -> dict[str, Route]:
        def answer(why: str | None) -> tuple[int, bytes, str]:
            return (200, b"ok\n", TEXT) if why is None else (503, why.encode(), TEXT)

        def live(_: str) -> tuple[int, bytes, str]:
            return answer(self.liveness())

        def ready(_: str) -> tuple[int, bytes, str]:
            return answer(self.readiness())

        return {"/livez": live, "/readyz": ready, "/healthz": ready}

    # -- the whole -----------------------------------------------------------------------------------
    async def run(self) -> int:
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self.stop)
        loop.add_signal_handler(signal.SIGHUP, self.reload)
        bind = self.config.metrics.health_bind or self.config.metrics.prometheus_bind
        server = None
        if bind:
            try:
                server = await serve_http(bind, self.routes())
            except OSError as exc:
                log.error("cannot serve the probes on %s: %s (the broker runs on without them)", bind, exc)
        log.info("starting %d broker workers (one port each listener, SO_REUSEPORT)", len(self.workers))
        if not self.config.cluster.enabled:  # (each worker is a cluster member: docs/scaling.md)
            log.warning(
                "cluster.enabled is false: messages are not routed between workers; a subscriber receives "
                "only what publishers connected to its own worker send (docs/deploy.md)"
            )
        for worker in self.workers:
            await self._start(worker)
        poller = loop.create_task(self._poll())
        try:
            await asyncio.gather(*(self._watch(w) for w in self.workers))
        finally:
            poller.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await poller
            if server is not None:
                server.close()
        log.info("all workers stopped")
        return 1 if self.failed else 0


def supervise(config: GuardConfig) -> int:
    return asyncio.run(Supervisor(config).run())


async def _get(bind: str, path: str) -> tuple[int, bytes] | None:
    """GET http://bind/path: (status, body), None when there is no answer within PROBE_TIMEOUT."""
    host, port = split_bind(bind, "worker probe")
    try:
        async with asyncio.timeout(PROBE_TIMEOUT):
            reader, writer = await asyncio.open_connection(host, port)
            try:
                writer.write(f"GET {path} HTTP/1.1\r\nHost: {bind}\r\nConnection: close\r\n\r\n".encode())
                raw = await reader.read()
            finally:
                writer.close()
    except (OSError, TimeoutError):
        return None
    head, _, body = raw.partition(b"\r\n\r\n")
    try:
        return int(head.split(b" ", 2)[1]), body
    except (IndexError, ValueError):
        return None


def _die_with_parent() -> None:
    """In the worker, before exec: SIGTERM when the supervisor dies (even by SIGKILL), so no worker is
    left serving on its own (Linux prctl PR_SET_PDEATHSIG)."""
    try:
        import ctypes

        ctypes.CDLL(None).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG = 1
    except (OSError, AttributeError):
        pass
