"""Every route of the admin API against a real Redis, with its 4xx: what an integration sees."""

from __future__ import annotations

import json
import time
import urllib.request

from mqtt_guard.admin.api import ROUTES
from tests.admin.helpers import Api


class Recorder:
    """An Api that notes which routes (method, template) were called, to check none is left untested."""

    def __init__(self, api: Api) -> None:
        self.api = api
        self.seen: set[tuple[str, str]] = set()

    def ok(self, method: str, path: str, template: str, body=None, status: int = 200):
        self.seen.add((method, template))
        return self.api.ok(method, path, body, status)

    def call(self, method: str, path: str, template: str, body=None, raw: bytes | None = None):
        self.seen.add((method, template))
        return self.api.call(method, path, body, raw=raw)


def error(reply, status: int, kind: str, detail_part: str = "") -> None:
    assert reply.status == status, reply.body
    assert reply.body["error"] == kind, reply.body
    assert detail_part in reply.body["detail"], reply.body


def test_every_route(admin, rds, prefix):
    api = Recorder(admin.api)
    # users
    created = api.ok(
        "POST", "/api/users", "/api/users", {"username": "alice", "password": "s3cret", "groups": ["ops"]}, 201
    )
    assert created == {
        "username": "alice",
        "password": "pbkdf2-sha512",
        "superuser": False,
        "disabled": False,
        "expires_at": None,
        "expired": False,
        "groups": ["ops"],
        "plan": None,
    }
    api.ok("POST", "/api/users", "/api/users", {"username": "bob", "password": "pw", "superuser": True}, 201)
    error(api.call("POST", "/api/users", "/api/users", {"username": "bob", "password": "x"}), 409, "conflict")
    error(api.call("POST", "/api/users", "/api/users", {"username": "a\nb", "password": "x"}), 422, "invalid")
    error(
        api.call("POST", "/api/users", "/api/users", {"username": "c"}), 422, "invalid_body", "body.password: required"
    )
    error(api.call("POST", "/api/users", "/api/users", {"username": 5, "password": "x"}), 422, "invalid_body", "string")
    error(api.call("POST", "/api/users", "/api/users", raw=b"{not json"), 400, "bad_json")
    listing = api.ok("GET", "/api/users?limit=1&offset=1", "/api/users")
    assert listing["total"] == 2 and [u["username"] for u in listing["items"]] == ["bob"]
    error(api.call("GET", "/api/users?limit=0", "/api/users"), 422, "invalid", "limit")
    assert api.ok("GET", "/api/users/alice", "/api/users/{username}")["groups"] == ["ops"]
    error(api.call("GET", "/api/users/nobody", "/api/users/{username}"), 404, "not_found", "no such user 'nobody'")
    patched = api.ok("PATCH", "/api/users/alice", "/api/users/{username}", {"disabled": True, "expires_at": 4102444800})
    assert patched["disabled"] and patched["expires_at"] == 4102444800
    assert api.ok("PATCH", "/api/users/alice", "/api/users/{username}", {"disabled": False, "expires_at": None}) == {
        **created
    }
    error(api.call("PATCH", "/api/users/alice", "/api/users/{username}", {"admin": True}), 422, "invalid_body")
    error(api.call("PATCH", "/api/users/nobody", "/api/users/{username}", {}), 404, "not_found")
    old_hash = rds.hget(f"{prefix}user:alice", "password")
    api.ok("PUT", "/api/users/alice/password", "/api/users/{username}/password", {"password": "new"})
    assert rds.hget(f"{prefix}user:alice", "password") != old_hash
    error(
        api.call("PUT", "/api/users/nobody/password", "/api/users/{username}/password", {"password": "x"}),
        404,
        "not_found",
    )
    error(
        api.call("PUT", "/api/users/alice/password", "/api/users/{username}/password", {"password": ""}),
        422,
        "invalid_body",
    )
    # groups
    api.ok("PUT", "/api/groups/devs/members/bob", "/api/groups/{group}/members/{username}")
    assert api.ok("GET", "/api/groups", "/api/groups") == {"devs": ["bob"], "ops": ["alice"]}
    api.ok("DELETE", "/api/groups/devs/members/bob", "/api/groups/{group}/members/{username}")
    error(
        api.call("PUT", "/api/groups/devs/members/nobody", "/api/groups/{group}/members/{username}"), 404, "not_found"
    )
    # ACL rules and check
    edit = api.ok(
        "POST", "/api/acl/rules", "/api/acl/rules", {"subject": "user:alice", "filter": "s/#", "actions": "subscribe"}
    )
    assert edit["value"] == "subscribe" and "without receive" in edit["warning"]
    api.ok("POST", "/api/acl/rules", "/api/acl/rules", {"subject": "group:ops", "filter": "s/#", "actions": "receive"})
    api.ok(
        "POST",
        "/api/acl/rules",
        "/api/acl/rules",
        {"subject": "user:alice", "filter": "s/secret", "actions": "receive", "effect": "deny"},
    )
    error(
        api.call(
            "POST", "/api/acl/rules", "/api/acl/rules", {"subject": "user:alice", "filter": "a/#/b", "actions": "read"}
        ),
        422,
        "invalid",
        "invalid topic filter",
    )
    error(
        api.call("POST", "/api/acl/rules", "/api/acl/rules", {"subject": "robot:x", "filter": "a", "actions": "read"}),
        422,
        "invalid",
        "subject kind",
    )
    error(
        api.call(
            "POST", "/api/acl/rules", "/api/acl/rules", {"subject": "user:alice", "filter": "a", "actions": "fly"}
        ),
        422,
        "invalid",
    )
    error(
        api.call(
            "POST",
            "/api/acl/rules",
            "/api/acl/rules",
            {"subject": "user:alice", "filter": "a", "actions": "read", "effect": "maybe"},
        ),
        422,
        "invalid_body",
        "one of",
    )
    rules = api.ok("GET", "/api/acl/rules", "/api/acl/rules")
    assert rules["user:alice"]["rules"] == {"s/#": "subscribe", "s/secret": "deny-receive"}
    assert set(api.ok("GET", "/api/acl/rules?subject=group:ops", "/api/acl/rules")) == {"group:ops"}
    check = api.ok(
        "POST",
        "/api/acl/check",
        "/api/acl/check",
        {"username": "alice", "client_id": "c1", "topic": "s/#", "action": "read"},
    )
    assert check["allowed"] is True and [c["action"] for c in check["checks"]] == ["subscribe", "receive"]
    check = api.ok(
        "POST",
        "/api/acl/check",
        "/api/acl/check",
        {"username": "alice", "client_id": "c1", "topic": "s/secret", "action": "receive"},
    )
    assert check["allowed"] is False and "deny rule 's/secret'" in check["checks"][0]["explanation"]
    anon = api.ok(
        "POST",
        "/api/acl/check",
        "/api/acl/check",
        {"username": None, "client_id": "c", "topic": "s/x", "action": "publish", "default": "allow"},
    )
    assert anon["allowed"] is True and anon["checks"][0]["explanation"] == "default"
    error(
        api.call(
            "POST",
            "/api/acl/check",
            "/api/acl/check",
            {"username": "alice", "client_id": "c", "topic": "s/+", "action": "publish"},
        ),
        422,
        "invalid",
        "invalid topic",
    )
    api.ok("DELETE", "/api/acl/rules?subject=user:alice&filter=s%2Fsecret", "/api/acl/rules")
    error(api.call("DELETE", "/api/acl/rules?subject=user:alice&filter=s%2Fsecret", "/api/acl/rules"), 404, "not_found")
    error(api.call("DELETE", "/api/acl/rules?subject=user:alice", "/api/acl/rules"), 422, "invalid", "required")
    # quotas
    q = api.ok("PATCH", "/api/quotas/default", "/api/quotas/default", {"events": "1000/1d", "rate": "5/s:10"})
    assert q["limits"]["events"]["value"] == "1000/1d"
    assert api.ok("GET", "/api/quotas/default", "/api/quotas/default")["limits"]["rate"]["value"] == "5/s:10"
    q = api.ok("PATCH", "/api/quotas/users/alice", "/api/quotas/users/{username}", {"events": "50/1h"})
    assert q["limits"]["events"] == {"value": "50/1h", "from": f"{prefix}quota:user:alice"}
    assert q["usage"]["events"]["limit"] == 50
    q = api.ok("PATCH", "/api/quotas/users/alice", "/api/quotas/users/{username}", {"events": None})
    assert q["limits"]["events"]["from"] == f"{prefix}quota:default"
    error(
        api.call("PATCH", "/api/quotas/users/alice", "/api/quotas/users/{username}", {"events": "lots"}),
        422,
        "invalid",
        "events",
    )
    error(
        api.call("PATCH", "/api/quotas/users/alice", "/api/quotas/users/{username}", {"speed": "1"}),
        422,
        "invalid_body",
        "unknown field",
    )
    assert api.ok("GET", "/api/quotas/users/alice", "/api/quotas/users/{username}")["user"] == "alice"
    assert api.ok("POST", "/api/quotas/users/alice/reset", "/api/quotas/users/{username}/reset")["username"] == "alice"
    # plans, APIs and metered usage (details: test_plans.py)
    assert api.ok("PUT", "/api/apis/stocks", "/api/apis/{name}", {"filters": ["stocks/#"]}) == {
        "api": "stocks",
        "filters": ["stocks/#"],
    }
    error(api.call("PUT", "/api/apis/stocks", "/api/apis/{name}", {"filters": []}), 422, "invalid", "at least one")
    error(api.call("PUT", "/api/apis/stocks", "/api/apis/{name}", {}), 422, "invalid_body", "body.filters: required")
    assert api.ok("GET", "/api/apis", "/api/apis") == {"stocks": ["stocks/#"]}
    plan = api.ok("PUT", "/api/plans/gold", "/api/plans/{name}", {"events": "100/1m,10000/1d"})
    assert plan == {"plan": "gold", "fields": {"events": "100/1m,10000/1d"}, "problems": []}
    error(api.call("PUT", "/api/plans/gold", "/api/plans/{name}", {"events": "lots"}), 422, "invalid", "events")
    error(api.call("PUT", "/api/plans/gold", "/api/plans/{name}", {}), 422, "invalid", "nothing to set")
    error(api.call("PUT", "/api/plans/gold", "/api/plans/{name}", {"speed": "1"}), 422, "invalid_body", "unknown")
    error(api.call("PUT", "/api/plans/a%20b", "/api/plans/{name}", {"rate": "1/s"}), 422, "invalid", "plan name")
    assert api.ok("GET", "/api/plans", "/api/plans") == {"gold": {"events": "100/1m,10000/1d"}}
    assert api.ok("GET", "/api/plans/gold", "/api/plans/{name}")["plan"] == "gold"
    # a user or a group put on a plan (the CLI's `user set --plan`, `group set --plan`)
    assert api.ok("PUT", "/api/users/alice/plan", "/api/users/{username}/plan", {"plan": "gold"}) == {
        "username": "alice",
        "plan": "gold",
    }
    assert api.ok("GET", "/api/users/alice", "/api/users/{username}")["plan"] == "gold"
    assert [u["plan"] for u in api.ok("GET", "/api/users", "/api/users")["items"]] == ["gold", None]
    assert rds.hget(f"{prefix}quota:user:alice", "plan") == "gold"
    error(
        api.call("PUT", "/api/users/alice/plan", "/api/users/{username}/plan", {"plan": "tin"}),
        404,
        "not_found",
        "plan 'tin' does not exist",
    )
    error(api.call("PUT", "/api/users/alice/plan", "/api/users/{username}/plan", {}), 422, "invalid_body", "plan")
    assert api.ok("PUT", "/api/groups/ops/plan", "/api/groups/{group}/plan", {"plan": "gold"}) == {
        "group": "ops",
        "plan": "gold",
    }
    assert api.ok("GET", "/api/groups/ops", "/api/groups/{group}") == {
        "group": "ops",
        "members": ["alice"],
        "plan": "gold",
    }
    error(api.call("GET", "/api/groups/nobody", "/api/groups/{group}"), 404, "not_found", "no group")
    error(api.call("PUT", "/api/groups/a:b/plan", "/api/groups/{group}/plan", {"plan": "gold"}), 422, "invalid")
    error(api.call("PUT", "/api/groups/ops/plan", "/api/groups/{group}/plan", {"plan": "tin"}), 404, "not_found")
    api.ok("PUT", "/api/users/alice/plan", "/api/users/{username}/plan", {"plan": "none"})
    api.ok("PUT", "/api/groups/ops/plan", "/api/groups/{group}/plan", {"plan": "none"})
    assert api.ok("GET", "/api/users/alice", "/api/users/{username}")["plan"] is None
    assert api.ok("GET", "/api/groups/ops", "/api/groups/{group}")["plan"] is None
    error(api.call("GET", "/api/plans/tin", "/api/plans/{name}"), 404, "not_found", "does not exist")
    assert api.ok("DELETE", "/api/plans/gold", "/api/plans/{name}") == {"deleted": "gold"}
    error(api.call("DELETE", "/api/plans/gold", "/api/plans/{name}"), 404, "not_found", "does not exist")
    assert api.ok("DELETE", "/api/apis/stocks", "/api/apis/{name}") == {"deleted": "stocks"}
    error(api.call("DELETE", "/api/apis/stocks", "/api/apis/{name}"), 404, "not_found", "does not exist")
    usage = api.ok("GET", "/api/usage/alice?month=2026-11", "/api/usage/{username}")
    assert usage == {"user": "alice", "month": "2026-11", "total": {}, "days": {}}
    error(api.call("GET", "/api/usage/alice?month=2026-13", "/api/usage/{username}"), 422, "invalid", "YYYY-MM")
    assert api.ok("GET", "/api/usage?month=2026-11", "/api/usage") == []
    error(api.call("GET", "/api/usage?month=nov", "/api/usage"), 422, "invalid", "YYYY-MM")
    # blocks and kicks of clients that are not connected (the live kick: test_live.py)
    blocked = api.ok(
        "PUT", "/api/blocks/clients/dev-1", "/api/blocks/clients/{client_id}", {"seconds": 600, "reason": "noisy"}
    )
    assert blocked["client_id"] == "dev-1" and blocked["blocked_until"] > time.time() + 590
    api.ok("PUT", "/api/blocks/users/bob", "/api/blocks/users/{username}", {"seconds": 60})
    error(
        api.call("PUT", "/api/blocks/users/bob", "/api/blocks/users/{username}", {"seconds": 0}),
        422,
        "invalid_body",
        "at least 1",
    )
    blocks = api.ok("GET", "/api/blocks", "/api/blocks")
    assert [(b["kind"], b["name"], b["reason"]) for b in blocks] == [
        ("client", "dev-1", "noisy"),
        ("user", "bob", "blocked by an admin"),
    ]
    assert blocks[0]["by"] == "admin-api:ops"
    api.ok("DELETE", "/api/blocks/clients/dev-1", "/api/blocks/clients/{client_id}")
    api.ok("DELETE", "/api/blocks/users/bob", "/api/blocks/users/{username}")
    error(api.call("DELETE", "/api/blocks/users/bob", "/api/blocks/users/{username}"), 404, "not_found")
    error(
        api.call("POST", "/api/clients/ghost/kick", "/api/clients/{client_id}/kick", {}),
        404,
        "not_found",
        "not connected",
    )
    kicked = api.ok("POST", "/api/clients/ghost/kick", "/api/clients/{client_id}/kick", {"block_seconds": 30})
    assert kicked["connected"] is False and kicked["blocked_until"]
    assert api.ok("POST", "/api/users/alice/kick", "/api/users/{username}/kick")["kicks"] == []
    error(
        api.call("POST", "/api/users/alice/kick", "/api/users/{username}/kick", {"block_seconds": -1}),
        422,
        "invalid_body",
    )
    # sessions, stats, brokers, audit (no broker here: empty but well-formed; test_live.py has them full)
    assert api.ok("GET", "/api/sessions?sort=since&order=desc", "/api/sessions")["items"] == []
    error(api.call("GET", "/api/sessions?sort=colour", "/api/sessions"), 422, "invalid", "sort")
    error(api.call("GET", "/api/sessions/ghost", "/api/sessions/{client_id}"), 404, "not_found")
    error(api.call("GET", "/api/clients/ghost/stats", "/api/clients/{client_id}/stats"), 404, "not_found", "no stats")
    error(api.call("GET", "/api/users/alice/stats", "/api/users/{username}/stats"), 404, "not_found")
    assert api.ok("GET", "/api/top?limit=5", "/api/top")["rows"] == []
    assert api.ok("GET", "/api/stats/failures?days=2", "/api/stats/failures")["addresses"] == []
    error(api.call("GET", "/api/stats/failures?days=9", "/api/stats/failures"), 422, "invalid", "days")
    assert api.ok("GET", "/api/stats/totals", "/api/stats/totals") == {}
    brokers = api.ok("GET", "/api/brokers", "/api/brokers")
    assert brokers["brokers"] == [] and brokers["redis"]["reachable"] is True
    entries = api.ok("GET", "/api/audit?count=1000", "/api/audit")
    assert {e["by"] for e in entries if e["action"] != "admin-token.create"} == {"admin-api:ops"}
    actions = [e["action"] for e in entries]
    for action in (
        "user.create",
        "user.update",
        "user.passwd",
        "group.add",
        "group.remove",
        "acl.allow",
        "acl.deny",
        "acl.remove",
        "quota.set",
        "quota.reset",
        "plan.set",
        "plan.delete",
        "api.add",
        "api.remove",
        "block",
        "unblock",
    ):
        assert action in actions, action
    assert "s3cret" not in json.dumps(entries) and "pbkdf2" not in json.dumps(entries)
    # the event stream: one page of sessions per interval
    req = urllib.request.Request(
        admin.api.base + "/api/stream/sessions?interval=0.5", headers={"Authorization": f"Bearer {admin.api.token}"}
    )
    api.seen.add(("GET", "/api/stream/sessions"))
    with urllib.request.urlopen(req, timeout=10) as resp:
        assert resp.headers["Content-Type"].startswith("text/event-stream")
        assert resp.readline() == b"event: sessions\n"
        assert json.loads(resp.readline().decode().removeprefix("data: "))["items"] == []
    error(api.call("GET", "/api/stream/sessions?interval=0", "/api/stream/sessions"), 422, "invalid", "interval")
    # address bans and session drops (the CLI's `ban`, `unban`, `session drop`; with a broker: test_live.py)
    made = api.ok("POST", "/api/bans", "/api/bans", {"network": "192.0.2.0/24", "seconds": 600, "reason": "scan"}, 201)
    assert made == {**made, "kind": "manual", "network": "192.0.2.0/24", "reason": "scan", "by": "admin-api:ops"}
    assert 599 <= made["remaining"] <= 600
    api.ok("POST", "/api/bans", "/api/bans", {"network": "2001:db8::1"}, 201)
    error(api.call("POST", "/api/bans", "/api/bans", {"network": "10.0.0.300"}), 422, "invalid")
    error(api.call("POST", "/api/bans", "/api/bans", {"network": "10.0.0.1", "seconds": 0}), 422, "invalid_body")
    listed = api.ok("GET", "/api/bans", "/api/bans")
    assert [(b["network"], b["until"] is None) for b in listed] == [("192.0.2.0/24", False), ("2001:db8::1/128", True)]
    assert api.ok("DELETE", "/api/bans?network=192.0.2.0/24", "/api/bans") == {"network": "192.0.2.0/24", "removed": 1}
    error(api.call("DELETE", "/api/bans?network=192.0.2.0/24", "/api/bans"), 404, "not_found", "no ban of")
    error(api.call("DELETE", "/api/bans", "/api/bans"), 422, "invalid", "network")
    error(api.call("DELETE", "/api/sessions/dev-1", "/api/sessions/{client_id}"), 404, "not_found", "no broker")
    bans = [e for e in admin.ro.ok("GET", "/api/audit?count=1000") if e["action"] in ("ban", "unban")]
    assert [(e["action"], e["network"], e["by"]) for e in bans] == [
        ("ban", "192.0.2.0/24", "admin-api:ops"),
        ("ban", "2001:db8::1/128", "admin-api:ops"),
        ("unban", "192.0.2.0/24", "admin-api:ops"),
    ]
    # the dashboard's overview and login (the cookie flow: test_session.py)
    overview = api.ok("GET", "/api/overview", "/api/overview")
    assert overview["rate"]["resolution_seconds"] == 10 and len(overview["rate"]["messages_in"]) == 360
    assert set(overview["rate"]["messages_in"]) == {0} and overview["rate"]["brokers"] == {}
    assert api.ok("GET", "/api/session", "/api/session") == {
        "name": "ops",
        "read_only": False,
        "csrf": None,
        "expires": None,
    }
    error(api.call("POST", "/api/session", "/api/session", {"token": "mqga_nope"}), 401, "unauthorized")
    error(api.call("POST", "/api/session", "/api/session", {}), 422, "invalid_body", "body.token: required")
    assert api.ok("DELETE", "/api/session", "/api/session") == {"logged_out": False}
    # the user goes last
    api.ok("DELETE", "/api/users/bob", "/api/users/{username}")
    error(api.call("DELETE", "/api/users/bob", "/api/users/{username}"), 404, "not_found")
    error(admin.api.call("GET", "/api/nowhere"), 404, "not_found")
    error(admin.api.call("DELETE", "/api/groups"), 405, "method_not_allowed")
    assert api.seen == {(r.method, r.path) for r in ROUTES}, {(r.method, r.path) for r in ROUTES} - api.seen


