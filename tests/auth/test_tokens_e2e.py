"""Access tokens with real processes (issue 19 items 1, 2 and 7): Redis, the broker, paho clients over TCP
and WebSockets, raw HTTP upgrades, and a local HTTP server serving a JWKS that rotates its keys.

Shown here: a token accepted as the CONNECT password and refused for each reason (the broker's log
says which, never the token); its trusted acl claim applied; the broker disconnecting a client whose
token expires; `mqtt-guard token revoke` disconnecting a connected client within milliseconds; key
rotation through the JWKS; the websockets upgrade refused with 401/403/400 before any MQTT byte, and
the identity fixed there binding the CONNECT."""

from __future__ import annotations

import base64
import os
import socket
import threading
import time
import uuid
from pathlib import Path

import paho.mqtt.client as paho
import pytest
from paho.mqtt.enums import CallbackAPIVersion

from tests.helpers import tokens as T
from tests.helpers.mqtt import connect
from tests.helpers.servers import free_port

pytestmark = pytest.mark.filterwarnings("ignore:EdDSA is deprecated")


def _config(
    tmp_path: Path, jwt: dict[str, str], listeners: list[str], acl_default: str = "deny", throttle: bool = False
) -> str:
    """Login throttling off unless asked for: the tests refuse many tokens from one address on purpose."""
    lines = ["listeners:", *listeners, "auth:", "  throttle:", f"    enabled: {str(throttle).lower()}", "  jwt:"]
    lines += [f"    {k}: {v}" for k, v in jwt.items()]
    lines += ["acl:", f"  default: {acl_default}"]
    path = tmp_path / f"broker-{uuid.uuid4().hex[:6]}.yaml"
    path.write_text("\n".join(lines) + "\n")
    return str(path)


def _tcp(port: int) -> list[str]:
    return ["  - type: tcp", f"    bind: 127.0.0.1:{port}"]


def _ws(port: int, **extra: str) -> list[str]:
    return ["  - type: websockets", f"    bind: 127.0.0.1:{port}", *(f"    {k}: {v}" for k, v in extra.items())]


HS = {"secret": f'"{T.SECRET}"', "algorithms": "[HS256]", "audience": "mqtt", "leeway": "0s", "trusted_claims": "[acl]"}


@pytest.fixture
def hs_broker(start_broker, tmp_path):
    port = free_port()
    broker = start_broker("--config", _config(tmp_path, HS, _tcp(port)), bind=False, wait_for_port=port)
    broker.port = port
    return broker


def _token(sub: str = "alice", **extra: object) -> str:
    return T.hs_token(T.claims(sub, aud="mqtt", **extra))


def test_a_token_is_accepted_as_the_password_and_refused_for_each_reason(hs_broker):
    port = hs_broker.port
    good = _token()
    for username in ("", "alice"):  # 3.1.1 needs a username with a password: empty, or the token's identity
        c = connect(port, username, good)
        assert c.rc == 0, hs_broker.log()
        c.close()
    refusals = {
        "username does not match the access token": connect(port, "mallory", good),
        "bad signature": connect(port, "", T.hs_token(T.claims(aud="mqtt"), secret="y" * 40)),
        "access token expired": connect(port, "", _token(ttl=-5)),
        "alg: none": connect(port, "", T.unsigned(T.claims(aud="mqtt"))),
        "not valid for another": connect(port, "", _token(nbf=int(time.time()) + 600)),
        "audience": connect(port, "", T.hs_token(T.claims(aud="web"))),
        "algorithm 'HS384' is not accepted": connect(port, "", T.hs_token(T.claims(aud="mqtt"), alg="HS384")),
        "malformed token": connect(port, "", "eyJhbGciOiJIUzI1NiJ9.!!!.x"),
        "claim acl[0]": connect(port, "", _token(acl=[{"permission": "allow", "action": "fly", "topic": "#"}])),
    }
    for words, client in refusals.items():
        assert client.rc == 5, words
        hs_broker.wait_log(words)
    assert good not in hs_broker.log() and good.split(".")[2] not in hs_broker.log()  # never a token in the log


