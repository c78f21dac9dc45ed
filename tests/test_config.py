"""Configuration files: strict validation with messages that name the key and the file."""

from __future__ import annotations

import pytest

from mqtt_guard.config import ConfigError, load_config, parse_duration, parse_size


def test_defaults_and_units(tmp_path):
    f = tmp_path / "c.yaml"
    f.write_text(
        "auth:\n  cache_ttl: 5m\nlimits:\n  max_packet_size: 2MiB\n  connect_timeout: 3\n"
        "listeners:\n  - bind: 127.0.0.1:1884\n"
    )
    config = load_config(f)
    assert config.auth.cache_ttl == 300 and config.limits.max_packet_size == 2 * 1024 * 1024
    assert config.listeners[0].type == "tcp" and config.auth.allow_anonymous is False
    config.check()


def test_client_id_policy_and_session_expiry(tmp_path):
    """auth.client_id_policy defaults to owner; limits.persistent_session_expiry to never (None)."""
    assert load_config(None).auth.client_id_policy == "owner"
    assert load_config(None).limits.persistent_session_expiry is None
    f = tmp_path / "c.yaml"
    f.write_text(
        "auth:\n  client_id_policy: username-prefix\n  client_id_prefixes: [sec-, dev-]\n"
        "limits:\n  persistent_session_expiry: 2h\nlisteners:\n  - bind: 127.0.0.1:1884\n"
    )
    config = load_config(f)
    assert config.auth.client_id_policy == "username-prefix" and config.auth.client_id_prefixes == ["sec-", "dev-"]
    assert config.limits.persistent_session_expiry == 7200
    config.check()
    f.write_text("limits:\n  persistent_session_expiry: null\nlisteners:\n  - bind: 127.0.0.1:1884\n")
    assert load_config(f).limits.persistent_session_expiry is None
    f.write_text("limits:\n  persistent_session_expiry: 0\nlisteners:\n  - bind: 127.0.0.1:1884\n")
    with pytest.raises(ConfigError, match="persistent_session_expiry must be above 0"):
        load_config(f).check()


def test_max_topic_levels(tmp_path):
    """limits.max_topic_levels: 201 by default (mosquitto's limit), 0 = no limit, never negative."""
    assert load_config(None).limits.max_topic_levels == 201
    f = tmp_path / "c.yaml"
    f.write_text("limits:\n  max_topic_levels: 0\n")
    assert load_config(f).limits.max_topic_levels == 0
    f.write_text("limits:\n  max_topic_levels: -1\n")
    with pytest.raises(ConfigError, match="max_topic_levels must be >= 0"):
        load_config(f).check()


@pytest.mark.parametrize(
    "text,expected",
    [
        ("auth:\n  allow_anonymus: true\n", "unknown key 'auth.allow_anonymus'"),
        ("bogus: 1\n", "unknown key 'bogus'"),
        ("listeners:\n  - bind: '127.0.0.1:2'\n    tls: true\n", "unknown key 'listeners[0].tls'"),
        ("auth:\n  on_redis_down: maybe\n", "auth.on_redis_down: must be one of deny, cached"),
        ("auth:\n  allow_anonymous: 'yes'\n", "auth.allow_anonymous: must be true or false"),
        ("limits:\n  max_packet_size: lots\n", "limits.max_packet_size"),
        ("- a\n", "top level must be a mapping"),
        ("a: [\n", "not valid YAML"),
        ("auth:\n  client_id_policy: mine\n", "auth.client_id_policy: must be one of owner, username-prefix, any"),
        ("auth:\n  client_id_prefixes: sec-\n", "auth.client_id_prefixes: must be a list"),
        ("limits:\n  persistent_session_expiry: soon\n", "limits.persistent_session_expiry"),
        ("limits:\n  max_topic_levels: deep\n", "limits.max_topic_levels"),
    ],
)
def test_errors_name_key_and_file(tmp_path, text, expected):
    f = tmp_path / "bad.yaml"
    f.write_text(text)
    with pytest.raises(ConfigError) as err:
        load_config(f)
    assert expected in str(err.value) and str(f) in str(err.value)


