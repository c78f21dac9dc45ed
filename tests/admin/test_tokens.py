"""`mqtt-guard admin token ...`: shown once as the last word, stored hashed, listed, revoked."""

from __future__ import annotations

import hashlib
import json

from tests.admin.helpers import create_token


def _everything(rds, prefix: str) -> str:
    """Every value under the test's prefix, as text (to look for a secret in it)."""
    out = []
    for key in rds.scan_iter(match=f"{prefix}*"):
        kind = rds.type(key)
        out.append(key)
        if kind == "string":
            out.append(rds.get(key))
        elif kind == "hash":
            out += [f"{f}={v}" for f, v in rds.hgetall(key).items()]
        elif kind == "set":
            out += list(rds.smembers(key))
        elif kind == "list":
            out += rds.lrange(key, 0, -1)
        elif kind == "zset":
            out += rds.zrange(key, 0, -1)
        elif kind == "stream":
            out += [json.dumps(fields) for _id, fields in rds.xrange(key)]
    return "\n".join(out)


def test_token_is_the_last_word_shown_once_and_stored_hashed(redis_server, prefix, rds, cli):
    token, output = create_token(redis_server.url, prefix, "billing")
    assert token.startswith("mqga_") and len(token) > 40
    assert "shown only this once" in output
    stored = _everything(rds, prefix)
    assert token not in stored and token[5:] not in stored
    digest = hashlib.sha256(token.encode()).hexdigest()
    assert rds.hget(f"{prefix}admin:tokens", "billing") == digest
    assert rds.hgetall(f"{prefix}admin:token:{digest}")["read_only"] == "0"
    listing = cli("admin", "token", "list")
    assert listing.returncode == 0 and "billing  read-write" in listing.stdout and token not in listing.stdout
    again = cli("admin", "token", "create", "billing")
    assert again.returncode == 1 and "exists already" in again.stderr


def test_read_only_token_list_json_and_revoke(redis_server, prefix, rds, cli):
    create_token(redis_server.url, prefix, "grafana", "--read-only")
    rows = json.loads(cli("admin", "token", "list", "--json").stdout)
    assert [(r["name"], r["read_only"]) for r in rows] == [("grafana", True)]
    assert cli("admin", "token", "revoke", "grafana").returncode == 0
    assert rds.hgetall(f"{prefix}admin:tokens") == {}
    assert not list(rds.scan_iter(match=f"{prefix}admin:token:*"))
    gone = cli("admin", "token", "revoke", "grafana")
    assert gone.returncode == 1 and "no admin token named 'grafana'" in gone.stderr
    actions = [f["action"] for _id, f in rds.xrange(f"{prefix}audit")]
    assert actions == ["admin-token.create", "admin-token.revoke"]
