"""`mqtt-guard acl ...` and `group ...` as an admin uses them."""

from __future__ import annotations

import json


def test_allow_deny_rm_list(cli, rds, prefix):
    assert cli("acl", "allow", "--user", "alice", "sensors/alice/#", "read,write").returncode == 0
    assert rds.hget(f"{prefix}acl:user:alice", "sensors/alice/#") == "readwrite"
    assert cli("acl", "deny", "--user", "alice", "sensors/alice/#", "publish").returncode == 0
    assert rds.hget(f"{prefix}acl:user:alice", "sensors/alice/#") == "read,deny-publish"
    assert cli("acl", "allow", "--user", "alice", "sensors/alice/#", "publish").returncode == 0
    assert rds.hget(f"{prefix}acl:user:alice", "sensors/alice/#") == "readwrite"
    assert cli("acl", "allow", "--group", "ops", "ops/#", "all").returncode == 0
    assert cli("acl", "allow", "--pattern", "dev/%u/#", "write").returncode == 0
    assert cli("acl", "allow", "--anonymous", "open/#", "read").returncode == 0
    rds.hset(f"{prefix}acl:user:alice", "bad/#/x", "read")
    listing = json.loads(cli("acl", "list", "--json").stdout)
    assert set(listing) == {"user:alice", "group:ops", "pattern", "anonymous"}
    assert listing["user:alice"]["rules"] == {"sensors/alice/#": "readwrite"}
    assert listing["user:alice"]["problems"][0]["filter"] == "bad/#/x"
    text = cli("acl", "list", "--user", "alice").stdout
    assert "skipped 'bad/#/x'" in text
    assert cli("acl", "rm", "--user", "alice", "sensors/alice/#").returncode == 0
    assert cli("acl", "rm", "--user", "alice", "sensors/alice/#").returncode == 1


def test_bad_input_is_refused(cli):
    bad_filter = cli("acl", "allow", "--user", "a", "x/#/y", "read")
    assert bad_filter.returncode == 1 and "invalid topic filter" in bad_filter.stderr
    bad_token = cli("acl", "allow", "--user", "a", "x", "fly")
    assert bad_token.returncode == 1 and "fly" in bad_token.stderr
    assert cli("acl", "allow", "x", "read").returncode == 2  # no subject


def test_check_explains_and_exits_0_or_1(cli, add_user, rds, prefix):
    add_user("alice", "pw", "--group", "ops")
    rds.hset(f"{prefix}acl:user:alice", mapping={"s/#": "readwrite", "s/secret": "deny-read"})
    rds.hset(f"{prefix}acl:group:ops", "ops/#", "read")
    rds.hset(f"{prefix}acl:pattern", "dev/%c/#", "write")
    allow = cli("acl", "check", "alice", "c1", "s/x", "publish")
    assert allow.returncode == 0 and allow.stdout.startswith("allow: grant rule 's/#'")
    assert f"{prefix}acl:user:alice" in allow.stdout
    deny = cli("acl", "check", "alice", "c1", "s/secret", "receive")
    assert deny.returncode == 1 and deny.stdout.startswith("deny: deny rule 's/secret'")
    assert cli("acl", "check", "alice", "c1", "ops/1", "receive").returncode == 0
    assert cli("acl", "check", "alice", "c1", "ops/1", "publish").stdout.startswith("deny: default")
    assert cli("acl", "check", "alice", "c1", "dev/c1/t", "publish").returncode == 0
    assert cli("acl", "check", "alice", "c2", "dev/c1/t", "publish").returncode == 1
    assert cli("acl", "check", "alice", "c1", "s/+", "subscribe").returncode == 0
    assert cli("acl", "check", "-", "c1", "s/x", "publish").returncode == 1
    assert cli("acl", "check", "alice", "c1", "a/+", "publish").stdout.startswith("deny: invalid topic")


def test_group_membership(cli, add_user, rds, prefix):
    add_user("bob", "pw")
    assert cli("group", "add-user", "g1", "bob").returncode == 0
    assert rds.smembers(f"{prefix}user:bob:groups") == {"g1"}
    assert cli("group", "del-user", "g1", "bob").returncode == 0
    assert rds.smembers(f"{prefix}user:bob:groups") == set()
    assert cli("group", "add-user", "g1", "ghost").returncode == 1