def test_tls_listener_checks(tmp_path):
    f = tmp_path / "c.yaml"
    f.write_text("listeners:\n  - type: tls\n    bind: 0.0.0.0:8883\n")
    with pytest.raises(ConfigError, match="needs certfile and keyfile"):
        load_config(f).check()


def test_sidecar_sweep_interval(tmp_path):
    f = tmp_path / "c.yaml"
    f.write_text("sidecar:\n  sweep_interval: 2m\n")
    config = load_config(f)
    assert config.sidecar.sweep_interval == 120 and load_config(None).sidecar.sweep_interval == 600
    config.sidecar.check()
    f.write_text("sidecar:\n  interval: 5s\n  leader_ttl: 15s\n  sweep_interval: 1s\n")
    with pytest.raises(ConfigError, match="sweep_interval must be at least interval"):
        load_config(f).sidecar.check()


def test_unknown_key_stops_the_broker_with_a_clear_message(tmp_path, cli):
    f = tmp_path / "c.yaml"
    f.write_text("acl:\n  defualt: allow\n")
    r = cli("broker", "--config", str(f), "--bind", "127.0.0.1:0")
    assert r.returncode == 1
    assert "unknown key 'acl.defualt'" in r.stderr and str(f) in r.stderr


def test_units():
    assert parse_size("1MiB") == 1048576 and parse_size(10) == 10 and parse_size("1kb") == 1000
    assert parse_duration("1h") == 3600 and parse_duration("250ms") == 0.25 and parse_duration(2) == 2.0
    with pytest.raises(ValueError):
        parse_duration("soon")


def test_proxy_protocol_listener_keys(tmp_path):
    f = tmp_path / "c.yaml"
    f.write_text(
        "listeners:\n  - bind: 0.0.0.0:1883\n    proxy_protocol: true\n"
        "    trusted_proxies: [10.0.0.0/8, '2001:db8::/32', 192.0.2.7]\n"
    )
    config = load_config(f)
    config.check()
    assert config.listeners[0].proxy_protocol and config.listeners[0].trusted_proxies[1] == "2001:db8::/32"


@pytest.mark.parametrize(
    "listener,expected",
    [
        ("proxy_protocol: true\n", "proxy_protocol needs trusted_proxies"),
        ("trusted_proxies: [10.0.0.1]\n", "trusted_proxies is only used with proxy_protocol: true"),
        ("proxy_protocol: true\n    trusted_proxies: [10.0.0.300/8]\n", "listeners[0].trusted_proxies[0]: not an"),
        ("type: websockets\n    certfile: {pem}\n    keyfile: {pem}\n    proxy_protocol: true\n", "not wss"),
    ],
)
def test_proxy_protocol_listener_checks(tmp_path, listener, expected):
    f = tmp_path / "c.yaml"
    (tmp_path / "x.pem").write_text("")
    f.write_text("listeners:\n  - bind: 0.0.0.0:1883\n    " + listener.format(pem=tmp_path / "x.pem"))
    with pytest.raises(ConfigError) as err:
        load_config(f).check()
    assert expected in str(err.value)


def test_throttle_settings(tmp_path):
    f = tmp_path / "c.yaml"
    f.write_text(
        "auth:\n  hash_queue: 50\n  throttle:\n    max_failures: 20\n    window: 2m\n    ban_for: 1h\n"
        "    exempt: [10.0.0.0/8, '::1']\nlisteners:\n  - bind: 127.0.0.1:1884\n"
    )
    config = load_config(f)
    config.check()
    t = config.auth.throttle
    assert (t.enabled, t.max_failures, t.max_user_failures, t.window, t.ban_for) == (True, 20, 5, 120, 3600)
    assert t.exempt == ["10.0.0.0/8", "::1"] and config.auth.hash_queue == 50


