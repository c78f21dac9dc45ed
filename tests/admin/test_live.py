"""The admin API against a real broker with real paho clients: kick, ACL edit, sessions, stats, brokers."""

from __future__ import annotations

import urllib.request

from tests.helpers.mqtt import connect
from tests.helpers.wait import until


def test_kick_through_the_api_disconnects_a_connected_client(admin, add_user, start_broker):
    add_user("dev", "pw")
    broker = start_broker()
    client = connect(broker.port, "dev", "pw", client_id="sensor-7")
    assert client.rc == 0
    try:
        page = until(lambda: admin.ro.ok("GET", "/api/sessions?username=dev")["items"], 10)
        assert page, "the session was not registered"
        session = page[0]
        assert session["client_id"] == "sensor-7" and session["username"] == "dev" and session["since"] > 0
        assert admin.ro.ok("GET", "/api/sessions/sensor-7")["broker"] == session["broker"]
        brokers = admin.ro.ok("GET", "/api/brokers")["brokers"]
        assert [(b["id"], b["alive"]) for b in brokers] == [(session["broker"], True)]
        assert brokers[0]["epoch"] and brokers[0]["sessions"] == 1 and brokers[0]["registered"]
        assert brokers[0]["stats_id"] == f"{broker.port}" or brokers[0]["stats_id"].endswith(f":{broker.port}")
        health = brokers[0]["health"]  # from the broker's own heartbeat (#20 item 4)
        assert health["loop_lag_ms"] >= 0 and health["loop_lag_max_ms"] >= health["loop_lag_ms"]
        assert health["redis_rtt_ms"] > 0 and health["flush_failures"] == 0
        result = admin.api.ok("POST", "/api/clients/sensor-7/kick", {"reason": "firmware loop", "block_seconds": 60})
        assert result["kicks"] == [{"client_id": "sensor-7", "ok": True, "detail": session["broker"]}]
        assert client.disconnected.wait(10), "the kick did not disconnect the client"
        again = connect(broker.port, "dev", "pw", client_id="sensor-7")
        assert again.rc == 5  # blocked for 60 s
        entry = [e for e in admin.ro.ok("GET", "/api/audit") if e["action"] == "kick"][-1]
        assert entry["by"] == "admin-api:ops" and entry["reason"] == "firmware loop"
        assert entry["client_id"] == "sensor-7" and int(entry["blocked_until"]) > 0
    finally:
        client.close()


def test_acl_edit_through_the_api_applies_to_a_connected_client(admin, add_user, start_broker):
    add_user("alice", "pw")
    add_user("root", "pw", "--superuser")
    admin.api.ok("POST", "/api/acl/rules", {"subject": "user:alice", "filter": "t/#", "actions": "read"})
    broker = start_broker()
    sub = connect(broker.port, "alice", "pw")
    pub = connect(broker.port, "root", "pw")
    try:
        assert sub.subscribe("t/#") == [0]
        pub.publish("t/x", b"before")
        assert sub.receive().payload == b"before"
        admin.api.ok(
            "POST", "/api/acl/rules", {"subject": "user:alice", "filter": "t/#", "actions": "receive", "effect": "deny"}
        )

        def withheld() -> bool:
            pub.publish("t/x", b"after")
            return not sub.received(wait=0.3)

        assert until(withheld, 10), "alice still receives after the deny"
        entry = [e for e in admin.ro.ok("GET", "/api/audit") if e["action"] == "acl.deny"][-1]
        assert entry == {
            **entry,
            "by": "admin-api:ops",
            "subject": "user:alice",
            "filter": "t/#",
            "value": "subscribe,deny-receive",
        }

        # stats of the connected client and of the user come from what the broker flushed
        # (waited for: the broker flushes once a second, and a loaded machine may split the two publishes)
        def flushed() -> dict | None:
            resp = admin.ro.call("GET", "/api/users/root/stats?day=true")
            if resp.status != 200:
                return None
            body = resp.body
            return body if body["counters"]["messages_in"] >= 2 and sum(body["rate"]["messages_in"]) >= 2 else None

        data = until(flushed, 15)
        assert data, "the broker's stats flush did not show both publishes"
        assert data["kind"] == "user"
        assert data["rate"]["resolution_seconds"] == 10 and sum(data["rate"]["messages_in"]) >= 2
        assert "rate_day" in data
        top = admin.ro.ok("GET", "/api/top?users=true")
        assert "root" in [r["id"] for r in top["rows"]]
    finally:
        sub.close()
        pub.close()