def test_forged_tokens_count_towards_login_throttling(start_broker, tmp_path):
    port = free_port()
    config = _config(tmp_path, HS, _tcp(port), throttle=True)
    broker = start_broker("--config", config, bind=False, wait_for_port=port)
    forged = T.hs_token(T.claims(aud="mqtt"), secret="z" * 40)
    codes = [connect(port, "", forged).rc for _ in range(6)]
    assert codes == [5] * 6
    assert connect(port, "", _token()).rc == 5  # the address (and username) is refused for a while now
    broker.wait_log("too many failed logins")


def test_the_trusted_acl_claim_applies(hs_broker):
    acl = [
        {"permission": "allow", "action": "publish", "topic": "up/alice/#"},
        {"permission": "allow", "action": "subscribe", "topic": "up/#"},
        {"permission": "deny", "action": "receive", "topic": "up/alice/secret"},
    ]
    c = connect(hs_broker.port, "", _token(acl=acl))
    assert c.rc == 0
    assert c.subscribe("up/#") == [0]
    assert c.subscribe("down/#") == [0x80]
    c.publish("up/alice/a", b"1")
    c.publish("up/alice/secret", b"2")  # published (allowed), but withheld from this receiver
    c.publish("up/bob/a", b"3")  # denied
    assert [m.payload for m in c.received(1.0)] == [b"1"]
    c.close()


def test_the_broker_disconnects_a_client_when_its_token_expires(hs_broker):
    c = connect(hs_broker.port, "", _token(ttl=2))
    assert c.rc == 0
    assert c.disconnected.wait(6), hs_broker.log()
    hs_broker.wait_log("access token expired")  # (by the broker, for this reason: not a keep-alive or a kick)
    c.close()


def test_revocation_disconnects_a_connected_client_at_once_and_refuses_it_after(hs_broker, cli, rds, prefix):
    c = connect(hs_broker.port, "", _token(jti="j-42"))
    other = connect(hs_broker.port, "", _token(jti="j-43"))
    assert c.rc == 0 and other.rc == 0
    result = cli("token", "revoke", "j-42")
    assert result.returncode == 0 and "revoked" in result.stdout, result.stderr
    assert c.disconnected.wait(2)
    assert not other.disconnected.wait(0.3)
    assert connect(hs_broker.port, "", _token(jti="j-42")).rc == 5
    hs_broker.wait_log("access token revoked")
    # the time from the key's write (what the CLI does) to the client's disconnect
    written = time.monotonic()
    rds.set(f"{prefix}revoked:j-43", "{}")
    assert other.disconnected.wait(2)
    took = time.monotonic() - written
    print(f"revocation to disconnect: {took * 1000:.1f} ms")
    assert took < 1.0, took  # milliseconds on a quiet machine (the key's invalidation reaches the broker)
    assert cli("token", "unrevoke", "j-42").returncode == 0
    again = connect(hs_broker.port, "", _token(jti="j-42"))
    assert again.rc == 0
    for client in (c, other, again):
        client.close()


def test_key_rotation_through_a_jwks_url(start_broker, tmp_path):
    server = T.JwksServer().start()
    try:
        first, second = T.new_key("RS256", "k1"), T.new_key("ES256", "k2")
        server.publish(first)
        port = free_port()
        jwt = {"jwks_url": server.url, "algorithms": "[RS256, ES256]", "jwks_min_refresh": "0s"}
        broker = start_broker("--config", _config(tmp_path, jwt, _tcp(port)), bind=False, wait_for_port=port)
        c = connect(port, "", T.sign(T.claims("dev1"), first, "RS256"))
        assert c.rc == 0, broker.log()
        c.close()
        server.publish(first, second)  # the issuer adds a key: its first token fetches the set again
        c = connect(port, "", T.sign(T.claims("dev2"), second, "ES256"))
        assert c.rc == 0, broker.log()
        c.close()
        server.publish(second)  # ...and retires the old one
        server.body = b"{ broken"  # a set that does not parse keeps the last good keys
        assert connect(port, "", T.sign(T.claims("dev3"), T.new_key("ES256", "k9"), "ES256")).rc == 5
        broker.wait_log("unusable (not JSON")
        assert connect(port, "", T.sign(T.claims("dev2"), second, "ES256")).rc == 0
    finally:
        server.stop()


# -- the websockets upgrade ---------------------------------------------------------------------------
ORIGIN = "https://app.example"


