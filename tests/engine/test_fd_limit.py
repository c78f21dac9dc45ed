"""Issue 15, item 9: the open-files limit. At start the soft RLIMIT_NOFILE is raised to the hard one and a
WARNING says when it stays below what the listeners need; connections refused at the limit get one
rate-limited ERROR naming the limit, the listener and what to do, and are counted; the broker serves
again once descriptors are free. A real broker process with a low limit, real sockets."""

from __future__ import annotations

import asyncio
import errno
import logging
import resource
import socket
import time

import pytest

from mqtt_guard.config import ListenerConfig
from mqtt_guard.engine.fdlimit import ACCEPT_FAILED, UNLIMITED_WANT, FdLimitWatch, wanted
from mqtt_guard.metrics import counters as C
from mqtt_guard.metrics.counters import Counters
from tests.helpers import rawmqtt as raw
from tests.helpers.servers import BrokerProcess, free_port
from tests.helpers.wait import until

LIMIT = 64
REFUSED = "refusing connections on"


def _low_limit() -> None:
    resource.setrlimit(resource.RLIMIT_NOFILE, (LIMIT, LIMIT))


def test_refused_at_the_open_files_limit_is_logged_once_and_the_broker_recovers(redis_server, prefix, guard_config):
    broker = BrokerProcess(redis_server.url, prefix, args=["--config", guard_config()], preexec_fn=_low_limit)
    try:
        broker.start()
        log = broker.wait_log("is below the 4096 connections the listeners may take")
        assert f"RLIMIT_NOFILE soft={LIMIT}, hard={LIMIT}" in log and "ulimit -n" in log
        held: list[socket.socket] = []
        try:
            for i in range(LIMIT + 40):  # more than the process can hold
                s = socket.create_connection(("127.0.0.1", broker.port), timeout=5)
                s.sendall(raw.connect(f"fd-{i}"))
                held.append(s)
            log = broker.wait_log(REFUSED)
            time.sleep(2.5)  # still at the limit for more checks: no second line within the minute
            log = broker.log()
            line = next(ln for ln in log.splitlines() if REFUSED in ln)
            assert " ERROR " in line
            assert f"tcp://127.0.0.1:{broker.port}" in line
            assert f"RLIMIT_NOFILE soft={LIMIT}, hard={LIMIT}" in line
            assert "LimitNOFILE" in line and "ulimit -n" in line
            assert log.count(REFUSED) == 1
        finally:
            for s in held:
                s.close()

        def serves() -> raw.RawClient | None:
            try:
                return raw.connected(broker.port, "after-the-storm")[0]
            except (OSError, AssertionError, TimeoutError):
                return None

        client = until(serves, 10, interval=0.2)  # the broker closes the held connections, then serves again
        assert client is not None, broker.log()
        with client:
            client.send(raw.subscribe(1, ("ok/#", 0)))
            client.expect(raw.SUBACK)
        assert "Traceback" not in broker.log()
    finally:
        broker.stop()


def test_start_warning_counts_max_connections(redis_server, prefix, guard_config):
    """With max_connections set below the limit, there is no warning."""
    port = free_port()
    config = guard_config(f"listeners:\n  - bind: 127.0.0.1:{port}\n    max_connections: 10\n")
    broker = BrokerProcess(
        redis_server.url, prefix, args=["--config", config], port=port, bind=False, preexec_fn=_low_limit
    )
    try:
        broker.start()
        broker.wait_log("mqtt-guard broker ready")
        assert "open-files limit" not in broker.log()
    finally:
        broker.stop()


def test_wanted_descriptors():
    assert wanted([ListenerConfig(max_connections=100), ListenerConfig()]) == 100 + UNLIMITED_WANT


def test_asyncio_accept_failures_are_counted_and_logged_once(caplog):
    """asyncio's loop reports EMFILE from accept() to its exception handler (a traceback each time, up
    to a hundred per retry): the watch turns them into counted refusals and one ERROR line; any other
    report still goes to the loop's handler."""
    counters = Counters()
    watch = FdLimitWatch("tcp://0.0.0.0:1883", counters)
    others: list[dict] = []

    async def main() -> None:
        loop = asyncio.get_running_loop()

        def previous(_loop: asyncio.AbstractEventLoop, context: dict) -> None:
            others.append(context)

        loop.set_exception_handler(previous)
        watch.start(loop)
        for _ in range(5):
            loop.call_exception_handler(
                {"message": ACCEPT_FAILED, "exception": OSError(errno.EMFILE, "Too many open files")}
            )
        loop.call_exception_handler({"message": "something else"})
        watch.stop()
        assert loop.get_exception_handler() is previous  # the previous one is back

    with caplog.at_level(logging.ERROR, logger="mqtt_guard.broker"):
        asyncio.run(main())
    assert counters.total(C.REFUSED_FD_LIMIT) == 5
    lines = [r.getMessage() for r in caplog.records if REFUSED in r.getMessage()]
    assert len(lines) == 1 and "tcp://0.0.0.0:1883" in lines[0] and "RLIMIT_NOFILE" in lines[0]
    assert [c["message"] for c in others] == ["something else"]


def test_soft_limit_is_raised_to_the_hard_one(redis_server, prefix, guard_config):
    soft = LIMIT
    hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
    if hard == resource.RLIM_INFINITY or hard <= soft:
        pytest.skip("needs a finite hard limit above the soft one")
    broker = BrokerProcess(
        redis_server.url,
        prefix,
        args=["--config", guard_config()],
        preexec_fn=lambda: resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard)),
    )
    try:
        broker.start()
        broker.wait_log(f"raised the open-files limit (RLIMIT_NOFILE) from {soft} to the hard limit {hard}")
    finally:
        broker.stop()
