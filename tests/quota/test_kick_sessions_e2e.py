"""Kicks, blocks and the session registry with real brokers and paho clients (no sidecar needed)."""

from __future__ import annotations

import time

from tests.helpers.mqtt import CONNACK_NOT_AUTHORIZED, connect
from tests.helpers.wait import until as wait_for
from tests.sidecar.helpers import fast_config


def test_kick_works_for_a_client_on_either_broker(start_broker, add_user, cli, tmp_path, rds, prefix):
    add_user("d", "pw")
    b1 = start_broker("--config", fast_config(tmp_path))
    b2 = start_broker("--config", fast_config(tmp_path))
    one = connect(b1.port, "d", "pw", client_id="on-b1")
    two = connect(b2.port, "d", "pw", client_id="on-b2")
    assert one.rc == two.rc == 0

    r = cli("kick", "on-b2", "--reason", "maintenance window")
    assert r.returncode == 0, r.stderr
    assert "sent to broker" in r.stdout
    assert two.disconnected.wait(3)
    assert not one.disconnected.wait(0.5)
    b2.wait_log("kicking client 'on-b2' (user 'd') on request of cli:")
    b2.wait_log("maintenance window")

    assert cli("kick", "on-b1").returncode == 0
    assert one.disconnected.wait(3)
    audit = [e for _, e in rds.xrange(f"{prefix}audit")]
    assert [(e["action"], e["client_id"]) for e in audit] == [("kick", "on-b2"), ("kick", "on-b1")]
    assert audit[0]["reason"] == "maintenance window" and audit[0]["by"].startswith("cli:")
    assert wait_for(lambda: not rds.exists(f"{prefix}session:on-b1", f"{prefix}session:on-b2"))

    missing = cli("kick", "on-b1")
    assert missing.returncode == 1 and "not connected" in missing.stdout


def test_kick_with_block_refuses_reconnects_with_connack_5_until_the_block_expires(
    start_broker, add_user, cli, tmp_path, prefix, rds
):
    add_user("d", "pw")
    broker = start_broker("--config", fast_config(tmp_path))
    client = connect(broker.port, "d", "pw", client_id="dev")
    r = cli("kick", "dev", "--block", "2s", "--reason", "abuse")
    assert r.returncode == 0 and "blocked for 2s" in r.stdout
    assert client.disconnected.wait(3)
    refused = connect(broker.port, "d", "pw", client_id="dev")
    assert refused.rc == CONNACK_NOT_AUTHORIZED
    broker.wait_log("refused CONNECT of client 'dev', username 'd': blocked for")
    assert "(abuse)" in broker.log()
    assert connect(broker.port, "d", "pw", client_id="other").rc == 0  # a client block, not a user block
    time.sleep(max(0.0, rds.pttl(f"{prefix}block:client:dev") / 1000) + 0.1)
    assert connect(broker.port, "d", "pw", client_id="dev").rc == 0


def test_a_blocked_client_retrying_is_logged_once_not_per_attempt(start_broker, add_user, cli, tmp_path):
    add_user("d", "pw")
    broker = start_broker("--config", fast_config(tmp_path))
    assert cli("kick", "dev", "--block", "1m").returncode == 0  # not connected, but blocked all the same
    for _ in range(4):  # a device retrying every second would write 1,200 lines in ten minutes
        assert connect(broker.port, "d", "pw", client_id="dev").rc == CONNACK_NOT_AUTHORIZED
    broker.wait_log("refused CONNECT of client 'dev', username 'd': blocked for")
    assert broker.log().count("refused CONNECT of client 'dev'") == 1


