"""The sidecar with real processes: brokers, sidecars and paho clients on one Redis."""

from __future__ import annotations

import signal
import time

from tests.helpers.mqtt import CONNACK_NOT_AUTHORIZED, connect
from tests.helpers.wait import until
from tests.sidecar.helpers import fast_config


def kicks(rds, prefix, client_id=None):
    return [
        e
        for _, e in rds.xrange(f"{prefix}audit")
        if e["action"] == "kick" and (client_id is None or e["client_id"] == client_id)
    ]


def test_session_time_disconnects_within_the_limit_plus_one_interval(
    start_broker, start_sidecar, add_user, cli, tmp_path, rds, prefix
):
    add_user("d17", "pw")
    assert cli("quota", "set", "d17", "--session-time", "2s").returncode == 0
    broker = start_broker("--config", fast_config(tmp_path))
    sidecar = start_sidecar("--interval", "0.2")
    started = time.monotonic()
    client = connect(broker.port, "d17", "pw", client_id="d17-a")
    assert client.rc == 0
    assert client.disconnected.wait(2 + 0.2 + 1.0)
    elapsed = time.monotonic() - started
    assert 1.95 <= elapsed <= 2 + 0.2 + 1.0
    broker.wait_log("session time 2s exceeded")
    sidecar.wait_log("kicking client 'd17-a'")
    [entry] = kicks(rds, prefix, "d17-a")
    assert entry["by"].startswith("sidecar:") and entry["username"] == "d17" and "blocked_until" not in entry
    again = connect(broker.port, "d17", "pw", client_id="d17-a")  # session_time limits one connection
    assert again.rc == 0
    again.close()


def test_expired_user_is_disconnected_and_then_refused(start_broker, start_sidecar, add_user, cli, tmp_path):
    add_user("temp", "pw")
    broker = start_broker("--config", fast_config(tmp_path))
    start_sidecar("--interval", "0.2")
    client = connect(broker.port, "temp", "pw")
    assert client.rc == 0
    # The expiry is set once the client is in (set at `user add`, a slow start-up could outlast it).
    assert cli("user", "set", "temp", "--expires", "+1s").returncode == 0
    assert client.disconnected.wait(1 + 0.2 + 3)
    broker.wait_log("user expired")
    assert connect(broker.port, "temp", "pw").rc == CONNACK_NOT_AUTHORIZED


def test_a_block_set_by_one_broker_disconnects_the_users_clients_on_every_broker(
    start_broker, start_sidecar, add_user, tmp_path, rds, prefix
):
    add_user("fleet", "pw")
    b1 = start_broker("--config", fast_config(tmp_path))
    b2 = start_broker("--config", fast_config(tmp_path))
    a = connect(b1.port, "fleet", "pw", client_id="fleet-a")
    b = connect(b2.port, "fleet", "pw", client_id="fleet-b")
    assert a.rc == b.rc == 0
    start_sidecar("--interval", "0.2")
    # What a broker writes when the user's events quota runs out with on_exceed: disconnect.
    rds.hset(f"{prefix}block:user:fleet", mapping={"reason": "events quota 10/1m used up", "until": "0", "by": "b"})
    rds.expire(f"{prefix}block:user:fleet", 30)
    assert a.disconnected.wait(3) and b.disconnected.wait(3)
    b1.wait_log("blocked: events quota 10/1m used up")
    b2.wait_log("blocked: events quota 10/1m used up")
    assert connect(b2.port, "fleet", "pw", client_id="fleet-c").rc == CONNACK_NOT_AUTHORIZED
    b2.wait_log("refused CONNECT of client 'fleet-c', username 'fleet': blocked for")
    assert len(kicks(rds, prefix)) == 2


def test_two_sidecars_do_not_kick_twice_and_the_standby_takes_over(
    start_broker, start_sidecar, add_user, cli, tmp_path, rds, prefix
):
    add_user("d", "pw")
    cli("quota", "set", "d", "--session-time", "1s")
    broker = start_broker("--config", fast_config(tmp_path))
    first = start_sidecar("--interval", "0.2")
    first.wait_log("is the leader now")
    second = start_sidecar("--interval", "0.2")
    clients = [connect(broker.port, "d", "pw", client_id=f"d-{i}") for i in range(3)]
    for c in clients:
        assert c.disconnected.wait(5)
    time.sleep(1.0)  # both sidecars keep evaluating; nobody is kicked again
    assert sorted(e["client_id"] for e in kicks(rds, prefix)) == ["d-0", "d-1", "d-2"]
    assert "is the leader now" not in second.log()
    leader = rds.get(f"{prefix}sidecar:leader")
    assert leader and leader in first.log()

    first.stop(signal.SIGKILL)  # the leader dies without resigning
    second.wait_log("is the leader now", timeout=3 + 0.2 + 2)
    late = connect(broker.port, "d", "pw", client_id="d-late")
    assert late.disconnected.wait(1 + 0.2 + 2)
    assert [e["client_id"] for e in kicks(rds, prefix)].count("d-late") == 1


def test_restarting_the_sidecar_loses_nothing_and_kicks_nobody_twice(
    start_broker, start_sidecar, add_user, cli, tmp_path, rds, prefix
):
    add_user("d", "pw")
    cli("quota", "set", "d", "--session-time", "1.5s")
    broker = start_broker("--config", fast_config(tmp_path))
    sidecar = start_sidecar("--interval", "0.2")
    a = connect(broker.port, "d", "pw", client_id="a")
    assert a.disconnected.wait(4)
    sidecar.stop(signal.SIGKILL)
    b = connect(broker.port, "d", "pw", client_id="b")
    assert not b.disconnected.wait(2.5)  # over its time, but no sidecar runs
    start_sidecar("--interval", "0.2")  # connected-since lives in Redis: the new sidecar knows
    assert b.disconnected.wait(3 + 1)  # it may wait out the dead leader's lease (leader_ttl 3s)
    time.sleep(0.5)
    assert sorted(e["client_id"] for e in kicks(rds, prefix)) == ["a", "b"]


def test_a_killed_broker_is_found_dead_and_its_sessions_cleaned_up(
    start_broker, start_sidecar, add_user, cli, tmp_path, rds, prefix
):
    add_user("d", "pw")
    cli("quota", "set", "d", "--sessions", "1")
    b1 = start_broker("--config", fast_config(tmp_path))
    b2 = start_broker("--config", fast_config(tmp_path))
    sidecar = start_sidecar("--interval", "0.2")
    first = connect(b1.port, "d", "pw", client_id="dev-1")
    assert first.rc == 0
    assert connect(b2.port, "d", "pw", client_id="dev-2").rc == CONNACK_NOT_AUTHORIZED
    b1.stop(signal.SIGKILL)
    # broker_dead_after is 1.5 s in this config; then the sidecar (or the other broker, whichever
    # looks first) removes b1's sessions and leases.
    assert until(lambda: not rds.exists(f"{prefix}session:dev-1"), timeout=1.5 + 0.2 + 2)
    assert until(lambda: "stopped heartbeating: removed its 1 session(s)" in sidecar.log() + b2.log())
    assert not rds.hexists(f"{prefix}sessions:user:d", "dev-1")
    second = connect(b2.port, "d", "pw", client_id="dev-2")
    assert second.rc == 0
    second.close()
