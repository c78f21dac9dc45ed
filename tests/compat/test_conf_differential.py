"""Fixed configurations run by a real mosquitto and by mqtt-guard (the conf differs only in its ports):
the same configurations start or are refused, and the same clients get in, on every listener."""

from __future__ import annotations

import asyncio

import pytest

from mqtt_guard.auth.hashes import hash_password
from tests.compat.harness import brokers, connack, needs_mosquitto

CASES = {
    "explicit listener": "listener P0 127.0.0.1\npassword_file PW\n",
    "port key": "port P0\npassword_file PW\n",
    "per_listener_settings default listener": "per_listener_settings true\nport P0\n",
    "per_listener_settings two listeners": "per_listener_settings true\nlistener P0 127.0.0.1\nallow_anonymous true\n"
    "listener P1 127.0.0.1\npassword_file PW\n",
    "include_dir settings land on the default listener": "per_listener_settings true\nlistener P0 127.0.0.1\n"
    "include_dir INC\n",
    "last boolean wins": "listener P0 127.0.0.1\nallow_anonymous true\nallow_anonymous false\npassword_file PW\n",
    "duplicate acl_file": "listener P0 127.0.0.1\nacl_file ACL\nacl_file ACL\n",
    "invalid acl_file": "listener P0 127.0.0.1\nacl_file BADACL\n",
    "no such password_file": "listener P0 127.0.0.1\npassword_file NOPE\n",
    "unknown key": "listener P0 127.0.0.1\nallow_anonymus true\n",
    "per_listener_settings too late": "listener P0 127.0.0.1\nallow_anonymous true\nper_listener_settings true\n",
    "max_keepalive 0": "listener P0 127.0.0.1\nmax_keepalive 0\npassword_file PW\n",
    "max_keepalive in range": "listener P0 127.0.0.1\nmax_keepalive 30\npassword_file PW\n",
    "max_topic_alias too large": "listener P0 127.0.0.1\nmax_topic_alias 70000\npassword_file PW\n",
    "max_topic_alias before the listener": "max_topic_alias 0\nlistener P0 127.0.0.1\npassword_file PW\n",
}
LOGINS = [(None, None), ("alice", "pa"), ("alice", "bad"), ("", None), ("", "x"), ("zed", "z")]


@needs_mosquitto
@pytest.mark.parametrize("name", sorted(CASES))
def test_same_configuration_same_outcome(name, tmp_path, redis_server, prefix):
    (tmp_path / "pw").write_text(f"alice:{hash_password('pa', salt_len=12, iterations=101)}\r\n")
    (tmp_path / "acl").write_text("topic read x\n")
    (tmp_path / "badacl").write_text("topic red x\n")
    (tmp_path / "inc").mkdir()
    (tmp_path / "inc" / "a.conf").write_text("allow_anonymous true\n")
    body = (
        CASES[name]
        .replace("PW", str(tmp_path / "pw"))
        .replace("BADACL", str(tmp_path / "badacl"))
        .replace("ACL", str(tmp_path / "acl"))
        .replace("INC", str(tmp_path / "inc"))
        .replace("NOPE", str(tmp_path / "nope"))
    )
    outcomes = []
    for side in ("mosquitto", "mqtt-guard"):
        ports = [brokers.free_port(), brokers.free_port()]
        conf = tmp_path / f"{side}.conf"
        conf.write_text(f"{brokers.run_as_line()}\n" + body.replace("P0", str(ports[0])).replace("P1", str(ports[1])))
        log = tmp_path / f"{side}.log"
        proc = (
            brokers.mosquitto_proc(conf, ports[0], log)
            if side == "mosquitto"
            else brokers.guard_proc(conf, ports[0], log, redis_server.url, prefix)
        )
        proc.start()
        try:
            try:
                asyncio.run(proc.wait_ready(timeout=20))
            except RuntimeError:
                outcomes.append("refused to start")
                continue
            used = [p for p in ports if f"P{ports.index(p)}" in CASES[name]]
            outcomes.append({p_i: [connack(port, u, pw) for u, pw in LOGINS] for p_i, port in enumerate(used)})
        finally:
            proc.stop()
    assert outcomes[0] == outcomes[1], f"{name}: mosquitto {outcomes[0]} / mqtt-guard {outcomes[1]}"
    print(name, outcomes[0])