def test_ban_with_kick_and_session_drop_through_the_api(admin, add_user, start_broker):
    add_user("dev", "pw")
    broker = start_broker()
    first = connect(broker.port, "dev", "pw", client_id="dev-1", clean_session=False)
    assert first.rc == 0
    try:
        until(lambda: admin.ro.call("GET", "/api/sessions/dev-1").status == 200, 10)
        dropped = admin.api.ok("DELETE", "/api/sessions/dev-1?reason=replaced")
        assert dropped["brokers"] == 1 and dropped["connected_on"]
        assert first.disconnected.wait(10), "the session drop did not disconnect the client"
        entry = [e for e in admin.ro.ok("GET", "/api/audit") if e["action"] == "session_drop"][-1]
        assert (entry["client_id"], entry["reason"], entry["by"]) == ("dev-1", "replaced", "admin-api:ops")
        second = connect(broker.port, "dev", "pw", client_id="dev-2")
        assert second.rc == 0
        admin.api.ok("POST", "/api/bans", {"network": "127.0.0.1", "kick": True, "seconds": 60}, 201)
        assert second.disconnected.wait(10), "the ban with kick did not disconnect the client"

        def rc() -> int:
            c = connect(broker.port, "dev", "pw")
            c.close()
            return c.rc

        assert until(lambda: rc() == 5, 10)  # refused while banned
        admin.api.ok("DELETE", "/api/bans?network=127.0.0.1")
        assert until(lambda: rc() == 0, 10)
    finally:
        first.close()


def test_sigterm_ends_the_server_promptly_with_an_event_stream_open(admin):
    req = urllib.request.Request(
        admin.api.base + "/api/stream/sessions", headers={"Authorization": f"Bearer {admin.api.token}"}
    )
    with urllib.request.urlopen(req, timeout=10) as resp:
        assert resp.readline() == b"event: sessions\n"
        # 0: it ended on its own (stop() kills a server that has not ended within 15 s: then the code is -9)
        assert admin.process.stop() == 0


def test_sessions_sort_by_rate_on_the_server_with_paging(admin, add_user, start_broker, tmp_path):
    """`sort=rate_in|rate_out|rate` orders the whole fleet by what each client pushed over the last 10 s
    (the analytics), paged on the server like every other sort key."""
    add_user("dev", "pw", "--superuser")
    config = tmp_path / "fast.yaml"
    config.write_text("metrics:\n  flush_interval: 0.2s\n")
    broker = start_broker("-c", str(config))
    clients = {cid: connect(broker.port, "dev", "pw", client_id=cid) for cid in ("busy", "slow", "idle")}
    try:
        for cid, n in (("busy", 60), ("slow", 6)):
            for i in range(n):
                clients[cid].publish(f"nobody/listens/{i}", b"x")

        def order(sort: str, direction: str, extra: str = "") -> list[str]:
            page = admin.ro.ok("GET", f"/api/sessions?sort={sort}&order={direction}{extra}")
            return [r["client_id"] for r in page["items"]]

        assert until(lambda: order("rate_in", "desc") == ["busy", "slow", "idle"], 15), order("rate_in", "desc")
        assert order("rate_in", "asc") == ["idle", "slow", "busy"]
        assert order("rate", "desc") == ["busy", "slow", "idle"]
        assert order("rate_in", "desc", "&limit=1&offset=1") == ["slow"]
        page = admin.ro.ok("GET", "/api/sessions?sort=rate_in&order=desc&limit=1")
        assert page["total"] == 3 and page["sort"] == "rate_in" and page["items"][0]["rate_in"] > 0
        assert admin.ro.call("GET", "/api/sessions?sort=speed").status == 422
    finally:
        for c in clients.values():
            c.close()


def test_redis_lost_during_an_event_stream_ends_it_with_an_error_event(prefix):
    """The stream's 200 is sent: a Redis failure afterwards is told in the stream (event: error) and the
    stream ends, instead of a second response the client never gets."""
    import json

    from tests.admin.helpers import AdminProcess, create_token
    from tests.helpers.servers import RedisServer

    private = RedisServer().start()
    process = None
    try:
        token, _ = create_token(private.url, prefix, "ops")
        process = AdminProcess(private.url, prefix).start()
        req = urllib.request.Request(
            f"http://127.0.0.1:{process.port}/api/stream/sessions?interval=0.5",
            headers={"Authorization": f"Bearer {token}"},
        )
        with urllib.request.urlopen(req, timeout=60) as resp:
            assert resp.readline() == b"event: sessions\n"
            private.stop()
            events = resp.read().decode().split("\n\n")  # returns once the server ends the stream
        last = [e for e in events if e.strip()][-1].splitlines()
        assert last[0] == "event: error", events
        assert json.loads(last[1].removeprefix("data: "))["error"] == "redis_unavailable"
        assert "Traceback" not in process.log()
    finally:
        if process is not None:
            assert process.stop() == 0
        private.cleanup()
