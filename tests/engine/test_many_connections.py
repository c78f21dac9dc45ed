"""Many connections (issue 15): a closed connection's session is freed by reference counting alone, an
idle one is small, and the periodic passes over every session give the event loop back in steps.

The runner makes full garbage collections rare (engine/runner.py GC_THRESHOLDS), so anything a
connection leaves in a reference cycle stays in memory long after the connection: a session whose
state object pointed back at it grew the broker ~37 MB per 10,000 connect/disconnects.
"""

from __future__ import annotations

import gc
import weakref
from typing import Any

import pytest
from transitions import MachineError

from mqtt_guard.engine.queues import OutQueue
from mqtt_guard.engine.session_info import GuardedSession
from tests.helpers import rawmqtt as raw
from tests.helpers.wait import until


def _freed_without_gc(make) -> bool:
    gc.disable()
    try:
        obj = make()
        ref = weakref.ref(obj)
        del obj
        return ref() is None
    finally:
        gc.enable()


def test_a_session_is_freed_without_the_cycle_collector():
    def make() -> GuardedSession:
        s = GuardedSession()
        s.client_id = "c1"
        s.out_queue = OutQueue(10, 0, 2)
        s.transitions.connect()
        s.transitions.disconnect()
        s.pub_ok["t"] = True
        _ = s.delivered_message_queue  # amqtt's lazy queue, made on access
        return s

    assert _freed_without_gc(make)


def test_session_state_still_drives_the_session_callbacks():
    s = GuardedSession()
    assert s.transitions.is_new()
    s.transitions.connect()
    assert s.transitions.is_connected() and s.last_connect_time and s.last_disconnect_time is None
    with pytest.raises(MachineError):
        s.transitions.connect()
    s.transitions.disconnect()
    assert s.transitions.is_disconnected() and s.last_disconnect_time is not None
    # the state outliving its session (amqtt code holding it) is harmless
    state = s.transitions
    del s
    state.connect()
    assert state.state == "connected"


def _connection_garbage() -> dict[str, int]:
    """Run on the broker's loop: what a full collection would free, by type name, among the objects the
    engine makes per connection (nothing else is asserted: a test process has its own cycles)."""
    watched = {"GuardedSession", "SessionState", "OutQueue", "GuardedHandler", "MqttStream", "GuardClient"}
    gc.set_debug(gc.DEBUG_SAVEALL)
    try:
        gc.collect()
        found: dict[str, int] = {}
        for obj in gc.garbage:
            name = type(obj).__name__
            if name in watched:
                found[name] = found.get(name, 0) + 1
        return found
    finally:
        gc.set_debug(0)
        gc.garbage.clear()


def _connected(broker: Any) -> int:
    return sum(1 for s, _ in broker._sessions.values() if s.transitions.state == "connected")


def test_connect_disconnect_cycles_leave_nothing_for_the_cycle_collector(inproc):
    """300 clients x 5 cycles (same client ids, clean and persistent sessions, clean DISCONNECT and
    dropped sockets) with the cycle collector off: afterwards nothing of a connection waits for it, and
    the broker holds exactly the persistent sessions."""
    broker = inproc()
    gc.collect()
    gc.disable()
    try:
        for cycle in range(5):
            clients = []
            for i in range(300):
                c, _ = raw.connected(broker.port, f"mem-{i}", clean=i % 3 != 0)
                clients.append(c)
            for i, c in enumerate(clients):
                if i % 2:
                    c.send(raw.packet(0xE0, b""))  # DISCONNECT
                c.close()
            assert until(lambda: broker.call(lambda: _connected(broker.broker) == 0), timeout=10)
            assert broker.call(_connection_garbage) == {}, f"cycle {cycle}"
        sessions = broker.call(lambda: len(broker.broker._sessions))
        assert sessions == 100  # the persistent ones (every third id), kept offline
    finally:
        gc.enable()


def test_a_session_is_small_and_still_pickles():
    import pickle
    import sys

    s = GuardedSession()
    s.client_id = "c1"
    s.transitions.connect()
    s.attributes["k"] = 1
    # slots: no per-session dict until something outside __init__ sets an attribute
    assert not s.__dict__
    assert sys.getsizeof(s) < 400
    assert len(s.inflight_out) == 0 and "inflight_out" in s.__dict__  # amqtt's table, made on use
    copy = pickle.loads(pickle.dumps(s))
    assert copy.client_id == "c1" and copy.attributes == {"k": 1}
    assert copy.transitions.is_connected() and copy.last_connect_time == s.last_connect_time


def test_the_sys_sample_walks_the_sessions_in_steps(inproc, monkeypatch):
    from mqtt_guard.plugins import sys as sys_plugin

    monkeypatch.setattr(sys_plugin, "SAMPLE_SLICE", 10)
    broker = inproc()
    clients = [raw.connected(broker.port, f"step-{i}")[0] for i in range(35)]
    try:

        def run() -> tuple[int, Any, Any]:
            service = broker.guard.metrics
            steps, n = service.probe_steps(), 0
            while True:
                try:
                    next(steps)
                    n += 1
                except StopIteration as done:
                    return n, done.value, service.probe()

        n, stepped, whole = broker.call(run)
        assert n == 4  # 35 sessions in steps of 10
        assert stepped == whole
        assert stepped.sessions_total == 35 and set(stepped.queue_depths) == {f"step-{i}" for i in range(35)}
    finally:
        for c in clients:
            c.close()
