"""ACL rules: edit, remove, list, and explain a decision (`acl check`)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import redis.asyncio as aioredis

from ..acl.live import subject_keys_for
from ..acl.policy import AclPolicy, Decision, Subject
from ..acl.rules import Perm, Rule, format_tokens, parse_rules, parse_tokens
from ..acl.topics import validate_filter, validate_topic
from ..store import keys as k
from ..store.acl import AclStore
from ..store.users import UserStore
from . import Invalid, NotFound

ACTIONS = {"publish": Perm.PUBLISH, "subscribe": Perm.SUBSCRIBE, "receive": Perm.RECEIVE}
# `acl check` also takes the two compound tokens `acl allow` takes (rules.TOKENS): read asks both
# subscribe and receive, write is publish.
CHECK_ACTIONS = {**ACTIONS, "read": Perm.SUBSCRIBE | Perm.RECEIVE, "write": Perm.PUBLISH}


def subject_key(kind: str, name: str | None = None) -> str:
    """The subject key of a rule hash: kind user/group (with a name), pattern or anonymous."""
    if kind in ("user", "group"):
        if not name:
            raise Invalid(f"a {kind} subject needs a name")
        return k.user_subject(name) if kind == "user" else k.group_subject(name)
    if kind in (k.SUBJECT_PATTERN, k.SUBJECT_ANONYMOUS):
        return kind
    raise Invalid(f"unknown subject kind {kind!r}: user, group, pattern or anonymous")


def parse_actions(text: str) -> Perm:
    """The permissions named by the action words; deny tokens are not accepted here (use deny)."""
    try:
        allow, deny = parse_tokens(text)
    except ValueError as exc:
        raise Invalid(str(exc)) from None
    if deny:
        raise Invalid("give plain actions (publish, subscribe, receive, read, write, all); use 'acl deny' to deny")
    if not allow:
        raise Invalid("no action given")
    return allow


def check_filter(topic_filter: str) -> None:
    bad = validate_filter(topic_filter)
    if bad:
        raise Invalid(f"invalid topic filter {topic_filter!r}: {bad}")


@dataclass
class Edit:
    """What `edit_rule` stored: the rule's new value, and what the caller should tell the admin."""

    value: str
    replaced: str | None = None  # a malformed value that was overwritten
    warning: str | None = None  # subscribe_without_receive


async def edit_rule(
    redis: aioredis.Redis, keys: k.Keys, subject: str, topic_filter: str, perms: Perm, grant: bool
) -> Edit:
    """Grant (or deny) `perms` on a filter, keeping the rule's other permissions."""
    check_filter(topic_filter)
    store = AclStore(redis, keys)
    current = await store.get_rule(subject, topic_filter)
    allow, deny = Perm.NONE, Perm.NONE
    replaced = None
    if current:
        try:
            allow, deny = parse_tokens(current)
        except ValueError:
            replaced = current
    if grant:
        allow, deny = allow | perms, deny & ~perms
    else:
        allow, deny = allow & ~perms, deny | perms
    value = format_tokens(allow, deny)
    await store.set_rule(subject, topic_filter, value)
    return Edit(value, replaced, subscribe_without_receive(topic_filter, allow, deny))


def subscribe_without_receive(topic_filter: str, allow: Perm, deny: Perm) -> str | None:
    """Why a rule that lets a client subscribe delivers it nothing, or None when it can deliver.

    SUBACK grants the subscription on SUBSCRIBE alone, but every delivery is checked for RECEIVE: a
    rule granting `subscribe` without `receive` looks like it works and silently withholds every
    message (only the `deliveries_withheld` counter shows it)."""
    if not allow & Perm.SUBSCRIBE or deny & Perm.SUBSCRIBE:
        return None
    if deny & Perm.RECEIVE:
        return (
            f"{topic_filter!r} grants subscribe but denies receive: the subscription is accepted and delivers nothing"
        )
    if not allow & Perm.RECEIVE:
        return (
            f"{topic_filter!r} grants subscribe without receive: the subscription is accepted but every "
            "message is withheld unless another rule grants receive; grant 'read' (= subscribe + receive)"
        )
    return None


async def remove_rule(redis: aioredis.Redis, keys: k.Keys, subject: str, topic_filter: str) -> None:
    if not await AclStore(redis, keys).remove_rule(subject, topic_filter):
        raise NotFound(f"no rule for {topic_filter!r} in {keys.acl(subject)}")


