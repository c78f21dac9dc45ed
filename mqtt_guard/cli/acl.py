"""`mqtt-guard acl ...` and `mqtt-guard group ...`: edit and explain topic ACLs in Redis.

Edits go straight to the Redis hashes (`docs/redis-schema.md`); running brokers pick them up through
their invalidation listener, so the next message already obeys them.
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from ..acl.live import subject_keys_for
from ..acl.policy import AclPolicy, Decision, Subject
from ..acl.rules import Perm, Rule, format_tokens, parse_rules, parse_tokens
from ..acl.topics import validate_filter, validate_topic
from ..store import keys as k
from ..store.acl import AclStore
from ..store.users import UserStore
from .common import CliError, add_strict_option, check_user_known, run_with_redis

ACTIONS = {"publish": Perm.PUBLISH, "subscribe": Perm.SUBSCRIBE, "receive": Perm.RECEIVE}
# `acl check` also takes the two compound tokens `acl allow` takes (rules.TOKENS): read asks both
# subscribe and receive, write is publish.
CHECK_ACTIONS = {**ACTIONS, "read": Perm.SUBSCRIBE | Perm.RECEIVE, "write": Perm.PUBLISH}
FILTER_HELP = "MQTT topic filter, wildcards + and # allowed (e.g. sensors/+/temp, cmd/alice/#)"


def _subject_options(p: argparse.ArgumentParser, required: bool = True) -> None:
    g = p.add_mutually_exclusive_group(required=required)
    g.add_argument("--user", metavar="U", help="rules of user U")
    g.add_argument("--group", metavar="G", help="rules of every member of group G")
    g.add_argument("--pattern", action="store_true", help="rules for every authenticated client (%%u, %%c)")
    g.add_argument("--anonymous", action="store_true", help="rules for clients without a username")


def subject_of(args: argparse.Namespace) -> str | None:
    if args.user:
        return k.user_subject(args.user)
    if args.group:
        return k.group_subject(args.group)
    if args.pattern:
        return k.SUBJECT_PATTERN
    if args.anonymous:
        return k.SUBJECT_ANONYMOUS
    return None


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    acl = sub.add_parser("acl", help="topic ACLs").add_subparsers(dest="acl_cmd", required=True)
    for name, func, help_ in (
        ("allow", cmd_allow, "grant actions on a filter"),
        ("deny", cmd_deny, "deny actions on a filter (deny beats any grant)"),
    ):
        p = acl.add_parser(name, help=help_)
        _subject_options(p)
        p.add_argument("filter", help=FILTER_HELP)
        p.add_argument(
            "actions",
            help="comma-separated: publish, subscribe, receive, read (= subscribe + receive), "
            "write (= publish), readwrite/all; receiving messages needs receive, subscribe alone delivers nothing",
        )
        add_strict_option(p)
        p.set_defaults(func=func)
    p = acl.add_parser("rm", help="remove the rule for a filter")
    _subject_options(p)
    p.add_argument("filter", help="the topic filter of the rule, exactly as listed by 'acl list'")
    p.set_defaults(func=cmd_rm)
    p = acl.add_parser("list", help="list rules (of one subject, or all)")
    _subject_options(p, required=False)
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.set_defaults(func=cmd_list)
    p = acl.add_parser("check", help="explain a decision; exit 0 allow, 1 deny")
    p.add_argument("user", help="username, or - for an anonymous client")
    p.add_argument("client_id", help="the client id (pattern rules use it as %%c)")
    p.add_argument("topic", help="topic (publish, receive) or filter (subscribe, read)")
    p.add_argument(
        "action",
        choices=sorted(CHECK_ACTIONS),
        help="one action; read = subscribe and receive (both must be allowed), write = publish",
    )
    p.add_argument(
        "--default", choices=["deny", "allow"], default="deny", help="the brokers' acl.default (default: deny)"
    )
    p.set_defaults(func=cmd_check)

    group = sub.add_parser("group", help="group membership").add_subparsers(dest="group_cmd", required=True)
    for name, func, help_ in (
        ("add-user", cmd_group_add, "add a user to a group"),
        ("del-user", cmd_group_del, "remove a user from a group"),
    ):
        p = group.add_parser(name, help=help_)
        p.add_argument("group", help="group name")
        p.add_argument("user", help="username (must exist)")
        p.set_defaults(func=func)
    p = group.add_parser("list", help="groups with their members, and groups that have ACL rules")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.set_defaults(func=cmd_group_list)


def _actions(text: str) -> Perm:
    """The permissions named by ACTIONS; deny tokens are not accepted here (use `acl deny`)."""
    try:
        allow, deny = parse_tokens(text)
    except ValueError as exc:
        raise CliError(str(exc)) from None
    if deny:
        raise CliError("give plain actions (publish, subscribe, receive, read, write, all); use 'acl deny' to deny")
    if not allow:
        raise CliError("no action given")
    return allow


def _edit(args: argparse.Namespace, grant: bool) -> int:
    subject = subject_of(args)
    assert subject is not None
    bad = validate_filter(args.filter)
    if bad:
        raise CliError(f"invalid topic filter {args.filter!r}: {bad}")
    perms = _actions(args.actions)

    async def body(redis: Any, keys: k.Keys) -> int:
        if args.user:
            await check_user_known(redis, keys, args.user, strict=args.strict, what="rule")
        store = AclStore(redis, keys)
        current = await store.get_rule(subject, args.filter)
        allow, deny = Perm.NONE, Perm.NONE
        if current:
            try:
                allow, deny = parse_tokens(current)
            except ValueError:
                print(f"replacing malformed value {current!r}", file=sys.stderr)
        if grant:
            allow, deny = allow | perms, deny & ~perms
        else:
            allow, deny = allow & ~perms, deny | perms
        value = format_tokens(allow, deny)
        await store.set_rule(subject, args.filter, value)
        print(f"{keys.acl(subject)} {args.filter!r} = {value}")
        warning = subscribe_without_receive(args.filter, allow, deny)
        if warning:
            print(f"mqtt-guard: warning: {warning}", file=sys.stderr)
        return 0

    return run_with_redis(args, body, writes=True)


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


def sample_topic(topic_filter: str) -> str:
    """A topic the filter matches (each wildcard level becomes `x`), to ask receive questions about
    a filter: `cmd/+/#` -> `cmd/x/x`."""
    return "/".join("x" if level in ("+", "#") else level for level in topic_filter.split("/"))


def cmd_allow(args: argparse.Namespace) -> int:
    return _edit(args, True)


def cmd_deny(args: argparse.Namespace) -> int:
    return _edit(args, False)


def cmd_rm(args: argparse.Namespace) -> int:
    subject = subject_of(args)

    async def body(redis: Any, keys: k.Keys) -> int:
        # (subject is not None: `acl rm` requires one of --user/--group/--pattern/--anonymous)
        if not await AclStore(redis, keys).remove_rule(subject, args.filter):  # type: ignore[arg-type]  # see above
            raise CliError(f"no rule for {args.filter!r} in {keys.acl(subject)}")  # type: ignore[arg-type]  # see above
        print(f"removed {args.filter!r} from {keys.acl(subject)}")  # type: ignore[arg-type]  # see above
        return 0

    return run_with_redis(args, body, writes=True)


def cmd_list(args: argparse.Namespace) -> int:
    only = subject_of(args)

    async def body(redis: Any, keys: k.Keys) -> int:
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
        if args.json:
            json.dump(out, sys.stdout, indent=1)
            print()
            return 0
        for subject, info in out.items():
            print(f"[{subject}]")
            for topic_filter, value in sorted(info["rules"].items()):
                print(f"  {topic_filter}  {value}")
            for p in info["problems"]:
                print(f"  ! skipped {p['filter']!r} = {p['value']!r}: {p['reason']}")
        return 0

    return run_with_redis(args, body)


def _explain(decision: Decision, keys: k.Keys) -> str:
    """`grant rule 's/#' = readwrite in mqg:acl:user:alice`, or the reason alone (default, superuser)."""
    rule: Rule | None = decision.rule
    if rule is None:
        return decision.reason
    return f"{decision.reason} {rule.filter!r} = {format_tokens(rule.allow, rule.deny)} in {keys.acl(rule.subject)}"


def cmd_check(args: argparse.Namespace) -> int:
    action = CHECK_ACTIONS[args.action]
    anonymous = args.user == "-"
    as_filter = bool(action & Perm.SUBSCRIBE)
    bad = validate_filter(args.topic) if as_filter else validate_topic(args.topic)
    if bad:
        print(f"deny: invalid {'filter' if as_filter else 'topic'} {args.topic!r}: {bad}")
        return 1

    async def body(redis: Any, keys: k.Keys) -> int:
        user = None if anonymous else await UserStore(redis, keys).get(args.user)
        if not anonymous and user is None:
            print(f"note: no user {args.user!r} in Redis; deciding as for a user without groups", file=sys.stderr)
        subject = Subject(
            None if anonymous else args.user,
            args.client_id,
            user.groups if user else frozenset(),
            bool(user and user.superuser),
        )
        policy = AclPolicy(default_allow=args.default == "allow")
        raw = await AclStore(redis, keys).load(subject_keys_for(subject))
        problems = []
        for subject_key, mapping in raw.items():
            rules, found = parse_rules(subject_key, mapping)
            policy.set_rules(subject_key, rules)
            problems += found
        receive_topic = sample_topic(args.topic)
        if action in (Perm.PUBLISH, Perm.SUBSCRIBE, Perm.RECEIVE):
            decision = policy.decide(subject, action, args.topic)
            allowed = decision.allowed
            print(f"{'allow' if allowed else 'deny'}: {_explain(decision, keys)}")
            if action is Perm.SUBSCRIBE and allowed:
                received = policy.decide(subject, Perm.RECEIVE, receive_topic)
                if not received.allowed:
                    on = "it" if receive_topic == args.topic else f"{receive_topic!r} (a topic it matches)"
                    print(
                        f"note: the subscription is granted but delivers nothing: receive on {on} is denied "
                        f"({_explain(received, keys)}); messages are withheld unless receive is granted "
                        "(acl allow ... read)"
                    )
        else:  # read: both halves, each explained
            sub = policy.decide(subject, Perm.SUBSCRIBE, args.topic)
            recv = policy.decide(subject, Perm.RECEIVE, receive_topic)
            allowed = sub.allowed and recv.allowed
            on = "" if receive_topic == args.topic else f" on {receive_topic!r} (a topic it matches)"
            print(f"{'allow' if allowed else 'deny'}: read needs subscribe and receive")
            print(f"  subscribe: {'allow' if sub.allowed else 'deny'}: {_explain(sub, keys)}")
            print(f"  receive{on}: {'allow' if recv.allowed else 'deny'}: {_explain(recv, keys)}")
        for p in problems:
            print(f"warning: skipped malformed rule {p.filter!r} = {p.value!r} in {keys.acl(p.subject)}: {p.reason}")
        return 0 if allowed else 1

    return run_with_redis(args, body)


def _group_edit(args: argparse.Namespace, add: bool) -> int:
    async def body(redis: Any, keys: k.Keys) -> int:
        users = UserStore(redis, keys)
        if not await users.exists(args.user):
            raise CliError(f"no such user {args.user!r}")
        if add:
            await users.add_group(args.user, args.group)
            print(f"{args.user!r} added to group {args.group!r}")
        else:
            await users.remove_group(args.user, args.group)
            print(f"{args.user!r} removed from group {args.group!r}")
        return 0

    return run_with_redis(args, body, writes=True)


def cmd_group_add(args: argparse.Namespace) -> int:
    return _group_edit(args, True)


def cmd_group_del(args: argparse.Namespace) -> int:
    return _group_edit(args, False)


def cmd_group_list(args: argparse.Namespace) -> int:
    """Groups live only in the users' group sets (`user:<u>:groups`) and in `acl:group:<g>` rule
    hashes, so both are read: a group with rules and no members is listed too (its rules apply to
    nobody, which is worth seeing)."""

    async def body(redis: Any, keys: k.Keys) -> int:
        names = await UserStore(redis, keys).list()
        async with redis.pipeline(transaction=False) as pipe:
            for name in names:
                pipe.smembers(keys.user_groups(name))
            memberships = await pipe.execute()
        groups: dict[str, list[str]] = {}
        for name, member_of in zip(names, memberships, strict=True):
            for group in member_of:
                groups.setdefault(group, []).append(name)
        group_prefix = k.group_subject("")
        for subject in await AclStore(redis, keys).subjects():
            if subject.startswith(group_prefix):
                groups.setdefault(subject[len(group_prefix) :], [])
        listing = {g: sorted(members) for g, members in sorted(groups.items())}
        if args.json:
            json.dump(listing, sys.stdout)
            print()
            return 0
        for group, members in listing.items():
            print(f"{group}: {', '.join(members) if members else '(no members; has ACL rules)'}")
        return 0

    return run_with_redis(args, body)
