"""`proxy_protocol` listeners (engine/proxy_listener.py, proxy_ws.py) in a real broker process, driven by raw sockets
as a load balancer would: the client's address from a v1 or v2 header is the one the broker logs and
counts (`stats --failures`); an untrusted source, a missing, malformed or late header are refused; TLS
and the WebSocket upgrade start after the header; a listener without proxy_protocol is unaffected."""

from __future__ import annotations

import asyncio
import json
import socket
import ssl

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from websockets.exceptions import WebSocketException
from websockets.sync.client import connect as ws_connect

from mqtt_guard.engine.proxy_listener import read_header
from mqtt_guard.engine.proxy_protocol import ProxyHeader, parse
from tests.helpers import rawmqtt as raw
from tests.helpers.certs import make_pki
from tests.helpers.proxyproto import BALANCER, SIG, v1, v2
from tests.helpers.servers import free_port, wait_port
from tests.helpers.wait import expect, until


class Ports:
    def __init__(self) -> None:
        self.proxied, self.plain, self.tls, self.ws = free_port(), free_port(), free_port(), free_port()


@pytest.fixture
def pki(tmp_path):
    return make_pki(tmp_path)


@pytest.fixture
def broker(start_broker, add_user, pki, tmp_path):
    add_user("alice", "alice-pw")
    ports = Ports()
    config = tmp_path / "guard.yaml"
    config.write_text(f"""
acl:
  default: allow
limits:
  connect_timeout: 1s
metrics:
  flush_interval: 0.2s
listeners:
  - bind: 127.0.0.1:{ports.proxied}
    proxy_protocol: true
    trusted_proxies: ["{BALANCER}/32", "192.0.2.0/24"]
  - bind: 127.0.0.1:{ports.plain}
  - type: tls
    bind: 127.0.0.1:{ports.tls}
    certfile: {pki.server_cert}
    keyfile: {pki.server_key}
    proxy_protocol: true
    trusted_proxies: ["{BALANCER}"]
  - type: websockets
    bind: 127.0.0.1:{ports.ws}
    proxy_protocol: true
    trusted_proxies: ["{BALANCER}", 127.0.0.6]
""")
    process = start_broker("--config", str(config), bind=False, wait_for_port=ports.proxied)
    wait_port(ports.plain)
    wait_port(ports.tls)
    wait_port(ports.ws)
    process.ports = ports
    return process


def login(client: raw.RawClient, client_id: str, password: str = "alice-pw") -> int:
    client.send(raw.connect(client_id, username="alice", password=password))
    return client.connack()[1]


@pytest.mark.parametrize(
    ("header", "seen"),
    [
        (v1("203.0.113.7", 40001), "203.0.113.7:40001"),
        (v1("2001:db8::7", 40002), "2001:db8::7:40002"),
        (v2("198.51.100.20", 40003, tlvs=b"\x01\x00\x04mqtt\x04\x00\x02\x00\x00"), "198.51.100.20:40003"),
        (v2("2001:db8::8", 40004), "2001:db8::8:40004"),
    ],
)
def test_the_client_address_from_the_header_is_the_connection_address(broker, header, seen):
    with raw.RawClient(broker.ports.proxied, source=BALANCER) as c:
        c.send(header + raw.connect("dev-1", username="alice", password="alice-pw"))  # one segment, as balancers do
        assert c.connack() == (0, 0)
        c.send(raw.PINGREQ_BYTES)
        c.expect(raw.PINGRESP)
    broker.wait_log(f"client 'dev-1' connected from {seen} as alice")


def test_a_v2_local_header_and_a_v1_unknown_one_keep_the_balancer_address(broker):
    for i, header in enumerate((v2(None), b"PROXY UNKNOWN\r\n")):
        with raw.RawClient(broker.ports.proxied, source=BALANCER) as c:
            c.send(header)
            assert login(c, f"health-{i}") == 0
        broker.wait_log(f"client 'health-{i}' connected from {BALANCER}:")


def test_a_header_in_pieces_is_read_whole(broker):
    with raw.RawClient(broker.ports.proxied, source=BALANCER) as c:
        for byte in v1("192.0.2.44", 5000):
            c.send(bytes([byte]))
        assert login(c, "slow-balancer") == 0
    broker.wait_log("client 'slow-balancer' connected from 192.0.2.44:5000")


