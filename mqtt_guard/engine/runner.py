"""Runs a GuardedBroker until SIGTERM or SIGINT, then shuts it down cleanly and exits 0."""

from __future__ import annotations

import asyncio
import gc
import logging
import os
import signal
from collections.abc import Awaitable, Callable

from amqtt.errors import BrokerError

from ..config import GuardConfig
from ..guard import Guard
from ..logutil import LineHandler
from ..sdnotify import notify
from ..store.schema import SchemaMismatch
from ..workers import Slot, as_worker, slot_from_env, supervise
from .broker import GuardedBroker
from .fdlimit import FdLimitWatch, raise_open_files_limit

log = logging.getLogger("mqtt_guard")

# Garbage collector tuning (docs/performance.md, "Tail latency"). A full (generation 2) collection stops
# the event loop for ~0.5 us per tracked object: 80-150 ms with 1,000 connected clients, which was the
# whole p99 of the 1,000-device benchmark. Objects alive once the broker is up (modules, config,
# plugins) are frozen out of every collection, and full collections run 100 times less often (young
# collections as CPython does them: they are short). Garbage that survives into the old generation
# (e.g. the objects of closed connections) waits longer for its collection: about 7M allocations.
GC_THRESHOLDS = (700, 10, 1000)  # CPython's defaults: (700, 10, 10)


def tune_gc() -> None:
    if os.environ.get("MQTT_GUARD_GC_DEFAULTS"):  # diagnostics: run with CPython's defaults
        return
    gc.collect()
    gc.freeze()
    gc.set_threshold(*GC_THRESHOLDS)


def setup_logging(level: str) -> None:
    # The format uses none of the caller's file/line, thread or process fields: skip collecting them for
    # every record (a stack walk and three lookups; a third of the cost of the two lines per connection).
    logging._srcfile = None  # noqa: SLF001 - the documented way to turn off caller lookup
    logging.logThreads = False
    logging.logProcesses = False
    logging.logMultiprocessing = False
    logging.basicConfig(level=level.upper(), handlers=[LineHandler()])  # a no-op if logging is set up
    # amqtt logs packets (CONNECT included, password and all) at DEBUG: never let that through.
    logging.getLogger("amqtt").setLevel(logging.WARNING)
    logging.getLogger("transitions").setLevel(logging.WARNING)


def install_uvloop() -> bool:
    try:
        import uvloop
    except ImportError:
        return False
    asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())
    return True


Hook = Callable[[Guard], Awaitable[None]]


async def serve(
    config: GuardConfig, prepare: Hook | None = None, ready: Hook | None = None, *, slot: Slot | None = None
) -> int:
    """`prepare(guard)` runs before the listeners open (e.g. plug in file-backed sources), `ready(guard)`
    right after (e.g. drop root privileges). SIGHUP asks the Guard to reload its file-backed sources.
    `slot`: this process is one of `--workers` (mqtt_guard/workers.py)."""
    if slot is not None:
        config = as_worker(config, slot)
    raise_open_files_limit(config.listeners)
    guard = Guard(config)
    if prepare is not None:
        await prepare(guard)
    try:
        await guard.start()
    except SchemaMismatch as exc:  # a Redis written by a newer release: reading it would misread keys
        log.error("broker refuses to start: %s", exc)
        await guard.close()
        return 1
    broker = GuardedBroker(config, guard, reuse_port=slot is not None)
    cluster = await guard.start_cluster(broker.on_remote)  # (cluster.enabled: the other brokers on this Redis)
    if cluster is not None:
        broker.join_cluster(cluster)
    # Before the listeners open: a SIGTERM/SIGINT that arrives while the broker starts (a client may
    # already see the port) shuts it down cleanly once it is up, instead of killing it.
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    try:
        await broker.start()
    except BrokerError as exc:
        log.error("broker could not start: %s", exc.__cause__ or exc)
        await guard.close()
        return 1
    if ready is not None:
        await ready(guard)
    guard.readiness.listening = True
    tune_gc()
    reloads: set[asyncio.Task[None]] = set()

    def on_sighup() -> None:
        log.info("SIGHUP: reloading")
        task = loop.create_task(guard.reload())
        reloads.add(task)
        task.add_done_callback(reloads.discard)

    loop.add_signal_handler(signal.SIGHUP, on_sighup)
    binds = ", ".join(f"{listener.type}://{listener.bind}" for listener in config.listeners)
    fd_watch = FdLimitWatch(binds, guard.counters)
    fd_watch.start(loop)
    log.info(
        "mqtt-guard broker ready on %s (Redis prefix %r, event loop %s)",
        binds,
        config.redis.prefix,
        type(loop).__module__.split(".")[0],
    )
    notify("READY=1")  # systemd Type=notify (deploy/systemd/); nothing outside systemd
    await stop.wait()
    log.info("shutting down")
    guard.readiness.draining = True  # /readyz fails at once: load balancers stop sending clients here
    notify("STOPPING=1")
    for sig in (signal.SIGTERM, signal.SIGINT):  # a second signal cuts a drain short
        loop.add_signal_handler(sig, broker.end_drain)
    fd_watch.stop()
    await broker.shutdown(config.shutdown.drain_grace)
    await guard.close()
    log.info("stopped")
    return 0


def run(config: GuardConfig, prepare: Hook | None = None, ready: Hook | None = None) -> int:
    setup_logging(config.log.level)
    slot = slot_from_env()
    if slot is None and config.workers > 1:
        return supervise(config)  # this process starts the workers, each running this same command
    install_uvloop()
    return asyncio.run(serve(config, prepare, ready, slot=slot))
