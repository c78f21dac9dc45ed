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


def test_a_subscribe_only_grant_warns_when_made(cli, add_user, rds, prefix):
    add_user("alice", "pw")
    r = cli("acl", "allow", "--user", "alice", "cmd/alice/#", "subscribe")
    assert r.returncode == 0, r.stderr
    assert rds.hget(f"{prefix}acl:user:alice", "cmd/alice/#") == "subscribe"  # stored as asked
    assert "warning: 'cmd/alice/#' grants subscribe without receive" in r.stderr
    assert "grant 'read'" in r.stderr
    r = cli("acl", "allow", "--user", "alice", "cmd/alice/#", "receive")
    assert r.returncode == 0 and r.stderr == ""  # now subscribe + receive: no warning
    assert cli("acl", "allow", "--user", "alice", "data/#", "read").stderr == ""
    assert cli("acl", "allow", "--user", "alice", "out/#", "write").stderr == ""
    r = cli("acl", "deny", "--user", "alice", "data/#", "receive")
    assert r.returncode == 0 and "grants subscribe but denies receive" in r.stderr


def test_check_explains_a_subscription_that_delivers_nothing(cli, add_user, rds, prefix):
    add_user("alice", "pw")
    rds.hset(f"{prefix}acl:user:alice", mapping={"cmd/alice/#": "subscribe", "ok/#": "read"})
    sub = cli("acl", "check", "alice", "c1", "cmd/alice/#", "subscribe")
    assert sub.returncode == 0, sub.stdout  # SUBACK grants it
    lines = sub.stdout.splitlines()
    assert lines[0].startswith("allow: grant rule 'cmd/alice/#' = subscribe")
    assert lines[1].startswith("note: the subscription is granted but delivers nothing")
    assert "'cmd/alice/x' (a topic it matches)" in lines[1] and "deny: default" not in lines[1]
    assert "(default)" in lines[1]
    plain = cli("acl", "check", "alice", "c1", "cmd/alice/t", "subscribe")
    assert "receive on it is denied" in plain.stdout
    fine = cli("acl", "check", "alice", "c1", "ok/+", "subscribe")
    assert fine.returncode == 0 and "note:" not in fine.stdout


def test_check_accepts_read_and_write_as_acl_allow_does(cli, add_user, rds, prefix):
    add_user("alice", "pw")
    rds.hset(f"{prefix}acl:user:alice", mapping={"cmd/alice/#": "subscribe", "ok/#": "read", "out/#": "write"})
    bad = cli("acl", "check", "alice", "c1", "cmd/alice/#", "read")
    assert bad.returncode == 1
    assert bad.stdout.splitlines() == [
        "deny: read needs subscribe and receive",
        f"  subscribe: allow: grant rule 'cmd/alice/#' = subscribe in {prefix}acl:user:alice",
        "  receive on 'cmd/alice/x' (a topic it matches): deny: default",
    ]
    good = cli("acl", "check", "alice", "c1", "ok/t", "read")
    assert good.returncode == 0 and good.stdout.startswith("allow: read needs subscribe and receive")
    assert "  receive: allow: grant rule 'ok/#' = read" in good.stdout
    assert cli("acl", "check", "alice", "c1", "out/1", "write").returncode == 0
    assert cli("acl", "check", "alice", "c1", "ok/1", "write").returncode == 1
    assert cli("acl", "check", "alice", "c1", "ok/#", "write").stdout.startswith("deny: invalid topic")


def test_unknown_user_warns_and_strict_refuses(cli, add_user, rds, prefix):
    r = cli("acl", "allow", "--user", "nosuchuser", "a/#", "read")
    assert r.returncode == 0 and rds.hget(f"{prefix}acl:user:nosuchuser", "a/#") == "read"
    assert "warning: no user 'nosuchuser' in Redis" in r.stderr
    r = cli("acl", "deny", "--user", "nosuchuser", "b/#", "read", "--strict")
    assert r.returncode == 1 and "no user 'nosuchuser'" in r.stderr
    assert rds.hget(f"{prefix}acl:user:nosuchuser", "b/#") is None
    add_user("alice", "pw")
    ok = cli("acl", "allow", "--user", "alice", "a/#", "read", "--strict")
    assert ok.returncode == 0 and ok.stderr == ""
    assert cli("acl", "allow", "--group", "nosuchgroup", "a/#", "read").stderr == ""  # groups need no record


def test_group_list(cli, add_user, rds, prefix):
    add_user("alice", "pw", "--group", "ops", "--group", "dev")
    add_user("bob", "pw", "--group", "ops")
    add_user("carol", "pw")
    rds.hset(f"{prefix}acl:group:audit", "logs/#", "read")
    listing = json.loads(cli("group", "list", "--json").stdout)
    assert listing == {"audit": [], "dev": ["alice"], "ops": ["alice", "bob"]}
    text = cli("group", "list").stdout.splitlines()
    assert text == ["audit: (no members; has ACL rules)", "dev: alice", "ops: alice, bob"]
