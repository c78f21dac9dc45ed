"""mosquitto.conf parsing as measured on mosquitto 2.0.11, and its translation to an mqtt-guard config."""

from __future__ import annotations

import functools
import os

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mqtt_guard.compat.conf import (
    MosquittoConfError,
    _scmp,
    include_dir_files,
    looks_like_mosquitto_conf,
    mosquitto_sort_key,
    parse_mosquitto_conf,
    to_guard_config,
)


def conf_of(tmp_path, text, name="mosquitto.conf"):
    path = tmp_path / name
    path.write_text(text)
    return parse_mosquitto_conf(path)


def error_of(tmp_path, text):
    with pytest.raises(MosquittoConfError) as err:
        conf_of(tmp_path, text)
    return str(err.value)


# The order mosquitto 2.0.11 read these files in (measured: one listener per file, opening order logged).
MEASURED_ORDER = [
    ".hidden.conf",
    "10.conf",
    "9.conf",
    "A.conf",
    "AB.conf",
    "Ab.conf",
    "a-b.conf",
    "a.b.conf",
    "a.conf",
    "aa.conf",
    "aB.conf",
    "ab.conf",
    "a_c.conf",
    "B.conf",
    "b.conf",
    "Z.conf",
    "z.conf",
    "_x.conf",
    "~t.conf",
]


def test_include_dir_order_is_mosquittos(tmp_path):
    for name in [*MEASURED_ORDER, "c.txt", "d.conf.bak", "e.CONF"]:
        (tmp_path / name).write_text("")
    assert [os.path.basename(p) for p in include_dir_files(str(tmp_path))] == MEASURED_ORDER


@settings(max_examples=300)
@given(st.lists(st.text(alphabet="aAbB_.-09é", min_size=1, max_size=6), min_size=2, max_size=8))
def test_sort_key_is_scmp(names):
    assert sorted(names, key=mosquitto_sort_key) == sorted(names, key=functools.cmp_to_key(_scmp))


def test_include_dir_is_read_in_place_and_only_from_the_main_file(tmp_path):
    inc, inner = tmp_path / "inc", tmp_path / "inner"
    inc.mkdir()
    inner.mkdir()
    (inc / "a.conf").write_text(f"allow_anonymous true\ninclude_dir {inner}\n")
    (inner / "b.conf").write_text("allow_anonymous false\n")
    c = conf_of(tmp_path, f"listener 1883\nallow_anonymous false\ninclude_dir {inc}\n")
    assert c.security.allow_anonymous is True  # the included file came after the main file's line
    assert any("include_dir is only read in the main configuration file" in w for w in c.warnings)
    c = conf_of(tmp_path, f"listener 1883\ninclude_dir {inc}\nallow_anonymous false\n")
    assert c.security.allow_anonymous is False
    assert f"unable to open include_dir '{tmp_path}/nope'" in error_of(tmp_path, f"include_dir {tmp_path}/nope\n")
    (inc / "a.conf").write_text("bogus 1\n")
    assert f"{inc}/a.conf:1: bogus: unknown configuration variable" in error_of(tmp_path, f"include_dir {inc}\n")


def test_listener_settings_in_included_files(tmp_path):
    """With per_listener_settings, an included file starts at the default listener; after an include that
    defined listeners, the main file's listener settings reach no listener (all measured)."""
    inc = tmp_path / "inc"
    inc.mkdir()
    (inc / "a.conf").write_text("allow_anonymous true\n")
    c = conf_of(tmp_path, f"per_listener_settings true\nlistener 1\nlistener 2\ninclude_dir {inc}\n")
    assert [c.allow_anonymous_for(lst) for lst in c.effective_listeners()] == [False, False]
    (inc / "a.conf").write_text("listener 3\nallow_anonymous true\n")
    c = conf_of(
        tmp_path,
        f"per_listener_settings true\nlistener 1\nallow_anonymous true\ninclude_dir {inc}\nallow_anonymous false\n",
    )
    assert [c.allow_anonymous_for(lst) for lst in c.effective_listeners()] == [True, True]
    assert any("applies it to no listener" in w for w in c.warnings)


