"""`mqtt-guard broker -c mosquitto.conf`: file-backed users and ACLs next to Redis, SIGHUP reloads,
and refusals that name the key and line."""

from __future__ import annotations

import signal

import pytest

from mqtt_guard.auth.hashes import hash_password
from tests.helpers.mqtt import connect
from tests.helpers.mqtt5 import V5
from tests.helpers.servers import free_port, guard_cmd
from tests.helpers.wait import until

ACL = """# anonymous clients
topic read public/#
user alice
topic readwrite alice/#
topic read shared/#
user bob
topic write shared/#
pattern readwrite clients/%c/#
"""


def line(user: str, password: str) -> str:
    return f"{user}:{hash_password(password, salt_len=12, iterations=101)}\n"


@pytest.fixture
def files(tmp_path):
    pw, acl = tmp_path / "passwd", tmp_path / "acl"
    pw.write_text(line("alice", "pa") + line("bob", "pb"))
    acl.write_text(ACL)
    port = free_port()
    conf = tmp_path / "mosquitto.conf"
    conf.write_text(
        f"# mosquitto.conf\nlistener {port} 127.0.0.1\nallow_anonymous true\npassword_file {pw}\n"
        f"acl_file {acl}\nlog_type all\n"
    )
    return conf, pw, acl, port


@pytest.fixture
def broker(start_broker, files):
    conf, _, _, port = files
    return start_broker("-c", str(conf), bind=False, wait_for_port=port)


def received(client, wait=0.5):
    return [(m.topic, m.payload) for m in client.received(wait)]


def test_users_and_acls_come_from_the_files(broker, files):
    port = files[3]
    assert connect(port, "alice", "wrong").rc == 5
    assert connect(port, "carol", "x").rc == 5  # in neither the file nor Redis
    alice = connect(port, "alice", "pa", client_id="a1")
    bob = connect(port, "bob", "pb", client_id="b1")
    anon = connect(port, client_id="anon1")
    assert alice.rc == bob.rc == anon.rc == 0
    assert alice.subscribe("#") == [0]  # mosquitto grants every SUBSCRIBE; READ is checked per message
    assert anon.subscribe("#") == [0]
    bob.publish("shared/x", b"1", qos=1)
    bob.publish("alice/x", b"2", qos=1)  # bob may not write there
    bob.publish("clients/b1/y", b"3", qos=1)  # pattern %c: bob's own client id
    anon.publish("public/z", b"4", qos=1)  # anonymous may only read public/#
    assert received(alice) == [("shared/x", b"1")]
    assert received(anon) == []
    for c in (alice, bob, anon):
        c.close()
    assert "mosquitto configuration" in broker.log()


def test_redis_deny_wins_and_redis_grants_and_users_add(broker, files, rds, prefix, add_user):
    port = files[3]
    rds.hset(f"{prefix}acl:user:alice", "shared/secret", "deny")
    rds.hset(f"{prefix}acl:user:alice", "extra/#", "read")
    add_user("zoe", "pz")  # a Redis user next to the file users
    rds.hset(f"{prefix}acl:user:zoe", "#", "publish")
    alice = connect(port, "alice", "pa")
    zoe = connect(port, "zoe", "pz")
    assert zoe.rc == 0
    alice.subscribe("#")
    zoe.publish("shared/secret", b"s", qos=1)
    zoe.publish("shared/ok", b"o", qos=1)
    zoe.publish("extra/e", b"e", qos=1)
    assert sorted(received(alice)) == [("extra/e", b"e"), ("shared/ok", b"o")]
    alice.close()
    zoe.close()


def _sighup(broker, count):
    broker.proc.send_signal(signal.SIGHUP)
    assert until(lambda: broker.log().count("reloaded ") + broker.log().count("reload failed") >= count, 10), (
        broker.log()
    )


def test_sighup_reloads_files_without_dropping_clients(broker, files):
    conf, pw, acl, port = files
    alice = connect(port, "alice", "pa", client_id="a1")
    bob = connect(port, "bob", "pb", client_id="b1")
    alice.subscribe("#")
    bob.publish("shared/1", b"before", qos=1)
    assert received(alice) == [("shared/1", b"before")]

    acl.write_text(ACL.replace("topic read shared/#", "topic read other/#").replace("shared/#", "other/#"))
    pw.write_text(line("alice", "new-pa") + line("bob", "pb") + line("carol", "pc"))
    _sighup(broker, 1)

    assert not alice.disconnected.is_set() and not bob.disconnected.is_set()  # nobody was dropped
    bob.publish("shared/2", b"old rule", qos=1)  # bob lost write on shared/#
    bob.publish("other/2", b"new rule", qos=1)
    assert received(alice) == [("other/2", b"new rule")]  # the existing subscription follows the new rules
    assert connect(port, "alice", "pa").rc == 5  # the new password file applies to new connections
    assert connect(port, "alice", "new-pa").rc == 0
    assert connect(port, "carol", "pc").rc == 0

    # allow_anonymous is reloaded from the conf too
    conf.write_text(conf.read_text().replace("allow_anonymous true", "allow_anonymous false"))
    _sighup(broker, 2)
    assert connect(port).rc == 5

    # an acl_file that no longer parses: the previous rules stay (mosquitto 2.0.11 would allow everything)
    acl.write_text("bogus line\n")
    _sighup(broker, 3)
    assert "stay in force" in broker.log() and "bogus" in broker.log()
    bob.publish("shared/3", b"still denied", qos=1)
    bob.publish("other/3", b"still allowed", qos=1)
    assert received(alice) == [("other/3", b"still allowed")]
    alice.close()
    bob.close()


