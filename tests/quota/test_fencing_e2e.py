"""A broker declared dead while it still runs is fenced (issue 15 item 8; quota/heartbeat.py): real
brokers and sidecar, paho clients. Broker A is stopped (SIGSTOP) for longer than `broker_dead_after`, the
sidecar or broker B reaps it, one of its devices reconnects to broker B meanwhile; after
SIGCONT, A serves its other clients on a new registration (visible in the registry again, usage not
counted twice) and disconnects the device B holds now: never two brokers serving one client id."""

from __future__ import annotations

import signal
import time

from tests.helpers.mqtt import connect
from tests.helpers.wait import until
from tests.sidecar.helpers import fast_config


def _broker_id(rds, prefix, pid):
    for broker_id in rds.zrange(f"{prefix}brokers", 0, -1):
        if rds.hget(f"{prefix}broker:{broker_id}", "pid") == str(pid):
            return broker_id
    return None


def test_a_broker_taken_for_dead_is_fenced_and_never_double_serves(
    start_broker, start_sidecar, add_user, cli, rds, prefix, tmp_path
):
    add_user("d", "pw")
    rds.hset(f"{prefix}acl:user:d", "d/#", "readwrite")
    cli("quota", "set", "d", "--events", "1000/1h", "--events-direction", "in")
    usage = f"{prefix}quota:usage:d:events:{int(time.time() // 3600 * 3600)}"
    a = start_broker("--config", fast_config(tmp_path))  # sync_interval 0.2 s, broker_dead_after 1.5 s
    b = start_broker("--config", fast_config(tmp_path))
    start_sidecar("--interval", "0.2")
    assert until(lambda: _broker_id(rds, prefix, a.proc.pid) and _broker_id(rds, prefix, b.proc.pid))
    a_id, b_id = _broker_id(rds, prefix, a.proc.pid), _broker_id(rds, prefix, b.proc.pid)
    old_epoch = int(rds.hget(f"{prefix}broker:{a_id}", "epoch"))

    stay = connect(a.port, "d", "pw", client_id="stay")
    assert stay.subscribe(("d/stay", 1)) == [1]
    moved_on_a = connect(a.port, "d", "pw", client_id="moved")
    for i in range(10):
        stay.publish("d/stay", str(i), qos=1)
    assert len([m for m in stay.received(0.5)]) == 10
    assert until(lambda: rds.hget(usage, "used") == "10" and int(rds.hget(usage, f"lease:{a_id}") or 0) > 0)
    assert until(lambda: rds.hget(f"{prefix}session:moved", "broker") == a_id)

    a.proc.send_signal(signal.SIGSTOP)
    try:
        # Declared dead by the sidecar: its sessions and its lease go, its spending stays counted.
        assert until(lambda: not rds.exists(f"{prefix}broker:{a_id}"), timeout=10)
        assert not rds.exists(f"{prefix}session:stay") and rds.hget(usage, f"lease:{a_id}") is None
        assert rds.hget(usage, "used") == "10"
        reaper = rds.get(f"{prefix}broker:{a_id}:reaped").split("|")[0]  # who declared it dead
        assert reaper == b_id or reaper.startswith("sidecar:")
        # The device behind "moved" gives up on A and connects to B.
        moved_on_b = connect(b.port, "d", "pw", client_id="moved")
        assert moved_on_b.rc == 0
        assert until(lambda: rds.hget(f"{prefix}session:moved", "broker") == b_id)
    finally:
        a.proc.send_signal(signal.SIGCONT)

    a.wait_log(f"broker {a_id} was declared dead by {reaper} at ")
    [line] = [x for x in a.log().splitlines() if "was declared dead by" in x]
    assert " ERROR mqtt_guard.quota: " in line and "Fenced: its writes under epoch" in line
    # Fenced: the client id B holds now is closed on A; the other client is registered again, anew.
    assert moved_on_a.disconnected.wait(5)
    a.wait_log(f"client 'moved' (user 'd') is registered on broker {b_id} now: disconnecting it here")
    assert until(lambda: rds.hget(f"{prefix}session:stay", "broker") == a_id)
    assert int(rds.hget(f"{prefix}broker:{a_id}", "epoch")) > old_epoch
    assert rds.hgetall(f"{prefix}sessions:user:d").keys() == {"stay", "moved"}
    assert rds.hget(f"{prefix}session:moved", "broker") == b_id and not moved_on_b.disconnected.is_set()
    assert not stay.disconnected.is_set()
    # Still served by A, and its usage counted once: 10 before, 10 after; its lease is back.
    for i in range(10):
        stay.publish("d/stay", str(i), qos=1)
    assert len(stay.received(0.5)) == 10
    assert until(lambda: rds.hget(usage, "used") == "20" and int(rds.hget(usage, f"lease:{a_id}") or 0) > 0)
    time.sleep(0.6)
    assert rds.hget(usage, "used") == "20"
    assert a_id in rds.zrange(f"{prefix}brokers", 0, -1)
    moved_on_b.publish("d/moved", b"from b", qos=1)  # and B serves the device that moved
    assert until(lambda: rds.hget(usage, "used") == "21")
    for c in (stay, moved_on_a, moved_on_b):
        c.close()