@pytest.fixture
def ws_broker(start_broker, tmp_path):
    port = free_port()
    listener = _ws(
        port,
        require_token="true",
        token_sources='[header, "cookie:mqtt_token", "query:token"]',
        allowed_origins=f'["{ORIGIN}"]',
    )
    broker = start_broker("--config", _config(tmp_path, HS, listener, "allow"), bind=False, wait_for_port=port)
    broker.port = port
    return broker


def _upgrade(port: int, headers: dict[str, str], path: str = "/mqtt") -> tuple[int, bytes]:
    """A raw HTTP upgrade: (status, everything the server sent)."""
    lines = [
        f"GET {path} HTTP/1.1",
        f"Host: 127.0.0.1:{port}",
        "Upgrade: websocket",
        "Connection: Upgrade",
        f"Sec-WebSocket-Key: {base64.b64encode(os.urandom(16)).decode()}",
        "Sec-WebSocket-Version: 13",
        *(f"{k}: {v}" for k, v in headers.items()),
    ]
    with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
        sock.sendall(("\r\n".join(lines) + "\r\n\r\n").encode())
        data = b""
        while True:
            chunk = sock.recv(4096)
            if not chunk:
                break
            data += chunk
            if b"\r\n\r\n" in data and (data.startswith(b"HTTP/1.1 101") or len(data.split(b"\r\n\r\n", 1)[1]) > 0):
                break
    return int(data.split(b" ", 2)[1]), data


def test_the_upgrade_is_refused_before_any_mqtt_byte(ws_broker, rds, prefix):
    port = ws_broker.port
    good = {"Origin": ORIGIN, "Sec-WebSocket-Protocol": "mqtt"}
    status, data = _upgrade(port, good)
    assert status == 401 and b"no access token" in data and b"WWW-Authenticate: Bearer" in data
    status, data = _upgrade(port, {**good, "Authorization": "Bearer " + T.hs_token(T.claims(aud="web"))})
    assert status == 401 and b"audience" in data
    status, data = _upgrade(port, {**good, "Authorization": "Bearer " + T.unsigned(T.claims(aud="mqtt"))})
    assert status == 401 and b"alg: none" in data
    status, data = _upgrade(port, {**good, "Origin": "https://evil.example", "Authorization": "Bearer " + _token()})
    assert status == 403 and b"origin" in data
    # no Origin at all (a non-browser client) is refused alike while allowed_origins is set (docs/tokens.md)
    status, data = _upgrade(port, {"Sec-WebSocket-Protocol": "mqtt", "Authorization": "Bearer " + _token()})
    assert status == 403 and b"origin not allowed" in data
    status, data = _upgrade(port, {"Origin": ORIGIN, "Authorization": "Bearer " + _token()})
    assert status == 400 and b"mqtt subprotocol" in data
    status, data = _upgrade(port, {**good, "Authorization": "Bearer " + _token()})
    assert status == 101, data
    rds.set(f"{prefix}revoked:gone", "{}")
    status, data = _upgrade(port, {**good, "Authorization": "Bearer " + _token(jti="gone")})
    assert status == 403 and b"revoked" in data
    status, _ = _upgrade(port, {**good, "Cookie": f"theme=dark; mqtt_token={_token()}"})
    assert status == 101
    status, _ = _upgrade(port, good, path=f"/mqtt?token={_token()}")
    assert status == 101
    ws_broker.wait_log("refused websockets upgrade")


def _ws_client(port: int, token: str, username: str | None) -> tuple[paho.Client, int]:
    c = paho.Client(CallbackAPIVersion.VERSION2, client_id=f"ws-{uuid.uuid4().hex[:8]}", transport="websockets")
    c.ws_set_options(path="/mqtt", headers={"Authorization": f"Bearer {token}", "Origin": ORIGIN})
    if username is not None:
        c.username_pw_set(username)
    result: list[int] = []
    done = threading.Event()

    def on_connect(_c, _u, _f, reason, _p):
        result.append(reason.value)
        done.set()

    c.on_connect = on_connect
    c.on_disconnect = lambda *_a: done.set()
    c.reconnect_delay_set(60, 120)
    c.connect("127.0.0.1", port)
    c.loop_start()
    done.wait(5)
    return c, (result[0] if result else -1)