@pytest.mark.parametrize(
    ("text", "ports_and_anonymous"),
    [
        ("", [("127.0.0.1:1883", True)]),  # no listener at all: local only mode, anyone may connect...
        ("allow_anonymous false\n", [("127.0.0.1:1883", True)]),  # ...even with allow_anonymous false
        ("password_file /dev/null\n", [("127.0.0.1:1883", True)]),
        ("port 1884\n", [("0.0.0.0:1884", False)]),
        ("bind_address 127.0.0.1\n", [("127.0.0.1:1883", False)]),
        ("max_connections 5\n", [("0.0.0.0:1883", True)]),
        ("listener 1884\n", [("0.0.0.0:1884", False)]),
        ("max_connections 4\nlistener 1884\n", [("0.0.0.0:1884", False), ("0.0.0.0:1883", False)]),
        ("per_listener_settings true\nport 1884\n", [("0.0.0.0:1884", True)]),
        (
            "per_listener_settings true\nmax_connections 4\nlistener 1884\n",
            [("0.0.0.0:1884", False), ("0.0.0.0:1883", True)],
        ),
        ("per_listener_settings true\nallow_anonymous true\nlistener 1884\n", [("0.0.0.0:1884", False)]),
        (
            "per_listener_settings true\npassword_file /x\nlistener 1884\n",
            [("0.0.0.0:1884", False), ("0.0.0.0:1883", True)],
        ),
        ("listener 1884 ::1\n", [("[::1]:1884", False)]),
    ],
)
def test_listeners_and_the_anonymous_default(tmp_path, text, ports_and_anonymous):
    c = conf_of(tmp_path, text)
    got = [(lst.bind(c.local_only), c.allow_anonymous_for(lst)) for lst in c.effective_listeners()]
    assert got == ports_and_anonymous


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("allow_anonymous TRUE\n", ":1: allow_anonymous: invalid allow_anonymous value (TRUE)"),
        ("allow_anonymous yes\n", "invalid allow_anonymous value (yes)"),
        ("allow_anonymous\n", "empty allow_anonymous value"),
        ("\tallow_anonymous true\n", "unknown configuration variable"),
        ("allow_anonymous\ttrue\n", "unknown configuration variable"),
        ("   # indented comment\n", ":1: #: unknown configuration variable"),
        ("password_file /a\npassword_file /b\n", ":2: password_file: duplicate password_file value"),
        (
            "listener 1\nallow_anonymous true\nper_listener_settings true\n",
            ":3: per_listener_settings: per_listener_settings must be set before any other security settings",
        ),
        ("bridge_cafile /x\n", "bridges are not supported"),
        ("connection br\naddress 1.2.3.4\n", ":1: connection: not supported by mqtt-guard"),
        ("auth_plugin /usr/lib/go-auth.so\n", "mqtt-guard import go-auth"),
        ("auth_opt_backends redis\n", ":1: auth_opt_backends: not supported"),
        ("psk_file /x\n", "TLS-PSK is not supported"),
        ("listener 1883\nmount_point x/\n", ":2: mount_point: not supported by mqtt-guard"),
        ("max_qos 1\n", "only 2 (the default) is supported"),
        ("message_size_limit -1\n", "invalid message_size_limit value (-1)"),
        ("tls_version tlsv1.3\n", "`tls_version tlsv1.3` is not supported"),
        ("listener 0 /tmp/sock\n", "unix socket listeners"),
        ("listener 70000\n", "invalid port value (70000)"),
        ("protocol mqttsn\n", "invalid protocol value (mqttsn)"),
        ("log_dest carrier-pigeon\n", "invalid log_dest value (carrier-pigeon)"),
        # measured on mosquitto 2.0.11: each refused with "Invalid persistent_client_expiration duration"
        ("persistent_client_expiration 10\n", ":1: persistent_client_expiration: invalid"),
        ("persistent_client_expiration 5s\n", "invalid persistent_client_expiration duration (5s)"),
        ("persistent_client_expiration 0h\n", "invalid persistent_client_expiration duration (0h)"),
        ("persistent_client_expiration 2 h\n", "invalid persistent_client_expiration duration (2)"),
        ("clientid_prefixes a\nclientid_prefixes b\n", ":2: clientid_prefixes: duplicate clientid_prefixes value"),
    ],
)
def test_refusals_name_key_file_and_line(tmp_path, text, message):
    msg = error_of(tmp_path, text)
    assert message in msg
    assert str(tmp_path / "mosquitto.conf") in msg