@pytest.mark.parametrize(
    "text,expected",
    [
        ("auth:\n  throttle:\n    max_failurs: 3\n", "unknown key 'auth.throttle.max_failurs'"),
        ("auth:\n  throttle:\n    window: soon\n", "auth.throttle.window"),
        ("auth:\n  throttle:\n    ban_for: 0\n", "window and ban_for must be above 0"),
        ("auth:\n  throttle:\n    max_failures: -1\n", "must be >= 0"),
        ("auth:\n  throttle:\n    exempt: [10.0.0.0/33]\n", "auth.throttle.exempt[0]: not an IP address"),
        ("auth:\n  hash_queue: -5\n", "auth.hash_queue"),
    ],
)
def test_throttle_errors(tmp_path, text, expected):
    f = tmp_path / "bad.yaml"
    f.write_text(text + "listeners:\n  - bind: 127.0.0.1:1884\n")
    with pytest.raises(ConfigError) as err:
        load_config(f).check()
    assert expected in str(err.value)


def test_shared_subscription_strategy(tmp_path):
    """limits.shared_subscription_strategy: round_robin by default; mosquitto under a mosquitto.conf."""
    assert load_config(None).limits.shared_subscription_strategy == "round_robin"
    f = tmp_path / "c.yaml"
    f.write_text("limits:\n  shared_subscription_strategy: least_loaded\n")
    assert load_config(f).limits.shared_subscription_strategy == "least_loaded"
    f.write_text("limits:\n  shared_subscription_strategy: random\n")
    with pytest.raises(ConfigError, match="shared_subscription_strategy"):
        load_config(f)


def test_mqtt5_bad_credentials_and_the_shutdown_server_reference(tmp_path):
    config = load_config(None)
    assert config.auth.mqtt5_bad_credentials == "bad_credentials" and config.shutdown.server_reference is None
    f = tmp_path / "c.yaml"
    listener = "listeners:\n  - bind: 127.0.0.1:1884\n"
    f.write_text(
        listener + "auth:\n  mqtt5_bad_credentials: not_authorized\nshutdown:\n  server_reference: b.example:1883\n"
    )
    config = load_config(f)
    config.check()
    assert config.auth.mqtt5_bad_credentials == "not_authorized"
    assert config.shutdown.server_reference == "b.example:1883"
    f.write_text("auth:\n  mqtt5_bad_credentials: spec\n")
    with pytest.raises(ConfigError, match="mqtt5_bad_credentials"):
        load_config(f)
    f.write_text(listener + "shutdown:\n  server_reference: '  '\n")
    with pytest.raises(ConfigError, match="shutdown.server_reference"):
        load_config(f).check()


def test_cluster_section_is_on_by_default_and_validated(tmp_path):
    """cluster: (docs/scaling.md): routing between brokers on one Redis is on unless turned off; its
    limits are checked with the key named."""
    default = load_config(None).cluster
    assert default.enabled is True and default.inbox_maxlen == 20_000 and default.liveness_interval == 1.0
    f = tmp_path / "c.yaml"
    f.write_text(
        "cluster:\n  enabled: false\n  inbox_maxlen: 500\n  liveness_interval: 500ms\n  absent_grace: 5s\n"
        "listeners:\n  - bind: 127.0.0.1:1884\n"
    )
    config = load_config(f)
    assert config.cluster.enabled is False and config.cluster.inbox_maxlen == 500
    assert config.cluster.liveness_interval == 0.5 and config.cluster.absent_grace == 5.0
    for bad, key in (
        ("inbox_maxlen: 10", "cluster.inbox_maxlen"),
        ("buffer_limit: -1", "cluster.buffer_limit"),
        ("liveness_interval: 5m", "cluster.liveness_interval"),
        ("absent_grace: 0", "cluster.absent_grace"),
        ("routes: 3", "cluster.routes"),
    ):
        f.write_text(f"cluster:\n  {bad}\nlisteners:\n  - bind: 127.0.0.1:1884\n")
        with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
            load_config(f).check()
