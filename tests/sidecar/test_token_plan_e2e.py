"""A token's trusted `plan` claim reaches the sidecar (issue 19 item 3): a `session_time` set only by the
plan a token names ends the connection, with real Redis, broker and sidecar processes and paho clients
(MQTT 5: DISCONNECT 0xA0 Maximum connect time; 3.1.1: the socket is closed). The broker writes the
claim into the session registry entry (`session:<id>` field `plan`), which the sidecar evaluates."""

from __future__ import annotations

from tests.helpers import tokens as T
from tests.helpers.mqtt import connect
from tests.helpers.mqtt5 import V5
from tests.helpers.wait import expect
from tests.sidecar.helpers import FAST_QUOTA

JWT = {**T.HS_JWT, "trusted_claims": "[plan]"}


def _broker(start_broker, tmp_path):
    path = tmp_path / "broker.yaml"
    path.write_text(T.jwt_config(JWT, extra=FAST_QUOTA))
    return start_broker("--config", str(path))


def _token(sub: str, **extra: object) -> str:
    return T.hs_token(T.claims(sub, aud="mqtt", **extra))


def test_a_session_time_set_only_by_the_tokens_plan_disconnects(
    start_broker, start_sidecar, cli, tmp_path, rds, prefix
):
    assert cli("plan", "set", "short", "--session-time", "2s").returncode == 0
    broker = _broker(start_broker, tmp_path)
    start_sidecar("--interval", "0.2")
    # the same user without the claim (another connection) stays: the limit is the claim's, not the user's
    plain = connect(broker.port, "", _token("app"), client_id="plain")
    v5 = V5(broker.port, "on-plan-5", username="", password=_token("app", plan="short"))
    v3 = connect(broker.port, "", _token("app", plan="short"), client_id="on-plan-3")
    assert plain.rc == 0 and v5.reason == 0 and v3.rc == 0, broker.log()
    expect(lambda: rds.hget(f"{prefix}session:on-plan-5", "plan") == "short")  # (registered in a batch)
    expect(lambda: rds.hget(f"{prefix}session:plain", "since"))
    assert rds.hget(f"{prefix}session:plain", "plan") is None
    assert v5.disconnected.wait(15), broker.log()
    assert v5.disconnect_reason == 0xA0  # Maximum connect time
    assert v3.disconnected.wait(15)  # 3.1.1: no reason code, the socket is closed
    broker.wait_log("session time 2s exceeded")
    assert not plain.disconnected.is_set()
    plain.close()
    v5.close()


def test_a_plan_change_reaches_sessions_on_it_through_the_token_claim(
    start_broker, start_sidecar, cli, tmp_path, rds, prefix
):
    """The sidecar tracks the plan keys: giving the claimed plan a session_time applies to connected clients."""
    assert cli("plan", "set", "open", "--events", "none").returncode == 0
    broker = _broker(start_broker, tmp_path)
    start_sidecar("--interval", "0.2")
    v5 = V5(broker.port, "claims-open", username="", password=_token("app2", plan="open"))
    assert v5.reason == 0
    assert not v5.disconnected.wait(2.5)  # no session_time yet
    assert cli("plan", "set", "open", "--session-time", "1s").returncode == 0
    assert v5.disconnected.wait(15), broker.log()
    assert v5.disconnect_reason == 0xA0
    v5.close()