def test_unsupported_key_stops_the_broker_naming_key_and_line(tmp_path, redis_server, prefix):
    import subprocess

    conf = tmp_path / "mosquitto.conf"
    conf.write_text(f"listener {free_port()}\nallow_anonymous true\nmount_point site1/\n")
    result = subprocess.run(
        guard_cmd("--redis-url", redis_server.url, "--prefix", prefix, "broker", "-c", str(conf)),
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert result.returncode == 1
    assert f"{conf}:3: mount_point: not supported by mqtt-guard" in result.stderr
    conf.write_text(f"listener {free_port()}\nallow_anonymus true\n")
    result = subprocess.run(
        guard_cmd("--redis-url", redis_server.url, "--prefix", prefix, "broker", "--mosquitto-conf", str(conf)),
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert result.returncode == 1
    assert f"{conf}:2: allow_anonymus: unknown configuration variable" in result.stderr


def test_a_broken_acl_file_stops_the_broker_naming_file_and_line(tmp_path, redis_server, prefix):
    import subprocess

    acl = tmp_path / "acl"
    acl.write_text("user alice\ntopic READ a\n")
    conf = tmp_path / "mosquitto.conf"
    conf.write_text(f"listener {free_port()}\nacl_file {acl}\n")
    result = subprocess.run(
        guard_cmd("--redis-url", redis_server.url, "--prefix", prefix, "broker", "-c", str(conf)),
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert result.returncode == 1
    assert f"{acl}:2: invalid topic access type 'READ'" in result.stderr


def test_keys_without_effect_are_accepted_with_a_warning(tmp_path, start_broker):
    port = free_port()
    conf = tmp_path / "mosquitto.conf"
    conf.write_text(
        f"listener {port} 127.0.0.1\nallow_anonymous true\nautosave_interval 60\nset_tcp_nodelay true\n"
        "persistence true\n"
    )
    broker = start_broker("-c", str(conf), bind=False, wait_for_port=port)
    log = broker.wait_log("set_tcp_nodelay")
    assert f"{conf}:3: autosave_interval: accepted and ignored" in log
    assert connect(port).rc == 0


def test_mqtt5_keys_reach_mqtt5_clients(tmp_path, start_broker):
    """max_keepalive and max_topic_alias as mosquitto 2.0.11 tells MQTT 5 clients (KEYS.md, measured): a
    keep alive above max_keepalive, or 0, gets Server Keep Alive = max_keepalive; Topic Alias Maximum is
    the listener's max_topic_alias; 3.1.1 clients keep their keep alive."""
    port = free_port()
    conf = tmp_path / "mosquitto.conf"
    conf.write_text(f"max_keepalive 30\nlistener {port} 127.0.0.1\nmax_topic_alias 3\nallow_anonymous true\n")
    start_broker("-c", str(conf), bind=False, wait_for_port=port)
    for keepalive, told in ((0, 30), (60, 30), (20, None)):
        c = V5(port, keepalive=keepalive)
        try:
            assert c.reason == 0
            assert (c.connack("ServerKeepAlive"), c.connack("TopicAliasMaximum")) == (told, 3), keepalive
        finally:
            c.close()
    assert connect(port).rc == 0


def test_process_keys_pid_file_log_dest_and_user(tmp_path, start_broker):
    import os
    import pwd

    port = free_port()
    pid_file, log_file = tmp_path / "mqg.pid", tmp_path / "mqg.log"
    run_as = "nobody" if os.geteuid() == 0 else pwd.getpwuid(os.geteuid()).pw_name
    conf = tmp_path / "mosquitto.conf"
    conf.write_text(
        f"listener {port} 127.0.0.1\nallow_anonymous true\npid_file {pid_file}\n"
        f"log_dest file {log_file}\nlog_dest stderr\nlog_type all\nuser {run_as}\n"
    )
    broker = start_broker("-c", str(conf), bind=False, wait_for_port=port)
    assert pid_file.read_text().strip() == str(broker.proc.pid)
    assert connect(port).rc == 0
    until(lambda: "connected from" in log_file.read_text(), 5, 0.05)
    assert "connected from" in log_file.read_text()  # log_dest file, and log_type all (debug) on stderr too
    status = open(f"/proc/{broker.proc.pid}/status").read()
    uid = next(line.split()[1] for line in status.splitlines() if line.startswith("Uid:"))
    assert int(uid) == pwd.getpwnam(run_as).pw_uid  # `user`: root privileges dropped after start


def test_client_id_rules_under_a_mosquitto_conf(start_broker, tmp_path):
    """clientid_prefixes refuses other ids with CONNACK 5 (mosquitto 2.0.11's answer, measured), and any
    user may take a client id over, as in mosquitto (auth.client_id_policy any)."""
    pw = tmp_path / "passwd"
    pw.write_text(line("alice", "pa") + line("bob", "pb"))
    port = free_port()
    conf = tmp_path / "mosquitto.conf"
    conf.write_text(f"listener {port} 127.0.0.1\npassword_file {pw}\nclientid_prefixes sec-\n")
    broker = start_broker("-c", str(conf), bind=False, wait_for_port=port)
    assert connect(port, "alice", "pa", client_id="other").rc == 5
    assert connect(port, "alice", "pa", client_id="se").rc == 5
    alice = connect(port, "alice", "pa", client_id="sec-1")
    assert alice.rc == 0
    bob = connect(port, "bob", "pb", client_id="sec-1")
    assert bob.rc == 0
    assert alice.disconnected.wait(5)
    bob.close()
    assert "client id does not start with one of client_id_prefixes (CONNACK 5)" in broker.log()