def test_kick_user_disconnects_all_its_clients_on_all_brokers_and_blocks_the_user(
    start_broker, add_user, cli, tmp_path, rds, prefix
):
    add_user("fleet", "pw")
    add_user("other", "pw")
    b1 = start_broker("--config", fast_config(tmp_path))
    b2 = start_broker("--config", fast_config(tmp_path))
    clients = [connect(b1.port, "fleet", "pw"), connect(b2.port, "fleet", "pw"), connect(b2.port, "fleet", "pw")]
    bystander = connect(b1.port, "other", "pw")
    r = cli("kick", "--user", "fleet", "--block", "1m", "--reason", "contract ended")
    assert r.returncode == 0, r.stderr
    for c in clients:
        assert c.disconnected.wait(3)
    assert not bystander.disconnected.wait(0.3)
    assert connect(b1.port, "fleet", "pw").rc == CONNACK_NOT_AUTHORIZED
    assert 0 < rds.pttl(f"{prefix}block:user:fleet") <= 60_000
    shown = cli("quota", "show", "fleet")
    assert "blocked until" in shown.stdout and "contract ended" in shown.stdout
    assert cli("quota", "reset", "fleet").returncode == 0  # lifts the block
    assert connect(b2.port, "fleet", "pw").rc == 0
    actions = [e["action"] for _, e in rds.xrange(f"{prefix}audit")]
    assert actions.count("kick") == 3 and actions.count("block") == 1


def test_kick_of_an_offline_client_with_block_still_blocks(start_broker, add_user, cli, tmp_path):
    add_user("d", "pw")
    broker = start_broker("--config", fast_config(tmp_path))
    r = cli("kick", "ghost", "--block", "1m")
    assert r.returncode == 0 and "not connected; blocked" in r.stdout
    assert connect(broker.port, "d", "pw", client_id="ghost").rc == CONNACK_NOT_AUTHORIZED


def test_sessions_limit_holds_across_two_brokers(start_broker, add_user, cli, tmp_path, rds, prefix):
    add_user("d", "pw")
    assert cli("quota", "set", "d", "--sessions", "2").returncode == 0
    b1 = start_broker("--config", fast_config(tmp_path))
    b2 = start_broker("--config", fast_config(tmp_path))
    first = connect(b1.port, "d", "pw", client_id="s1")
    second = connect(b2.port, "d", "pw", client_id="s2")
    assert first.rc == second.rc == 0
    third = connect(b1.port, "d", "pw", client_id="s3")
    assert third.rc == CONNACK_NOT_AUTHORIZED
    b1.wait_log("refused CONNECT of client 's3', username 'd': too many sessions: user 'd' has 2 connected")
    assert set(rds.hkeys(f"{prefix}sessions:user:d")) == {"s1", "s2"}
    second.close()
    assert wait_for(lambda: not rds.hexists(f"{prefix}sessions:user:d", "s2"))
    assert connect(b1.port, "d", "pw", client_id="s3").rc == 0


def test_same_client_id_on_another_broker_takes_the_session_over(start_broker, add_user, tmp_path, rds, prefix):
    add_user("d", "pw")
    b1 = start_broker("--config", fast_config(tmp_path))
    b2 = start_broker("--config", fast_config(tmp_path))
    old = connect(b1.port, "d", "pw", client_id="dev")
    new = connect(b2.port, "d", "pw", client_id="dev")
    assert old.rc == new.rc == 0
    assert old.disconnected.wait(3)
    b1.wait_log("connected again on broker")
    assert not new.disconnected.wait(0.5)
    assert wait_for(lambda: rds.hget(f"{prefix}session:dev", "broker") not in (None, ""))
    time.sleep(0.3)  # the old broker's clean-up must not remove the new registration
    session = rds.hgetall(f"{prefix}session:dev")
    assert session and rds.hget(f"{prefix}sessions:user:d", "dev").startswith(session["broker"] + "/")
    new.close()


def test_registry_shows_broker_and_since_and_is_emptied_by_a_clean_shutdown(
    start_broker, add_user, tmp_path, rds, prefix
):
    add_user("d", "pw")
    broker = start_broker("--config", fast_config(tmp_path))
    before = time.time()
    client = connect(broker.port, "d", "pw", client_id="dev")
    # Registered with the broker's next registry batch, milliseconds after the CONNACK.
    session = wait_for(lambda: rds.hgetall(f"{prefix}session:dev"), timeout=1)
    assert session["username"] == "d" and before - 1 <= float(session["since"]) <= time.time()
    broker_id = session["broker"]
    assert rds.zscore(f"{prefix}brokers", broker_id) > time.time() * 1000
    assert rds.hget(f"{prefix}broker:{broker_id}", "pid")
    assert broker.stop() == 0
    client.close()
    assert not rds.exists(f"{prefix}session:dev", f"{prefix}broker:{broker_id}", f"{prefix}sessions:user:d")
    assert rds.zscore(f"{prefix}brokers", broker_id) is None