def _audit_len(admin) -> int:
    return len(admin.api.ok("GET", "/api/audit?count=10000"))


def test_numbers_json_lacks_or_out_of_range_are_refused_and_nothing_is_written(admin, rds, prefix):
    """NaN/Infinity are not JSON (400); 1e400 (parsed as infinity) and values past a field's maximum are
    422: no user field, block, ban or audit entry is written (a 1e300 s block used to stay forever, unaudited)."""
    api = admin.api
    for name in ("u1", "u2"):
        api.ok("POST", "/api/users", {"username": name, "password": "pw"}, 201)
    audited = _audit_len(admin)
    raw = [
        ("PATCH", "/api/users/u1", b'{"expires_at": NaN}'),
        ("PATCH", "/api/users/u1", b'{"expires_at": Infinity}'),
        ("PATCH", "/api/users/u1", b'{"expires_at": -Infinity}'),
        ("PUT", "/api/blocks/clients/x", b'{"seconds": Infinity}'),
        ("POST", "/api/bans", b'{"network": "10.9.0.1", "seconds": NaN}'),
        ("POST", "/api/users/u1/kick", b'{"block_seconds": NaN}'),
    ]
    for method, path, body in raw:
        error(api.call(method, path, raw=body), 400, "bad_json", "not a JSON value")
    too_big = [
        ("PATCH", "/api/users/u1", b'{"expires_at": 1e400}', "finite"),
        ("PATCH", "/api/users/u1", b'{"expires_at": 1e300}', "at most"),
        ("POST", "/api/users", b'{"username": "u3", "password": "x", "expires_at": 1e300}', "at most"),
        ("PUT", "/api/blocks/clients/x", b'{"seconds": 1e300}', "at most"),
        ("PUT", "/api/blocks/users/u2", b'{"seconds": 1e300}', "at most"),
        ("PUT", "/api/blocks/users/u2", b'{"seconds": 1e400}', "finite"),
        ("POST", "/api/bans", b'{"network": "10.9.0.1", "seconds": 1e300}', "at most"),
        ("POST", "/api/users/u1/kick", b'{"block_seconds": 1e300}', "at most"),
        ("POST", "/api/clients/c1/kick", b'{"block_seconds": 1e300}', "at most"),
    ]
    for method, path, body, why in too_big:
        error(api.call(method, path, raw=body), 422, "invalid_body", why)
    assert api.ok("GET", "/api/users/u1")["expires_at"] is None
    assert api.call("GET", "/api/users/u3").status == 404
    assert api.ok("GET", "/api/blocks") == []
    assert api.ok("GET", "/api/bans") == []
    assert rds.keys(f"{prefix}block:*") == []
    assert _audit_len(admin) == audited
    # the longest block allowed is taken, and expires
    from mqtt_guard.ops import MAX_SECONDS

    api.ok("PUT", "/api/blocks/users/u2", {"seconds": MAX_SECONDS})
    ttl = rds.pttl(f"{prefix}block:user:u2")
    assert 0 < ttl <= MAX_SECONDS * 1000
    assert _audit_len(admin) == audited + 1