async def list_rules(redis: aioredis.Redis, keys: k.Keys, only: str | None = None) -> dict[str, Any]:
    """Subject -> its rules (filter -> value) and the malformed entries skipped (`acl list --json`)."""
    store = AclStore(redis, keys)
    subjects = [only] if only else await store.subjects()
    raw = await store.load(subjects)
    out: dict[str, Any] = {}
    for subject in subjects:
        rules, problems = parse_rules(subject, raw.get(subject, {}))
        out[subject] = {
            "rules": {r.filter: format_tokens(r.allow, r.deny) for r in rules},
            "problems": [{"filter": p.filter, "value": p.value, "reason": p.reason} for p in problems],
        }
    return out


def sample_topic(topic_filter: str) -> str:
    """A topic the filter matches (each wildcard level becomes `x`), to ask receive questions about
    a filter: `cmd/+/#` -> `cmd/x/x`."""
    return "/".join("x" if level in ("+", "#") else level for level in topic_filter.split("/"))


def explain(decision: Decision, keys: k.Keys) -> str:
    """`grant rule 's/#' = readwrite in mqg:acl:user:alice`, or the reason alone (default, superuser)."""
    rule: Rule | None = decision.rule
    if rule is None:
        return decision.reason
    return f"{decision.reason} {rule.filter!r} = {format_tokens(rule.allow, rule.deny)} in {keys.acl(rule.subject)}"


def invalid_topic(topic: str, action: str) -> str | None:
    """Why `topic` cannot be asked about for `action` (a filter for subscribe/read), or None."""
    as_filter = bool(CHECK_ACTIONS[action] & Perm.SUBSCRIBE)
    bad = validate_filter(topic) if as_filter else validate_topic(topic)
    return f"invalid {'filter' if as_filter else 'topic'} {topic!r}: {bad}" if bad else None


@dataclass
class Check:
    """One decision of `check`: the permission asked, on which topic, and its explanation."""

    action: str
    topic: str
    allowed: bool
    explanation: str


@dataclass
class CheckResult:
    allowed: bool
    user_known: bool
    checks: list[Check]  # one, or for read: subscribe then receive
    # subscribe granted but receive on a matching topic denied: that receive decision
    receive_note: Check | None = None
    problems: list[dict[str, str]] = field(default_factory=list)


async def check(
    redis: aioredis.Redis,
    keys: k.Keys,
    username: str | None,
    client_id: str,
    topic: str,
    action: str,
    *,
    default_allow: bool = False,
) -> CheckResult:
    """Decide `action` on `topic` as a broker with `acl.default` would, from the rules in Redis now."""
    if action not in CHECK_ACTIONS:
        raise Invalid(f"unknown action {action!r}: one of {', '.join(sorted(CHECK_ACTIONS))}")
    bad = invalid_topic(topic, action)
    if bad:
        raise Invalid(bad)
    perm = CHECK_ACTIONS[action]
    user = None if username is None else await UserStore(redis, keys).get(username)
    subject = Subject(username, client_id, user.groups if user else frozenset(), bool(user and user.superuser))
    policy = AclPolicy(default_allow=default_allow)
    raw = await AclStore(redis, keys).load(subject_keys_for(subject))
    problems = []
    for key, mapping in raw.items():
        rules, found = parse_rules(key, mapping)
        policy.set_rules(key, rules)
        problems += [{"filter": p.filter, "value": p.value, "subject": p.subject, "reason": p.reason} for p in found]
    receive_topic = sample_topic(topic)

    def one(name: str, p: Perm, on: str) -> Check:
        d = policy.decide(subject, p, on)
        return Check(name, on, d.allowed, explain(d, keys))

    result = CheckResult(False, username is None or user is not None, [], problems=problems)
    if perm in (Perm.PUBLISH, Perm.SUBSCRIBE, Perm.RECEIVE):
        name = next(n for n, v in ACTIONS.items() if v == perm)
        result.checks.append(one(name, perm, topic))
        if perm is Perm.SUBSCRIBE and result.checks[0].allowed:
            received = one("receive", Perm.RECEIVE, receive_topic)
            if not received.allowed:
                result.receive_note = received
    else:  # read: both halves, each explained
        result.checks += [one("subscribe", Perm.SUBSCRIBE, topic), one("receive", Perm.RECEIVE, receive_topic)]
    result.allowed = all(c.allowed for c in result.checks)
    return result
