"""Access tokens behind a load balancer (issue 19 items 1-2 with `proxy_protocol`): a broker process whose
websockets listener reads a PROXY header and then checks the bearer token during the HTTP upgrade, and
whose tcp listener reads a PROXY header and then takes the token as the CONNECT password. Real sockets
from the balancer's source address; the client's address is the one the header names, in the log and in
the refused-login statistics; an untrusted source never reaches the token check."""

from __future__ import annotations

import json
import socket

import pytest
from websockets.exceptions import InvalidStatus, WebSocketException
from websockets.sync.client import connect as ws_connect

from tests.helpers import rawmqtt as raw
from tests.helpers import tokens as T
from tests.helpers.proxyproto import BALANCER, v1, v2
from tests.helpers.servers import free_port, wait_port
from tests.helpers.wait import expect


@pytest.fixture
def broker(start_broker, tmp_path):
    ws, tcp = free_port(), free_port()
    listeners = [
        "  - type: websockets",
        f"    bind: 127.0.0.1:{ws}",
        "    proxy_protocol: true",
        f'    trusted_proxies: ["{BALANCER}"]',
        "    require_token: true",
        '    token_sources: [header, "query:token"]',
        "  - type: tcp",
        f"    bind: 127.0.0.1:{tcp}",
        "    proxy_protocol: true",
        f'    trusted_proxies: ["{BALANCER}"]',
    ]
    path = tmp_path / "broker.yaml"
    path.write_text(T.jwt_config(T.HS_JWT, listeners=listeners) + "acl:\n  default: allow\n")
    process = start_broker("--config", str(path), bind=False, wait_for_port=ws)
    wait_port(tcp)
    process.ws, process.tcp = ws, tcp
    return process


def _token(sub: str = "alice", **extra: object) -> str:
    return T.hs_token(T.claims(sub, aud="mqtt", **extra))


def ws_session(
    port: int, header: bytes, client_id: str, *, headers: dict[str, str], path: str = "/mqtt", source: str = BALANCER
) -> int:
    """The CONNACK code of a CONNECT without credentials over a WebSocket that starts with `header`; the
    HTTP status of the refused upgrade as a negative number; 0 for a connection closed before one."""
    sock = socket.create_connection(("127.0.0.1", port), timeout=5, source_address=(source, 0))
    sock.sendall(header)
    try:
        with ws_connect(
            f"ws://127.0.0.1:{port}{path}", sock=sock, subprotocols=["mqtt"], additional_headers=headers, open_timeout=5
        ) as ws:
            ws.send(raw.connect(client_id))
            frame = ws.recv(timeout=5)
    except InvalidStatus as exc:
        sock.close()
        return -exc.response.status_code
    except (OSError, EOFError, WebSocketException):
        sock.close()
        return 0
    assert isinstance(frame, bytes) and frame[0] == 0x20
    return frame[3]


def test_websockets_upgrade_checks_the_token_after_the_proxy_header(broker):
    bearer = {"Authorization": f"Bearer {_token()}"}
    assert ws_session(broker.ws, v1("203.0.113.30", 7000), "ws-proxied", headers=bearer) == 0
    broker.wait_log("client 'ws-proxied' connected from 203.0.113.30:7000 as alice")
    assert ws_session(broker.ws, v2("2001:db8::30", 7001), "ws-query", headers={}, path=f"/mqtt?token={_token()}") == 0
    broker.wait_log("client 'ws-query' connected from 2001:db8::30:7001 as alice")
    # refused during the upgrade, logged with the client's address (the header's), not the balancer's
    assert ws_session(broker.ws, v1("203.0.113.31", 7002), "ws-none", headers={}) == -401
    broker.wait_log("refused websockets upgrade from 203.0.113.31:7002")
    expired = {"Authorization": f"Bearer {_token(ttl=-5)}"}
    assert ws_session(broker.ws, v1("203.0.113.32", 7003), "ws-expired", headers=expired) == -401
    broker.wait_log("refused websockets upgrade from 203.0.113.32:7003")
    # an untrusted source is cut off before its header, its token never looked at
    assert ws_session(broker.ws, v1("203.0.113.33", 7004), "ws-spoof", headers=bearer, source="127.0.0.1") == 0
    broker.wait_log("refused connection from 127.0.0.1:")
    log = broker.log()
    assert "ws-none" not in log and "ws-spoof" not in log and "Traceback" not in log


def test_the_identity_fixed_at_the_upgrade_binds_the_connect_behind_a_proxy(broker):
    bearer = {"Authorization": f"Bearer {_token('carol')}"}
    sock = socket.create_connection(("127.0.0.1", broker.ws), timeout=5, source_address=(BALANCER, 0))
    sock.sendall(v1("203.0.113.40", 7100))
    with ws_connect(
        f"ws://127.0.0.1:{broker.ws}/mqtt", sock=sock, subprotocols=["mqtt"], additional_headers=bearer, open_timeout=5
    ) as ws:
        ws.send(raw.connect("ws-other-name", username="mallory"))
        frame = ws.recv(timeout=5)
    assert isinstance(frame, bytes) and frame[0] == 0x20 and frame[3] == 5
    broker.wait_log("username does not match the access token")


def test_tcp_takes_the_token_as_password_after_the_proxy_header(broker, cli):
    with raw.RawClient(broker.tcp, source=BALANCER) as c:
        c.send(v2("198.51.100.50", 8000) + raw.connect("tcp-proxied", username="", password=_token("dave")))
        assert c.connack() == (0, 0), broker.log()
    broker.wait_log("client 'tcp-proxied' connected from 198.51.100.50:8000 as dave")
    forged = T.hs_token(T.claims("dave", aud="mqtt"), secret="z" * 40)
    for i in range(2):
        with raw.RawClient(broker.tcp, source=BALANCER) as c:
            c.send(v1("198.51.100.51", 8100 + i) + raw.connect(f"tcp-forged-{i}", username="", password=forged))
            assert c.connack()[1] == 5
    broker.wait_log("refused CONNECT of client 'tcp-forged-0' from 198.51.100.51:8100")

    def addresses():
        result = cli("stats", "--failures", "--json")
        assert result.returncode == 0, result.stderr
        return json.loads(result.stdout)["addresses"]

    expect(lambda: {"address": "198.51.100.51", "failures": 2} in addresses())
    assert all(a["address"] != BALANCER for a in addresses())
