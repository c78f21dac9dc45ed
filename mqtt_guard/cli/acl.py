"""`mqtt-guard acl ...` and `mqtt-guard group ...`: edit and explain topic ACLs in Redis.

Edits go straight to the Redis hashes (`docs/redis-schema.md`); running brokers pick them up through
their invalidation listener, so the next message already obeys them.
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from ..ops import acl as ops
from ..ops import users as user_ops
from ..ops.acl import CHECK_ACTIONS
from ..store import keys as k
from .common import add_strict_option, check_user_known, run_with_redis
from .plans import register_group_set

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
    register_group_set(group)  # `group set NAME --plan P` (cli/plans.py)


def _edit(args: argparse.Namespace, grant: bool) -> int:
    subject = subject_of(args)
    assert subject is not None
    ops.check_filter(args.filter)
    perms = ops.parse_actions(args.actions)

    async def body(redis: Any, keys: k.Keys) -> int:
        if args.user:
            await check_user_known(redis, keys, args.user, strict=args.strict, what="rule")
        edit = await ops.edit_rule(redis, keys, subject, args.filter, perms, grant)
        if edit.replaced is not None:
            print(f"replacing malformed value {edit.replaced!r}", file=sys.stderr)
        print(f"{keys.acl(subject)} {args.filter!r} = {edit.value}")
        if edit.warning:
            print(f"mqtt-guard: warning: {edit.warning}", file=sys.stderr)
        return 0

    return run_with_redis(args, body, writes=True)


def cmd_allow(args: argparse.Namespace) -> int:
    return _edit(args, True)


def cmd_deny(args: argparse.Namespace) -> int:
    return _edit(args, False)


def cmd_rm(args: argparse.Namespace) -> int:
    subject = subject_of(args)
    assert subject is not None  # `acl rm` requires one of --user/--group/--pattern/--anonymous

    async def body(redis: Any, keys: k.Keys) -> int:
        await ops.remove_rule(redis, keys, subject, args.filter)
        print(f"removed {args.filter!r} from {keys.acl(subject)}")
        return 0

    return run_with_redis(args, body, writes=True)


def cmd_list(args: argparse.Namespace) -> int:
    only = subject_of(args)

    async def body(redis: Any, keys: k.Keys) -> int:
        out = await ops.list_rules(redis, keys, only)
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


def _verdict(allowed: bool) -> str:
    return "allow" if allowed else "deny"


def cmd_check(args: argparse.Namespace) -> int:
    anonymous = args.user == "-"
    bad = ops.invalid_topic(args.topic, args.action)
    if bad:
        print(f"deny: {bad}")
        return 1

    async def body(redis: Any, keys: k.Keys) -> int:
        result = await ops.check(
            redis,
            keys,
            None if anonymous else args.user,
            args.client_id,
            args.topic,
            args.action,
            default_allow=args.default == "allow",
        )
        if not result.user_known:
            print(f"note: no user {args.user!r} in Redis; deciding as for a user without groups", file=sys.stderr)
        if len(result.checks) == 1:
            print(f"{_verdict(result.allowed)}: {result.checks[0].explanation}")
            note = result.receive_note
            if note is not None:
                on = "it" if note.topic == args.topic else f"{note.topic!r} (a topic it matches)"
                print(
                    f"note: the subscription is granted but delivers nothing: receive on {on} is denied "
                    f"({note.explanation}); messages are withheld unless receive is granted "
                    "(acl allow ... read)"
                )
        else:  # read: both halves, each explained
            sub, recv = result.checks
            on = "" if recv.topic == args.topic else f" on {recv.topic!r} (a topic it matches)"
            print(f"{_verdict(result.allowed)}: read needs subscribe and receive")
            print(f"  subscribe: {_verdict(sub.allowed)}: {sub.explanation}")
            print(f"  receive{on}: {_verdict(recv.allowed)}: {recv.explanation}")
        for p in result.problems:
            print(
                f"warning: skipped malformed rule {p['filter']!r} = {p['value']!r} in {keys.acl(p['subject'])}: "
                f"{p['reason']}"
            )
        return 0 if result.allowed else 1

    return run_with_redis(args, body)


def _group_edit(args: argparse.Namespace, add: bool) -> int:
    async def body(redis: Any, keys: k.Keys) -> int:
        await user_ops.set_membership(redis, keys, args.group, args.user, add)
        if add:
            print(f"{args.user!r} added to group {args.group!r}")
        else:
            print(f"{args.user!r} removed from group {args.group!r}")
        return 0

    return run_with_redis(args, body, writes=True)


def cmd_group_add(args: argparse.Namespace) -> int:
    return _group_edit(args, True)


def cmd_group_del(args: argparse.Namespace) -> int:
    return _group_edit(args, False)


def cmd_group_list(args: argparse.Namespace) -> int:
    async def body(redis: Any, keys: k.Keys) -> int:
        listing = await user_ops.list_groups(redis, keys)
        if args.json:
            json.dump(listing, sys.stdout)
            print()
            return 0
        for group, members in listing.items():
            print(f"{group}: {', '.join(members) if members else '(no members; has ACL rules)'}")
        return 0

    return run_with_redis(args, body)