def test_refused_logins_are_counted_for_the_client_address_not_the_balancer(broker, cli):
    for i in range(3):
        with raw.RawClient(broker.ports.proxied, source=BALANCER) as c:
            c.send(v2("198.51.100.9", 1000 + i))
            assert login(c, f"guess-{i}", password="wrong") in (4, 5)

    def addresses():
        result = cli("stats", "--failures", "--json")
        assert result.returncode == 0, result.stderr
        return json.loads(result.stdout)["addresses"]

    expect(lambda: addresses() == [{"address": "198.51.100.9", "failures": 3}])
    assert "refused CONNECT of client 'guess-0' from 198.51.100.9:1000" in broker.log()


def test_an_untrusted_source_is_refused_before_any_byte_is_read(broker):
    with raw.RawClient(broker.ports.proxied, source="127.0.0.1") as c:
        c.send(v1("203.0.113.66", 1) + raw.connect("spoofer", username="alice", password="alice-pw"))
        assert c.closed_by_peer(3)
    broker.wait_log("refused connection from 127.0.0.1:")
    assert "the source is not in trusted_proxies" in broker.log()
    assert "spoofer" not in broker.log() and "203.0.113.66" not in broker.log()


@pytest.mark.parametrize(
    ("data", "reason"),
    [
        (raw.connect("no-header", username="alice", password="alice-pw"), "not a PROXY protocol header"),
        (b"PROXY TCP4 203.0.113.7 10.0.0.2 040 1883\r\n", "not a port"),
        (b"PROXY TCP4 " + b"9" * 120, "without CRLF"),
        (SIG + b"\x23\x11\x00\x0c" + b"\x00" * 12, "unassigned command"),
    ],
)
def test_a_missing_or_malformed_header_is_refused_with_a_log_line(broker, data, reason):
    with raw.RawClient(broker.ports.proxied, source=BALANCER) as c:
        c.send(data)
        assert c.closed_by_peer(3)
    broker.wait_log(f"refused connection from {BALANCER}:")
    broker.wait_log(reason)


def test_refusals_are_logged_once_a_minute_per_source(broker):
    for source, data in (("127.0.0.1", v1("192.0.2.1", 1)), (BALANCER, b"GET / HTTP/1.1\r\n\r\n")):
        for i in range(5):
            with raw.RawClient(broker.ports.proxied, source=source) as c:
                c.send(data if i % 2 else data[:-2] + b"\n\n")  # the details vary, the kind does not
                assert c.closed_by_peer(3)
    log = broker.wait_log(f"refused connection from {BALANCER}:")
    assert log.count("refused connection from 127.0.0.1:") == 1
    assert log.count(f"refused connection from {BALANCER}:") == 1


def test_a_connection_that_sends_nothing_is_closed_at_connect_timeout(broker):
    with raw.RawClient(broker.ports.proxied, source=BALANCER) as c:
        assert c.closed_by_peer(4)  # connect_timeout 1 s, enforced within a quarter second
    broker.wait_log("no complete PROXY protocol header within 1.0 s")


def test_tls_starts_after_the_header(broker, pki):
    ctx = ssl.create_default_context(cafile=str(pki.ca))
    with raw.RawClient(broker.ports.tls, source=BALANCER) as c:
        for byte in v1("203.0.113.9", 7000):  # byte by byte: no byte of the handshake may be read as header
            c.send(bytes([byte]))
        c.sock = ctx.wrap_socket(c.sock, server_hostname="localhost")
        assert login(c, "tls-dev") == 0
    broker.wait_log("client 'tls-dev' connected from 203.0.113.9:7000")
    with raw.RawClient(broker.ports.tls, source=BALANCER) as c:
        c.send(v2("203.0.113.10", 7001))
        c.sock = ctx.wrap_socket(c.sock, server_hostname="localhost")
        assert login(c, "tls-dev-2") == 0
    broker.wait_log("client 'tls-dev-2' connected from 203.0.113.10:7001")


def test_a_listener_without_proxy_protocol_reads_no_header(broker):
    with raw.RawClient(broker.ports.plain) as c:
        assert login(c, "direct") == 0
    broker.wait_log("client 'direct' connected from 127.0.0.1:")
    with raw.RawClient(broker.ports.plain) as c:  # a header here is the client's first packet: not a CONNECT
        c.send(v1("203.0.113.7", 1) + raw.connect("spoof", username="alice", password="alice-pw"))
        assert c.closed_by_peer(3)
    assert "203.0.113.7" not in broker.log() and "'spoof' connected" not in broker.log()