def test_the_cli_and_the_store_refuse_a_block_redis_cannot_expire(admin, cli, rds, prefix):
    """The same bounds protect the CLI (ops) and the Lua script itself (a caller that skips ops)."""
    import asyncio

    from mqtt_guard.store.connection import make_async_client
    from mqtt_guard.store.keys import Keys
    from mqtt_guard.store.quota import MAX_BLOCK_SECONDS, QuotaStore

    result = cli("kick", "--user", "u9", "--block", "4000d")
    assert result.returncode != 0 and "at most" in result.stderr, (result.stdout, result.stderr)
    audited = _audit_len(admin)

    async def direct() -> None:
        client = make_async_client(admin.process.redis_url)
        store = QuotaStore(client, Keys(prefix))
        try:
            now = time.time()
            for until in (now + MAX_BLOCK_SECONDS + 86400, now + 1e300):
                try:
                    await store.set_block(Keys(prefix).block_user("u9"), "r", until, "test", username="u9")
                except ValueError as exc:
                    assert "nothing written" in str(exc) or "finite" in str(exc) or "at most" in str(exc)
                else:
                    raise AssertionError("a block past the maximum was accepted")
            assert rds.keys(f"{prefix}block:*") == [] and _audit_len(admin) == audited
            # a quota kick whose window ends decades away still kicks; its block is cut to the maximum
            rds.hset(Keys(prefix).session("c9"), mapping={"broker": "b9", "conn": "1", "client_id": "c9"})
            block = Keys(prefix).block_user("u9")
            queued, _ = await store.kick("c9", "quota", "test", block_key=block, block_until=now + 1e12)
            assert queued
            assert 0 < rds.pttl(block) <= MAX_BLOCK_SECONDS * 1000
        finally:
            await client.aclose()

    asyncio.run(direct())


