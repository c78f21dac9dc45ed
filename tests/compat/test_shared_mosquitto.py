"""Shared subscriptions under a mosquitto acl_file: the cases of mosquitto-compat/SHARED.md.

On mosquitto alone the findings are asserted as measured (so SHARED.md stays true of the installed
mosquitto 2.0.11); on both brokers the cases must agree (mqtt-guard's `mosquitto` strategy, the default
under a mosquitto.conf).
"""

from __future__ import annotations

import asyncio

import pytest

from tests.compat.harness import needs_mosquitto, shared


def _on_mosquitto(redis_server, prefix, tmp_path) -> dict[str, dict]:
    results = asyncio.run(shared.run(redis_url=redis_server.url, prefix=prefix, guard=False, workdir=str(tmp_path)))
    return {case.name: seen[0] for case, seen in results}


def _got(seen: dict, member: str) -> list[str]:
    return [payload for payload, *_ in seen[f"received {member}"]]


@needs_mosquitto
@pytest.mark.timeout(120)
def test_mosquitto_shared_subscription_findings(redis_server, prefix, tmp_path):
    seen = _on_mosquitto(redis_server, prefix, tmp_path)
    # 1. SUBSCRIBE is not checked: every member is granted, whatever its rules
    for name in ("no-rules", "deny-read", "rule-on-share-string"):
        assert {tuple(v) for k, v in seen[name].items() if k.startswith("suback")} == {(1,)}, name
    # 2. read is checked per delivery on the topic name, not on the $share string
    assert _got(seen["rule-on-share-string"], "m1") == []
    assert _got(seen["rule-on-share-string"], "m3") == ["msg-2", "msg-5"]
    # 3. round robin in subscription order, 3.1.1 and MQTT 5 alike
    for name in ("rr-311", "rr-mixed"):
        rr = seen[name]
        assert [_got(rr, m) for m in ("m1", "m2", "m3")] == [["msg-0", "msg-3"], ["msg-1", "msg-4"], ["msg-2", "msg-5"]]
    # 4. a member that may not read still takes its turn: the message is lost; the PUBACK says nothing
    deny = seen["deny-read"]
    assert (_got(deny, "m1"), _got(deny, "m2"), _got(deny, "m3")) == (["msg-0", "msg-3"], [], [])
    assert {v for k, v in deny.items() if k.startswith("puback")} == {0}
    # 5. GROUP + FILTER is the group; a client in a group and plain gets two copies
    gp = seen["groups-and-plain"]
    assert len(_got(gp, "m1")) == len(_got(gp, "m2")) == len(_got(gp, "m4")) == 4 and len(_got(gp, "m3")) == 8
    # 6. delivered QoS = min(granted, published)
    assert seen["qos"]["received m2"] == [
        ("msg-1", "t/1", 1, False),
        ("msg-3", "t/1", 0, False),
        ("msg-5", "t/2", 2, False),
    ]
    # 7. retained messages go to every member at subscribe time
    for m in ("m1", "m2", "m3"):
        assert seen["retained"][f"received {m}"][0] == ("retained", "t/r", 1, True)
    # 8. an unsubscribed member leaves the rotation
    un = seen["unsubscribe"]
    assert (_got(un, "m1"), _got(un, "m2"), _got(un, "m3")) == (
        ["msg-0"],
        ["msg-1", "msg-3", "msg-5"],
        ["msg-2", "msg-4"],
    )
    # 9. a wildcard in the group name closes a 3.1.1 connection; the other odd filters are granted
    odd = seen["odd-filters-311"]
    assert odd["closed by broker v3-$share/g+/t/1"] and odd["closed by broker v3-$share/g#/t/1"]
    assert odd["suback v3-$share//t/1"] == [1] and _got(odd, "v3-$share//t/1") == ["msg-0"]
    # 10. No Local is accepted on a shared subscription; 11. PUBLISH to $share/... is denied (0x87)
    assert seen["no-local"]["suback m1"] == [1] and not seen["no-local"]["closed by broker m1"]
    assert seen["publish-to-share"]["puback 0"] == 0x87


@needs_mosquitto
@pytest.mark.timeout(120)
def test_mosquitto_and_mqtt_guard_agree_on_shared_subscriptions(redis_server, prefix, tmp_path):
    results = asyncio.run(shared.run(redis_url=redis_server.url, prefix=prefix, guard=True, workdir=str(tmp_path)))
    text, differing = shared.report(results)
    assert not differing, text