def test_the_session_carries_the_client_address_under_asyncio_too(redis_server, prefix):
    """In this process (asyncio's own loop, where the broker process runs uvloop): the session's
    remote_address, which throttling, bans and $SYS read, is the header's; shutdown drops a connection
    still waiting for its header."""
    from tests.engine.inproc import InProcessBroker

    b = InProcessBroker(redis_server.url, prefix)
    b.config.listeners[0].proxy_protocol = True
    b.config.listeners[0].trusted_proxies = [BALANCER]
    b.start()
    try:
        with raw.RawClient(b.port, source=BALANCER) as c:
            c.send(v2("2001:db8::77", 1234) + raw.connect("in-proc"))
            assert c.connack() == (0, 0)
            session = b.call(lambda: b.broker.sessions["in-proc"][0])
            assert (session.remote_address, session.remote_port) == ("2001:db8::77", 1234)
        waiting = raw.RawClient(b.port, source=BALANCER)
        waiting.send(b"PROXY TCP4 ")
        # accepted and reading its header (not still in the listen backlog) before the shutdown starts
        listeners = b.call(lambda: [s.instance for s in b.broker._servers.values()])
        assert until(lambda: sum(len(listener._pending) for listener in listeners if hasattr(listener, "_pending")))
    finally:
        b.stop()
    with waiting:
        assert waiting.closed_by_peer(3)


def ws_login(port: int, header: bytes, client_id: str, source: str = BALANCER) -> int | None:
    """The CONNACK code of a CONNECT over a WebSocket that starts with `header`; None if refused first."""
    sock = socket.create_connection(("127.0.0.1", port), timeout=5, source_address=(source, 0))
    sock.sendall(header)
    try:
        with ws_connect(f"ws://127.0.0.1:{port}/mqtt", sock=sock, subprotocols=["mqtt"], open_timeout=5) as ws:
            ws.send(raw.connect(client_id, username="alice", password="alice-pw"))
            frame = ws.recv(timeout=5)
    except (OSError, EOFError, WebSocketException):
        sock.close()
        return None
    assert isinstance(frame, bytes) and frame[0] == 0x20
    return frame[3]


def test_websockets_listener_reads_the_header_before_the_upgrade(broker):
    assert ws_login(broker.ports.ws, v1("203.0.113.21", 9001), "ws-1") == 0
    broker.wait_log("client 'ws-1' connected from 203.0.113.21:9001")
    assert ws_login(broker.ports.ws, v2("2001:db8::21", 9002), "ws-2") == 0
    broker.wait_log("client 'ws-2' connected from 2001:db8::21:9002")


def test_websockets_listener_refuses_untrusted_and_malformed(broker):
    assert ws_login(broker.ports.ws, v1("203.0.113.22", 1), "ws-spoof", source="127.0.0.1") is None
    broker.wait_log("refused connection from 127.0.0.1:")
    assert ws_login(broker.ports.ws, b"PROXY TCP4 1.2.3.4\n", "ws-bad") is None
    broker.wait_log("lone CR or LF")
    # (another source: malformed headers are logged once a minute per source)
    assert ws_login(broker.ports.ws, b"", "ws-none", source="127.0.0.6") is None  # HTTP is no PROXY header
    broker.wait_log("not a PROXY protocol header")
    log = broker.log()
    assert "ws-spoof" not in log and "ws-bad" not in log and "ws-none" not in log
    assert "opening handshake failed" not in log and "Traceback" not in log


@settings(max_examples=60, deadline=None)
@given(
    header=st.sampled_from(
        [v1("203.0.113.7", 1), v1("2001:db8::1", 65535), b"PROXY UNKNOWN\r\n", v2("198.51.100.1", 2), v2(None)]
    ),
    tail=st.binary(max_size=60),
    cuts=st.lists(st.integers(1, 30), max_size=6),
)
def test_read_header_takes_the_header_and_not_one_byte_more(header, tail, cuts):
    """However the bytes arrive (in pieces, a CR and its LF apart), the client's own bytes stay in the
    socket for the TLS layer or the MQTT reader."""

    async def run() -> tuple[ProxyHeader, bytes]:
        ours, theirs = socket.socketpair()
        with ours, theirs:
            ours.setblocking(False)
            data, pos = header + tail, 0

            async def feed() -> None:
                nonlocal pos
                for n in cuts:
                    theirs.sendall(data[pos : pos + n])
                    pos += n
                    await asyncio.sleep(0.002)
                theirs.sendall(data[pos:])
                theirs.shutdown(socket.SHUT_WR)

            feeding = asyncio.create_task(feed())
            got = await asyncio.wait_for(read_header(asyncio.get_running_loop(), ours), 5)
            await feeding
            ours.setblocking(True)
            rest = b""
            while chunk := ours.recv(4096):
                rest += chunk
            return got, rest

    got, rest = asyncio.run(run())
    assert got == parse(header) and rest == tail
