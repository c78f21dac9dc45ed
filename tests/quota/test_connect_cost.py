"""What a CONNECT costs in Redis (issue 9), with real brokers, real clients and the real redis-server.

In the steady state a CONNECT and a DISCONNECT await no Redis round trip: blocks and limits are
cached in process under client tracking, a user's leases linger after its last client left, and the
session registry is written in batches, a CONNECT taking one of the broker's reserved session slots.
The guarantees stay: admin changes apply to the next CONNECT, `sessions` is exact across brokers,
a take-over on another broker kicks the old connection.
"""

from __future__ import annotations

import socket
import threading
import time

import pytest

from tests.bench.run import GUARD_ON
from tests.helpers import rawmqtt
from tests.helpers.mqtt import CONNACK_NOT_AUTHORIZED, connect
from tests.helpers.wait import until as wait_for
from tests.sidecar.helpers import fast_config

BENCH_QUOTA = GUARD_ON["quota_args"]  # the quota `make bench` gives its guard-on user
# Heartbeats and analytics flushes far apart, so that what Redis sees during a test is the CONNECTs'.
QUIET = "metrics:\n  flush_interval: 10s\n  sys_interval: 0\n"


def cycle(port: int, client_id: str, user: str = "bench", password: str = "pw", *, stay: float = 0.0) -> int:
    """CONNECT, read the CONNACK, DISCONNECT: the CONNACK's return code."""
    with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
        s.sendall(rawmqtt.connect(client_id, username=user, password=password))
        data = b""
        while len(data) < 4:
            chunk = s.recv(4 - len(data))
            if not chunk:
                return -1
            data += chunk
        assert data[:1] == b"\x20", data
        if stay:
            time.sleep(stay)
        s.sendall(b"\xe0\x00")
        return data[3]


def hold(port: int, client_id: str, user: str = "bench", password: str = "pw") -> tuple[socket.socket, int]:
    """CONNECT and keep the connection open: (socket, CONNACK return code)."""
    s = socket.create_connection(("127.0.0.1", port), timeout=10)
    s.sendall(rawmqtt.connect(client_id, username=user, password=password, keepalive=600))
    data = b""
    while len(data) < 4:
        chunk = s.recv(4 - len(data))
        if not chunk:
            return s, -1
        data += chunk
    return s, data[3]


def closed_by_peer(s: socket.socket, timeout: float) -> bool:
    s.settimeout(timeout)
    try:
        return s.recv(1) == b""
    except TimeoutError:
        return False
    except OSError:
        return True


@pytest.fixture
def bench_user(add_user, cli):
    add_user("bench", "pw")
    r = cli("quota", "set", "bench", *BENCH_QUOTA)
    assert r.returncode == 0, r.stderr


