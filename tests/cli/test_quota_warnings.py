"""`mqtt-guard quota set` for a user that does not exist: stored (it may be created later), but said."""

from __future__ import annotations


def test_quota_set_for_an_unknown_user_warns_and_strict_refuses(cli, add_user, rds, prefix):
    r = cli("quota", "set", "nosuchuser", "--events", "10/1m")
    assert r.returncode == 0 and rds.hget(f"{prefix}quota:user:nosuchuser", "events") == "10/1m"
    assert "warning: no user 'nosuchuser' in Redis (yet): the quota is stored" in r.stderr
    r = cli("quota", "set", "ghost", "--events", "10/1m", "--strict")
    assert r.returncode == 1 and "no user 'ghost'" in r.stderr and "nothing written" in r.stderr
    assert not rds.exists(f"{prefix}quota:user:ghost")
    add_user("alice", "pw")
    ok = cli("quota", "set", "alice", "--events", "10/1m", "--strict")
    assert ok.returncode == 0 and ok.stderr == ""
    default = cli("quota", "set", "--default", "--events", "100/1h", "--strict")
    assert default.returncode == 0 and default.stderr == ""


def test_quota_show_words_a_block_without_expiry(cli, add_user, rds, prefix):
    add_user("bob", "pw")
    cli("quota", "set", "bob", "--events", "10/1m")
    rds.hset(f"{prefix}block:user:bob", mapping={"reason": "by hand", "by": "redis-cli"})  # no TTL
    shown = cli("quota", "show", "bob")
    assert shown.returncode == 0, shown.stderr
    assert "blocked until lifted (no expiry): by hand" in shown.stdout