def test_values_are_read_like_mosquitto(tmp_path):
    c = conf_of(
        tmp_path,
        "listener 1883  127.0.0.1 extra\nallow_anonymous 1\nallow_anonymous 0\n"
        "password_file /etc/pw # not a comment\nmax_queued_messages 10abc\nmax_packet_size 0\n"
        "  sys_interval 0\nlog_type debug\nlog_dest file /tmp/m.log\n",
    )
    assert c.security.allow_anonymous is False  # repeated booleans: the last one wins
    assert c.security.password_file == "/etc/pw # not a comment"
    assert c.max_queued_messages == 10
    assert c.listeners[0].address == "127.0.0.1"
    config = to_guard_config(c)
    assert config.limits.max_queued_messages == 10
    assert config.limits.max_packet_size == 268_435_455  # 0 = no limit in mosquitto
    assert config.log.level == "debug"
    assert c.log_dest == [("file", "/tmp/m.log")]
    assert config.auth.throttle.enabled is False  # mosquitto has no login throttling


def test_client_id_rules_are_mosquittos(tmp_path):
    """Under a mosquitto.conf any user may take any client id over (mosquitto's behaviour); clientid_prefixes
    (the rest of the line, one prefix) and persistent_client_expiration (measured: `1.5h` is 1 h, m = 30
    days) are honoured."""
    config = to_guard_config(conf_of(tmp_path, "listener 1883\n"))
    assert config.auth.client_id_policy == "any" and config.auth.client_id_prefixes == []
    assert config.limits.persistent_session_expiry is None
    assert config.limits.shared_subscription_strategy == "mosquitto"  # mosquitto-compat/SHARED.md
    c = conf_of(tmp_path, "listener 1883\nclientid_prefixes sec- x \npersistent_client_expiration 1.5h\n")
    assert c.clientid_prefixes == "sec- x" and c.persistent_client_expiration == 3600
    assert any("clientid_prefixes: deprecated" in w for w in c.warnings)
    config = to_guard_config(c)
    assert config.auth.client_id_prefixes == ["sec- x"] and config.limits.persistent_session_expiry == 3600
    assert to_guard_config(conf_of(tmp_path, "queue_qos0_messages true\n")).durable.queue_qos0_messages is True
    assert to_guard_config(conf_of(tmp_path, "listener 1883\n")).durable.queue_qos0_messages is False
    for value, seconds in (("2d", 2 * 86400), ("1w", 7 * 86400), ("1m", 30 * 86400), ("3y", 3 * 365 * 86400)):
        assert conf_of(tmp_path, f"persistent_client_expiration {value}\n").persistent_client_expiration == seconds


@pytest.mark.parametrize(
    "text, message",
    [  # measured on mosquitto 2.0.11: each stops it ("Invalid max_keepalive value (N)" / "Invalid max_topic_alias")
        ("max_keepalive 0\n", ":1: max_keepalive: invalid max_keepalive value (0)"),
        ("max_keepalive 65536\n", "invalid max_keepalive value (65536)"),
        ("max_keepalive -5\n", "invalid max_keepalive value (-5)"),
        ("max_keepalive abc\n", "invalid max_keepalive value (0)"),
        ("listener 1883\nmax_topic_alias 70000\n", ":2: max_topic_alias: invalid max_topic_alias value"),
        ("listener 1883\nmax_topic_alias -1\n", "invalid max_topic_alias value"),
        ("listener 1883\nmax_topic_alias 5\nlistener 1884\n", "max_topic_alias: listeners with different values"),
    ],
)
def test_mqtt5_keys_refused_like_mosquitto(tmp_path, text, message):
    msg = error_of(tmp_path, text)
    assert message in msg
    assert str(tmp_path / "mosquitto.conf") in msg


