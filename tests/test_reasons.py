"""The reason-code decision table (mqtt_guard/reasons.py): every code is one its packet may carry, the
3.1.1 answers stay what they were, and docs/reason-codes.md says what the code does."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from mqtt_guard import reasons
from mqtt_guard.auth.authenticator import AuthResult, Outcome
from mqtt_guard.auth.ownership import HELD_REFUSAL, refusal
from mqtt_guard.reasons import (
    CONNACK_FAILURES,
    DISCONNECT_BY_SERVER,
    PUBACK_FAILURES,
    SUBACK_FAILURES,
    V5_CONNACK,
    Reason,
    blocked_reason,
    connack_311,
    connack_reason,
    kick_code,
    quota_disconnect,
)

DOC = Path(__file__).resolve().parents[1] / "docs" / "reason-codes.md"

DISCONNECTS = (
    reasons.KICKED,
    reasons.BLOCKED,
    reasons.USER_REVOKED,
    reasons.SESSION_TIME,
    reasons.TOKEN_EXPIRED,
    reasons.TOKEN_REVOKED,
    reasons.SLOW_CONSUMER,
    reasons.TAKEN_OVER,
    reasons.KEEP_ALIVE,
    reasons.TOO_LARGE,
    reasons.OVER_QUOTA,
    reasons.OVER_RATE,
    reasons.DENIED_PUBLISH,
    reasons.SHUTDOWN,
)


@pytest.mark.parametrize("outcome", list(Outcome))
def test_every_outcome_has_a_connack_code_that_keeps_the_311_answer(outcome: Outcome) -> None:
    result = AuthResult(outcome, "u")
    code = connack_reason(outcome)
    if result.ok:
        assert code == Reason.SUCCESS
    else:
        assert code in CONNACK_FAILURES
        assert connack_311(code) == result.connack_code  # a 3.1.1 client is answered as before


def test_the_decisions_of_the_brief() -> None:
    assert connack_reason(Outcome.BAD_PASSWORD) == connack_reason(Outcome.UNKNOWN_USER) == 0x86
    assert connack_reason(Outcome.NO_PASSWORD) == 0x86
    assert connack_reason(Outcome.DISABLED) == connack_reason(Outcome.EXPIRED) == 0x87
    assert connack_reason(Outcome.ANONYMOUS_REFUSED) == 0x87
    assert connack_reason(Outcome.BANNED) == connack_reason(Outcome.THROTTLED) == 0x8A
    assert connack_reason(Outcome.BUSY) == 0x89
    assert connack_reason(Outcome.REDIS_DOWN) == 0x88
    assert connack_reason("not an outcome") == Reason.NOT_AUTHORIZED  # fail closed


def test_client_id_refusals_keep_their_311_code() -> None:
    prefix = refusal("any", "x", "u", held=False, holder=None, prefixes=("dev-",))
    named = refusal("username-prefix", "bob-1", "alice", held=False, holder=None)
    for r, v5 in ((HELD_REFUSAL, 0x85), (prefix, 0x87), (named, 0x85)):
        assert r is not None
        assert V5_CONNACK[r.code] == v5 and connack_311(v5) == r.code


def test_quota_refusals_at_connect() -> None:
    assert reasons.SESSIONS_EXCEEDED == 0x97 and connack_311(reasons.SESSIONS_EXCEEDED) == 5
    # a block a quota set (sidecar, `on_exceed: disconnect`): quota exceeded; an admin's: banned
    assert blocked_reason("events quota 5 used up until 2026-12-08 00:00 UTC") == 0x97
    assert blocked_reason("bytes quota 1MiB used up until 2026-12-08 00:00 UTC") == 0x97
    assert blocked_reason("rate 5/s exceeded") == 0x97
    assert blocked_reason("maintenance") == blocked_reason("") == 0x8A
    assert connack_311(0x8A) == connack_311(0x97) == 5
    assert reasons.REFUSED_BY_PLUGIN == 0x87


def test_connack_311_of_success_and_unknown_codes() -> None:
    assert connack_311(0) == 0
    assert connack_311(Reason.BAD_AUTHENTICATION_METHOD) == 5
    for code311, v5 in V5_CONNACK.items():
        if code311 != 4:  # credentials were always refused with 5 on 3.1.1, and stay so
            assert connack_311(v5) == code311  # else the inverse of the 3.1.1 -> 5 table


@pytest.mark.parametrize("code", DISCONNECTS)
def test_every_server_disconnect_is_a_code_a_server_may_send(code: Reason) -> None:
    assert code in DISCONNECT_BY_SERVER and code >= 0x80


def test_banned_is_connack_only() -> None:
    assert Reason.BANNED not in DISCONNECT_BY_SERVER and reasons.BLOCKED == Reason.ADMINISTRATIVE_ACTION
    assert Reason.MESSAGE_RATE_TOO_HIGH not in PUBACK_FAILURES  # hence 0x97 for a PUBLISH over rate


def test_quota_disconnects() -> None:
    assert quota_disconnect("rate") == 0x96
    assert quota_disconnect("events") == quota_disconnect("bytes") == 0x97


def test_publish_and_subscribe_refusals() -> None:
    assert reasons.PUBLISH_DENIED == 0x87 and reasons.PUBLISH_OVER_QUOTA == 0x97
    assert {reasons.PUBLISH_DENIED, reasons.PUBLISH_OVER_QUOTA} <= PUBACK_FAILURES
    assert reasons.SUBSCRIBE_DENIED in SUBACK_FAILURES


def test_kick_code_of_records() -> None:
    assert kick_code(None) == kick_code("") == kick_code("x") == 0x98  # a record from before MQTT 5
    assert kick_code(0x97) == kick_code("151") == 0x97
    assert kick_code(0) == 0x98  # a kick is never a normal disconnection
    assert kick_code(0x8A) == 0x98  # CONNACK-only: never put on a DISCONNECT
    assert kick_code(0x8E) == 0x8E


@given(st.one_of(st.none(), st.integers(), st.text(), st.floats(allow_nan=True), st.lists(st.integers())))
def test_kick_code_is_always_sendable(raw: object) -> None:
    assert kick_code(raw) in DISCONNECT_BY_SERVER


# -- the documented table ----------------------------------------------------------------------------------
_ROW = re.compile(r"^\|(?P<decision>[^|]+)\|(?P<cause>[^|]*)\|(?P<v5>[^|]+)\|(?P<v311>[^|]+)\|$")
_PACKET_CODE = re.compile(r"\b(CONNACK|DISCONNECT|PUBACK/PUBREC|SUBACK)\b[^|]*?\b(0x[0-9A-Fa-f]{2})\b")
_ALLOWED = {
    "CONNACK": CONNACK_FAILURES,
    "DISCONNECT": DISCONNECT_BY_SERVER,
    "PUBACK/PUBREC": PUBACK_FAILURES | {Reason.NO_MATCHING_SUBSCRIBERS},  # 0x10: a success the table names
    "SUBACK": SUBACK_FAILURES,
}


def _rows() -> list[dict[str, str]]:
    lines = [line.strip() for line in DOC.read_text().splitlines()]
    rows = [m.groupdict() for line in lines if (m := _ROW.match(line))]
    return [r for r in rows if not set(r["decision"].strip()) <= {"-", " "}][1:]  # past the header


def test_the_doc_has_one_table_and_every_code_fits_its_packet() -> None:
    rows = _rows()
    assert len(rows) >= 30
    seen = set()
    for row in rows:
        if row["decision"].strip().startswith("**"):
            continue  # a section heading
        pairs = _PACKET_CODE.findall(row["v5"])
        if "no acknowledgement" in row["v5"].lower() or row["v5"].strip() == "—":
            continue
        assert pairs, row
        for packet, code in pairs:
            assert int(code, 16) in _ALLOWED[packet], row
            seen.add(int(code, 16))
    constants = {getattr(reasons, n) for n in dir(reasons) if n.isupper() and isinstance(getattr(reasons, n), Reason)}
    assert constants - {Reason.SUCCESS} <= seen  # every decision constant is documented
    assert {connack_reason(o) for o in Outcome} - {Reason.SUCCESS} <= seen


def test_every_failure_the_server_sends_has_a_short_reason_string():
    from mqtt_guard.reasons import reason_string

    for code in CONNACK_FAILURES | PUBACK_FAILURES | SUBACK_FAILURES | DISCONNECT_BY_SERVER:
        text = reason_string(code)
        if code < 0x80:
            assert text is None
        else:
            assert text and len(text) <= 48 and text != "refused", hex(code)