def test_the_identity_fixed_at_the_upgrade_binds_the_connect(ws_broker):
    port = ws_broker.port
    token = _token("alice", jti="ws-1")
    for username in (None, "alice"):  # no credentials in the CONNECT, or the token's identity
        c, rc = _ws_client(port, token, username)
        assert rc == 0, ws_broker.log()
        c.disconnect()
        c.loop_stop()
    c, rc = _ws_client(port, token, "bob")
    assert rc == 135  # not authorized (paho's v5 number for CONNACK 5)
    c.loop_stop()
    ws_broker.wait_log("username does not match the access token")


def test_an_unrevoke_or_a_change_that_leaves_no_revocation_kicks_nobody(hs_broker, cli, rds, prefix):
    """Review of issue 19: every change of a `revoked:<jti>` key notifies the broker, an unrevoke and a
    TTL expiry too; the broker asks Redis whether the revocation exists before kicking. A client that
    reconnected after `token unrevoke` stays; so does one whose jti was revoked and unrevoked at once."""
    c = connect(hs_broker.port, "", _token(jti="j-60"))
    assert c.rc == 0
    assert cli("token", "revoke", "j-60").returncode == 0
    assert c.disconnected.wait(5), hs_broker.log()
    assert cli("token", "unrevoke", "j-60").returncode == 0
    again = connect(hs_broker.port, "", _token(jti="j-60"))
    assert again.rc == 0
    pipe = rds.pipeline(transaction=True)  # revoked and unrevoked in one transaction: a change, no revocation
    pipe.set(f"{prefix}revoked:j-60", "{}")
    pipe.delete(f"{prefix}revoked:j-60")
    pipe.execute()
    # invalidations arrive in order: once a later revocation has kicked its client, the earlier changes
    # of j-60 were handled
    sentinel = connect(hs_broker.port, "", _token("bob", jti="j-61"))
    assert sentinel.rc == 0
    assert cli("token", "revoke", "j-61").returncode == 0
    assert sentinel.disconnected.wait(5), hs_broker.log()
    assert not again.disconnected.is_set(), hs_broker.log()
    for client in (c, again, sentinel):
        client.close()


def test_upgrade_refusals_count_towards_login_throttling_and_bans_refuse_the_upgrade(start_broker, tmp_path, cli):
    """Review of issue 19: a forged or invalid token at the websockets upgrade counts for its source address
    as a wrong password does (auth.throttle.max_failures: 10), and a banned or throttled address is refused
    at the upgrade (403) before any MQTT byte; the ban is the same one a CONNECT over TCP meets."""
    from tests.helpers.wait import expect

    ws_port, tcp_port = free_port(), free_port()
    listeners = [*_ws(ws_port, require_token="true"), *_tcp(tcp_port)]
    config = _config(tmp_path, HS, listeners, "allow", throttle=True)
    broker = start_broker("--config", config, bind=False, wait_for_port=ws_port)
    proto = {"Sec-WebSocket-Protocol": "mqtt"}
    assert _upgrade(ws_port, {**proto, "Authorization": "Bearer " + _token()})[0] == 101
    forged = T.hs_token(T.claims(aud="mqtt"), secret="z" * 64)
    statuses = [_upgrade(ws_port, {**proto, "Authorization": "Bearer " + forged})[0] for _ in range(10)]
    assert statuses == [401] * 10
    status, data = _upgrade(ws_port, {**proto, "Authorization": "Bearer " + _token()})
    assert status == 403 and b"throttled" in data and b"HTTP/1.1 101" not in data, data
    assert connect(tcp_port, "", _token()).rc == 5  # the address is banned for CONNECTs too
    broker.wait_log("too many failed logins")
    # an admin's ban of the address: the upgrade is refused as well
    assert cli("unban", "127.0.0.1").returncode == 0
    expect(lambda: _upgrade(ws_port, {**proto, "Authorization": "Bearer " + _token()})[0] == 101, timeout=10)
    assert cli("ban", "127.0.0.1", "--reason", "abuse").returncode == 0
    status, data = expect(
        lambda: (r := _upgrade(ws_port, {**proto, "Authorization": "Bearer " + _token()}))[0] == 403 and r, timeout=10
    )
    assert b"address banned" in data
    assert cli("unban", "127.0.0.1").returncode == 0
