"""The guards' decisions reach the wire with their reason code (docs/reason-codes.md): the engine side
of the table. A 3.1.1 client keeps what it always got (asserted here too)."""

from __future__ import annotations

from mqtt_guard.reasons import Reason
from tests.helpers.mqtt import connect


def test_a_denied_publish_is_recorded_as_not_authorized_and_a_311_client_still_gets_its_puback(inproc):
    b = inproc(acl_default="deny")
    c = connect(b.port)
    try:
        assert c.rc == 0
        assert b.call(lambda: b.broker.refused) == 0
        info = c.paho.publish("t/denied", b"x", qos=1)
        info.wait_for_publish(5)
        assert info.is_published()  # the PUBACK came: 3.1.1 clients get one, as before
        assert b.call(lambda: b.broker.refused) == Reason.NOT_AUTHORIZED
    finally:
        c.close()
