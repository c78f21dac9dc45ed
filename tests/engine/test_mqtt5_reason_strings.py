"""Reason Strings (property 0x1F) with paho-mqtt's MQTT 5 client on real sockets: a short text beside each
failure code (docs/protocol.md, "Reason strings"), on CONNACK and DISCONNECT always, on PUBACK/SUBACK only
when the client did not set Request Problem Information 0 [MQTT-3.1.2-29], and never past the client's
Maximum Packet Size [MQTT-3.1.2-25]."""

from __future__ import annotations

from typing import Any

from mqtt_guard.reasons import Reason
from tests.helpers.mqtt5 import V5
from tests.sidecar.helpers import fast_config


def text(props: Any) -> str | None:
    return getattr(props, "ReasonString", None) if props is not None else None


def _broker(start_broker, add_user, cli, tmp_path):
    add_user("alice", "pw")
    assert cli("acl", "allow", "--user", "alice", "ok/#", "read,write").returncode == 0
    assert cli("quota", "set", "alice", "--rate", "1/h:1").returncode == 0
    return start_broker("--config", fast_config(tmp_path, "acl:\n  default: deny\n"))


def test_failures_carry_a_short_reason_string(start_broker, add_user, cli, tmp_path):
    broker = _broker(start_broker, add_user, cli, tmp_path)
    refused = V5(broker.port, username="alice", password="wrong")
    assert refused.reason == Reason.BAD_USER_NAME_OR_PASSWORD
    assert refused.connack("ReasonString") == "bad user name or password"
    c = V5(broker.port, "rs1", username="alice", password="pw")
    assert c.reason == 0
    assert c.connack("ReasonString") is None  # success: none
    assert c.subscribe("no/x", 1) == [Reason.NOT_AUTHORIZED]
    assert text(c.ack_props.get(timeout=5)) == "not authorized"
    assert c.subscribe("ok/x", 1) == [1]
    assert text(c.ack_props.get(timeout=5)) is None
    code, props = c.publish_with_props("no/x")
    assert (code, text(props)) == (Reason.NOT_AUTHORIZED, "not authorized")
    code, props = c.publish_with_props("ok/y")
    assert (code, text(props)) == (Reason.NO_MATCHING_SUBSCRIBERS, None)  # accepted, nobody subscribed: no string
    code, props = c.publish_with_props("ok/y")  # over `rate`
    assert (code, text(props)) == (Reason.QUOTA_EXCEEDED, "quota exceeded")
    assert cli("kick", "rs1").returncode == 0
    assert c.disconnected.wait(5)
    assert c.disconnect_reason == Reason.ADMINISTRATIVE_ACTION
    assert text(c.disconnect_props) == "disconnected by an administrator"


def test_request_problem_information_0_keeps_them_to_connack_and_disconnect(start_broker, add_user, cli, tmp_path):
    broker = _broker(start_broker, add_user, cli, tmp_path)
    quiet = {"RequestProblemInformation": 0}
    refused = V5(broker.port, username="alice", password="wrong", connect_props=quiet)
    assert refused.reason == Reason.BAD_USER_NAME_OR_PASSWORD
    assert refused.connack("ReasonString") == "bad user name or password"  # CONNACK: allowed
    c = V5(broker.port, "rs2", username="alice", password="pw", connect_props=quiet)
    assert c.subscribe("no/x", 1) == [Reason.NOT_AUTHORIZED]
    assert text(c.ack_props.get(timeout=5)) is None
    code, props = c.publish_with_props("no/x")
    assert (code, text(props)) == (Reason.NOT_AUTHORIZED, None)
    assert cli("kick", "rs2").returncode == 0
    assert c.disconnected.wait(5)
    assert c.disconnect_reason == Reason.ADMINISTRATIVE_ACTION
    assert text(c.disconnect_props) == "disconnected by an administrator"  # DISCONNECT: allowed


def test_a_reason_string_is_left_out_before_a_packet_exceeds_the_clients_maximum(start_broker, add_user, cli, tmp_path):
    broker = _broker(start_broker, add_user, cli, tmp_path)
    small = {"MaximumPacketSize": 20}  # a PUBACK, SUBACK or DISCONNECT with "not authorized" is 23+ bytes
    refused = V5(broker.port, username="alice", password="wrong", connect_props=small)
    assert refused.reason == Reason.BAD_USER_NAME_OR_PASSWORD
    assert refused.connack("ReasonString") is None
    c = V5(broker.port, "rs3", username="alice", password="pw", connect_props=small)
    assert c.subscribe("no/x", 1) == [Reason.NOT_AUTHORIZED]
    assert text(c.ack_props.get(timeout=5)) is None
    code, props = c.publish_with_props("no/x")
    assert (code, text(props)) == (Reason.NOT_AUTHORIZED, None)  # the code stays
    assert cli("kick", "rs3").returncode == 0
    assert c.disconnected.wait(5)
    assert (c.disconnect_reason, text(c.disconnect_props)) == (Reason.ADMINISTRATIVE_ACTION, None)
