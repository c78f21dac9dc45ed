"""engine/session_info.py `session_expiry`: the one session-lifetime rule of both protocol levels,
against an oracle written from the spec (MQTT 5 3.1.2.11.2) and mosquitto's `persistent_client_expiration`."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from mqtt_guard.engine.session_info import NEVER_EXPIRES, session_expiry

caps = st.none() | st.floats(min_value=0.001, max_value=1e10, allow_nan=False)
intervals = st.none() | st.integers(min_value=0, max_value=NEVER_EXPIRES)


def test_the_table_of_docs_protocol_md():
    assert session_expiry(0, None) == 0.0  # MQTT 5 interval 0 (or absent): ends with the connection
    assert session_expiry(0, 60.0) == 0.0
    assert session_expiry(None, None) is None  # 3.1.1 clean session 0, no cap: kept until dropped
    assert session_expiry(None, 60.0) == 60.0  # ... with limits.persistent_session_expiry
    assert session_expiry(NEVER_EXPIRES, None) is None
    assert session_expiry(NEVER_EXPIRES, 60.0) == 60.0
    assert session_expiry(30, None) == 30.0
    assert session_expiry(30, 60.0) == 30.0
    assert session_expiry(90, 60.0) == 60.0  # capped as mosquitto caps it


@given(intervals, caps)
def test_against_the_oracle(requested, cap):
    if requested == 0:
        expected: float | None = 0.0
    else:
        asked = None if requested in (None, NEVER_EXPIRES) else float(requested)
        expected = asked if cap is None else (cap if asked is None else min(asked, cap))
    assert session_expiry(requested, cap) == expected


@given(intervals, caps)
def test_a_cap_never_lengthens_a_session(requested, cap):
    capped, free = session_expiry(requested, cap), session_expiry(requested, None)
    if free is not None:
        assert capped is not None and capped <= free
    if cap is not None:
        assert capped is not None and capped <= cap