def test_mqtt5_keys_are_honoured(tmp_path):
    """max_keepalive (global; mosquitto's default 65535) and max_topic_alias (per listener, default 10; a
    line before the first `listener` sets the default listener's, which explicit listeners do not inherit;
    measured with MQTT 5 CONNACKs from mosquitto 2.0.11)."""
    limits = to_guard_config(conf_of(tmp_path, "listener 1883\n")).limits
    assert (limits.max_keepalive, limits.max_topic_alias) == (65535, 10)
    limits = to_guard_config(conf_of(tmp_path, "max_keepalive 30\nlistener 1883\nmax_topic_alias 0\n")).limits
    assert (limits.max_keepalive, limits.max_topic_alias) == (30, 0)
    for text, alias in (
        ("max_topic_alias 5\nlistener 1883\n", 10),
        ("listener 1883\nmax_topic_alias 5\nmax_topic_alias 7\n", 7),
        ("port 1883\nmax_topic_alias 5\n", 5),
        ("max_topic_alias 5\nport 1883\n", 5),
        ("listener 1883\nmax_topic_alias 0x10\n", 0),
        ("listener 1883\nmax_topic_alias 5\nlistener 1884\nmax_topic_alias 5\n", 5),
    ):
        c = conf_of(tmp_path, text)
        assert to_guard_config(c).limits.max_topic_alias == alias, text
        assert not [w for w in c.warnings if "max_" in w], text


def test_translation_of_listeners(tmp_path):
    for name in ("ca.pem", "cert.pem", "key.pem"):
        (tmp_path / name).write_text("x")
    c = conf_of(
        tmp_path,
        f"listener 8883\ncafile {tmp_path}/ca.pem\ncertfile {tmp_path}/cert.pem\n"
        f"keyfile {tmp_path}/key.pem\nrequire_certificate true\nuse_identity_as_username true\n"
        "listener 9001 127.0.0.1\nprotocol websockets\nmax_connections -1\n"
        "listener 1883\nmax_connections 10\nmax_inflight_messages 5\n",
    )
    config = to_guard_config(c)
    tls, ws, plain = config.listeners
    assert (tls.type, tls.bind, tls.require_certificate, tls.use_identity_as_username) == (
        "tls",
        "0.0.0.0:8883",
        True,
        True,
    )
    assert (ws.type, ws.bind, ws.max_connections) == ("websockets", "127.0.0.1:9001", 0)
    assert (plain.type, plain.max_connections) == ("tcp", 10)
    assert config.limits.max_inflight_messages == 5
    assert config.acl.default == "deny"


def test_format_detection(tmp_path):
    yaml_file = tmp_path / "a.yaml"
    yaml_file.write_text("# x\nlisteners:\n  - bind: 0.0.0.0:1883\n")
    mosq = tmp_path / "b.conf"
    mosq.write_text("# x\n\nlistener 1883\nallow_anonymous true\n")
    odd = tmp_path / "c.conf"
    odd.write_text("auth:\n  allow_anonymous: true\n")
    assert not looks_like_mosquitto_conf(yaml_file)
    assert looks_like_mosquitto_conf(mosq)
    assert not looks_like_mosquitto_conf(odd)
    assert not looks_like_mosquitto_conf(tmp_path / "missing")


def test_debian_default_configuration_loads(tmp_path):
    (tmp_path / "conf.d").mkdir()
    c = conf_of(
        tmp_path,
        "pid_file /run/mosquitto/mosquitto.pid\n\npersistence true\n"
        "persistence_location /var/lib/mosquitto/\n\nlog_dest file /var/log/mosquitto/mosquitto.log\n"
        f"\ninclude_dir {tmp_path}/conf.d\n",
    )
    assert c.local_only and c.persistence and c.pid_file == "/run/mosquitto/mosquitto.pid"
    assert not any("kept in memory only" in w for w in c.warnings)
    assert to_guard_config(c).durable.enabled


def test_the_examples_load():
    from mqtt_guard.compat.launch import load
    from mqtt_guard.config import GuardConfig

    root = os.path.join(os.path.dirname(__file__), "..", "..")
    cwd = os.getcwd()
    os.chdir(root)  # the example names its files relative to the checkout, as mosquitto would
    try:
        conf, config, security = load("mosquitto-compat/examples/mosquitto.conf", GuardConfig())
    finally:
        os.chdir(cwd)
    assert conf.warnings == []  # (max_keepalive 300 is honoured since issue 16)
    scope = security.scopes[0]
    assert len(scope.passwd) == 3 and scope.allow_anonymous
    assert scope.acl.check("sensor-17", "s17", 2, "telemetry/sensor-17/t") is True
    assert scope.acl.check("sensor-17", "s17", 2, "telemetry/sensor-17/debug") is False
