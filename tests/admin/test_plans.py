"""Plans, APIs and metered usage through the admin API (the CLI's `plan`, `api`, `usage`): the same
operations (mqtt_guard/ops/plans.py), so what the API writes the CLI reads, and the other way round."""

from __future__ import annotations

import json


def test_plan_set_is_a_merge_and_takes_per_api_limits(admin, cli):
    admin.api.ok("PUT", "/api/apis/stocks", {"filters": ["stocks/#", "quotes/+/live"]})
    admin.api.ok("PUT", "/api/plans/gold", {"events": "100/1m", "rate": "5/s"})
    admin.api.ok("PUT", "/api/plans/gold", {"bytes": "1GB/1mo", "api": "stocks"})
    plan = admin.api.ok("PUT", "/api/plans/gold", {"events": "1000/1d", "api": "stocks"})
    assert plan["fields"] == {
        "events": "100/1m",
        "rate": "5/s",
        "api:stocks:bytes": "1GB/1mo",
        "api:stocks:events": "1000/1d",
    }
    reply = admin.api.call("PUT", "/api/plans/gold", {"rate": "1/s", "api": "stocks"})
    assert reply.status == 422 and "only --events and --bytes" in reply.body["detail"], reply.body
    shown = cli("plan", "show", "gold", "--json")
    assert json.loads(shown.stdout)["fields"] == plan["fields"]
    assert json.loads(cli("api", "list", "--json").stdout) == {"stocks": ["stocks/#", "quotes/+/live"]}


def test_what_the_cli_writes_the_api_reads(admin, cli):
    assert cli("plan", "set", "bronze", "--events", "10000/1d").returncode == 0
    assert cli("api", "add", "news", "news/#").returncode == 0
    assert admin.ro.ok("GET", "/api/plans") == {"bronze": {"events": "10000/1d"}}
    assert admin.ro.ok("GET", "/api/apis") == {"news": ["news/#"]}


def test_usage_and_export_are_the_cli_json(admin, cli, rds, prefix):
    rds.hset(f"{prefix}usage:2026-11:alice", mapping={"03::ei": 5, "03::bi": 50, "03:news:ei": 2, "04::eo": 7})
    rds.hset(f"{prefix}usage:2026-11:bob", mapping={"30::ei": 1})
    usage = admin.ro.ok("GET", "/api/usage/alice?month=2026-11")
    assert usage["total"][""] == {"events_in": 5, "bytes_in": 50, "events_out": 7, "bytes_out": 0}
    assert usage["days"]["03"]["news"] == {"events_in": 2, "bytes_in": 0, "events_out": 0, "bytes_out": 0}
    assert usage == json.loads(cli("usage", "alice", "--month", "2026-11", "--json").stdout)
    rows = admin.ro.ok("GET", "/api/usage?month=2026-11")
    assert rows == json.loads(cli("usage", "export", "--month", "2026-11", "--format", "json").stdout)
    assert sorted((r["user"], r["day"], r["api"], r["events_in"]) for r in rows) == [
        ("alice", "2026-11-03", "", 5),
        ("alice", "2026-11-03", "news", 2),
        ("alice", "2026-11-04", "", 0),
        ("bob", "2026-11-30", "", 1),
    ]
    assert admin.ro.ok("GET", "/api/usage/carol")["total"] == {}  # the current month, nothing metered


def test_read_only_token_changes_nothing(admin):
    admin.api.ok("PUT", "/api/plans/gold", {"events": "100/1m"})
    admin.api.ok("PUT", "/api/apis/stocks", {"filters": ["stocks/#"]})
    for method, path, body in (
        ("PUT", "/api/plans/gold", {"events": "1/1m"}),
        ("DELETE", "/api/plans/gold", None),
        ("PUT", "/api/apis/stocks", {"filters": ["x/#"]}),
        ("DELETE", "/api/apis/stocks", None),
    ):
        reply = admin.ro.call(method, path, body)
        assert reply.status == 403 and reply.body["error"] == "forbidden", (method, path, reply.body)
    assert admin.ro.ok("GET", "/api/plans") == {"gold": {"events": "100/1m"}}
    assert admin.ro.ok("GET", "/api/apis") == {"stocks": ["stocks/#"]}


def test_writes_are_audited_with_the_token_name(admin):
    admin.api.ok("PUT", "/api/apis/stocks", {"filters": ["stocks/#"]})
    admin.api.ok("PUT", "/api/plans/gold", {"events": "100/1m"})
    admin.api.ok("DELETE", "/api/plans/gold")
    admin.api.ok("DELETE", "/api/apis/stocks")
    entries = [e for e in admin.ro.ok("GET", "/api/audit?count=100") if e["action"].startswith(("plan.", "api."))]
    assert sorted((e["action"], e.get("plan") or e.get("api"), e["by"]) for e in entries) == [
        ("api.add", "stocks", "admin-api:ops"),
        ("api.remove", "stocks", "admin-api:ops"),
        ("plan.delete", "gold", "admin-api:ops"),
        ("plan.set", "gold", "admin-api:ops"),
    ]
    assert [e["changes"] for e in entries if e["action"] == "plan.set"] == ["events=100/1m"]


def test_users_and_groups_are_put_on_plans_as_the_cli_does(admin, cli, add_user):
    """`PUT /api/users/{u}/plan` and `PUT /api/groups/{g}/plan` are `user set --plan` and `group set --plan`
    (one operation, ops/plans.py): each reads what the other wrote; read-only tokens are refused; audited."""
    add_user("app-17", "pw")
    admin.api.ok("PUT", "/api/plans/bronze", {"events": "100/1m"})
    assert cli("plan", "set", "gold", "--events", "none").returncode == 0
    admin.api.ok("PUT", "/api/users/app-17/plan", {"plan": "bronze"})
    shown = json.loads(cli("quota", "show", "app-17", "--json").stdout)
    assert "quota:plan:bronze" in json.dumps(shown), shown
    assert cli("user", "set", "app-17", "--plan", "gold").returncode == 0
    assert admin.ro.ok("GET", "/api/users/app-17")["plan"] == "gold"
    admin.api.ok("PUT", "/api/groups/partners/plan", {"plan": "gold"})
    assert admin.ro.ok("GET", "/api/groups/partners") == {"group": "partners", "members": [], "plan": "gold"}
    assert cli("group", "set", "partners", "--plan", "none").returncode == 0
    assert admin.ro.call("GET", "/api/groups/partners").status == 404  # no member, rule or plan left
    for path in ("/api/users/app-17/plan", "/api/groups/partners/plan"):
        reply = admin.ro.call("PUT", path, {"plan": "bronze"})
        assert reply.status == 403 and reply.body["error"] == "forbidden", reply.body
    entries = [e for e in admin.ro.ok("GET", "/api/audit?count=100") if e["action"] in ("user.plan", "group.plan")]
    assert [(e["action"], e.get("username") or e.get("group"), e["plan"], e["by"]) for e in entries] == [
        ("user.plan", "app-17", "bronze", "admin-api:ops"),
        ("group.plan", "partners", "gold", "admin-api:ops"),
    ]
