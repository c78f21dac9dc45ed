"""Translating mosquitto files and mosquitto-go-auth's Redis data into mqtt-guard's Redis schema.

Pure planning: `plan_mosquitto(...)` and `plan_goauth(...)` return a `Plan` (the users and ACL entries
to write, plus every line or key that cannot be translated, and the semantic caveats of the move);
`apply_plan` compares it with what Redis holds and writes only the differences, so running an import
twice changes nothing the second time. An import never deletes anything in Redis.

mosquitto acl_file -> Redis (docs/redis-schema.md, mqtt_guard/acl/rules.py tokens):

=====================================  ===========================================================
mosquitto                              mqtt-guard
=====================================  ===========================================================
``topic`` lines before any ``user``    ``acl:anonymous``
``user NAME`` + ``topic`` lines        ``acl:user:NAME``
``pattern`` lines                      ``acl:pattern``; those without ``%u`` also ``acl:anonymous``
                                       (mosquitto applies %c patterns to anonymous clients)
``read`` / ``write`` / ``readwrite``   ``read`` (subscribe+receive) / ``publish`` / ``readwrite``
``deny``                               ``deny``
no access word                         ``readwrite``
=====================================  ===========================================================

Not translatable (reported with file and line, never dropped silently): ``%u``/``%c`` inside a level
(``x%u``: mqtt-guard only substitutes whole levels), ``%u``/``%c`` in anonymous ``topic`` lines
(literal in mosquitto, substituted in ``acl:anonymous``), password hashes mqtt-guard cannot verify.

mosquitto-go-auth Redis -> Redis: ``<user>`` (hash string) -> ``user:<user>`` ``password``;
``<user>:su`` = ``true`` -> ``superuser 1``; ``<user>:sacls|racls|wacls|rwacls`` -> ``acl:user:<user>``
with ``subscribe`` / ``receive`` / ``publish`` / ``receive,publish`` (go-auth's read is the delivery
check only and its readwrite does not include subscribe); ``common:*`` -> ``acl:pattern`` (go-auth
substitutes %u/%c only there). go-auth's own ``PBKDF2$...`` hashes cannot be verified by mqtt-guard:
such users are imported without a password (they cannot log in until `mqtt-guard user passwd`).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from ..acl.rules import Perm, format_tokens, parse_tokens
from ..acl.topics import validate_filter
from ..auth import hashes
from ..store import keys as k
from .aclfile import DENY, READ, WRITE, AclFile, rules_of
from .passwd import PasswdFile

_MOSQ_PERMS = {
    READ: (Perm.SUBSCRIBE | Perm.RECEIVE, Perm.NONE),
    WRITE: (Perm.PUBLISH, Perm.NONE),
    READ | WRITE: (Perm.ALL, Perm.NONE),
    DENY: (Perm.NONE, Perm.ALL),
}
_GOAUTH_SETS = {
    "sacls": Perm.SUBSCRIBE,
    "racls": Perm.RECEIVE,
    "wacls": Perm.PUBLISH,
    "rwacls": Perm.RECEIVE | Perm.PUBLISH,
}


@dataclass
class Plan:
    source: str
    users: dict[str, dict[str, str]] = field(default_factory=dict)  # username -> fields to set
    acls: dict[str, dict[str, tuple[Perm, Perm]]] = field(default_factory=dict)  # subject -> filter -> bits
    problems: list[str] = field(default_factory=list)  # not translated (each names its source)
    notes: list[str] = field(default_factory=list)  # semantic differences worth knowing

    def grant(self, subject: str, topic_filter: str, allow: Perm, deny: Perm) -> None:
        entries = self.acls.setdefault(subject, {})
        a, d = entries.get(topic_filter, (Perm.NONE, Perm.NONE))
        entries[topic_filter] = (a | allow, d | deny)

    def values(self) -> dict[str, dict[str, str]]:
        return {s: {f: format_tokens(a, d) for f, (a, d) in sorted(e.items())} for s, e in sorted(self.acls.items())}


def _placeholder_problem(topic_filter: str) -> str | None:
    """None if every %u/%c stands alone in its level (mqtt-guard substitutes whole levels only)."""
    for level in topic_filter.split("/"):
        if ("%u" in level or "%c" in level) and level not in ("%u", "%c"):
            return f"placeholder inside a level ({level!r}); mqtt-guard substitutes whole levels only"
    return None


def plan_mosquitto(passwd: PasswdFile | None, acl: AclFile | None) -> Plan:
    plan = Plan("mosquitto")
    if passwd is not None:
        for problem in passwd.problems:
            plan.problems.append(f"{problem}: not imported")
        seen: dict[str, int] = {}
        for name in passwd.order:
            entry = passwd.get(name)
            if entry is None:
                continue
            plan.users[name] = {k.USER_PASSWORD: entry.encoded}
            seen[name] = entry.line
        if len(passwd.order) != len(passwd.entries):
            missing = [n for n in passwd.order if n not in passwd.entries]
            plan.notes.append(f"users without a usable line, not imported: {', '.join(map(repr, missing))}")
    if acl is not None:
        _plan_acl(plan, acl)
    return plan


def _plan_acl(plan: Plan, acl: AclFile) -> None:
    pattern_denies = 0
    for who, rule in rules_of(acl):
        where = f"{acl.path}:{rule.line}"
        allow, deny = _MOSQ_PERMS[rule.access]
        if who == "%pattern":
            why = _placeholder_problem(rule.topic)
            if why:
                plan.problems.append(f"{where}: pattern {rule.access_name} {rule.topic}: {why}")
                continue
            plan.grant(k.SUBJECT_PATTERN, rule.topic, allow, deny)
            if "%u" not in rule.topic:  # mosquitto applies it to anonymous clients too
                plan.grant(k.SUBJECT_ANONYMOUS, rule.topic, allow, deny)
            if rule.access == DENY:
                pattern_denies += 1
        elif who is None:
            if "%u" in rule.topic or "%c" in rule.topic:
                plan.problems.append(
                    f"{where}: topic {rule.access_name} {rule.topic}: %u/%c are literal in a "
                    "mosquitto topic line but substituted in acl:anonymous"
                )
                continue
            plan.grant(k.SUBJECT_ANONYMOUS, rule.topic, allow, deny)
        else:
            plan.grant(k.user_subject(who), rule.topic, allow, deny)
    if pattern_denies:
        plan.notes.append(
            f"{pattern_denies} pattern deny rule(s): in mosquitto a user's own grant beats a pattern "
            "deny; in mqtt-guard a deny in any rule set wins"
        )
    if acl.users or acl.patterns:
        plan.notes.append(
            "mosquitto never checks SUBSCRIBE against acl_file (read is checked per message); "
            "mqtt-guard grants a SUBSCRIBE only when a read rule covers the whole filter, so "
            "subscriptions wider than the read rules get SUBACK 0x80 after the move"
        )
    if any("/" in u for u in acl.users if u) and any("%u" in p.topic for p in acl.patterns):
        plan.notes.append(
            "usernames containing '/' expand %u into several levels in mosquitto; mqtt-guard skips %u rules for them"
        )


def plan_goauth(data: dict[str, Any], source: str) -> Plan:
    """`data`: {"users": {name: hash or None}, "su": {name}, "sets": {(owner, kind): [filters]}} where owner
    is a username or "common" (as read from go-auth's Redis by the importer)."""
    plan = Plan(f"go-auth ({source})")
    users: dict[str, str | None] = data["users"]
    for name, encoded in sorted(users.items()):
        fields: dict[str, str] = {}
        if encoded:
            try:
                hashes.identify(encoded)
                fields[k.USER_PASSWORD] = encoded
            except hashes.HashFormatError:
                scheme = encoded.split("$", 1)[0] if "$" in encoded else "unknown"
                plan.problems.append(
                    f"{source}: user {name!r}: password hash format {scheme!r} cannot be verified "
                    "by mqtt-guard; imported without a password (set one with `mqtt-guard user "
                    f"passwd {name}`)"
                )
        else:
            plan.problems.append(f"{source}: user {name!r} has no password hash; imported without a password")
        fields[k.USER_SUPERUSER] = "1" if name in data["su"] else "0"
        plan.users[name] = fields
    for (owner, kind), filters in sorted(data["sets"].items()):
        perm = _GOAUTH_SETS[kind]
        subject = k.SUBJECT_PATTERN if owner == "common" else k.user_subject(owner)
        for f in sorted(filters):
            where = f"{source}: {owner}:{kind} {f!r}"
            bad = validate_filter(f)
            if bad:
                plan.problems.append(f"{where}: invalid topic filter ({bad})")
                continue
            if owner == "common":
                why = _placeholder_problem(f)
                if why:
                    plan.problems.append(f"{where}: {why}")
                    continue
            elif "%u" in f or "%c" in f:
                plan.notes.append(f"{where}: %u/%c in a per-user set are literal in go-auth and stay literal")
            plan.grant(subject, f, perm, Perm.NONE)
        if owner != "common" and owner not in users:
            plan.notes.append(f"{source}: ACL sets for {owner!r}, who has no password key: rules imported, no user")
    if data["su"] - set(users):
        plan.notes.append(f"{source}: superuser flags for unknown users ignored: {sorted(data['su'] - set(users))}")
    plan.notes.append(
        "go-auth has no deny rules and grants on the first match; mqtt-guard's default is deny, as go-auth's"
    )
    return plan


@dataclass
class Change:
    key: str
    field: str
    old: str | None
    new: str


async def diff_plan(plan: Plan, redis: Any, keys: k.Keys) -> list[Change]:
    """What applying `plan` would write (only differences; nothing is ever removed)."""
    changes: list[Change] = []
    for name, fields in sorted(plan.users.items()):
        key = keys.user(name)
        current = await redis.hgetall(key)
        wanted = dict(fields)
        if not current:  # a new user: the flags a user created by `mqtt-guard user add` has
            wanted.setdefault(k.USER_SUPERUSER, "0")
            wanted.setdefault(k.USER_DISABLED, "0")
        for f, v in sorted(wanted.items()):
            if current.get(f) != v:
                changes.append(Change(key, f, current.get(f), v))
    for subject, entries in plan.values().items():
        key = keys.acl(subject)
        current = await redis.hgetall(key)
        for f, v in entries.items():
            old = current.get(f)
            if old is not None:
                try:
                    a, d = parse_tokens(old)
                    na, nd = parse_tokens(v)
                    merged = format_tokens(a | na, d | nd)
                except ValueError:
                    merged = v
                if merged == old:
                    continue
                v = merged  # keep what Redis already grants or denies, add the imported tokens
            changes.append(Change(key, f, old, v))
    return changes


async def apply_changes(changes: list[Change], redis: Any) -> None:
    async with redis.pipeline(transaction=True) as pipe:
        for c in changes:
            pipe.hset(c.key, c.field, c.new)
        await pipe.execute()
