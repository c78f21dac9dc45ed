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


def test_user_set_plan_alone_takes_a_name_without_user_record_and_warns(cli, add_user, rds, prefix):
    """Review of issue 19: a token's identity has no user record, and the admin API's
    PUT /api/users/{u}/plan puts it on a plan; `user set NAME --plan P` now does too, with a warning
    (refused with --strict), as `quota set` does. Flags of the user record still need the user."""
    assert cli("plan", "set", "gold", "--events", "1000/1d").returncode == 0
    r = cli("user", "set", "app-token-7", "--plan", "gold")
    assert r.returncode == 0, r.stderr
    assert "warning: no user 'app-token-7' in Redis (yet): the plan is stored" in r.stderr
    assert rds.hget(f"{prefix}quota:user:app-token-7", "plan") == "gold"
    assert not rds.exists(f"{prefix}user:app-token-7")  # no user record made up
    r = cli("user", "set", "ghost", "--plan", "gold", "--strict")
    assert r.returncode == 1 and "no user 'ghost'" in r.stderr and not rds.exists(f"{prefix}quota:user:ghost")
    r = cli("user", "set", "ghost", "--plan", "gold", "--superuser")
    assert r.returncode == 1 and "ghost" in r.stderr and not rds.exists(f"{prefix}quota:user:ghost")
    off = cli("user", "set", "app-token-7", "--plan", "none")
    assert off.returncode == 0 and off.stderr == "" and not rds.hexists(f"{prefix}quota:user:app-token-7", "plan")
    add_user("alice", "pw")
    ok = cli("user", "set", "alice", "--plan", "gold", "--strict")
    assert ok.returncode == 0 and ok.stderr == ""


def test_an_unknown_api_name_is_stored_with_a_warning_and_strict_refuses(cli, add_user, rds, prefix):
    """Review of issue 19: `plan set P --api NOSUCH` and `quota set U --api NOSUCH` stored limits that
    count nothing, silently; now a warning (the API may be defined later), and --strict refuses."""
    add_user("alice", "pw")
    r = cli("plan", "set", "gold", "--api", "stoks", "--events", "10/1m")
    assert r.returncode == 0 and "warning: no API 'stoks' (yet)" in r.stderr
    assert rds.hget(f"{prefix}quota:plan:gold", "api:stoks:events") == "10/1m"
    r = cli("quota", "set", "alice", "--api", "stoks", "--events", "10/1m")
    assert r.returncode == 0 and "warning: no API 'stoks' (yet)" in r.stderr
    for argv in (("plan", "set", "silver"), ("quota", "set", "alice")):
        r = cli(*argv, "--api", "nosuch", "--events", "5/1m", "--strict")
        assert r.returncode == 1 and "no API 'nosuch'" in r.stderr and "nothing written" in r.stderr
    assert not rds.exists(f"{prefix}quota:plan:silver")
    assert not rds.hexists(f"{prefix}quota:user:alice", "api:nosuch:events")
    assert cli("api", "add", "stocks", "stocks/#").returncode == 0
    for argv in (("plan", "set", "gold"), ("quota", "set", "alice")):
        ok = cli(*argv, "--api", "stocks", "--events", "5/1m", "--strict")
        assert ok.returncode == 0 and ok.stderr == "", ok.stderr