def test_repeated_connects_of_a_user_make_no_quota_reads_and_batch_the_registry(
    start_broker, bench_user, rds, tmp_path, prefix
):
    # No heartbeat during the test (the first one runs at start): what Redis sees is the CONNECTs' doing.
    config = tmp_path / "quiet.yaml"
    config.write_text("quota:\n  sync_interval: 30s\n  broker_dead_after: 60s\n" + QUIET)
    broker = start_broker("--config", str(config))
    broker.wait_log("block cache loaded")  # the invalidation listener vouches for the caches
    for i in range(8):  # first CONNECTs: limits, blocks and the first lease come from Redis
        assert cycle(broker.port, f"warm-{i}") == 0
    rds.config_resetstat()
    n = 100

    def worker(k: int) -> None:
        for i in range(n // 4):
            assert cycle(broker.port, f"c{k}-{i}") == 0

    threads = [threading.Thread(target=worker, args=(k,)) for k in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert wait_for(lambda: rds.hlen(f"{prefix}sessions:user:bench") == 0)
    stats = {name.removeprefix("cmdstat_"): v["calls"] for name, v in rds.info("commandstats").items()}
    # No block reads (HGETALL+PTTL), no limits reads, no lease syncs: the only commands sent are the
    # registry batches (EVALSHA) and, counted by Redis inside them, the registry script's own commands.
    # (ZADD/ZREM: the registry script also writes and removes the sidecar's deadline, `sidecar:due`.)
    script_inner = {"hget", "hgetall", "hlen", "hexists", "hset", "hdel", "del", "sadd", "srem", "zadd", "zrem"}
    # On a loaded machine the window can outlast flush_interval (10 s): an analytics flush (a script of
    # counter writes) and the invalidation listener's health PING may then fall in it. Neither reads quota.
    # A script's first call in this broker (the analytics flush's, say) loads it: SCRIPT LOAD.
    background = {
        "hincrby",
        "hincrbyfloat",
        "zincrby",
        "zadd",
        "zrange",
        "zremrangebyscore",
        "expire",
        "expireat",
        "ping",
        "script|load",
        # the cluster's readers (docs/scaling.md): routes and inbox XREAD BLOCK, the registry look each second
        "xread",
        "xtrim",
        "multi",
        "exec",
        "time",
        "sismember",
        "exists",
    }
    # Durable state (issue 17): a clean CONNECT discards any stored persistent session of its client id, an
    # unacknowledged write the BatchWriter groups per loop iteration (DISCARD_LUA: an EVAL whose GET reads
    # the stored owner). Not a quota read; folding it into the registry batch is a known follow-up.
    durable = {"eval", "get"}
    assert set(stats) <= script_inner | background | durable | {"evalsha", "config|resetstat"}, stats
    assert "pttl" not in stats
    # Batches, not one call per CONNECT or DISCONNECT (100 of each here; ~13 calls on an idle machine; none
    # once the broker knows it is the only one: then nothing of a connection this short goes to Redis).
    assert stats.get("evalsha", 0) < n, stats


def test_steady_state_connects_are_admitted_while_redis_is_paused(start_broker, bench_user, rds, tmp_path, prefix):
    broker = start_broker("--config", fast_config(tmp_path, QUIET))
    broker.wait_log("block cache loaded")  # else the CONNECTs below would rightly read blocks from Redis
    for i in range(4):
        assert cycle(broker.port, f"warm-{i}") == 0
    # Slots reserved by the broker's heartbeat (the slot block of sessions 100000 is 100).
    assert wait_for(lambda: list(rds.hgetall(f"{prefix}sessions:slots:bench").values()) == ["100"])
    assert cycle(broker.port, "warm-again") == 0  # caches filled while the listener is connected
    pause = 1.5
    rds.execute_command("CLIENT", "PAUSE", str(int(pause * 1000)), "ALL")  # every Redis command waits
    paused_until = time.monotonic() + pause
    sockets = []
    for i in range(3):
        s, rc = hold(broker.port, f"paused-{i}")
        assert rc == 0
        sockets.append(s)
    # All three were answered while Redis still answered nothing: none of them waited for Redis.
    assert time.monotonic() < paused_until
    # Registered once Redis answers again.
    assert wait_for(lambda: set(rds.hkeys(f"{prefix}sessions:user:bench")) == {"paused-0", "paused-1", "paused-2"})
    for s in sockets:
        s.close()


def test_admin_changes_apply_to_the_next_connect(start_broker, bench_user, cli, rds, tmp_path, prefix):
    broker = start_broker("--config", fast_config(tmp_path, QUIET))
    for i in range(4):
        assert cycle(broker.port, f"warm-{i}") == 0
    # A user block with the CLI, lifted with `quota reset`.
    assert cli("kick", "--user", "bench", "--block", "10m").returncode == 0
    assert cycle(broker.port, "after-block") == CONNACK_NOT_AUTHORIZED
    assert cli("quota", "reset", "bench").returncode == 0
    assert cycle(broker.port, "after-reset") == 0
    # A client block written as redis-cli would, then deleted.
    rds.hset(f"{prefix}block:client:dev-9", mapping={"reason": "by hand", "until": int(time.time()) + 60})
    rds.expire(f"{prefix}block:client:dev-9", 60)
    assert cycle(broker.port, "dev-9") == CONNACK_NOT_AUTHORIZED
    assert cycle(broker.port, "dev-10") == 0
    rds.delete(f"{prefix}block:client:dev-9")
    assert cycle(broker.port, "dev-9") == 0
    # A block that expires on its own ends on time.
    rds.hset(f"{prefix}block:user:bench", mapping={"reason": "short", "until": int(time.time()) + 1})
    rds.pexpire(f"{prefix}block:user:bench", 700)
    assert cycle(broker.port, "short-block") == CONNACK_NOT_AUTHORIZED
    time.sleep(0.8)
    assert cycle(broker.port, "short-block") == 0
    # `sessions` lowered with the CLI while one client is connected: the next CONNECT is refused...
    s, rc = hold(broker.port, "holder")
    assert rc == 0
    assert cli("quota", "set", "bench", "--sessions", "1").returncode == 0
    assert cycle(broker.port, "second") == CONNACK_NOT_AUTHORIZED
    broker.wait_log("too many sessions: user 'bench' has 1 connected")
    # ...and raised with plain redis commands, admitted again.
    rds.hset(f"{prefix}quota:user:bench", "sessions", "2")
    assert cycle(broker.port, "second") == 0
    s.close()


def test_sessions_limit_stays_exact_with_slots_across_two_brokers(start_broker, add_user, cli, rds, tmp_path, prefix):
    add_user("fleet", "pw")
    assert cli("quota", "set", "fleet", "--sessions", "40").returncode == 0
    b1 = start_broker("--config", fast_config(tmp_path, QUIET))
    b2 = start_broker("--config", fast_config(tmp_path, QUIET))
    for b in (b1, b2):
        for i in range(3):
            assert cycle(b.port, f"warm-{b.port}-{i}", "fleet") == 0
    # Both brokers reserve slots while the user is far from its limit.
    assert wait_for(lambda: len(rds.hgetall(f"{prefix}sessions:slots:fleet")) == 2)
    held: list[socket.socket] = []
    results: list[int] = []
    lock = threading.Lock()

    def worker(port: int, k: int) -> None:
        for i in range(15):
            s, rc = hold(port, f"h-{port}-{k}-{i}", "fleet")
            with lock:
                results.append(rc)
                if rc == 0:
                    held.append(s)
                else:
                    s.close()

    threads = [threading.Thread(target=worker, args=(b.port, k)) for b in (b1, b2) for k in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    try:
        assert results.count(0) == 40 and results.count(CONNACK_NOT_AUTHORIZED) == 20
        # Exactly the admitted ones are registered; slots and sessions together never exceed the limit.
        assert wait_for(lambda: rds.hlen(f"{prefix}sessions:user:fleet") == 40)
        slots = sum(int(v) for v in rds.hgetall(f"{prefix}sessions:slots:fleet").values())
        assert rds.hlen(f"{prefix}sessions:user:fleet") + slots <= 40
        # A third broker sees the same limit.
        b3 = start_broker("--config", fast_config(tmp_path, QUIET))
        assert cycle(b3.port, "one-more", "fleet") == CONNACK_NOT_AUTHORIZED
        held.pop().close()
        assert wait_for(lambda: rds.hlen(f"{prefix}sessions:user:fleet") == 39)
        assert wait_for(lambda: cycle(b3.port, "one-more", "fleet", stay=0.2) == 0, timeout=5, interval=0.3)
    finally:
        for s in held:
            s.close()


def two_brokers_and_dev_on_the_first(start_broker, rds, tmp_path, prefix):
    """Two warmed-up brokers (each holding session slots of bench) and client "dev" registered on the first."""
    b1 = start_broker("--config", fast_config(tmp_path, QUIET))
    b2 = start_broker("--config", fast_config(tmp_path, QUIET))
    for b in (b1, b2):
        for i in range(3):
            assert cycle(b.port, f"warm-{b.port}-{i}") == 0
    assert wait_for(lambda: len(rds.hgetall(f"{prefix}sessions:slots:bench")) == 2)
    old = connect(b1.port, "bench", "pw", client_id="dev")
    assert old.rc == 0
    assert wait_for(lambda: rds.hget(f"{prefix}session:dev", "broker"))
    return b1, b2, old


def test_take_over_on_another_broker_kicks_the_old_connection_when_admitted_on_a_slot(
    start_broker, bench_user, rds, tmp_path, prefix
):
    b1, b2, old = two_brokers_and_dev_on_the_first(start_broker, rds, tmp_path, prefix)
    new = connect(b2.port, "bench", "pw", client_id="dev")
    assert new.rc == 0
    assert old.disconnected.wait(3)
    b1.wait_log("connected again on broker")
    assert not new.disconnected.wait(0.5)
    session = rds.hgetall(f"{prefix}session:dev")
    assert rds.hget(f"{prefix}sessions:user:bench", "dev") == f"{session['broker']}/{session['conn']}"
    new.close()


def test_lingering_leases_and_slots_are_returned_when_the_linger_ends(start_broker, bench_user, rds, tmp_path, prefix):
    config = tmp_path / "linger.yaml"
    config.write_text("quota:\n  sync_interval: 0.2s\n  broker_dead_after: 1.5s\n  linger: 1s\n" + QUIET)
    broker = start_broker("--config", str(config))
    assert cycle(broker.port, "dev") == 0
    day = int(time.time() // 86400 * 86400)
    key = f"{prefix}quota:usage:bench:events:{day}"
    broker_id = wait_for(lambda: rds.zrange(f"{prefix}brokers", 0, 0))[0]
    assert wait_for(lambda: int(rds.hget(key, f"lease:{broker_id}") or 0) > 0)
    # Still held shortly after the last client left (a returning client needs no first sync)...
    time.sleep(0.4)
    assert int(rds.hget(key, f"lease:{broker_id}") or 0) > 0
    # ...and handed back once the linger is over, slots too.
    assert wait_for(lambda: rds.hget(key, f"lease:{broker_id}") in (None, "0"), timeout=4)
    assert wait_for(lambda: not rds.hexists(f"{prefix}sessions:slots:bench", f"lease:{broker_id}"), timeout=4)
    assert broker.stop() == 0
    assert not rds.exists(f"{prefix}sessions:slots:bench")


def test_a_connection_shorter_than_a_registry_batch_registers_nothing_but_still_takes_over(
    start_broker, bench_user, rds, tmp_path, prefix
):
    """CONNECT+DISCONNECT within one batch window (20 ms) fold into one 't' operation: no registration to
    write and delete, but the client id's connection on another broker is still kicked (MQTT take-over)."""
    b1, b2, old = two_brokers_and_dev_on_the_first(start_broker, rds, tmp_path, prefix)
    assert cycle(b2.port, "dev") == 0  # in and out at once, on the other broker
    assert old.disconnected.wait(3)  # taken over all the same
    b1.wait_log("connected again on broker")
    # Nothing of either connection is left in the registry.
    assert wait_for(lambda: not rds.exists(f"{prefix}session:dev"))
    assert wait_for(lambda: rds.hlen(f"{prefix}sessions:user:bench") == 0)


def test_a_broker_that_was_alone_still_takes_over_from_a_broker_that_joined_later(
    start_broker, bench_user, rds, tmp_path, prefix
):
    """Alone in the registry, a broker answers the take-over check of a connection shorter than a batch
    itself (nobody else can hold the client id). A broker joining changes the brokers key: from then on
    the check goes to Redis again, and the other broker's connection is kicked."""
    b1 = start_broker("--config", fast_config(tmp_path, QUIET))  # heartbeat every 0.2 s
    b1.wait_log("block cache loaded")
    for i in range(3):
        assert cycle(b1.port, f"warm-{i}") == 0
    time.sleep(0.6)  # a few heartbeats: b1 knows it is the only broker
    b2 = start_broker("--config", fast_config(tmp_path, QUIET))
    old = connect(b2.port, "bench", "pw", client_id="dev")
    assert old.rc == 0
    assert wait_for(lambda: rds.hget(f"{prefix}session:dev", "broker"))
    assert cycle(b1.port, "dev") == 0  # in and out at once on the broker that was alone
    assert old.disconnected.wait(3)  # taken over
    b2.wait_log("connected again on broker")
    old.close()
