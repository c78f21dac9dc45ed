"""`mqtt-guard ban|unban|ban list` against a running broker (issue 15 item 3): an admin's ban applies to
new CONNECTs at once, `ban list` shows it with the bans login throttling decided, `unban` lifts both."""

from __future__ import annotations

import json

from tests.helpers import rawmqtt
from tests.helpers.wait import until


def _code(port: int, source: str, username: str = "alice", password: str = "right") -> int:
    with rawmqtt.RawClient(port, source=source) as client:
        client.send(rawmqtt.connect("c", username=username, password=password))
        return client.connack()[1]


def test_ban_applies_at_once_and_unban_lifts_it(cli, add_user, start_broker):
    add_user("alice", "right")
    broker = start_broker()
    assert _code(broker.port, "127.0.0.2") == 0
    out = cli("ban", "127.0.0.0/30", "--for", "10m", "--reason", "abuse")
    assert out.returncode == 0, out.stderr
    assert "banned 127.0.0.0/30" in out.stdout
    assert until(lambda: _code(broker.port, "127.0.0.2") == 5, timeout=5)
    assert _code(broker.port, "127.0.0.5") == 0  # outside the network
    listing = cli("ban", "list")
    assert "127.0.0.0/30" in listing.stdout and "abuse" in listing.stdout and "min left" in listing.stdout
    assert "address banned" in broker.wait_log("address banned")
    out = cli("unban", "127.0.0.1/30")  # host bits are dropped: the same network
    assert out.returncode == 0, out.stderr
    assert until(lambda: _code(broker.port, "127.0.0.2") == 0, timeout=5)
    assert cli("unban", "127.0.0.0/30").returncode == 1  # nothing left to lift


def test_ban_list_shows_throttling_bans_and_unban_of_the_address_lifts_them(cli, add_user, start_broker, tmp_path):
    add_user("alice", "right")
    config = tmp_path / "c.yaml"
    config.write_text("auth:\n  throttle:\n    max_failures: 4\n    max_user_failures: 2\n")
    broker = start_broker("--config", str(config))
    for i in range(2):
        assert _code(broker.port, "127.0.0.2", "bob", f"guess{i}") == 5
    for i in range(4):
        assert _code(broker.port, "127.0.0.2", f"u{i}", "guess") == 5
    assert _code(broker.port, "127.0.0.2") == 5

    def listed() -> list[dict]:
        out = cli("ban", "list", "--json")
        return [json.loads(line) for line in out.stdout.splitlines()]

    bans = until(lambda: len(listed()) == 2 and listed(), timeout=5)
    assert {(b["kind"], b["network"], b["username"]) for b in bans} == {
        ("auto", "127.0.0.2", None),
        ("user", "127.0.0.2", "bob"),
    }
    assert all(0 < b["remaining"] <= 300 for b in bans)
    text = cli("ban", "list").stdout
    assert "throttle" in text and "failed logins" in text
    out = cli("unban", "127.0.0.2")
    assert out.returncode == 0 and "lifted 2 ban(s)" in out.stdout, out.stdout + out.stderr
    assert until(lambda: _code(broker.port, "127.0.0.2") == 0, timeout=5)
    assert cli("ban", "list").stdout.strip() == "no bans in force"


def test_ipv6_networks_and_bad_input(cli):
    assert cli("ban", "2001:db8::/32").returncode == 0
    assert cli("ban", "::ffff:192.0.2.7").returncode == 0  # an IPv4-mapped address bans the IPv4 address
    listed = cli("ban", "list").stdout
    assert "2001:db8::/32" in listed and "192.0.2.7/32" in listed and "until unban" in listed
    bad = cli("ban", "300.1.2.3")
    assert bad.returncode == 1 and "not an IP address or CIDR network" in bad.stderr
    assert cli("ban", "10.0.0.1", "--for", "soon").returncode == 1


def test_ban_leaves_connected_clients_alone_unless_kick(cli, add_user, start_broker):
    add_user("alice", "right")
    broker = start_broker()
    stays = rawmqtt.RawClient(broker.port, source="127.0.0.2")
    goes = rawmqtt.RawClient(broker.port, source="127.0.0.3")
    elsewhere = rawmqtt.RawClient(broker.port, source="127.0.0.9")
    for i, client in enumerate((stays, goes, elsewhere)):
        client.send(rawmqtt.connect(f"c{i}", username="alice", password="right"))
        assert client.connack()[1] == 0
    assert cli("ban", "127.0.0.2").returncode == 0
    assert until(lambda: _code(broker.port, "127.0.0.2") == 5, timeout=5)
    out = cli("ban", "127.0.0.3/32", "--kick", "--reason", "stolen device")
    assert out.returncode == 0 and "are disconnected" in out.stdout, out.stdout
    assert goes.closed_by_peer(timeout=5)
    broker.wait_log("disconnecting client 'c1': blocked: stolen device")
    stays.send(rawmqtt.packet(0xC0, b""))  # PINGREQ: still connected
    assert stays.expect(0xD).type == 0xD
    elsewhere.send(rawmqtt.packet(0xC0, b""))
    assert elsewhere.expect(0xD).type == 0xD
    for client in (stays, goes, elsewhere):
        client.close()


def test_a_broker_starting_later_loads_the_bans(cli, add_user, start_broker):
    add_user("alice", "right")
    assert cli("ban", "127.0.0.2", "--for", "1h").returncode == 0
    broker = start_broker()
    assert until(lambda: _code(broker.port, "127.0.0.2") == 5, timeout=5)
    assert _code(broker.port, "127.0.0.3") == 0
