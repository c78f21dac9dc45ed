"""TLS with use_identity_as_username from a mosquitto.conf: the certificate's CN is the username the
acl_file sees, on mosquitto and on mqtt-guard alike."""

from __future__ import annotations

import asyncio
import ssl

from tests.compat.harness import brokers, needs_mosquitto
from tests.helpers.certs import make_pki
from tests.helpers.mqtt import connect

ACL = """user sensor-7
topic write telemetry/sensor-7/#
user dashboard
topic read telemetry/#
pattern readwrite clients/%u/#
"""


def _ctx(pki, cn):
    ctx = ssl.create_default_context(cafile=str(pki.ca))
    ctx.load_cert_chain(*map(str, pki.client(cn)))
    return ctx


@needs_mosquitto
def test_certificate_identity_and_acl_file_agree(tmp_path, redis_server, prefix):
    pki = make_pki(tmp_path)
    (tmp_path / "acl").write_text(ACL)
    observed = []
    for side in ("mosquitto", "mqtt-guard"):
        port = brokers.free_port()
        conf = tmp_path / f"{side}.conf"
        conf.write_text(
            f"{brokers.run_as_line()}\nlistener {port} 127.0.0.1\ncertfile {pki.server_cert}\n"
            f"keyfile {pki.server_key}\ncafile {pki.ca}\nrequire_certificate true\n"
            f"use_identity_as_username true\nacl_file {tmp_path / 'acl'}\n"
        )
        log = tmp_path / f"{side}.log"
        proc = (
            brokers.mosquitto_proc(conf, port, log)
            if side == "mosquitto"
            else brokers.guard_proc(conf, port, log, redis_server.url, prefix)
        )
        proc.start()
        try:
            asyncio.run(proc.wait_ready())
            dash = connect(port, tls=_ctx(pki, "dashboard"), client_id="dash")
            sensor = connect(port, tls=_ctx(pki, "sensor-7"), client_id="s7")
            other = connect(port, tls=_ctx(pki, "sensor-8"), client_id="s8")
            assert dash.subscribe("#") == [0]
            sensor.publish("telemetry/sensor-7/t", b"1", qos=1)
            sensor.publish("telemetry/sensor-8/t", b"2", qos=1)
            other.publish("telemetry/sensor-8/t", b"3", qos=1)  # no rule for sensor-8: denied
            other.publish("clients/sensor-8/x", b"4", qos=1)  # written, but dashboard may not read it
            sensor.publish("clients/dashboard/x", b"5", qos=1)  # %u pattern: sensor-7 may not write there
            observed.append(sorted((m.topic, m.payload) for m in dash.received(0.7)))
            for c in (dash, sensor, other):
                c.close()
        finally:
            proc.stop()
    assert observed[0] == observed[1] == [("telemetry/sensor-7/t", b"1")]
