"""Item 11: SIGTERM and SIGINT stop the broker cleanly: it stops accepting, delivers what it had already
accepted, closes every connection once, publishes no wills (the clients did nothing wrong) and nothing
twice, and exits 0. (Plain amqtt's CLI is killed by SIGTERM without any shutdown, docs/amqtt-proofs/p6b_cli.py.)"""

from __future__ import annotations

import signal
import socket

import pytest

from tests.helpers import rawmqtt as raw

N = 300


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_shutdown_delivers_accepted_messages_once_and_no_wills(anon_broker, sig):
    broker = anon_broker()
    watcher, _ = raw.connected(broker.port, "watcher")
    watcher.send(raw.subscribe(1, ("#", 0)))
    watcher.expect(raw.SUBACK)
    willing = []
    for i in range(3):
        c = raw.RawClient(broker.port)
        c.send(raw.connect(f"willing-{i}", will=(f"wills/{i}", b"gone", 1, True)))
        assert c.connack() == (0, 0)
        willing.append(c)
    with raw.connected(broker.port, "publisher")[0] as pub:
        pub.send(b"".join(raw.publish("data/x", b"%d" % i, qos=1, packet_id=i + 1) for i in range(N)))
        for _ in range(N):
            pub.expect(raw.PUBACK, timeout=10)  # all accepted before the signal
        assert broker.stop(sig) == 0
        assert pub.closed_by_peer(5)
    got = []
    with watcher:
        while True:
            try:
                pkt = watcher.read(5)
            except TimeoutError:
                pytest.fail("watcher connection not closed by the shutdown")
            if pkt is None:
                break
            got.append(pkt)
    assert [(p.topic, p.payload) for p in got] == [("data/x", b"%d" % i) for i in range(N)]
    for c in willing:
        assert c.closed_by_peer(1)
        c.close()
    log = broker.log()
    assert "shutting down" in log and "stopped" in log
    assert "Traceback" not in log


def test_no_new_connections_during_and_after_shutdown(anon_broker):
    broker = anon_broker()
    port = broker.port
    assert broker.stop(signal.SIGTERM) == 0
    with pytest.raises(OSError):
        socket.create_connection(("127.0.0.1", port), timeout=1).close()


@pytest.mark.parametrize("durable", [True, False])
def test_shutdown_says_what_becomes_of_offline_sessions_and_their_queued_messages(anon_broker, durable):
    """Issue 15 item 9, issue 17: with durable state (the default) offline sessions are kept in Redis;
    without it (`durable.enabled: false`) they live in memory only and a shutdown says what it loses."""
    broker = anon_broker("" if durable else "durable:\n  enabled: false\n")
    cid = "keeper"
    with raw.connected(broker.port, cid, clean=False)[0] as sub:
        sub.send(raw.subscribe(1, ("kept/#", 1)))
        sub.expect(raw.SUBACK)
        sub.send(raw.DISCONNECT_BYTES)
    broker.wait_log(f"client '{cid}' (")
    with raw.connected(broker.port, "pub")[0] as pub:
        for i in range(3):
            pub.send(raw.publish("kept/x", b"%d" % i, qos=1, packet_id=i + 1))
            pub.expect(raw.PUBACK)
    with raw.connected(broker.port, "online", clean=False)[0]:  # connected: not counted as offline
        assert broker.stop(signal.SIGTERM) == 0
    if durable:
        line = next(ln for ln in broker.log().splitlines() if "offline session(s)" in ln)
        assert " INFO " in line
        assert "1 offline session(s) with 3 queued message(s) are kept in Redis" in line
        return
    line = next(ln for ln in broker.log().splitlines() if "are discarded" in ln)
    assert " WARNING " in line
    assert "1 offline session(s) with 3 queued message(s) are discarded" in line
    assert "sessions live in memory only" in line


def test_shutdown_without_offline_sessions_says_nothing_about_them(anon_broker):
    broker = anon_broker()
    with raw.connected(broker.port, "clean")[0]:
        pass
    assert broker.stop(signal.SIGTERM) == 0
    assert "are discarded" not in broker.log()