def test_an_unexpected_error_is_a_json_500_without_traceback_logged_once(admin, rds, prefix):
    """A broker record written by something else with a bad field: the route fails, the client gets JSON."""
    rds.zadd(f"{prefix}brokers", {"b1": time.time() * 1000 + 60_000})
    rds.hset(f"{prefix}broker:b1", mapping={"started": "not-a-time", "pid": "1"})
    reply = admin.api.call("GET", "/api/brokers")
    error(reply, 500, "internal", "GET /api/brokers")
    assert "Traceback" not in json.dumps(reply.body)
    log = admin.process.log()
    assert log.count("Traceback") == 1 and "GET /api/brokers failed" in log


def test_a_quota_patch_that_names_no_limit_is_refused_like_the_cli(admin, cli):
    audited = _audit_len(admin)
    for path in ("/api/quotas/default", "/api/quotas/users/u1"):
        error(admin.api.call("PATCH", path, {}), 422, "invalid", "nothing to set: give at least one of events")
    assert _audit_len(admin) == audited
    result = cli("quota", "set", "u1")
    assert result.returncode != 0 and "nothing to set: give at least one of --events" in result.stderr
    # a value, or a null that removes one, is a change
    admin.api.ok("PATCH", "/api/quotas/users/u1", {"events": "100/1h"})
    admin.api.ok("PATCH", "/api/quotas/users/u1", {"events": None})
    assert _audit_len(admin) == audited + 2
