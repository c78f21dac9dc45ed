"""Enforcement latency of the deadline and event paths (issue 23), with real processes: a broker, the
sidecar and MQTT clients on one Redis. The sidecar looks at a session only when it is due, named by an
event or swept, so these check that each time limit is still met on time."""

from __future__ import annotations

import time

from tests.helpers import rawmqtt
from tests.helpers.mqtt import connect
from tests.helpers.wait import until
from tests.sidecar.helpers import fast_config
from tests.sidecar.test_sidecar_e2e import kicks

TICK = 0.2  # --interval of the sidecars below


def test_a_connect_writes_its_session_time_deadline_and_only_then_is_it_kicked(
    start_broker, start_sidecar, add_user, cli, tmp_path, rds, prefix
):
    add_user("st", "pw")
    assert cli("quota", "set", "st", "--session-time", "2s").returncode == 0
    broker = start_broker("--config", fast_config(tmp_path))
    start_sidecar("--interval", str(TICK))
    client = connect(broker.port, "st", "pw", client_id="st-1")
    assert client.rc == 0
    started = time.monotonic()
    since = float(until(lambda: rds.hget(f"{prefix}session:st-1", "since"), timeout=2))
    # The sidecar timed it at its first look: due at the end of its session_time, not before.
    assert until(lambda: rds.zscore(f"{prefix}sidecar:due", "st-1") == since + 2, timeout=2)
    assert client.disconnected.wait(2 + TICK + 1.0)
    assert 1.9 <= time.monotonic() - started <= 2 + TICK + 1.0
    [entry] = kicks(rds, prefix, "st-1")
    kicked_at = int(rds.xrange(f"{prefix}audit")[-1][0].split("-")[0]) / 1000
    assert since + 2 <= kicked_at <= since + 2 + TICK + 0.3, kicked_at - since  # within 2 s plus one tick
    assert until(lambda: rds.zscore(f"{prefix}sidecar:due", "st-1") is None)  # gone with the session
    assert entry["reason"].startswith("session time 2s exceeded")


def test_a_limit_edited_for_a_connected_client_re_times_its_deadline(
    start_broker, start_sidecar, add_user, cli, tmp_path, rds, prefix
):
    add_user("ed", "pw")
    assert cli("quota", "set", "ed", "--session-time", "1h").returncode == 0
    broker = start_broker("--config", fast_config(tmp_path))
    start_sidecar("--interval", str(TICK))
    client = connect(broker.port, "ed", "pw", client_id="ed-1")
    assert client.rc == 0
    since = float(until(lambda: rds.hget(f"{prefix}session:ed-1", "since"), timeout=2))
    assert until(lambda: rds.zscore(f"{prefix}sidecar:due", "ed-1") == since + 3600, timeout=2)
    time.sleep(1.2)
    assert cli("quota", "set", "ed", "--session-time", "1s").returncode == 0
    edited = time.monotonic()
    assert client.disconnected.wait(1 + TICK + 1.0)  # "within a second" (+ the tick and the broker's kick)
    assert time.monotonic() - edited <= 1 + TICK + 1.0
    assert kicks(rds, prefix, "ed-1")[0]["reason"].startswith("session time 1s exceeded")


def test_a_slow_consumer_is_kicked_within_queue_grace_plus_one_tick(
    start_broker, start_sidecar, add_user, cli, tmp_path, rds, prefix
):
    add_user("sc", "pw")
    add_user("root", "pw-root", "--superuser")
    rds.hset(f"{prefix}acl:user:sc", "feed/#", "read")
    assert cli("quota", "set", "sc", "--max-queue", "5", "--queue-grace", "1s").returncode == 0
    broker = start_broker("--config", fast_config(tmp_path))
    start_sidecar("--interval", str(TICK))
    slow, _ = rawmqtt.connected(broker.port, "sc-1", username="sc", password="pw", rcvbuf=4096)
    try:
        slow.send(rawmqtt.subscribe(1, ("feed/#", 1)))
        slow.expect(rawmqtt.SUBACK)
        pub = connect(broker.port, "root", "pw-root")
        for i in range(60):  # never acknowledged: 20 in flight, the rest queued, well over max_queue 5
            pub.publish("feed/t", str(i).encode(), qos=1, timeout=10)
        over = until(lambda: rds.hget(f"{prefix}session:sc-1", "queue_over_since"), timeout=3)
        assert over
        over_since = float(rds.hget(f"{prefix}session:sc-1", "queue_over_since"))
        assert until(lambda: kicks(rds, prefix, "sc-1"), timeout=1 + TICK + 3)
        kicked_at = int(rds.xrange(f"{prefix}audit")[-1][0].split("-")[0]) / 1000
        assert over_since + 1 <= kicked_at <= over_since + 1 + TICK + 0.3, kicked_at - over_since
        assert kicks(rds, prefix, "sc-1")[0]["reason"].startswith("slow consumer:")
        assert slow.closed_by_peer(5)
        pub.close()
    finally:
        slow.close()


def test_a_deadline_lost_from_redis_is_found_again_by_the_sweep(
    start_broker, start_sidecar, add_user, cli, tmp_path, rds, prefix
):
    """The sweep is the safety net (issue 23): an entry of `sidecar:due` deleted behind the sidecar's back
    (an admin's `redis-cli DEL`, a failover that lost a write) is re-made when the sweep reaches the
    session, so the limit is still enforced, at most one sweep interval late."""
    add_user("lost", "pw")
    assert cli("quota", "set", "lost", "--session-time", "2s").returncode == 0
    broker = start_broker("--config", fast_config(tmp_path))
    config = tmp_path / "sidecar.yaml"
    config.write_text("sidecar:\n  interval: 0.2s\n  sweep_interval: 1s\n")
    start_sidecar("--config", str(config))
    client = connect(broker.port, "lost", "pw", client_id="lost-1")
    assert client.rc == 0
    since = float(until(lambda: rds.hget(f"{prefix}session:lost-1", "since"), timeout=2))
    assert until(lambda: rds.zscore(f"{prefix}sidecar:due", "lost-1") == since + 2, timeout=2)
    rds.delete(f"{prefix}sidecar:due")
    assert until(lambda: rds.zscore(f"{prefix}sidecar:due", "lost-1") == since + 2, timeout=1 + TICK + 1)
    assert client.disconnected.wait(2 + 1 + TICK + 1.0)
    assert kicks(rds, prefix, "lost-1")[0]["reason"].startswith("session time 2s exceeded")


def test_a_sidecar_started_after_the_clients_finds_their_deadlines(
    start_broker, start_sidecar, add_user, cli, tmp_path, rds, prefix
):
    """Deadlines written while no sidecar ran (or lost then) are not waited for until the next periodic
    sweep (10 minutes here): a starting sidecar sweeps once it leads and once its invalidation listener is
    subscribed, so the session is timed within its first ticks."""
    add_user("late", "pw")
    assert cli("quota", "set", "late", "--session-time", "2s").returncode == 0
    broker = start_broker("--config", fast_config(tmp_path))
    client = connect(broker.port, "late", "pw", client_id="late-1")
    assert client.rc == 0
    since = float(until(lambda: rds.hget(f"{prefix}session:late-1", "since"), timeout=2))
    rds.delete(f"{prefix}sidecar:due")
    start_sidecar("--interval", str(TICK))
    assert until(lambda: rds.zscore(f"{prefix}sidecar:due", "late-1") == since + 2, timeout=2)
    assert client.disconnected.wait(3 + TICK)
    assert kicks(rds, prefix, "late-1")[0]["reason"].startswith("session time 2s exceeded")


def test_a_default_limit_edited_for_connected_clients_re_times_their_deadlines(
    start_broker, start_sidecar, add_user, cli, tmp_path, rds, prefix
):
    """Most fleets run on the default limits: an edit of `quota:default` re-times every session's
    deadline in Redis at once (not a sweep of an evaluation each), so it is met "within a second" too."""
    add_user("df", "pw")
    broker = start_broker("--config", fast_config(tmp_path))
    start_sidecar("--interval", str(TICK))
    client = connect(broker.port, "df", "pw", client_id="df-1")
    assert client.rc == 0
    until(lambda: rds.hget(f"{prefix}session:df-1", "since"), timeout=2)
    time.sleep(1.2)
    assert cli("quota", "set", "--default", "--session-time", "1s").returncode == 0
    edited = time.monotonic()
    assert client.disconnected.wait(1 + TICK + 1.0)
    assert time.monotonic() - edited <= 1 + TICK + 1.0
    assert kicks(rds, prefix, "df-1")[0]["reason"].startswith("session time 1s exceeded")
